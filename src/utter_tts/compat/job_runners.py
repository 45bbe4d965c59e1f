"""Long clone jobs: submit, poll, fetch, cancel, with the work done by a pluggable runner.

The state of a job never lives in a web container's memory: it is kept in a `JobStore` (a RecordStore, a
folder of JSON records shared by every process on one data directory, or a `modal.Dict` on Modal) so
whichever container answers the next poll can see it.

- `LocalJobRunner` runs jobs in a thread pool of this process and keeps their WAV in the store's folder.
- `ModalJobRunner` hands each job to a separate Modal function (`spawn`), finds it again with
  `FunctionCall.from_id`, polls it with `get(timeout=0)` and stops it with `cancel()`; the function reports
  progress into the store through `run_stored_job`.

Nothing is lost when the process dies: each finished sentence's codes are kept in the store as it
completes (compat.resume), with the job's seed, fixed at submission. A new LocalJobRunner on the same
folder goes on with the jobs a dead process left unfinished; on Modal, a preempted or failed call runs
again (the job class's `retries`) and goes on from the same store. Either way the job ends with the audio
an uninterrupted run would have given.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from utter_tts.compat.checks import CompatError
from utter_tts.compat.resume import JobCheckpoint, drop
from utter_tts.compat.service import CompatService
from utter_tts.compat.synthesizer import JobCancelled
from utter_tts.files import write_atomic
from utter_tts.service.job_records import (
    KEY_RE,
    RecordStore,
    claim,
    drop_claims,
    new_job_id,
    process_alive,
    this_process,
)

log = logging.getLogger("utter_tts.compat")


class JobStore(Protocol):
    """What a `modal.Dict` and a RecordStore (a folder of JSON records) offer and the runners need."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


class JobInterrupted(Exception):
    """Raised inside a job when its process is going away: its state is left for the next one to resume."""


NOT_FOUND = "Job not found"
CANCELLED = "Job was cancelled"


def public_status(job_id: str, state: dict[str, Any] | None) -> dict[str, Any]:
    """/job-status's answer, shaped as the original's (app.py `job_status`): {job_id, status,
    result_ready} and `error` when failed. Like the original (Modal's FunctionCall tells queued from
    running no more than it does), a queued job is "running"; a cancelled job, an unknown id and another
    caller's job are "failed" with the reason, as the original's `except Exception` made them."""
    status = (state or {}).get("status")
    if status == "completed":
        return {"job_id": job_id, "status": "completed", "result_ready": True}
    if state is None or status in ("failed", "cancelled"):
        return {"job_id": job_id, "status": "failed", "result_ready": False, "error": failure(state)}
    return {"job_id": job_id, "status": "running", "result_ready": False}


def failure(state: dict[str, Any] | None) -> str:
    """Why a job has no result: unknown, cancelled, or its error."""
    if state is None:
        return NOT_FOUND
    if state.get("status") == "cancelled":
        return CANCELLED
    return state.get("error") or "unknown error"


def no_result(state: dict[str, Any] | None) -> CompatError:
    """/job-result for a job that will never have one. The original answered 500 "Failed to get result:
    ..."; its detail is kept, with a 4xx: a client's request never gets a 5xx."""
    return CompatError(f"Failed to get result: {failure(state)}", status=404 if state is None else 409)


def run_stored_job(
    service: CompatService,
    payload: dict[str, Any],
    store: JobStore,
    key: str | None = None,
    stop: Callable[[], bool] | None = None,
    deliver: Callable[[bytes], None] | None = None,
    retried: bool = False,
) -> bytes:
    """Run one clone job (the body of /submit-job) and report into `store`: `progress:<key>` holds
    {status, progress, done, total, attempt, resumed_from, error}; `cancel:<key>` set by a canceller stops
    it between sentence batches. Its finished sentences are kept in the store (`JobCheckpoint`), so
    running the same payload again goes on from the first unfinished one.

    `stop()` turning true (the process is shutting down) raises JobInterrupted at the next batch and
    leaves the job as it is for the next process. `deliver(wav)` keeps the result before the job is
    reported completed. `retried`: the caller runs the job again when it raises (Modal's retries), so an
    unexpected error leaves it `running` (marked `retrying`) instead of failed; a CompatError (the
    request's fault) or a cancellation still ends it."""
    key = key or payload["job_key"]
    caller = payload.get("caller", "anonymous")
    checkpoint = JobCheckpoint(store, key)
    last: dict[str, Any] = {}

    def cancelled() -> bool:
        if stop is not None and stop():
            raise JobInterrupted()
        return bool(store.get(f"cancel:{key}"))

    def report(**state: Any) -> None:
        if state["status"] != "cancelled" and store.get(f"cancel:{key}"):
            return  # the canceller already wrote the final state
        store[f"progress:{key}"] = {**state, "updated_at": time.time()}

    def progress(done: int, total: int) -> None:
        last.update(done=done, total=total, attempt=checkpoint.attempt, resumed_from=checkpoint.resumed_from)
        report(status="running", progress=min(0.99, done / max(1, total)), **last)

    def end(**state: Any) -> None:
        report(**state)
        checkpoint.clear()

    if store.get(f"cancel:{key}"):
        end(status="cancelled", progress=0.0)
        raise JobCancelled()
    before = store.get(f"progress:{key}") or {}
    if before.get("status") == "running":  # an attempt after an interruption: the progress made so far
        last.update({k: before[k] for k in ("done", "total", "attempt", "resumed_from") if k in before})
    report(status="running", progress=min(0.99, last.get("done", 0) / max(1, last.get("total", 1))), **last)
    try:
        wav = service.job_request(
            caller,
            payload["body"],
            progress=progress,
            cancelled=cancelled,
            checkpoint=checkpoint,
            seed=payload.get("seed"),
        )
        if store.get(f"cancel:{key}"):
            raise JobCancelled()
        if deliver is not None:
            deliver(wav)
    except JobInterrupted:
        raise
    except JobCancelled:
        end(status="cancelled", progress=0.0)
        raise
    except CompatError as e:
        end(status="failed", progress=0.0, error=e.message)
        raise
    except Exception as e:
        log.exception("job %s failed", key)
        why = f"internal error ({type(e).__name__})"
        if retried:  # the call runs again and goes on from the stored sentences
            report(
                status="running",
                progress=min(0.99, last.get("done", 0) / max(1, last.get("total", 1))),
                **last,
                retrying=True,
                error=why,
            )
        else:
            end(status="failed", progress=0.0, error=why)
        raise
    end(
        status="completed",
        progress=1.0,
        **{k: last[k] for k in ("total", "attempt", "resumed_from") if k in last},
    )
    return wav


_LIVE_RUNNERS: set[str] = set()  # tokens of this process's open LocalJobRunners: their jobs are not orphans


class JobRunner:
    """The interface the routes use. Every method takes the caller so one caller cannot see another's;
    another caller's job is answered as an unknown one."""

    def __init__(self, store: JobStore):
        self.store = store

    def submit(self, caller: str, body: dict[str, Any]) -> str:
        """Check the body (CompatError with utter's message) and start the job; its id."""
        raise NotImplementedError

    def state(self, caller: str, job_id: Any) -> dict[str, Any] | None:
        """{status, progress, error}, or None for an id this caller does not have."""
        raise NotImplementedError

    def result(self, caller: str, job_id: Any) -> bytes | None:
        """The WAV, None while the job runs, CompatError (`no_result`) when there will be none."""
        raise NotImplementedError

    def cancel(self, caller: str, job_id: Any) -> bool:
        """Stop the job if it still runs (a finished one is left as it is); False for an unknown id."""
        raise NotImplementedError

    def _record(self, caller: str, job_id: Any) -> dict[str, Any] | None:
        if not isinstance(job_id, str) or not KEY_RE.match(job_id):
            return None
        record = self.store.get(f"job:{job_id}")
        if not record or record.get("caller") != caller:
            return None
        return record

    def _stored(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.store.get(f"progress:{record['key']}") or {"status": "queued", "progress": 0.0}

    def _stop(self, record: dict[str, Any]) -> bool:
        """Flag an unfinished job cancelled (it stops at its next sentence batch); whether it was."""
        if self._stored(record).get("status") not in ("queued", "running"):
            return False
        self.store[f"cancel:{record['key']}"] = True
        self.store[f"progress:{record['key']}"] = {"status": "cancelled", "progress": 0.0}
        return True


class LocalJobRunner(JobRunner):
    """Jobs in worker threads of this process; state and results in `directory` (share it to let other
    app instances on the same data directory poll, fetch and cancel).

    A job's request (its seed fixed) and finished sentences are kept there too, so a runner made after
    its process died (a restart, a crash, kill -9) goes on with it from its first unfinished sentence
    (`resume=False`: leave such jobs alone). Each is claimed by one runner only."""

    def __init__(
        self,
        service: CompatService | Callable[[], CompatService],
        directory,
        workers: int = 1,
        resume: bool = True,
    ):
        self.dir = Path(directory)
        super().__init__(RecordStore(self.dir))
        self._service = service
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="utter-compat-job")
        self._closing = threading.Event()
        self.token = uuid.uuid4().hex
        _LIVE_RUNNERS.add(self.token)
        self.resumed: list[str] = []  # ids of the jobs this runner took over
        if resume:
            self.resume_interrupted()

    def service(self) -> CompatService:
        service = self._service() if callable(self._service) else self._service
        if service is None:
            raise CompatError("models are still loading", status=503)
        return service

    def _result_path(self, key: str) -> Path:
        return self.dir / f"{key}.wav"

    def submit(self, caller: str, body: dict[str, Any]) -> str:
        service = self.service()
        service.parse_job(body)  # 400s before queueing
        job_id = new_job_id()
        payload = {"job_key": job_id, "caller": caller, "body": body, "seed": secrets.randbits(62)}
        self.store[f"request:{job_id}"] = payload  # what a runner that resumes the job runs
        self._own(job_id)
        self.store[f"job:{job_id}"] = {"caller": caller, "key": job_id, "created_at": time.time()}
        self.store[f"progress:{job_id}"] = {"status": "queued", "progress": 0.0}
        self._pool.submit(self._work, payload)
        return job_id

    def _own(self, key: str) -> None:
        self.store[f"owner:{key}"] = {**this_process(), "runner": self.token}

    def _orphaned(self, key: str) -> dict[str, Any] | None:
        """The owner record of an unfinished job whose runner is gone (its process died, or in this
        process it was closed), else None."""
        status = (self.store.get(f"progress:{key}") or {}).get("status")
        owner = self.store.get(f"owner:{key}")
        if status not in ("queued", "running") or not isinstance(owner, dict):
            return None
        alive = process_alive(owner.get("pid"), owner.get("pid_started"))
        if alive and owner.get("pid") == os.getpid():  # this process: is the runner that owns it closed?
            return None if owner.get("runner") in _LIVE_RUNNERS else owner
        return None if alive else owner

    def resume_interrupted(self) -> list[str]:
        """Take over the unfinished jobs of runners that are gone: each goes on from its first unfinished
        sentence once the models are loaded. Ids of the jobs taken."""
        taken = []
        for path in sorted(self.dir.glob("job__*.json")):
            record = self.store.get(path.stem.replace("__", ":", 1))
            key = record.get("key") if isinstance(record, dict) else None
            owner = self._orphaned(key) if isinstance(key, str) and KEY_RE.match(key) else None
            if owner is None:
                continue
            if not claim(self.dir, key, owner):  # another runner resumes it
                continue
            payload = self.store.get(f"request:{key}")
            if not isinstance(payload, dict):  # a job of an older version: nothing to go on from
                self.store[f"progress:{key}"] = {
                    "status": "failed",
                    "progress": 0.0,
                    "error": "the server restarted while this job ran; submit it again",
                }
                continue
            self._own(key)
            log.info("resuming utter job %s", key)
            self._pool.submit(self._work, payload)
            taken.append(path.stem.split("__", 1)[1])
        self.resumed += taken
        return taken

    def _ready_service(self) -> CompatService | None:
        """The service once the models are loaded (a resumed job may start before), None at shutdown."""
        while not self._closing.is_set():
            try:
                return self.service()
            except CompatError:
                self._closing.wait(0.2)
        return None

    def _work(self, payload: dict[str, Any]) -> None:
        key = payload["job_key"]
        service = self._ready_service()
        if service is None:
            return  # shutting down before it started: left queued for the next runner

        def deliver(wav: bytes) -> None:
            write_atomic(self._result_path(key), wav)

        try:
            run_stored_job(service, payload, self.store, stop=self._closing.is_set, deliver=deliver)
        except JobInterrupted:
            return  # the next runner goes on from the stored sentences
        except Exception:  # reported in the store by run_stored_job
            pass
        drop(self.store, f"request:{key}")  # the job ended: its request (and reference clip) can go
        drop_claims(self.dir, key)

    def state(self, caller: str, job_id: Any) -> dict[str, Any] | None:
        record = self._record(caller, job_id)
        if record is None:
            return None
        state = self._stored(record)
        if state.get("status") == "completed" and not self._result_path(record["key"]).exists():
            state = {**state, "status": "running", "progress": 0.99}  # result file being written
        return state

    def result(self, caller: str, job_id: Any) -> bytes | None:
        state = self.state(caller, job_id)
        if state is None or state.get("status") in ("failed", "cancelled"):
            raise no_result(state)
        if state.get("status") != "completed":
            return None
        return self._result_path(self._record(caller, job_id)["key"]).read_bytes()

    def cancel(self, caller: str, job_id: Any) -> bool:
        record = self._record(caller, job_id)
        if record is None:
            return False
        self._stop(record)  # a queued job never starts; a running one stops at its next sentence batch
        return True

    def close(self) -> None:
        """Queued jobs never start and a running one stops at its next sentence batch; both are left
        unfinished, with what they made, for the next runner on this folder to resume."""
        self._closing.set()
        _LIVE_RUNNERS.discard(self.token)
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
        check: Callable[[dict[str, Any]], Any] | None = None,
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
        # the seed is fixed here, in the payload: every attempt of the call (Modal's retries, a restart
        # after preemption) makes the same sentences, so the stored ones fit the ones still to make
        call = self.spawn({"job_key": key, "caller": caller, "body": body, "seed": secrets.randbits(62)})
        job_id = call.object_id
        self.store[f"job:{job_id}"] = {"caller": caller, "key": key, "created_at": time.time()}
        return job_id

    def _poll(self, job_id: str) -> tuple[dict[str, Any] | None, Any]:
        """(state, wav): completed with its WAV, failed with the call's error, or None while it runs."""
        call = self.function_call.from_id(job_id)
        try:
            return {"status": "completed", "progress": 1.0}, call.get(timeout=0)
        except TimeoutError:  # builtin: the call has not finished yet
            return None, None
        except Exception as e:
            if type(e).__name__ == "OutputExpiredError":
                return {"status": "failed", "progress": 0.0, "error": "result expired"}, None
            why = getattr(e, "message", None) or str(e) or type(e).__name__
            return {"status": "failed", "progress": 0.0, "error": why}, None

    def state(self, caller: str, job_id: Any) -> dict[str, Any] | None:
        record = self._record(caller, job_id)
        if record is None:
            return None
        state = self._stored(record)
        if state.get("status") in ("completed", "failed", "cancelled"):
            return state
        return self._poll(job_id)[0] or state

    def result(self, caller: str, job_id: Any) -> bytes | None:
        record = self._record(caller, job_id)
        state = None if record is None else self._stored(record)
        if state is None or state.get("status") in ("failed", "cancelled"):
            raise no_result(state)
        polled, wav = self._poll(job_id)
        if polled is None:
            return None
        if polled["status"] != "completed":
            raise no_result(polled)
        return wav

    def cancel(self, caller: str, job_id: Any) -> bool:
        record = self._record(caller, job_id)
        if record is None:
            return False
        if self._stop(record):
            self.function_call.from_id(job_id).cancel()
        return True
