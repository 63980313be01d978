# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-object locks (one per VE, one per template) on the host.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A lock is an ``flock`` on ``<vz_root>/locks/<kind>-<name>.lock``. The holder writes what it is
doing into the file, so a second operation that waits in vain can say what keeps the object busy.
The kernel drops the lock when the holder dies, so a crash never leaves a stale lock.
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

    def __init__(self, locks_dir, kind, name, operation, timeout=60.0):
        self.path = os.path.join(locks_dir, '%s-%s.lock' % (kind, name))
        self.kind = kind
        self.name = name
        self.operation = operation
        self.timeout = timeout
        self._fd = None

    def acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            what = _KIND_WORDS.get(self.kind, self.kind)
            raise VzError('cannot lock %s %s: %s (%s)' % (what, self.name, exc.strerror, self.path))
        deadline = time.monotonic() + max(0.0, self.timeout)
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise VzError('%s %s is busy: %s' % (_KIND_WORDS.get(self.kind, self.kind), self.name,
                                                     holder or 'another operation'),
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

    def release(self):
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


_KIND_WORDS = {'ve': 'VE', 'template': 'template'}


def _read_holder(fd):
    try:
        return os.pread(fd, 512, 0).decode('utf-8', 'replace').strip()
    except OSError:
        return ''
