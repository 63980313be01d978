# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Live address changes inside a real running VE (busybox, bridged on vzbr0), and ve_info's
interfaces with their counters.

A TCP connection to the VE's first address (an echo server inside the VE) stays up while a
second address is added live, answers pings from the host, and is removed again; the VE's init
keeps its pid all along (no restart). Addresses: two free ones of 10.20.0.200-250 (the range of
the VE tests on this machine), checked free before use.
"""

from __future__ import annotations

import os
import random
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vnetlib import vnet
from vzlib import VeStore, kill_all, ping, play, sh

BRIDGE = "vzbr0"
GATEWAY = "10.20.0.1"
PORT = 7007


def _free_addresses(count):
    """``count`` addresses of 10.20.0.200-250 that nothing answers on now."""
    candidates = list(range(200, 251))
    random.shuffle(candidates)
    found = []
    for last in candidates:
        address = "10.20.0.%d" % last
        if sh("busybox", "ping", "-c1", "-W1", address, check=False).returncode != 0:
            found.append(address)
            if len(found) == count:
                return found
    pytest.fail("no %d free addresses in 10.20.0.200-250 on %s" % (count, BRIDGE))
    return []


class Echo:
    """One TCP connection to the echo server inside the VE."""

    def __init__(self, address):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.create_connection((address, PORT), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def roundtrip(self, payload):
        """Send ``payload`` and read it back; the connection must still carry data."""
        self.sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = self.sock.recv(65536)
            assert chunk, "the VE closed the connection"
            got += chunk
        return got == payload


@pytest.fixture
def store(vz_root, cgroup_parent, built_template, run_playbook):
    if not Path("/sys/class/net/%s/bridge" % BRIDGE).is_dir():
        pytest.fail("bridge %s is missing (test_ve.py's bridge fixture or the host role makes it)" % BRIDGE)
    templates, version = built_template
    os.chmod(vz_root, 0o711)
    sh("cp", "-a", "--reflink=auto", str(templates), str(vz_root / "templates"))
    s = VeStore(root=vz_root, parent=cgroup_parent, version=version, prefix="l" + secrets.token_hex(2),
                run=run_playbook)
    try:
        yield s
    finally:
        kill_all(vz_root / "ves")


def _info(store, name, check=False):
    options = {"vz_root": str(store.root), "name": [name], "usage": False}
    run = store.run(play([{"name": "info", "osvirt.vz.ve_info": options}]), check=check)
    res = run.task("info")
    assert res["changed"] is False
    return res["ves"][0]


def test_live_address_while_connection_stays_up(store):
    name = store.name("live")
    first, second = _free_addresses(2)
    store.run(play([store.task("create", name=name, template="busybox", state="started",
                               network=[{"name": "eth0", "bridge": BRIDGE, "ipv4": [first + "/24"],
                                         "gateway4": GATEWAY}])]))
    pid = int(sh("lxc-info", "-P", str(store.ves), "-n", name, "-pH").stdout)
    server = subprocess.Popen(["lxc-attach", "-P", str(store.ves), "-n", name, "--",
                               "busybox", "nc", "-l", "-p", str(PORT), "-e", "cat"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        conn = Echo(first)
        assert conn.roundtrip(b"before\n")

        # ve_info: configuration and the live view, the same addresses
        info = _info(store, name)
        (iface,) = info["interfaces"]
        assert iface["name"] == "eth0" and iface["mode"] == "bridged" and iface["bridge"] == BRIDGE
        assert iface["ipv4"] == [first + "/24"] and iface["gateway4"] == GATEWAY
        assert iface["host_link"] and Path("/sys/class/net", iface["host_link"]).exists()
        assert iface["live"]["ipv4"] == [first + "/24"] and iface["live"]["state"] == "up"
        assert iface["live"]["hwaddr"] == iface["hwaddr"] and iface["live"]["mtu"] == 1500
        counters = iface["counters"]
        assert counters["state"] == "up" and counters["rx_bytes"] > 0 and counters["tx_bytes"] > 0

        # add the second address live: check only, real, again
        add = {"add": [second + "/24"]}
        assert vnet("apply_addresses", pid, "eth0", check_only=True, **add)["result"] == \
            ["add %s/24 to eth0" % second]
        assert not ping(second, attempts=1)
        assert vnet("apply_addresses", pid, "eth0", **add)["result"] == ["add %s/24 to eth0" % second]
        assert vnet("apply_addresses", pid, "eth0", **add)["result"] == []
        assert ping(second), "the address added live does not answer"
        assert conn.roundtrip(b"x" * 200000), "the connection to the first address broke"

        # ve_info shows it live (not configured: the ve module owns the configuration), and the
        # counters grew by the 200 kB the VE echoed
        after = _info(store, name, check=True)["interfaces"][0]
        assert after["ipv4"] == [first + "/24"]
        assert after["live"]["ipv4"] == [first + "/24", second + "/24"]
        assert after["counters"]["tx_bytes"] - counters["tx_bytes"] >= 200000
        assert after["counters"]["rx_bytes"] - counters["rx_bytes"] >= 200000
        assert after["counters"]["tx_packets"] > counters["tx_packets"]

        # remove it again
        remove = {"remove": [second + "/24"]}
        assert vnet("apply_addresses", pid, "eth0", **remove)["result"] == ["remove %s/24 from eth0" % second]
        assert vnet("apply_addresses", pid, "eth0", check_only=True, **remove)["result"] == []
        assert not ping(second, attempts=1)
        assert conn.roundtrip(b"after\n"), "the connection to the first address broke"
        assert int(sh("lxc-info", "-P", str(store.ves), "-n", name, "-pH").stdout) == pid
        conn.sock.close()

        # a frozen VE's namespace is read the same way (netlink needs none of its processes)
        store.run(play([store.task("freeze", name=name, state="frozen")]))
        frozen = _info(store, name)
        assert frozen["state"] == "frozen" and frozen["interfaces"][0]["live"]["ipv4"] == [first + "/24"]

        # a stopped VE: configuration only, live fields null
        store.run(play([store.task("stop", name=name, state="stopped")]))
        stopped = _info(store, name)["interfaces"][0]
        assert stopped["ipv4"] == [first + "/24"] and stopped["live"] is None and stopped["counters"] is None
    finally:
        server.kill()
        server.wait()
