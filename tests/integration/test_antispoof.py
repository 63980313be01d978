# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of the anti-spoofing filter (plugins/module_utils/_antispoof.py) and of the
LXC hook that applies it (roles/host/files/osvirt-vz-net-hook), without LXC: a "host" network
namespace with a bridge and two "VEs" (namespaces behind veths, as LXC makes them), all made
here with random names, so nothing of the machine's own network is touched.

    VE a (ns, eth0 10.99.N.2 fd00:99:N::2) --veth-- vzT a0 --+
                                                              br (10.99.N.1 fd00:99:N::1) in ns "host"
    VE b (ns, eth0 10.99.N.3 fd00:99:N::3) --veth-- vzT b0 --+

The filter lives in the host namespace: the installed copies of the code (osvirt_vz_*.py, as the
host role lays them out) run there with Debian's python3. Two kinds of proof: real traffic of
the VEs' own kernels (busybox ping, from an address given and from one added behind the host's
back), and hand-made frames sent from VE a with a packet socket while VE b listens on its eth0:
what the filter should stop never reaches b, what it should pass does, and the drop counter of
the rule that names the reason grows.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

# The VE store fixtures and helpers of the VE tests (busybox template, vz_root, cgroup parent).
from test_ve import BRIDGE, GATEWAY, bridge, ctx  # noqa: F401 pylint: disable=unused-import
import features  # noqa: E402  pylint: disable=wrong-import-position
from vzlib import ping, sh


REPO = Path(__file__).resolve().parents[2]
MODULE_UTILS = REPO / "plugins" / "module_utils"
HOOK = REPO / "roles" / "host" / "files" / "osvirt-vz-net-hook"
HOST_PYTHON = "/usr/bin/python3"
# where the host role puts each file, relative to the hook
INSTALLED = {"net-hook": HOOK, "osvirt_vz_antispoof.py": MODULE_UTILS / "_antispoof.py",
             "osvirt_vz_nft.py": MODULE_UTILS / "_nft.py", "osvirt_vz_shaping.py": MODULE_UTILS / "_shaping.py"}
BROADCAST = b"\xff" * 6

CALL = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import osvirt_vz_antispoof as antispoof
print(json.dumps(getattr(antispoof, sys.argv[2])(*json.loads(sys.argv[3]))))
"""

SNIFFER = r"""
import json, select, socket, sys, time
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sock.bind((sys.argv[1], 0))
print("ready", flush=True)
end, frames = time.monotonic() + float(sys.argv[2]), []
while True:
    left = end - time.monotonic()
    if left <= 0 or not select.select([sock], [], [], left)[0]:
        break
    data, addr = sock.recvfrom(65535)
    if addr[2] != socket.PACKET_OUTGOING:
        frames.append(data.hex())
print(json.dumps(frames))
"""

SENDER = r"""
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    sock.send(bytes.fromhex(frame))
"""


@pytest.fixture(autouse=True, scope="module")
def _kernel_features():
    """Anti-spoofing (an nftables netdev ingress chain per VE link) needs nft_netdev (features.py):
    a host without it cannot guard VE links, so these tests do not apply there."""
    missing = [features.why_not(name) for name in ('nft_netdev',) if not features.have(name)]
    if missing:
        pytest.skip("needs anti-spoofing (an nftables netdev ingress chain per VE link): " + "; ".join(missing))


class Lab:
    """The namespaces, bridge and veths of one test (see the module docstring)."""

    def __init__(self, libdir):
        self.libdir = libdir
        self.tag = secrets.token_hex(3)
        self.net = 100 + secrets.randbelow(100)
        self.host = "vzas-h-" + self.tag
        self.ns = {"a": "vzas-a-" + self.tag, "b": "vzas-b-" + self.tag}
        self.bridge = "vzasbr" + self.tag
        self.link = {ve: "vz%s%s0" % (self.tag, ve) for ve in self.ns}
        self.mac = {"a": "02:99:%s:0a" % ":".join(self.tag[i:i + 2] for i in (0, 2, 4)),
                    "b": "02:99:%s:0b" % ":".join(self.tag[i:i + 2] for i in (0, 2, 4))}
        self.ip4 = {"host": "10.99.%d.1" % self.net, "a": "10.99.%d.2" % self.net, "b": "10.99.%d.3" % self.net}
        self.ip6 = {"host": "fd00:99:%d::1" % self.net, "a": "fd00:99:%d::2" % self.net,
                    "b": "fd00:99:%d::3" % self.net}

    # -- plumbing
    def in_ns(self, ns, *argv, **kwargs):
        return sh("ip", "netns", "exec", ns, *argv, **kwargs)

    def up(self):
        sh("ip", "netns", "add", self.host)
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
        self.in_ns(self.host, "ip", "link", "set", "lo", "up")
        self.in_ns(self.host, "ip", "link", "add", self.bridge, "type", "bridge")
        self.in_ns(self.host, "ip", "addr", "add", self.ip4["host"] + "/24", "dev", self.bridge)
        self.in_ns(self.host, "ip", "addr", "add", self.ip6["host"] + "/64", "dev", self.bridge, "nodad")
        self.in_ns(self.host, "ip", "link", "set", self.bridge, "up")
        for ve, ns in self.ns.items():
            self.in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            self.in_ns(ns, "ip", "link", "set", "lo", "up")
            self.plug(ve)
            self.in_ns(ns, "ip", "addr", "add", self.ip4[ve] + "/24", "dev", "eth0")
            self.in_ns(ns, "ip", "addr", "add", self.ip6[ve] + "/64", "dev", "eth0", "nodad")

    def plug(self, ve):
        """Make VE ``ve``'s veth (again): host side on the bridge, eth0 with its MAC in its namespace."""
        self.in_ns(self.host, "ip", "link", "add", self.link[ve], "type", "veth", "peer", "name", "eth0",
                   "netns", self.ns[ve])
        self.in_ns(self.ns[ve], "ip", "link", "set", "eth0", "address", self.mac[ve])
        self.in_ns(self.host, "ip", "link", "set", self.link[ve], "master", self.bridge, "up")
        self.in_ns(self.ns[ve], "ip", "link", "set", "eth0", "up")

    def down(self):
        for ns in [self.host] + list(self.ns.values()):
            sh("ip", "netns", "del", ns, check=False)

    # -- the filter, run where it lives
    def antispoof(self, func, *args):
        out = self.in_ns(self.host, HOST_PYTHON, "-c", CALL, self.libdir, func, json.dumps(list(args))).stdout
        return json.loads(out)

    def ensure(self, ve, ipv4=None, ipv6=None):
        return self.antispoof("ensure_filter", self.link[ve], self.mac[ve],
                              [self.ip4[ve] + "/24"] if ipv4 is None else ipv4,
                              [self.ip6[ve] + "/64"] if ipv6 is None else ipv6)

    def dropped(self, ve):
        return self.antispoof("read_filter", self.link[ve])["dropped"]

    # -- traffic
    def ping(self, ve, dest, source=None, count=1):
        """True when ``dest`` answers one of ``count`` echo requests from VE ``ve``."""
        argv = ["busybox", "ping", "-c", str(count), "-W", "1"]
        if ":" in dest:
            argv.append("-6")
        if source:
            argv += ["-I", source]
        return self.in_ns(self.ns[ve], *argv, dest, check=False).returncode == 0

    def wait_ping(self, ve, dest, source=None):
        for _attempt in range(10):
            if self.ping(ve, dest, source):
                return True
            time.sleep(0.3)
        return False

    def heard_by_b(self, frames):
        """Send ``frames`` ({marker key: frame}) from VE a's eth0; the keys of those VE b's eth0 received."""
        sniffer = subprocess.Popen(["ip", "netns", "exec", self.ns["b"], HOST_PYTHON, "-c", SNIFFER, "eth0", "2.5"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            assert sniffer.stdout.readline().strip() == "ready"
            self.in_ns(self.ns["a"], HOST_PYTHON, "-c", SENDER, "eth0", *[f.hex() for f in frames.values()])
            received = json.loads(sniffer.communicate(timeout=30)[0])
        finally:
            if sniffer.poll() is None:
                sniffer.kill()
                sniffer.wait()
        return {key for key in frames if any(marker(key).hex() in got for got in received)}


# -- hand-made frames ----------------------------------------------------------------------------
def marker(name):
    """Six bytes that identify a test frame wherever it lands."""
    return b"\x5a\xfe" + hashlib.sha256(name.encode()).digest()[:4]


def mac_bytes(mac):
    return bytes(int(part, 16) for part in mac.split(":"))


def ether(src, ethertype, payload, dst=BROADCAST):
    return dst + mac_bytes(src) + struct.pack("!H", ethertype) + payload


def arp(name, op, sender_mac, sender_ip, target_ip):
    """ARP for Ethernet/IPv4; the target hardware address carries the frame's marker."""
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac_bytes(sender_mac) + socket.inet_aton(sender_ip) \
        + marker(name) + socket.inet_aton(target_ip)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp4(name, src, dst, sport=40000, dport=40001):
    data = marker(name)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + udp


def ipv6(src, dst, next_header, payload):
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 255,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def udp6(name, src, dst, sport=40000, dport=40001):
    data = marker(name)
    return ipv6(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp6(name, src, dst, kind, target=None):
    """ICMPv6 type ``kind``; neighbour messages carry ``target``, then the marker."""
    body = struct.pack("!BBHI", kind, 0, 0, 0x60000000 if kind == 136 else 0)
    if target:
        body += ipaddress.IPv6Address(target).packed
    return ipv6(src, dst, 58, body + marker(name))


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    """The hook and the code it imports, laid out as the host role installs them."""
    path = tmp_path_factory.mktemp("libexec")
    for dest, src in INSTALLED.items():
        shutil.copy2(src, path / dest)
    return str(path)


@pytest.fixture()
def lab(libdir):
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    the_lab = Lab(libdir)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()


def test_spoofing_is_dropped_and_the_filter_is_idempotent(lab):
    a, b = lab.ip4["a"], lab.ip4["b"]
    spoofed4, spoofed6 = "10.99.%d.50" % lab.net, "fd00:99:%d::50" % lab.net
    # without a filter VE a can send from an address it was never given: the control
    assert lab.wait_ping("a", lab.ip4["host"]) and lab.wait_ping("a", b) and lab.wait_ping("a", lab.ip6["host"])
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed4 + "/24", "dev", "eth0")
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed6 + "/64", "dev", "eth0", "nodad")
    assert lab.wait_ping("a", lab.ip4["host"], source=spoofed4)
    assert lab.wait_ping("a", lab.ip6["host"], source=spoofed6)

    assert lab.ensure("a") is True
    assert lab.ensure("a") is False                       # idempotent
    state = lab.antispoof("read_filter", lab.link["a"])
    assert state["active"] and state["digest"] == lab.antispoof(
        "expected_digest", lab.link["a"], lab.mac["a"], [a + "/24"], [lab.ip6["a"] + "/64"])
    listing = lab.in_ns(lab.host, "nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_" + lab.link["a"]).stdout
    assert 'hook ingress device "%s" priority -500' % lab.link["a"] in listing, listing

    # what VE a was given still works, with IPv4 and IPv6, to the host and to VE b (IPv6 with
    # the source named: the kernel may well pick the newer, spoofed address of the same prefix)
    assert lab.wait_ping("a", lab.ip4["host"]) and lab.wait_ping("a", b)
    assert lab.wait_ping("a", lab.ip6["host"], source=lab.ip6["a"])
    assert lab.wait_ping("a", lab.ip6["b"], source=lab.ip6["a"])
    # the address added behind the host's back does not (the host's neighbour entry for the
    # spoofed address is still fresh, so the echo requests themselves are what is dropped)
    assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=3)
    assert not lab.ping("a", lab.ip6["host"], source=spoofed6, count=3)
    dropped = lab.dropped("a")
    assert dropped.get("IPv4 source is not a VE address", 0) >= 1, dropped
    assert dropped.get("IPv6 source is not a VE address", 0) >= 1, dropped

    # a change of the addresses replaces the chain in one go: now the added address may send
    assert lab.ensure("a", ipv4=[a + "/24", spoofed4 + "/24"]) is True
    assert lab.wait_ping("a", lab.ip4["host"], source=spoofed4)
    assert lab.ensure("a") is True

    # removal: the chain goes (the table stays); a second removal changes nothing
    assert lab.antispoof("remove_filter", lab.link["a"], True) is True        # check mode
    assert lab.antispoof("read_filter", lab.link["a"])["active"] is True
    assert lab.antispoof("remove_filter", lab.link["a"]) is True
    assert lab.antispoof("remove_filter", lab.link["a"]) is False
    gone = {"active": False, "digest": None, "packets": 0, "dropped": {}}
    assert lab.antispoof("read_filter", lab.link["a"]) == gone
    listed = lab.in_ns(lab.host, "nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_" + lab.link["a"], check=False)
    assert listed.returncode != 0
    assert lab.wait_ping("a", lab.ip4["host"], source=spoofed4)


def test_check_mode_changes_nothing(lab):
    assert lab.antispoof("ensure_filter", lab.link["a"], lab.mac["a"], [lab.ip4["a"]], [], True) is True
    assert lab.antispoof("read_filter", lab.link["a"])["active"] is False
    assert lab.ensure("a") is True
    assert lab.antispoof("ensure_filter", lab.link["a"], lab.mac["a"], [lab.ip4["a"]], [], True) is True
    assert lab.ensure("a") is False      # the check above left the applied chain as it was


def test_many_addresses_fit_one_chain(lab):
    """Addresses live in sets: 200 of each family is still one short chain the kernel takes."""
    ipv4 = [lab.ip4["a"] + "/24"] + ["10.99.%d.%d/24" % (lab.net, i) for i in range(10, 210)]
    ipv6 = [lab.ip6["a"] + "/64"] + ["fd00:99:%d::%x/64" % (lab.net, i) for i in range(0x10, 0x10 + 200)]
    assert lab.ensure("a", ipv4=ipv4, ipv6=ipv6) is True
    assert lab.ensure("a", ipv4=list(reversed(ipv4)), ipv6=ipv6) is False
    assert lab.wait_ping("a", lab.ip4["host"])


def test_a_routed_link_is_guarded_the_same(lab):
    """A routed interface (venet-like: no bridge, a /32 host route and the gateway 169.254.0.1 on
    the host side, as LXC's router mode makes it) gets the same chain and the same result."""
    ns, link, mac = "vzas-c-" + lab.tag, "vz%sc0" % lab.tag, "02:99:00:00:0c:01"
    ve, spoofed = "10.99.%d.20" % lab.net, "10.99.%d.21" % lab.net
    sh("ip", "netns", "add", ns)
    try:
        lab.in_ns(lab.host, "ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        lab.in_ns(lab.host, "ip", "addr", "add", "169.254.0.1/32", "dev", link)
        lab.in_ns(lab.host, "ip", "link", "set", link, "up")
        lab.in_ns(lab.host, "ip", "route", "add", ve + "/32", "dev", link)
        lab.in_ns(ns, "ip", "link", "set", "eth0", "address", mac)
        lab.in_ns(ns, "ip", "link", "set", "eth0", "up")
        lab.in_ns(ns, "ip", "addr", "add", ve + "/32", "dev", "eth0")
        lab.in_ns(ns, "ip", "route", "add", "169.254.0.1", "dev", "eth0")
        lab.in_ns(ns, "ip", "route", "add", "default", "via", "169.254.0.1")

        def ping_host(source=None, count=1):
            argv = ["busybox", "ping", "-c", str(count), "-W", "1"] + (["-I", source] if source else [])
            return lab.in_ns(ns, *argv, lab.ip4["host"], check=False).returncode == 0

        assert any(ping_host() for _attempt in range(5))
        assert lab.antispoof("ensure_filter", link, mac, [ve + "/32"], []) is True
        assert ping_host(count=2)
        lab.in_ns(ns, "ip", "addr", "add", spoofed + "/32", "dev", "eth0")
        lab.in_ns(lab.host, "ip", "route", "add", spoofed + "/32", "dev", link)   # even with a route back
        assert not ping_host(source=spoofed, count=2)
        assert lab.antispoof("read_filter", link)["dropped"].get("IPv4 source is not a VE address", 0) >= 1
        assert lab.antispoof("remove_filter", link) is True
        assert ping_host(source=spoofed, count=2)        # the control: it was the filter
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_forged_frames_do_not_reach_the_other_ve(lab):
    """Frames that VE a's root could send with a packet socket, each checked at VE b. Each frame
    carries a marker made from its description (``marker``)."""
    mac, other_mac = lab.mac["a"], "02:99:00:00:00:99"
    a4, b4, host4 = lab.ip4["a"], lab.ip4["b"], lab.ip4["host"]
    a6, b6 = lab.ip6["a"], lab.ip6["b"]
    own_ll, all_nodes = str(link_local_of(mac)), "ff02::1"
    passes = [
        ("ARP request from its own address", lambda m: ether(mac, 0x0806, arp(m, 1, mac, a4, host4))),
        ("ARP probe from 0.0.0.0", lambda m: ether(mac, 0x0806, arp(m, 1, mac, "0.0.0.0", b4))),
        ("IPv4 from its own address", lambda m: ether(mac, 0x0800, udp4(m, a4, host4))),
        ("IPv6 from its own address", lambda m: ether(mac, 0x86DD, udp6(m, a6, all_nodes))),
        ("IPv6 from its link-local address", lambda m: ether(mac, 0x86DD, udp6(m, own_ll, all_nodes))),
        ("neighbour advertisement for its own address",
         lambda m: ether(mac, 0x86DD, icmp6(m, own_ll, all_nodes, 136, a6))),
        ("DAD neighbour solicitation from ::", lambda m: ether(mac, 0x86DD, icmp6(m, "::", "ff02::1:ff00:2", 135, a6))),
    ]
    drops = [   # (description, frame builder, the reason (rule comment) that must count it)
        ("ARP reply claiming VE b's address", lambda m: ether(mac, 0x0806, arp(m, 2, mac, b4, b4)),
         "ARP sender IP is not a VE address"),
        ("ARP request from VE b's address", lambda m: ether(mac, 0x0806, arp(m, 1, mac, b4, host4)),
         "ARP sender IP is not a VE address"),
        ("ARP with another sender MAC", lambda m: ether(mac, 0x0806, arp(m, 2, other_mac, a4, host4)),
         "ARP sender MAC is not the VE hwaddr"),
        ("ARP reply from 0.0.0.0", lambda m: ether(mac, 0x0806, arp(m, 2, mac, "0.0.0.0", b4)),
         "ARP reply from 0.0.0.0"),
        ("ARP that is not Ethernet/IPv4",
         lambda m: ether(mac, 0x0806, struct.pack("!H", 6) + arp(m, 1, mac, a4, host4)[2:]),
         "ARP is not Ethernet/IPv4"),
        ("frame with another source MAC", lambda m: ether(other_mac, 0x0800, udp4(m, a4, host4)),
         "source MAC is not the VE hwaddr"),
        ("VLAN-tagged frame", lambda m: ether(mac, 0x8100, struct.pack("!HH", 5, 0x0800) + udp4(m, a4, host4)),
         "EtherType is not ARP, IPv4 or IPv6"),
        ("802.3 frame (length, not EtherType)", lambda m: ether(mac, 46, b"\x42\x42\x03" + marker(m) + bytes(37)),
         "EtherType is not ARP, IPv4 or IPv6"),
        ("IPv4 from VE b's address", lambda m: ether(mac, 0x0800, udp4(m, b4, host4)),
         "IPv4 source is not a VE address"),
        ("DHCP server reply", lambda m: ether(mac, 0x0800, udp4(m, a4, "255.255.255.255", 67, 68)),
         "DHCP or DHCPv6 server traffic"),
        ("IPv6 from VE b's address", lambda m: ether(mac, 0x86DD, udp6(m, b6, all_nodes)),
         "IPv6 source is not a VE address"),
        ("UDP from ::", lambda m: ether(mac, 0x86DD, udp6(m, "::", all_nodes)), "IPv6 from :: is not ICMPv6"),
        ("neighbour advertisement for VE b's address",
         lambda m: ether(mac, 0x86DD, icmp6(m, own_ll, all_nodes, 136, b6)),
         "neighbour advertisement target is not a VE address"),
        ("router advertisement", lambda m: ether(mac, 0x86DD, icmp6(m, own_ll, all_nodes, 134)),
         "router advertisement or redirect"),
        ("DHCPv6 server reply", lambda m: ether(mac, 0x86DD, udp6(m, a6, all_nodes, 547, 546)),
         "DHCP or DHCPv6 server traffic"),
    ]
    frames = {name: build(name) for name, build in passes}
    frames.update({name: build(name) for name, build, _reason in drops})
    assert len({marker(name) for name in frames}) == len(frames) == len(passes) + len(drops)
    # without the filter every frame reaches VE b: the listener and the frames work
    assert lab.heard_by_b(frames) == set(frames)

    lab.ensure("a")
    before = lab.dropped("a")
    assert lab.heard_by_b(frames) == {name for name, _build in passes}
    after = lab.dropped("a")
    want = {}
    for _name, _build, reason in drops:
        want[reason] = want.get(reason, 0) + 1
    grown = {reason: after.get(reason, 0) - before.get(reason, 0) for reason in want}
    assert all(grown[reason] >= count for reason, count in want.items()), (grown, want)


def link_local_of(mac):
    octets = mac_bytes(mac)
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + bytes([octets[0] ^ 2]) + octets[1:3] + b"\xff\xfe"
                                 + octets[3:])


def test_a_ve_without_ipv4_sends_no_arp_and_no_ipv4(lab):
    assert lab.ensure("a", ipv4=[]) is True
    assert not lab.ping("a", lab.ip4["host"], count=2)
    assert lab.wait_ping("a", lab.ip6["host"])
    assert lab.dropped("a").get("VE has no IPv4 address", 0) >= 1


def test_the_filter_guards_a_link_that_comes_back(lab):
    spoofed4 = "10.99.%d.51" % lab.net
    assert lab.ensure("a") is True
    lab.in_ns(lab.host, "ip", "link", "del", lab.link["a"])          # the VE stops: its veth goes
    survived = lab.antispoof("read_filter", lab.link["a"])["active"]
    print("\nkernel %s: the netdev chain %s the deletion of its device"
          % (os.uname().release, "survived" if survived else "did not survive"))
    lab.plug("a")                                                     # the VE starts again
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", lab.ip4["a"] + "/24", "dev", "eth0")
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed4 + "/24", "dev", "eth0")
    if survived:     # this kernel hooks the chain to the new link by itself
        assert lab.wait_ping("a", lab.ip4["host"])
        assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=2)
    # the hook re-applies it at every start anyway: nothing to change when it survived
    assert lab.ensure("a") is (not survived)
    assert lab.wait_ping("a", lab.ip4["host"])
    assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=2)
    assert lab.dropped("a")


def write_ve(lab, tmp_path, name, limits=None, hwaddr=None):
    """A VE directory as the VE manager leaves it: config and ve.json (network as in the contract)."""
    ve_dir = tmp_path / "ves" / name
    ve_dir.mkdir(parents=True, exist_ok=True)
    (ve_dir / "config").write_text("# not read by the hook\n")
    meta = {"name": name, "network": [{
        "name": "eth0", "mode": "bridged", "bridge": lab.bridge, "ipv4": [lab.ip4["a"] + "/24"],
        "ipv6": [lab.ip6["a"] + "/64"], "auto4": False, "auto6": False, "gateway4": None, "gateway6": None,
        "mtu": None, "hwaddr": hwaddr or lab.mac["a"], "host_link": lab.link["a"], "nameservers": [],
        "searchdomains": []}]}
    if limits:
        meta["limits"] = limits
    (ve_dir / "ve.json").write_text(json.dumps(meta))
    return ve_dir


def run_hook(lab, ve_dir, hook_type):
    env = {"PATH": os.environ["PATH"], "LXC_NAME": ve_dir.name, "LXC_CONFIG_FILE": str(ve_dir / "config"),
           "LXC_HOOK_TYPE": hook_type}
    return subprocess.run(["ip", "netns", "exec", lab.host, str(Path(lab.libdir) / "net-hook"), ve_dir.name, "lxc",
                           hook_type], env=env, capture_output=True, text=True, check=False, timeout=60)


def test_hook_guards_the_ve_at_start_and_keeps_the_filter_at_stop(lab, tmp_path):
    spoofed4 = "10.99.%d.52" % lab.net
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed4 + "/24", "dev", "eth0")
    ve_dir = write_ve(lab, tmp_path, "web1")
    proc = run_hook(lab, ve_dir, "start-host")
    assert proc.returncode == 0, proc
    assert "%s: anti-spoofing filter applied" % lab.link["a"] in proc.stdout, proc
    state = lab.antispoof("read_filter", lab.link["a"])
    assert state["digest"] == lab.antispoof("expected_digest", lab.link["a"], lab.mac["a"],
                                            [lab.ip4["a"] + "/24"], [lab.ip6["a"] + "/64"])
    assert lab.wait_ping("a", lab.ip4["host"]) and lab.wait_ping("a", lab.ip6["host"])
    assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=2)
    assert lab.dropped("a").get("IPv4 source is not a VE address", 0) >= 1
    # no rate, no shaping device
    assert lab.in_ns(lab.host, "ip", "link", "show", "vzshape0", check=False).returncode != 0

    # a second start changes nothing; post-stop keeps the filter
    again = run_hook(lab, ve_dir, "start-host")
    assert again.returncode == 0 and "filter applied" not in again.stdout, again
    lab.in_ns(lab.host, "ip", "link", "del", lab.link["a"])
    assert run_hook(lab, ve_dir, "post-stop").returncode == 0
    if lab.antispoof("read_filter", lab.link["a"])["active"]:     # this kernel keeps it with the link gone
        assert lab.antispoof("read_filter", lab.link["a"])["digest"] == state["digest"]
    assert not (ve_dir / "lxc.log").exists()


def test_hook_applies_filter_and_rate_together(lab, tmp_path):
    ve_dir = write_ve(lab, tmp_path, "web2", limits={"net": {"rate": 100 * 10 ** 6}})
    proc = run_hook(lab, ve_dir, "start-host")
    assert proc.returncode == 0, proc
    assert lab.antispoof("read_filter", lab.link["a"])["active"]
    assert lab.in_ns(lab.host, "ip", "link", "show", "vzshape0", check=False).returncode == 0
    assert lab.wait_ping("a", lab.ip4["host"]) and lab.wait_ping("a", lab.ip6["host"])


def test_a_shaped_ve_is_guarded_too(lab, tmp_path):
    """The shaper's redirect is an nft chain after the guard (a tc redirect would take the
    packets before netfilter, and the IFB would re-inject them past it)."""
    spoofed4 = "10.99.%d.53" % lab.net
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed4 + "/24", "dev", "eth0")
    ve_dir = write_ve(lab, tmp_path, "web3", limits={"net": {"rate": 100 * 10 ** 6}})
    assert run_hook(lab, ve_dir, "start-host").returncode == 0
    assert lab.wait_ping("a", lab.ip4["host"])
    assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=2)
    assert lab.dropped("a").get("IPv4 source is not a VE address", 0) >= 1
    # and the VE's own packets went through its class of the shaping tree
    classes = lab.in_ns(lab.host, "tc", "-s", "class", "show", "dev", "vzshape0").stdout
    sent = [int(m) for m in re.findall(r"class htb 1:(?!1 )\S+ parent 1:1 .*?\n Sent \d+ bytes (\d+) pkt", classes)]
    assert sent and sent[0] > 0, classes


def test_the_tc_redirect_of_an_earlier_version_is_replaced(lab, tmp_path):
    """A VE shaped before the redirect moved to nft still has a tc redirect on its link, which
    takes its packets past the guard; the next shaping (here: the hook) removes it."""
    spoofed4 = "10.99.%d.54" % lab.net
    lab.in_ns(lab.ns["a"], "ip", "addr", "add", spoofed4 + "/24", "dev", "eth0")
    ve_dir = write_ve(lab, tmp_path, "web5", limits={"net": {"rate": 100 * 10 ** 6}})
    assert run_hook(lab, ve_dir, "start-host").returncode == 0
    link = lab.link["a"]
    lab.in_ns(lab.host, "tc", "qdisc", "add", "dev", link, "ingress")
    lab.in_ns(lab.host, "tc", "filter", "add", "dev", link, "parent", "ffff:", "prio", "49152", "protocol", "all",
              "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "vzshape0")
    assert lab.wait_ping("a", lab.ip4["host"], source=spoofed4)          # the bypass
    proc = run_hook(lab, ve_dir, "start-host")
    assert proc.returncode == 0 and "remove the tc redirect of an earlier osvirt.vz" in proc.stdout, proc
    assert "u32" not in lab.in_ns(lab.host, "tc", "filter", "show", "dev", link, "ingress").stdout
    assert lab.wait_ping("a", lab.ip4["host"])
    assert not lab.ping("a", lab.ip4["host"], source=spoofed4, count=2)


def test_a_filter_that_cannot_be_applied_stops_the_start(lab, tmp_path):
    bad = write_ve(lab, tmp_path, "web4", hwaddr="02:11:22:33:44")
    proc = run_hook(lab, bad, "start-host")
    assert proc.returncode == 1, proc
    log = (bad / "lxc.log").read_text()
    assert "osvirt-vz-net-hook start-host web4: %s: anti-spoofing: hwaddr '02:11:22:33:44' is not six hex pairs" \
        % lab.link["a"] in log, log


def test_a_real_ve_started_through_the_hook_cannot_spoof(ctx, tmp_path):
    """A busybox VE on the machine's vzbr0 (10.20.0.251; 10.20.0.252 is the address it takes
    behind the host's back), started by lxc-start with the hook named in its config, as
    lxc-autostart would: the filter is on before its init runs."""
    hook_dir = tmp_path / "libexec"
    hook_dir.mkdir()
    for dest, src in INSTALLED.items():
        shutil.copy2(src, hook_dir / dest)
    name = ctx.name("guard")
    net = [{"name": "eth0", "bridge": BRIDGE, "ipv4": ["10.20.0.251/24"], "gateway4": GATEWAY}]
    ctx.run([{"hosts": "localhost", "gather_facts": False,
              "tasks": [ctx.task("create", name=name, template="busybox", state="present", network=net)]}])
    directory = ctx.ves / name
    iface = json.loads((directory / "ve.json").read_text())["network"][0]
    link = iface["host_link"]
    config = (directory / "config").read_text()
    if "lxc.hook.start-host" not in config:
        config += "lxc.hook.start-host = %s\nlxc.hook.post-stop = %s\n" % (hook_dir / "net-hook", hook_dir / "net-hook")
    else:   # the VE manager already names the installed hook: point it at this test's copy
        config = config.replace("/usr/libexec/osvirt-vz/net-hook", str(hook_dir / "net-hook"))
    (directory / "config").write_text(config)

    def guard(func, *args):
        code = "import json, sys; sys.path.insert(0, %r); import osvirt_vz_antispoof as a; " \
               "print(json.dumps(getattr(a, sys.argv[1])(*json.loads(sys.argv[2]))))" % str(hook_dir)
        return json.loads(sh(HOST_PYTHON, "-c", code, func, json.dumps(list(args))).stdout)

    try:
        started = sh("lxc-start", "-P", str(ctx.ves), "-n", name, check=False, timeout=60)
        assert started.returncode == 0, started.stderr + (directory / "lxc.log").read_text()
        state = guard("read_filter", link)
        assert state["active"] and state["digest"] == guard(
            "expected_digest", link, iface["hwaddr"], iface.get("ipv4") or [], iface.get("ipv6") or []), state
        assert ping("10.20.0.251")
        assert ctx.attach(name, "ping", "-c", "1", "-W", "2", GATEWAY, check=False).returncode == 0
        ctx.attach(name, "ip", "addr", "add", "10.20.0.252/24", "dev", "eth0")
        spoofed = ctx.attach(name, "ping", "-c", "2", "-W", "1", "-I", "10.20.0.252", GATEWAY, check=False)
        assert spoofed.returncode != 0, spoofed.stdout
        dropped = guard("read_filter", link)["dropped"]
        assert sum(dropped.values()) >= 2, dropped
        assert ctx.attach(name, "ping", "-c", "1", "-W", "2", GATEWAY, check=False).returncode == 0
    finally:
        sh("lxc-stop", "-k", "-P", str(ctx.ves), "-n", name, check=False)
        guard("remove_filter", link)
