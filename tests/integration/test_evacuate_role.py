# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The osvirt.vz.evacuate role through playbooks/evacuate.yml and restore.yml on the two lab hosts.

Three busybox VEs on lab1 (VZ_EVACUATE_COUNT, all running but one, a file written in one of them): check mode
changes nothing; the drain moves all of them to lab2 (running ones running, the stopped one
stopped), marks lab1 draining and records where each went; a second drain changes nothing;
evacuating lab2 then (the last host that accepts VEs), an unknown host, or lab2 towards the
draining lab1 is refused with one message and nothing changes; the restore brings every VE back
with its files, clears the mark and the record; a second restore changes nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from vzlib import play

VZ = "/var/lib/vz"
REPORT = "osvirt.vz.evacuate : Report per VE"
PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
# VZ_EVACUATE_COUNT=10 for the figures of docs/role-evacuate.md (all running but one)
COUNT = max(3, int(os.environ.get("VZ_EVACUATE_COUNT", "3")))
# the lab makes new host keys at every `lab up`: the moves do not check them
TARGET_OPTIONS = {"host_key_checking": "off", "known_hosts": "/dev/null"}


def _state(lab, host, name):
    proc = lab.exec(host, "lxc-info", "-P", VZ + "/ves", "-n", name, "-sH", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"


def _read_json(lab, host, path):
    proc = lab.exec(host, "cat", path, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def _changed(run):
    return {host: stats.get("changed", 0) for host, stats in run.stats.items()}


def _snapshot(lab, names):
    """Where each VE is and in which state, and each host's drain mark and record."""
    return {host: {"ves": {n: _state(lab, host, n) for n in names},
                   "mark": (_read_json(lab, host, VZ + "/host.json") or {}).get("draining"),
                   "record": _read_json(lab, host, VZ + "/evacuated.json")}
            for host in lab.hosts}


def _cleanup(run_playbook, lab, names, template):
    run_playbook(play([
        {"name": "rm ves", "ignore_errors": True,
         "osvirt.vz.ve": {"ves": [{"name": n} for n in names], "state": "absent"}},
        {"name": "rm tpl", "ignore_errors": True, "osvirt.vz.template": {"name": template, "state": "absent"}},
        {"name": "no mark", "ignore_errors": True, "osvirt.vz.host_drain": {"state": "absent", "force": True}},
    ], "vz_hosts"), inventory=lab.inventory)
    for host in lab.hosts:
        for name in names:
            lab.exec(host, "rm", "-rf", "%s/ves/%s.migrated" % (VZ, name), "%s/migrations/%s.json" % (VZ, name),
                     "%s/migrations/%s.incoming" % (VZ, name), check=False)
        lab.exec(host, "rm", "-rf", "%s/templates/%s" % (VZ, template), check=False)


def test_evacuate_and_restore(lab, run_playbook):
    lab1, lab2 = lab.hosts[:2]
    tag = secrets.token_hex(2)
    template = "evac-" + tag
    running = ["ev%s-%02d" % (tag, i) for i in range(1, COUNT)]
    stopped = "ev%s-%02d" % (tag, COUNT)
    names = running + [stopped]
    drain_vars = {"evacuate_host": lab1, "evacuate_target_options": TARGET_OPTIONS, "evacuate_reason": "test"}
    try:
        run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
            {"name": "ves", "osvirt.vz.ve": {
                "template": template, "limits": {"memory": {"ram": "64M", "guarantee": "16M"}},
                "ves": [{"name": n, "state": "started"} for n in running] + [{"name": stopped, "state": "stopped"}]}},
        ], lab1), inventory=lab.inventory)
        lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", running[0], "--", "sh", "-c",
                 "mkdir -p /data && echo kept > /data/note")
        before = _snapshot(lab, names)
        states = dict({n: "RUNNING" for n in running}, **{stopped: "STOPPED"})
        assert before[lab1]["ves"] == states, before

        # check mode: the plan, nothing changes
        run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory, extra_vars=drain_vars, check=True)
        assert _snapshot(lab, names) == before

        # drain: every VE on lab2 in the state it had, lab1 marked, the record says where each went
        started = time.monotonic()
        run = run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory, extra_vars=drain_vars)
        drain_seconds = time.monotonic() - started
        assert {n: _state(lab, lab2, n) for n in names} == states
        assert all(_state(lab, lab1, n) == "ABSENT" for n in names)
        mark = _read_json(lab, lab1, VZ + "/host.json")["draining"]
        assert mark["reason"] == "test" and mark["since"].endswith("Z") and mark["by"], mark
        assert _read_json(lab, lab1, VZ + "/host.json")["cgroup_parent"] == "vzlab-" + lab1
        record = _read_json(lab, lab1, VZ + "/evacuated.json")["ves"]
        assert {n: (e["target"], e["mode"], e["state_before"], e["status"]) for n, e in record.items()} == dict(
            {n: (lab2, "warm", "running", "moved") for n in running}, **{stopped: (lab2, "offline", "stopped", "moved")})
        report = run.task(REPORT, host=lab1)["msg"]
        assert len(report) == COUNT and all("-> %s" % lab2 in line for line in report), report
        print("drain of %d VEs (%d warm, 1 offline): %.1f s wall" % (COUNT, COUNT - 1, drain_seconds))
        print("\n".join(report))

        # idempotent: nothing left to move
        again = run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory, extra_vars=drain_vars)
        assert set(_changed(again).values()) == {0}, again.report()
        assert "nothing to move" in again.task(REPORT, host=lab1)["msg"][0]

        # the host role run again on the drained host keeps the mark (it rewrites host.json)
        run_playbook([{"hosts": lab1, "gather_facts": False, "roles": [{"role": "osvirt.vz.host", "vars": {
            "host_install_packages": False, "host_sysctl": False, "host_bridge_pool4": "{{ lab_pool4 }}"}}]}],
            inventory=lab.inventory)
        assert _read_json(lab, lab1, VZ + "/host.json")["draining"] == mark

        # refusals, each before anything changes
        drained = _snapshot(lab, names)
        for extra, words in (
                ({"evacuate_host": lab2}, "last host that accepts VEs"),
                ({"evacuate_host": lab2, "evacuate_targets": [lab1]}, "draining themselves: " + lab1),
                ({"evacuate_host": "nohost"}, "not a host of the inventory")):
            refused = run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory,
                                   extra_vars=dict(drain_vars, **extra), expect_fail=True)
            messages = " ".join(r.msg for r in refused.failures())
            assert words in messages, (extra, refused.report())
            assert _snapshot(lab, names) == drained, extra

        # restore: every VE back on lab1 in its state with its files, mark and record gone
        started = time.monotonic()
        run = run_playbook(PLAYBOOKS / "restore.yml", inventory=lab.inventory, extra_vars=drain_vars)
        restore_seconds = time.monotonic() - started
        after = _snapshot(lab, names)
        assert after[lab1]["ves"] == before[lab1]["ves"] and set(after[lab2]["ves"].values()) == {"ABSENT"}, after
        assert after[lab1]["mark"] is None and after[lab1]["record"] is None, after
        note = lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", running[0], "--", "cat", "/data/note")
        assert note.stdout == "kept\n"
        print("restore of %d VEs: %.1f s wall" % (COUNT, restore_seconds))
        print("\n".join(run.task(REPORT, host=lab1)["msg"]))

        again = run_playbook(PLAYBOOKS / "restore.yml", inventory=lab.inventory, extra_vars=drain_vars)
        assert set(_changed(again).values()) == {0}, again.report()
    finally:
        _cleanup(run_playbook, lab, names, template)


def test_stops_at_first_failure_then_continues(lab, run_playbook):
    """A move that fails stops the drain; the VEs after it stay; a rerun continues where it stopped."""
    lab1, lab2 = lab.hosts[:2]
    tag = secrets.token_hex(2)
    template = "evac-" + tag
    names = ["ev%s-1" % tag, "ev%s-2" % tag, "ev%s-3" % tag]
    drain_vars = {"evacuate_host": lab1, "evacuate_target_options": TARGET_OPTIONS}
    try:
        for host in (lab1, lab2):
            run_playbook(play([{"name": "template", "osvirt.vz.template": {
                "name": template, "source": {"type": "busybox"}}}], host), inventory=lab.inventory)
        run_playbook(play([{"name": "ves", "osvirt.vz.ve": {
            "template": template, "ves": [{"name": n, "state": "started"} for n in names]}}], lab1),
            inventory=lab.inventory)
        # the second VE's name is taken on lab2 (a stopped VE): its move is refused there
        run_playbook(play([{"name": "blocker", "osvirt.vz.ve": {
            "name": names[1], "template": template, "state": "stopped"}}], lab2), inventory=lab.inventory)

        failed = run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory, extra_vars=drain_vars,
                              expect_fail=True)
        message = " ".join(r.msg for r in failed.failures())
        assert "stopped at %s (to %s)" % (names[1], lab2) in message and "Moved so far: %s" % names[0] in message, \
            failed.report()
        assert _state(lab, lab2, names[0]) == "RUNNING" and _state(lab, lab1, names[0]) == "ABSENT"
        # the failed VE still runs where it was, the one after it was not touched
        assert _state(lab, lab1, names[1]) == "RUNNING" and _state(lab, lab2, names[1]) == "STOPPED"
        assert _state(lab, lab1, names[2]) == "RUNNING" and _state(lab, lab2, names[2]) == "ABSENT"
        assert _read_json(lab, lab1, VZ + "/host.json")["draining"] is not None
        record = _read_json(lab, lab1, VZ + "/evacuated.json")["ves"]
        assert {n: e["status"] for n, e in record.items()} == {names[0]: "moved", names[1]: "moving"}, record

        # the cause goes away; the rerun moves the interrupted VE to where it was going, then the rest
        run_playbook(play([{"name": "unblock", "osvirt.vz.ve": {"name": names[1], "state": "absent"}}], lab2),
                     inventory=lab.inventory)
        run = run_playbook(PLAYBOOKS / "evacuate.yml", inventory=lab.inventory, extra_vars=drain_vars)
        report = run.task(REPORT, host=lab1)["msg"]
        assert [line.split(":")[0] for line in report] == [names[1], names[2]], report
        assert all(_state(lab, lab2, n) == "RUNNING" and _state(lab, lab1, n) == "ABSENT" for n in names)

        run_playbook(PLAYBOOKS / "restore.yml", inventory=lab.inventory, extra_vars=drain_vars)
        assert all(_state(lab, lab1, n) == "RUNNING" and _state(lab, lab2, n) == "ABSENT" for n in names)
        assert _read_json(lab, lab1, VZ + "/host.json").get("draining") is None
    finally:
        _cleanup(run_playbook, lab, names, template)


def test_rolling_maintenance(lab, run_playbook):
    """playbooks/maintenance.yml: each lab host in turn drained, maintained, restored; VEs end where they began."""
    lab1, lab2 = lab.hosts[:2]
    tag = secrets.token_hex(2)
    template = "evac-" + tag
    where = {"ev%s-1" % tag: lab1, "ev%s-2" % tag: lab2}
    marker = VZ + "/maintained-" + tag
    try:
        for name, host in where.items():
            run_playbook(play([
                {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
                {"name": "ve", "osvirt.vz.ve": {"name": name, "template": template, "state": "started"}},
            ], host), inventory=lab.inventory)
        run = run_playbook(PLAYBOOKS / "maintenance.yml", inventory=lab.inventory, extra_vars={
            "maintenance_host_upgrade": False, "maintenance_command": ["touch", marker],
            "evacuate_target_options": TARGET_OPTIONS})
        # one host at a time: lab1's VE went to lab2 and back before lab2 was drained
        for host in (lab1, lab2):
            report = [r for r in run.hosts[host] if r.name == REPORT]
            assert len(report) == 2, [r.name for r in run.hosts[host]]
            name, other = [n for n in where if where[n] == host][0], lab2 if host == lab1 else lab1
            assert [line.split(",")[0] for line in report[0]["msg"] + report[1]["msg"]] == [
                "%s: %s -> %s" % (name, host, other), "%s: %s -> %s" % (name, other, host)], report
            assert lab.exec(host, "test", "-e", marker, check=False).returncode == 0
            assert _read_json(lab, host, VZ + "/host.json").get("draining") is None
        for name, host in where.items():
            assert _state(lab, host, name) == "RUNNING"
            assert _state(lab, lab2 if host == lab1 else lab1, name) == "ABSENT"
    finally:
        for host in (lab1, lab2):
            lab.exec(host, "rm", "-f", marker, check=False)
        _cleanup(run_playbook, lab, list(where), template)
