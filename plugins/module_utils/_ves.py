# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VEs on one host: their metadata, LXC config, lifecycle and the plan that gets them there.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A VE lives in ``<vz_root>/ves/<name>/``::

    config          LXC config (lxcpath is <vz_root>/ves, so plain lxc-* tools see the VE)
    ve.json         our metadata: template@version, hostname, network, mounts, created, owner
    private/upper   the VE's own copy-on-write layer (overlay upper dir)
    private/work    overlay work dir
    lxc.log         LXC's error log of the last start

Its root file system is overlay(lower = template layers, upper = private/upper), mounted by LXC
inside the VE's mount namespace: creating a VE copies no template file.

The module front end calls ``VeManager.ensure(specs)``; everything else here is the means:
``plan_transitions`` (pure, unit-tested) decides the steps, ``VeManager`` runs them under a
per-VE lock and rolls a new VE back if its first start fails.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from . import _limits, _quota, _validate
from ._cgroups import CgroupTree
from ._engine.config import LxcConfig
from ._errors import VzError
from ._fs import atomic_write, disk_usage, read_json, remove_tree, write_inside, write_json
from ._locks import Lock
from ._rebase import hidden_files
from ._templates import TemplateStore

STATES = ('present', 'started', 'stopped', 'restarted', 'frozen', 'absent')
META_SCHEMA = 1

# Keys of the LXC config that the collection writes; every other key is kept untouched.
OWNED_PREFIXES = (
    'lxc.uts.', 'lxc.rootfs.', 'lxc.idmap', 'lxc.mount.', 'lxc.cap.', 'lxc.seccomp.',
    'lxc.apparmor.', 'lxc.cgroup.dir', 'lxc.cgroup.devices.', 'lxc.cgroup2.devices.',
    'lxc.signal.', 'lxc.start.', 'lxc.net.', 'lxc.log.', 'lxc.tty.', 'lxc.pty.', 'lxc.autodev',
    'lxc.include', 'lxc.hook.start-host', 'lxc.hook.post-stop',
) + _limits.OWNED_PREFIXES

# The host role's LXC hook: anti-spoofing filter and network rate of a VE at every start (lxc-autostart too).
NET_HOOK = '/usr/libexec/osvirt-vz/net-hook'
_LIVE_KEYS = ('lxc.hook.start-host', 'lxc.hook.post-stop')
# lxc.net.<i>.<key> that a running VE gets live (osvirt.vz changes them inside its network namespace)
_LIVE_NET_KEYS = ('ipv4.address', 'ipv4.gateway', 'ipv6.address', 'ipv6.gateway')

# Security defaults of every VE (DESIGN.md section 7). Device rules follow LXC's common.conf.
DROPPED_CAPABILITIES = 'mac_admin mac_override sys_module sys_rawio sys_time'
SECCOMP_PROFILE = '/usr/share/lxc/config/common.seccomp'
_DEVICES = ('c *:* m', 'b *:* m', 'c 1:3 rwm', 'c 1:5 rwm', 'c 1:7 rwm', 'c 1:8 rwm', 'c 1:9 rwm',
            'c 5:0 rwm', 'c 5:1 rwm', 'c 5:2 rwm', 'c 136:* rwm', 'c 10:229 rwm')

# What a new VE gets for options the task leaves out.
SPEC_DEFAULTS = {
    'hostname': None,          # the VE name
    'autostart': False,
    'mounts': [],
    'network': [],
    'privileged': False,
    'owner': None,
}
SPEC_KEYS = ('template',) + tuple(SPEC_DEFAULTS) + ('limits',)


def _shaping():
    """The network shaping module, imported only when a VE has network limits: it loads pyroute2,
    which costs about 0.2 s per module run."""
    from . import _shaping as shaping  # pylint: disable=import-outside-toplevel
    return shaping


def _vnet():
    """Netlink inside VEs and on their host links (``ve_info``'s interfaces), imported only when a
    VE has a network interface: it loads pyroute2."""
    from . import _vnet as vnet  # pylint: disable=import-outside-toplevel
    return vnet


def is_owned(key):
    """True for the LXC config keys the collection manages."""
    return key.startswith(OWNED_PREFIXES)


def _leases_module():
    """The address leases (_addrpool), imported when a VE has addresses."""
    from . import _addrpool  # pylint: disable=import-outside-toplevel
    return _addrpool


def _antispoof():
    """The anti-spoofing filters (_antispoof), or None where that part is not installed."""
    try:
        from . import _antispoof as antispoof  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return antispoof


# -- planning ----------------------------------------------------------------------------------
_PATHS = {
    # (current, desired) -> steps; 'absent' current means the VE does not exist
    'present': {'absent': ['create'], 'stopped': [], 'running': [], 'frozen': []},
    'started': {'absent': ['create', 'start'], 'stopped': ['start'], 'running': [], 'frozen': ['unfreeze']},
    'stopped': {'absent': ['create'], 'stopped': [], 'running': ['stop'], 'frozen': ['unfreeze', 'stop']},
    'restarted': {'absent': ['create', 'start'], 'stopped': ['start'], 'running': ['stop', 'start'],
                  'frozen': ['unfreeze', 'stop', 'start']},
    'frozen': {'absent': ['create', 'start', 'freeze'], 'stopped': ['start', 'freeze'],
               'running': ['freeze'], 'frozen': []},
    # a VE that is removed gets no clean shutdown: its private area is deleted next anyway
    'absent': {'absent': [], 'stopped': ['destroy'], 'running': ['kill', 'destroy'],
               'frozen': ['unfreeze', 'kill', 'destroy']},
}


def plan_transitions(current, desired, config_changed=False, restart=False, stale=None):
    """Steps that take a VE from ``current`` to ``desired`` state.

    ``current`` is one of absent/stopped/running/frozen. ``config_changed`` means the LXC config
    on disk is rewritten (step 'configure'). ``stale`` means a running VE runs another config than
    the one asked for (by default: ``config_changed``; it stays true after an earlier run wrote the
    change without restarting). A stale VE is restarted when ``restart`` is true or the desired
    state is 'restarted'; otherwise the result says a restart is required.
    Returns ``(steps, restart_required)``.
    """
    if stale is None:
        stale = config_changed
    if desired not in _PATHS:
        raise VzError('invalid state %r: use one of %s' % (desired, ', '.join(STATES)))
    if current not in _PATHS[desired]:
        raise VzError('cannot plan from VE state %r' % current)
    steps = list(_PATHS[desired][current])
    restart_required = False
    if current == 'absent' or desired == 'absent':
        return steps, False
    head = ['configure'] if config_changed else []
    live = current in ('running', 'frozen') and 'stop' not in steps
    if stale and live and desired in ('started', 'frozen', 'present'):
        if restart:
            prefix = ['unfreeze'] if current == 'frozen' else []
            tail = ['freeze'] if current == 'frozen' or desired == 'frozen' else []
            return head + prefix + ['stop', 'start'] + tail, False
        restart_required = True
    return head + steps, restart_required


# -- metadata and config -----------------------------------------------------------------------
def derived_hwaddr(ve, ifname):
    """A stable, locally administered MAC from the VE and interface names (same on every host)."""
    digest = hashlib.sha256(('osvirt.vz:%s:%s' % (ve, ifname)).encode()).digest()
    return '02:' + ':'.join('%02x' % b for b in digest[:5])


def host_link_name(ve, index, parent='vz'):
    """Host-side name of a VE's veth: 'vz' + 8 hex digits of <cgroup parent>/<VE> + interface index.

    The cgroup parent is per VE store, so two stores on one machine (tests, the lab) never pick the
    same name for VEs of the same name.
    """
    return 'vz%s%d' % (hashlib.sha1(('%s/%s' % (parent, ve)).encode()).hexdigest()[:8], index)


# Routed mode (LXC's veth router mode): the VE's default routes go to these addresses, which the
# host side of its veth answers by proxy ARP / proxy NDP; they never exist on any network.
ROUTED_GATEWAY4 = '169.254.0.1'
ROUTED_GATEWAY6 = 'fe80::1'
NETWORK_MODES = ('bridged', 'routed')
# (address key, gateway key, auto flag, IP version)
_FAMILIES = (('ipv4', 'gateway4', 'auto4', 4), ('ipv6', 'gateway6', 'auto6', 6))
# glibc's resolver reads no more than three nameserver lines (MAXNS)
MAX_NAMESERVERS = 3


def _address_list(what, key, value):
    """The items of an ipv4/ipv6 option and whether `auto` is one of them."""
    if value is None:
        return [], False
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise VzError('%s: %s must be a list of addresses or the word auto' % (what, key))
    autos = [i for i in items if isinstance(i, str) and i.strip() == 'auto']
    if len(autos) > 1:
        raise VzError('%s: %s lists auto more than once (one auto gives one address of the pool)' % (what, key))
    return [i for i in items if not (isinstance(i, str) and i.strip() == 'auto')], bool(autos)


def _static_address(what, key, version, value, mode):
    """One static address of an interface as an ip_interface (routed: a single address)."""
    label = '%s %s address' % (what, key)
    if mode == 'routed' and isinstance(value, str) and '/' not in value:
        value = '%s/%d' % (value.strip(), 32 if version == 4 else 128)
    if version == 4:
        iface = _validate.ipv4_interface(value.strip() if isinstance(value, str) else value, label)
    else:
        iface = _validate.ipv6_interface(value.strip() if isinstance(value, str) else value, label)
    ip = iface.ip
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local or \
            (version == 4 and ip == ipaddress.IPv4Address('255.255.255.255')):
        raise VzError('%s %s cannot be given to a VE (loopback, link-local, multicast or unspecified)'
                      % (label, value))
    if mode == 'routed' and iface.network.prefixlen != ip.max_prefixlen:
        raise VzError('%s %s: routed mode takes single addresses (/%d), the host routes each one to the VE'
                      % (label, value, ip.max_prefixlen))
    return iface


def _pool_of(what, key, mode, bridge, settings, host):
    """The pool an `auto` address of ``key`` comes from, as an ip_network; an error when there is none."""
    version = 4 if key == 'ipv4' else 6
    if mode == 'routed':
        pool = host.routed_pool4 if version == 4 else host.routed_pool6
        if not pool:
            raise VzError('%s: %s: auto needs the host\'s routed pool, but the host has none (set routed_pool%d '
                          'in <vz_root>/host.json, host role variable host_routed_pool%d)'
                          % (what, key, version, version))
        where = 'routed_pool%d of the host' % version
    else:
        pool = settings.get('pool%d' % version)
        if not pool:
            raise VzError('%s: %s: auto needs an address pool, but bridge %s has none (set pool%d with '
                          'osvirt.vz.bridge)' % (what, key, bridge, version))
        where = 'pool%d of bridge %s' % (version, bridge)
    try:
        network = ipaddress.ip_network(pool, strict=False)
    except ValueError as exc:
        raise VzError('%s: %s %r is not a network: %s' % (what, where, pool, exc))
    if network.version != version:
        raise VzError('%s: %s %s is not an IPv%d network' % (what, where, pool, version))
    return network


def _bridge_addresses(settings, key):
    """The bridge's own addresses of one family (ip_interface list) from its settings."""
    found = []
    for value in settings.get(key) or []:
        try:
            found.append(ipaddress.ip_interface(value))
        except ValueError:
            continue
    return found


def normalize_network(ve, network, host, parent=None, current=None):
    """Validate the interfaces of a VE and fill in their defaults.

    Returns the interfaces as ve.json keeps them. ``current`` is the VE's interfaces now: an
    address it got from a pool (``auto``) is kept while the task still asks for ``auto`` on the same
    network. An ``auto`` address the VE does not have yet is left out of ``ipv4``/``ipv6`` and
    described in the interface's ``pending`` list (``key``, ``pool``, ``prefixlen``, ``exclude``) for
    the caller, which takes it from the pool (``VeManager._plan_addresses``) and drops the key.
    Raises VzError naming the VE, the interface and the problem.
    """
    if network is not None and not isinstance(network, list):
        raise VzError('VE %s: network must be a list of interfaces' % ve)
    before = {i.get('name'): i for i in current or [] if isinstance(i, dict)}
    result, names, seen, resolver = [], set(), {}, {'nameservers': [], 'searchdomains': []}
    for index, iface in enumerate(network or []):
        if not isinstance(iface, dict):
            raise VzError('VE %s: each network interface must be a dict' % ve)
        name = _validate.ifname(iface.get('name') or 'eth%d' % index, 'interface name of VE %s' % ve)
        if name in names:
            raise VzError('VE %s: interface name %s is used twice' % (ve, name))
        names.add(name)
        what = 'VE %s interface %s' % (ve, name)
        mode = iface.get('mode') or 'bridged'
        if mode not in NETWORK_MODES:
            raise VzError('%s: mode %r is not supported (use bridged or routed)' % (what, mode))
        if mode == 'bridged':
            bridge = _validate.ifname(iface.get('bridge') or host.bridge, 'bridge name')
            if not host.bridge_exists(bridge):
                raise VzError('%s: bridge %s does not exist on this host (create it with osvirt.vz.bridge or the '
                              'osvirt.vz.host role)' % (what, bridge))
            settings = host.bridge_settings(bridge)
        else:
            if iface.get('bridge'):
                raise VzError('%s: bridge is only for mode bridged; a routed interface is plugged into no bridge'
                              % what)
            bridge, settings = None, {}
        old = before.get(name)
        if old is not None and ((old.get('mode') or 'bridged'), old.get('bridge')) != (mode, bridge):
            old = None   # an address from another network's pool does not carry over
        entry = {'name': name, 'mode': mode, 'bridge': bridge}
        pending = []
        for key, gwkey, autokey, version in _FAMILIES:
            items, auto = _address_list(what, key, iface.get(key))
            addresses = [_static_address(what, key, version, a, mode) for a in items]
            subnets = [a.network for a in addresses]
            gateway_default = None
            own = _bridge_addresses(settings, key)
            if auto:
                pool = _pool_of(what, key, mode, bridge, settings, host)
                home = next((a for a in own if pool.subnet_of(a.network)), None)
                prefixlen = pool.max_prefixlen if mode == 'routed' else \
                    (home.network.prefixlen if home else pool.prefixlen)
                subnets.append(ipaddress.ip_network((pool.network_address, prefixlen), strict=False))
                gateway_default = str(home.ip) if home and mode == 'bridged' else None
                # the pool's address is always the last of its family's list
                kept = ((old or {}).get(key) or [])[-1:] if (old or {}).get(autokey) else []
                kept = [ipaddress.ip_interface(a) for a in kept]
                if kept and kept[0].ip in pool and kept[0].ip not in [a.ip for a in addresses]:
                    addresses.append(kept[0])
                else:
                    pending.append({'key': key, 'pool': str(pool), 'prefixlen': prefixlen,
                                    'exclude': sorted({str(a.ip) for a in own})})
            for address in addresses:
                if address.ip in seen:
                    raise VzError('VE %s: address %s is listed twice (interfaces %s and %s)'
                                  % (ve, address.ip, seen[address.ip], name))
                seen[address.ip] = name
                if any(address.ip == a.ip for a in own):
                    raise VzError('%s: address %s is the own address of bridge %s' % (what, address.ip, bridge))
            gateway = iface.get(gwkey)
            if mode == 'routed':
                fixed = ROUTED_GATEWAY4 if version == 4 else ROUTED_GATEWAY6
                if gateway and _validate.ip_address(gateway, '%s %s' % (what, gwkey)) != ipaddress.ip_address(fixed):
                    raise VzError('%s: %s cannot be set in routed mode: the VE\'s default route always goes via %s, '
                                  'which the host side of its link answers' % (what, gwkey, fixed))
                gateway = fixed if subnets else None
            elif gateway:
                parsed = _validate.ip_address(gateway, '%s %s' % (what, gwkey))
                if parsed.version != version:
                    raise VzError('%s: %s %s is not an IPv%d address' % (what, gwkey, gateway, version))
                if not subnets:
                    raise VzError('%s: %s %s needs an %s address on the interface' % (what, gwkey, gateway, key))
                if not any(parsed in net for net in subnets):
                    raise VzError('%s: %s %s is not in the subnet of any of its addresses' % (what, gwkey, gateway))
                gateway = str(parsed)
            else:
                gateway = gateway_default
            entry[key] = [a.with_prefixlen for a in addresses]
            entry[autokey] = bool(auto or (iface.get(autokey) and addresses))
            entry[gwkey] = gateway
        mtu = iface.get('mtu')
        if mtu is not None:
            from ._net import validate_mtu  # pylint: disable=import-outside-toplevel
            try:
                mtu = validate_mtu(int(mtu) if isinstance(mtu, str) and mtu.isdigit() else mtu)
            except VzError as exc:
                raise VzError('%s: %s' % (what, exc))
        nameservers = [str(_validate.ip_address(n, '%s nameserver' % what)) for n in iface.get('nameservers') or []]
        searchdomains = [_validate.domain_name(d, '%s search domain' % what) for d in iface.get('searchdomains') or []]
        for key, values in (('nameservers', nameservers), ('searchdomains', searchdomains)):
            resolver[key] += [v for v in values if v not in resolver[key]]
        entry.update({
            'mtu': mtu,
            'hwaddr': _validate.hwaddr(iface['hwaddr']) if iface.get('hwaddr') else derived_hwaddr(ve, name),
            'host_link': host_link_name(ve, index, parent or host.cgroup_parent),
            'nameservers': nameservers,
            'searchdomains': searchdomains,
        })
        if pending:
            entry['pending'] = pending
        result.append(entry)
    if len(resolver['nameservers']) > MAX_NAMESERVERS:
        raise VzError('VE %s: %d nameservers given; the resolver reads at most %d'
                      % (ve, len(resolver['nameservers']), MAX_NAMESERVERS))
    return result


def resolver_of(network):
    """(nameservers, searchdomains) of a VE, in interface order, each once."""
    nameservers, searchdomains = [], []
    for iface in network or []:
        nameservers += [n for n in iface.get('nameservers') or [] if n not in nameservers]
        searchdomains += [d for d in iface.get('searchdomains') or [] if d not in searchdomains]
    return nameservers, searchdomains


def resolv_conf(network):
    """The /etc/resolv.conf that a VE with these interfaces gets (None: the VE keeps its own)."""
    nameservers, searchdomains = resolver_of(network)
    if not nameservers and not searchdomains:
        return None
    lines = ['# Written by osvirt.vz from the nameservers and searchdomains of the VE\'s network.']
    lines += ['nameserver %s' % n for n in nameservers]
    if searchdomains:
        lines.append('search %s' % ' '.join(searchdomains))
    return '\n'.join(lines) + '\n'


def addresses_of(iface):
    """Every address of an interface without prefix length, IPv4 first."""
    return [str(ipaddress.ip_interface(a).ip) for key in ('ipv4', 'ipv6') for a in iface.get(key) or []]


def normalize_mounts(ve, mounts, host):
    """Validate bind mounts (host path -> VE path) and fill in their defaults."""
    result, targets = [], set()
    for mount in mounts or []:
        if not isinstance(mount, dict) or not mount.get('source') or not mount.get('target'):
            raise VzError('VE %s: each mount needs a source (host path) and a target (VE path)' % ve)
        source = _validate.host_path(mount['source'], 'VE %s mount source' % ve, forbidden_root=host.vz_root)
        target = '/' + _validate.ve_path(mount['target'], 'VE %s mount target' % ve)
        if target in targets:
            raise VzError('VE %s: mount target %s is used twice' % (ve, target))
        targets.add(target)
        result.append({'source': source, 'target': target, 'readonly': bool(mount.get('readonly'))})
    return result


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
        ('lxc.tty.max', '4'),
        ('lxc.pty.max', '1024'),
    ]
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
    network = meta.get('network') or []
    if not network:
        items.append(('lxc.net.0.type', 'empty'))
    for index, iface in enumerate(network):
        prefix = 'lxc.net.%d.' % index
        items.append((prefix + 'type', 'veth'))
        if iface.get('mode') == 'routed':
            # LXC's router mode: host routes to each address and proxy ARP/NDP for the gateways on
            # the host side, forwarding on that link only; the VE is on no bridge (no L2 neighbours)
            items.append((prefix + 'veth.mode', 'router'))
        else:
            items.append((prefix + 'link', iface['bridge']))
        items += [(prefix + 'veth.pair', iface['host_link']), (prefix + 'name', iface['name']),
                  (prefix + 'hwaddr', iface['hwaddr']), (prefix + 'flags', 'up')]
        if iface.get('mtu'):
            items.append((prefix + 'mtu', str(iface['mtu'])))
        for key, gwkey, _auto, _version in _FAMILIES:
            items += [(prefix + key + '.address', _lxc_address(a)) for a in iface.get(key) or []]
            if iface.get(gwkey):
                items.append((prefix + key + '.gateway', iface[gwkey]))
    for mount in meta.get('mounts') or []:
        options = 'bind,create=%s%s' % ('dir' if os.path.isdir(mount['source']) else 'file',
                                        ',ro' if mount['readonly'] else '')
        items.append(('lxc.mount.entry', '%s %s none %s 0 0' % (mount['source'], mount['target'].lstrip('/'),
                                                                options)))
    return items + list(limit_items)


def _lxc_address(cidr):
    """An address as lxc.net.N.ipv4/ipv6.address takes it. IPv4 names its broadcast address: LXC 5.0.2
    sets 0.0.0.255 for a /24 when it computes it itself (seen with ``ip addr`` inside a VE)."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version == 4 and iface.network.prefixlen <= 30:
        return '%s %s' % (cidr, iface.network.broadcast_address)
    return cidr


def public_view(meta, state, pid=None):
    """The VE as modules return it."""
    network = meta.get('network') or []
    ips = [a.split('/')[0] for key in ('ipv4', 'ipv6') for iface in network for a in iface.get(key) or []]
    return {
        'name': meta['name'],
        'state': state,
        'template': meta.get('template'),
        'hostname': meta.get('hostname') or meta['name'],
        'ips': ips,
        'pid': pid,
        'autostart': bool(meta.get('autostart')),
        'privileged': bool(meta.get('privileged')),
        'owner': meta.get('owner'),
        'created': meta.get('created'),
        'limits': _limits.describe(meta.get('limits')),
    }


def is_live_key(key):
    """True for config keys whose change a running VE gets without a restart: limits, the hooks,
    and the addresses and gateways of its interfaces (changed inside its network namespace)."""
    if _limits.is_limit_key(key) or key in _LIVE_KEYS:
        return True
    return key.startswith('lxc.net.') and key.split('.', 3)[-1] in _LIVE_NET_KEYS


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


def spec_view(meta):
    """The part of the metadata that a task can ask for; used for --diff (limits with unit strings)."""
    view = {k: meta.get(k) for k in SPEC_KEYS if k in meta}
    if 'limits' in view:
        view['limits'] = _limits.describe(view['limits'])
    return view


# -- the manager -------------------------------------------------------------------------------
class VeManager:
    """Brings VEs of one host to the state tasks ask for."""

    def __init__(self, host, client, check_mode=False, lock_timeout=60, stop_timeout=30, workers=4,
                 overcommit=None):
        self.host = host
        self.overcommit = overcommit if overcommit is not None else host.overcommit
        self._facts = None
        self._device = None
        self._pending_limits = {}
        self._task_addresses = {}   # address -> VE, over the plans of one ensure()
        self._lease_book = None
        self._parents_ready = set()
        self.client = client
        self.check_mode = check_mode
        self.lock_timeout = lock_timeout
        self.stop_timeout = stop_timeout
        self.workers = workers
        self.templates = TemplateStore(host)
        self.cgroups = CgroupTree()

    # -- reading --------------------------------------------------------------------------
    def read_meta(self, name):
        """ve.json of a VE, None when the VE does not exist; refuses directories that are not ours."""
        directory = self.host.ve_dir(name)
        if not os.path.lexists(directory):
            return None
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise VzError('%s is not a directory made by osvirt.vz; refusing to manage VE %s' % (directory, name))
        meta = read_json(os.path.join(directory, 've.json'))
        if not isinstance(meta, dict):
            raise VzError('VE %s exists in %s but is not managed by osvirt.vz (no ve.json)' % (name, directory))
        return meta

    def names(self):
        """Names of every VE directory with a ve.json, sorted."""
        try:
            entries = os.listdir(self.host.ves_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if _validate.VE_NAME_RE.fullmatch(n)
                      and os.path.isfile(os.path.join(self.host.ves_dir, n, 've.json')))

    def running_digest(self, name, pid, on_disk_items):
        """Digest of the config a running VE was started with.

        ``running.json`` records it with the init pid when this collection starts a VE or writes a
        change without restarting it. A record with another pid is stale (the VE was restarted by
        other means, e.g. lxc-autostart at boot): then the VE runs what is on disk.
        """
        record = read_json(os.path.join(self.host.ve_dir(name), 'running.json')) or {}
        if pid is not None and record.get('pid') == pid and record.get('config'):
            return record['config']
        return config_digest(on_disk_items)

    def _record_running(self, name, pid, digest):
        if pid is not None:
            write_json(os.path.join(self.host.ve_dir(name), 'running.json'), {'pid': pid, 'config': digest})

    def states(self):
        """State and pid of every VE in one lxc-ls call; {} when the lxcpath does not exist yet."""
        if not os.path.isdir(self.host.ves_dir):
            return {}
        return self.client.list()

    # -- desired state --------------------------------------------------------------------
    def desired_meta(self, spec, meta):
        """Merge a task's options into the VE's metadata; returns (new meta, template manifest)."""
        name = spec['name']
        current = dict(meta or {})
        new = dict(current) if meta else {'name': name, 'schema': META_SCHEMA}
        for key, default in SPEC_DEFAULTS.items():
            if spec.get(key) is not None:
                new[key] = spec[key]
            elif key not in new:
                new[key] = default
        new['network'] = normalize_network(name, new['network'], self.host,
                                           current.get('cgroup_parent') if meta else self.host.cgroup_parent,
                                           current.get('network') if meta else None)
        new['mounts'] = normalize_mounts(name, new['mounts'], self.host)
        if new.get('hostname') is not None and not _validate.VE_NAME_RE.fullmatch(new['hostname']) and not \
                all(_validate.VE_NAME_RE.fullmatch(p) for p in new['hostname'].split('.')):
            raise VzError('VE %s: invalid hostname %r' % (name, new['hostname']))
        if meta and bool(meta.get('privileged')) != bool(new['privileged']):
            raise VzError('VE %s: privileged cannot change on an existing VE (its files are owned by other '
                          'ids); create a new VE instead' % name)
        manifest = self._wanted_template(name, spec, current if meta else None)
        new['template'] = '%s@%s' % (manifest['name'], manifest['version'])
        new['layers'] = ['%s@%s' % (m['name'], m['version']) for m in self.templates.layers(manifest)]
        new['cgroup_parent'] = current.get('cgroup_parent') if meta else self.host.cgroup_parent
        new['limits'] = _limits.merge(current.get('limits') or {}, _limits.parse_change(spec.get('limits')))
        if not meta:
            new['idmap'] = None if new['privileged'] else dict(self.host.idmap()._asdict())
            new['apparmor'] = self.host.apparmor_enabled()
            new['created'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        return new, manifest

    def _wanted_template(self, name, spec, current):
        """Manifest of the version a VE should run on (``current``: its metadata, None when new).

        ``name`` alone keeps the version an existing VE has; ``name@version`` asks for that version
        (a rebase, older versions included); ``rebase: latest`` asks for the newest version of the
        VE's template. A VE never moves to another template name: its private area was made on it.
        """
        wanted, rebase = spec.get('template'), spec.get('rebase')
        if rebase not in (None, 'latest'):
            raise VzError('VE %s: invalid rebase %r: use "latest"' % (name, rebase))
        if wanted is None and current is None:
            raise VzError('VE %s does not exist: template is required to create it' % name)
        tname, tversion = _validate.template_ref(wanted) if wanted is not None else (None, None)
        if rebase and tversion:
            raise VzError('VE %s: template %s names a version and rebase: latest asks for the newest; use one '
                          'of them' % (name, wanted))
        if current is None:
            return self.templates.resolve(wanted)
        cname, cversion = _validate.template_ref(current['template'])
        if tname is not None and tname != cname:
            raise VzError('VE %s is built on template %s; it cannot move to template %s (its private area was '
                          'made on %s: create a new VE instead)' % (name, cname, tname, cname))
        if rebase:
            return self.templates.resolve(cname)
        if tversion is None:
            return self.templates.manifest(cname, cversion)
        return self.templates.resolve('%s@%s' % (cname, tversion))

    def desired_config(self, meta, manifest, create=False):
        idmap = self.host.idmap() if meta.get('idmap') else None
        if idmap is not None and (idmap.uid, idmap.gid) != (meta['idmap']['uid'], meta['idmap']['gid']):
            raise VzError('VE %s was made for ids %d/%d but the host now maps %d/%d'
                          % (meta['name'], meta['idmap']['uid'], meta['idmap']['gid'], idmap.uid, idmap.gid))
        lowers = self.templates.lower_dirs(manifest, idmap, create=create)
        limit_items = _limits.config_items(self.limit_settings(meta))
        if meta.get('network') and os.path.exists(NET_HOOK):
            # shaping and anti-spoofing live as long as the VE's link: the hook sets them at every start
            limit_items += [('lxc.hook.start-host', NET_HOOK), ('lxc.hook.post-stop', NET_HOOK)]
        return render_config(self.host, meta, lowers, manifest.get('init') or {}, limit_items)

    # -- limits ---------------------------------------------------------------------------
    @property
    def facts(self):
        """CPUs, memory, overcommit and cgroup layout of the host (read once)."""
        if self._facts is None:
            try:
                overcommit = float(self.overcommit)
            except (TypeError, ValueError):
                raise VzError('overcommit must be a number such as 1.5, got %r' % (self.overcommit,))
            self._facts = _limits.HostFacts(self.cgroups, overcommit=overcommit,
                                            net_capacity=self.host.net_capacity)
        return self._facts

    def limit_settings(self, meta):
        """The cgroup settings of a VE's limits (``_limits.Setting`` list)."""
        limits = meta.get('limits') or {}
        device = None
        disk = limits.get('disk') or {}
        if any(k in disk for k in ('read_bps', 'write_bps', 'read_iops', 'write_iops')):
            if self._device is None:
                self._device = _limits.block_device(self.host.ves_dir if os.path.isdir(self.host.ves_dir)
                                                    else self.host.vz_root)
            device = self._device
        return _limits.cgroup_settings(meta['name'], limits, self.facts, device)

    def _plan_limits(self, plan, force):
        """Validate a change of limits and prepare its live writes; nothing changes here."""
        name, meta, new_meta = plan['name'], plan['meta'] or {}, plan['new_meta']
        old, new = meta.get('limits') or {}, new_meta.get('limits') or {}
        parent = new_meta['cgroup_parent']
        settings = self.limit_settings(new_meta)
        _limits.check(name, new, self.facts)
        self.ensure_cgroup_parent(parent)
        _limits.check_files(name, settings, self.cgroups, parent)
        if any(_limits.get(new, *key) and _limits.get(new, *key) != _limits.get(old, *key)
               for key in _limits.GUARANTEES):
            others = {}
            for other in self.names():
                if other != name:
                    others[other] = self._pending_limits.get(other, (self.read_meta(other) or {}).get('limits') or {})
            others.update({k: v for k, v in self._pending_limits.items() if k != name})
            _limits.admit(name, new, others, self.facts)
        self._pending_limits[name] = new
        if new.get('net') and not new_meta.get('network'):
            raise VzError('VE %s: limits: net.rate and net.ceil shape the VE\'s network interfaces, but it has none'
                          % name)
        running = plan['current'] in ('running', 'frozen')
        ram = _limits.get(new, 'memory', 'ram')
        if running and ram is not None and ram != _limits.get(old, 'memory', 'ram'):
            used = self.cgroups.memory_usage(parent, name)
            if used is not None and ram < used and not force:
                raise VzError('VE %s uses %s of memory now; lowering memory.ram to %s makes the kernel reclaim '
                              'its page cache and, if that is not enough, %s; set force: true to do it anyway'
                              % (name, _limits.human_size(used), _limits.human_size(ram),
                                 'refuse the change (cgroup v1 reports EBUSY, nothing is changed)'
                                 if self.cgroups.controller('memory')[0] == 'v1'
                                 else 'OOM-kill processes inside the VE'))
        disk_old, disk_new = old.get('disk') or {}, new.get('disk') or {}
        plan['quota'] = None
        if (disk_old.get('space'), disk_old.get('inodes')) != (disk_new.get('space'), disk_new.get('inodes')):
            if plan['meta'] is not None:
                _quota.plan_quota(self.host, new_meta, disk_new.get('space'), disk_new.get('inodes'), running, force)
            else:
                _quota.check_limits(name, disk_new.get('space'), disk_new.get('inodes'), None, None, force)
                if disk_new.get('space') is not None:
                    supported, why = _quota.quota_supported(self.host)
                    if not supported:
                        raise VzError('VE %s: disk.space cannot be applied: %s' % (name, why))
            plan['quota'] = (disk_new.get('space'), disk_new.get('inodes'))
        plan['shaping'] = (old.get('net') or {}) != (new.get('net') or {})
        plan['limit_writes'] = []
        if running:
            old_settings = self.limit_settings(meta) if meta else []
            plan['limit_writes'] = _limits.pending(_limits.live_plan(old_settings, settings, self.cgroups, parent,
                                                                     name))

    def ensure_cgroup_parent(self, parent):
        """Make the VE parent cgroup exist (not in check mode), once per manager and parent.

        A new host has none until the first VE starts, and the files some limits need exist only
        below a hierarchy's root: checking them in the parent keeps the answer independent of
        what ran on the host before.
        """
        if self.check_mode or parent in self._parents_ready:
            return
        try:
            self.cgroups.ensure_parent(parent)
        except OSError as exc:
            raise VzError('cannot make the VE parent cgroup %s: %s' % (parent, exc))
        self._parents_ready.add(parent)

    # -- the whole job --------------------------------------------------------------------
    def ensure(self, specs, restart=False):
        """Bring every VE of ``specs`` (dicts with name, state and options) to its state.

        Everything is validated before anything changes. Returns a list of per-VE results, each
        with ``ve`` (public view), ``changed``, ``actions``, ``restart_required``, ``warnings``,
        ``diff`` and ``error`` (None, or the message when that VE failed).
        """
        names = [_validate.ve_name(s.get('name')) for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise VzError('VE %s is listed more than once in one task' % ', '.join(duplicates))
        for spec in specs:   # malformed interfaces fail before any lock file or lease is written
            if spec.get('state') != 'absent' and spec.get('network') is not None:
                normalize_network(spec['name'], spec['network'], self.host)
        if not self.check_mode:
            self.host.ensure_layout()
        self._task_addresses = {}
        if any(s.get('state') != 'absent' and not s.get('privileged') for s in specs):
            self.host.check_reachable()
        locks = []
        try:
            if not self.check_mode:
                for name in sorted(names):
                    op = next('%s (state=%s)' % (name, s.get('state')) for s in specs if s['name'] == name)
                    locks.append(Lock(self.host.locks_dir, 've', name, 'osvirt.vz.ve ' + op,
                                      self.lock_timeout, hint='lock_timeout sets how long to wait').acquire())
            states = self.states()
            plans = [self._plan(spec, states.get(spec['name']), restart) for spec in specs]
            if self.check_mode:
                return [self._predict(plan) for plan in plans]
            if len(plans) == 1:
                results = [self._execute(plans[0])]
            else:
                with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(plans)))) as pool:
                    results = list(pool.map(self._execute, plans))
            started = [(r, p) for r, p in zip(results, plans) if r['ve']['state'] in ('running', 'frozen') and
                       r['ve']['pid'] is None]
            if started:
                final = self.states() if len(started) > 1 else {
                    started[0][0]['ve']['name']: self.client.state(started[0][0]['ve']['name'])}
                for result, plan in started:
                    result['ve']['pid'] = (final.get(result['ve']['name']) or {}).get('pid')
                    if 'start' in plan['steps'] and plan['config'] is not None and not result['error']:
                        self._record_running(plan['name'], result['ve']['pid'], config_digest(plan['config']))
            return results
        finally:
            for lock in reversed(locks):
                # a VE that is gone (removed, or never made) keeps no lock file
                lock.release(remove=not os.path.lexists(self.host.ve_dir(lock.name)))

    def _plan(self, spec, listed, restart):
        name = spec['name']
        desired_state = spec.get('state') or 'started'
        meta = self.read_meta(name)
        if meta is None and spec.get('must_exist'):
            raise VzError('VE %s does not exist on this host (%s)' % (name, self.host.ves_dir))
        if meta is None:
            current = 'absent'
        else:
            current = (listed or {}).get('state', 'stopped')
            if current in ('starting', 'stopping'):
                self.client.wait(name, ['RUNNING', 'STOPPED', 'FROZEN'], timeout=self.stop_timeout)
                current = self.client.state(name)['state']
        plan = {'spec': spec, 'name': name, 'meta': meta, 'current': current, 'desired': desired_state,
                'pid': (listed or {}).get('pid')}
        if desired_state == 'absent':
            plan['new_meta'], plan['manifest'], plan['config'] = meta, None, None
            plan['steps'], plan['restart_required'] = plan_transitions(current, 'absent')
            return plan
        new_meta, manifest = self.desired_meta(spec, meta)
        plan['claims'], plan['release'] = self._plan_addresses(name, meta, new_meta)
        if meta is not None and meta.get('template') != new_meta['template']:
            plan['rebase'] = self._rebase_info(meta, manifest)
        config = self.desired_config(new_meta, manifest, create=False)
        config_changed = meta_changed = stale = False
        if meta is not None:
            on_disk = LxcConfig.load(os.path.join(self.host.ve_dir(name), 'config')).owned_items(is_owned)
            config_changed = sorted(on_disk) != sorted(config)
            meta_changed = spec_view(meta) != spec_view(new_meta)
            plan['disk_digest'] = config_digest(on_disk)
            if current in ('running', 'frozen'):
                stale = self.running_digest(name, plan['pid'], on_disk) != config_digest(config)
        plan.update(new_meta=new_meta, manifest=manifest, config=config)
        live_net = []
        if current in ('running', 'frozen'):
            live_net = self._plan_live_network(meta, new_meta)
        steps, plan['restart_required'] = plan_transitions(current, desired_state, config_changed, restart, stale)
        if meta_changed and 'configure' not in steps:
            steps.insert(0, 'configure')   # metadata only (e.g. owner): nothing to restart for
        self._check_forwarding(name, new_meta, steps)
        plan['live_net'] = live_net if 'stop' not in steps else []
        if plan['live_net']:
            # live first, then persist: a refused change leaves config and ve.json as they were
            steps.insert(steps.index('configure') if 'configure' in steps else 0, 'network')
        if meta is not None and resolv_conf(new_meta['network']) not in (None, resolv_conf(meta.get('network'))):
            steps.append('resolver')
        if (meta or {}).get('limits') != new_meta.get('limits') or spec.get('limits') is not None and \
                current in ('running', 'frozen'):
            self._plan_limits(plan, spec.get('force'))
            if plan['quota'] is not None or plan['shaping'] and current in ('running', 'frozen') or \
                    plan['limit_writes']:
                # live first, then persist: a refused write leaves config and ve.json as they were
                steps.insert(steps.index('create') + 1 if 'create' in steps else 0, 'limits')
        if plan['claims']:
            steps.insert(0, 'addresses')
        plan['steps'] = steps
        return plan

    # -- network --------------------------------------------------------------------------
    def _leases(self):
        if self._lease_book is None:
            self._lease_book = _leases_module().Leases(self.host)
        return self._lease_book

    def _plan_addresses(self, name, meta, new_meta):
        """Check each address of a VE against the host's leases and pick its `auto` addresses.

        Nothing is written: an `auto` address is the pool's lowest free one now (``Leases.predict``),
        leased by the 'addresses' step. An address leased to another VE, or asked for by another VE
        of this task, is an error naming that VE. Returns ``(claims, releases)``: the addresses to
        lease, and those the VE gives up (released once its new config is written).
        """
        network = new_meta.get('network') or []
        old = [a for iface in (meta or {}).get('network') or [] for a in addresses_of(iface)]
        if not network and not old:
            return [], []
        leases = self._leases()
        claims = []
        for iface in network:
            for address in addresses_of(iface):
                other = self._task_addresses.get(address)
                if other and other != name:
                    raise VzError('VE %s interface %s: address %s is also asked for by VE %s in this task'
                                  % (name, iface['name'], address, other))
                owner = leases.owner(address)
                if owner and owner.get('ve') != name:
                    raise VzError('VE %s interface %s: address %s is already used by VE %s (interface %s)'
                                  % (name, iface['name'], address, owner.get('ve'), owner.get('interface')))
                if owner is None:
                    claims.append({'interface': iface['name'], 'address': address, 'pool': None})
                self._task_addresses[address] = name
            for want in iface.pop('pending', []):
                address = leases.predict(want['pool'], exclude=sorted(set(want['exclude']) |
                                                                      set(self._task_addresses)))
                iface[want['key']].append('%s/%d' % (address, want['prefixlen']))
                claims.append(dict(want, interface=iface['name'], address=address))
                self._task_addresses[address] = name
        new = {a for iface in network for a in addresses_of(iface)}
        return claims, [a for a in old if a not in new]

    @staticmethod
    def _plan_live_network(meta, new_meta):
        """Address and gateway changes of a running VE's interfaces (same name and mode before and after)."""
        before = {i['name']: i for i in meta.get('network') or []}
        changes = []
        for iface in new_meta.get('network') or []:
            old = before.get(iface['name'])
            if old is None or (old.get('mode') or 'bridged') != iface['mode']:
                continue   # a new interface, or one that changes mode, waits for a restart
            add = [a for key in ('ipv4', 'ipv6') for a in iface[key] if a not in (old.get(key) or [])]
            remove = [a for key in ('ipv4', 'ipv6') for a in old.get(key) or [] if a not in iface[key]]
            gateways = {gwkey: (old.get(gwkey), iface[gwkey]) for _key, gwkey, _auto, _v in _FAMILIES
                        if old.get(gwkey) != iface[gwkey] and iface['mode'] == 'bridged'}
            if add or remove or gateways:
                changes.append({'iface': iface, 'add': add, 'remove': remove, 'gateways': gateways,
                                'host_link': old.get('host_link') or iface['host_link']})
        return changes

    @staticmethod
    def _check_forwarding(name, meta, steps):
        """Refuse to start a routed VE that could not reach its gateway.

        IPv6: LXC refuses to start a VE with a routed IPv6 gateway unless net.ipv6.conf.all.forwarding
        is 1, with a message only in its log; it is set by osvirt.vz.bridge or the host role, never
        behind the operator's back (IPv6 forwarding also stops the host from taking router
        advertisements). IPv4: the kernel answers the proxy ARP entry of 169.254.0.1 only when the host
        routes that address through another device (any default route does); without one, the VE
        would start and reach nothing.
        """
        routed = [i for i in meta.get('network') or [] if i['mode'] == 'routed']
        if 'start' not in steps or not routed:
            return
        for iface in routed:
            if iface['ipv6'] and _read_sysctl('net/ipv6/conf/all/forwarding') != '1':
                raise VzError('VE %s interface %s: routed IPv6 needs IPv6 forwarding on the host, and '
                              'net.ipv6.conf.all.forwarding is 0 (LXC refuses to start the VE); enable it with '
                              'osvirt.vz.bridge (forwarding) or sysctl' % (name, iface['name']))
        if any(i['ipv4'] for i in routed) and not _host_routes_to(ROUTED_GATEWAY4):
            raise VzError('VE %s: routed IPv4 needs a route on the host to %s (any default route), or the host '
                          'side of the VE\'s link does not answer for its gateway; the host has none'
                          % (name, ROUTED_GATEWAY4))

    def _rebase_info(self, meta, manifest):
        """From/to of a rebase, whether it goes back in time, and what the private area hides."""
        old_ref = meta['template']
        new_ref = '%s@%s' % (manifest['name'], manifest['version'])
        info = {'from': old_ref, 'to': new_ref, 'rollback': new_ref < old_ref,
                'hidden_files': None, 'hidden_more': 0, 'warnings': []}
        try:
            old_manifest = self.templates.manifest(*_validate.template_ref(old_ref))
            old_lowers = self.templates.lower_dirs(old_manifest)
        except VzError as exc:
            info['warnings'].append('VE %s: cannot tell which private files hide changes of %s: %s'
                                    % (meta['name'], new_ref, exc))
            return info
        upper = os.path.join(self.host.ve_dir(meta['name']), 'private', 'upper')
        info['hidden_files'], info['hidden_more'] = hidden_files(upper, old_lowers,
                                                                 self.templates.lower_dirs(manifest))
        if info['rollback']:
            info['warnings'].append('VE %s goes back from %s to the older version %s (rollback)'
                                    % (meta['name'], old_ref, new_ref))
        if info['hidden_more']:
            info['warnings'].append('VE %s: %d more private files hide changes of %s than hidden_files lists'
                                    % (meta['name'], info['hidden_more'], new_ref))
        return info

    def _label(self, plan, step):
        """The action text of one step (None: no action of its own); a configure that moves the VE to
        another version says so."""
        rebase = plan.get('rebase')
        if step == 'configure' and rebase:
            return 'rebase %s from %s to %s%s' % (plan['name'], rebase['from'], rebase['to'],
                                                  ' (rollback to an older version)' if rebase['rollback'] else '')
        if step == 'network':
            return 'network %s: %s' % (plan['name'], '; '.join(_describe_live(c) for c in plan['live_net']))
        if step == 'addresses':   # part of creating a VE; on an existing one, its own action
            return None if 'create' in plan['steps'] else \
                'lease %s for %s' % (', '.join(c['address'] for c in plan['claims']), plan['name'])
        if step == 'resolver':
            return 'write /etc/resolv.conf of %s' % plan['name']
        return '%s %s' % (step, plan['name'])

    def _predict(self, plan):
        """What a check-mode run reports: the plan, with nothing done."""
        state = _final_state(plan['current'], plan['steps'])
        meta = plan['new_meta'] or plan['meta'] or {'name': plan['name']}
        return self._result(plan, meta, state, plan['pid'] if state == plan['current'] else None,
                            [label for label in (self._label(plan, step) for step in plan['steps']) if label])

    def _result(self, plan, meta, state, pid, actions, error=None):
        before = spec_view(plan['meta']) if plan['meta'] else {}
        before['state'] = plan['current']
        after = spec_view(meta) if state != 'absent' else {}
        after['state'] = state
        warnings = []
        if meta.get('privileged') and state != 'absent':
            warnings.append('VE %s is privileged: root inside it is root on the host' % plan['name'])
        writes = plan.get('limit_done')
        if writes is None:
            writes = [(p, _limits.read_file(p), v) for p, v in plan.get('limit_writes') or []]
        rebase = plan.get('rebase')
        if rebase:
            warnings += rebase['warnings']
        return {
            'rebase': {k: rebase[k] for k in ('from', 'to', 'rollback', 'hidden_files')} if rebase else None,
            've': public_view(meta, state, pid) if state != 'absent' else {'name': plan['name'], 'state': 'absent'},
            'limit_changes': [{'file': p, 'before': b, 'after': a} for p, b, a in writes],
            'changed': bool(actions),
            'actions': actions,
            'restart_required': plan['restart_required'],
            'warnings': warnings,
            'diff': {'before': before, 'after': after},
            'error': error,
        }

    def _execute(self, plan):
        name, done = plan['name'], []
        state, pid = plan['current'], plan['pid']
        created, step = False, 'prepare'
        try:
            for step in plan['steps']:
                getattr(self, '_step_' + step)(plan)
                if self._label(plan, step):
                    done.append(self._label(plan, step))
                created = created or step == 'create'
                state = _final_state(state, [step])
                if state != plan['current'] or step in ('start', 'stop', 'kill'):
                    pid = None
        except Exception as exc:  # roll back a VE this run created, then report
            message = describe_error(exc, '%s of VE %s' % (step, name))
            if plan.get('limit_done') and step != 'limits':
                # the live limits were written but not persisted: put the old values back
                _limits.undo(plan['limit_done'])
                done.append('roll back limits %s' % name)
                plan['limit_done'] = []
            if plan.get('claimed') and not created:
                try:
                    self._leases().release(name, plan['claimed'])
                except VzError as exc:  # pragma: no cover - best effort, reported
                    message += '; releasing the new address leases failed too: %s' % exc
            if created:
                try:
                    self._step_destroy(plan)
                    done.append('roll back %s' % name)
                    state = 'absent'
                except Exception as rollback:  # pragma: no cover - best effort, reported
                    message += '; rolling back the new VE failed too: %s' % rollback
            else:
                if plan.get('saved'):
                    message += self._undo_configure(plan)
                state = self.client.state(name)['state'] if plan['meta'] else 'absent'
            details = getattr(exc, 'details', {}) or {}
            result = self._result(plan, plan['new_meta'] or plan['meta'] or {'name': name}, state, None, done,
                                  error=message)
            result['error_details'] = {k: v for k, v in details.items() if k in ('cmd', 'rc', 'stdout', 'stderr')}
            return result
        meta = plan['new_meta'] or plan['meta'] or {'name': name}
        return self._result(plan, meta, state, pid, done)

    # -- steps ----------------------------------------------------------------------------
    def _step_create(self, plan):
        """Write the VE's directory in .tmp and publish it by rename: never half-registered."""
        name, meta = plan['name'], plan['new_meta']
        config = self.desired_config(meta, plan['manifest'], create=True)
        staging = tempfile.mkdtemp(prefix='ve-%s-' % name, dir=self.host.tmp_dir)
        try:
            os.chmod(staging, 0o711)
            private = os.path.join(staging, 'private')
            idmap = meta.get('idmap') or {}
            # a btrfs subvolume where the host has quotas, so disk.space can be set at any time
            _quota.make_private_area(self.host, private, idmap.get('uid'), idmap.get('gid'))
            for path in (os.path.join(private, 'upper'), os.path.join(private, 'work')):
                os.mkdir(path, 0o755)
                if idmap:
                    os.chown(path, idmap['uid'], idmap['gid'])
            resolver = resolv_conf(meta.get('network'))
            if resolver is not None:
                write_inside(os.path.join(private, 'upper'), 'etc', 'resolv.conf', resolver,
                             idmap.get('uid', 0), idmap.get('gid', 0))
            cfg = LxcConfig()
            cfg.replace_owned(is_owned, config)
            cfg.save(os.path.join(staging, 'config'))
            write_json(os.path.join(staging, 've.json'), meta)
            os.rename(staging, self.host.ve_dir(name))
        except BaseException:
            remove_tree(staging)
            raise

    def _step_configure(self, plan):
        name = plan['name']
        directory = self.host.ve_dir(name)
        if plan['current'] in ('running', 'frozen') and plan.get('disk_digest'):
            # the VE keeps running what it was started with: remember that before the file changes
            on_disk = LxcConfig.load(os.path.join(directory, 'config')).owned_items(is_owned)
            self._record_running(name, plan['pid'], self.running_digest(name, plan['pid'], on_disk))
        config = self.desired_config(plan['new_meta'], plan['manifest'], create=True)
        if plan.get('rebase'):  # what _undo_configure puts back if the VE fails on the new version
            plan['saved'] = {f: _read_bytes(os.path.join(directory, f)) for f in ('config', 've.json')}
        cfg = LxcConfig.load(os.path.join(directory, 'config'))
        cfg.replace_owned(is_owned, config)
        cfg.save(os.path.join(directory, 'config'))
        write_json(os.path.join(directory, 've.json'), plan['new_meta'])
        if plan.get('release'):
            self._leases().release(name, plan['release'])

    def _step_addresses(self, plan):
        """Lease the VE's new addresses. A predicted `auto` address that another process leased since
        the plan is replaced by the pool's next free one."""
        name, leases = plan['name'], self._leases()
        claimed = plan.setdefault('claimed', [])
        for claim in plan['claims']:
            address = claim['address']
            if claim['pool'] is None:
                leases.claim(name, claim['interface'], address)
            else:
                try:
                    leases.claim(name, claim['interface'], address)
                except VzError:
                    address = leases.allocate(name, claim['interface'], claim['pool'], exclude=claim['exclude'])
                    iface = next(i for i in plan['new_meta']['network'] if i['name'] == claim['interface'])
                    old = '%s/%d' % (claim['address'], claim['prefixlen'])
                    iface[claim['key']] = [('%s/%d' % (address, claim['prefixlen'])) if a == old else a
                                           for a in iface[claim['key']]]
                    claim['address'] = address
            claimed.append(address)

    def _step_network(self, plan):
        """Change addresses and gateways of a running VE's interfaces live: the anti-spoofing filter,
        inside the VE's network namespace, and the host routes of a routed interface."""
        vnet, antispoof, done = _vnet(), _antispoof(), []
        try:
            for change in plan['live_net']:
                iface = change['iface']
                if antispoof is not None:
                    antispoof.ensure_filter(change['host_link'], iface['hwaddr'], iface['ipv4'], iface['ipv6'])
                vnet.apply_addresses(plan['pid'], iface['name'], add=change['add'], remove=change['remove'],
                                     gateway4=change['gateways'].get('gateway4'),
                                     gateway6=change['gateways'].get('gateway6'))
                done.append(change)
                if iface['mode'] == 'routed':
                    vnet.host_routes(change['host_link'], add=change['add'], remove=change['remove'])
        except Exception:
            for change in reversed(done):  # put back what this step changed, then report
                try:
                    self._undo_live(vnet, antispoof, plan, change)
                except Exception:  # pragma: no cover - best effort; the error below is what counts
                    pass
            raise

    @staticmethod
    def _undo_live(vnet, antispoof, plan, change):
        iface = change['iface']
        old = next(i for i in plan['meta']['network'] if i['name'] == iface['name'])
        vnet.apply_addresses(plan['pid'], iface['name'], add=change['remove'], remove=change['add'],
                             gateway4=tuple(reversed(change['gateways']['gateway4']))
                             if 'gateway4' in change['gateways'] else None,
                             gateway6=tuple(reversed(change['gateways']['gateway6']))
                             if 'gateway6' in change['gateways'] else None)
        if iface['mode'] == 'routed':
            vnet.host_routes(change['host_link'], add=change['remove'], remove=change['add'])
        if antispoof is not None:
            antispoof.ensure_filter(change['host_link'], old['hwaddr'], old.get('ipv4') or [], old.get('ipv6') or [])

    def _step_resolver(self, plan):
        """Write the VE's /etc/resolv.conf: inside a running VE through /proc/<pid>/root, else into its
        private area; never following a link the VE made, as the VE's root user."""
        name, meta = plan['name'], plan['new_meta']
        idmap = meta.get('idmap') or {}
        now = self.client.state(name)
        if now['state'] in ('running', 'frozen') and now['pid']:
            root = '/proc/%d/root' % now['pid']
        else:
            root = os.path.join(self.host.ve_dir(name), 'private', 'upper')
        write_inside(root, 'etc', 'resolv.conf', resolv_conf(meta['network']), idmap.get('uid', 0),
                     idmap.get('gid', 0))

    def _guard(self, meta):
        """Anti-spoofing filters of a started VE's links (idempotent; the host role's hook sets them
        too, before the VE's init runs, where it is installed)."""
        antispoof = _antispoof()
        if antispoof is None:
            return
        for iface in meta.get('network') or []:
            if iface.get('mode') == 'routed':
                antispoof.answer_gateways(iface['host_link'], bool(iface.get('ipv4')), bool(iface.get('ipv6')))
        for iface in meta.get('network') or []:
            antispoof.ensure_filter(iface['host_link'], iface['hwaddr'], iface.get('ipv4') or [],
                                    iface.get('ipv6') or [])

    def _step_limits(self, plan):
        """Apply changed limits: live cgroup writes (running VE), disk quota, network shaping."""
        name, meta = plan['name'], plan['new_meta']
        limits = meta.get('limits') or {}
        running = plan['current'] in ('running', 'frozen')
        plan['limit_done'] = _limits.apply_live(plan['limit_writes']) if plan['limit_writes'] else []
        if plan['quota'] is not None:
            try:
                _quota.apply_quota(self.host, meta, plan['quota'][0], plan['quota'][1], running,
                                   plan['spec'].get('force'))
            except Exception:
                _limits.undo(plan['limit_done'])
                plan['limit_done'] = []
                raise
        if running and plan['shaping']:
            self._shape(meta)

    def _shape(self, meta):
        """Network shaping of a running VE's links (it lives only while the links exist)."""
        net = (meta.get('limits') or {}).get('net') or {}
        for iface in meta.get('network') or []:
            if net.get('rate'):
                _shaping().apply_shaping(iface['host_link'], net['rate'], net.get('ceil'),
                                         capacity_bps=self.host.net_capacity)
            else:
                _shaping().clear_shaping(iface['host_link'])

    def _undo_configure(self, plan):
        """Put a rebased VE's config and metadata back and start it again if it ran; returns a note."""
        name, directory = plan['name'], self.host.ve_dir(plan['name'])
        try:
            for filename, data in plan['saved'].items():
                atomic_write(os.path.join(directory, filename), data)
            if plan['current'] in ('running', 'frozen') and self.client.state(name)['state'] == 'stopped':
                for attempt in range(5):  # the failed start's monitor may still be leaving its cgroup
                    time.sleep(0.5 * (attempt + 1))
                    try:
                        self._step_start(dict(plan, manifest=None, new_meta=plan['meta']))
                        break
                    except VzError:
                        if attempt == 4:
                            raise
                if plan['current'] == 'frozen':
                    self.client.freeze(name)
                self._record_running(name, self.client.state(name)['pid'], config_digest(
                    LxcConfig.load(os.path.join(directory, 'config')).owned_items(is_owned)))
        except Exception as exc:  # pragma: no cover - best effort, reported
            return '; putting %s back failed too: %s' % (plan['meta']['template'], exc)
        return '; VE %s is back on %s as it was' % (name, plan['meta']['template'])

    def _step_start(self, plan):
        name = plan['name']
        meta = plan['new_meta'] or plan['meta']
        if plan['manifest'] is not None:   # the shifted template copy may not exist yet on this host
            self.desired_config(meta, plan['manifest'], create=True)
        parent = meta.get('cgroup_parent') or self.host.cgroup_parent
        try:
            self.cgroups.settle(parent, name)   # a monitor of an earlier, aborted start may still be leaving
            self.cgroups.remove_stale(parent, name)
        except OSError as exc:
            raise VzError('VE %s is stopped but its cgroup still holds processes: %s' % (name, exc))
        log = os.path.join(self.host.ve_dir(name), 'lxc.log')
        try:
            self.client.start(name, logfile=log)
        except VzError as exc:
            tail = _tail(log)
            # let the aborted start's monitor finish, so that the caller (or a retry) can start again
            self.cgroups.settle(parent, name)
            raise VzError('%s%s' % (exc, ('; LXC log: ' + tail) if tail else ''), **exc.details)
        if ((meta.get('limits') or {}).get('net')):
            self._shape(meta)
        self._guard(meta)

    def _step_stop(self, plan):
        self.client.stop(plan['name'], self.stop_timeout)

    def _step_kill(self, plan):
        self.client.kill(plan['name'])

    def _step_freeze(self, plan):
        self.client.freeze(plan['name'])

    def _step_unfreeze(self, plan):
        self.client.unfreeze(plan['name'])

    def _step_destroy(self, plan):
        """Remove the VE: rename its directory away first (atomic), then delete it without following links."""
        name = plan['name']
        directory = self.host.ve_dir(name)
        trash = tempfile.mkdtemp(prefix='trash-ve-%s-' % name, dir=self.host.tmp_dir)
        os.rename(directory, os.path.join(trash, name))
        meta = plan['meta'] or plan['new_meta'] or {}
        _quota.remove_quota(self.host, dict(meta, name=name), os.path.join(trash, name, 'private'))
        remove_tree(trash)
        self.client.forget(name)
        if ((meta.get('limits') or {}).get('net')):
            for iface in meta.get('network') or []:
                try:
                    _shaping().clear_shaping(iface['host_link'])
                except VzError:
                    pass  # the IFB device goes with the VE's link; a leftover is reported by ve_info
        antispoof = _antispoof() if meta.get('network') else None
        for iface in meta.get('network') or [] if antispoof is not None else []:
            antispoof.remove_filter(iface['host_link'])
        if meta.get('network') or os.path.isdir(os.path.join(self.host.vz_root, 'net', 'leases')):
            self._leases().release(name)
        try:
            self.cgroups.remove_stale(meta.get('cgroup_parent') or self.host.cgroup_parent, name)
        except OSError:
            pass  # a cgroup LXC still tears down is no reason to report the removal as failed

    # -- info -----------------------------------------------------------------------------
    def info(self, names=None, states=None, usage=True):
        """Every VE (or those named / in ``states``) with state, template, ips, pid, usage."""
        listed = self.states()
        wanted = set(names) if names else None
        result = []
        for name in self.names():
            if wanted is not None and name not in wanted:
                continue
            meta = self.read_meta(name)
            entry = listed.get(name) or {'state': 'stopped', 'pid': None}
            if states and entry['state'] not in states:
                continue
            view = public_view(meta, entry['state'], entry['pid'])
            view['restart_required'] = False
            if entry['state'] in ('running', 'frozen'):
                try:
                    on_disk = LxcConfig.load(os.path.join(self.host.ve_dir(name), 'config')).owned_items(is_owned)
                except OSError:
                    on_disk = []
                view['restart_required'] = self.running_digest(name, entry['pid'], on_disk) != config_digest(on_disk)
            tname, _sep, version = (meta.get('template') or '').partition('@')
            view.update({'template_name': tname, 'template_version': version or None,
                         'layers': meta.get('layers') or [], 'network': meta.get('network') or [],
                         'mounts': meta.get('mounts') or [], 'cgroup_parent': meta.get('cgroup_parent')})
            view['interfaces'] = _vnet().describe_interfaces(
                meta['network'], entry['pid'] if entry['state'] in ('running', 'frozen') else None) \
                if meta.get('network') else []
            if usage:
                view['memory_bytes'] = (self.cgroups.memory_usage(meta.get('cgroup_parent') or
                                                                  self.host.cgroup_parent, name)
                                        if entry['state'] in ('running', 'frozen') else 0)
                view['private_bytes'] = disk_usage(os.path.join(self.host.ve_dir(name), 'private'))
                view['usage'] = self.accounting(meta, entry['state'])
            result.append(view)
        return result

    def accounting(self, meta, state):
        """Use against each limit and limit hits of a VE: memory, numproc, cpu (running VEs), disk, net."""
        name, limits = meta['name'], meta.get('limits') or {}
        running = state in ('running', 'frozen')
        use = _limits.usage(self.cgroups, meta.get('cgroup_parent') or self.host.cgroup_parent, name, limits) \
            if running else {}
        disk = _quota.quota_usage(self.host, meta)
        use['disk'] = dict(disk, space_limit=disk.get('space_limit') or _limits.get(limits, 'disk', 'space'))
        net = {'rx_bytes': None, 'tx_bytes': None, 'rate': _limits.get(limits, 'net', 'rate'),
               'ceil': _limits.get(limits, 'net', 'ceil')}
        if running and meta.get('network'):
            try:
                counters = [_shaping().link_counters(i['host_link']) for i in meta['network']]
            except VzError:
                counters = []
            counters = [c for c in counters if c]
            if counters:
                net['rx_bytes'] = sum(c['rx_bytes'] for c in counters)
                net['tx_bytes'] = sum(c['tx_bytes'] for c in counters)
        use['net'] = net
        return use


def describe_error(exc, what):
    """One readable sentence for an exception raised while doing ``what``."""
    if isinstance(exc, VzError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return '%s failed: %s%s' % (what, exc.strerror, (' (%s)' % exc.filename) if exc.filename else '')
    return '%s failed: %s' % (what, exc)


def _describe_live(change):
    """One interface's live change in words, for the actions list."""
    words = ['add %s' % a for a in change['add']] + ['remove %s' % a for a in change['remove']]
    words += ['%s %s' % (key, new or 'none') for key, (_old, new) in sorted(change['gateways'].items())]
    return '%s %s' % (change['iface']['name'], ', '.join(words))


def _final_state(state, steps):
    after = {'create': 'stopped', 'start': 'running', 'stop': 'stopped', 'kill': 'stopped', 'freeze': 'frozen',
             'unfreeze': 'running', 'destroy': 'absent'}
    for step in steps:
        state = after.get(step, state)
    return state


def _read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()


def _tail(path, lines=5):
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            text = handle.read()[-4000:]
    except OSError:
        return ''
    return ' | '.join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


def _read_sysctl(path):
    try:
        with open(os.path.join('/proc/sys', path), 'r', encoding='ascii') as handle:
            return handle.read().strip()
    except OSError:
        return None


def _host_routes_to(address):
    """True when the host has a unicast route to ``address`` (the kernel's route lookup, pyroute2)."""
    try:
        from pyroute2 import IPRoute  # pylint: disable=import-outside-toplevel
        from pyroute2.netlink.exceptions import NetlinkError  # pylint: disable=import-outside-toplevel
    except ImportError:
        return True   # cannot tell; LXC and the kernel decide
    with IPRoute() as ipr:
        try:
            routes = ipr.route('get', dst=address)
        except NetlinkError:
            return False
    return any(r.get('type', 1) == 1 for r in routes)   # RTN_UNICAST
