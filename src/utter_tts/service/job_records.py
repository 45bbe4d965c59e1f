"""Job state as JSON records in a folder: written atomically, read by every process sharing the folder."""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from utter_tts.files import write_atomic

KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux's /proc), or None where that is unknown.
    With the pid it names one process: a pid is reused, by a restarted container's server as pid 1 too."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command's "(name)"
    except (OSError, ValueError, IndexError):
        return None


@functools.lru_cache(maxsize=1)
def _own_start(pid: int) -> int | None:  # keyed by pid: a forked child reads its own
    return process_start(pid)


def this_process() -> dict[str, Any]:
    """The owner fields a job record keeps: this process's pid and start (see `process_alive`); written
    with every progress update, so the start is read once."""
    pid = os.getpid()
    return {"pid": pid, "pid_started": _own_start(pid)}


def process_alive(pid: Any, started: Any = None) -> bool:
    """Whether process `pid` of this machine still runs (a job whose process died can be resumed). With the
    `started` its record kept, a live pid that started at another time is another process (pid reuse)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if isinstance(started, int):
        now = process_start(pid)
        return now is None or now == started
    return True


def claim(directory: Path, job: str, owner: dict[str, Any]) -> bool:
    """Take over job `job` of a dead `owner` (its record's pid, start and runner) for this process, unless
    another process or runner did first: True for the one that creates the claim file. The file names the
    owner's start too, so a job interrupted again under a reused pid (a container's pid 1) is claimed anew."""
    tag = "-".join(str(owner[k]) for k in ("pid", "pid_started", "runner") if owner.get(k) is not None)
    try:
        os.close(os.open(directory / f"{job}.claim-{tag}", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def drop_claims(directory: Path, job: str) -> None:
    """Remove job `job`'s claim files once it has ended (each takeover left one)."""
    for made in directory.glob(f"{job}.claim-*"):
        made.unlink(missing_ok=True)


def new_job_id() -> str:
    """A job id nobody can guess: `job_` and 24 hex digits."""
    return "job_" + secrets.token_hex(12)


class RecordStore:
    """A dict-like store of JSON records, one file per key (`a:b` is stored as `a__b.json`). A reader sees
    a record whole or not at all, so other processes on the same folder can poll what one writes."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise KeyError(key)
        return self.dir / (key.replace(":", "__") + ".json")

    def get(self, key: str, default: Any = None) -> Any:
        """The record, or `default` when there is none, the key is malformed or the file is not JSON."""
        try:
            return json.loads(self.path(key).read_text("utf-8"))
        except (FileNotFoundError, KeyError, ValueError):
            return default

    def __setitem__(self, key: str, value: Any) -> None:
        write_atomic(self.path(key), json.dumps(value).encode("utf-8"))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
