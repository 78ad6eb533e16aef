"""
What dashd keeps in its data directory (``data_dir``), readable by its own
user only:

- ``dashd.sqlite3`` (and SQLite's ``-wal`` and ``-shm``): the default store;
- ``admin.key``: the first admin key, written on the very first start;
- ``dashd.lock``: held (``flock``) while a dashd, or a dashctl command that
  needs dashd stopped, works on the directory; it holds the owner's PID;
- ``control.sock``: the control socket dashctl talks to while dashd runs
  (L{dashd.ops.control});
- ``firmware/``: firmware uploads while they are checked and sent.

No Twisted here: dashctl imports this and should start quickly.
"""

from __future__ import annotations

import errno
import fcntl
import os

DATABASE_FILE = "dashd.sqlite3"
ADMIN_KEY_FILE = "admin.key"
LOCK_FILE = "dashd.lock"
CONTROL_SOCKET = "control.sock"
FIRMWARE_DIR = "firmware"


def write_secret_file(path: str, secret: str) -> None:
    """Write C{secret} alone on one line, readable by the owner only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DataDirInUse(Exception):
    pass


class DataDirLock:
    """An exclusive lock on a data directory while dashd (or a dashctl
    command that needs dashd stopped) works on it. The kernel releases it
    however the process ends, ``kill -9`` included."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        """@raise DataDirInUse: another process holds it (message says which)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                pass
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise DataDirInUse(
                    "%s is in use by another dashd%s"
                    % (os.path.dirname(self.path), " (pid %s)" % holder if holder else "")
                )
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
