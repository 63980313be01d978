# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a file tree's ids into or out of an unprivileged VE's id range.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A file holds ids in four places, and a shifted copy must move all of them:

- its owner and group (``lchown``, which clears setuid/setgid bits and drops file capabilities,
  so both are put back afterwards);
- POSIX ACLs, the ``system.posix_acl_access`` and ``system.posix_acl_default`` xattrs: a header
  (u32 version 2) and entries of (u16 tag, u16 perm, u32 id); only named user (ACL_USER) and
  named group (ACL_GROUP) entries carry an id;
- file capabilities, ``security.capability``: v2 (20 bytes) has no id and counts for host root
  only; v3 (24 bytes) ends with the host uid of the root of the user namespace it counts in.

Other xattrs hold no ids the kernel interprets (``user.*`` and ``trusted.*`` are opaque data,
``security.selinux`` a label). ``security.evm`` / ``security.ima`` signatures cover owners and
would no longer verify after a shift; Debian does not use them, and ``cp -a`` skips
``security.evm`` anyway. All values are little-endian, as the kernel stores them.
"""

from __future__ import annotations

import os
import stat

from ._errors import VzError

# Bump when ``shift_tree`` starts moving ids it left alone before: shifted copies made by an older
# format are then made again (``TemplateStore.shifted_rootfs`` puts the format in the copy's path).
# 1: owners and file capabilities. 2: also POSIX ACLs (access and default), v3 capability root ids.
SHIFT_FORMAT = 2

ACL_XATTRS = ('system.posix_acl_access', 'system.posix_acl_default')
CAP_XATTR = 'security.capability'

_ACL_VERSION = 2
_ACL_USER, _ACL_GROUP = 0x02, 0x08
_ACL_HEADER, _ACL_ENTRY = 4, 8
_VFS_CAP_V2 = 0x02000000
_VFS_CAP_V3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xff000000
_CAP_V2_SIZE, _CAP_V3_SIZE = 20, 24


# -- POSIX ACLs -----------------------------------------------------------------------------------
def acl_entries(raw):
    """The (tag, perm, id) entries of a POSIX ACL xattr value; VzError when it is not one."""
    if len(raw) < _ACL_HEADER or (len(raw) - _ACL_HEADER) % _ACL_ENTRY:
        raise VzError('not a POSIX ACL xattr: %d bytes' % len(raw))
    version = int.from_bytes(raw[:_ACL_HEADER], 'little')
    if version != _ACL_VERSION:
        raise VzError('POSIX ACL xattr of version %d (only version %d exists)' % (version, _ACL_VERSION))
    return [(int.from_bytes(raw[i:i + 2], 'little'), int.from_bytes(raw[i + 2:i + 4], 'little'),
             int.from_bytes(raw[i + 4:i + 8], 'little'))
            for i in range(_ACL_HEADER, len(raw), _ACL_ENTRY)]


def acl_bytes(entries):
    """The xattr value of a POSIX ACL made of (tag, perm, id) entries."""
    return _ACL_VERSION.to_bytes(_ACL_HEADER, 'little') + b''.join(
        tag.to_bytes(2, 'little') + perm.to_bytes(2, 'little') + ident.to_bytes(4, 'little')
        for tag, perm, ident in entries)


def shift_acl(raw, new_uid, new_gid):
    """A POSIX ACL xattr value with named user and group ids passed through ``new_uid``/``new_gid``.

    The other entries (owner, owning group, mask, other) carry no id (0xffffffff) and stay as they
    are, so the permissions and the file mode they mirror do not change.
    """
    entries = []
    for tag, perm, ident in acl_entries(raw):
        if tag == _ACL_USER:
            ident = new_uid(ident)
        elif tag == _ACL_GROUP:
            ident = new_gid(ident)
        entries.append((tag, perm, ident))
    return acl_bytes(entries)


# -- file capabilities -----------------------------------------------------------------------------
def capability_rootid(raw):
    """The root id a file capability counts for: 0 for v2, the stored id for v3, None if neither."""
    if len(raw) < _CAP_V2_SIZE:
        return None
    revision = int.from_bytes(raw[:4], 'little') & _VFS_CAP_REVISION_MASK
    if revision == _VFS_CAP_V2:
        return 0
    if revision == _VFS_CAP_V3 and len(raw) >= _CAP_V3_SIZE:
        return int.from_bytes(raw[20:24], 'little')
    return None


def shift_capability(raw, rootid):
    """A file capability xattr rewritten for a user namespace whose root is host id ``rootid``.

    v2 capabilities (no root id) only count for host root; a VE needs v3 with its root id. With
    ``rootid`` 0 the result is v2 again, as a host tree stores it. Other values come back as they are.
    """
    if capability_rootid(raw) is None:
        return raw
    flags = int.from_bytes(raw[:4], 'little') & ~_VFS_CAP_REVISION_MASK
    body = raw[4:_CAP_V2_SIZE]
    if rootid == 0:
        return (_VFS_CAP_V2 | flags).to_bytes(4, 'little') + body
    return (_VFS_CAP_V3 | flags).to_bytes(4, 'little') + body + int(rootid).to_bytes(4, 'little')


# -- trees -------------------------------------------------------------------------------------------
def id_mover(base, count, back=False):
    """A function moving one id into ``[base, base+count)`` (``back``: out of it); others stay."""
    if back:
        return lambda value: value - base if base <= value < base + count else value
    return lambda value: value + base if value < count else value


def _xattr(path, key):
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError:
        return None


def shift_inode(path, st, new_uid, new_gid):
    """Move one file's owner, ACL ids and capability root id; keep its mode bits."""
    uid, gid = new_uid(st.st_uid), new_gid(st.st_gid)
    link = stat.S_ISLNK(st.st_mode)
    try:
        names = () if link else os.listxattr(path, follow_symlinks=False)
    except OSError:   # a file system without xattrs: owners only
        names = ()
    caps = _xattr(path, CAP_XATTR) if CAP_XATTR in names and stat.S_ISREG(st.st_mode) else None
    acls = [(key, _xattr(path, key)) for key in ACL_XATTRS if key in names]
    if (uid, gid) != (st.st_uid, st.st_gid):
        os.lchown(path, uid, gid)
    if caps is not None:
        rootid = capability_rootid(caps)
        new = caps if rootid is None else shift_capability(caps, new_uid(rootid))
        # chown dropped the xattr even when the root id stays: always write it back
        if new != caps or (uid, gid) != (st.st_uid, st.st_gid):
            os.setxattr(path, CAP_XATTR, new, follow_symlinks=False)
    for key, raw in acls:
        if raw is None:
            continue
        try:
            new = shift_acl(raw, new_uid, new_gid)
        except VzError as exc:
            raise VzError('%s of %s: %s' % (key, path, exc))
        if new != raw:
            os.setxattr(path, key, new, follow_symlinks=False)
    if not link and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(path, stat.S_IMODE(st.st_mode))


def shift_tree(root, idmap, back=False):
    """Move every id in ``root`` into the id range (``back``: out of it, to host ids).

    Owners, POSIX ACL entries (access and default) and v3 capability root ids move; setuid/setgid
    bits and file capabilities survive the ``chown``. Overlay whiteouts (0/0 character devices)
    are shifted like any other file. Ids outside the source range are left alone. Each inode is
    shifted once, however many hard links it has.
    """
    new_uid = id_mover(idmap.uid, idmap.count, back)
    new_gid = id_mover(idmap.gid, idmap.count, back)
    seen = set()

    def shift(path):
        st = os.lstat(path)
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
        shift_inode(path, st, new_uid, new_gid)
    shift(root)
    for current, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            shift(os.path.join(current, entry))
