# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LXC config of a VE: the keys the collection owns, how they are rendered from ve.json, and
the digest that tells whether a running VE runs the config on disk.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Every key of a VE's config outside ``OWNED_PREFIXES`` belongs to the operator and is kept as it is.
"""

from __future__ import annotations

import hashlib
import os

from . import _limits
from ._ve_net import LIVE_NET_KEYS, config_items as net_config_items

# Keys of the LXC config that the collection writes; every other key is kept untouched.
OWNED_PREFIXES = (
    'lxc.uts.', 'lxc.rootfs.', 'lxc.idmap', 'lxc.mount.', 'lxc.cap.', 'lxc.seccomp.',
    'lxc.apparmor.', 'lxc.cgroup.dir', 'lxc.cgroup.devices.', 'lxc.cgroup2.devices.',
    'lxc.signal.', 'lxc.start.', 'lxc.net.', 'lxc.log.', 'lxc.tty.', 'lxc.pty.', 'lxc.autodev',
    'lxc.include', 'lxc.hook.start-host', 'lxc.hook.post-stop', 'lxc.console.path',
) + _limits.OWNED_PREFIXES

# The host role's LXC hook: anti-spoofing filter and network rate of a VE at every start (lxc-autostart too).
NET_HOOK = '/usr/libexec/osvirt-vz/net-hook'
_LIVE_KEYS = ('lxc.hook.start-host', 'lxc.hook.post-stop')

# Security defaults of every VE (DESIGN.md section 7). Device rules follow LXC's common.conf.
DROPPED_CAPABILITIES = 'mac_admin mac_override sys_module sys_rawio sys_time'
SECCOMP_PROFILE = '/usr/share/lxc/config/common.seccomp'
_DEVICES = ('c *:* m', 'b *:* m', 'c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm',
            'c 5:0 rwm', 'c 5:1 rwm', 'c 5:2 rwm', 'c 136:* rwm', 'c 10:229 rwm')


def is_owned(key):
    """True for the LXC config keys the collection manages."""
    return key.startswith(OWNED_PREFIXES)


def render_config(host, meta, lower_dirs, init, limit_items=()):
    """The owned LXC config entries of a VE, as (key, value) pairs in a fixed order.

    ``limit_items`` are the VE's limits as lxc.cgroup.* / lxc.cgroup2.* entries (``_limits.config_items``).
    """
    name = meta['name']
    directory = host.ve_dir(name)
    upper = os.path.join(directory, 'private', 'upper')
    items = [
        ('lxc.uts.name', meta.get('hostname') or name),
        ('lxc.rootfs.path', 'overlay:' + ':'.join(list(lower_dirs) + [upper])),
    ]
    idmap = meta.get('idmap')
    if idmap:
        # inside a user namespace overlayfs cannot write trusted.* xattrs: without userxattr,
        # removing a directory of a lower layer (it needs an opaque mark) fails with EIO
        items.append(('lxc.rootfs.options', 'userxattr'))
        items += [('lxc.idmap', 'u 0 %d %d' % (idmap['uid'], idmap['count'])),
                  ('lxc.idmap', 'g 0 %d %d' % (idmap['gid'], idmap['count']))]
    items += [
        ('lxc.mount.auto', 'proc:mixed sys:mixed cgroup:mixed'),
        ('lxc.cap.drop', DROPPED_CAPABILITIES),
        ('lxc.seccomp.profile', SECCOMP_PROFILE),
        ('lxc.tty.max', str(meta.get('ttys') or 0)),     # 0 keeps the VE checkpointable (docs/criu.md)
        ('lxc.pty.max', '1024'),
    ]
    if meta.get('console') is False:
        items.append(('lxc.console.path', 'none'))   # LXC 5.0 restores a checkpoint only without one
    if meta.get('apparmor'):
        items += [('lxc.apparmor.profile', 'generated'), ('lxc.apparmor.allow_nesting', '0')]
    items += [('lxc.cgroup.devices.deny', 'a')] + [('lxc.cgroup.devices.allow', d) for d in _DEVICES]
    items += [('lxc.cgroup2.devices.deny', 'a')] + [('lxc.cgroup2.devices.allow', d) for d in _DEVICES]
    parent = meta['cgroup_parent']
    items += [
        ('lxc.cgroup.dir.container', '%s/%s' % (parent, name)),
        ('lxc.cgroup.dir.monitor', '%s.monitor/%s' % (parent, name)),
        ('lxc.signal.halt', init.get('halt_signal', 'SIGPWR')),
        ('lxc.signal.reboot', init.get('reboot_signal', 'SIGINT')),
        ('lxc.start.auto', '1' if meta.get('autostart') else '0'),
        ('lxc.log.file', os.path.join(directory, 'lxc.log')),
        ('lxc.log.level', 'ERROR'),
    ]
    items += net_config_items(meta.get('network'))
    for mount in meta.get('mounts') or []:
        options = 'bind,create=%s%s' % ('dir' if os.path.isdir(mount['source']) else 'file',
                                        ',ro' if mount['readonly'] else '')
        items.append(('lxc.mount.entry', '%s %s none %s 0 0' % (mount['source'], mount['target'].lstrip('/'),
                                                                options)))
    return items + list(limit_items)


def is_live_key(key):
    """True for config keys whose change a running VE gets without a restart: limits, the hooks,
    and the addresses and gateways of its interfaces (changed inside its network namespace)."""
    if _limits.is_limit_key(key) or key in _LIVE_KEYS:
        return True
    return key.startswith('lxc.net.') and key.split('.', 3)[-1] in LIVE_NET_KEYS


def config_digest(items):
    """A short digest of owned config entries, order-insensitive.

    Live keys (``is_live_key``) are left out: they are applied to a running VE live, so they never
    make it stale.
    """
    # LXC answers a routed VE's gateway (proxy ARP/NDP) only from the start on: not live there
    routed = {'lxc.net.%s.' % k.split('.')[2] for k, v in items
              if k.startswith('lxc.net.') and k.endswith('.veth.mode') and v == 'router'}
    kept = sorted(i for i in items if not is_live_key(i[0]) or
                  i[0].endswith('.gateway') and i[0][:i[0].index('.', 8) + 1] in routed)
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]
