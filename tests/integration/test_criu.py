# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checkpoint and restore of a running VE with CRIU (what live migration builds on), on this machine.

A busybox VE made by osvirt.vz.ve on a bridge of this test runs a TCP echo server; this machine holds
a connection to it. The VE is checkpointed with lxc-checkpoint (through _criu), stopped, restored on
the same host, and the same connection then still carries data to the same process (same pid inside
the VE).

Needs a CRIU that passes ``criu check`` (``make deps`` builds one, see docs/criu.md). Without one the
test skips with the probe's reason; under CI it fails instead when the CRIU build should have worked
(scripts/criu-build recorded state=failed or nothing at all), and skips only when the host cannot have
a CRIU (state=unsupported) or the kernel fails ``criu check``.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import sys
import time
from pathlib import Path

import pytest

from vzlib import play, sh

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / ".build" / "collections"))

from ansible_collections.osvirt.vz.plugins.module_utils import _criu  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import local_runner  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._engine.config import LxcConfig  # noqa: E402

PORT = 7000


@pytest.fixture
def criu():
    """probe() of this host's CRIU; skips (or fails under CI) when there is none that works."""
    probe = _criu.probe(local_runner)
    if probe["check_ok"]:
        return probe
    status = _criu.build_status()
    if os.environ.get("CI") and probe["path"] is None and status.get("state") != "unsupported":
        pytest.fail("no CRIU although its build should have worked (CI is set: refusing to skip): %s"
                    % probe["reason"], pytrace=False)
    pytest.skip("no usable CRIU: %s" % probe["reason"])


@pytest.fixture
def bridge(vz_root):
    """A bridge of this test with a random 10.24.<n>.0/24 (host side .1), recorded in vz_root."""
    n = random.randint(1, 250)
    name = "vzt%sc" % secrets.token_hex(2)
    sh("ip", "link", "add", name, "type", "bridge")
    try:
        sh("ip", "addr", "add", "10.24.%d.1/24" % n, "dev", name)
        sh("ip", "link", "set", name, "up")
        bridges = vz_root / "net" / "bridges"
        bridges.mkdir(parents=True)
        (bridges / ("%s.json" % name)).write_text(json.dumps({
            "name": name, "ipv4": ["10.24.%d.1/24" % n], "ipv6": [], "pool4": "10.24.%d.0/24" % n,
            "pool6": None, "nat": False, "uplink": None}))
        yield name, "10.24.%d" % n
    finally:
        sh("ip", "link", "del", name, check=False)


def _connect(address, attempts=30):
    for _attempt in range(attempts):
        try:
            return socket.create_connection((address, PORT), timeout=2)
        except OSError:
            time.sleep(0.2)
    raise AssertionError("no TCP connection to %s:%d" % (address, PORT))


def _no_blockers(init, attempts=50):
    """process_blockers() of the VE is empty, once lxc-attach's helper processes have gone."""
    for _attempt in range(attempts):
        if not _criu.process_blockers(init):
            return True
        time.sleep(0.1)
    raise AssertionError(_criu.process_blockers(init))


def _echo(conn, data):
    conn.settimeout(10)
    conn.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = conn.recv(len(data) - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_checkpoint_restore_keeps_tcp_connection(criu, vz_root, cgroup_parent, built_template, bridge, run_playbook):
    templates, _version = built_template
    sh("cp", "-a", templates, vz_root / "templates")
    os.chmod(vz_root, 0o711)
    bridge_name, subnet = bridge
    name, address = "criu-" + secrets.token_hex(2), subnet + ".2"
    ves = vz_root / "ves"
    run_playbook(play([{"name": "ve", "osvirt.vz.ve": {
        "name": name, "template": "busybox", "state": "started", "vz_root": str(vz_root),
        "cgroup_parent": cgroup_parent, "console": False,
        "network": [{"name": "eth0", "bridge": bridge_name, "ipv4": [address + "/24"]}]}}]))

    # ttys: 0 is the default; console: false is needed for LXC 5.0's restore
    config = LxcConfig.load(str(ves / name / "config"))
    assert config.get_one("lxc.tty.max") == "0" and config.get_one("lxc.console.path") == "none"
    assert _criu.dump_blockers(config) == []

    def attach(*argv):
        return sh("lxc-attach", "-P", ves, "-n", name, "--", *argv)

    # a process lxc-attach starts must leave the session and the stdio it got from this machine
    # (CRIU cannot dump a session led from outside the VE, nor pipes to the host), as a daemon would
    attach("sh", "-c", "setsid nc -l -p %d -e cat </dev/null >/dev/null 2>&1 & echo $! > /run/server.pid" % PORT)
    init = sh("lxc-info", "-P", ves, "-n", name, "-pH").stdout.strip()
    assert _no_blockers(init)
    # without setsid the process stays in this machine's session: found, then ended
    attach("sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & echo $! > /run/stray.pid")
    for _attempt in range(50):             # until the forked child has become sleep
        blockers = _criu.process_blockers(init)
        if any("(sleep) is in a session led from outside the VE" in b for b in blockers):
            break
        time.sleep(0.1)
    assert any("(sleep) is in a session led from outside the VE" in b for b in blockers), blockers
    attach("sh", "-c", "kill $(cat /run/stray.pid)")
    assert _no_blockers(init)
    conn = _connect(address)
    try:
        assert _echo(conn, b"before checkpoint\n") == b"before checkpoint\n"
        pid = attach("cat", "/run/server.pid").stdout.strip()
        assert attach("cat", "/proc/%s/comm" % pid).stdout.strip() == "cat"

        images = vz_root / "images"
        dumped = _criu.checkpoint(local_runner, str(ves), name, str(images), stop=True, criu=criu["path"])
        assert sh("lxc-info", "-P", ves, "-n", name, "-sH").stdout.strip() == "STOPPED"
        assert (images / "inventory.img").is_file() and dumped["bytes"] > 0
        assert dumped["stats"].get("frozen_time_us", 0) > 0, dumped

        restored = _criu.restore(local_runner, str(ves), name, str(images), criu=criu["path"])
        assert sh("lxc-info", "-P", ves, "-n", name, "-sH").stdout.strip() == "RUNNING"
        # the host's mount of the rootfs for the restore is gone again (the VE holds its own)
        assert not (ves / name / ".criu-rootfs").exists()
        assert str(ves / name / ".criu-rootfs") not in Path("/proc/self/mountinfo").read_text()

        # the same connection, the same process inside the VE
        assert _echo(conn, b"after restore\n") == b"after restore\n"
        assert attach("cat", "/proc/%s/comm" % pid).stdout.strip() == "cat"
        print("criu %s: checkpoint %.2f s (frozen %.0f ms, %d bytes), restore %.2f s (criu %.0f ms)" % (
            criu["version"], dumped["seconds"], dumped["stats"]["frozen_time_us"] / 1000.0, dumped["bytes"],
            restored["seconds"], restored["stats"].get("restore_time_us", 0) / 1000.0))
    finally:
        conn.close()
        sh("lxc-stop", "-k", "-P", ves, "-n", name, check=False)


def test_checkpoint_failure_reports_criu_log(criu, vz_root):
    """A failed checkpoint raises VzError naming the VE, with CRIU's or LXC's reason."""
    ves = vz_root / "ves"
    ves.mkdir()
    with pytest.raises(_criu.VzError) as failure:
        _criu.checkpoint(local_runner, str(ves), "nothere", str(vz_root / "images"), criu=criu["path"])
    assert "checkpoint of VE nothere failed" in failure.value.message
    assert failure.value.details["cmd"][2] == "lxc-checkpoint"
