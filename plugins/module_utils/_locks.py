# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-object locks (one per VE, one per template) on the host.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A lock is an ``flock`` on ``<vz_root>/locks/<kind>-<name>.lock``. The holder writes what it is
doing into the file, so a second operation that waits in vain can say what keeps the object busy.
The kernel drops the lock when the holder dies, so a crash never leaves a stale lock.

The file of an object that is gone (a removed VE) is removed by its last holder
(``release(remove=True)``), so a host that makes and removes many VEs keeps no file per name it
ever used. A waiter that gets the lock on a file removed meanwhile sees that the path no longer
names the file it locked and starts again on the new file: two holders never hold one name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ._errors import VzError


class Lock:
    """An exclusive, time-limited lock on one VE or template.

    Use as a context manager::

        with Lock(locks_dir, 've', 'web1', 'start', timeout=60):
            ...
    """

    def __init__(self, locks_dir, kind, name, operation, timeout=60.0, hint=None):
        self.path = os.path.join(locks_dir, '%s-%s.lock' % (kind, name))
        self.kind = kind
        self.name = name
        self.operation = operation
        self.timeout = timeout
        self.hint = hint    # how to wait longer, for the busy message (e.g. the module option)
        self.remove_on_exit = False   # set inside ``with`` when the object is gone
        self._fd = None

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            what = _KIND_WORDS.get(self.kind, self.kind)
            raise VzError('cannot lock %s %s: %s (%s)' % (what, self.name, exc.strerror, self.path))

    def _still_named(self, fd):
        """True when the lock's path still names the file open as ``fd`` (not removed or replaced)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    def acquire(self):
        fd = self._open()
        deadline = time.monotonic() + max(0.0, self.timeout)
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if self._still_named(fd):
                    break
                os.close(fd)   # its last holder removed it: the name has a new file now
                fd = self._open()
                continue
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise VzError('%s %s is busy: %s holds it; gave up waiting after %g s%s'
                              % (_KIND_WORDS.get(self.kind, self.kind), self.name, holder or 'another operation',
                                 self.timeout, ' (%s)' % self.hint if self.hint else ''),
                              busy=True)
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:  # who holds the lock is for messages only: a full disk must not stop the work here
            os.ftruncate(fd, 0)
            os.pwrite(fd, ('%s (pid %d)\n' % (self.operation, os.getpid())).encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self, remove=False):
        """Drop the lock; ``remove``: the object is gone, so its lock file goes too (while held)."""
        if self._fd is not None:
            try:
                if remove:
                    os.unlink(self.path)
                else:
                    os.ftruncate(self._fd, 0)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release(remove=self.remove_on_exit)
        return False


_KIND_WORDS = {'ve': 'VE', 'template': 'template'}


def _read_holder(fd):
    try:
        return os.pread(fd, 512, 0).decode('utf-8', 'replace').strip()
    except OSError:
        return ''
