# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Announce a VE's addresses on its L2 segment: gratuitous ARP and unsolicited IPv6 neighbour
advertisements, sent from inside the VE's network namespace.

PRIVATE: this file is internal to the osvirt.vz collection. Its functions may change or
disappear in any release; do not import them from outside the collection.

Why: after a VE moved to another host of the same L2 segment (a migration, or an evacuation
and restore), the segment's bridges still send its MAC to the old host's port, and neighbours
may hold a neighbour entry with an old MAC, until the VE happens to send something or the
entries age out (300 s for a Linux bridge's forwarding database). One broadcast frame from the
VE's new place fixes both at once: every bridge on the way learns the MAC's new port, and every
neighbour that has an entry for the address takes the MAC of the frame.

- IPv4: a gratuitous ARP *request* (RFC 5227 "ARP announcement": sender and target IP both the
  address, target MAC zero, to the broadcast MAC). Linux overrides an existing entry with it even
  within ``locktime`` (``arp_is_garp``), and does not create entries from it (``arp_accept=0``).
- IPv6: an unsolicited neighbour advertisement (RFC 4861 7.2.6) to all-nodes ``ff02::1``, hop
  limit 255, flags Override only (not Solicited, not Router), with the target link-layer address.
  Neighbours with an entry take the new MAC and mark it STALE (then confirm it by a probe).

Both pass the host-side anti-spoofing guard (``_antispoof.rules``): the source MAC and ARP sender
MAC are the interface's own (read from the kernel, not given), the ARP sender IP and the NA's
IPv6 source and target are the VE's own addresses, which the caller takes from ve.json, the
same list the guard allows. An address that is not the VE's is dropped by the guard on the host
side, silently for the VE; so pass the addresses of ve.json, not the kernel's view.

The frames leave through an ``AF_PACKET`` socket created while this thread is inside the VE's
network namespace (``_vnet._inside``: a socket belongs to the namespace it was created in), bound
to the VE's interface, so they are the VE's own frames and cross its veth like anything it
sends. Standard library only; needs root (``CAP_NET_RAW`` in the VE's namespace).

Public: ``announce(pid, ifname, addresses, count, interval, check_only)``; the frame builders
``arp_announcement(hwaddr, address)`` and ``neighbour_advertisement(hwaddr, address)`` are pure.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import time

from ._vnet import VnetError, _inside

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
IPPROTO_ICMPV6 = 58
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LINKADDR = 2
NA_FLAG_OVERRIDE = 0x20000000
BROADCAST_MAC = b'\xff' * 6
ALL_NODES = ipaddress.IPv6Address('ff02::1')
# Ethernet frames are at least 60 bytes before the FCS; pad shorter ones as a NIC would.
MIN_FRAME = 60
# RFC 5227 sends two announcements; we space them shortly, so a migration waits 0.1 s, not 2 s.
DEFAULT_COUNT = 2
DEFAULT_INTERVAL = 0.1
MAX_COUNT = 10

_MAC_RE = re.compile(r'^[0-9a-f]{2}(:[0-9a-f]{2}){5}$')


class AnnounceError(VnetError):
    """Bad input to an announcement, or the VE's interface could not send it."""


def _mac_bytes(hwaddr):
    mac = hwaddr.lower() if isinstance(hwaddr, str) else hwaddr
    if not isinstance(mac, str) or not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
        raise AnnounceError('hwaddr %r is not a unicast MAC like 02:16:3e:12:34:56' % (hwaddr,))
    return bytes(int(part, 16) for part in mac.split(':'))


def _mac_text(raw):
    return ':'.join('%02x' % b for b in raw)


def parse_addresses(addresses):
    """Distinct ``ipaddress`` addresses of ``addresses`` (CIDR strings as in ve.json, or bare
    addresses), in the order given; ``AnnounceError`` for anything that cannot be a VE's address."""
    if isinstance(addresses, str) or not isinstance(addresses, (list, tuple)):
        raise AnnounceError('addresses to announce must be a list, not %r' % (addresses,))
    result = []
    for value in addresses:
        try:
            address = ipaddress.ip_interface(str(value).strip()).ip
        except ValueError:
            raise AnnounceError('%r is not an IP address to announce' % (value,)) from None
        if address.is_unspecified or address.is_multicast or address.is_loopback:
            raise AnnounceError('%s cannot be announced: it is not a unicast address of a VE' % address)
        if address.version == 4 and address == ipaddress.IPv4Address('255.255.255.255'):
            raise AnnounceError('%s cannot be announced: it is not a unicast address of a VE' % address)
        if address not in result:
            result.append(address)
    return result


def _pad(frame):
    return frame + bytes(max(0, MIN_FRAME - len(frame)))


def arp_announcement(hwaddr, address):
    """The Ethernet frame of a gratuitous ARP request for IPv4 ``address`` from ``hwaddr`` (pure).

    To the broadcast MAC; ARP request with sender = target = ``address``, target MAC zero.
    """
    mac = _mac_bytes(hwaddr)
    ip = ipaddress.IPv4Address(str(address)).packed
    arp = struct.pack('!HHBBH6s4s6s4s', ARPHRD_ETHER, ETH_P_IP, 6, 4, ARPOP_REQUEST, mac, ip, bytes(6), ip)
    return _pad(BROADCAST_MAC + mac + struct.pack('!H', ETH_P_ARP) + arp)


def _checksum(data):
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


def neighbour_advertisement(hwaddr, address):
    """The Ethernet frame of an unsolicited neighbour advertisement of IPv6 ``address`` (pure).

    From ``address`` to ``ff02::1`` (MAC 33:33:00:00:00:01), hop limit 255, Override flag, target
    ``address`` and a target link-layer address option with ``hwaddr``.
    """
    mac = _mac_bytes(hwaddr)
    source = ipaddress.IPv6Address(str(address))
    body = struct.pack('!I16sBB6s', NA_FLAG_OVERRIDE, source.packed, ND_OPT_TARGET_LINKADDR, 1, mac)
    pseudo = source.packed + ALL_NODES.packed + struct.pack('!I3xB', 4 + len(body), IPPROTO_ICMPV6)
    checksum = _checksum(pseudo + struct.pack('!BBH', ND_NEIGHBOR_ADVERT, 0, 0) + body)
    icmp = struct.pack('!BBH', ND_NEIGHBOR_ADVERT, 0, checksum) + body
    ipv6 = struct.pack('!IHBB16s16s', 6 << 28, len(icmp), IPPROTO_ICMPV6, 255, source.packed, ALL_NODES.packed)
    dst_mac = b'\x33\x33' + ALL_NODES.packed[-4:]
    return dst_mac + mac + struct.pack('!H', ETH_P_IPV6) + ipv6 + icmp


def frame_for(hwaddr, address):
    """The announcement of ``address`` (either family) from ``hwaddr`` (pure)."""
    address = ipaddress.ip_address(str(address))
    if address.version == 4:
        return arp_announcement(hwaddr, address)
    return neighbour_advertisement(hwaddr, address)


def _action(address, ifname, hwaddr, count):
    what = 'gratuitous ARP' if address.version == 4 else 'unsolicited neighbour advertisement'
    return 'announce %s on %s from %s (%s x%d)' % (address, ifname, hwaddr, what, count)


def announce(pid, ifname, addresses, count=DEFAULT_COUNT, interval=DEFAULT_INTERVAL, check_only=False):
    """Announce ``addresses`` of the VE whose init is ``pid`` on its interface ``ifname``.

    Each address gets ``count`` frames (gratuitous ARP for IPv4, an unsolicited neighbour
    advertisement for IPv6), one round of all addresses every ``interval`` seconds, sent from
    inside the VE's network namespace with the interface's own MAC. ``addresses`` are CIDR
    strings or bare addresses, e.g. the ``ipv4`` + ``ipv6`` lists of the interface in ve.json.
    Call it when the VE runs at its new place with its addresses up; an IPv6 address still in
    duplicate address detection is announced all the same (the old copy of a moved VE is stopped).

    Returns the actions (strings like ``announce 10.20.0.5 on eth0 from 02:..:.. (gratuitous
    ARP x2)``); with ``check_only`` nothing is sent and the MAC is the one the interface has now.
    Raises ``AnnounceError`` (a ``VnetError``) naming the VE's pid and interface when the input is
    bad, the interface does not exist or is down, or sending fails.
    """
    wanted = parse_addresses(addresses)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise AnnounceError('count of announcements must be 1..%d, not %r' % (MAX_COUNT, count))
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= 10:
        raise AnnounceError('interval between announcements must be 0..10 seconds, not %r' % (interval,))
    if not isinstance(ifname, str) or not re.match(r'^[A-Za-z0-9_.@-]{1,15}$', ifname):
        raise AnnounceError('interface name %r is not valid' % (ifname,))
    where = 'VE pid %s, interface %s' % (pid, ifname)
    with _inside(pid):
        # created here, the socket belongs to the VE's namespace for its whole life
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise AnnounceError('%s: cannot open a packet socket: %s' % (where, exc.strerror)) from None
    with sock:
        try:
            sock.bind((ifname, 0))
        except OSError as exc:
            raise AnnounceError('%s: no such interface in the VE (%s)' % (where, exc.strerror)) from None
        hwaddr = _mac_text(sock.getsockname()[4])
        frames = [(address, frame_for(hwaddr, address)) for address in wanted]
        actions = [_action(address, ifname, hwaddr, count) for address, _frame in frames]
        if check_only:
            return actions
        for round_ in range(count):
            if round_:
                time.sleep(interval)
            for address, frame in frames:
                try:
                    sock.send(frame)
                except OSError as exc:
                    raise AnnounceError('%s: could not announce %s: %s (errno %d)'
                                        % (where, address, exc.strerror, exc.errno)) from None
    return actions
