# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""File-system helpers: atomic writes, safe removal, disk usage.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile


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


def write_json(path, value, mode=0o644):
    """Atomically write ``value`` as indented JSON."""
    atomic_write(path, json.dumps(value, indent=2, sort_keys=True) + '\n', mode)


def read_json(path, default=None):
    """Read a JSON file; return ``default`` when it does not exist."""
    try:
        with open(path, 'rb') as handle:
            return json.loads(handle.read().decode('utf-8'))
    except FileNotFoundError:
        return default


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


def make_dirs(path, mode=0o711):
    """Create ``path`` and its parents with ``mode`` when missing; return True if it was created."""
    if os.path.isdir(path):
        return False
    os.makedirs(path, mode=mode, exist_ok=True)
    os.chmod(path, mode)
    return True
