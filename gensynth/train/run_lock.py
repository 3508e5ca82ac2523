"""One trainer per run directory: ``<run_dir>/run.lock``.

The lock is an exclusive ``flock`` on ``run.lock``, which also records its holder (pid, host, start time).
The kernel releases a flock when its process dies, so a lock left by a killed trainer (kill -9, a crash, a
lost node on a filesystem with working flock) is simply taken over, with a note naming the old holder. A
lock still held by a left-over child of a dead trainer on this host (a data worker that inherited it) is
recognised by its holder's pid no longer running and taken over by replacing the file. A live holder makes
the second trainer stop with a one-line error naming it. The file is removed when the run ends.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from gensynth.errors import GensynthError

LOCK_FILE = "run.lock"


class RunDirError(GensynthError):
    """The run directory cannot be created or locked (read-only, disk full ...)."""


class RunDirBusyError(RunDirError):
    """Another trainer holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        holder = json.loads(raw.decode() or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {since})"


class RunLock:
    """``with RunLock(run_dir) as lock:`` ... ; ``lock.taken_over`` describes a stale holder it replaced."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.taken_over: str | None = None
        self._fd: int | None = None
        self._created_dir = False

    def acquire(self) -> "RunLock":
        try:
            self._created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.run_dir}: {exc.strerror or exc}") from None
        host = socket.gethostname()
        for _ in range(20):  # another process may replace the file between open and flock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot create the run lock {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if holder.get("host") == host and isinstance(holder.get("pid"), int) and \
                        not _pid_alive(holder["pid"]):
                    # held by an orphaned child of a dead trainer: the file is replaced, the orphan keeps the old one
                    self._unlink_if_same(holder)
                    self.taken_over = _describe(holder)
                    continue
                raise RunDirBusyError(f"run directory {self.run_dir} is in use by another trainer: "
                                      f"{_describe(holder)}; wait for it or stop it, or choose another --run-dir "
                                      f"(lock: {self.path})") from None
            if not self._is_current(fd):  # the file was replaced or removed after we opened it
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous and previous.get("pid") != os.getpid():
                self.taken_over = _describe(previous)
            self._fd = fd
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode())
                os.fsync(fd)
            except OSError as exc:
                self.release()
                raise RunDirError(f"cannot write the run lock {self.path}: {exc.strerror or exc}") from None
            return self
        raise RunDirBusyError(f"cannot lock run directory {self.run_dir}: {self.path} keeps changing")

    def _is_current(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)

    def _unlink_if_same(self, holder: dict) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            if _read_holder(fd) == holder:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._is_current(self._fd):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        if self._created_dir:  # a run that failed before writing anything leaves no empty directory behind
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
