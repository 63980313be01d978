# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of the VE network model of osvirt.vz.ve: bridged and routed interfaces,
IPv4 and IPv6 address lists, ``auto`` addresses from pools, the resolver, live address changes
and the errors of bad input, with real LXC on this machine.

The VEs of this module share one store (module scope): a throw-away vz_root, a cgroup parent
and a bridge of their own with a random name and a random test subnet 10.21.<n>.0/24 and
fd21:<n>::/64 (the host side is .1 / ::1), removed afterwards. Routed VEs use 10.22.<n>.0/24.
Traffic goes only between this machine and these VEs.

The bridge's pools are recorded the way osvirt.vz.bridge records them
(<vz_root>/net/bridges/<bridge>.json), so the tests do not depend on the bridge module's options.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vzlib import VeStore, kill_all, new_cgroup_parent, ping, play, remove_cgroups, sh

HOST_PYTHON = "/usr/bin/python3"


class Net(VeStore):
    """The module's VE store with its bridge and subnets."""

    def __init__(self, root, parent, version, prefix, run, bridge, n):
        super().__init__(root, parent, version, prefix, run)
        self.bridge, self.n = bridge, n
        self.host4, self.host6 = "10.21.%d.1" % n, "fd21:%x::1" % n

    def v4(self, last, prefix=24):
        return "10.21.%d.%d/%d" % (self.n, last, prefix)

    def v6(self, last, prefix=64):
        return "fd21:%x::%x/%d" % (self.n, last, prefix)

    def r4(self, last):
        return "10.22.%d.%d" % (self.n, last)

    def attach(self, name, *argv, check=True):
        return sh("lxc-attach", "-P", str(self.ves), "-n", name, "--", *argv, check=check)

    def pid(self, name):
        out = sh("lxc-info", "-P", str(self.ves), "-n", name, "-pH", check=False).stdout.strip()
        return int(out) if out.isdigit() else None

    def meta(self, name):
        return json.loads((self.ves / name / "ve.json").read_text())

    def config(self, name):
        return (self.ves / name / "config").read_text()

    def leases(self):
        """{address: ve} of every lease file of the store."""
        directory = self.root / "net" / "leases"
        if not directory.is_dir():
            return {}
        return {p.name: json.loads(p.read_text())["ve"] for p in directory.iterdir() if not p.name.startswith(".")}

    def snapshot(self, *names):
        """ve.json and config of VEs (None when absent) and the leases: what bad input must not change."""
        files = {}
        for name in names:
            for f in ("ve.json", "config"):
                path = self.ves / name / f
                files[(name, f)] = path.read_text() if path.exists() else None
        return files, self.leases()


def _bridge(name, addresses):
    sh("ip", "link", "add", name, "type", "bridge")
    for address in addresses:
        sh("ip", "addr", "add", address, "dev", name)
    sh("ip", "link", "set", name, "up")


@pytest.fixture(scope="module")
def net(built_template, tmp_path_factory, localhost, harness):
    """The module's store: vz_root with the busybox template, a bridge with pools, a cgroup parent."""
    templates, version = built_template
    n = random.randint(100, 250)
    tag = secrets.token_hex(2)
    bridge, small = "vzt%sb" % tag, "vzt%ss" % tag
    root = Path(tempfile.mkdtemp(prefix="vz-test-net-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    parent = new_cgroup_parent()
    try:
        sh("cp", "-a", "--reflink=auto", str(templates), str(root / "templates"))
        _bridge(bridge, ["10.21.%d.1/24" % n, "fd21:%x::1/64" % n])
        _bridge(small, ["10.23.%d.1/29" % n])
        bridges = root / "net" / "bridges"
        bridges.mkdir(parents=True)
        (bridges / ("%s.json" % bridge)).write_text(json.dumps({
            "name": bridge, "ipv4": ["10.21.%d.1/24" % n], "ipv6": ["fd21:%x::1/64" % n],
            "pool4": "10.21.%d.0/24" % n, "pool6": "fd21:%x::/120" % n, "nat": False, "uplink": None}))
        # two usable addresses besides the bridge's own: .2 .. .6 minus .1 -> small pool of /30 + /31
        (bridges / ("%s.json" % small)).write_text(json.dumps({
            "name": small, "ipv4": ["10.23.%d.1/29" % n], "ipv6": [], "pool4": "10.23.%d.0/30" % n,
            "pool6": None, "nat": False, "uplink": None}))
        runner = harness.PlaybookRunner(tmp_path_factory.mktemp("net"), localhost)
        yield Net(root, parent, version, "n" + tag, runner, bridge, n)
    finally:
        kill_all(root / "ves")
        # the VEs go with the store, not through state=absent: drop their anti-spoofing chains too
        for meta in (root / "ves").glob("*/ve.json"):
            for iface in json.loads(meta.read_text()).get("network") or []:
                sh("nft", "delete", "chain", "netdev", "osvirt_vz_guard", "ve_" + iface["host_link"], check=False)
        harness._release_vz_root(root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        for name in (bridge, small):
            sh("ip", "link", "del", name, check=False)
        time.sleep(0.5)
        remove_cgroups(parent)


@pytest.fixture(scope="module")
def bridged(net):
    """Two running bridged VEs: A (auto IPv4, static IPv6, resolver) and B (static both)."""
    a, b = net.name("a"), net.name("b")
    ves = [
        {"name": a, "network": [{"name": "eth0", "bridge": net.bridge, "ipv4": ["auto"],
                                 "ipv6": [net.v6(0x10)], "gateway6": net.host6,
                                 "nameservers": [net.host4, net.host6], "searchdomains": ["example.test"]}]},
        {"name": b, "network": [{"name": "eth0", "bridge": net.bridge, "ipv4": [net.v4(20)],
                                 "gateway4": net.host4, "ipv6": [net.v6(0x20)]}]},
    ]
    return a, b, ves


def _wait_ipv6(net, name, timeout=10):
    """Wait until the VE's IPv6 addresses have left duplicate address detection (tentative)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "tentative" not in net.attach(name, "ip", "-6", "addr").stdout:
            return
        time.sleep(0.3)


# ------------------------------------------------------------------------------ bridged


def test_bridged_ipv4_ipv6_dns_four_steps(net, bridged, four_steps):
    a, b, ves = bridged
    result = four_steps({"osvirt.vz.ve": net.ve(template="busybox", state="started", ves=ves)})
    check, real, again, _check_again = result.steps["localhost"]
    assert check["actions"] == real["actions"] == ["create %s" % a, "start %s" % a, "create %s" % b,
                                                   "start %s" % b], real["actions"]
    assert again["actions"] == []
    # the auto address is the pool's lowest free one (the bridge has .1), predicted in check mode
    ve_a = {v["name"]: v for v in real["ves"]}[a]
    assert ve_a["ips"] == ["10.21.%d.2" % net.n, "fd21:%x::10" % net.n], ve_a
    assert {v["name"]: v for v in check["ves"]}[a]["ips"] == ve_a["ips"]
    meta = net.meta(a)["network"][0]
    assert meta["ipv4"] == [net.v4(2)] and meta["auto4"] is True and meta["auto6"] is False
    assert meta["gateway4"] == net.host4, "an auto address gets the bridge's address as its gateway"
    assert net.leases() == {"10.21.%d.2" % net.n: a, "fd21:%x::10" % net.n: a,
                            "10.21.%d.20" % net.n: b, "fd21:%x::20" % net.n: b}
    config = net.config(a)
    assert "lxc.net.0.ipv6.address = %s" % net.v6(0x10) in config
    assert "lxc.net.0.ipv4.gateway = %s" % net.host4 in config
    # the resolver inside the VE, owned by the VE's root
    assert net.attach(a, "cat", "/etc/resolv.conf").stdout.splitlines()[1:] == [
        "nameserver %s" % net.host4, "nameserver %s" % net.host6, "search example.test"]
    assert net.attach(a, "stat", "-c", "%u", "/etc/resolv.conf").stdout.strip() == "0"
    # reachability: host <-> VE and VE <-> VE, both families
    _wait_ipv6(net, a)
    _wait_ipv6(net, b)
    assert ping("10.21.%d.2" % net.n) and ping("fd21:%x::20" % net.n)
    assert net.attach(a, "ping", "-c1", "-W3", net.host4).returncode == 0
    assert net.attach(a, "ping", "-c1", "-W3", "10.21.%d.20" % net.n).returncode == 0
    assert net.attach(b, "ping", "-c1", "-W3", "fd21:%x::10" % net.n).returncode == 0
    assert "default via %s" % net.host6 in net.attach(a, "ip", "-6", "route").stdout
    # the broadcast address is the subnet's (LXC computes 0.0.0.255 when the config does not name it)
    assert "inet 10.21.%d.20/24 brd 10.21.%d.255" % (net.n, net.n) in net.attach(b, "ip", "-4", "addr").stdout


def test_live_address_add_remove_keeps_connection(net, bridged):
    """A second address comes and goes on a running VE while a TCP connection to its first address
    stays up; the VE is never restarted and never reported stale."""
    a, _b, ves = bridged
    pid = net.pid(a)
    assert pid, "VE %s is not running (the four-step test starts it)" % a
    first = "10.21.%d.2" % net.n
    listener = subprocess.Popen(["lxc-attach", "-P", str(net.ves), "-n", a, "--", "sh", "-c",
                                 "nc -l -p 7007 > /tmp/got"], stdin=subprocess.DEVNULL)
    conn = None
    try:
        for _attempt in range(20):
            try:
                conn = socket.create_connection((first, 7007), timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        assert conn is not None, "no connection to the VE's nc on %s" % first
        conn.sendall(b"before\n")

        def with_ipv4(addresses):
            spec = json.loads(json.dumps(ves))
            spec[0]["network"][0]["ipv4"] = addresses
            return spec

        run = net.run(play([
            dict(net.task("add check", template="busybox", ves=with_ipv4(["auto", net.v4(30)])), check_mode=True),
            net.task("add", template="busybox", ves=with_ipv4(["auto", net.v4(30)])),
            net.task("add again", template="busybox", ves=with_ipv4(["auto", net.v4(30)])),
        ]))
        check, add, again = run.task("add check"), run.task("add"), run.task("add again")
        for res in (check, add):
            assert res.changed and res["restart_required"] is False, res.result
            assert "network %s: eth0 add %s" % (a, net.v4(30)) in res["actions"], res["actions"]
            assert not [x for x in res["actions"] if x.startswith(("stop", "start"))], res["actions"]
        assert not again.changed, again["actions"]
        assert net.pid(a) == pid
        assert net.meta(a)["network"][0]["ipv4"] == [net.v4(30), net.v4(2)]
        assert net.leases()["10.21.%d.30" % net.n] == a
        assert ping("10.21.%d.30" % net.n), "the live address does not answer"
        assert "10.21.%d.30/24" % net.n in net.attach(a, "ip", "-4", "addr", "show", "eth0").stdout

        run = net.run(play([net.task("remove", template="busybox", ves=ves)]))
        res = run.task("remove")
        assert res.changed and res["restart_required"] is False, res.result
        assert "network %s: eth0 remove %s" % (a, net.v4(30)) in res["actions"], res["actions"]
        assert "10.21.%d.30" % net.n not in net.leases(), "the dropped address is still leased"
        assert "10.21.%d.30/" % net.n not in net.attach(a, "ip", "-4", "addr", "show", "eth0").stdout
        assert net.pid(a) == pid
        # the first connection survived both changes
        conn.sendall(b"after\n")
        conn.close()
        conn = None
        listener.wait(timeout=10)
        assert net.attach(a, "cat", "/tmp/got").stdout == "before\nafter\n"
        # the auto address is kept across runs
        assert net.meta(a)["network"][0]["ipv4"] == [net.v4(2)]
    finally:
        if conn is not None:
            conn.close()
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_nameservers_change_live(net, bridged):
    a, _b, ves = bridged
    pid = net.pid(a)
    spec = json.loads(json.dumps(ves))
    spec[0]["network"][0]["nameservers"] = ["10.21.%d.53" % net.n]
    spec[0]["network"][0]["searchdomains"] = ["one.test", "two.test"]
    run = net.run(play([net.task("dns", template="busybox", ves=spec),
                        net.task("dns again", template="busybox", ves=spec)]))
    res = run.task("dns")
    assert res.changed and not res["restart_required"]
    assert "write /etc/resolv.conf of %s" % a in res["actions"], res["actions"]
    assert not run.task("dns again").changed
    assert net.attach(a, "cat", "/etc/resolv.conf").stdout.splitlines()[1:] == [
        "nameserver 10.21.%d.53" % net.n, "search one.test two.test"]
    assert net.pid(a) == pid
    net.run(play([net.task("dns back", template="busybox", ves=ves)]))


def test_restart_changes_are_reported(net, bridged):
    """An mtu change waits for a restart (restart_required), restart: true applies it."""
    _a, b, ves = bridged
    pid = net.pid(b)
    spec = json.loads(json.dumps(ves))
    spec[1]["network"][0]["mtu"] = 1400
    run = net.run(play([net.task("mtu", template="busybox", ves=[spec[1]])]))
    res = run.task("mtu")
    assert res.changed and res["restart_required"] is True and net.pid(b) == pid
    run = net.run(play([net.task("mtu restart", template="busybox", ves=[spec[1]], restart=True)]))
    assert run.task("mtu restart")["restart_required"] is False
    assert net.pid(b) != pid
    assert "mtu 1400" in net.attach(b, "ip", "link", "show", "eth0").stdout
    net.run(play([net.task("mtu back", template="busybox", ves=[ves[1]], restart=True)]))


# ------------------------------------------------------------------------------- routed


@pytest.fixture(scope="module")
def routed(net):
    names = [net.name("r1"), net.name("r2")]
    ves = [{"name": names[i], "network": [{"name": "eth0", "mode": "routed", "ipv4": [net.r4(5 + i)]}]}
           for i in range(2)]
    return names, ves


def test_routed_four_steps_and_reachability(net, routed, four_steps):
    (r1, r2), ves = routed
    result = four_steps({"osvirt.vz.ve": net.ve(template="busybox", state="started", ves=ves)})
    real = result.steps["localhost"][1]
    assert [v["ips"] for v in real["ves"]] == [[net.r4(5)], [net.r4(6)]]
    meta = net.meta(r1)["network"][0]
    assert meta["ipv4"] == ["%s/32" % net.r4(5)] and meta["bridge"] is None
    assert meta["gateway4"] == "169.254.0.1"
    config = net.config(r1)
    assert "lxc.net.0.veth.mode = router" in config and "lxc.net.0.link" not in config
    # inside: the address as /32, the default route via the host side
    assert "%s/32" % net.r4(5) in net.attach(r1, "ip", "-4", "addr").stdout
    assert "default via 169.254.0.1" in net.attach(r1, "ip", "route").stdout
    # the host routes each address to the VE's link
    link1 = meta["host_link"]
    assert "dev %s" % link1 in sh("ip", "route", "get", net.r4(5)).stdout
    # host -> VE, VE -> host, VE -> VE (routed by the host)
    assert ping(net.r4(5)), "host -> routed VE: %s; proxy entries: %s; the VE's neighbours: %s; guard: %s" % (
        sh("ip", "route", "get", "169.254.0.1", check=False).stdout.strip(),
        sh("ip", "neigh", "show", "proxy", "dev", link1, check=False).stdout.strip(), net.attach(r1, "ip", "neigh").stdout,
        sh("nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_" + link1, check=False).stdout)
    assert ping(net.r4(6))
    assert net.attach(r1, "ping", "-c1", "-W3", net.host4).returncode == 0
    assert net.attach(r1, "ping", "-c1", "-W3", net.r4(6)).returncode == 0


def test_routed_ves_have_no_l2_contact(net, routed):
    (r1, r2), _ves = routed
    link1 = net.meta(r1)["network"][0]["host_link"]
    hw2 = net.meta(r2)["network"][0]["hwaddr"]
    host_side = Path("/sys/class/net/%s/address" % link1).read_text().strip()
    assert net.attach(r1, "ping", "-c2", "-W3", net.r4(6)).returncode == 0
    neigh = net.attach(r1, "ip", "neigh").stdout
    # the only neighbour r1 knows is the host side of its own link, whatever it talks to
    assert hw2 not in neigh.lower(), neigh
    assert host_side in neigh.lower(), neigh
    assert net.r4(6) not in neigh, neigh
    # asking the link directly for r2's address gets no answer from r2
    arp = net.attach(r1, "arping", "-c", "2", "-w", "3", "-I", "eth0", net.r4(6), check=False)
    assert hw2 not in arp.stdout.lower(), arp.stdout
    assert arp.returncode != 0, arp.stdout


def test_routed_live_address(net, routed):
    (r1, _r2), ves = routed
    pid = net.pid(r1)
    spec = json.loads(json.dumps(ves))
    spec[0]["network"][0]["ipv4"] = [net.r4(5), net.r4(15)]
    run = net.run(play([net.task("routed add", template="busybox", ves=[spec[0]])]))
    res = run.task("routed add")
    assert res.changed and not res["restart_required"] and net.pid(r1) == pid, res.result
    assert ping(net.r4(15)), "the live routed address does not answer"
    run = net.run(play([net.task("routed remove", template="busybox", ves=[ves[0]])]))
    assert run.task("routed remove").changed and net.pid(r1) == pid
    assert not ping(net.r4(15), attempts=1)
    assert net.r4(15) not in sh("ip", "route", "show", "dev", net.meta(r1)["network"][0]["host_link"]).stdout


def test_routed_auto_from_the_hosts_pool(net):
    """``ipv4: auto`` in routed mode takes the host's routed_pool4 (host.json), as a /32, kept
    across runs and released on removal."""
    host_json = net.root / "host.json"
    host_json.write_text(json.dumps({"routed_pool4": "10.22.%d.16/28" % net.n}))
    name = net.name("ra")
    ve = {"name": name, "network": [{"mode": "routed", "ipv4": ["auto"]}]}
    try:
        run = net.run(play([net.task("routed auto", template="busybox", state="present", ves=[ve]),
                            net.task("routed auto again", template="busybox", state="present", ves=[ve])]))
        assert run.task("routed auto")["ves"][0]["ips"] == ["10.22.%d.17" % net.n]
        assert not run.task("routed auto again").changed
        meta = net.meta(name)["network"][0]
        assert meta["ipv4"] == ["10.22.%d.17/32" % net.n] and meta["auto4"] is True
        assert meta["gateway4"] == "169.254.0.1"
        net.run(play([net.task("routed auto gone", name=name, state="absent")]))
        assert "10.22.%d.17" % net.n not in net.leases()
    finally:
        host_json.unlink()


# ------------------------------------------------------------------------------- pools


def test_auto_bulk_twenty_distinct_then_released(net):
    names = [net.name("p%02d" % i) for i in range(20)]
    ves = [{"name": n, "network": [{"bridge": net.bridge, "ipv4": ["auto"]}]} for n in names]
    before = set(net.leases())
    run = net.run(play([net.task("twenty", template="busybox", state="present", ves=ves),
                        net.task("twenty again", template="busybox", state="present", ves=ves)]))
    first, again = run.task("twenty"), run.task("twenty again")
    addresses = [v["ips"][0] for v in first["ves"]]
    assert len(set(addresses)) == 20, addresses
    assert [v["ips"] for v in again["ves"]] == [v["ips"] for v in first["ves"]] and not again.changed
    leases = net.leases()
    assert all(leases[a] == n for a, n in zip(addresses, names)), leases
    assert not set(addresses) & before
    net.run(play([net.task("twenty gone", state="absent", ves=[{"name": n} for n in names])]))
    assert not set(addresses) & set(net.leases()), "leases of removed VEs are left"


def test_auto_twenty_parallel_runs_get_distinct_addresses(net):
    """20 separate ansible-playbook runs, started at once, each creating one VE with an auto
    address: no two VEs get the same address (the leases are the only coordination)."""
    names = [net.name("q%02d" % i) for i in range(20)]
    before = set(net.leases())

    def create(name):
        task = net.task("one", template="busybox", state="present",
                        network=[{"bridge": net.bridge, "ipv4": ["auto"]}], name=name)
        return net.run(play([task])).task("one")["ve"]["ips"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(create, names))
    addresses = [ips[0] for ips in results]
    try:
        assert len(set(addresses)) == 20, addresses
        assert not set(addresses) & before
        leases = net.leases()
        assert all(leases[a] == n for a, n in zip(addresses, names)), leases
        assert all(net.meta(n)["network"][0]["ipv4"][0].split("/")[0] == a for n, a in zip(names, addresses))
    finally:
        net.run(play([net.task("gone", state="absent", ves=[{"name": n} for n in names])]))
    assert not set(addresses) & set(net.leases()), "leases of removed VEs are left"


# ---------------------------------------------------------------------------- bad input


BAD = {
    "malformed address": ({"ipv4": ["10.21.{n}.300/24"]}, "is not a valid IPv4 address"),
    "malformed ipv6": ({"ipv6": ["fd21::zz/64"]}, "is not a valid IPv6 address"),
    "gateway off subnet": ({"ipv4": ["10.21.{n}.40/24"], "gateway4": "10.99.0.1"},
                           "gateway4 10.99.0.1 is not in the subnet"),
    "address of another VE": ({"ipv4": ["10.21.{n}.20/24"]}, "is already used by VE {b}"),
    "missing bridge": ({"bridge": "nosuchbr{n}", "ipv4": ["10.21.{n}.41/24"]},
                       "bridge nosuchbr{n} does not exist on this host"),
    "mtu out of range": ({"ipv4": ["10.21.{n}.42/24"], "mtu": 67}, "mtu 67 is out of range 68-65535"),
    "auto without pool": ({"bridge": "{small}", "ipv6": ["auto"]}, "bridge {small} has none"),
    "routed with prefix": ({"mode": "routed", "ipv4": ["10.22.{n}.9/24"]}, "routed mode takes single addresses"),
}


def test_bad_input_changes_nothing(net, bridged):
    a, b, _ves = bridged
    fresh, fresh2 = net.name("bad"), net.name("bad2")
    keys = dict(n=net.n, b=b, small="vzt%ss" % net.prefix[1:])
    tasks = []
    for title, (iface, _error) in BAD.items():
        iface = {k: ([x.format(**keys) for x in v] if isinstance(v, list) else
                     v.format(**keys) if isinstance(v, str) else v) for k, v in iface.items()}
        if iface.get("mode") != "routed":
            iface.setdefault("bridge", net.bridge)
        # a new VE, and an existing running one; an address in use is found under the VE's lock
        for name in (fresh if title != "address of another VE" else fresh2, a):
            tasks.append(dict(net.task("%s %s" % (title, name), name=name, template="busybox",
                                       network=[dict(iface, name="eth0")]), ignore_errors=True))
    tasks.append(dict(net.task("duplicate names", name=fresh, template="busybox",
                               network=[{"name": "eth0", "bridge": net.bridge},
                                        {"name": "eth0", "bridge": net.bridge}]), ignore_errors=True))
    # a pool with one free address (the bridge has .1, .3 is the /30's broadcast) for two VEs
    tasks.append(dict(net.task("exhausted pool", template="busybox", state="present",
                               ves=[{"name": net.name("x%d" % i),
                                     "network": [{"bridge": keys["small"], "ipv4": ["auto"]}]}
                                    for i in range(2)]), ignore_errors=True))
    before = net.snapshot(a, fresh, fresh2, net.name("x0"), net.name("x1"))
    if (Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "0"):
        tasks.append(dict(net.task("routed ipv6 without forwarding", name=fresh2, template="busybox",
                                   network=[{"mode": "routed", "ipv6": ["fd22:%x::5" % net.n]}]),
                          ignore_errors=True))
    run = net.run(play(tasks))
    for title, (_iface, error) in BAD.items():
        for name in (fresh if title != "address of another VE" else fresh2, a):
            res = run.task("%s %s" % (title, name))
            assert res.failed, (title, name, res.result)
            assert error.format(**keys) in res.msg, (title, name, res.msg)
    assert run.task("duplicate names").failed and "interface name eth0 is used twice" in \
        run.task("duplicate names").msg
    exhausted = run.task("exhausted pool")
    assert exhausted.failed and "10.23.%d.0/30" % net.n in exhausted.msg and "exhausted" in exhausted.msg, \
        exhausted.msg
    if "routed ipv6 without forwarding" in [r.name for r in run.results]:
        res = run.task("routed ipv6 without forwarding")
        assert res.failed and "net.ipv6.conf.all.forwarding is 0" in res.msg, res.msg
    assert net.snapshot(a, fresh, fresh2, net.name("x0"), net.name("x1")) == before
    assert not (net.ves / fresh).exists() and not (net.ves / fresh2).exists()
    # malformed interfaces fail before the new VE's lock file is made
    assert not (net.root / "locks" / ("ve-%s.lock" % fresh)).exists()


def test_stopped_ve_gets_its_resolver_in_the_private_area(net):
    name = net.name("dns")
    ve = {"name": name, "network": [{"bridge": net.bridge, "ipv4": [net.v4(50)]}]}
    net.run(play([net.task("plain", template="busybox", state="present", ves=[ve])]))
    upper = net.ves / name / "private" / "upper"
    assert not (upper / "etc" / "resolv.conf").exists()
    ve["network"][0]["nameservers"] = [net.host4]
    run = net.run(play([net.task("dns", template="busybox", state="present", ves=[ve]),
                        net.task("dns again", template="busybox", state="present", ves=[ve])]))
    assert run.task("dns").changed and not run.task("dns again").changed
    resolv = upper / "etc" / "resolv.conf"
    assert resolv.read_text().splitlines()[1:] == ["nameserver %s" % net.host4]
    uid = net.meta(name)["idmap"]["uid"]
    assert resolv.stat().st_uid == uid and (upper / "etc").stat().st_uid == uid
    net.run(play([net.task("gone", name=name, state="absent")]))


def test_destroy_removes_filters_and_leases(net, bridged):
    """Removing a VE removes the anti-spoofing chain of its link and releases its addresses."""
    _a, b, _ves = bridged
    link = net.meta(b)["network"][0]["host_link"]
    guarded = sh("nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_%s" % link, check=False).returncode == 0
    assert guarded or not (Path(__file__).resolve().parents[2] / "plugins/module_utils/_antispoof.py").exists(), \
        "a started VE has no anti-spoofing chain"
    assert b in net.leases().values()
    net.run(play([net.task("remove b", name=b, state="absent")]))
    assert b not in net.leases().values()
    assert sh("nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_%s" % link, check=False).returncode != 0
