# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""NAT of osvirt.vz.bridge across two lab hosts (tests/lab/lab), over real SSH.

lab1 gets a bridge with a random name and subnet, ``nat: true`` and ``uplink: eth0`` (its lab
interface, 198.18.0.11). Behind the bridge sits a network namespace this test makes (a process
started with ``unshare --net`` inside lab1, a veth into the bridge, an address of the bridge's
subnet, the default route via the bridge). From there a TCP connection goes to a listener the
test starts in lab2 (198.18.0.12), which must see lab1's address as the peer: without the
masquerade rule the private source address would arrive (and lab2 could not answer it).
Everything made is removed at the end, whatever happens; lab1's ip_forward is put back.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import time
from pathlib import Path

from vzlib import play

LAB_SCRIPT = Path(__file__).resolve().parents[1] / "lab" / "lab"
LAB1_ADDR = "198.18.0.11"
LAB2_ADDR = "198.18.0.12"

# Accept one connection, print the peer's address, answer "ok". Prints "ready" once listening.
LISTENER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
srv.settimeout(60)
print("ready", flush=True)
conn, peer = srv.accept()
conn.sendall(b"ok")
conn.close()
print(peer[0], flush=True)
"""

CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as conn:
    print(conn.recv(16).decode())
"""


def _lab_popen(host, *argv):
    return subprocess.Popen([str(LAB_SCRIPT), "exec", host, "--", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, what, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s" % what)


def _stop(proc):
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_nat_from_a_namespace_behind_the_bridge_to_another_host(lab, four_steps, run_playbook):
    assert {"lab1", "lab2"} <= set(lab.hosts), lab.hosts
    bridge = "vzn-%s.0" % secrets.token_hex(2)
    octet = random.randrange(1, 250)
    subnet_gw, client_addr = "10.77.%d.1" % octet, "10.77.%d.2" % octet
    veth = "vzn%s" % secrets.token_hex(3)
    port = str(random.randrange(20000, 40000))
    chain = "nat_" + bridge.replace("-", "_h").replace(".", "_d")
    task = {"osvirt.vz.bridge": {"name": bridge, "ipv4": [subnet_gw + "/24"], "nat": True,
                                 "uplink": "eth0", "pool4": "10.77.%d.0/25" % octet}}
    forward_before = lab.exec("lab1", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    holder = listener = None
    try:
        result = four_steps(task, hosts="lab1", inventory=lab.inventory)
        real = result.steps["lab1"][1]
        rule = 'ip saddr 10.77.%d.0/24 ip daddr != 10.77.%d.0/24 oifname "eth0" masquerade' % (octet, octet)
        assert real["bridge"]["nat_rules"] == [rule]
        assert "set NAT chain ip osvirt_vz_nat %s of %s: %s" % (chain, bridge, rule) in real["actions"]
        listing = lab.exec("lab1", "nft", "list", "chain", "ip", "osvirt_vz_nat", chain).stdout
        assert rule in listing, listing
        assert lab.exec("lab1", "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"

        # the namespace behind the bridge: the process holding it is the Popen itself
        # (lab exec, nsenter and unshare each exec the next one)
        holder = _lab_popen("lab1", "unshare", "--net", "sleep", "300")
        pid = str(holder.pid)
        _wait_for(lambda: lab.exec("lab1", "cat", "/proc/%s/comm" % pid, check=False).stdout.strip()
                  == "sleep", "the namespace holder")
        inside = ("nsenter", "-t", pid, "--net")
        lab.exec("lab1", "ip", "link", "add", veth + "h", "type", "veth", "peer", "name", veth + "c",
                 "netns", pid)
        lab.exec("lab1", "ip", "link", "set", veth + "h", "master", bridge, "up")
        lab.exec("lab1", *inside, "ip", "link", "set", "lo", "up")
        lab.exec("lab1", *inside, "ip", "addr", "add", client_addr + "/24", "dev", veth + "c")
        lab.exec("lab1", *inside, "ip", "link", "set", veth + "c", "up")
        lab.exec("lab1", *inside, "ip", "route", "add", "default", "via", subnet_gw)

        listener = _lab_popen("lab2", "/usr/bin/python3", "-c", LISTENER, LAB2_ADDR, port)
        assert listener.stdout.readline().strip() == "ready", listener.stderr.read()
        reply = lab.exec("lab1", *inside, "/usr/bin/python3", "-c", CLIENT, LAB2_ADDR, port,
                         check=False, timeout=60)
        assert reply.returncode == 0 and reply.stdout.strip() == "ok", (reply.stdout, reply.stderr)
        out, err = listener.communicate(timeout=30)
        assert out.strip() == LAB1_ADDR, (out, err)
    finally:
        _stop(listener)
        _stop(holder)   # the namespace and the veth pair go with it
        run_playbook(play([{"name": "remove", "osvirt.vz.bridge": {"name": bridge, "state": "absent"}}],
                          "lab1"), inventory=lab.inventory)
        if forward_before in ("0", "1"):
            lab.exec("lab1", "sysctl", "-qw", "net.ipv4.ip_forward=" + forward_before, check=False)
    assert lab.exec("lab1", "ip", "link", "show", bridge, check=False).returncode != 0
    assert chain not in lab.exec("lab1", "nft", "list", "ruleset").stdout
    assert lab.exec("lab1", "test", "-e", "/var/lib/vz/net/bridges/%s.json" % bridge,
                    check=False).returncode != 0
