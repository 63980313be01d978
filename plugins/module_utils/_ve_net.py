# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The network of a VE: its interfaces as ve.json keeps them, their addresses and leases, their LXC
config entries, and what changes them on a running VE (addresses, gateways, guard, shaping).

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Pure planning is module level (``normalize_network``, ``plan_live_network``, ``check_forwarding``,
``config_items``, ``resolv_conf``). ``VeNetwork`` acts on one host for the VE manager
(``_ves.py``) and for anything else that moves a VE (migration, restore): address leases, live
address changes, the anti-spoofing guard and the shaping of a VE's links, and their removal.
The modules that load pyroute2 (``_vnet``, ``_shaping``, ``_antispoof``) are imported only when
a VE has interfaces or network limits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os

from . import _validate
from ._errors import VzError
from ._fs import write_inside


def shaping_module():
    """The network shaping module, imported only when a VE has network limits: it loads pyroute2,
    which costs about 0.2 s per module run."""
    from . import _shaping as shaping  # pylint: disable=import-outside-toplevel
    return shaping


def vnet_module():
    """Netlink inside VEs and on their host links (``ve_info``'s interfaces), imported only when a
    VE has a network interface: it loads pyroute2."""
    from . import _vnet as vnet  # pylint: disable=import-outside-toplevel
    return vnet


def leases_module():
    """The address leases (_addrpool), imported when a VE has addresses."""
    from . import _addrpool  # pylint: disable=import-outside-toplevel
    return _addrpool


def antispoof_module():
    """The anti-spoofing filters (_antispoof), or None where that part is not installed."""
    try:
        from . import _antispoof as antispoof  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return antispoof


# -- interfaces of a VE ------------------------------------------------------------------------
def derived_hwaddr(ve, ifname):
    """A stable, locally administered MAC from the VE and interface names (same on every host)."""
    digest = hashlib.sha256(('osvirt.vz:%s:%s' % (ve, ifname)).encode()).digest()
    return '02:' + ':'.join('%02x' % b for b in digest[:5])


# interfaces whose guard chains the removal of a VE with an unreadable ve.json looks for
MAX_BROKEN_LINKS = 8


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
    the caller, which takes it from the pool (``VeNetwork.plan_addresses``) and drops the key.
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


# lxc.net.<i>.<key> that a running VE gets live (osvirt.vz changes them inside its network namespace)
LIVE_NET_KEYS = ('ipv4.address', 'ipv4.gateway', 'ipv6.address', 'ipv6.gateway')


def config_items(network):
    """The lxc.net.* entries of a VE's interfaces, as (key, value) pairs in a fixed order."""
    items = []
    if not network:
        items.append(('lxc.net.0.type', 'empty'))
    for index, iface in enumerate(network or []):
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
    return items


def _lxc_address(cidr):
    """An address as lxc.net.N.ipv4/ipv6.address takes it. IPv4 names its broadcast address: LXC 5.0.2
    sets 0.0.0.255 for a /24 when it computes it itself (seen with ``ip addr`` inside a VE)."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version == 4 and iface.network.prefixlen <= 30:
        return '%s %s' % (cidr, iface.network.broadcast_address)
    return cidr


# -- planning changes --------------------------------------------------------------------------
def plan_live_network(meta, new_meta):
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


def check_forwarding(name, meta, steps):
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


def describe_live(change):
    """One interface's live change in words, for the actions list."""
    words = ['add %s' % a for a in change['add']] + ['remove %s' % a for a in change['remove']]
    words += ['%s %s' % (key, new or 'none') for key, (_old, new) in sorted(change['gateways'].items())]
    return '%s %s' % (change['iface']['name'], ', '.join(words))


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


# -- acting on one host ------------------------------------------------------------------------
class VeNetwork:
    """The network side of VEs on one host: leases, live changes, guard and shaping of their links.

    One instance serves one module run; it remembers the addresses the VEs of one task ask for
    (``begin_task``), so that two VEs of the same task never plan the same address.
    """

    def __init__(self, host):
        self.host = host
        self._lease_book = None
        self._task_addresses = {}   # address -> VE, over the plans of one task

    @property
    def leases(self):
        """The host's address leases (``_addrpool.Leases``), opened on first use."""
        if self._lease_book is None:
            self._lease_book = leases_module().Leases(self.host)
        return self._lease_book

    def begin_task(self):
        """Forget the addresses planned by an earlier task."""
        self._task_addresses = {}

    def plan_addresses(self, name, meta, new_meta):
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
        leases = self.leases
        claims = []
        for iface in network:
            for address in addresses_of(iface):
                other = self._task_addresses.get(address)
                if other and other != name:
                    raise VzError('VE %s interface %s: address %s is also asked for by VE %s in this task'
                                  % (name, iface['name'], address, other))
                owner = leases.owner(address)
                if owner and owner.get('ve') != name and owner.get('moved_to'):
                    raise VzError('VE %s interface %s: address %s is reserved for VE %s, which moved from this '
                                  'host to %s with it' % (name, iface['name'], address, owner['ve'], owner['moved_to']))
                if owner and owner.get('ve') != name:
                    raise VzError('VE %s interface %s: address %s is already used by VE %s (interface %s)'
                                  % (name, iface['name'], address, owner.get('ve'), owner.get('interface')))
                if owner is None or owner.get('moved_to'):
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

    def claim(self, name, claims, network, claimed):
        """Lease the addresses ``claims`` (from ``plan_addresses``) to VE ``name``.

        A predicted `auto` address that another process leased since the plan is replaced by the
        pool's next free one, in ``network`` (the VE's new interfaces) too. Each leased address is
        appended to ``claimed`` as soon as it is held, so that a caller can release them on failure.
        """
        leases = self.leases
        for claim in claims:
            address = claim['address']
            if claim['pool'] is None:
                leases.claim(name, claim['interface'], address)
            else:
                try:
                    leases.claim(name, claim['interface'], address)
                except VzError:
                    address = leases.allocate(name, claim['interface'], claim['pool'], exclude=claim['exclude'])
                    iface = next(i for i in network if i['name'] == claim['interface'])
                    old = '%s/%d' % (claim['address'], claim['prefixlen'])
                    iface[claim['key']] = [('%s/%d' % (address, claim['prefixlen'])) if a == old else a
                                           for a in iface[claim['key']]]
                    claim['address'] = address
            claimed.append(address)

    def release(self, name, addresses=None):
        """Give up the leases of VE ``name`` (only ``addresses`` when given)."""
        if addresses is None:
            self.leases.release(name)
        else:
            self.leases.release(name, addresses)

    def apply_live(self, pid, changes, old_network):
        """Change addresses and gateways of a running VE's interfaces live (``plan_live_network``):
        the anti-spoofing filter, inside the VE's network namespace (init ``pid``), and the host
        routes of a routed interface. On failure what was changed is put back (``old_network``: the
        VE's interfaces before), then the error is raised."""
        vnet, antispoof, done = vnet_module(), antispoof_module(), []
        try:
            for change in changes:
                iface = change['iface']
                if antispoof is not None:
                    antispoof.ensure_filter(change['host_link'], iface['hwaddr'], iface['ipv4'], iface['ipv6'])
                vnet.apply_addresses(pid, iface['name'], add=change['add'], remove=change['remove'],
                                     gateway4=change['gateways'].get('gateway4'),
                                     gateway6=change['gateways'].get('gateway6'))
                done.append(change)
                if iface['mode'] == 'routed':
                    vnet.host_routes(change['host_link'], add=change['add'], remove=change['remove'])
        except Exception:
            for change in reversed(done):  # put back what this step changed, then report
                try:
                    _undo_live(vnet, antispoof, pid, change, old_network)
                except Exception:  # pragma: no cover - best effort; the error below is what counts
                    pass
            raise

    @staticmethod
    def write_resolver(root, network, idmap):
        """Write /etc/resolv.conf under ``root`` (a VE's root or private upper dir) from its
        interfaces, as the VE's root user (``idmap``), never following a link the VE made."""
        idmap = idmap or {}
        write_inside(root, 'etc', 'resolv.conf', resolv_conf(network), idmap.get('uid', 0), idmap.get('gid', 0))

    @staticmethod
    def guard(meta):
        """Anti-spoofing filters of a started VE's links (idempotent; the host role's hook sets them
        too, before the VE's init runs, where it is installed)."""
        antispoof = antispoof_module()
        if antispoof is None:
            return
        for iface in meta.get('network') or []:
            if iface.get('mode') == 'routed':
                antispoof.answer_gateways(iface['host_link'], bool(iface.get('ipv4')), bool(iface.get('ipv6')))
        for iface in meta.get('network') or []:
            antispoof.ensure_filter(iface['host_link'], iface['hwaddr'], iface.get('ipv4') or [],
                                    iface.get('ipv6') or [])

    def shape(self, meta):
        """Network shaping of a running VE's links (it lives only while the links exist)."""
        net = (meta.get('limits') or {}).get('net') or {}
        for iface in meta.get('network') or []:
            if net.get('rate'):
                shaping_module().apply_shaping(iface['host_link'], net['rate'], net.get('ceil'),
                                               capacity_bps=self.host.net_capacity)
            else:
                shaping_module().clear_shaping(iface['host_link'])

    def after_start(self, meta):
        """What a VE's links get once it runs: shaping (if it has network limits), then the guard."""
        if (meta.get('limits') or {}).get('net'):
            self.shape(meta)
        self.guard(meta)

    def teardown(self, name, meta):
        """Remove what the host keeps for VE ``name``'s network: shaping and guard of its links and
        its address leases. Idempotent; the VE need not exist any more."""
        if (meta.get('limits') or {}).get('net'):
            for iface in meta.get('network') or []:
                try:
                    shaping_module().clear_shaping(iface['host_link'])
                except VzError:
                    pass  # the IFB device goes with the VE's link; a leftover is reported by ve_info
        links = [iface['host_link'] for iface in meta.get('network') or []]
        if meta.get('broken'):   # its interfaces are unknown (ve.json unreadable): the links its name gives
            links = [host_link_name(name, index, self.host.cgroup_parent) for index in range(MAX_BROKEN_LINKS)]
        antispoof = antispoof_module() if links else None
        for link in links if antispoof is not None else []:
            antispoof.remove_filter(link)
        if meta.get('network') or os.path.isdir(os.path.join(self.host.vz_root, 'net', 'leases')):
            self.release(name)

    @staticmethod
    def interfaces(meta, pid):
        """The VE's interfaces as the kernel has them (``ve_info``); ``pid``: its init, None when stopped."""
        return vnet_module().describe_interfaces(meta['network'], pid) if meta.get('network') else []

    @staticmethod
    def counters(meta):
        """Bytes received and sent over all links of a running VE, or None each where unknown."""
        try:
            counters = [shaping_module().link_counters(i['host_link']) for i in meta.get('network') or []]
        except VzError:
            counters = []
        counters = [c for c in counters if c]
        if not counters:
            return {'rx_bytes': None, 'tx_bytes': None}
        return {'rx_bytes': sum(c['rx_bytes'] for c in counters), 'tx_bytes': sum(c['tx_bytes'] for c in counters)}


def _undo_live(vnet, antispoof, pid, change, old_network):
    iface = change['iface']
    old = next(i for i in old_network if i['name'] == iface['name'])
    vnet.apply_addresses(pid, iface['name'], add=change['remove'], remove=change['add'],
                         gateway4=tuple(reversed(change['gateways']['gateway4']))
                         if 'gateway4' in change['gateways'] else None,
                         gateway6=tuple(reversed(change['gateways']['gateway6']))
                         if 'gateway6' in change['gateways'] else None)
    if iface['mode'] == 'routed':
        vnet.host_routes(change['host_link'], add=change['remove'], remove=change['add'])
    if antispoof is not None:
        antispoof.ensure_filter(change['host_link'], old['hwaddr'], old.get('ipv4') or [], old.get('ipv6') or [])
