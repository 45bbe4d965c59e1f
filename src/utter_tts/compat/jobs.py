"""Long clone jobs: submit, poll, fetch, cancel, with the work done by a pluggable runner.

The state of a job never lives in a web container's memory: it is kept in a `JobStore` (a folder of JSON
files shared by every process on one data directory, or a `modal.Dict` on Modal) so whichever container
answers the next poll can see it.

- `LocalJobRunner` runs jobs in a thread pool of this process and keeps their WAV in the store's folder.
- `ModalJobRunner` hands each job to a separate Modal function (`spawn`), finds it again with
  `FunctionCall.from_id`, polls it with `get(timeout=0)` and stops it with `cancel()`; the function reports
  progress into the store through `run_stored_job`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from utter_tts.compat.service import CompatError, CompatService, JobCancelled

log = logging.getLogger("utter_tts.compat")

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
_KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


class JobStore(Protocol):
    """What a `modal.Dict` offers and the runners need."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


class DirStore:
    """A JobStore of JSON files in a folder; atomic writes, readable by every process sharing the folder."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise KeyError(key)
        return self.dir / (key.replace(":", "__") + ".json")

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return json.loads(self._path(key).read_text("utf-8"))
        except (FileNotFoundError, KeyError):
            return default

    def __setitem__(self, key: str, value: Any) -> None:
        path = self._path(key)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)


class JobNotFound(CompatError):
    def __init__(self) -> None:
        super().__init__("Job not found", status=404)


def public_status(job_id: str, state: dict[str, Any]) -> dict[str, Any]:
    out = {
        "job_id": job_id,
        "status": state.get("status", "queued"),
        "progress": round(float(state.get("progress", 0.0)), 4),
    }
    if state.get("error"):
        out["error"] = state["error"]
    return out


def run_stored_job(
    service: CompatService, payload: dict[str, Any], store: JobStore, key: str | None = None
) -> bytes:
    """Run one clone job (the body of /submit-job) and report into `store`: `progress:<key>` holds
    {status, progress, error}; `cancel:<key>` set by a canceller stops it between sentence batches."""
    key = key or payload["job_key"]
    caller = payload.get("caller", "anonymous")

    def cancelled() -> bool:
        return bool(store.get(f"cancel:{key}"))

    def report(**state: Any) -> None:
        if state["status"] != "cancelled" and cancelled():
            return  # the canceller already wrote the final state
        store[f"progress:{key}"] = {**state, "updated_at": time.time()}

    def progress(done: int, total: int) -> None:
        report(status="running", progress=min(0.99, done / max(1, total)))

    if cancelled():
        report(status="cancelled", progress=0.0)
        raise JobCancelled()
    report(status="running", progress=0.0)
    try:
        wav = service.clone_request(
            caller,
            payload["body"],
            max_chars=service.limits.max_job_text_chars,
            progress=progress,
            cancelled=cancelled,
        )
    except JobCancelled:
        report(status="cancelled", progress=0.0)
        raise
    except CompatError as e:
        report(status="failed", progress=0.0, error=e.message)
        raise
    except Exception as e:
        log.exception("job %s failed", key)
        report(status="failed", progress=0.0, error=f"internal error ({type(e).__name__})")
        raise
    if cancelled():
        report(status="cancelled", progress=0.0)
        raise JobCancelled()
    report(status="completed", progress=1.0)
    return wav


class JobRunner:
    """The interface the routes use. Every method takes the caller so one caller cannot see another's."""

    def __init__(self, store: JobStore):
        self.store = store

    def submit(self, caller: str, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def status(self, caller: str, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def result(self, caller: str, job_id: str) -> bytes:
        raise NotImplementedError

    def cancel(self, caller: str, job_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def _record(self, caller: str, job_id: Any) -> dict[str, Any]:
        if not isinstance(job_id, str) or not _KEY_RE.match(job_id):
            raise JobNotFound()
        record = self.store.get(f"job:{job_id}")
        if not record or record.get("caller") != caller:
            raise JobNotFound()
        return record

    def _state(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.store.get(f"progress:{record['key']}") or {"status": "queued", "progress": 0.0}

    @staticmethod
    def _not_ready(job_id: str, state: dict[str, Any]) -> CompatError:
        status = state.get("status", "queued")
        if status == "failed":
            return CompatError(f"Job failed: {state.get('error') or 'unknown error'}", status=400)
        return CompatError(f"Job is not completed (status: {status})", status=400)


class LocalJobRunner(JobRunner):
    """Jobs in worker threads of this process; state and results in `directory` (share it to let other
    app instances on the same data directory poll, fetch and cancel)."""

    def __init__(self, service: CompatService | Callable[[], CompatService], directory, workers: int = 1):
        self.dir = Path(directory)
        super().__init__(DirStore(self.dir))
        self._service = service
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="utter-compat-job")
        self._lock = threading.Lock()

    def service(self) -> CompatService:
        return self._service() if callable(self._service) else self._service

    def _result_path(self, key: str) -> Path:
        return self.dir / f"{key}.wav"

    def submit(self, caller: str, body: dict[str, Any]) -> str:
        service = self.service()
        service.check_clone_request(body, service.limits.max_job_text_chars)  # 400s before queueing
        job_id = "job_" + secrets.token_hex(12)
        self.store[f"job:{job_id}"] = {"caller": caller, "key": job_id, "created_at": time.time()}
        self.store[f"progress:{job_id}"] = {"status": "queued", "progress": 0.0}
        payload = {"job_key": job_id, "caller": caller, "body": body}
        self._pool.submit(self._work, service, payload)
        return job_id

    def _work(self, service: CompatService, payload: dict[str, Any]) -> None:
        key = payload["job_key"]
        try:
            wav = run_stored_job(service, payload, self.store)
        except Exception:  # reported in the store by run_stored_job
            return
        path = self._result_path(key)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(wav)
        os.replace(tmp, path)

    def status(self, caller: str, job_id: str) -> dict[str, Any]:
        record = self._record(caller, job_id)
        state = self._state(record)
        if state.get("status") == "completed" and not self._result_path(record["key"]).exists():
            state = {**state, "status": "running", "progress": 0.99}  # result file being written
        return public_status(job_id, state)

    def result(self, caller: str, job_id: str) -> bytes:
        record = self._record(caller, job_id)
        state = self._state(record)
        path = self._result_path(record["key"])
        if state.get("status") != "completed" or not path.exists():
            raise self._not_ready(job_id, state)
        return path.read_bytes()

    def cancel(self, caller: str, job_id: str) -> dict[str, Any]:
        record = self._record(caller, job_id)
        state = self._state(record)
        if state.get("status") in ("queued", "running"):
            self.store[f"cancel:{record['key']}"] = True
            # A queued job never starts; a running one stops at its next sentence batch.
            self.store[f"progress:{record['key']}"] = {"status": "cancelled", "progress": 0.0}
        return public_status(job_id, self._state(record))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class ModalJobRunner(JobRunner):
    """Jobs as calls of a separate Modal function.

    `spawn(payload)` starts the job function (e.g. `QwenTTSJobs().run.spawn`); `function_call` is the class
    whose `from_id(id)` returns a call with `get(timeout=0)` and `cancel()` (`modal.FunctionCall`);
    `store` is shared by all containers (`modal.Dict`). The job id is the FunctionCall id."""

    def __init__(
        self,
        spawn: Callable[[dict[str, Any]], Any],
        function_call: Any,
        store: JobStore,
        check: Callable[[dict[str, Any]], None] | None = None,
    ):
        super().__init__(store)
        self.spawn = spawn
        self.function_call = function_call
        self.check = check

    def submit(self, caller: str, body: dict[str, Any]) -> str:
        if self.check is not None:
            self.check(body)
        key = "k_" + secrets.token_hex(12)
        self.store[f"progress:{key}"] = {"status": "queued", "progress": 0.0}
        call = self.spawn({"job_key": key, "caller": caller, "body": body})
        job_id = call.object_id
        self.store[f"job:{job_id}"] = {"caller": caller, "key": key, "created_at": time.time()}
        return job_id

    def _poll(self, job_id: str) -> tuple[str, Any]:
        """("running", None) | ("completed", wav) | ("failed", message) | ("expired", None)."""
        call = self.function_call.from_id(job_id)
        try:
            return "completed", call.get(timeout=0)
        except TimeoutError:  # builtin: the call has not finished yet
            return "running", None
        except Exception as e:
            if type(e).__name__ == "OutputExpiredError":
                return "expired", None
            return "failed", getattr(e, "message", None) or str(e) or type(e).__name__

    def status(self, caller: str, job_id: str) -> dict[str, Any]:
        record = self._record(caller, job_id)
        state = self._state(record)
        if state.get("status") in ("completed", "failed", "cancelled"):
            return public_status(job_id, state)
        outcome, value = self._poll(job_id)
        if outcome == "completed":
            state = {"status": "completed", "progress": 1.0}
        elif outcome == "failed":
            state = {"status": "failed", "progress": 0.0, "error": value}
        elif outcome == "expired":
            state = {"status": "failed", "progress": 0.0, "error": "result expired"}
        return public_status(job_id, state)

    def result(self, caller: str, job_id: str) -> bytes:
        record = self._record(caller, job_id)
        state = self._state(record)
        if state.get("status") in ("failed", "cancelled"):
            raise self._not_ready(job_id, state)
        outcome, value = self._poll(job_id)
        if outcome == "completed":
            return value
        if outcome == "failed":
            raise self._not_ready(job_id, {"status": "failed", "error": value})
        if outcome == "expired":
            raise self._not_ready(job_id, {"status": "failed", "error": "result expired"})
        raise self._not_ready(job_id, state)

    def cancel(self, caller: str, job_id: str) -> dict[str, Any]:
        record = self._record(caller, job_id)
        state = self._state(record)
        if state.get("status") in ("queued", "running"):
            self.store[f"cancel:{record['key']}"] = True
            self.function_call.from_id(job_id).cancel()
            self.store[f"progress:{record['key']}"] = {"status": "cancelled", "progress": 0.0}
        return public_status(job_id, self._state(record))
