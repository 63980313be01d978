# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host restart: every VE process killed at once, then what the host does at boot.

A power cut, as far as one machine can show it without rebooting: SIGKILL of every process of
the VEs and of their LXC monitors at the same moment, so nothing shuts down in order (no
post-stop hook, the cgroups left behind, LXC's lock files and the VEs' leases as they were).
Then the boot: ``/usr/libexec/osvirt-vz/autostart <vz_root>`` (what the host role's unit runs
where systemd runs, and what the role asks for elsewhere): ``lxc-autostart -P <vz_root>/ves``
after removing the cgroups the killed VEs left, which LXC refuses to start into. Every autostart VE must be back with its
limits in the cgroup files, its network rate, its anti-spoofing chain and its addresses; the VE
without autostart stays stopped; ve_info shows each VE as it is and a module run afterwards has
nothing to do.

The hook and the boot helper are installed as the host role installs them (its net_hook
tasks), not taken from an earlier test. Addresses 10.20.0.241-243 only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import features  # noqa: E402  pylint: disable=wrong-import-position
from test_ve import BRIDGE, GATEWAY, HOST_PYTHON, bridge, ctx  # noqa: E402,F401  pylint: disable=unused-import
from vzlib import play, sh  # noqa: E402

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"
CG = Path("/sys/fs/cgroup")
MBIT = 10 ** 6


def _cgroup_pids(parent, name):
    """Every process in a VE's cgroups and its monitor's, in every hierarchy."""
    pids = set()
    for mount in CG.iterdir():
        for top in (mount / parent / name, mount / (parent + ".monitor") / name):
            for current, _dirs, files in os.walk(top):
                if "cgroup.procs" in files:
                    pids.update(int(p) for p in (Path(current) / "cgroup.procs").read_text().split())
    return pids


def _power_cut(ctx, names):
    """SIGKILL every process of the VEs and their monitors at once; wait until all are gone."""
    pids = set()
    for name in names:
        pids |= _cgroup_pids(ctx.parent, name)
    assert pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while any(Path("/proc/%d" % pid).exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path("/proc/%d" % pid).exists() for pid in pids)


def _cgroup(ctx, controller, name, file_name):
    return (CG / controller / ctx.parent / name / file_name).read_text().strip()


def _shaping(*args):
    code = ("import json, sys; sys.path.insert(0, %r); import _shaping; "
            "print(json.dumps(_shaping.read_shaping(%r)))" % (str(MODULE_UTILS), args[0]))
    return json.loads(sh(HOST_PYTHON, "-c", code).stdout)


def _guard_chain(link):
    return sh("nft", "list", "chain", "netdev", "osvirt_vz_guard", "ve_" + link, check=False)


def test_every_autostart_ve_comes_back_after_a_power_cut(ctx, run_playbook):
    missing = [features.why_not(f) for f in ("ifb", "ebpf", "nft_netdev") if not features.have(f)]
    if missing:   # what such a host gets (a rate refused, a VE that does not start unguarded): test_limits_net.py
        pytest.skip("this host cannot shape or guard VE links: %s" % "; ".join(missing))
    hook = {"name": "osvirt.vz.host", "tasks_from": "net_hook"}
    run_playbook(play([{"name": "hook", "ansible.builtin.include_role": hook}]))
    limits = {"cpu": {"limit": "50%"}, "memory": {"ram": "96M"}, "numproc": 64, "net": {"rate": "8Mbit"}}
    names = [ctx.name(s) for s in ("a", "b", "c")]
    ves = [{"name": n, "autostart": n != names[2], "limits": limits,
            "network": [{"name": "eth0", "bridge": BRIDGE, "ipv4": ["10.20.0.%d/24" % (241 + i)],
                         "gateway4": GATEWAY}]} for i, n in enumerate(names)]
    ctx.run(play([ctx.task("create", template="busybox", state="started", ves=ves)]))
    links = {n: json.loads((ctx.ves / n / "ve.json").read_text())["network"][0]["host_link"] for n in names}

    _power_cut(ctx, names)
    assert all(ctx.lxc_state(n) == "STOPPED" for n in names)
    info = ctx.run(play([{"name": "info", "osvirt.vz.ve_info": {"vz_root": str(ctx.root), "name": names}}]))
    assert [(ve["state"], ve["pid"]) for ve in info.task("info").result["ves"]] == [("stopped", None)] * 3

    boot = sh("/usr/libexec/osvirt-vz/autostart", str(ctx.root), check=False, timeout=120)
    assert boot.returncode == 0, boot.stdout + boot.stderr + "".join(
        (ctx.ves / n / "lxc.log").read_text()[-3000:] for n in names if (ctx.ves / n / "lxc.log").exists())
    for i, name in enumerate(names[:2]):
        assert ctx.lxc_state(name) == "RUNNING", (name, boot.stdout + boot.stderr)
        assert _cgroup(ctx, "memory", name, "memory.limit_in_bytes") == str(96 << 20)
        assert _cgroup(ctx, "pids", name, "pids.max") == "64"
        assert _cgroup(ctx, "cpu", name, "cpu.cfs_quota_us") == "50000"
        shaping = _shaping(links[name])
        assert shaping and shaping.get("rate_bps") == 8 * MBIT, shaping
        guard = _guard_chain(links[name])
        assert guard.returncode == 0 and "10.20.0.%d" % (241 + i) in guard.stdout, guard.stdout + guard.stderr
        addresses = ctx.attach(name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert "10.20.0.%d/24" % (241 + i) in addresses, addresses
    assert ctx.lxc_state(names[2]) == "STOPPED"
    # a stopped VE keeps its chain (bound to the link name, docs/net-security.md); no shaping without a link
    assert _shaping(links[names[2]]) is None

    info = ctx.run(play([{"name": "info", "osvirt.vz.ve_info": {"vz_root": str(ctx.root), "name": names}}]))
    states = {ve["name"]: ve["state"] for ve in info.task("info").result["ves"]}
    assert states == {names[0]: "running", names[1]: "running", names[2]: "stopped"}, states
    # the modules see nothing to repair, and the stopped VE starts as ever
    again = ctx.run(play([ctx.task("again", template="busybox", state="started", ves=ves[:2])]))
    assert again.task("again").changed is False, again.task("again").result
    ctx.run(play([ctx.task("start c", name=names[2], state="started")]))
    assert ctx.lxc_state(names[2]) == "RUNNING"
