# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probe: does overlayfs, mounted inside a VE's user namespace as LXC mounts a VE's rootfs, take
idmapped lower layers on this kernel? One template tree (host ids), two VEs with different id
ranges, no shifted copy.

For each of two id ranges: an idmapped bind mount of each of two lower layers (host ids 0.. seen
as base..), then a child that unshares a user namespace mapped to that range and a mount
namespace and mounts overlay(lower2:lower1, upper owned by the range's root, userxattr) the way
LXC does for `lxc.rootfs.path = overlay:...`. It checks, inside and outside: owners, a POSIX ACL
naming group 4, a v2 file capability, copy-up into the upper dir (owned by the range on the
host), a whiteout, and that both VEs read the same page cache (fincore of the one lower file).

    python3 bench/idmap_overlay.py            # prints one JSON object; exit 0 when all checks pass

Needs root and an ext4/xfs/btrfs/tmpfs directory (idmapped mounts), /var/tmp by default.
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idmap_mount import idmapped_bind  # noqa: E402  pylint: disable=wrong-import-position

CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18
MNT_DETACH = 2
RANGES = (200000, 300000)
COUNT = 65536
ACL_GROUP = 0x08


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _acl_groups(raw):
    return [int.from_bytes(raw[i + 4:i + 8], 'little') for i in range(4, len(raw), 8)
            if int.from_bytes(raw[i:i + 2], 'little') == ACL_GROUP]


def make_layers(root):
    """Two layers owned by host ids: lower1 (a file, a big file, an ACL, a capability), lower2
    (one file changed)."""
    l1, l2 = os.path.join(root, 'lower1'), os.path.join(root, 'lower2')
    for path in (l1, l2, os.path.join(l1, 'etc'), os.path.join(l1, 'var/log/journal'), os.path.join(l1, 'bin'),
                 os.path.join(l2, 'etc')):
        os.makedirs(path, exist_ok=True)
    with open(os.path.join(l1, 'etc/hostname'), 'w') as handle:
        handle.write('lower1\n')
    with open(os.path.join(l1, 'etc/gone'), 'w') as handle:
        handle.write('to be deleted\n')
    with open(os.path.join(l2, 'etc/hostname'), 'w') as handle:
        handle.write('lower2\n')
    with open(os.path.join(l1, 'big'), 'wb') as handle:
        handle.write(os.urandom(8 << 20))
    os.chown(os.path.join(l1, 'var/log/journal'), 0, 4)
    subprocess.run(['setfacl', '-m', 'g:4:rx', '-d', '-m', 'g:4:rx', os.path.join(l1, 'var/log/journal')], check=True)
    shutil.copy('/bin/true', os.path.join(l1, 'bin/pinger'))
    subprocess.run(['setcap', 'cap_net_raw+ep', os.path.join(l1, 'bin/pinger')], check=True)
    return l1, l2


def in_ve(base, lowers, upper, work, merged, result_fd):
    """Child: a user namespace mapped to base, a mount namespace, overlay as LXC mounts it."""
    libc = _libc()
    read_end, write_end = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        os.close(ready_r)
        out = {}
        try:
            if libc.unshare(CLONE_NEWUSER) != 0:
                raise OSError(ctypes.get_errno(), 'unshare(CLONE_NEWUSER)')
            os.write(ready_w, b'u')
            os.read(read_end, 1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            if libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), 'unshare(CLONE_NEWNS)')
            libc.mount(b'none', b'/', None, MS_REC | MS_PRIVATE, None)
            options = 'lowerdir=%s,upperdir=%s,workdir=%s,userxattr' % (':'.join(lowers), upper, work)
            started = time.perf_counter()
            if libc.mount(b'overlay', merged.encode(), b'overlay', 0, options.encode()) != 0:
                raise OSError(ctypes.get_errno(), 'mount overlay ' + options)
            out['overlay_mount_ms'] = round((time.perf_counter() - started) * 1000, 2)
            st = os.stat(os.path.join(merged, 'etc/hostname'))
            out['owner_inside'] = [st.st_uid, st.st_gid]
            with open(os.path.join(merged, 'etc/hostname')) as handle:
                out['top_layer_wins'] = handle.read() == 'lower2\n'
            journal = os.path.join(merged, 'var/log/journal')
            out['journal_group_inside'] = os.stat(journal).st_gid
            out['acl_groups_inside'] = _acl_groups(os.getxattr(journal, 'system.posix_acl_access'))
            out['default_acl_groups_inside'] = _acl_groups(os.getxattr(journal, 'system.posix_acl_default'))
            getcap = subprocess.run(['getcap', os.path.join(merged, 'bin/pinger')],
                                    capture_output=True, text=True, check=False)
            out['capability_inside'] = getcap.stdout.split(' ', 1)[-1].strip()
            with open(os.path.join(merged, 'etc/hostname'), 'w') as handle:   # copy-up
                handle.write('ve %d\n' % base)
            os.unlink(os.path.join(merged, 'etc/gone'))                        # whiteout
            os.mkdir(os.path.join(merged, 'new'))
            with open(os.path.join(merged, 'big'), 'rb') as handle:
                while handle.read(1 << 20):
                    pass
            libc.umount2(merged.encode(), MNT_DETACH)
        except OSError as exc:
            out['error'] = str(exc)
        os.write(result_fd, json.dumps(out).encode())
        os._exit(0)
    os.close(read_end)
    os.close(ready_w)
    os.read(ready_r, 1)
    for kind in ('uid_map', 'gid_map'):
        with open('/proc/%d/%s' % (pid, kind), 'w') as handle:
            handle.write('0 %d %d\n' % (base, COUNT))
    os.write(write_end, b'g')
    os.waitpid(pid, 0)


def probe(root):
    l1, l2 = make_layers(root)
    report = {'kernel': os.uname().release, 'ves': {}}
    for base in RANGES:
        ve = os.path.join(root, 've%d' % base)
        mounts = []
        for name, layer in (('l1', l1), ('l2', l2)):
            target = os.path.join(ve, name)
            os.makedirs(target)
            started = time.perf_counter()
            idmapped_bind(layer, target, base, COUNT)
            report.setdefault('idmapped_bind_ms', []).append(round((time.perf_counter() - started) * 1000, 2))
            mounts.append(target)
        upper, work, merged = (os.path.join(ve, d) for d in ('upper', 'work', 'merged'))
        for path in (upper, work, merged):
            os.mkdir(path)
            os.chown(path, base, base)
        st = os.stat(os.path.join(mounts[0], 'etc/hostname'))
        entry = {'owner_on_host_through_idmapped_layer': [st.st_uid, st.st_gid]}
        read_end, write_end = os.pipe()
        in_ve(base, [mounts[1], mounts[0]], upper, work, merged, write_end)
        os.close(write_end)
        entry.update(json.loads(os.read(read_end, 65536) or b'{}'))
        os.close(read_end)
        if 'error' not in entry:
            st = os.stat(os.path.join(upper, 'etc/hostname'))
            entry['copied_up_owner_on_host'] = [st.st_uid, st.st_gid]
            gone = os.lstat(os.path.join(upper, 'etc/gone'))
            entry['whiteout_on_host'] = [gone.st_rdev, gone.st_uid]
            entry['lower_unchanged'] = open(os.path.join(l1, 'etc/hostname')).read() == 'lower1\n'
        for target in mounts:
            subprocess.run(['umount', target], check=False)
        report['ves'][str(base)] = entry
    cached = subprocess.run(['fincore', '-b', '-n', '-o', 'RES', os.path.join(l1, 'big')],
                            capture_output=True, text=True, check=False).stdout.strip()
    report['big_file_bytes'] = 8 << 20
    report['big_file_cached_bytes_after_both_ves_read_it'] = int(cached or 0)
    checks = []
    for base, entry in report['ves'].items():
        base = int(base)
        checks += [
            'error' not in entry,
            entry.get('owner_on_host_through_idmapped_layer') == [base, base],
            entry.get('owner_inside') == [0, 0],
            entry.get('top_layer_wins') is True,
            entry.get('journal_group_inside') == 4,
            entry.get('acl_groups_inside') == [4],
            entry.get('default_acl_groups_inside') == [4],
            entry.get('capability_inside') == 'cap_net_raw=ep',
            entry.get('copied_up_owner_on_host') == [base, base],
            entry.get('whiteout_on_host') == [0, base],
            entry.get('lower_unchanged') is True,
        ]
    report['ok'] = all(checks)
    return report


def main():
    root = tempfile.mkdtemp(prefix='idmap-overlay-', dir=sys.argv[1] if len(sys.argv) > 1 else '/var/tmp')
    try:
        os.chmod(root, 0o755)
        report = probe(root)
    finally:
        subprocess.run(['rm', '-rf', '--one-file-system', root], check=False)
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
