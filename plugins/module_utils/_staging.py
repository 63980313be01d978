# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Work directories in ``<vz_root>/.tmp`` that a crash cannot leave behind for good.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Everything built before it is published by rename (a new VE's directory, a template version, a
shifted template copy, a copy from another host) and everything renamed away before it is deleted
(a removed VE or version) lives in ``.tmp`` meanwhile. ``make`` creates such a directory and keeps
an ``flock`` on it for as long as the process works in it; the kernel drops that lock when the
process dies, whatever killed it. ``sweep`` therefore tells a dead run's leftovers from work in
progress without guessing from ages or pids: an entry it can lock belongs to nobody, and is removed
(after detaching whatever is still mounted below it, such as the merged view of a template build).

Making a directory and locking it are two steps: ``<vz_root>/locks/tmp-sweep.lock`` keeps a sweep
out of that gap (``make`` holds it shared, ``sweep`` exclusively while it picks its victims), so
``.tmp`` itself holds nothing but work.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import tempfile

from ._fs import make_dirs, remove_tree
from ._quota import remove_subvolumes_below

# prefixes of the entries this collection makes in .tmp; nothing else there is touched
PREFIXES = ('ve-', 'trash-', 'build-', 'shift-', 'copy-', 'snap-', 'clone-', 'restore-', 'backup-')
_SWEEP_LOCK = 'tmp-sweep.lock'
_MNT_DETACH = 2

_held = {}   # path -> fd of the flock on it, for the life of the work


def _sweep_lock(tmp_dir, mode):
    locks = os.path.join(os.path.dirname(os.path.abspath(tmp_dir)), 'locks')
    make_dirs(locks, 0o700)
    fd = os.open(os.path.join(locks, _SWEEP_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, mode)
    return fd


def make(tmp_dir, prefix):
    """A new directory ``<tmp_dir>/<prefix>XXXXXXXX`` held by this process until ``release`` or ``discard``."""
    guard = _sweep_lock(tmp_dir, fcntl.LOCK_SH)
    try:
        path = tempfile.mkdtemp(prefix=prefix, dir=tmp_dir)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(guard)
    _held[path] = fd
    return path


def release(path):
    """Stop holding ``path`` (it was published by rename, or removed)."""
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


def discard(path):
    """Remove the work directory ``path`` (and what is mounted below it), then stop holding it."""
    try:
        _remove(path)
    finally:
        release(path)


def sweep(tmp_dir):
    """Remove what dead runs left in ``tmp_dir``; returns the names removed. Never waits for a live run."""
    try:
        names = sorted(n for n in os.listdir(tmp_dir) if n.startswith(PREFIXES))
    except FileNotFoundError:
        return []
    if not names:
        return []
    try:
        guard = _sweep_lock(tmp_dir, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return []   # a directory is being made right now: the next run sweeps
        raise
    dead = []
    try:
        for name in names:
            path = os.path.join(tmp_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)   # held: work in progress
                continue
            dead.append((name, fd))
    finally:
        os.close(guard)
    removed = []
    for name, fd in dead:
        try:
            _remove(os.path.join(tmp_dir, name))
            removed.append(name)
        except OSError:
            pass   # cleaning up must not fail the operation that sweeps; the next run tries again
        finally:
            os.close(fd)
    return removed


def mounts_below(path):
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    found = []
    prefix = path.rstrip('/') + '/'
    with open('/proc/self/mountinfo', 'r', encoding='utf-8', errors='surrogateescape') as handle:
        for line in handle:
            point = _unescape(line.split()[4])
            if point == path or point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _unescape(text):
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == '\\' and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return ''.join(out)


def _remove(path):
    """Detach every mount below ``path`` (lazily: a dead build's merged view may still be busy), then remove it."""
    libc = None
    for point in mounts_below(path):
        libc = libc or ctypes.CDLL(None, use_errno=True)
        if libc.umount2(point.encode('utf-8', 'surrogateescape'), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise OSError(err, 'cannot detach %s: %s' % (point, os.strerror(err)))
    remove_subvolumes_below(path)   # read-only snapshots cannot be emptied file by file
    remove_tree(path)
