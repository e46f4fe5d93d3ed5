"""An exclusive lock on an output folder, so two writers never interleave their files.

``OutputLock(folder)`` holds an OS lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on
``folder/.hf-collapse.lock``. The OS drops it when the holder exits, even by SIGKILL, so a killed run
never leaves a stale lock behind and ``--resume`` can take over at once. The file itself stays (a
hidden file: never pushed); it records the holder's pid and command for the error message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from .errors import UserValueError

LOCK_NAME = ".hf-collapse.lock"


class OutputLock:
    """An exclusive OS lock on ``folder/.hf-collapse.lock`` (a context manager); freed when the process dies."""

    def __init__(self, folder, what: str = "hf-collapse"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self._fd = None

    def acquire(self) -> OutputLock:
        """Take the lock or raise ValueError naming the process that holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            holder = _read_holder(self.path)
            raise UserValueError(
                f"{str(self.folder)!r} is being written by another {holder.get('what', 'hf-collapse')} "
                f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}; lock file {LOCK_NAME}): wait for it "
                "to finish or choose another --output-dir"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                _unlock(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


if os.name == "nt":  # pragma: no cover - Windows
    import msvcrt

    def _lock(fd):
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)
