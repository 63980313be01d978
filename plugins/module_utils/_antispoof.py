# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Anti-spoofing of VEs: what a VE sends must carry its own MAC and its own addresses.

PRIVATE: this file is internal to the osvirt.vz collection. Its functions may change or
disappear in any release; do not import them from outside the collection.

Everything a VE sends arrives on the host as ingress of the host side of its veth
(``host_link`` in ve.json). Each VE link gets one nftables base chain in the netdev family,
hooked on that ingress before anything else on the host sees the frame (bridge, routing,
tc shaping's re-injection)::

    table netdev osvirt_vz_guard
      chain ve_<host_link>   type filter hook ingress device "<host_link>" priority -500

so one mechanism covers bridged and routed interfaces alike, lives in the host's network
namespace where root inside the VE cannot reach it, and is replaced in one transaction
(``_nft.replace_chain``). The rules (``rules``, pure) drop, each with a counter and a comment
that names the reason:

- frames whose source MAC is not the VE's hwaddr, and every EtherType but ARP, IPv4 and
  IPv6 (VLAN tags, STP, anything else that could reach other ports of a bridge);
- ARP that is not Ethernet/IPv4, not a request or reply, whose sender MAC is not the hwaddr or
  whose sender IP is not one of the VE's IPv4 addresses (0.0.0.0 only in RFC 5227 probes), so
  a VE can neither send from nor answer ARP for an address it was not given; a VE without
  IPv4 addresses sends no ARP and no IPv4 at all;
- IPv4 from a source not in the VE's list;
- IPv6 from a source that is not one of its addresses, its EUI-64 link-local address (derived
  from the hwaddr, as the kernel makes it) or the unspecified address (DAD and MLD only);
- neighbour advertisements whose target is not one of those addresses (a raw match of the
  ND target field against a set, as nftables 1.0 has no expression for it);
- router advertisements and ICMP/ICMPv6 redirects, and DHCP/DHCPv6 server or relay traffic
  (UDP source port 67 or 547).

This file imports nothing else of the collection when loaded on its own: the host role
installs it as osvirt_vz_antispoof.py next to the LXC hook, with _nft.py as osvirt_vz_nft.py,
and the hook applies the filter every time a VE starts (docs/net-security.md).
"""

from __future__ import annotations

import ipaddress
import re

try:
    from . import _nft
except ImportError:  # loaded as a plain module, outside the collection
    try:
        import osvirt_vz_nft as _nft  # type: ignore[no-redef]   # the LXC hook's copies
    except ImportError:
        import _nft  # type: ignore[no-redef]   # plugins/module_utils on sys.path (bench/)

# the collection's error class, or _nft's stand-in where this file is loaded on its own
VzError = _nft.VzError


FAMILY = 'netdev'
TABLE = 'osvirt_vz_guard'
CHAIN_PREFIX = 've_'
# Lower runs first; -500 puts the filter ahead of any other netdev ingress chain of the host.
PRIORITY = -500
# Interface names are at most 15 bytes; ours (vz + hex + index) use only these characters, the
# only ones that can also form the chain name.
_LINK_RE = re.compile(r'^[A-Za-z0-9_]{1,15}$')
_MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')
# ARP header up to the sender MAC: hardware type Ethernet (1), protocol IPv4 (0x0800), hardware
# address length 6, protocol address length 4.
ARP_ETHER_IPV4 = '0x000108000604'
DHCP_SERVER_PORTS = (67, 547)


class AntispoofError(VzError):
    """Bad filter input or a filter nft refused; the message says which and why."""


def check_link(host_link):
    """Return ``host_link`` if it can name a VE link and its chain; raise ``AntispoofError``."""
    if not isinstance(host_link, str) or not _LINK_RE.match(host_link):
        raise AntispoofError('anti-spoofing: host link %r must be 1-15 letters, digits or _' % (host_link,))
    return host_link


def chain_name(host_link):
    """Name of the chain that guards ``host_link``."""
    return CHAIN_PREFIX + check_link(host_link)


def chain_header(host_link):
    """Declaration of the base chain on the ingress of ``host_link`` (part of the digest)."""
    return 'type filter hook ingress device "%s" priority %d; policy accept;' % (check_link(host_link), PRIORITY)


def _mac(hwaddr):
    mac = hwaddr.lower() if isinstance(hwaddr, str) else hwaddr
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        raise AntispoofError('anti-spoofing: hwaddr %r is not six hex pairs like 02:16:3e:12:34:56' % (hwaddr,))
    if int(mac[:2], 16) & 1:
        raise AntispoofError('anti-spoofing: hwaddr %s is a multicast address' % mac)
    return mac


def link_local(hwaddr):
    """The EUI-64 link-local IPv6 address the kernel gives an interface with ``hwaddr``."""
    octets = [int(part, 16) for part in _mac(hwaddr).split(':')]
    eui = [octets[0] ^ 0x02] + octets[1:3] + [0xff, 0xfe] + octets[3:]
    return ipaddress.IPv6Address(b'\xfe\x80' + bytes(6) + bytes(eui))


def _addresses(values, version):
    """Sorted, distinct addresses of a ve.json list of CIDR strings (a bare address is fine too)."""
    if values is None:
        values = []
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise AntispoofError('anti-spoofing: ipv%d must be a list of addresses, not %r' % (version, values))
    found = set()
    for value in values:
        try:
            address = ipaddress.ip_interface(value).ip
        except (TypeError, ValueError):
            raise AntispoofError('anti-spoofing: %r is not an IPv%d address' % (value, version)) from None
        if address.version != version:
            raise AntispoofError('anti-spoofing: %s is not an IPv%d address' % (value, version))
        if address.is_unspecified or address.is_multicast or address.is_loopback:
            raise AntispoofError('anti-spoofing: %s cannot be the address of a VE' % value)
        found.add(address)
    return sorted(found)


def _set(items):
    return '{ %s }' % ', '.join(str(item) for item in items)


def _drop(reason):
    return 'counter drop comment "%s"' % reason


def rules(hwaddr, ipv4, ipv6):
    """The rules of a VE link's chain, in order, for a VE with ``hwaddr`` and the ``ipv4`` and
    ``ipv6`` address lists of ve.json (pure). Every rule drops; what none drops passes."""
    mac = _mac(hwaddr)
    v4 = _addresses(ipv4, 4)
    v6 = _addresses(ipv6, 6)
    result = [
        'ether saddr != %s %s' % (mac, _drop('source MAC is not the VE hwaddr')),
        # ether type sees a VLAN tag even when the veth carries it outside the frame
        'ether type != { arp, ip, ip6 } %s' % _drop('EtherType is not ARP, IPv4 or IPv6'),
    ]
    if v4:
        result += [
            'ether type arp @nh,0,48 != %s %s' % (ARP_ETHER_IPV4, _drop('ARP is not Ethernet/IPv4')),
            'arp operation != { request, reply } %s' % _drop('ARP is not a request or reply'),
            'arp saddr ether != %s %s' % (mac, _drop('ARP sender MAC is not the VE hwaddr')),
            'arp saddr ip != %s %s' % (_set(['0.0.0.0'] + v4), _drop('ARP sender IP is not a VE address')),
            # RFC 5227 probes ask from 0.0.0.0; nothing else may use it
            'arp saddr ip 0.0.0.0 arp operation != request %s' % _drop('ARP reply from 0.0.0.0'),
            'ip saddr != %s %s' % (_set(v4), _drop('IPv4 source is not a VE address')),
            'icmp type redirect %s' % _drop('ICMP redirect'),
        ]
    else:
        result.append('ether type { arp, ip } %s' % _drop('VE has no IPv4 address'))
    own6 = sorted(set(v6) | {link_local(mac)})
    result += [
        'ip6 saddr != %s %s' % (_set(['::'] + own6), _drop('IPv6 source is not a VE address')),
        # the unspecified source is for duplicate address detection and MLD reports (ICMPv6)
        'ip6 saddr :: meta l4proto != ipv6-icmp %s' % _drop('IPv6 from :: is not ICMPv6'),
        'icmpv6 type { nd-router-advert, nd-redirect } %s' % _drop('router advertisement or redirect'),
        # the target of a neighbour advertisement: 16 bytes after type, code, checksum, flags
        # (an anonymous set of raw 128-bit values: one hashed lookup, however many addresses)
        'icmpv6 type nd-neighbor-advert @th,64,128 != %s %s' % (
            _set('0x%032x' % int(address) for address in own6),
            _drop('neighbour advertisement target is not a VE address')),
        'udp sport { %s } %s' % (', '.join(str(port) for port in DHCP_SERVER_PORTS),
                                 _drop('DHCP or DHCPv6 server traffic')),
    ]
    return result


def _nft_error(host_link, exc):
    return AntispoofError('anti-spoofing filter of %s: %s' % (host_link, exc.message), host_link=host_link)


def ensure_filter(host_link, hwaddr, ipv4, ipv6, check_only=False):
    """Make the chain of ``host_link`` hold exactly ``rules(hwaddr, ipv4, ipv6)``; return True if
    it changed (in check mode: if it would). One nft transaction: the old rules stay in force
    until the new ones are in. The device need not exist (the chain hooks it when it appears)."""
    chain = chain_name(host_link)
    want = rules(hwaddr, ipv4, ipv6)
    try:
        return _nft.replace_chain(FAMILY, TABLE, chain, chain_header(host_link), want, check_only=check_only)
    except _nft.NftError as exc:
        raise _nft_error(host_link, exc) from None


# Routed links (LXC's veth router mode): the VE's default routes go via these addresses, which the
# host side of its link answers by proxy ARP / proxy NDP.
ROUTED_GATEWAY4 = '169.254.0.1'
ROUTED_GATEWAY6 = 'fe80::1'
_NTF_PROXY = 0x08


def answer_gateways(host_link, ipv4=True, ipv6=False):
    """Make the host side of a routed link answer for the VE's gateways (proxy neighbour entries).

    LXC's router mode adds these entries when it starts the VE, but in about one start of three
    under load on the developers' machine the IPv4 entry was missing right after a successful start
    (``ip neigh show proxy dev <link>`` empty, the VE's ARP for 169.254.0.1 INCOMPLETE). It sits
    here, next to the filter, because both are set on the host side of a VE link at every start, by
    the LXC hook (before the VE's init runs, lxc-autostart included) and by osvirt.vz.ve after a
    start. Idempotent; a link that does not exist is left alone. Returns the gateways answered.
    """
    import socket  # pylint: disable=import-outside-toplevel
    try:
        from pyroute2 import IPRoute  # pylint: disable=import-outside-toplevel
        from pyroute2.netlink.exceptions import NetlinkError  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise AntispoofError('routed link %s: python3-pyroute2 is needed to answer for its gateways' % host_link,
                             host_link=host_link) from None
    wanted = [(ROUTED_GATEWAY4, socket.AF_INET)] if ipv4 else []
    wanted += [(ROUTED_GATEWAY6, socket.AF_INET6)] if ipv6 else []
    done = []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=check_link(host_link))
        if not found:
            return done
        for gateway, family in wanted:
            try:
                ipr.neigh('replace', dst=gateway, ifindex=found[0], flags=_NTF_PROXY, family=family)
            except NetlinkError as exc:
                raise AntispoofError('routed link %s: cannot answer for the gateway %s (proxy neighbour): %s'
                                     % (host_link, gateway, exc), host_link=host_link) from None
            done.append(gateway)
    return done


def remove_filter(host_link, check_only=False):
    """Remove the chain of ``host_link``; True if there was one (the table stays, see _nft)."""
    try:
        return _nft.delete_chain(FAMILY, TABLE, chain_name(host_link), check_only=check_only)
    except _nft.NftError as exc:
        raise _nft_error(host_link, exc) from None


def read_filter(host_link):
    """What guards ``host_link`` now::

        {"active": bool,           # our chain exists (it applies whenever the link exists)
         "digest": str or None,    # digest of its header and rules (see _nft.digest)
         "packets": int,           # frames the VE sent through it
         "dropped": {reason: packets}}   # per drop rule that dropped something
    """
    chain = chain_name(host_link)
    try:
        objects = _nft.list_table(FAMILY, TABLE) or []
    except _nft.NftError as exc:
        raise _nft_error(host_link, exc) from None
    active = any(obj.get('chain', {}).get('name') == chain for obj in objects)
    digest, packets, dropped = None, 0, {}
    for obj in objects:
        rule = obj.get('rule')
        if not rule or rule.get('chain') != chain:
            continue
        exprs = rule.get('expr') or []
        count = next((e['counter'].get('packets', 0) for e in exprs if isinstance(e, dict) and 'counter' in e), 0)
        comment = rule.get('comment') or ''
        if digest is None and comment.startswith(_nft.COMMENT_PREFIX):
            digest, packets = comment[len(_nft.COMMENT_PREFIX):], count
        elif any(isinstance(e, dict) and 'drop' in e for e in exprs) and count:
            dropped[comment] = dropped.get(comment, 0) + count
    return {'active': active, 'digest': digest, 'packets': packets, 'dropped': dropped}


def expected_digest(host_link, hwaddr, ipv4, ipv6):
    """The digest ``read_filter`` reports once ``ensure_filter`` applied these arguments (pure)."""
    return _nft.digest(chain_header(host_link), rules(hwaddr, ipv4, ipv6))
