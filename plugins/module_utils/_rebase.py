# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a rebase hides: files of a VE's private area that cover a file the new template changed.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A VE's root file system is overlay(lower = template layers, upper = private area). After a rebase
the lower layers are those of another version, but every file the VE has written (copied up) or
deleted (a whiteout) stays in the upper dir and still wins. When the new version changed such a
file, the VE never sees that change: ``hidden_files`` finds those paths so an operator can act
(merge the change, or delete the private copy).

The lookups follow overlayfs' rules: the top layer that has a name decides; a whiteout (a 0/0
character device) hides the name in every lower layer; a directory merges with directories below
it until one is opaque (``trusted.overlay.opaque`` or ``user.overlay.opaque`` = ``y``).
"""

from __future__ import annotations

import hashlib
import os
import stat

# At most this many entries are reported per VE; the rest is counted.
HIDDEN_LIMIT = 1000

_OPAQUE_XATTRS = ('trusted.overlay.opaque', 'user.overlay.opaque')


def is_whiteout(st):
    """True for an overlayfs whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path):
    """True when the directory ``path`` hides every directory of the same name below it."""
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b'y':
                return True
        except OSError:
            continue
    return False


def _lstat(path):
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class LayerStack:
    """A read-only view of overlay lower layers (directories, top layer first)."""

    def __init__(self, layers):
        self.layers = list(layers)

    def lookup(self, rel):
        """``(path, stat)`` of the entry the stack shows at ``rel`` (no leading '/'), or None."""
        parts = [p for p in rel.split('/') if p]
        candidates = self.layers
        found = None
        for depth in range(len(parts)):
            below, found = [], None
            for layer in candidates:
                path = os.path.join(layer, *parts[:depth + 1])
                st = _lstat(path)
                if st is None:
                    continue
                if is_whiteout(st):
                    break
                if found is None:
                    found = (path, st)
                    if not stat.S_ISDIR(st.st_mode):
                        break
                elif not stat.S_ISDIR(st.st_mode):
                    break       # a non-directory below a directory is hidden by it
                below.append(layer)
                if is_opaque(path):
                    break
            if found is None:
                return None
            if depth < len(parts) - 1 and not stat.S_ISDIR(found[1].st_mode):
                return None
            candidates = below
        return found

    def listdir(self, rel):
        """Names the stack shows in directory ``rel`` (whiteouts applied by ``lookup``)."""
        names = set()
        for layer in self.layers:
            try:
                names.update(os.listdir(os.path.join(layer, rel)))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return sorted(n for n in names if self.lookup(os.path.join(rel, n)) is not None)


def _digest(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.digest()


def entries_differ(old, new):
    """True when two stack entries (``(path, stat)`` or None) differ for a reader of the VE.

    Type, mode and owner first; then link target, device number, or for regular files size,
    and the contents when the modification times differ (an identical rebuild has new mtimes).
    """
    if old is None or new is None:
        return (old is None) != (new is None)
    (opath, ost), (npath, nst) = old, new
    if stat.S_IFMT(ost.st_mode) != stat.S_IFMT(nst.st_mode):
        return True
    if (stat.S_IMODE(ost.st_mode), ost.st_uid, ost.st_gid) != (stat.S_IMODE(nst.st_mode), nst.st_uid, nst.st_gid):
        return True
    if stat.S_ISLNK(ost.st_mode):
        return os.readlink(opath) != os.readlink(npath)
    if stat.S_ISCHR(ost.st_mode) or stat.S_ISBLK(ost.st_mode):
        return ost.st_rdev != nst.st_rdev
    if stat.S_ISREG(ost.st_mode):
        if ost.st_size != nst.st_size:
            return True
        if ost.st_mtime_ns == nst.st_mtime_ns or (ost.st_dev, ost.st_ino) == (nst.st_dev, nst.st_ino):
            return False
        return _digest(opath) != _digest(npath)
    return False


def _change(old, new):
    if old is None:
        return 'added'
    if new is None:
        return 'removed'
    return 'modified'


def subtree_changes(old, new, rel, limit=HIDDEN_LIMIT):
    """Paths below directory ``rel`` that differ between two stacks (at most ``limit``)."""
    changed, stack = [], [rel]
    while stack and len(changed) < limit:
        current = stack.pop()
        for name in sorted(set(old.listdir(current)) | set(new.listdir(current))):
            child = os.path.join(current, name)
            a, b = old.lookup(child), new.lookup(child)
            if entries_differ(a, b):
                changed.append(child)
            if any(e is not None and stat.S_ISDIR(e[1].st_mode) for e in (a, b)):
                stack.append(child)
    return changed


def hidden_files(upper, old_layers, new_layers, limit=HIDDEN_LIMIT):
    """Entries of the private area ``upper`` that hide something the new template version changed.

    ``old_layers`` and ``new_layers`` are the lower directories of the two versions, top first.
    Returns ``(entries, more)``: a list of dicts ``{path, upper, change}`` sorted by path, where
    ``upper`` says what the private area holds there (``file``, ``whiteout``, ``directory`` over a
    non-directory, or ``opaque directory``) and ``change`` what the template did between the two
    versions (``added``, ``removed``, ``modified``); ``more`` counts entries beyond ``limit``.
    """
    old, new = LayerStack(old_layers), LayerStack(new_layers)
    found, more = [], 0

    def report(rel, kind, change, **extra):
        nonlocal more
        if len(found) >= limit:
            more += 1
            return
        found.append(dict({'path': '/' + rel, 'upper': kind, 'change': change}, **extra))

    stack = ['']
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(upper, current)))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            rel = os.path.join(current, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:   # a running VE removed it meanwhile
                continue
            a, b = old.lookup(rel), new.lookup(rel)
            if stat.S_ISDIR(st.st_mode):
                if is_opaque(entry.path):
                    changes = subtree_changes(old, new, rel) if _is_dir(a) or _is_dir(b) else []
                    if changes or entries_differ(a, b) and not (_is_dir(a) and _is_dir(b)):
                        report(rel, 'opaque directory', _change(a, b), changed_below=len(changes))
                    continue
                if (a is not None and not _is_dir(a) or b is not None and not _is_dir(b)) and entries_differ(a, b):
                    report(rel, 'directory', _change(a, b))
                stack.append(rel)
            elif entries_differ(a, b):
                report(rel, 'whiteout' if is_whiteout(st) else 'file', _change(a, b))
    found.sort(key=lambda e: e['path'])
    return found, more


def _is_dir(entry):
    return entry is not None and stat.S_ISDIR(entry[1].st_mode)
