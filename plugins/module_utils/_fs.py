# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system helpers: atomic writes, safe removal, disk usage.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import stat
import tempfile

from ._errors import VzError


def atomic_write(path, data, mode=0o644):
    """Write ``data`` (str or bytes) to ``path`` so that readers see the old or the new file, never a mix."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def _file_ids(uid, gid):
    """Create files as ``uid``/``gid`` in this thread (setfsuid/setfsgid; 0 changes nothing).

    Host root is not mapped inside an unprivileged VE's user namespace, so the VE's overlay refuses
    to create a file for it (EOVERFLOW); the VE's mapped root may. Only file-system ids change, and
    only for the calling thread.
    """
    if not uid and not gid:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    old_gid = libc.setfsgid(gid)
    old_uid = libc.setfsuid(uid)
    try:
        yield
    finally:
        libc.setfsuid(old_uid)
        libc.setfsgid(old_gid)


def write_inside(root, subdir, filename, data, uid=0, gid=0, mode=0o644):
    """Atomically write ``root/subdir/filename`` in a tree that someone else controls (a VE's root).

    ``root`` itself is trusted (a private area, or ``/proc/<pid>/root`` of a running VE); nothing
    below it is: ``subdir`` is opened without following symbolic links, the new content goes to a
    fresh temporary file (O_EXCL) that is renamed over ``filename`` (a link there is replaced, never
    followed). Files and a missing ``subdir`` are created as ``uid``/``gid`` (the VE's root).
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    dir_fd = None
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with _file_ids(uid, gid):
            try:
                dir_fd = os.open(subdir, flags, dir_fd=root_fd)
            except FileNotFoundError:
                os.mkdir(subdir, 0o755, dir_fd=root_fd)
                dir_fd = os.open(subdir, flags, dir_fd=root_fd)
            tmp = '.%s.osvirt-%s' % (filename, secrets.token_hex(4))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                         dir_fd=dir_fd)
            try:
                try:
                    os.write(fd, data)
                    os.fchmod(fd, mode)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, filename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
        os.close(root_fd)


def write_json(path, value, mode=0o644):
    """Atomically write ``value`` as indented JSON."""
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + '\n', mode)


def read_json(path, default=None):
    """Read a JSON file; return ``default`` when it does not exist.

    A file that is not JSON (cut short by a full disk or a crash of something that did not write
    atomically, or edited by hand) raises VzError naming it, never a bare decoding error.
    """
    try:
        with open(path, 'rb') as handle:
            data = handle.read()
    except FileNotFoundError:
        return default
    try:
        return json.loads(data.decode('utf-8'))
    except ValueError as exc:
        raise VzError('%s is not valid JSON (%s): %s' % (
            path, 'an empty file' if not data.strip() else exc,
            'it was cut short (a full disk or a crash) or edited by hand; put it right or remove it'))


def remove_tree(path):
    """Remove ``path`` without following symbolic links.

    A symlink is unlinked itself; a directory is removed with the fd-based rmtree that never
    descends through links, so nothing outside ``path`` is touched.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux always has it
            raise OSError('refusing to remove %s: this platform cannot remove trees safely' % path)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def disk_usage(path):
    """Bytes allocated on disk under ``path`` (like ``du -s``), not following links, hard links once."""
    total = 0
    seen = set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return total


def sync_filesystem(path):
    """Write back the dirty data of the file system that holds ``path`` (``syncfs``; ``sync`` where
    libc has none). Migration calls it after the copy rounds, while the VE still runs: on ext4 the
    first fsync after a large copy otherwise flushes all of it, inside the downtime."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        except AttributeError:
            os.sync()
            return
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def make_dirs(path, mode=0o711):
    """Create ``path`` and its parents with ``mode`` when missing; return True if it was created."""
    if os.path.isdir(path):
        return False
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    return True
