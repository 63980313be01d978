# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shifting the owners of a tree into (or out of) a VE's id range, file capabilities included.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Used by the template store (the shifted copy of a template for unprivileged VEs) and by the
builders (a tree made inside a VE goes back to host ids before it is published).
"""

from __future__ import annotations

import os
import stat

_CAP_XATTR = 'security.capability'
_VFS_CAP_V2 = 0x02000000
_VFS_CAP_V3 = 0x03000000


def shift_capability(raw, rootid):
    """A file capability xattr rewritten for a user namespace whose root is host id ``rootid``.

    v2 capabilities (no root id) only count for host root; a VE needs v3 with its root id. With
    ``rootid`` 0 the result is v2 again, as a host tree stores it.
    """
    if len(raw) < 20:
        return raw
    magic = int.from_bytes(raw[:4], 'little')
    version, flags = magic & 0xff000000, magic & 0x00ffffff
    body = raw[4:20]
    if version not in (_VFS_CAP_V2, _VFS_CAP_V3):
        return raw
    if rootid == 0:
        return (_VFS_CAP_V2 | flags).to_bytes(4, 'little') + body
    return (_VFS_CAP_V3 | flags).to_bytes(4, 'little') + body + int(rootid).to_bytes(4, 'little')


def shift_tree(root, idmap, back=False):
    """Move every owner in ``root`` into the id range (``back``: out of it, to host ids).

    Keeps setuid/setgid bits (``chown`` clears them) and file capabilities (``chown`` drops them;
    they are rewritten for the new root id). Overlay whiteouts (0/0 character devices) are
    shifted like any other file. Ids outside the source range are left alone.
    """
    def new_id(value, base):
        if back:
            return value - base if base <= value < base + idmap.count else value
        return value + base if value < idmap.count else value

    def shift(path):
        st = os.lstat(path)
        uid, gid = new_id(st.st_uid, idmap.uid), new_id(st.st_gid, idmap.gid)
        if (uid, gid) == (st.st_uid, st.st_gid):
            return
        caps = None
        if stat.S_ISREG(st.st_mode):
            try:
                caps = os.getxattr(path, _CAP_XATTR, follow_symlinks=False)
            except OSError:
                caps = None
        os.lchown(path, uid, gid)
        if caps is not None:
            os.setxattr(path, _CAP_XATTR, shift_capability(caps, 0 if back else idmap.uid), follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
    shift(root)
    for current, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            shift(os.path.join(current, entry))
