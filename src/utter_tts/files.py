"""Files written whole or not at all, with the mode any other tool would give them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_mode() -> int:
    """0666 masked by the process umask: what `open(path, "w")` would create (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, data: bytes, durable: bool = False) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a reader (or a
    crash) sees the old file or the new one, never a torn one. `durable` also fsyncs the file and the
    folder, so the new file survives a power cut once this returns (the voice library relies on it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Raise OSError unless a file can be created at `path` (its folder is made if missing). Creating
    and removing a real temporary file is the only test that holds on every file system (as root,
    `os.access` says yes to /proc)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    os.unlink(tmp)
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in `path` durable (best effort: some file systems cannot fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
