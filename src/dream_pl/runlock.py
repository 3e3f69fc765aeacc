"""One run at a time per run folder: a lock file naming its holder, taken over only from a dead process.

Two runs writing one ``out_dir`` mix their checkpoints, exports and logs; the second must refuse at once.
The lock is created with ``O_EXCL`` (atomic on local file systems) and holds the host, pid and start time,
so the refusal can say who holds the folder. A lock left by a process that no longer exists on this host
(a crash, ``kill -9``) is stale and is taken over with a message.

The command line takes the lock before anything touches the folder and holds it through the job; it
takes it *joinable*, so the job's own ``with RunLock(...)`` (the same code serves Python callers) joins
that hold instead of refusing its own process. Any other second holder is refused, in this process too,
and the file goes when the outermost holder lets go.
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
_HELD: dict[Path, int] = {}  # lock files this process took -> how many holders share the hold now
_JOINABLE: set[Path] = set()  # of those, the ones later RunLocks of this process join instead of refusing


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
    """``with RunLock(out_dir):`` holds ``out_dir/run.lock`` for the duration of a run.

    ``joinable``: later ``RunLock``s of this process on the folder share this hold (the command line's,
    held for the job it runs) instead of being refused.
    """

    def __init__(self, folder: str | Path, *, joinable: bool = False) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.joinable = joinable
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def _key(self) -> Path:
        return self.path.resolve()

    def held(self) -> bool:
        """Whether this process holds the lock: it took it, and the file still names this process."""
        if not _HELD.get(self._key()):
            return False
        other = self._holder()
        return (other.get("host"), other.get("pid")) == (self.holder["host"], os.getpid())

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
        """Left by a process of this host that no longer runs.

        A lock naming this process that it did not take was left by an earlier process with the same pid
        (a container restarted gives its job the same small pid): stale too.
        """
        pid = other.get("pid")
        if other.get("host") != self.holder["host"] or not isinstance(pid, int):
            return False
        return not self.held() if pid == os.getpid() else not _alive(pid)

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
            if not ((self.held() and self._key() in _JOINABLE) or self._stale(other)):
                raise self._refusal(other)

    def acquire(self) -> None:
        """Take the lock, or join this process's joinable hold, or take over a stale one, or refuse.

        Raises:
            RunLockedError: another live run holds the folder (or this process, not joinably).
        """
        key = self._key()
        if self.held():
            if key not in _JOINABLE:
                raise self._refusal(self._holder())
            _HELD[key] += 1
            return
        if not self._create():
            other = self._holder()
            if not self._stale(other):
                raise self._refusal(other)
            log.warning(
                "taking over the stale lock of pid %s (no longer running): %s", other["pid"], self.path
            )
            self.path.unlink(missing_ok=True)
            if not self._create():
                raise self._refusal(self._holder())
        _HELD[key] = 1
        if self.joinable:
            _JOINABLE.add(key)

    def release(self) -> None:
        """Let go of one hold; the outermost removes the file if it still names this process."""
        key = self._key()
        if _HELD.get(key, 0) > 1:
            _HELD[key] -= 1
            return
        _HELD.pop(key, None)
        _JOINABLE.discard(key)
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
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
