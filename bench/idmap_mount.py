# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make an idmapped bind mount (host ids 0..count-1 seen as base..base+count-1) with raw syscalls.

util-linux 2.38 (Debian 12) has no X-mount.idmap (it came in 2.39), so this probe does what
it would: open_tree(OPEN_TREE_CLONE) + mount_setattr(MOUNT_ATTR_IDMAP, userns fd) + move_mount.
Used by bench/templates.py to compare idmapped lower layers with shifted copies.

    python3 bench/idmap_mount.py SOURCE TARGET BASE [COUNT]
"""

import ctypes
import os
import sys
import time

SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442   # x86_64
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, 0o2000000
AT_RECURSIVE, AT_EMPTY_PATH = 0x8000, 0x1000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000


class MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64),
                ('propagation', ctypes.c_uint64), ('userns_fd', ctypes.c_uint64)]


def userns_fd(base, count):
    """A user namespace fd mapping 0..count-1 to base..: a child unshares, we write its maps."""
    libc = ctypes.CDLL(None, use_errno=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        if libc.unshare(CLONE_NEWUSER) != 0:
            os._exit(1)
        os.read(read_end, 1)  # wait until the parent has taken the namespace
        os._exit(0)
    os.close(read_end)
    for attempt in range(100):   # wait for the child to be in its new namespace
        if os.readlink('/proc/%d/ns/user' % pid) != os.readlink('/proc/self/ns/user'):
            break
        time.sleep(0.01 * (attempt > 0))
    for kind in ('uid_map', 'gid_map'):
        with open('/proc/%d/%s' % (pid, kind), 'w') as handle:
            handle.write('0 %d %d\n' % (base, count))
    fd = os.open('/proc/%d/ns/user' % pid, os.O_RDONLY | os.O_CLOEXEC)
    os.write(write_end, b'x')
    os.waitpid(pid, 0)
    return fd


def idmapped_bind(source, target, base, count=65536):
    libc = ctypes.CDLL(None, use_errno=True)
    tree = libc.syscall(SYS_OPEN_TREE, -100, source.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    if tree < 0:
        raise OSError(ctypes.get_errno(), 'open_tree %s' % source)
    nsfd = userns_fd(base, count)
    try:
        attr = MountAttr(MOUNT_ATTR_IDMAP, 0, 0, nsfd)
        if libc.syscall(SYS_MOUNT_SETATTR, tree, b'', AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.sizeof(attr)) != 0:
            raise OSError(ctypes.get_errno(), 'mount_setattr(MOUNT_ATTR_IDMAP) on %s' % source)
        if libc.syscall(SYS_MOVE_MOUNT, tree, b'', -100, target.encode(), MOVE_MOUNT_F_EMPTY_PATH) != 0:
            raise OSError(ctypes.get_errno(), 'move_mount to %s' % target)
    finally:
        # an open tree fd keeps the mount busy: umount would fail while this process lives
        os.close(tree)
        os.close(nsfd)


if __name__ == '__main__':
    idmapped_bind(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 65536)
