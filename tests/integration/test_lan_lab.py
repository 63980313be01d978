# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab LAN (tests/lab/lab): VEs of two lab hosts on one L2 segment, reached from the LAN's
third place (netns vzlab-lan, tests/integration/lanclient.py), with the shared gateway kept on
each host; and the announcement of a VE that moved (plugins/module_utils/_announce.py).

Real busybox VEs made by osvirt.vz.ve over SSH in lab1 and lab2 (their /var/lib/vz, a template
and VE names of this test run), removed at the end whatever happens. ``auto`` addresses come
from each host's own pool block (10.20.0.16/28 on lab1, 10.20.0.32/28 on lab2, which the lab
writes as vzbr0's bridge settings).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import textwrap
import time

import pytest

import lanclient
from template_helpers import REPO_ROOT
from vzlib import play

VES = "/var/lib/vz/ves"
GATEWAY = "10.20.0.1"
GATEWAY_MAC = "02:c6:12:00:02:01"   # every lab host's vzbr0
PORT = 7007
POOLS = {"lab1": ipaddress.ip_network("10.20.0.16/28"), "lab2": ipaddress.ip_network("10.20.0.32/28")}


@pytest.fixture(scope="module")
def lan(harness, lab, tmp_path_factory):
    """A busybox template on both lab hosts; a runner for playbooks on them; cleanup of VEs."""
    runner = harness.PlaybookRunner(tmp_path_factory.mktemp("lan"), lab.inventory)
    template = "bbx-" + secrets.token_hex(3)
    made = []

    class Lan:
        def __init__(self):
            self.lab, self.run, self.template, self.made = lab, runner, template, made

        def ves(self, host, ves):
            """Start ``ves`` (osvirt.vz.ve ``ves`` items) on ``host``; returns the task result."""
            made.extend((host, v["name"]) for v in ves)
            run = runner(play([{"name": "ves", "osvirt.vz.ve": {
                "template": template, "state": "started", "ves": ves}}], host))
            return run.task("ves", host=host)

        def absent(self, host, *names):
            runner(play([{"name": "absent", "osvirt.vz.ve": {
                "state": "absent", "ves": [{"name": n} for n in names]}}], host))

        def attach(self, host, name, *argv, check=True):
            return lab.exec(host, "lxc-attach", "-P", VES, "-n", name, "--", *argv, check=check, timeout=30)

        def pid(self, host, name):
            return int(lab.exec(host, "lxc-info", "-P", VES, "-n", name, "-p", "-H").stdout.strip())

        def py(self, host, code):
            """Python on ``host`` with the collection importable; the last line printed, as JSON."""
            prelude = "import sys, json\nsys.path.insert(0, %r)\n" % str(REPO_ROOT / ".build" / "collections")
            out = lab.exec(host, str(REPO_ROOT / ".venv" / "bin" / "python"), "-c",
                           prelude + textwrap.dedent(code)).stdout
            return json.loads(out.strip().splitlines()[-1])

    runner(play([{"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}}],
                "vz_hosts"))
    try:
        yield Lan()
    finally:
        # one run for both hosts: removing a VE a host does not have changes nothing
        names = sorted({n for _h, n in made})
        runner(play([
            {"name": "cleanup ves", "ignore_errors": True,
             "osvirt.vz.ve": {"state": "absent", "ves": [{"name": n} for n in names]}},
            {"name": "cleanup template", "ignore_errors": True,
             "osvirt.vz.template": {"name": template, "state": "absent"}}], "vz_hosts"))
        for host in lab.hosts:
            lab.exec(host, "rmdir", "/var/lib/vz/templates/" + template, check=False)


def _first_ipv4(result):
    ve = result["ves"][0]
    return next(ip for ip in ve["ips"] if ":" not in ip)


def test_ves_of_two_hosts_share_the_lan_and_keep_their_gateway_local(lan):
    prefix = "n" + secrets.token_hex(2)
    a, b = prefix + "-a", prefix + "-b"
    ra = lan.ves("lab1", [{"name": a, "network": [{"name": "eth0", "ipv4": ["auto"]}]}])
    rb = lan.ves("lab2", [{"name": b, "network": [{"name": "eth0", "ipv4": ["auto"]}]}])
    ip_a, ip_b = _first_ipv4(ra), _first_ipv4(rb)
    # each host leases from its own block of the one subnet
    assert ipaddress.ip_address(ip_a) in POOLS["lab1"] and ipaddress.ip_address(ip_b) in POOLS["lab2"], (ip_a, ip_b)

    # the third place reaches both VEs: ICMP at 100 ms and an echoed TCP connection
    # (a reply counts within 3 s: the point is reachability, on a machine that may be busy)
    with lanclient.Pinger(ip_a, count=10, duration=5, timeout=3) as ping_a, \
            lanclient.Pinger(ip_b, count=10, duration=5, timeout=3) as ping_b:
        ping_a.wait()
        ping_b.wait()
    for result in (ping_a.result(), ping_b.result()):
        assert result["error"] is None and result["sent"] == 10 and result["received"] >= 9, result
    server = subprocess.Popen(
        [str(REPO_ROOT / "tests" / "lab" / "lab"), "exec", "lab2", "--", "lxc-attach", "-P", VES, "-n", b, "--"]
        + lanclient.echo_server_argv(PORT), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while lanclient.TcpProbe(ip_b, PORT, count=1, duration=1).start().wait()["echoed"] != 1:
            assert time.monotonic() < deadline, "no echo server on %s:%d" % (ip_b, PORT)
            time.sleep(0.2)
        with lanclient.TcpProbe(ip_b, PORT, count=10, duration=5, timeout=5) as tcp:
            tcp.wait()
        result = tcp.result()
        assert result["error"] is None and result["echoed"] == 10 and result["breaks"] == 0, result
    finally:
        server.kill()
        server.wait(10)

    # VE to VE across hosts at L2: a's neighbour entry of b is b's own MAC, not a gateway's
    lan.attach("lab1", a, "ping", "-c", "2", "-W", "2", ip_b)
    neigh = lan.attach("lab1", a, "ip", "neigh", "show", ip_b).stdout
    mac_b = lan.attach("lab2", b, "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac_b in neigh, neigh

    # the gateway answers each VE on its own host, and is not on the LAN
    for host, name in (("lab1", a), ("lab2", b)):
        lan.attach(host, name, "ping", "-c", "1", "-W", "2", GATEWAY)
        assert GATEWAY_MAC in lan.attach(host, name, "ip", "neigh", "show", GATEWAY).stdout
    assert lanclient.lan_exec("busybox", "ping", "-c", "1", "-W", "1", GATEWAY, check=False).returncode != 0
    assert lanclient.fdb_port(GATEWAY_MAC) is None
    assert lanclient.fdb_port(mac_b) == "lab2"


def test_announcement_moves_the_neighbour_entry(lan):
    """A VE "moves" from lab1 to lab2 with the same addresses (and, to make the change visible
    in the neighbour entry, another MAC): the LAN's entries keep the old MAC until the VE
    announces itself, then hold the new one at once, and vzlan0 has the MAC on lab2's port."""
    name = "m" + secrets.token_hex(2)
    ip4, ip6 = "10.20.0.30", "fd00:20::1e"
    net = {"name": "eth0", "ipv4": [ip4 + "/24"], "ipv6": [ip6 + "/64"], "gateway4": GATEWAY}
    lan.ves("lab1", [{"name": name, "network": [net]}])
    old_mac = lan.attach("lab1", name, "cat", "/sys/class/net/eth0/address").stdout.strip()
    lanclient.lan_exec("busybox", "ping", "-c", "1", "-W", "2", ip4)
    deadline = time.monotonic() + 10   # IPv6 DAD of the VE's address takes 1-2 s
    while lanclient.lan_exec("busybox", "ping", "-6", "-c", "1", "-W", "1", ip6, check=False).returncode:
        assert time.monotonic() < deadline, "%s does not answer from the LAN" % ip6
    assert lanclient.neighbour(ip4)["lladdr"] == old_mac
    assert lanclient.neighbour(ip6)["lladdr"] == old_mac
    assert lanclient.fdb_port(old_mac) == "lab1"

    lan.absent("lab1", name)
    new_mac = "02:c6:12:aa:00:%02x" % secrets.randbelow(256)
    lan.ves("lab2", [{"name": name, "network": [dict(net, hwaddr=new_mac)]}])
    # nothing told the LAN yet: its entries still name the old MAC
    assert lanclient.neighbour(ip4)["lladdr"] == old_mac
    assert lanclient.neighbour(ip6)["lladdr"] == old_mac

    pid = lan.pid("lab2", name)
    out = lan.py("lab2", """
        from ansible_collections.osvirt.vz.plugins.module_utils import _announce, _antispoof, _ve_net
        actions = _announce.announce(%d, "eth0", %r)
        guard = _antispoof.read_filter(_ve_net.host_link_name(%r, 0, "vzlab-lab2"))
        print(json.dumps({"actions": actions, "guard": guard}))
    """ % (pid, [ip4 + "/24", ip6 + "/64"], name))
    assert out["actions"] == [
        "announce %s on eth0 from %s (gratuitous ARP x2)" % (ip4, new_mac),
        "announce %s on eth0 from %s (unsolicited neighbour advertisement x2)" % (ip6, new_mac)]
    # the frames passed the host-side guard of the VE's link
    assert out["guard"]["active"], out["guard"]
    assert not [r for r in out["guard"]["dropped"] if "ARP" in r or "MAC" in r or "advertisement" in r
                or "source is not" in r], out["guard"]
    assert lanclient.neighbour(ip4)["lladdr"] == new_mac
    assert lanclient.neighbour(ip6)["lladdr"] == new_mac
    assert lanclient.fdb_port(new_mac) == "lab2"
    # and the VE answers at its new place
    lanclient.lan_exec("busybox", "ping", "-c", "1", "-W", "2", ip4)


@pytest.mark.parametrize("address", ["127.0.0.1", "198.18.0.11", "10.20.1.5", "10.20.0.254", "fd00:21::5", "::1"])
def test_lanclient_talks_only_to_ves_of_the_lab_lan(address):
    with pytest.raises(ValueError, match="not a VE address of the lab LAN"):
        lanclient.Pinger(address)
    with pytest.raises(ValueError, match="not a VE address of the lab LAN"):
        lanclient.TcpProbe(address, PORT)
