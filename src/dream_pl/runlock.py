"""One run at a time per run folder: a lock file naming its holder, taken over only from a dead process.

Two runs writing one ``out_dir`` mix their checkpoints, exports and logs; the second must refuse at once.
The lock is created with ``O_EXCL`` (atomic on local file systems) and holds the host, pid and start time,
so the refusal can say who holds the folder. A lock left by a process that no longer exists on this host
(a crash, ``kill -9``) is stale and is taken over with a message.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from dream_pl.errors import UserError

log = logging.getLogger("dream_pl.runlock")
LOCK_NAME = "run.lock"


class RunLockedError(UserError, RuntimeError):
    """The run folder is held by another live run; the message is one line for the user."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``with RunLock(out_dir):`` holds ``out_dir/run.lock`` for the duration of a run."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.holder, f)
        return True

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _stale(self, other: dict) -> bool:
        """Left by a process of this host that no longer runs."""
        same_host = other.get("host") == self.holder["host"]
        return same_host and isinstance(other.get("pid"), int) and not _alive(other["pid"])

    def _refusal(self, other: dict) -> RunLockedError:
        who = f"pid {other.get('pid', '?')} on {other.get('host', '?')} since {other.get('started', '?')}"
        return RunLockedError(
            f"{self.path.parent} is in use by another run ({who}); "
            "wait for it to finish or pass another out_dir"
        )

    def check(self) -> None:
        """Raise :class:`RunLockedError` if a live run holds the folder; takes nothing (a pre-check)."""
        if self.path.exists():
            other = self._holder()
            mine = other.get("host") == self.holder["host"] and other.get("pid") == self.holder["pid"]
            if not (mine or self._stale(other)):
                raise self._refusal(other)

    def acquire(self) -> None:
        """Take the lock, or take over a stale one, or raise :class:`RunLockedError`."""
        if self._create():
            return
        other = self._holder()
        if self._stale(other):
            log.warning(
                "taking over the stale lock of pid %s (no longer running): %s", other["pid"], self.path
            )
            self.path.unlink(missing_ok=True)
            if self._create():
                return
        raise self._refusal(other)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        try:
            if json.loads(self.path.read_text()).get("pid") == self.holder["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
