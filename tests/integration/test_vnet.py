# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Live network changes (plugins/module_utils/_vnet.py) on real network namespaces.

Each test makes two namespaces of its own with ``unshare --net``: a "host" and a "VE", joined by
a veth (host side ``vzt<hex>``, VE side ``eth0``). ``_vnet`` runs with Debian's python3 from inside
the "host" namespace, so neither the machine's own namespace nor its routing table is touched.
Addresses are 10.98.<random>.x and fd98:<random>::x, inside those namespaces only. Every result
is cross-checked with pyroute2's ``NetNS`` (a proxy process inside the namespace), another
mechanism than the setns'd socket under test.
"""

from __future__ import annotations

import json
import secrets
import time

import pytest

from vnetlib import COLLECTIONS, HOST_PYTHON, Sleeper, addresses, defaults, netns_view, vnet
from vzlib import sh

RTNH_F_ONLINK = 4


class Pair:
    """The two namespaces and the veth between them."""

    def __init__(self):
        self.host, self.ve = Sleeper(), Sleeper()
        self.link = "vzt" + secrets.token_hex(4)
        self.net = secrets.randbelow(250) + 1
        sh("ip", "link", "add", "name", self.link, "netns", str(self.host.pid), "type", "veth",
           "peer", "name", "eth0", "netns", str(self.ve.pid))
        for side, dev in ((self.host, self.link), (self.ve, "eth0")):
            side.ns("ip", "link", "set", "lo", "up")
            side.ns("ip", "link", "set", dev, "up")

    def v4(self, host, prefix=24):
        return "10.98.%d.%d/%d" % (self.net, host, prefix)

    def v6(self, host, prefix=64):
        return "fd98:%x::%x/%d" % (self.net, host, prefix)

    def call(self, func, *args, **kwargs):
        """``_vnet.<func>`` from inside the "host" namespace."""
        return vnet(func, *args, netns_pid=self.host.pid, **kwargs)

    def apply(self, **kwargs):
        return self.call("apply_addresses", self.ve.pid, "eth0", **kwargs)

    def view(self):
        return netns_view(self.ve.pid)

    def summary(self):
        """Addresses (without the kernel's link-local one) and default routes of the VE's eth0."""
        view = self.view()
        return addresses(view, "eth0"), defaults(view, "eth0")

    def close(self):
        self.ve.kill()
        self.host.kill()


@pytest.fixture
def pair():
    p = Pair()
    try:
        yield p
    finally:
        p.close()


def test_add_remove_gateways_idempotent(pair):
    add = [pair.v4(2), pair.v4(3), pair.v6(2)]
    gateways = {"gateway4": [None, pair.v4(1).split("/")[0]], "gateway6": [None, pair.v6(1).split("/")[0]]}
    before = pair.summary()

    # 1. check mode: the actions, nothing changed
    planned = pair.apply(add=add, check_only=True, **gateways)["result"]
    assert planned == ["add %s to eth0" % a for a in add] + [
        "set default route via %s on eth0" % gateways["gateway4"][1],
        "set default route via %s on eth0" % gateways["gateway6"][1]]
    assert pair.summary() == before == ([], [])

    # 2. real run: the same actions; prefix lengths, broadcast (brd +) and routes as asked
    assert pair.apply(add=add, **gateways)["result"] == planned
    view = pair.view()
    assert addresses(view, "eth0") == sorted(add)
    brd = {a["cidr"]: a["brd"] for a in view["addrs"] if a["dev"] == "eth0"}
    assert brd[pair.v4(2)] == brd[pair.v4(3)] == "10.98.%d.255" % pair.net
    assert defaults(view, "eth0") == sorted([(gateways["gateway4"][1], 0), (gateways["gateway6"][1], 0)])
    # DAD is over when the call returns (it waits for it): no tentative address is left
    live = pair.call("ve_interfaces", pair.ve.pid)["result"]
    assert live == [{"name": "eth0", "hwaddr": live[0]["hwaddr"], "mtu": 1500, "state": "up",
                     "ipv4": [pair.v4(2), pair.v4(3)], "ipv6": [pair.v6(2)], "ipv6_tentative": [],
                     "ipv6_dadfailed": []}]
    assert pair.call("address_state", pair.ve.pid, "eth0", pair.v6(2))["result"] == "ok"
    assert pair.call("address_state", pair.ve.pid, "eth0", pair.v6(9))["result"] is None

    # 3./4. again, and again in check mode: no action
    assert pair.apply(add=add, **gateways)["result"] == []
    assert pair.apply(add=add, check_only=True, **gateways)["result"] == []
    assert pair.apply(remove=[pair.v4(9)])["result"] == []
    assert pair.summary() == (addresses(view, "eth0"), defaults(view, "eth0"))

    # removal of the primary IPv4 address keeps the secondary of its subnet
    result = pair.apply(remove=[pair.v4(2), pair.v6(2)], gateway6=[gateways["gateway6"][1], None])["result"]
    assert result == ["enable promote_secondaries on eth0", "remove %s from eth0" % pair.v4(2),
                      "remove %s from eth0" % pair.v6(2),
                      "remove default route via %s from eth0" % gateways["gateway6"][1]]
    view = pair.view()
    assert addresses(view, "eth0") == [pair.v4(3)]
    assert defaults(view, "eth0") == [(gateways["gateway4"][1], 0)]

    # renumbering: removing the last IPv4 address makes the kernel drop the default route; it is
    # put back, whether the gateway is left alone (None) or named unchanged
    gw4 = gateways["gateway4"][1]
    for new, old, gateway4 in ((pair.v4(4), pair.v4(3), None), (pair.v4(5), pair.v4(4), [gw4, gw4])):
        expected = ["remove %s from eth0" % old, "add %s to eth0" % new, "set default route via %s on eth0" % gw4]
        assert pair.apply(add=[new], remove=[old], gateway4=gateway4, check_only=True)["result"] == expected
        assert pair.apply(add=[new], remove=[old], gateway4=gateway4)["result"] == expected
        assert pair.summary() == ([new], [(gw4, 0)])


def test_routed_mode_with_host_routes(pair):
    """A /32 and /128 in the VE, default routes via 169.254.0.1 onlink and fe80::1, host routes to
    the host link: the host reaches the address added live."""
    pair.host.ns("ip", "addr", "add", "169.254.0.1/32", "dev", pair.link)
    pair.host.ns("ip", "-6", "addr", "add", "fe80::1/64", "dev", pair.link, "nodad")
    ve4, ve6 = pair.v4(5, 32), pair.v6(5, 128)
    result = pair.apply(add=[ve4, ve6], gateway4=[None, "169.254.0.1"], gateway6=[None, "fe80::1"])["result"]
    assert result == ["add %s to eth0" % ve4, "add %s to eth0" % ve6, "set default route via 169.254.0.1 on eth0",
                      "set default route via fe80::1 on eth0"]
    view = pair.view()
    assert defaults(view, "eth0") == sorted([("169.254.0.1", RTNH_F_ONLINK), ("fe80::1", 0)])

    assert pair.call("host_routes", pair.link, add=[ve4, ve6])["result"] == [
        "add route %s dev %s" % (ve4, pair.link), "add route %s dev %s" % (ve6, pair.link)]
    assert pair.call("host_routes", pair.link, add=[ve4, ve6])["result"] == []
    host = netns_view(pair.host.pid)
    assert {r["dst"] for r in host["routes"] if r["dev"] == pair.link} >= {ve4, ve6}
    assert pair.host.ns("busybox", "ping", "-c1", "-W3", ve4.split("/")[0], check=False).returncode == 0
    assert pair.host.ns("busybox", "ping6", "-c1", "-W3", ve6.split("/")[0], check=False).returncode == 0

    # the same address to another link of the "host" is refused, naming the link that has it
    pair.host.ns("ip", "link", "add", "vzt-other", "type", "veth", "peer", "name", "vzt-other2")
    refused = pair.call("host_routes", "vzt-other", add=[ve4])
    assert refused["type"] == "VnetError" and pair.link in refused["error"] and "10.98." in refused["error"]

    assert pair.call("host_routes", pair.link, remove=[ve4.split("/")[0], ve6])["result"] == [
        "remove route %s dev %s" % (ve4, pair.link), "remove route %s dev %s" % (ve6, pair.link)]
    assert pair.call("host_routes", pair.link, remove=[ve4, ve6])["result"] == []

    # routes LXC's router mode makes at start (proto boot) count as there, and go on removal
    pair.host.ns("ip", "route", "add", ve4, "dev", pair.link, "proto", "boot")
    assert pair.call("host_routes", pair.link, add=[ve4])["result"] == []
    assert pair.call("host_routes", pair.link, remove=[ve4])["result"] == ["remove route %s dev %s" % (ve4, pair.link)]
    assert ve4 not in {r["dst"] for r in netns_view(pair.host.pid)["routes"]}


def test_counters_are_the_ves_view(pair):
    pair.apply(add=[pair.v4(2)])
    pair.host.ns("ip", "addr", "add", pair.v4(1), "dev", pair.link)
    first = pair.call("link_stats", pair.link)["result"]
    assert set(first) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "state"} and first["state"] == "up"
    assert pair.host.ns("busybox", "ping", "-c3", "-i0.2", "-s1000", "-W3", pair.v4(2).split("/")[0],
                        check=False).returncode == 0
    after = pair.call("link_stats", pair.link)["result"]
    # the VE received three 1028-byte echo requests and sent three replies
    assert after["rx_bytes"] - first["rx_bytes"] >= 3 * 1000 and after["rx_packets"] - first["rx_packets"] >= 3
    assert after["tx_bytes"] - first["tx_bytes"] >= 3 * 1000 and after["tx_packets"] - first["tx_packets"] >= 3
    assert pair.call("link_stats", "vzt-none")["result"] is None


def test_failure_rolls_back_and_names_pid_interface_and_error(pair):
    gw4 = pair.v4(1).split("/")[0]
    pair.apply(add=[pair.v4(2)], gateway4=[None, gw4])
    before = pair.summary()
    assert before == ([pair.v4(2)], [(gw4, 0)])
    pair.ve.ns("sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1")
    failed = pair.apply(add=[pair.v4(7), pair.v6(7)], remove=[pair.v4(2)])
    assert failed["type"] == "VnetError"
    assert "VE pid %d" % pair.ve.pid in failed["error"] and "eth0" in failed["error"]
    assert pair.v6(7) in failed["error"] and "errno" in failed["error"], failed
    # the address is back, and the default route the kernel dropped with it too
    assert pair.summary() == before

    missing = pair.apply(add=[pair.v4(7)], remove=[])
    assert missing.get("result") == ["add %s to eth0" % pair.v4(7)]
    gone = pair.call("apply_addresses", pair.ve.pid, "eth9", add=[pair.v4(8)])
    assert gone == {"error": "VE pid %d has no interface eth9" % pair.ve.pid, "type": "VnetError"}
    bad = pair.apply(add=["10.98.1.300/24"])
    assert bad["type"] == "VzError" and "10.98.1.300/24" in bad["error"]
    # a process in the caller's own namespace is never treated as a VE
    own = pair.call("apply_addresses", pair.host.pid, pair.link, add=[pair.v4(8)])
    assert "shares the host's network namespace" in own["error"]
    assert pair.call("ve_interfaces", 999999999)["type"] == "VnetError"


def test_duplicate_ipv6_fails_dad_and_is_removed(pair):
    """Another node on the link has the address: DAD fails, the call fails, the address goes."""
    dup = pair.v6(7)
    pair.host.ns("ip", "-6", "addr", "add", dup, "dev", pair.link)
    deadline = time.monotonic() + 10
    while "tentative" in pair.host.ns("ip", "-6", "addr", "show", "dev", pair.link).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    failed = pair.apply(add=[pair.v4(2), dup])
    assert failed["type"] == "VnetError" and "duplicate address detection" in failed["error"], failed
    assert addresses(pair.view(), "eth0") == []


_THREADS = r"""
import json, os, sys, threading
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, sys.argv[1])
from ansible_collections.osvirt.vz.plugins.module_utils import _vnet
jobs, extra = json.loads(sys.argv[2])
home = os.readlink("/proc/self/ns/net")
seen, stop = set(), threading.Event()

def watch():
    while not stop.wait(0.0005):
        seen.add(os.readlink("/proc/thread-self/ns/net"))

def job(item):
    pid, address = item
    actions = _vnet.apply_addresses(pid, "eth0", add=[address])
    return actions, os.readlink("/proc/thread-self/ns/net")

watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
results = []
try:
    with ThreadPoolExecutor(4) as pool:
        for _round in range(3):  # each VE once per round, like the VE lock allows
            results += list(pool.map(job, [tuple(j) for j in jobs]))
        # and one address into one VE from four threads at once: a lost race is no error
        raced = list(pool.map(job, [tuple(extra)] * 4))
finally:
    stop.set()
    watcher.join()
print(json.dumps({"results": results, "raced": raced, "home": home, "seen": sorted(seen),
                  "main_after": os.readlink("/proc/thread-self/ns/net")}))
"""


def test_threads_enter_only_their_own_ves():
    """setns changes only the calling thread: four threads change four VEs at once while another
    thread of the same process never leaves the "host" namespace."""
    host = Sleeper()
    ves = []
    try:
        net = secrets.randbelow(250) + 1
        for index in range(4):
            ve = Sleeper()
            ves.append(ve)
            sh("ip", "link", "add", "name", "vzt%s%d" % (secrets.token_hex(3), index), "netns", str(host.pid),
               "type", "veth", "peer", "name", "eth0", "netns", str(ve.pid))
            ve.ns("ip", "link", "set", "eth0", "up")
        jobs = [[ve.pid, "10.98.%d.%d/24" % (net, 10 + i)] for i, ve in enumerate(ves)]
        extra = [ves[0].pid, "10.98.%d.20/24" % net]
        out = json.loads(host.ns(HOST_PYTHON, "-c", _THREADS, COLLECTIONS, json.dumps([jobs, extra])).stdout)
        assert out["seen"] == [out["home"]] and out["main_after"] == out["home"]
        # every call ran in a thread that was back home; each address went once into its own VE
        assert all(thread_ns == out["home"] for _actions, thread_ns in out["results"])
        assert sorted(a for actions, _ns in out["results"] for a in actions) == \
            sorted("add %s to eth0" % address for _pid, address in jobs)
        assert len(out["raced"]) == 4 and all(thread_ns == out["home"] for _actions, thread_ns in out["raced"])
        for ve, (_pid, address) in zip(ves, jobs):
            assert addresses(netns_view(ve.pid), "eth0") == sorted([address] + ([extra[1]] if ve is ves[0] else []))
        assert not [a for a in netns_view(host.pid)["addrs"] if a["cidr"].startswith("10.98.")]
    finally:
        for ve in ves:
            ve.kill()
        host.kill()
