# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad state on the host: one clear error naming the problem, nothing changed, the rest works.

A ve.json or LXC config cut to zero bytes (the VE is reported broken by name, ve_info lists all
the others, ``state: absent`` still removes it), a host.json that is not JSON or names a bridge
that does not exist, a vz_root on a read-only mount, and a full disk while limits or address
leases are persisted. Each test uses a throw-away vz_root (a small tmpfs where the disk must
fill) and a cgroup parent of its own; VE addresses 10.20.0.225-229 only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

from test_ve_bad_input import Ctx, _assert_one_clear_error, _prepare, ctx  # noqa: F401 pylint: disable=unused-import
from vzlib import kill_all, play, sh

CG = Path("/sys/fs/cgroup")


def _info(ctx, **options):
    return ctx.run(play([{"name": "info", "osvirt.vz.ve_info": dict({"vz_root": str(ctx.root)}, **options)}]))


def _snapshot(root):
    """Every path under ``root`` with its size (what 'nothing changed' compares), except the empty lock
    files under locks/ (a VE's lock file is made on first use and kept, whatever the task's outcome)."""
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in Path(root).rglob("*") if not p.is_symlink() and p.name != "lxc.log"
                  and p.relative_to(root).parts[0] != "locks")


def test_a_ve_cut_to_zero_bytes_is_reported_broken_and_can_be_removed(ctx):
    keep = ctx.name("keep")
    meta_cut, config_cut = ctx.name("meta"), ctx.name("conf")
    make = ctx.ve(template="busybox", state="present", ves=[{"name": meta_cut}, {"name": config_cut}])
    ctx.run(play([{"name": "make", "osvirt.vz.ve": make}]))
    (ctx.ves / meta_cut / "ve.json").write_bytes(b"")
    (ctx.ves / config_cut / "config").write_bytes(b"")

    info = _info(ctx).task("info")
    assert not info.failed, info.result
    ves = {ve["name"]: ve for ve in info.result["ves"]}
    assert sorted(ves) == sorted([keep, meta_cut, config_cut])
    assert not ves[keep].get("broken") and ves[keep]["template"] == "busybox@%s" % ctx.version
    broken = {b["name"]: b["error"] for b in info.result["broken"]}
    assert sorted(broken) == sorted([meta_cut, config_cut]), broken
    assert "VE %s is broken" % meta_cut in broken[meta_cut] and "ve.json is not valid JSON" in broken[meta_cut]
    assert "VE %s is broken" % config_cut in broken[config_cut] and "is empty" in broken[config_cut]

    # a task that needs the metadata says why, by name, and changes nothing
    before = _snapshot(ctx.root)
    run = ctx.run(play([ctx.task("start", name=meta_cut, state="started")]))
    _assert_one_clear_error(run.task("start"), "VE %s is broken" % meta_cut, "ve.json", "state: absent")
    assert _snapshot(ctx.root) == before

    # removal works for both, and the VE that was fine is untouched
    run = ctx.run(play([dict(ctx.task("remove", state="absent", ves=[{"name": meta_cut}, {"name": config_cut}]),
                             ignore_errors=False)]))
    assert run.task("remove").changed
    assert ctx.entries() == [keep] and ctx.lxc_ls() == [keep]
    assert ctx.tmp_entries() == []
    assert _info(ctx).task("info").result["broken"] == []


def test_host_json_that_is_not_json(ctx):
    (ctx.root / "host.json").write_text('{"cgroup_parent": "vz", ')
    before = ctx.state()
    run = ctx.run(play([
        ctx.task("create", name=ctx.name("new"), template="busybox"),
        {"name": "info", "ignore_errors": True, "osvirt.vz.ve_info": {"vz_root": str(ctx.root)}},
        {"name": "limits", "ignore_errors": True,
         "osvirt.vz.ve_limits": {"vz_root": str(ctx.root), "name": ctx.name("keep"), "limits": {"numproc": 9}}},
    ]))
    for task in ("create", "info", "limits"):
        _assert_one_clear_error(run.task(task), str(ctx.root / "host.json"), "is not valid JSON")
    assert ctx.state() == before


def test_host_json_naming_a_bridge_that_does_not_exist(ctx):
    (ctx.root / "host.json").write_text(json.dumps({"cgroup_parent": ctx.parent, "bridge": "vznobr0"}))
    before = ctx.state()
    name = ctx.name("net")
    run = ctx.run(play([ctx.task("create", name=name, template="busybox", state="started",
                                 network=[{"name": "eth0", "ipv4": ["10.20.0.225/24"]}])]))
    _assert_one_clear_error(run.task("create"), "vznobr0")
    assert ctx.state() == before
    assert not (ctx.root / "net" / "leases" / "10.20.0.225").exists()


@contextmanager
def _read_only(path):
    sh("mount", "--bind", str(path), str(path))
    try:
        sh("mount", "-o", "remount,bind,ro", str(path))
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_vz_root_on_a_read_only_mount(ctx):
    name = ctx.name("ro")
    before = _snapshot(ctx.root)
    with _read_only(ctx.root):
        run = ctx.run(play([
            ctx.task("create", name=name, template="busybox"),
            ctx.task("start keep", name=ctx.name("keep"), state="started"),
            {"name": "info", "osvirt.vz.ve_info": {"vz_root": str(ctx.root)}},
        ]))
        for task in ("create", "start keep"):
            _assert_one_clear_error(run.task(task), "Read-only file system")
        # reading still works
        assert [ve["name"] for ve in run.task("info").result["ves"]] == [ctx.name("keep")]
    assert _snapshot(ctx.root) == before
    assert ctx.lxc_state(ctx.name("keep")) == "STOPPED"


def _fill(root):
    fill = subprocess.run(["dd", "if=/dev/zero", "of=%s/fill" % root, "bs=64k"], capture_output=True, text=True,
                          check=False)
    assert "No space left on device" in fill.stderr, fill.stderr


def test_disk_full_while_persisting_limits_and_leases(built_template, cgroup_parent, run_playbook, harness):
    root = Path(tempfile.mkdtemp(prefix="vz-test-full-", dir="/var/tmp"))
    sh("mount", "-t", "tmpfs", "-o", "size=24m,mode=0711", "tmpfs", str(root))
    try:
        templates, version = built_template
        sh("cp", "-a", str(templates), str(root / "templates"))
        ctx = Ctx(root, cgroup_parent, version, "z" + Path(root).name[-4:].lower().replace("_", "x"),
                  run_playbook, harness)
        name = ctx.name("lim")
        net = [{"name": "eth0", "bridge": "vzbr0", "ipv4": ["10.20.0.226/24"]}]
        ctx.run(play([dict(ctx.task("create", name=name, template="busybox", state="started", network=net,
                                    limits={"numproc": 30}), ignore_errors=False)]))
        pids_max = CG / "pids" / cgroup_parent / name / "pids.max"
        assert pids_max.read_text().strip() == "30"
        _fill(root)
        before = _snapshot(root)
        run = ctx.run(play([
            {"name": "limits", "ignore_errors": True,
             "osvirt.vz.ve_limits": {"vz_root": str(root), "name": name, "limits": {"numproc": 50}}},
            ctx.task("address", name=name, state="started",
                     network=[{"name": "eth0", "bridge": "vzbr0", "ipv4": ["10.20.0.227/24"]}]),
            ctx.task("second", name=ctx.name("two"), template="busybox",
                     network=[{"name": "eth0", "bridge": "vzbr0", "ipv4": ["10.20.0.228/24"]}]),
        ]))
        for task in ("limits", "address", "second"):
            _assert_one_clear_error(run.task(task), "No space left on device")
        # nothing changed: files, the live limit, the VE's address
        assert _snapshot(root) == before
        assert pids_max.read_text().strip() == "30"
        assert "10.20.0.226/24" in sh("lxc-attach", "-P", str(root / "ves"), "-n", name, "--",
                                      "ip", "-4", "-o", "addr").stdout
        # with room again the same tasks work
        (root / "fill").unlink()
        run = ctx.run(play([
            {"name": "limits", "osvirt.vz.ve_limits": {"vz_root": str(root), "name": name,
                                                       "limits": {"numproc": 50}}},
        ]))
        assert pids_max.read_text().strip() == "50"
    finally:
        kill_all(root / "ves")
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
