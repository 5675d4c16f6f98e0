"""One `leasegate serve` per data folder: an flock on `leasegate.lock` in it, taken before
anything in the folder is touched and held for the life of the process (the kernel lets go
of it when the process ends, however it ends). The file names the holder, for the message
a second instance prints."""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from app.errors import LeasegateError

LOCK_FILE = "leasegate.lock"


class DataDirInUseError(LeasegateError):
    """Another instance holds the data folder's lock."""


class InstanceLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, address: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not inherited (O_CLOEXEC): the lock is this process's, not its children's.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise DataDirInUseError(
                f"data folder {self.path.parent.resolve()} is in use by {holder}; stop it, "
                "or give this instance another LEASEGATE_DATA_DIR"
            ) from None
        record = {
            "pid": os.getpid(),
            "address": address,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd

    def release(self) -> None:
        # The file stays: removing it would let a third instance lock a new file while a
        # second still waits on the old one.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _describe(raw: bytes) -> str:
    try:
        record = json.loads(raw)
        return (
            f"leasegate serve pid {record['pid']} on {record['address']} "
            f"(since {record['started_at']})"
        )
    except (ValueError, KeyError, TypeError):
        return "another leasegate serve (starting)"
