# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""osvirt.vz.ve_migrate mode live (CRIU) between the two lab hosts.

A busybox VE runs a counter loop (started with setsid, so CRIU can dump it); after the live move
the same process (same pid inside the VE) still counts on lab2, from where it was: memory and
processes survived, nothing booted. Skipped with the reason where this machine has no usable
CRIU (``_criu.probe``); where the probe says CRIU works, a failure is a failure, CI or not.
A VE CRIU cannot dump with ``fallback: fail`` is refused before anything is frozen.
"""

from __future__ import annotations

import importlib
import secrets
import subprocess
import time

import pytest

from test_migrate import VZ, _attach, _state, _target
from vzlib import play


def _criu_probe():
    try:
        criu = importlib.import_module("ansible_collections.osvirt.vz.plugins.module_utils._criu")
    except ImportError:
        return None, "this collection has no CRIU support (module_utils/_criu.py)"

    def run(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr
    probe = criu.probe(run)
    return probe, None if probe.get("check_ok") else "CRIU is not usable here: %s" % probe.get("reason")


def test_live_migration_keeps_processes(lab, run_playbook):
    probe, reason = _criu_probe()
    if reason:
        pytest.skip(reason)
    lab1, lab2 = lab.hosts[:2]
    template = "migl-" + secrets.token_hex(3)
    name = "l" + secrets.token_hex(3)
    try:
        run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
            {"name": "ve", "osvirt.vz.ve": {
                "name": name, "template": template, "state": "started",
                "network": [{"ipv4": ["10.20.0.81/24"], "gateway4": "10.20.0.1"}]}},
        ], lab1), inventory=lab.inventory)
        _attach(lab, lab1, name, "setsid", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; "
                "usleep 50000; done </dev/null >/dev/null 2>&1 &")
        time.sleep(1)
        pid = _attach(lab, lab1, name, "sh", "-c", "pidof -s sh; cat /tmp/count").stdout.split()
        task = {"name": "migrate", "osvirt.vz.ve_migrate": {"name": name, "target": _target(lab2), "mode": "live"}}
        result = run_playbook(play([task], lab1), inventory=lab.inventory).task("migrate", host=lab1)
        assert result["mode"] == "live" and result["plan"][1] == "checkpoint", result.result
        assert _state(lab, lab1, name) == "ABSENT" and _state(lab, lab2, name) == "RUNNING"
        time.sleep(0.5)
        after = _attach(lab, lab2, name, "sh", "-c", "cat /tmp/count; sleep 0.3; cat /tmp/count").stdout.split()
        assert int(after[0]) > int(pid[1]) and int(after[1]) > int(after[0]), (pid, after)
        assert _attach(lab, lab2, name, "test", "-d", "/proc/%s" % pid[0], check=False).returncode == 0
    finally:
        run_playbook(play([
            {"name": "rm ve", "ignore_errors": True, "osvirt.vz.ve": {"name": name, "state": "absent"}},
            {"name": "rm tpl", "ignore_errors": True, "osvirt.vz.template": {"name": template, "state": "absent"}},
        ], "vz_hosts"), inventory=lab.inventory)
        for host in (lab1, lab2):
            lab.exec(host, "rm", "-rf", "%s/templates/%s" % (VZ, template), "%s/migrations/%s.json" % (VZ, name),
                     "%s/migrations/%s.incoming" % (VZ, name), check=False)
