# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Live network changes inside a running VE, and the host side of a VE's links, over netlink
(pyroute2).

PRIVATE: this file is internal to the osvirt.vz collection. Its functions and classes may change
or disappear in any release; do not import them from outside the collection.

How we reach into a VE: the VE's init has a pid on the host, and ``/proc/<pid>/ns/net`` is its
network namespace. A netlink socket belongs to the namespace it was *created* in, so this thread
enters the VE's namespace with ``setns(2)``, creates one pyroute2 ``IPRoute`` socket there, and
returns to its own namespace at once (``_ve_socket``). Everything after that is ordinary netlink
on that socket, in this process. ``setns`` of a network namespace changes only the calling thread,
so the other threads of a module (``VeManager`` runs VEs in a thread pool) never leave the host's
namespace. We measured 0.35 ms for socket + link dump, against 7 ms for pyroute2's ``NetNS``
(which forks a proxy process and pickles every message through pipes); see docs/networking.md.

Public functions (the contract of issue 5, docs/networking.md):

- ``ve_interfaces(pid)``: the VE's interfaces as the VE sees them;
- ``link_stats(host_link)``: byte/packet counters of a VE's link, from its host side, **as the
  VE counts them** (the host side receives what the VE sends);
- ``apply_addresses(pid, ifname, add, remove, gateway4, gateway6, check_only)``: add/remove
  addresses and change default routes inside the VE, idempotent, rolled back on failure;
- ``host_routes(host_link, add, remove)``: /32 and /128 routes to a routed VE's host link;
- ``address_state(pid, ifname, address)``: ``ok``, ``tentative``, ``dadfailed`` or None;
- ``describe_interfaces(network, pid)``: the ``interfaces`` entries of ``ve_info``.

The pure parts (``plan_addresses``, ``plan_gateway``, ``needs_onlink``) are unit-tested.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import time
from contextlib import contextmanager

from . import _validate
from ._errors import VzError

# pyroute2 as _net imports it (None / a stand-in NetlinkError where it is missing)
from ._net import HAS_PYROUTE2, PYROUTE2_IMPORT_ERROR, IPRoute, NetlinkError


CLONE_NEWNET = 0x40000000
# include/uapi/linux/if_addr.h
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
# include/uapi/linux/rtnetlink.h
RTNH_F_ONLINK = 0x04
RT_TABLE_MAIN = 254
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
RT_SCOPE_UNIVERSE = 0
RTPROT_STATIC = 4
IFF_LOOPBACK = 0x8

# What the VE's default route points at in routed mode (LXC's router mode proxies both on the
# host side of the veth).
ROUTED_GATEWAY4 = '169.254.0.1'
ROUTED_GATEWAY6 = 'fe80::1'

# How long apply_addresses waits for IPv6 duplicate address detection of the addresses it added.
# The kernel waits a random 0-1 s (rtr_solicit_delay) and then one probe of 1 s (retrans_time).
DAD_WAIT_SECONDS = 3.0
DAD_POLL_SECONDS = 0.1

PYROUTE2_MISSING_MSG = (
    "python3-pyroute2 is required on the host (Debian/Ubuntu: apt-get install python3-pyroute2); "
    "the Python running this module could not import pyroute2"
)


class VnetError(VzError):
    """A netlink step inside a VE or on a VE's host link failed; the message names the VE's pid,
    the interface and the kernel's error."""


def require_pyroute2():
    """Raise ``VnetError`` with the install hint when pyroute2 cannot be imported."""
    if not HAS_PYROUTE2:
        raise VnetError(PYROUTE2_MISSING_MSG, exception=PYROUTE2_IMPORT_ERROR)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------

def parse_interface(value, what='address'):
    """``ipaddress`` interface of a CIDR string (either family); ``VzError`` when malformed or
    without a prefix length."""
    if not isinstance(value, str) or '/' not in value:
        raise VzError('%s %r must be an address with a prefix length, like 10.20.0.5/24 or fd00::5/64'
                      % (what, value))
    try:
        return ipaddress.ip_interface(value.strip())
    except ValueError as exc:
        raise VzError('%s %r is not a valid address: %s' % (what, value, exc)) from None


def parse_gateway(value, what='gateway'):
    """``ipaddress`` address of a gateway, or None; ``VzError`` when malformed."""
    if value in (None, ''):
        return None
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise VzError('%s %r is not a valid IP address' % (what, value)) from None


def plan_addresses(current, add=(), remove=()):
    """Steps that bring the addresses of one interface from ``current`` to "``add`` present,
    ``remove`` absent" (all CIDR strings, either family).

    Returns ``(to_remove, to_add)`` as CIDR strings with the prefix length as found (removals) or
    asked (additions). An address asked for that is there with the same prefix length is no step;
    with another prefix length it is removed and added again. Removing an address that is not
    there is no step; a removal matches the address whatever its prefix length. An address both
    added and removed is an error.
    """
    present = {}
    for text in current:
        iface = ipaddress.ip_interface(text)
        present[iface.ip] = iface
    wanted = [parse_interface(a, 'address to add') for a in add]
    unwanted = [parse_interface(a, 'address to remove') for a in remove]
    clash = {w.ip for w in wanted} & {u.ip for u in unwanted}
    if clash:
        raise VzError('address %s is both added and removed' % ', '.join(sorted(str(c) for c in clash)))
    to_remove, to_add = [], []
    for iface in unwanted:
        if iface.ip in present and present[iface.ip].with_prefixlen not in to_remove:
            to_remove.append(present[iface.ip].with_prefixlen)
    for iface in wanted:
        have = present.get(iface.ip)
        if have is not None and have.network.prefixlen == iface.network.prefixlen:
            continue
        if have is not None:
            to_remove.append(have.with_prefixlen)
        if iface.with_prefixlen not in to_add:
            to_add.append(iface.with_prefixlen)
    return to_remove, to_add


def needs_onlink(gateway, addresses):
    """True when ``gateway`` lies in none of the subnets of ``addresses`` (CIDR strings): then
    the default route needs ``onlink`` (routed mode: 169.254.0.1 next to a /32). IPv6 link-local
    gateways never need it (they are reached through the named device)."""
    gw = ipaddress.ip_address(gateway)
    if gw.version == 6 and gw.is_link_local:
        return False
    return not any(gw in ipaddress.ip_interface(a).network
                   for a in addresses if ipaddress.ip_interface(a).version == gw.version)


def plan_gateway(version, change, current):
    """Steps for the default route of one family on one interface.

    ``change`` is ``(old, new)`` gateways (strings or None) or None (leave the route alone);
    ``current`` is the list of gateways of the default routes of that family through this
    interface. Returns a list of ``('replace', new)`` / ``('delete', gw)`` tuples.
    """
    if change is None:
        return []
    if isinstance(change, (tuple, list)):
        if len(change) != 2:
            raise VzError('gateway%d change must be an (old, new) pair, got %r' % (version, change))
        old, new = change
    else:
        old, new = None, change
    old = parse_gateway(old, 'old gateway%d' % version)
    new = parse_gateway(new, 'gateway%d' % version)
    for gw in (old, new):
        if gw is not None and gw.version != (4 if version == 4 else 6):
            raise VzError('gateway%d %s is not an IPv%d address' % (version, gw, version))
    have = [ipaddress.ip_address(g) for g in current if g]
    steps = []
    if new is not None and new not in have:
        steps.append(('replace', str(new)))
    if old is not None and old != new and old in have:
        steps.append(('delete', str(old)))
    return steps


def broadcast(cidr):
    """IPv4 broadcast address like ``ip addr add ... brd +``; None for /31 and /32 and IPv6."""
    iface = ipaddress.ip_interface(cidr)
    if iface.version != 4 or iface.network.prefixlen > 30:
        return None
    return str(iface.network.broadcast_address)


def _netlink_text(exc):
    """The kernel's error as text: ``[Errno 17] File exists`` -> ``File exists (errno 17)``."""
    code = getattr(exc, 'code', None)
    if code:
        return '%s (errno %d)' % (os.strerror(code), code)
    return str(exc)


# ---------------------------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------------------------

_LIBC = None


def _setns(fd):
    global _LIBC  # pylint: disable=global-statement
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class NamespaceStuck(Exception):
    """This thread could not return to its own network namespace after a step inside a VE. Never
    caught here: going on would make host changes inside the VE."""


@contextmanager
def _inside(pid):
    """Run the body with this thread in the network namespace of process ``pid``, and bring the
    thread back afterwards whatever happens.

    Refuses a process that shares this thread's namespace (a VE without a namespace of its own
    must never get its addresses put on the host).
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        raise VnetError('invalid VE pid %r' % (pid,))
    try:
        target = os.open('/proc/%d/ns/net' % pid, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise VnetError('cannot enter the network namespace of VE pid %d: %s (is the VE running?)'
                        % (pid, exc.strerror)) from None
    try:
        own = os.open('/proc/thread-self/ns/net', os.O_RDONLY | os.O_CLOEXEC)
        try:
            if os.fstat(target).st_ino == os.fstat(own).st_ino:
                raise VnetError("VE pid %d shares the host's network namespace; refusing to change it" % pid)
            try:
                _setns(target)
            except OSError as exc:
                raise VnetError('cannot enter the network namespace of VE pid %d: %s'
                                % (pid, exc.strerror)) from None
            try:
                yield
            finally:
                try:
                    _setns(own)
                except OSError as exc:
                    raise NamespaceStuck('could not return from the network namespace of VE pid %d: %s'
                                         % (pid, exc.strerror)) from None
        finally:
            os.close(own)
    finally:
        os.close(target)


def _ve_socket(pid):
    """A pyroute2 ``IPRoute`` whose socket lives in the network namespace of process ``pid``
    (created while this thread is inside it; used from anywhere afterwards)."""
    require_pyroute2()
    with _inside(pid):
        return IPRoute()


def _host_socket():
    require_pyroute2()
    return IPRoute()


def _link_index(ipr, name):
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _addresses(ipr, index, family=None):
    """[(cidr, flags, scope)] of link ``index``. IFA_FLAGS (32 bit) wins over the 8-bit header."""
    result = []
    kwargs = {'index': index}
    if family is not None:
        kwargs['family'] = family
    for msg in ipr.get_addr(**kwargs):
        addr = msg.get_attr('IFA_LOCAL') or msg.get_attr('IFA_ADDRESS')
        flags = msg.get_attr('IFA_FLAGS')
        if flags is None:
            flags = msg['flags']
        result.append(('%s/%d' % (addr, msg['prefixlen']), flags, msg['scope']))
    return result


def _default_gateways(ipr, family, index):
    """Gateways of the default routes of ``family`` in the main table through link ``index``."""
    result = []
    for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
        if msg['dst_len'] != 0 or msg.get_attr('RTA_OIF') != index:
            continue
        if msg.get_attr('RTA_DST') is not None:
            continue
        result.append(msg.get_attr('RTA_GATEWAY'))
    return [g for g in result if g]


def _dad_state(flags):
    if flags & IFA_F_DADFAILED:
        return 'dadfailed'
    if flags & IFA_F_TENTATIVE:
        return 'tentative'
    return 'ok'


def _read_interface(ipr, link):
    index = link['index']
    ipv4, ipv6, tentative, dadfailed = [], [], [], []
    for cidr, flags, scope in _addresses(ipr, index):
        if ':' in cidr:
            if scope == RT_SCOPE_LINK:
                continue  # the kernel's own fe80:: address, not one we configure
            ipv6.append(cidr)
            state = _dad_state(flags)
            if state == 'tentative':
                tentative.append(cidr)
            elif state == 'dadfailed':
                dadfailed.append(cidr)
        else:
            ipv4.append(cidr)
    return {
        'name': link.get_attr('IFLA_IFNAME'),
        'hwaddr': link.get_attr('IFLA_ADDRESS'),
        'mtu': link.get_attr('IFLA_MTU'),
        'state': (link.get_attr('IFLA_OPERSTATE') or 'unknown').lower(),
        'ipv4': ipv4,
        'ipv6': ipv6,
        'ipv6_tentative': tentative,
        'ipv6_dadfailed': dadfailed,
    }


# ---------------------------------------------------------------------------------------------
# Inside the VE
# ---------------------------------------------------------------------------------------------

def ve_interfaces(pid):
    """The VE's interfaces (loopback left out) as the VE sees them: ``name``, ``hwaddr``, ``mtu``,
    ``state`` (operstate: up, down, lowerlayerdown, unknown), ``ipv4``, ``ipv6`` (CIDR strings;
    IPv6 without the kernel's link-local address), ``ipv6_tentative`` and ``ipv6_dadfailed`` (the
    IPv6 addresses still in, or failed, duplicate address detection)."""
    ipr = _ve_socket(pid)
    try:
        return [_read_interface(ipr, link) for link in ipr.get_links()
                if not link['flags'] & IFF_LOOPBACK]
    except NetlinkError as exc:
        raise VnetError('could not read the interfaces of VE pid %d: %s' % (pid, _netlink_text(exc))) from None
    finally:
        ipr.close()


def address_state(pid, ifname, address):
    """``'ok'``, ``'tentative'`` (IPv6 duplicate address detection still running), ``'dadfailed'``
    (another node on the link has it) or None (not on ``ifname``) for ``address`` (with or
    without prefix length) inside the VE of ``pid``."""
    _validate.ifname(ifname, 'interface name inside the VE')
    ip = parse_gateway(str(address).split('/', 1)[0], 'address')
    ipr = _ve_socket(pid)
    try:
        index = _link_index(ipr, ifname)
        if index is None:
            raise VnetError('VE pid %d has no interface %s' % (pid, ifname))
        for cidr, flags, _scope in _addresses(ipr, index):
            if ipaddress.ip_interface(cidr).ip == ip:
                return _dad_state(flags)
        return None
    finally:
        ipr.close()


class _VeLink:
    """One interface inside a VE: read, change, undo. Every netlink error becomes a
    ``VnetError`` naming the VE's pid, the interface and the step."""

    def __init__(self, ipr, pid, ifname):
        self.ipr, self.pid, self.ifname = ipr, pid, ifname
        self.index = _link_index(ipr, ifname)
        if self.index is None:
            raise VnetError('VE pid %d has no interface %s' % (pid, ifname))

    def fail(self, action, exc):
        """The error of one failed step."""
        return VnetError('VE pid %d, interface %s: could not %s: %s'
                         % (self.pid, self.ifname, action, _netlink_text(exc)))

    def addresses(self):
        """{cidr: flags} of the interface."""
        return {cidr: flags for cidr, flags, scope in _addresses(self.ipr, self.index)
                if not (':' in cidr and scope == RT_SCOPE_LINK)}

    def add(self, cidr):
        """Add one address (IPv4 with its broadcast address, like ``brd +``)."""
        iface = ipaddress.ip_interface(cidr)
        kwargs = {'index': self.index, 'address': str(iface.ip), 'prefixlen': iface.network.prefixlen}
        brd = broadcast(cidr)
        if brd:
            kwargs['broadcast'] = brd
        self.ipr.addr('add', **kwargs)

    def remove(self, cidr):
        """Remove one address."""
        iface = ipaddress.ip_interface(cidr)
        self.ipr.addr('del', index=self.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def gateways(self, version):
        """Gateways of the default routes of one family through this interface."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        return _default_gateways(self.ipr, family, self.index)

    def set_default(self, gateway, addresses):
        """Replace the default route of the gateway's family by one via ``gateway`` on this link."""
        gw = ipaddress.ip_address(gateway)
        family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
        kwargs = {'family': family, 'dst_len': 0, 'gateway': str(gw), 'oif': self.index,
                  'table': RT_TABLE_MAIN, 'proto': RTPROT_STATIC, 'scope': RT_SCOPE_UNIVERSE}
        if needs_onlink(gateway, addresses):
            kwargs['flags'] = RTNH_F_ONLINK
        self.ipr.route('replace', **kwargs)

    def delete_default(self, gateway):
        """Delete the default route via ``gateway`` on this link."""
        gw = ipaddress.ip_address(gateway)
        family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
        self.ipr.route('del', family=family, dst_len=0, gateway=str(gw), oif=self.index, table=RT_TABLE_MAIN,
                       scope=RT_SCOPE_NOWHERE)

    def promote_secondaries(self):
        """Turn on ``promote_secondaries`` of this interface inside the VE; returns True when it
        was off. Without it, removing the first (primary) IPv4 address of a subnet also removes
        every other address of that subnet. The sysctl is written while this thread is in the
        VE's namespace (/proc/sys/net follows the namespace of the thread that opens it)."""
        path = '/proc/sys/net/ipv4/conf/%s/promote_secondaries' % self.ifname
        try:
            with _inside(self.pid):
                with open(path, 'r+', encoding='ascii') as handle:
                    if handle.read().strip() == '1':
                        return False
                    handle.seek(0)
                    handle.write('1\n')
                return True
        except OSError as exc:
            raise VnetError('VE pid %d, interface %s: could not enable promote_secondaries: %s'
                            % (self.pid, self.ifname, exc.strerror or exc)) from None


def _loses_secondaries(current, to_remove):
    """True when removing ``to_remove`` takes a primary IPv4 address whose subnet keeps others."""
    for cidr in to_remove:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != 4 or current.get(cidr, 0) & IFA_F_SECONDARY:
            continue
        if any(ipaddress.ip_interface(o).version == 4 and o not in to_remove
               and ipaddress.ip_interface(o).network == iface.network for o in current):
            return True
    return False


def apply_addresses(pid, ifname, add=(), remove=(), gateway4=None, gateway6=None, check_only=False,
                    dad_wait=DAD_WAIT_SECONDS):
    """Add and remove addresses of interface ``ifname`` inside the running VE whose init is
    ``pid``, and change its default routes; returns the actions as readable strings.

    ``add``/``remove``: CIDR strings of either family. Adding an address that is there, or
    removing one that is not, is no action. ``gateway4``/``gateway6``: ``(old, new)`` tuples or
    None (leave that default route alone). A new gateway replaces the default route of its
    family (with ``onlink`` when it lies in no subnet of the interface, as 169.254.0.1 in routed
    mode); ``(old, None)`` deletes the default route via ``old``.

    Order: removals, then additions, then routes (a gateway may need a new address). IPv6
    addresses go through duplicate address detection: the call waits up to ``dad_wait`` seconds
    for it; an address still tentative then is reported as such in its action, an address that
    failed it is removed again and the call fails. On any failure every step already made is
    undone and a ``VnetError`` names the VE's pid, the interface and the kernel's error.
    ``check_only`` reads the VE and returns the actions without changing anything.
    """
    # Bad input fails before the VE is touched (and also when it is not running).
    _validate.ifname(ifname, 'interface name inside the VE')
    plan_addresses([], add or (), remove or ())
    plan_gateway(4, gateway4, [])
    plan_gateway(6, gateway6, [])
    ipr = _ve_socket(pid)
    try:
        link = _VeLink(ipr, pid, ifname)
        try:
            return _apply(link, add or (), remove or (), gateway4, gateway6, check_only, dad_wait)
        except NetlinkError as exc:  # a read failed; the steps raise their own VnetError
            raise link.fail('read its state', exc) from None
    finally:
        ipr.close()


def _route_steps(version, change, gateways, kept):
    """Default-route steps of one family against ``gateways`` (what the kernel has now).

    ``kept``: the gateways to put back when ``change`` is None (leave the route alone) but the
    address steps dropped the route - the kernel deletes every IPv4 route through a device that
    loses its last IPv4 address.
    """
    if change is None:
        return [('replace', g) for g in kept if g not in gateways]
    return plan_gateway(version, change, gateways)


def _route_text(op, gw, ifname):
    return ('set default route via %s on %s' if op == 'replace' else 'remove default route via %s from %s') \
        % (gw, ifname)


def _apply(link, add, remove, gateway4, gateway6, check_only, dad_wait):
    current = link.addresses()
    to_remove, to_add = plan_addresses(list(current), add, remove)
    after = [a for a in current if a not in to_remove] + to_add
    before_gw = {4: link.gateways(4), 6: link.gateways(6)}
    changes = {4: gateway4, 6: gateway6}
    current4 = [a for a in current if ':' not in a]
    flushed4 = bool(current4) and all(a in to_remove for a in current4)
    kept = {4: before_gw[4] if flushed4 else [], 6: []}
    predicted = {4: [] if flushed4 else before_gw[4], 6: before_gw[6]}
    routes = [(v, step) for v in (4, 6) for step in _route_steps(v, changes[v], predicted[v], kept[v])]
    promote = bool(to_remove) and _loses_secondaries(current, to_remove)

    texts = []
    if promote:
        texts.append('enable promote_secondaries on %s' % link.ifname)
    texts += ['remove %s from %s' % (a, link.ifname) for a in to_remove]
    texts += ['add %s to %s' % (a, link.ifname) for a in to_add]
    if check_only or not (texts or routes):
        return texts + [_route_text(op, gw, link.ifname) for _v, (op, gw) in routes]

    undo = []
    try:
        if promote:
            link.promote_secondaries()  # kept on rollback: it only ever keeps addresses alive
        for cidr in to_remove:
            if _step(link, 'remove %s' % cidr, link.remove, cidr):
                undo.append((link.add, cidr))
        for cidr in to_add:
            if _step(link, 'add %s' % cidr, link.add, cidr):
                undo.append((link.remove, cidr))
        # Routes are planned again against what the kernel has after the address steps.
        for version in (4, 6):
            for op, gw in _route_steps(version, changes[version], link.gateways(version), kept[version]):
                if op == 'replace':
                    _step(link, 'set default route via %s' % gw, link.set_default, gw, after)
                elif gw in link.gateways(version):
                    # a replace just before may have taken the old route's place already
                    _step(link, 'remove default route via %s' % gw, link.delete_default, gw)
                texts.append(_route_text(op, gw, link.ifname))
        texts = _wait_dad(link, to_add, texts, dad_wait)
    except VnetError:
        for func, *args in reversed(undo):
            try:
                func(*args)
            except (NetlinkError, VnetError, OSError):
                pass  # best effort: the error raised names the step that failed first
        for version in (4, 6):
            try:
                _restore_default(link, version, before_gw[version], list(current))
            except (NetlinkError, VnetError, OSError):
                pass
        raise
    return texts


def _step(link, action, func, *args):
    """Run one change; True when it was made, False when another actor made it meanwhile (the
    address is already gone, or already there with this prefix length): nothing to undo then."""
    try:
        func(*args)
        return True
    except NetlinkError as exc:
        code = getattr(exc, 'code', None)
        if action.startswith('remove ') and code == errno.EADDRNOTAVAIL:
            return False
        if action.startswith('add ') and code == errno.EEXIST and args and args[0] in link.addresses():
            return False
        raise link.fail(action, exc) from None


def _restore_default(link, version, old, addresses):
    for gw in link.gateways(version):
        if gw not in old:
            link.delete_default(gw)
    for gw in old:
        if gw not in link.gateways(version):
            link.set_default(gw, addresses)


def _wait_dad(link, added, texts, dad_wait):
    """Wait for duplicate address detection of the IPv6 addresses in ``added``."""
    pending = [a for a in added if ipaddress.ip_interface(a).version == 6]
    deadline = time.monotonic() + dad_wait
    while pending:
        flags = link.addresses()
        failed = [a for a in pending if flags.get(a, 0) & IFA_F_DADFAILED]
        if failed:
            raise VnetError('VE pid %d, interface %s: address %s failed duplicate address detection '
                            '(another node on the link uses it)' % (link.pid, link.ifname, ', '.join(failed)))
        pending = [a for a in pending if flags.get(a, 0) & IFA_F_TENTATIVE]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(DAD_POLL_SECONDS)
    for cidr in pending:
        text = 'add %s to %s' % (cidr, link.ifname)
        texts = [t + ' (duplicate address detection still running)' if t == text else t for t in texts]
    return texts


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

def _stats(link):
    stats = link.get_attr('IFLA_STATS64') or link.get_attr('IFLA_STATS') or {}
    # The host side receives what the VE sends: swap, so that the figures are the VE's own view.
    return {
        'rx_bytes': stats.get('tx_bytes', 0),
        'tx_bytes': stats.get('rx_bytes', 0),
        'rx_packets': stats.get('tx_packets', 0),
        'tx_packets': stats.get('rx_packets', 0),
        'state': (link.get_attr('IFLA_OPERSTATE') or 'unknown').lower(),
    }


def link_stats(host_link, ipr=None):
    """Counters of a VE's interface read on its host side ``host_link``, **as the VE counts
    them**: ``tx_bytes``/``tx_packets`` = what the VE sent, ``rx_bytes``/``rx_packets`` = what it
    received, ``state`` = operstate of the host side. None when the link does not exist (VE
    stopped). ``ipr``: an open host ``IPRoute`` to reuse (not closed here)."""
    _validate.ifname(host_link, 'host link name')
    own = ipr is None
    if own:
        ipr = _host_socket()
    try:
        index = _link_index(ipr, host_link)
        if index is None:
            return None
        links = ipr.get_links(index)
        return _stats(links[0]) if links else None
    except NetlinkError as exc:
        if getattr(exc, 'code', None) == errno.ENODEV:
            return None
        raise VnetError('could not read the counters of host link %s: %s' % (host_link, _netlink_text(exc))) from None
    finally:
        if own:
            ipr.close()


def host_routes(host_link, add=(), remove=()):
    """Add/remove host routes (/32 for IPv4, /128 for IPv6; addresses with or without a prefix
    length) that send a routed VE's addresses to its host link ``host_link``. Idempotent; returns
    the actions. A route of the same address through another link is an error (that address is
    another VE's). On failure the routes already added are removed again."""
    _validate.ifname(host_link, 'host link name')
    wanted = [_host_ip(a) for a in add or ()]
    unwanted = [_host_ip(a) for a in remove or ()]
    ipr = _host_socket()
    try:
        index = _link_index(ipr, host_link)
        if index is None:
            raise VnetError('host link %s does not exist (is the VE running?)' % host_link)
        actions, done = [], []
        try:
            for ip in unwanted:
                oif = _host_route_oif(ipr, ip)
                if oif == index:
                    ipr.route('del', **_host_route_args(ip, index, delete=True))
                    actions.append('remove route %s/%d dev %s' % (ip, ip.max_prefixlen, host_link))
            for ip in wanted:
                oif = _host_route_oif(ipr, ip)
                if oif == index:
                    continue
                if oif is not None:
                    other = ipr.get_links(oif)[0].get_attr('IFLA_IFNAME')
                    raise VnetError('host route %s/%d already goes to %s, not to %s (is the address another VE\'s?)'
                                    % (ip, ip.max_prefixlen, other, host_link))
                ipr.route('add', **_host_route_args(ip, index))
                done.append(ip)
                actions.append('add route %s/%d dev %s' % (ip, ip.max_prefixlen, host_link))
        except NetlinkError as exc:
            for ip in done:
                try:
                    ipr.route('del', **_host_route_args(ip, index, delete=True))
                except NetlinkError:
                    pass
            raise VnetError('host link %s: could not change the route of %s: %s'
                            % (host_link, ip, _netlink_text(exc))) from None
        return actions
    finally:
        ipr.close()


def _host_ip(value):
    """The address of a host route: ``10.20.0.5``, ``10.20.0.5/32`` or the VE's ``10.20.0.5/24``."""
    text = str(value).strip()
    return parse_interface(text if '/' in text else '%s/%d' % (text, 128 if ':' in text else 32),
                           'host route address').ip


def _host_route_args(ip, index, delete=False):
    """Netlink arguments of the host route of ``ip`` through link ``index``. A deletion names no
    protocol and the scope "nowhere" (any), like ``ip route del``: otherwise the kernel spares a
    route of another protocol or scope, such as the one LXC's router mode made at start."""
    args = {'family': socket.AF_INET if ip.version == 4 else socket.AF_INET6, 'dst': str(ip),
            'dst_len': ip.max_prefixlen, 'oif': index, 'table': RT_TABLE_MAIN}
    if delete:
        args['scope'] = RT_SCOPE_NOWHERE
    else:
        args.update(proto=RTPROT_STATIC, scope=RT_SCOPE_LINK)
    return args


def _host_route_oif(ipr, ip):
    """The output link of the main table's host route exactly for ``ip``, or None."""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    # A dump filtered here: get_routes(dst=...) would be a route lookup ("ip route get"), which
    # answers for any covering route.
    for msg in ipr.get_routes(family=family, table=RT_TABLE_MAIN):
        dst = msg.get_attr('RTA_DST')
        if msg['dst_len'] == ip.max_prefixlen and dst and ipaddress.ip_address(dst) == ip:
            return msg.get_attr('RTA_OIF')
    return None


# ---------------------------------------------------------------------------------------------
# ve_info
# ---------------------------------------------------------------------------------------------

def describe_interfaces(network, pid=None):
    """The ``interfaces`` entries of ``ve_info`` for the VE's configured ``network`` (ve.json
    list): the configuration, plus for a running VE (``pid``) ``live`` (what the VE has: hwaddr,
    mtu, state, addresses) and ``counters`` (``link_stats`` of the host link). Both are None for
    a stopped VE, or when the interface or host link is missing."""
    live, stats = {}, {}
    if pid and network:
        try:
            for entry in ve_interfaces(pid):
                live[entry['name']] = entry
            ipr = _host_socket()
            try:
                for iface in network:
                    if iface.get('host_link'):
                        stats[iface['host_link']] = link_stats(iface['host_link'], ipr=ipr)
            finally:
                ipr.close()
        except VzError:
            # The VE stopped since it was listed (its namespace is gone): report it as stopped.
            live, stats = {}, {}
    result = []
    for iface in network or []:
        seen = live.get(iface.get('name'))
        if seen is not None:
            seen = {k: seen[k] for k in ('hwaddr', 'mtu', 'state', 'ipv4', 'ipv6', 'ipv6_tentative',
                                         'ipv6_dadfailed')}
        result.append({
            'name': iface.get('name'),
            'mode': iface.get('mode') or 'bridged',
            'bridge': iface.get('bridge'),
            'hwaddr': iface.get('hwaddr'),
            'host_link': iface.get('host_link'),
            'mtu': iface.get('mtu'),
            'ipv4': list(iface.get('ipv4') or []),
            'ipv6': list(iface.get('ipv6') or []),
            'gateway4': iface.get('gateway4'),
            'gateway6': iface.get('gateway6'),
            'live': seen,
            'counters': stats.get(iface.get('host_link')),
        })
    return result
