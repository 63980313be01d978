# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.ve_snapshot and of clones (osvirt.vz.ve clone_from) with busybox VEs.

Each test runs on two kinds of vz_root: a plain directory under /var/tmp (snapshots are copies) and,
where the host has btrfs (features.py), a fresh btrfs loop file system (snapshots are read-only
subvolume snapshots). VEs run without network unless a test needs one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

import features
from vzlib import VeStore, kill_all, play, remove_cgroups, sh

MIB = 1024 * 1024


class Store(VeStore):
    def attach(self, name, *argv, check=True):
        return sh("lxc-attach", "-P", str(self.ves), "-n", name, "--", *argv, check=check)

    def snap(self, title, **options):
        """One osvirt.vz.ve_snapshot task (``title`` None: without a name, for four_steps)."""
        task = {"osvirt.vz.ve_snapshot": dict({"vz_root": str(self.root), "cgroup_parent": self.parent}, **options)}
        if title is not None:
            task["name"] = title
        return task


@pytest.fixture(params=["plain", "btrfs"])
def store(request, built_template, run_playbook, cgroup_parent):
    templates, version = built_template
    base = Path(tempfile.mkdtemp(prefix="vz-snap-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    root, mounted = base / "vz", False
    root.mkdir()
    try:
        if request.param == "btrfs":
            reason = features.why_not("btrfs_quota")
            if reason:
                pytest.skip("btrfs snapshots need btrfs: %s" % reason)
            image = base / "vz.img"
            with open(image, "wb") as handle:
                handle.truncate(512 * MIB)
            sh("mkfs.btrfs", "-q", "-f", image)
            sh("mount", "-o", "loop", image, root)
            mounted = True
            sh("btrfs", "quota", "enable", root)
        os.chmod(root, 0o711)
        sh("cp", "-a", "--reflink=auto", str(templates), str(root / "templates"))
        yield Store(root=root, parent=cgroup_parent, version=version, prefix="s" + secrets.token_hex(2),
                    run=run_playbook)
    finally:
        kill_all(root / "ves")
        remove_cgroups(cgroup_parent)
        if mounted and sh("umount", root, check=False).returncode != 0:
            sh("umount", "-l", root, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_snapshot_change_rollback(store, four_steps, request):
    name = store.name("a")
    store.run(play([store.task("start", name=name, template="busybox", state="started")]))
    store.attach(name, "sh", "-c", "echo one > /root/data; mkdir -p /srv/keep; echo k > /srv/keep/f; rm /etc/motd || true")
    result = four_steps(store.snap(None, name=name, snapshot="s1"))
    _check, real, again, _check_again = result.steps["localhost"]
    assert real["actions"] == ["snapshot %s as s1" % name]
    method = "btrfs" if "btrfs" in request.node.callspec.id else "copy"
    assert real["snapshot"]["method"] == method and real["snapshot"]["running"] is True
    assert again["diff"]["before"] == again["diff"]["after"]
    snapdir = store.ves / name / "snapshots" / "s1"
    assert (snapdir / "private" / "upper" / "root" / "data").read_text() == "one\n"
    assert store.lxc_state(name) == "RUNNING"   # thawed again

    # change, then roll back: without restart nothing happens
    store.attach(name, "sh", "-c", "echo two > /root/data; echo new > /root/added; rm -r /srv/keep")
    run = store.run(play([store.snap("no restart", name=name, snapshot="s1", state="rollback")]))
    res = run.task("no restart")
    assert not res.changed and res["restart_required"] is True
    assert store.attach(name, "cat", "/root/data").stdout == "two\n"
    run = store.run(play([
        dict(store.snap("check", name=name, snapshot="s1", state="rollback", restart=True), check_mode=True),
        store.snap("rollback", name=name, snapshot="s1", state="rollback", restart=True),
        {"name": "info", "osvirt.vz.ve_info": {"vz_root": str(store.root), "name": [name]}},
    ]))
    assert run.task("check").changed and run.task("check")["actions"] == run.task("rollback")["actions"]
    res = run.task("rollback")
    assert res.changed and res["actions"] == ["stop %s" % name, "roll back %s to s1" % name, "start %s" % name]
    assert store.lxc_state(name) == "RUNNING"
    assert store.attach(name, "cat", "/root/data").stdout == "one\n"
    assert store.attach(name, "cat", "/srv/keep/f").stdout == "k\n"
    assert store.attach(name, "test", "-e", "/root/added", check=False).returncode == 1
    assert store.attach(name, "test", "-e", "/etc/motd", check=False).returncode == 1   # the deletion too
    snaps = run.task("info")["ves"][0]["snapshots"]
    assert [s["name"] for s in snaps] == ["s1"] and snaps[0]["size_bytes"] >= 0

    # removal: four steps, and the VE's removal takes its snapshots along
    four_steps(store.snap(None, name=name, snapshot="s1", state="absent"))
    assert not (store.ves / name / "snapshots" / "s1").exists()
    store.run(play([store.snap("again", name=name, snapshot="s2"),
                    store.task("remove", name=name, state="absent")]))
    assert not (store.ves / name).exists()
    assert list((store.root / ".tmp").iterdir()) == []


def test_snapshot_of_a_stopped_ve_and_bad_input(store):
    name = store.name("b")
    store.run(play([store.task("create", name=name, template="busybox", state="stopped"),
                    store.snap("snap", name=name, snapshot="base")]))
    cases = {
        "no such snapshot": (dict(name=name, snapshot="nope", state="rollback"), "VE %s has no snapshot nope" % name),
        "no such VE": (dict(name="nosuchve", snapshot="x"), "VE nosuchve does not exist"),
        "bad name": (dict(name=name, snapshot="../etc"), "invalid snapshot name"),
        "bad VE name": (dict(name="Bad_VE", snapshot="x"), "invalid"),
        "other owner": (dict(name=name, snapshot="x", require_owner="team-b"), "require_owner"),
    }
    for title, (options, message) in cases.items():
        run = store.run(play([store.snap(title, **options)]), expect_fail=True)
        res = run.task(title)
        assert res.failed and message in res.msg, (title, res.msg)
    listing = store.run(play([store.snap("list", name=name, state="listed")])).task("list")
    assert [s["name"] for s in listing["snapshots"]] == ["base"] and not listing.changed
    assert listing["snapshots"][0]["running"] is False
    assert sorted(p.name for p in (store.ves / name / "snapshots").iterdir()) == ["base"]
    # rollback of a stopped VE needs no restart and leaves it stopped
    run = store.run(play([store.snap("rollback", name=name, snapshot="base", state="rollback")]))
    assert run.task("rollback").changed and store.lxc_state(name) == "STOPPED"
    meta = json.loads((store.ves / name / "ve.json").read_text())
    assert meta["name"] == name


def test_clone_from_a_running_ve_and_from_a_snapshot(store, four_steps):
    src, twin, old = store.name("src"), store.name("twin"), store.name("old")
    store.run(play([store.task("start", name=src, template="busybox", state="started", limits={"numproc": 300})]))
    store.attach(src, "sh", "-c", "echo 0123456789abcdef0123456789abcdef > /etc/machine-id; mkdir -p /etc/ssh; "
                 "echo fake > /etc/ssh/ssh_host_ed25519_key; echo fake.pub > /etc/ssh/ssh_host_ed25519_key.pub; "
                 "echo v1 > /root/app")
    store.run(play([store.snap("snap", name=src, snapshot="v1")]))
    store.attach(src, "sh", "-c", "echo v2 > /root/app")

    result = four_steps({"osvirt.vz.ve": store.ve(name=twin, clone_from=src, state="started")})
    _check, real, _again, _check_again = result.steps["localhost"]
    assert real["actions"] == ["clone %s from %s" % (twin, src), "start %s" % twin]
    assert store.lxc_state(src) == "RUNNING"   # the source ran on (frozen only for the copy)
    assert store.attach(twin, "cat", "/root/app").stdout == "v2\n"
    assert store.attach(twin, "hostname").stdout.strip() == twin
    assert store.attach(twin, "cat", "/etc/hostname").stdout == twin + "\n"
    assert "127.0.1.1\t%s" % twin in store.attach(twin, "cat", "/etc/hosts").stdout
    machine_id = store.attach(twin, "cat", "/etc/machine-id").stdout.strip()
    assert len(machine_id) == 32 and machine_id != "0123456789abcdef0123456789abcdef"
    key = store.attach(twin, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout
    assert key.startswith("ssh-ed25519 "), key
    assert store.attach(src, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout == "fake.pub\n"
    meta = json.loads((store.ves / twin / "ve.json").read_text())
    src_meta = json.loads((store.ves / src / "ve.json").read_text())
    assert meta["template"] == src_meta["template"] and meta["limits"] == src_meta["limits"]
    assert meta["cloned_from"] == src

    run = store.run(play([store.task("from snap", name=old, clone_from="%s@v1" % src, state="stopped",
                                     hostname="old.example.test")]))
    assert run.task("from snap")["actions"] == ["clone %s from %s@v1" % (old, src)]
    upper = store.ves / old / "private" / "upper"
    assert (upper / "root" / "app").read_text() == "v1\n"
    assert (upper / "etc" / "hostname").read_text() == "old.example.test\n"

    for title, options, message in (
            ("no source", dict(name=store.name("x"), clone_from="nosuch"), "does not exist"),
            ("no snapshot", dict(name=store.name("y"), clone_from=src + "@nosnap"), "has no snapshot nosnap"),
            ("bad ref", dict(name=store.name("z"), clone_from=src + "@../x"), "invalid snapshot name")):
        res = store.run(play([store.task(title, **options)]), expect_fail=True).task(title)
        assert message in res.msg, (title, res.msg)
        assert not (store.ves / options["name"]).exists()
