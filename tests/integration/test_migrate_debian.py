# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""A debian-12 VE (systemd) moved warm lab1 -> lab2, live lab2 -> lab1 and offline lab1 -> lab2:
after each move systemd is ``running`` on the target, a file written before the first move is
there, unchanged, and the VE has its address. Live goes as far as CRIU allows on this host: the
VE moves with its processes (systemd's pid and start time unchanged), or, where CRIU cannot dump
it, the refusal names why and nothing changed on either host.

Soak only (VZ_MIGRATE_SOAK=1, set by `make soak-migrate`): debootstrap of debian-12 on this
machine (the lab hosts have no route to a mirror), its root file system as a tarball that
lab1's template module imports (checksum verified), then the migration copies the template to
lab2 (copy_template) with the private area. Several minutes on a loaded machine.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import time

import pytest

from test_migrate import VZ, _state, remove_from_lab
from test_migrate_live import _criu_probe
from test_migrate_faults import _journal, _one_copy, _task
from test_template_build import DEBIAN, _drop_store, _new_store
from vzlib import play

GATEWAY = "10.20.0.1"
ADDRESS = "10.20.0.77"

pytestmark = pytest.mark.skipif(os.environ.get("VZ_MIGRATE_SOAK") != "1",
                                reason="soak only: VZ_MIGRATE_SOAK=1 (make soak-migrate)")


def _systemd_state(lab, host, name, timeout=120):
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state = lab.exec(host, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--",
                         "systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(1)
    return state


def test_debian12_warm(lab, run_playbook):
    lab1, lab2 = lab.hosts[:2]
    store = _new_store("vz-test-migdeb-")
    template, name = "mdeb-" + secrets.token_hex(3), "d" + secrets.token_hex(3)
    tarball = store.root / "debian-12.tar"
    try:
        run_playbook(play([dict(store.template("debian-12", DEBIAN), name="debian-12")]), timeout=1800)
        rootfs = store.rootfs("debian-12", store.versions("debian-12")[-1])
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
                       check=True)
        os.chmod(str(store.root), 0o755)
        sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
        run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {
                "type": "tarball", "url": str(tarball), "sha256": sha}}},
            {"name": "ve", "osvirt.vz.ve": {
                "name": name, "template": template, "state": "started", "wait_for": "running", "wait_timeout": 180,
                "console": False,   # LXC 5.0 cannot restore a VE with a console (docs/criu.md)
                "network": [{"ipv4": [ADDRESS + "/24"], "gateway4": GATEWAY}]}},
        ], lab1), inventory=lab.inventory, timeout=1800)
        assert _systemd_state(lab, lab1, name) == "running"
        note = secrets.token_hex(16)
        lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--", "sh", "-c",
                 "echo %s > /root/moved.txt && sync" % note)

        run = run_playbook(play([_task(name, lab2, mode="warm")], lab1), inventory=lab.inventory, timeout=1800)
        result = run.task("migrate", host=lab1)
        print("debian-12 warm: downtime %s s, stages %s" % (result["downtime"], result["stages"]))
        assert result.changed and result["mode"] == "warm" and "template" in result["stages"], result.result
        _one_copy(lab, name, lab2, lab1)
        assert _journal(lab, lab1, name) is None and _journal(lab, lab2, name) is None
        assert _systemd_state(lab, lab2, name) == "running"
        assert lab.exec(lab2, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--",
                        "cat", "/root/moved.txt").stdout.strip() == note
        assert ADDRESS in lab.exec(lab2, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--",
                                   "ip", "-4", "addr", "show", "eth0").stdout
        assert _state(lab, lab1, name) == "ABSENT"

        # live back to lab1, as far as CRIU allows
        probe, reason = _criu_probe()
        init = _init_of(lab, lab2, name)
        live = dict(_task(name, lab1, mode="live"), ignore_errors=True)   # moved or refused: both are looked at
        run = run_playbook(play([live], lab2), inventory=lab.inventory, timeout=1800)
        result = run.task("migrate", host=lab2)
        if result.failed:
            print("debian-12 live refused (%s): %s" % (reason or "criu %s" % probe.get("version"), result.msg))
            # refused by the preflight, before anything was frozen: the same systemd runs on
            assert "cannot move live to %s" % lab1 in result.msg, result.msg
            _one_copy(lab, name, lab2, lab1)
            assert _init_of(lab, lab2, name) == init
            assert _systemd_state(lab, lab2, name) == "running"
            here = lab2
        else:
            print("debian-12 live (criu %s): downtime %s s, stages %s" % (probe.get("version"), result["downtime"],
                                                                          result["stages"]))
            assert result["mode"] == "live", result.result
            _one_copy(lab, name, lab1, lab2)
            assert _systemd_state(lab, lab1, name) == "running"
            # the same systemd: nothing booted on the target
            assert _init_of(lab, lab1, name) == init, (init, _init_of(lab, lab1, name))
            here = lab1
        assert _note(lab, here, name) == note

        # offline to the other host: a clean shutdown, one copy, a boot there
        there = lab1 if here == lab2 else lab2
        run = run_playbook(play([_task(name, there, mode="offline")], here), inventory=lab.inventory, timeout=1800)
        result = run.task("migrate", host=here)
        print("debian-12 offline: downtime %s s, stages %s" % (result["downtime"], result["stages"]))
        assert result.changed and result["mode"] == "offline", result.result
        _one_copy(lab, name, there, here)
        assert _systemd_state(lab, there, name) == "running"
        assert _note(lab, there, name) == note
    finally:
        remove_from_lab(run_playbook, lab, name, template)
        _drop_store(store)


def _init_of(lab, host, name):
    """The VE's init seen from inside: its pid there and its start time (both survive a restore)."""
    return lab.exec(host, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--", "sh", "-c",
                    "cut -d' ' -f1,22 /proc/1/stat").stdout.strip()


def _note(lab, host, name):
    return lab.exec(host, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--clear-env", "--",
                    "cat", "/root/moved.txt").stdout.strip()
