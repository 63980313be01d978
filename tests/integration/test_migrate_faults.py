# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""osvirt.vz.ve_migrate when things go wrong, between the two lab hosts over real SSH.

Faults: the module SIGKILLed before the final copy (its guardian rolls back: the source runs
again, the target has nothing) and after the commit (completed: only the target runs); the
target's start failing (a pre-start hook that fails on lab2 only); the lab link cut while the VE
is frozen (nft drop inside lab1's namespace: the source runs again, the target's agent removes
its uncommitted copy by itself, a rerun converges); a second migration while one runs (busy);
preflight refusals (address leased on the target, name taken) that change nothing on either host.
After each: exactly one copy runs, the private files' checksums are unchanged.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time

import pytest

from test_migrate import VZ, _exists, _private_sums, _state, _target, drop_reservations, reservation
from vzlib import play

GATEWAY = "10.20.0.1"
FAULT = "OSVIRT_VZ_MIGRATE_FAULT"


@pytest.fixture(scope="module")
def lab_template(lab, harness, tmp_path_factory):
    name = "migf-" + secrets.token_hex(3)
    runner = harness.PlaybookRunner(tmp_path_factory.mktemp("migf"), lab.inventory)
    runner(play([{"name": "t", "osvirt.vz.template": {"name": name, "source": {"type": "busybox"}}}],
                lab.hosts[0]), inventory=lab.inventory)
    yield name
    runner(play([{"name": "rm", "ignore_errors": True, "osvirt.vz.template": {"name": name, "state": "absent"}}],
                "vz_hosts"), inventory=lab.inventory)
    for host in lab.hosts[:2]:
        lab.exec(host, "rm", "-rf", "%s/templates/%s" % (VZ, name), check=False)


def _make_ve(run_playbook, lab, host, template, address):
    name = "f" + secrets.token_hex(3)
    run_playbook(play([{"name": "ve", "osvirt.vz.ve": {
        "name": name, "template": template, "state": "started",
        "network": [{"ipv4": [address + "/24"], "gateway4": GATEWAY}]}}], host), inventory=lab.inventory)
    lab.exec(host, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--", "sh", "-c",
             "mkdir -p /data && head -c 200000 /dev/urandom > /data/blob")
    return name


def _task(name, target, fault=None, **options):
    task = {"name": "migrate", "osvirt.vz.ve_migrate": dict({"name": name, "target": _target(target)}, **options)}
    if fault:
        task["environment"] = {FAULT: fault}
    return task


def _journal(lab, host, name):
    proc = lab.exec(host, "cat", "%s/migrations/%s.json" % (VZ, name), check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def _wait_settled(lab, name, hosts, timeout=60):
    """Until no journal of ``name`` is left on ``hosts`` (a guardian or an agent finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_journal(lab, h, name) is None for h in hosts):
            return True
        time.sleep(0.5)
    return False


def _one_copy(lab, name, running_on, other):
    assert _state(lab, running_on, name) == "RUNNING", (name, running_on)
    assert _state(lab, other, name) == "ABSENT", (name, other)
    assert not _exists(lab, other, "%s/migrations/%s.incoming" % (VZ, name))


def _cleanup(run_playbook, lab, names):
    run_playbook(play([{"name": "rm", "ignore_errors": True, "osvirt.vz.ve": {
        "state": "absent", "ves": [{"name": n} for n in names]}}], "vz_hosts"), inventory=lab.inventory)
    for host in lab.hosts[:2]:
        for name in names:
            lab.exec(host, "rm", "-rf", "%s/ves/%s.migrated" % (VZ, name), "%s/migrations/%s.json" % (VZ, name),
                     "%s/migrations/%s.incoming" % (VZ, name), check=False)
        drop_reservations(lab, name)


def test_killed_and_failing_migrations_leave_one_copy(lab, run_playbook, lab_template, tmp_path):
    lab1, lab2 = lab.hosts[:2]
    names = []
    try:
        # the module killed while the VE is frozen, before the final copy: the guardian rolls back
        name = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.71")
        names.append(name)
        sums = _private_sums(lab, lab1, name)
        run = run_playbook(play([_task(name, lab2, fault="final_sync:kill")], lab1), inventory=lab.inventory,
                           expect_fail=True)
        assert _wait_settled(lab, name, (lab1, lab2)), (_journal(lab, lab1, name), _journal(lab, lab2, name))
        _one_copy(lab, name, lab1, lab2)
        assert _private_sums(lab, lab1, name)["./data/blob"] == sums["./data/blob"]

        # a rerun converges; the module killed after the commit: the guardian completes
        run = run_playbook(play([_task(name, lab2, fault="fence:kill")], lab1), inventory=lab.inventory,
                           expect_fail=True)
        assert _wait_settled(lab, name, (lab1, lab2))
        _one_copy(lab, name, lab2, lab1)
        assert not _exists(lab, lab1, "%s/ves/%s" % (VZ, name))
        assert _private_sums(lab, lab2, name)["./data/blob"] == sums["./data/blob"]
        run = run_playbook(play([_task(name, lab2)], lab1), inventory=lab.inventory)
        assert not run.task("migrate", host=lab1).changed

        # the target's start fails (a pre-start hook that refuses on lab2 only): the source runs again
        hook = tmp_path / "refuse-on-lab2"
        hook.write_text('#!/bin/sh\n[ "$(hostname)" != lab2 ]\n')
        hook.chmod(0o755)
        os.chmod(str(tmp_path), 0o755)
        name = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.72")
        names.append(name)
        lab.exec(lab1, "sh", "-c", "echo 'lxc.hook.pre-start = %s' >> %s/ves/%s/config" % (hook, VZ, name))
        run = run_playbook(play([_task(name, lab2)], lab1), inventory=lab.inventory, expect_fail=True)
        msg = run.task("migrate", host=lab1).msg
        assert "was not moved to %s" % lab2 in msg and "rolled back" in msg, msg
        _one_copy(lab, name, lab1, lab2)
        assert _journal(lab, lab1, name) is None and _journal(lab, lab2, name) is None
        assert not _exists(lab, lab2, "%s/net/leases/10.20.0.72" % VZ)
    finally:
        _cleanup(run_playbook, lab, names)


def test_link_cut_busy_and_refusals(lab, run_playbook, lab_template, harness):
    lab1, lab2 = lab.hosts[:2]
    names = []
    try:
        name = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.73")
        names.append(name)
        sums = _private_sums(lab, lab1, name)
        playbook = play([_task(name, lab2, fault="freeze:sleep:8")], lab1)
        first = _background(harness, lab, playbook)
        try:
            assert _wait_for(lambda: (_journal(lab, lab1, name) or {}).get("doing") == "freeze", 60)
            # the link to lab2 cut while the first one waits before the freeze
            _cut(lab, lab1, lab2_address(lab), True)
            # a second migration of the VE while the first runs: busy, on the source's lock
            run = run_playbook(play([_task(name, lab2)], lab1), inventory=lab.inventory, expect_fail=True)
            assert "is busy" in run.task("migrate", host=lab1).msg, run.task("migrate", host=lab1).msg
            out, _err = first.communicate(timeout=240)
        finally:
            _cut(lab, lab1, None, False)
            if first.poll() is None:
                first.kill()
        assert first.returncode != 0 and "was not moved" in out, out[-2000:]
        assert _state(lab, lab1, name) == "RUNNING"
        # the target's agent removed its uncommitted copy by itself
        assert _wait_for(lambda: not _exists(lab, lab2, "%s/migrations/%s.incoming" % (VZ, name)), 40)
        assert _private_sums(lab, lab1, name)["./data/blob"] == sums["./data/blob"]
        run = run_playbook(play([_task(name, lab2)], lab1), inventory=lab.inventory)   # the rerun converges
        _one_copy(lab, name, lab2, lab1)

        # lab1 keeps the moved VE's address from its other VEs
        assert reservation(lab, lab1, "10.20.0.73")["moved_to"] == lab2
        run = run_playbook(play([{"name": "ve", "osvirt.vz.ve": {
            "name": "r" + name, "template": lab_template, "state": "stopped",
            "network": [{"ipv4": ["10.20.0.73/24"]}]}}], lab1), inventory=lab.inventory, expect_fail=True)
        assert "10.20.0.73 is reserved for VE %s" % name in run.task("ve", host=lab1).msg
        # preflight refusals: the address is leased on the target (once an operator dropped lab1's
        # reservation by hand), the name is taken there
        drop_reservations(lab, name)
        other = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.73")
        names.append(other)
        run = run_playbook(play([_task(other, lab2)], lab1), inventory=lab.inventory, expect_fail=True)
        msg = run.task("migrate", host=lab1).msg
        assert "VE %s cannot move to %s" % (other, lab2) in msg and "10.20.0.73" in msg and name in msg, msg
        _one_copy(lab, other, lab1, lab2)
        assert _journal(lab, lab1, other) is None and _journal(lab, lab2, other) is None
        same = {"name": other, "template": lab_template, "state": "stopped"}
        run_playbook(play([{"name": "same", "osvirt.vz.ve": same}], lab2), inventory=lab.inventory)
        run = run_playbook(play([_task(other, lab2)], lab1), inventory=lab.inventory, expect_fail=True)
        assert "exists on this host and on %s" % lab2 in run.task("migrate", host=lab1).msg
        assert _state(lab, lab1, other) == "RUNNING" and _state(lab, lab2, other) == "STOPPED"
    finally:
        _cleanup(run_playbook, lab, names)


def _background(harness, lab, playbook):
    import yaml   # pylint: disable=import-outside-toplevel
    path = lab.inventory.parent / ("bg-%s.yml" % secrets.token_hex(3))
    path.write_text(yaml.safe_dump(playbook))
    env = harness._playbook_env()   # pylint: disable=protected-access
    return subprocess.Popen([harness._ansible_bin("ansible-playbook"), "-i", str(lab.inventory), str(path)],  # pylint: disable=protected-access
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            stdin=subprocess.DEVNULL)


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def lab2_address(lab):
    return next(line.split("ansible_host=")[1].split()[0] for line in lab.inventory.read_text().splitlines()
                if line.startswith(lab.hosts[1] + " "))


def _cut(lab, host, peer, on):
    """Drop every packet between ``host`` and ``peer`` (nft inside ``host``'s namespace), or stop that."""
    if on:
        lab.exec(host, "nft", "add", "table", "inet", "vzmigcut")
        for hook in ("input", "output"):
            lab.exec(host, "nft", "add", "chain", "inet", "vzmigcut", hook,
                     "{ type filter hook %s priority -10 ; }" % hook)
            lab.exec(host, "nft", "add", "rule", "inet", "vzmigcut", hook, "ip", "saddr" if hook == "input" else
                     "daddr", peer, "drop")
    else:
        lab.exec(host, "nft", "delete", "table", "inet", "vzmigcut", check=False)


def _data_sums(lab, host, name):
    """Checksums of the files the test wrote under /data (the rest of a running VE may change)."""
    sums = {path: digest for path, digest in _private_sums(lab, host, name).items() if path.startswith("./data/")}
    assert len(sums) >= 2, sums
    return sums


def _init_pid(lab, host, name):
    return lab.exec(host, "lxc-info", "-P", VZ + "/ves", "-n", name, "-pH").stdout.strip()


def test_target_disk_full_during_copy(lab, run_playbook, lab_template):
    """The file system the target receives the private area on fills during the copy (a 1 MiB tmpfs
    over lab2's ``migrations`` directory, where ``<ve>.incoming`` is made; the preflight sees the
    free space of the vz root, so it lets the move start): the move fails naming the target and
    the full disk, the source runs on untouched, lab2 keeps nothing of the VE; once the space is
    back a rerun of the same task moves it."""
    lab1, lab2 = lab.hosts[:2]
    names = []
    migrations = "%s/migrations" % VZ
    try:
        name = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.74")
        names.append(name)
        lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--", "sh", "-c",
                 "head -c 3000000 /dev/urandom > /data/big")
        sums, pid = _data_sums(lab, lab1, name), _init_pid(lab, lab1, name)
        had_template = _exists(lab, lab2, "%s/templates/%s" % (VZ, lab_template))
        lab.exec(lab2, "mkdir", "-p", migrations)
        lab.exec(lab2, "mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "vzfull", migrations)
        run = run_playbook(play([_task(name, lab2, mode="warm")], lab1), inventory=lab.inventory, expect_fail=True)
        msg = run.task("migrate", host=lab1).msg
        assert "VE %s was not moved to %s" % (name, lab2) in msg and "rolled back" in msg, msg
        print("disk full: %s" % msg)
        assert "disk of" in msg and "is full" in msg and "%s/%s.incoming" % (migrations, name) in msg, msg
        # the source as it was: the same init, never frozen, the same files
        _one_copy(lab, name, lab1, lab2)
        assert _init_pid(lab, lab1, name) == pid
        assert _data_sums(lab, lab1, name) == sums
        assert _journal(lab, lab1, name) is None and _journal(lab, lab2, name) is None
        # nothing of it registered on the target: no VE directory, no lease, no template it brought
        assert not _exists(lab, lab2, "%s/ves/%s" % (VZ, name))
        assert not _exists(lab, lab2, "%s/net/leases/10.20.0.74" % VZ)
        assert _exists(lab, lab2, "%s/templates/%s" % (VZ, lab_template)) == had_template
        assert lab.exec(lab2, "sh", "-c", "ls -A %s" % migrations).stdout.strip() == ""

        lab.exec(lab2, "umount", migrations)   # the space is back
        run = run_playbook(play([_task(name, lab2, mode="warm")], lab1), inventory=lab.inventory)
        assert run.task("migrate", host=lab1).changed
        print("rerun: %s" % run.task("migrate", host=lab1)["stages"])
        _one_copy(lab, name, lab2, lab1)
        assert _data_sums(lab, lab2, name) == sums
    finally:
        lab.exec(lab2, "umount", migrations, check=False)
        _cleanup(run_playbook, lab, names)


def test_keep_target_resumes_and_timeout_rolls_back(lab, run_playbook, lab_template):
    """``keep_target: true``: a move that fails before the commit keeps the copied files on the
    target (and nothing else: no VE, no lease, no journal), so the rerun's first round sends only
    what changed. ``timeout``: a move that is still copying when it runs out is rolled back, the
    source runs on, the target keeps nothing."""
    lab1, lab2 = lab.hosts[:2]
    names = []
    incoming = "%s/migrations/%%s.incoming" % VZ
    try:
        name = _make_ve(run_playbook, lab, lab1, lab_template, "10.20.0.75")
        names.append(name)
        lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--", "sh", "-c",
                 "head -c 4000000 /dev/urandom > /data/big")
        sums = _data_sums(lab, lab1, name)
        run = run_playbook(play([_task(name, lab2, fault="final_sync:fail", keep_target=True)], lab1),
                           inventory=lab.inventory, expect_fail=True)
        msg = run.task("migrate", host=lab1).msg
        assert "VE %s was not moved to %s" % (name, lab2) in msg and "injected fault" in msg, msg
        _state_one = _state(lab, lab1, name), _state(lab, lab2, name)
        assert _state_one == ("RUNNING", "ABSENT"), _state_one
        assert _exists(lab, lab2, incoming % name), "keep_target kept nothing"
        kept = lab.exec(lab2, "sha256sum", "%s/private/upper/data/big" % (incoming % name)).stdout.split()[0]
        assert kept == sums["./data/big"]
        assert not _exists(lab, lab2, "%s/net/leases/10.20.0.75" % VZ)
        # the source is done with it; the target's journal says what it kept, for the rerun
        assert _journal(lab, lab1, name) is None
        assert (_journal(lab, lab2, name) or {}).get("kept") is True, _journal(lab, lab2, name)

        # the rerun resumes: its first pre-copy round sends far less than the 4 MB already there
        result = run_playbook(play([_task(name, lab2)], lab1), inventory=lab.inventory).task("migrate", host=lab1)
        assert result.changed
        first = result.result["rounds"][0]
        print("resume: first round %r after keep_target (private area > 4 MB)" % first)
        assert first["sent"] < 1000000, result.result["rounds"]
        _one_copy(lab, name, lab2, lab1)
        assert _data_sums(lab, lab2, name) == sums
        assert not _exists(lab, lab2, incoming % name)
        assert _journal(lab, lab1, name) is None and _journal(lab, lab2, name) is None

        # timeout: the move back waits 4 s before its pre-copy, with 2 s to spare: rolled back
        run = run_playbook(play([_task(name, lab1, fault="precopy:sleep:4", timeout=2)], lab2),
                           inventory=lab.inventory, expect_fail=True)
        msg = run.task("migrate", host=lab2).msg
        assert "took longer than timeout (2s)" in msg and "rolled back" in msg, msg
        _one_copy(lab, name, lab2, lab1)
        assert not _exists(lab, lab1, incoming % name)
        assert _journal(lab, lab1, name) is None and _journal(lab, lab2, name) is None
        assert _data_sums(lab, lab2, name) == sums
    finally:
        _cleanup(run_playbook, lab, names)
