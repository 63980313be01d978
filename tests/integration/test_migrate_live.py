# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""osvirt.vz.ve_migrate mode live (CRIU) between the two lab hosts.

A busybox VE runs a counter loop (started with setsid, so CRIU can dump it) and a TCP echo
server; a client on the machine's side of the lab LAN holds a connection to it through the move,
which does not break. After the live move the same process (same pid inside the VE) still counts on lab2, from where it was: memory and
processes survived, nothing booted. Skipped with the reason where this machine has no usable
CRIU (``_criu.probe``); where the probe says CRIU works, a failure is a failure, CI or not.
A VE CRIU cannot dump with ``fallback: fail`` is refused before anything is frozen.
"""

from __future__ import annotations

import importlib
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_migrate import VZ, _attach, _state, _target, drop_reservations
import lanclient
from vzlib import play

ADDRESS = "10.20.0.81"


def _criu_probe():
    collections = str(Path(__file__).resolve().parents[2] / ".build" / "collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    try:
        criu = importlib.import_module("ansible_collections.osvirt.vz.plugins.module_utils._criu")
    except ImportError:
        return None, "this collection has no CRIU support (module_utils/_criu.py)"

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr
    probe = criu.probe(run)
    return probe, None if probe.get("check_ok") else "CRIU is not usable here: %s" % probe.get("reason")


def task_of(name, target):
    return {"name": "migrate", "osvirt.vz.ve_migrate": {"name": name, "target": _target(target), "mode": "live"}}


def test_live_migration_keeps_processes(lab, run_playbook):
    probe, reason = _criu_probe()
    if reason:
        pytest.skip(reason)
    lab1, lab2 = lab.hosts[:2]
    template = "migl-" + secrets.token_hex(3)
    name = "l" + secrets.token_hex(3)
    other = name + "-c"
    try:
        run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
            {"name": "other", "osvirt.vz.ve": {"name": other, "template": template, "state": "started"}},
            {"name": "ve", "osvirt.vz.ve": {
                "name": name, "template": template, "state": "started", "console": False,
                "network": [{"ipv4": [ADDRESS + "/24"], "gateway4": "10.20.0.1"}]}},
        ], lab1), inventory=lab.inventory)
        # a VE with a console cannot be restored by LXC 5.0: refused before anything is frozen
        refused = run_playbook(play([dict(task_of(other, lab2), name="refused")], lab1), inventory=lab.inventory,
                               expect_fail=True).task("refused", host=lab1)
        assert "cannot move live to %s" % lab2 in refused.msg and "console" in refused.msg, refused.msg
        assert _state(lab, lab1, other) == "RUNNING" and _state(lab, lab2, other) == "ABSENT"
        # the counter leaves lxc-attach's session and stdio (CRIU dumps no process led from outside)
        _attach(lab, lab1, name, "sh", "-c", "setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; "
                "usleep 50000; done' </dev/null >/dev/null 2>&1 & echo $! > /tmp/counter.pid")
        _attach(lab, lab1, name, "sh", "-c", "setsid %s </dev/null >/dev/null 2>&1 &"
                % " ".join(lanclient.echo_server_argv(7007)))
        time.sleep(1.5)   # lxc-attach's short-lived helpers are gone by then
        # the counter's first line may come late on a loaded machine
        for _attempt in range(100):
            pid = _attach(lab, lab1, name, "sh", "-c", "cat /tmp/counter.pid /tmp/count 2>/dev/null",
                          check=False).stdout.split()
            if len(pid) == 2:
                break
            time.sleep(0.2)
        assert len(pid) == 2, "the counter inside the VE never wrote /tmp/count: %r" % pid
        task = task_of(name, lab2)
        # a client on the LAN side holds a TCP connection to the VE and pings it during the move
        with lanclient.TcpProbe(ADDRESS, 7007, duration=120, timeout=15) as tcp, lanclient.Pinger(ADDRESS, duration=120) as ping:
            time.sleep(0.5)
            result = run_playbook(play([task], lab1), inventory=lab.inventory).task("migrate", host=lab1)
            time.sleep(1)
        print("live migration: TCP %s; pings %s" % (tcp.result(), ping.result()))
        assert tcp.result()["echoed"] > 0 and tcp.result()["breaks"] == 0, tcp.result()   # the connection survived
        assert result["mode"] == "live" and "checkpoint" in result["plan"], result.result
        print("live migration: stages %s, downtime %s" % (result["stages"], result["downtime"]))
        assert _state(lab, lab1, name) == "ABSENT" and _state(lab, lab2, name) == "RUNNING"
        time.sleep(0.5)
        after = _attach(lab, lab2, name, "sh", "-c", "cat /tmp/count; sleep 0.3; cat /tmp/count").stdout.split()
        assert int(after[0]) > int(pid[1]) and int(after[1]) > int(after[0]), (pid, after)
        assert _attach(lab, lab2, name, "test", "-d", "/proc/%s" % pid[0], check=False).returncode == 0
    finally:
        run_playbook(play([
            {"name": "rm ve", "ignore_errors": True, "osvirt.vz.ve": {
                "state": "absent", "ves": [{"name": name}, {"name": other}]}},
            {"name": "rm tpl", "ignore_errors": True, "osvirt.vz.template": {"name": template, "state": "absent"}},
        ], "vz_hosts"), inventory=lab.inventory)
        for host in (lab1, lab2):
            lab.exec(host, "rm", "-rf", "%s/templates/%s" % (VZ, template), "%s/migrations/%s.json" % (VZ, name),
                     "%s/migrations/%s.incoming" % (VZ, name), check=False)
        drop_reservations(lab, name)
