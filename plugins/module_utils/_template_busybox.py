# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The busybox template builder: Debian's static busybox with init, sh, ip and udhcpc.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The smallest OS template (a few MB, boots in well under a second): tests and the lab use it.
Like every builder (``_template_build.BUILDERS``) it fills an empty ``rootfs`` with files owned
by host ids and returns the builder-specific part of the manifest.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ._errors import VzError

BUSYBOX = '/bin/busybox'

# What init understands, per template family: LXC sends these to halt or reboot a VE.
BUSYBOX_INIT = {'halt_signal': 'SIGUSR1', 'reboot_signal': 'SIGTERM'}

_INITTAB = """\
# osvirt.vz busybox template
::sysinit:/etc/init.d/rcS
::shutdown:/bin/umount -a -r
"""

_RCS = """\
#!/bin/sh
# First script of the VE's init: mount what the system needs, run local start scripts.
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run 2>/dev/null
mkdir -p /run/lock /var/run
for script in /etc/rc.local.d/*; do
    [ -x "$script" ] && "$script"
done
exit 0
"""

_UDHCPC = """\
#!/bin/sh
# udhcpc calls this with the lease in its environment.
[ -n "$1" ] || exit 1
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        if [ -n "$router" ]; then
            ip route replace default via ${router%% *} dev "$interface"
        fi
        : > /etc/resolv.conf
        for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done
        ;;
esac
exit 0
"""


def build_busybox(store, rootfs, source):  # pylint: disable=unused-argument
    """The tiny template: Debian's static busybox with init, sh, ip and udhcpc."""
    binary = source.get('busybox') or BUSYBOX
    if not os.path.isfile(binary):
        raise VzError('%s is missing: install the busybox-static package' % binary)
    if _elf_interpreter(binary):
        raise VzError('%s is dynamically linked; install busybox-static (the VE has no shared libraries)'
                      % binary)
    for sub in ('bin', 'sbin', 'etc/init.d', 'etc/rc.local.d', 'dev', 'proc', 'sys', 'run', 'root',
                'home', 'mnt', 'var/log', 'var/tmp', 'usr/share/udhcpc', 'tmp'):
        os.makedirs(os.path.join(rootfs, sub), 0o755, exist_ok=True)
    os.chmod(os.path.join(rootfs, 'tmp'), 0o1777)
    os.chmod(os.path.join(rootfs, 'var/tmp'), 0o1777)
    os.chmod(os.path.join(rootfs, 'root'), 0o700)
    shutil.copy2(binary, os.path.join(rootfs, 'bin/busybox'))
    os.chmod(os.path.join(rootfs, 'bin/busybox'), 0o755)
    applets = subprocess.run([binary, '--list'], capture_output=True, check=True).stdout.decode().split()
    for applet in ('init', 'sh', 'ip', 'udhcpc'):
        if applet not in applets:
            raise VzError('%s lacks the %s applet the busybox template needs' % (binary, applet))
    for applet in applets:
        if applet != 'busybox' and '/' not in applet:
            os.symlink('busybox', os.path.join(rootfs, 'bin', applet))
    for applet in ('init', 'halt', 'poweroff', 'reboot'):
        os.symlink('../bin/busybox', os.path.join(rootfs, 'sbin', applet))
    files = {
        'etc/inittab': (_INITTAB, 0o644),
        'etc/init.d/rcS': (_RCS, 0o755),
        'usr/share/udhcpc/default.script': (_UDHCPC, 0o755),
        'etc/passwd': ('root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
                       0o644),
        'etc/group': ('root:x:0:\nnogroup:x:65534:\n', 0o644),
        'etc/shadow': ('root:*:19000:0:99999:7:::\n', 0o600),
        'etc/hosts': ('127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n', 0o644),
        'etc/resolv.conf': ('', 0o644),
        'etc/os-release': ('NAME="osvirt busybox"\nID=busybox\nPRETTY_NAME="osvirt.vz busybox template"\n',
                           0o644),
    }
    for rel, (content, mode) in files.items():
        path = os.path.join(rootfs, rel)
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(content)
        os.chmod(path, mode)
    return {
        'os': 'busybox',
        'packages': [{'name': 'busybox-static', 'version': _dpkg_version('busybox-static')}],
        'init': dict(BUSYBOX_INIT),
    }


def _elf_interpreter(path):
    """True when the ELF file at ``path`` asks for a dynamic loader (PT_INTERP)."""
    with open(path, 'rb') as handle:
        head = handle.read(64)
        if head[:4] != b'\x7fELF' or head[4] != 2:
            return False
        phoff = int.from_bytes(head[32:40], 'little')
        phentsize = int.from_bytes(head[54:56], 'little')
        phnum = int.from_bytes(head[56:58], 'little')
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    return any(int.from_bytes(table[i * phentsize:i * phentsize + 4], 'little') == 3 for i in range(phnum))


def _dpkg_version(package):
    try:
        proc = subprocess.run(['dpkg-query', '-W', '-f=${Version}', package], capture_output=True, check=False)
    except FileNotFoundError:
        return None
    return proc.stdout.decode().strip() or None
