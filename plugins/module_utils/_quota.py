# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk quota of a VE's private area: one btrfs subvolume per VE, limited by its quota group.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Why btrfs quota groups and not ext4/XFS project quotas: see docs/disk-quota.md. In short, the
kernels this collection is tested on may lack ext4 and XFS quota support (CONFIG_QFMT_V2,
CONFIG_XFS_QUOTA), while btrfs quota groups are part of btrfs itself. A VE's ``private`` directory
(overlay upper and work dirs) is a subvolume; the limit is the ``max_referenced`` of its level-0
quota group, so a write beyond it fails inside the VE with EDQUOT ("Disk quota exceeded"), and
the limit can be raised or lowered while the VE runs.

Everything is done with the kernel's btrfs ioctls through ``fcntl.ioctl`` and ``struct`` (Python
standard library only, no btrfs-progs on the managed host at run time); usage is read from
``/sys/fs/btrfs/<fsid>/qgroups`` (Linux 5.9 and later).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import uuid

from ._errors import VzError
from ._fs import remove_tree

SYSFS_BTRFS = '/sys/fs/btrfs'
MOUNTINFO = '/proc/self/mountinfo'
# The root directory of every btrfs subvolume has this inode number (BTRFS_FIRST_FREE_OBJECTID).
SUBVOLUME_ROOT_INO = 256
# max_referenced value that means "no limit" in the limit ioctl (the kernel's CLEAR_VALUE).
NO_LIMIT = (1 << 64) - 1
LIMIT_MAX_RFER = 1
VOL_NAME_MAX = 4087
WHAT_TO_DO = ("run the osvirt.vz.host role with host_vz_filesystem: {type: loop, size: <size>} to put "
              "vz_root on a btrfs volume with quotas (see docs/disk-quota.md)")


def _ioc(direction, number, size):
    """An ioctl request number of the btrfs family (type 0x94), as <linux/ioctl.h> builds it."""
    return (direction << 30) | (size << 16) | (0x94 << 8) | number


_WRITE, _READ = 1, 2
IOC_SYNC = _ioc(0, 8, 0)
IOC_SUBVOL_CREATE = _ioc(_WRITE, 14, 4096)          # struct btrfs_ioctl_vol_args
IOC_SNAP_DESTROY = _ioc(_WRITE, 15, 4096)
IOC_INO_LOOKUP = _ioc(_READ | _WRITE, 18, 4096)     # struct btrfs_ioctl_ino_lookup_args
IOC_FS_INFO = _ioc(_READ, 31, 1024)                 # struct btrfs_ioctl_fs_info_args
IOC_QGROUP_CREATE = _ioc(_WRITE, 42, 16)            # struct btrfs_ioctl_qgroup_create_args
IOC_QGROUP_LIMIT = _ioc(_READ, 43, 48)              # declared _IOR in the kernel's header
IOC_SNAP_CREATE_V2 = _ioc(_WRITE, 23, 4096)         # struct btrfs_ioctl_vol_args_v2
SUBVOL_RDONLY = 1 << 1
SUBVOL_NAME_MAX = 4039


# -- pure helpers (unit-tested) ------------------------------------------------------------------
def vol_args(name):
    """struct btrfs_ioctl_vol_args for a subvolume ``name`` (one path component)."""
    raw = name.encode('utf-8')
    if not raw or b'/' in raw or raw in (b'.', b'..') or len(raw) > VOL_NAME_MAX:
        raise VzError('invalid subvolume name %r' % name)
    return struct.pack('=q4088s', 0, raw)


def snap_args(source_fd, name, readonly):
    """struct btrfs_ioctl_vol_args_v2 for a snapshot of the subvolume open as ``source_fd`` named ``name``."""
    raw = name.encode('utf-8')
    if not raw or b'/' in raw or raw in (b'.', b'..') or len(raw) > SUBVOL_NAME_MAX:
        raise VzError('invalid subvolume name %r' % name)
    return struct.pack('=qQQ32s4040s', source_fd, 0, SUBVOL_RDONLY if readonly else 0, bytes(32), raw)


def limit_args(qgroup, max_referenced):
    """struct btrfs_ioctl_qgroup_limit_args: limit the referenced bytes of ``qgroup`` (``None``: no limit)."""
    value = NO_LIMIT if max_referenced is None else int(max_referenced)
    return struct.pack('=6Q', qgroup, LIMIT_MAX_RFER, value, 0, 0, 0)


def qgroup_id(level, subvolume_id):
    """The 64-bit id of quota group ``level/subvolume_id``."""
    return (level << 48) | subvolume_id


def find_mount(path, mountinfo_text):
    """The mount holding ``path``: dict(mount_point, fstype, source, options) from mountinfo text.

    The longest mount point that is ``path`` or one of its parents wins; later lines win on ties
    (a mount over another one).
    """
    best = None
    for line in mountinfo_text.splitlines():
        left, _sep, right = line.partition(' - ')
        fields, rfields = left.split(), right.split()
        if len(fields) < 6 or len(rfields) < 3:
            continue
        point = _unescape(fields[4])
        if not (path == point or path.startswith(point.rstrip('/') + '/')):
            continue
        if best is None or len(point) >= len(best['mount_point']):
            best = {'mount_point': point, 'fstype': rfields[0], 'source': _unescape(rfields[1]),
                    'options': fields[5] + ',' + rfields[2]}
    return best


def _unescape(text):
    # mountinfo escapes space, tab, newline and backslash as octal
    for code, char in (('\\040', ' '), ('\\011', '\t'), ('\\012', '\n'), ('\\134', '\\')):
        text = text.replace(code, char)
    return text


def check_limits(name, space_bytes, inodes, used, current_limit, force=False):
    """Decide whether the quota of VE ``name`` changes; refuse what cannot or should not be done.

    ``used`` and ``current_limit`` are bytes (``None``: no quota yet / no limit). Returns True when
    the limit differs from ``current_limit``. Raises VzError for a zero or negative value, for
    ``inodes`` (btrfs has no inode quota) and for a limit below the current use unless ``force``.
    """
    if inodes is not None:
        raise VzError('VE %s: disk.inodes cannot be limited: osvirt.vz limits disk space with btrfs quota '
                      'groups, which count bytes, not files (see docs/disk-quota.md); leave disk.inodes '
                      'unset' % name)
    if space_bytes is not None:
        if isinstance(space_bytes, bool) or not isinstance(space_bytes, int) or space_bytes <= 0:
            raise VzError('VE %s: disk.space must be a positive number of bytes, got %r' % (name, space_bytes))
        if used is not None and space_bytes < used and space_bytes != current_limit and not force:
            raise VzError('VE %s uses %s of disk space; a disk.space limit of %s is below that, so every '
                          'write inside the VE would fail with "Disk quota exceeded" until files are '
                          'deleted; set force: true to apply it anyway' % (name, human(used), human(space_bytes)))
    return space_bytes != current_limit


def human(size):
    """Bytes as a short string with a binary unit (20M, 1.5G)."""
    value = float(size)
    for unit in ('', 'K', 'M', 'G', 'T'):
        if abs(value) < 1024 or unit == 'T':
            text = ('%.1f' % value).rstrip('0').rstrip('.')
            return text + unit
        value /= 1024
    return str(size)  # pragma: no cover


# -- the file system -----------------------------------------------------------------------------
def _open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def filesystem_uuid(path):
    """The btrfs file system id of ``path``; OSError (ENOTTY) when it is not on btrfs."""
    fd = _open_dir(path)
    try:
        buf = bytearray(1024)
        fcntl.ioctl(fd, IOC_FS_INFO, buf)
    finally:
        os.close(fd)
    return str(uuid.UUID(bytes=bytes(buf[16:32])))


def is_subvolume(path):
    """True when ``path`` is the root directory of a btrfs subvolume."""
    try:
        st = os.lstat(path)
        if st.st_ino != SUBVOLUME_ROOT_INO or not os.path.isdir(path):
            return False
        filesystem_uuid(path)
    except OSError:
        return False
    return True


def subvolume_id(path):
    """The id of the subvolume holding ``path`` (its level-0 quota group is 0/<id>)."""
    fd = _open_dir(path)
    try:
        buf = bytearray(struct.pack('=QQ', 0, SUBVOLUME_ROOT_INO) + bytes(4080))
        fcntl.ioctl(fd, IOC_INO_LOOKUP, buf)
    finally:
        os.close(fd)
    return struct.unpack_from('=Q', buf)[0]


def _qgroups_dir(path):
    return os.path.join(SYSFS_BTRFS, filesystem_uuid(path), 'qgroups')


def _read_int(path):
    with open(path, 'r', encoding='ascii') as handle:
        return int(handle.read().strip())


def _sync(path):
    """Commit the file system's transaction so quota group figures are current."""
    fd = _open_dir(path)
    try:
        fcntl.ioctl(fd, IOC_SYNC)
    finally:
        os.close(fd)


def _data_path(host):
    # resolved: a vz_root that is a symbolic link still names the file system it points to
    return os.path.realpath(host.ves_dir if os.path.isdir(host.ves_dir) else host.vz_root)


def quota_supported(host):
    """Whether VEs of ``host`` can get a disk space quota: ``(True, how)`` or ``(False, why and what to do)``."""
    path = _data_path(host)
    try:
        fsid = filesystem_uuid(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
            return False, 'cannot inspect the file system of %s: %s' % (path, exc.strerror)
        mount = _mount_of(path)
        where = ('%s (%s on %s)' % (mount['fstype'], mount['source'], mount['mount_point'])
                 if mount else 'a file system that is not btrfs')
        return False, ('vz_root %s is on %s, which osvirt.vz cannot use for disk quotas: it limits a VE\'s '
                       'disk space with btrfs quota groups; %s' % (host.vz_root, where, WHAT_TO_DO))
    if not os.path.isdir(os.path.join(SYSFS_BTRFS, fsid, 'qgroups')):
        mount = _mount_of(path)
        point = mount['mount_point'] if mount else path
        return False, ('vz_root %s is on btrfs but quotas are not enabled there; enable them with '
                       '"btrfs quota enable %s" (the osvirt.vz.host role does it for the btrfs image it makes '
                       'with host_vz_filesystem)' % (host.vz_root, point))
    return True, 'btrfs quota groups on the file system of %s' % host.vz_root


def _mount_of(path):
    try:
        with open(MOUNTINFO, 'r', encoding='utf-8') as handle:
            return find_mount(os.path.realpath(path), handle.read())
    except OSError:
        return None


def _require_support(host, name):
    supported, reason = quota_supported(host)
    if not supported:
        raise VzError('VE %s: disk.space cannot be applied: %s' % (name, reason))


def private_path(host, meta):
    """The VE's private area (``<vz_root>/ves/<ve>/private``): the directory the quota covers."""
    return os.path.join(host.ve_dir(meta['name']), 'private')


def create_subvolume(path, mode=0o711, uid=None, gid=None):
    """Create ``path`` as a new, empty btrfs subvolume (the parent must be on btrfs)."""
    parent, name = os.path.split(os.path.abspath(path))
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, IOC_SUBVOL_CREATE, bytearray(vol_args(name)))
    finally:
        os.close(fd)
    os.chmod(path, mode)
    if uid is not None:
        os.chown(path, uid, gid)


def make_private_area(host, path, uid=None, gid=None):
    """Create a VE's private directory: a subvolume when vz_root is on btrfs, else a plain directory.

    The VE manager calls this when it creates a VE, so a later disk.space needs no conversion. It is
    a subvolume even while quotas are off: enabling them later gives every subvolume its quota group.
    """
    try:
        filesystem_uuid(os.path.dirname(os.path.abspath(path)))
        on_btrfs = True
    except OSError:
        on_btrfs = False
    if on_btrfs:
        create_subvolume(path, 0o711, uid, gid)
    else:
        os.mkdir(path, 0o711)
        if uid is not None:
            os.chown(path, uid, gid)
    return path


def snapshot(source, dest, readonly=True):
    """Make ``dest`` a btrfs snapshot of the subvolume ``source`` (read-only unless ``readonly`` is false).

    One ioctl: the kernel flushes the subvolume's dirty data first and shares every extent, so the
    snapshot takes milliseconds and no space until one side changes.
    """
    parent, name = os.path.split(os.path.abspath(dest))
    src_fd = _open_dir(source)
    try:
        fd = _open_dir(parent)
        try:
            fcntl.ioctl(fd, IOC_SNAP_CREATE_V2, bytearray(snap_args(src_fd, name, readonly)))
        finally:
            os.close(fd)
    finally:
        os.close(src_fd)


def on_btrfs(path):
    """True when ``path`` (a directory) lies on btrfs."""
    try:
        filesystem_uuid(path)
    except OSError:
        return False
    return True


def remove_subvolume_tree(path):
    """Remove ``path``: a subvolume (read-only snapshots too) is deleted whole, anything else file by
    file without following links."""
    _remove(path)


def remove_subvolumes_below(path, depth=4):
    """Delete every btrfs subvolume at most ``depth`` levels below ``path`` (VE private areas and
    snapshots in a directory about to be removed; a read-only one cannot be emptied file by file)."""
    if depth < 0 or not os.path.isdir(path) or os.path.islink(path):
        return
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_ino == SUBVOLUME_ROOT_INO and is_subvolume(entry.path):
                _remove(entry.path)
            elif depth > 0:
                remove_subvolumes_below(entry.path, depth - 1)
        except OSError:
            continue


def exclusive_bytes(path):
    """Bytes only the subvolume ``path`` holds (its quota group's ``exclusive``), None without quotas."""
    try:
        group = os.path.join(_qgroups_dir(path), '0_%d' % subvolume_id(path))
        return _read_int(os.path.join(group, 'exclusive'))
    except (OSError, ValueError):
        return None


def _convert(path):
    """Turn the plain directory ``path`` into a subvolume with the same content (VE stopped).

    The copy uses reflinks (no data is duplicated on btrfs) and keeps owners, modes, xattrs and
    overlayfs whiteouts. The old directory is removed only once the new subvolume is in place.
    """
    st = os.lstat(path)
    new, old = path + '.quota-new', path + '.quota-old'
    for leftover in (new, old):
        _remove(leftover)
    create_subvolume(new, st.st_mode & 0o7777, st.st_uid, st.st_gid)
    try:
        proc = subprocess.run(['cp', '-a', '--reflink=always', '--', path + '/.', new + '/'],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise VzError('could not move the private area %s into a quota subvolume: %s'
                          % (path, proc.stderr.strip()), cmd=proc.args, rc=proc.returncode, stderr=proc.stderr)
        os.rename(path, old)
        try:
            os.rename(new, path)
        except OSError:
            os.rename(old, path)
            raise
    except BaseException:
        _remove(new)
        raise
    remove_tree(old)


def _remove(path):
    """Remove a directory tree; a subvolume is deleted whole (fast, done by the kernel's cleaner)."""
    if is_subvolume(path):
        parent, name = os.path.split(os.path.abspath(path))
        fd = _open_dir(parent)
        try:
            fcntl.ioctl(fd, IOC_SNAP_DESTROY, bytearray(vol_args(name)))
            return
        except OSError:
            pass  # e.g. a subvolume nested inside: fall back to removing file by file
        finally:
            os.close(fd)
    remove_tree(path)


# -- what the VE manager and ve_limits call ------------------------------------------------------
def quota_usage(host, meta, sync=False):
    """Disk use and limits of a VE: dict(space_used, space_limit, inodes_used, inodes_limit).

    Bytes; ``None`` where there is no figure (no quota subvolume, no limit, no inode accounting on
    btrfs). Figures are those of the last committed transaction (btrfs commits every 30 s by
    default); ``sync=True`` commits first.
    """
    path = private_path(host, meta)
    usage = {'space_used': None, 'space_limit': None, 'inodes_used': None, 'inodes_limit': None}
    if not is_subvolume(path):
        return usage
    if sync:
        _sync(path)
    group = os.path.join(_qgroups_dir(path), '0_%d' % subvolume_id(path))
    try:
        usage['space_used'] = _read_int(os.path.join(group, 'referenced'))
        if _read_int(os.path.join(group, 'limit_flags')) & LIMIT_MAX_RFER:
            usage['space_limit'] = _read_int(os.path.join(group, 'max_referenced'))
    except (OSError, ValueError):
        pass  # quotas disabled since, or a kernel without the sysfs files (before 5.9)
    return usage


def plan_quota(host, meta, space_bytes, inodes=None, running=False, force=False):
    """Check a quota change without making it; True when ``apply_quota`` would change something.

    Raises VzError (nothing changed) for bad values, a host without quota support, a limit below
    the current use without ``force``, or a running VE whose private area is not yet a subvolume.
    """
    name = meta['name']
    path = private_path(host, meta)
    if space_bytes is None and inodes is None and not is_subvolume(path):
        return False   # no quota asked for and none there: nothing to do on any file system
    if space_bytes is not None:
        _require_support(host, name)
    if not is_subvolume(path):
        check_limits(name, space_bytes, inodes, None, None, force)
        if running:
            raise VzError('VE %s: its private area %s is a plain directory (the VE was made before vz_root had '
                          'quotas), which can become a quota subvolume only while the VE is stopped; stop it, '
                          'set disk.space, then start it' % (name, path))
        return True
    usage = quota_usage(host, meta, sync=space_bytes is not None)
    return check_limits(name, space_bytes, inodes, usage['space_used'], usage['space_limit'], force)


def apply_quota(host, meta, space_bytes, inodes=None, running=False, force=False):
    """Set (or with ``None`` remove) the disk space limit of a VE, live.

    The VE's private area becomes a subvolume first if it is a plain directory (only while the VE
    is stopped). Returns ``{'changed': bool, 'qgroup': '0/<id>' or None}``; the caller records the
    quota group in the VE's metadata if it wants to show it.
    """
    changed = plan_quota(host, meta, space_bytes, inodes, running, force)
    path = private_path(host, meta)
    if changed and not is_subvolume(path):
        _convert(path)
    qgroup = ('0/%d' % subvolume_id(path)) if is_subvolume(path) else None
    if changed and qgroup:
        # Through the parent directory: the ioctl's transaction reserves metadata space in the
        # subvolume of the descriptor, which fails with EDQUOT when that VE is over its limit.
        fd = _open_dir(os.path.dirname(path))
        try:
            fcntl.ioctl(fd, IOC_QGROUP_LIMIT, bytearray(limit_args(qgroup_id(0, subvolume_id(path)), space_bytes)))
        finally:
            os.close(fd)
    return {'changed': changed, 'qgroup': qgroup}


def remove_quota(host, meta, path=None):
    """Delete a VE's quota subvolume and its quota group (on VE removal).

    ``path`` is the private area's current path when the caller has already moved the VE's
    directory away (default: where the VE keeps it). A plain directory is left to the caller's
    tree removal. Deleting the subvolume is one ioctl; the kernel frees the blocks in the background
    and (Linux 6.x) drops the quota group when done. On older kernels a stale, empty quota group
    may remain; it limits nothing (``btrfs qgroup clear-stale`` removes it).
    """
    path = path or private_path(host, meta)
    if not is_subvolume(path):
        return False
    ident = subvolume_id(path)
    parent = os.path.dirname(os.path.abspath(path))
    _remove(path)
    fd = _open_dir(parent)
    try:
        fcntl.ioctl(fd, IOC_QGROUP_CREATE, bytearray(struct.pack('=QQ', 0, qgroup_id(0, ident))))
    except OSError:
        pass  # still in use until the cleaner has freed the blocks, or already dropped by the kernel
    finally:
        os.close(fd)
    return True
