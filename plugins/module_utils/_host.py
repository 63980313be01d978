# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host: its data root, host-wide settings, id ranges and security features.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations

import ipaddress
import os
from collections import namedtuple

from . import _staging, _validate
from ._errors import VzError
from ._fs import make_dirs, read_json

DEFAULT_VZ_ROOT = '/var/lib/vz'
DEFAULT_CGROUP_PARENT = 'vz'
DEFAULT_BRIDGE = 'vzbr0'
# An unprivileged VE needs a full 16-bit id space: 0..65535 inside map to base..base+65535.
IDMAP_COUNT = 65536

IdMap = namedtuple('IdMap', 'uid gid count')


class Host:
    """Paths and settings of one host, from ``<vz_root>/host.json`` and module options."""

    def __init__(self, vz_root=DEFAULT_VZ_ROOT, cgroup_parent=None, bridge=None,
                 subuid_file='/etc/subuid', subgid_file='/etc/subgid', user='root'):
        self.vz_root = _validate.vz_root(vz_root)
        settings = read_json(os.path.join(self.vz_root, 'host.json'), {}) or {}
        if not isinstance(settings, dict):
            raise VzError('%s/host.json must hold a JSON object' % self.vz_root)
        self.cgroup_parent = _validate.cgroup_parent(
            cgroup_parent or settings.get('cgroup_parent') or DEFAULT_CGROUP_PARENT)
        self.bridge = _validate.ifname(bridge or settings.get('bridge') or DEFAULT_BRIDGE, 'bridge name')
        # how far the sum of VE guarantees may exceed the host's capacity (limits admission control)
        self.overcommit = settings.get('overcommit', 1.0)
        # bits/s the VEs of this host may send together (the shaping tree's root); None: the default
        self.net_capacity = settings.get('net_capacity')
        # pools of routed VE interfaces (``ipv4: auto`` in routed mode); None: no pool
        self.routed_pool4 = host_pool(settings.get('routed_pool4'), 4, 'routed_pool4 in %s/host.json' % self.vz_root)
        self.routed_pool6 = host_pool(settings.get('routed_pool6'), 6, 'routed_pool6 in %s/host.json' % self.vz_root)
        self.subuid_file = subuid_file
        self.subgid_file = subgid_file
        self.user = user
        self._idmap = None

    # -- layout ---------------------------------------------------------------------------
    @property
    def ves_dir(self):
        return os.path.join(self.vz_root, 'ves')

    @property
    def templates_dir(self):
        return os.path.join(self.vz_root, 'templates')

    @property
    def tmp_dir(self):
        return os.path.join(self.vz_root, '.tmp')

    @property
    def locks_dir(self):
        return os.path.join(self.vz_root, 'locks')

    def ve_dir(self, name):
        return os.path.join(self.ves_dir, _validate.ve_name(name))

    @property
    def net_dir(self):
        return os.path.join(self.vz_root, 'net')

    def bridge_settings(self, name):
        """The settings osvirt.vz.bridge recorded for bridge ``name`` ({} when it wrote none).

        Keys: name, ipv4, ipv6 (the bridge's addresses), pool4, pool6 (CIDR or None), nat, uplink.
        """
        path = bridge_settings_path(self.vz_root, name)
        settings = read_json(path, {})
        if not isinstance(settings, dict):
            raise VzError('%s must hold a JSON object' % path)
        return settings

    def ensure_layout(self):
        """Create the data root and its directories if missing (the host role normally does)."""
        make_dirs(self.vz_root, 0o711)
        # the VEs' mapped root must traverse the store to reach its private area and templates
        for path in (self.vz_root, self.ves_dir, self.templates_dir):
            if os.path.isdir(path):
                mode = os.stat(path).st_mode & 0o7777
                if mode & 0o111 != 0o111:
                    os.chmod(path, mode | 0o111)
        for sub, mode in (('templates', 0o711), ('ves', 0o711), ('.tmp', 0o700), ('locks', 0o700),
                          ('backups', 0o700)):
            make_dirs(os.path.join(self.vz_root, sub), mode)
        # what a killed run left in .tmp (work directories nobody holds any more) goes now
        _staging.sweep(self.tmp_dir)

    def check_reachable(self):
        """Refuse a store that an unprivileged VE's root cannot reach (a parent without o+x).

        LXC itself would fail later with an obscure 'sync_wait' error.
        """
        path = self.vz_root
        while True:
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                mode = 0o111
            if mode & 0o001 == 0:
                raise VzError('%s (mode %04o) is not searchable by others, so unprivileged VEs under %s cannot '
                              'reach their files; allow it (chmod o+x) or use another vz_root'
                              % (path, mode & 0o7777, self.vz_root))
            if path == '/':
                return
            path = os.path.dirname(path)

    # -- ids ------------------------------------------------------------------------------
    def idmap(self):
        """The id range unprivileged VEs use: the first range of ``root`` with 65536 ids or more."""
        if self._idmap is None:
            uid = _subid_base(self.subuid_file, self.user)
            gid = _subid_base(self.subgid_file, self.user)
            self._idmap = IdMap(uid, gid, IDMAP_COUNT)
        return self._idmap

    # -- features -------------------------------------------------------------------------
    @staticmethod
    def apparmor_enabled():
        try:
            with open('/sys/module/apparmor/parameters/enabled') as handle:
                return handle.read().strip() == 'Y'
        except OSError:
            return False

    @staticmethod
    def bridge_exists(name):
        return os.path.isdir('/sys/class/net/%s/bridge' % name)


def bridge_settings_path(vz_root, name):
    """Where osvirt.vz.bridge records a bridge's addresses, pools and NAT: <vz_root>/net/bridges/<name>.json."""
    return os.path.join(vz_root, 'net', 'bridges', _validate.ifname(name, 'bridge name') + '.json')


def host_pool(value, family, what):
    """Return ``value`` as a canonical CIDR network of IPv``family`` (None stays None); raise VzError."""
    if value is None:
        return None
    example = '10.30.0.0/24' if family == 4 else 'fd00:30::/64'
    try:
        if not isinstance(value, str) or '/' not in value:
            raise ValueError('a network with a prefix length is needed')
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise VzError('%s %r is not an IPv%d network like %s: %s' % (what, value, family, example, exc))
    if net.version != family:
        raise VzError('%s %s is not an IPv%d network like %s' % (what, value, family, example))
    return str(net)


def _subid_base(path, user):
    """First start of a range of at least IDMAP_COUNT ids of ``user`` in a subuid/subgid file."""
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        fields = line.strip().split(':')
        if len(fields) != 3 or fields[0] != user:
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count >= IDMAP_COUNT and start > 0:
            return start
    raise VzError('the host has no subordinate id range for %s in %s with at least %d ids; unprivileged '
                  'VEs need one (run the osvirt.vz.host role, or add "%s:100000:65536")'
                  % (user, path, IDMAP_COUNT, user))
