# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for the frames of plugins/module_utils/_announce.py: the gratuitous ARP and the
unsolicited neighbour advertisement, byte for byte, and the checks of ``announce``'s input. The
sending runs from a real VE in tests/integration/test_lan_lab.py."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _announce

MAC = "02:16:3e:aa:bb:cc"


def test_gratuitous_arp_bytes():
    frame = _announce.arp_announcement(MAC, "10.20.0.37")
    want = (bytes.fromhex("ffffffffffff 02163eaabbcc 0806")     # broadcast, from the VE, ARP
            + bytes.fromhex("0001 0800 06 04 0001")           # Ethernet/IPv4, request
            + bytes.fromhex("02163eaabbcc 0a140025")          # sender: the VE's MAC and address
            + bytes.fromhex("000000000000 0a140025")          # target: zero MAC, the same address
            + bytes(18))                                       # padded to 60 bytes
    assert frame == want
    assert len(frame) == 60


def _ones_complement_sum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return total


def test_neighbour_advertisement_bytes():
    frame = _announce.neighbour_advertisement(MAC.upper(), "fd00:20::25")
    target = ipaddress.IPv6Address("fd00:20::25").packed
    all_nodes = ipaddress.IPv6Address("ff02::1").packed
    assert frame[:14] == bytes.fromhex("333300000001 02163eaabbcc 86dd")
    # IPv6 header: version 6, payload 32 bytes, ICMPv6, hop limit 255 (RFC 4861 requires it)
    assert frame[14:22] == bytes.fromhex("60000000 0020 3a ff")
    assert frame[22:38] == target and frame[38:54] == all_nodes
    icmp = frame[54:]
    assert len(icmp) == 32 and len(frame) == 86
    assert icmp[0:2] == bytes.fromhex("8800")               # type 136, code 0
    assert icmp[4:8] == bytes.fromhex("20000000")           # Override only: not Router, not Solicited
    assert icmp[8:24] == target
    assert icmp[24:32] == bytes.fromhex("0201 02163eaabbcc")   # target link-layer address option
    # the checksum makes the one's complement sum over the pseudo-header and message 0xffff
    pseudo = target + all_nodes + struct.pack("!I3xB", 32, 58)
    assert _ones_complement_sum(pseudo + icmp) == 0xffff
    assert icmp[2:4] == bytes.fromhex("5f87")


def test_frame_for_picks_the_family():
    assert _announce.frame_for(MAC, "10.20.0.5")[12:14] == b"\x08\x06"
    assert _announce.frame_for(MAC, "fd00:20::5")[12:14] == b"\x86\xdd"


def test_parse_addresses_takes_ve_json_lists():
    got = _announce.parse_addresses(["10.20.0.5/24", "10.20.0.5", "fd00:20::5/64"])
    assert got == [ipaddress.ip_address("10.20.0.5"), ipaddress.ip_address("fd00:20::5")]


@pytest.mark.parametrize("addresses, message", [
    ("10.20.0.5", "must be a list"),
    (["10.20.0.300"], "is not an IP address"),
    (["0.0.0.0"], "cannot be announced"),
    (["ff02::1"], "cannot be announced"),
    (["127.0.0.1"], "cannot be announced"),
    (["255.255.255.255"], "cannot be announced"),
])
def test_bad_addresses(addresses, message):
    with pytest.raises(_announce.AnnounceError, match=message):
        _announce.parse_addresses(addresses)


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "02:16:3e:aa:bb", "zz:16:3e:aa:bb:cc", None])
def test_bad_mac(mac):
    with pytest.raises(_announce.AnnounceError, match="unicast MAC"):
        _announce.arp_announcement(mac, "10.20.0.5")


@pytest.mark.parametrize("kwargs, message", [
    ({"count": 0}, "count of announcements"),
    ({"count": 11}, "count of announcements"),
    ({"count": True}, "count of announcements"),
    ({"interval": -1}, "interval between"),
    ({"ifname": "eth0; rm"}, "interface name"),
])
def test_bad_arguments_fail_before_entering_the_ve(kwargs, message):
    args = dict({"pid": 999999999, "ifname": "eth0", "addresses": ["10.20.0.5"]}, **kwargs)
    with pytest.raises(_announce.AnnounceError, match=message):
        _announce.announce(**args)


def test_a_pid_that_is_not_a_ve_is_refused():
    with pytest.raises(_announce.VnetError, match="invalid VE pid|cannot enter"):
        _announce.announce(1, "eth0", ["10.20.0.5"])
