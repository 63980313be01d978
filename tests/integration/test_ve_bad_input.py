# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input and hostile situations for osvirt.vz.ve: each must give ONE clear error that
names the problem, and change nothing (no new entry in <vz_root>/ves, nothing new in lxc-ls,
nothing left in .tmp).

Also: a VE directory holding a symlink out of the store is removed without following it, two
runs creating the same VE at once, a host without subordinate ids, and a full disk.
Every test uses a throw-away vz_root and a cgroup parent of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from vzlib import VeStore, kill_all, play, sh

GATEWAY = "10.20.0.1"


# ------------------------------------------------------------------------------ helpers


class Ctx(VeStore):
    """A VeStore whose tasks ignore errors (each bad input is asserted on its own result)."""

    def __init__(self, root, parent, version, prefix, run, harness):
        super().__init__(root, parent, version, prefix, run)
        self.harness = harness

    def task(self, title, **options):
        return {"name": title, "ignore_errors": True, "osvirt.vz.ve": self.ve(**options)}

    def entries(self):
        return sorted(p.name for p in self.ves.iterdir()) if self.ves.is_dir() else []

    def tmp_entries(self):
        tmp = self.root / ".tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []

    def lxc_ls(self):
        if not self.ves.is_dir():
            return []
        return sorted(sh("lxc-ls", "-1", "-P", str(self.ves)).stdout.split())

    def state(self):
        return self.entries(), self.lxc_ls(), self.tmp_entries()


def _prepare(vz_root, cgroup_parent, built_template, run_playbook, harness):
    templates, version = built_template
    os.chmod(vz_root, 0o711)   # mkdtemp makes 0700; unprivileged VEs must traverse it
    sh("cp", "-a", "--reflink=auto", str(templates), str(vz_root / "templates"))
    return Ctx(vz_root, cgroup_parent, version, "x" + secrets.token_hex(2), run_playbook, harness)


@pytest.fixture
def ctx(vz_root, cgroup_parent, built_template, run_playbook, harness):
    c = _prepare(vz_root, cgroup_parent, built_template, run_playbook, harness)
    # one VE that exists before the bad input comes: it must stay exactly as it is
    keep = c.ve(name=c.name("keep"), template="busybox", state="present")
    c.run(play([{"name": "keep", "osvirt.vz.ve": keep}]))
    try:
        yield c
    finally:
        kill_all(c.ves)


def _assert_one_clear_error(res, *words):
    assert res.failed, "expected a failure:\n%s" % res.result
    for word in words:
        assert word in res.msg, "%r not in the message: %s" % (word, res.msg)
    assert "unexpected error" not in res.msg, res.msg
    assert "Traceback" not in res.msg, res.msg
    assert not res.changed, res.result


# ----------------------------------------------------------------------------- VE names

BAD_NAMES = ["../x", "a/b", "x;reboot", "$(id)", "a\nb", "-x", "Upper", "a" * 64, "", "x-", "9lives", "a b"]


def test_bad_ve_names(ctx):
    before = ctx.state()
    tasks = []
    for i, name in enumerate(BAD_NAMES):
        tasks.append(ctx.task("single %d" % i, name=name, template="busybox"))
        tasks.append(ctx.task("item %d" % i, template="busybox",
                              ves=[{"name": ctx.name("good%d" % i)}, {"name": name},
                                   {"name": ctx.name("good%db" % i)}]))
        tasks.append(ctx.task("absent %d" % i, name=name, state="absent"))
    run = ctx.run(play(tasks))
    for i, name in enumerate(BAD_NAMES):
        for kind in ("single", "item", "absent"):
            _assert_one_clear_error(run.task("%s %d" % (kind, i)), "invalid VE name", repr(name))
    # a bulk task with one bad item creates none of the good ones; nothing else appeared
    assert ctx.state() == before, "something changed on the host"
    assert not any(Path("/sys/fs/cgroup/memory", ctx.parent).glob("*good*"))


def test_name_of_63_characters_is_fine(ctx):
    """The boundary: 63 characters are allowed (64 are not, see above)."""
    name = ctx.prefix + "-" + "a" * (63 - len(ctx.prefix) - 1)
    assert len(name) == 63
    run = ctx.run(play([dict(ctx.task("ok", name=name, template="busybox", state="present"),
                             ignore_errors=False)]))
    assert run.task("ok").changed and name in ctx.lxc_ls()


# ------------------------------------------------------------------ references and paths


# cases that stay bad inside a bulk task whose task-level template is busybox
BULK_CASES = {"missing bridge", "bad address", "gateway off subnet", "relative mount", "missing mount",
              "mount inside vz_root", "mount of vz_root parent", "mount target with ..", "bad hostname"}


def test_bad_references_and_paths(ctx, tmp_path):
    before = ctx.state()
    name = ctx.name("new")
    src = tmp_path / "share"
    src.mkdir()
    inside_store = ctx.root / "templates"
    cases = {
        "missing template": (dict(template="nosuch"), ["template nosuch does not exist"]),
        "missing version": (dict(template="busybox@20000101-000000"),
                            ["busybox has no version 20000101-000000", ctx.version]),
        "bad version": (dict(template="busybox@latest"), ["invalid template version", "'latest'"]),
        "no template": (dict(), ["template is required"]),
        "missing bridge": (dict(template="busybox", network=[{"bridge": "nosuchbr0", "ipv4": ["10.20.0.230/24"]}]),
                           ["bridge nosuchbr0 does not exist"]),
        "bad address": (dict(template="busybox", network=[{"ipv4": ["10.20.0.300/24"]}]),
                        ["10.20.0.300", "not a valid IPv4"]),
        "gateway off subnet": (dict(template="busybox", network=[{"ipv4": ["10.20.0.230/24"],
                                                                  "gateway4": "10.99.0.1"}]),
                               ["gateway4 10.99.0.1 is not in the subnet"]),
        "relative mount": (dict(template="busybox", mounts=[{"source": "srv/www", "target": "/srv"}]),
                           ["mount source must be an absolute path", "'srv/www'"]),
        "missing mount": (dict(template="busybox", mounts=[{"source": "/nonexistent/vzt", "target": "/srv"}]),
                          ["/nonexistent/vzt does not exist"]),
        "mount inside vz_root": (dict(template="busybox", mounts=[{"source": str(inside_store), "target": "/srv"}]),
                                 [str(inside_store), "inside or contains vz_root"]),
        "mount of vz_root parent": (dict(template="busybox", mounts=[{"source": "/var/tmp", "target": "/srv"}]),
                                    ["inside or contains vz_root"]),
        "mount target with ..": (dict(template="busybox", mounts=[{"source": str(src), "target": "/../etc"}]),
                                 ["mount target", "'/../etc'"]),
        "bad hostname": (dict(template="busybox", hostname="bad_host name"), ["invalid hostname"]),
    }
    tasks = [ctx.task(title, name=name, **opts) for title, (opts, _words) in cases.items()]
    # the same problems inside one item of a bulk task: none of the good items are created
    tasks += [ctx.task("bulk " + title, template="busybox",
                       ves=[{"name": ctx.name("ok1")}, dict(opts, name=name), {"name": ctx.name("ok2")}])
              for title, (opts, _words) in cases.items() if title in BULK_CASES]
    run = ctx.run(play(tasks))
    for title, (opts, words) in cases.items():
        _assert_one_clear_error(run.task(title), *words)
        if title in BULK_CASES:
            _assert_one_clear_error(run.task("bulk " + title), *words)
    assert ctx.state() == before, "something changed on the host"


@pytest.mark.parametrize("root, words", [
    ("var/lib/vz", ["vz_root must be an absolute path", "'var/lib/vz'"]),
    ("/", ["vz_root must be a dedicated directory"]),
    ("/var/tmp/../", ["vz_root must be a dedicated directory"]),
    ("/var/tmp/vz root", ["vz_root", "whitespace"]),
])
def test_bad_vz_root(run_playbook, root, words):
    run = run_playbook(play([
        {"name": "ve", "ignore_errors": True,
         "osvirt.vz.ve": {"name": "web1", "template": "busybox", "vz_root": root}},
        {"name": "template", "ignore_errors": True, "osvirt.vz.template": {"name": "busybox", "vz_root": root}},
        {"name": "info", "ignore_errors": True, "osvirt.vz.ve_info": {"vz_root": root}},
    ]))
    for task in ("ve", "template", "info"):
        _assert_one_clear_error(run.task(task), *words)
    assert not Path("/ves").exists() and not Path("/templates").exists()
    assert not Path("/var/tmp/vz root").exists()


# ----------------------------------------------------------------------- no subuid range


def test_no_subordinate_ids(ctx, tmp_path):
    """A host without a root range in /etc/subuid: one clear error, nothing created. The
    playbook runs in a private mount namespace where an empty file hides /etc/subuid."""
    before = ctx.state()
    empty = tmp_path / "empty"
    empty.write_text("")
    wrapper = tmp_path / "hide-subids"
    wrapper.write_text('#!/bin/sh\nset -e\nmount --bind "$1" /etc/subuid\nmount --bind "$1" /etc/subgid\n'
                       'shift\nexec "$@"\n')
    wrapper.chmod(0o755)
    name = ctx.name("nosub")
    playbook = tmp_path / "nosub.yml"
    playbook.write_text(json.dumps(play([{"name": "create", "osvirt.vz.ve": ctx.ve(name=name,
                                                                                   template="busybox")}])))
    results = tmp_path / "results.json"
    localhost = ctx.run.default_inventory
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", str(wrapper), str(empty),
         ctx.harness._ansible_bin("ansible-playbook"), "-i", str(localhost), str(playbook)],
        env=ctx.harness._playbook_env({"VZ_RESULTS_FILE": str(results)}), cwd=str(tmp_path),
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
    data = json.loads(results.read_text())
    res = ctx.harness._task_results(data)["localhost"][0]
    assert proc.returncode != 0, proc.stdout
    _assert_one_clear_error(res, "no subordinate id range", "/etc/subuid")
    assert ctx.state() == before
    # outside that namespace the machine's files are untouched
    assert "root:" in Path("/etc/subuid").read_text()


# --------------------------------------------------------------- removal and symlinks


def test_absent_never_follows_a_symlink_out_of_the_store(ctx):
    name = ctx.name("esc")
    victim = Path(tempfile.mkdtemp(prefix="vzt-victim-", dir="/var/tmp"))
    try:
        (victim / "precious.txt").write_text("keep me\n")
        ctx.run(play([dict(ctx.task("start", name=name, template="busybox"), ignore_errors=False)]))
        upper = ctx.ves / name / "private" / "upper"
        (upper / "escape").symlink_to(victim)
        (upper / "escape-file").symlink_to(victim / "precious.txt")
        (ctx.ves / name / "escape-dir").symlink_to(victim)
        run = ctx.run(play([dict(ctx.task("remove", name=name, state="absent"), ignore_errors=False)]))
        assert run.task("remove").changed
        assert not (ctx.ves / name).exists()
        assert (victim / "precious.txt").read_text() == "keep me\n"
        assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
        assert ctx.tmp_entries() == []
        assert name not in ctx.lxc_ls()
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def test_ve_directory_that_is_a_symlink_is_refused(ctx):
    """ves/<name> as a symlink to somewhere else is not ours: refused, target untouched."""
    name = ctx.name("lnk")
    victim = Path(tempfile.mkdtemp(prefix="vzt-victim-", dir="/var/tmp"))
    try:
        (victim / "ve.json").write_text(json.dumps({"name": name, "template": "busybox@" + ctx.version}))
        (ctx.ves / name).symlink_to(victim)
        run = ctx.run(play([ctx.task("remove", name=name, state="absent"),
                            ctx.task("start", name=name, template="busybox")]))
        for task in ("remove", "start"):
            _assert_one_clear_error(run.task(task), "not a directory made by osvirt.vz")
        assert sorted(p.name for p in victim.iterdir()) == ["ve.json"]
    finally:
        (ctx.ves / name).unlink(missing_ok=True)
        shutil.rmtree(victim, ignore_errors=True)


# --------------------------------------------------------------------------- concurrency


def test_two_runs_create_the_same_ve_at_once(ctx, tmp_path):
    name = ctx.name("race")
    playbook = tmp_path / "race.yml"
    playbook.write_text(json.dumps(play([{"name": "create", "osvirt.vz.ve": ctx.ve(
        name=name, template="busybox", state="started", lock_timeout=60)}])))
    procs = []
    for i in range(2):
        results = tmp_path / ("race-%d.json" % i)
        proc = subprocess.Popen(
            [ctx.harness._ansible_bin("ansible-playbook"), "-i", str(ctx.run.default_inventory), str(playbook)],
            env=ctx.harness._playbook_env({"VZ_RESULTS_FILE": str(results)}), cwd=str(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        procs.append((proc, results))
    outcomes = []
    for proc, results in procs:
        out = proc.communicate(timeout=300)[0]
        res = ctx.harness._task_results(json.loads(results.read_text()))["localhost"][0]
        outcomes.append(res)
    creators = [r for r in outcomes if not r.failed and r.changed]
    assert len(creators) == 1, [r.result for r in outcomes]
    assert creators[0]["actions"] == ["create %s" % name, "start %s" % name]
    other = [r for r in outcomes if r is not creators[0]][0]
    if other.failed:
        assert "is busy" in other.msg, other.msg
    else:
        assert other.ok and other["actions"] == [] and other["ve"]["state"] == "running", other.result
    assert ctx.entries().count(name) == 1 and ctx.lxc_ls().count(name) == 1
    assert ctx.lxc_state(name) == "RUNNING"
    assert ctx.tmp_entries() == []


def test_busy_ve_fails_with_is_busy(ctx, tmp_path):
    """A VE locked by another operation: after lock_timeout, one clear error naming the holder."""
    name = ctx.name("keep")
    lock = ctx.root / "locks" / ("ve-%s.lock" % name)
    holder = subprocess.Popen(
        ["flock", "-x", str(lock), "sh", "-c", "echo 'some other operation' > \"$0\"; sleep 30", str(lock)],
        stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "some other" not in (lock.read_text() if lock.exists() else ""):
            time.sleep(0.05)
        run = ctx.run(play([ctx.task("start", name=name, lock_timeout=1)]))
        _assert_one_clear_error(run.task("start"), "VE %s is busy" % name, "some other operation")
        assert ctx.lxc_state(name) == "STOPPED"
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- disk full


def test_disk_full_while_creating(built_template, cgroup_parent, run_playbook, harness, localhost):
    root = Path(tempfile.mkdtemp(prefix="vz-test-full-", dir="/var/tmp"))
    prefix = "f" + secrets.token_hex(2)
    sh("mount", "-t", "tmpfs", "-o", "size=16m,mode=0711", "tmpfs", str(root))
    try:
        ctx = Ctx(root, cgroup_parent, None, prefix, run_playbook, harness)
        run = run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": "busybox", "vz_root": str(root)}},
            # a first VE makes the id-shifted copy of the template while there is room
            {"name": "first", "osvirt.vz.ve": ctx.ve(name=ctx.name("first"), template="busybox",
                                                     state="present")},
        ]))
        assert run.task("first").changed
        fill = subprocess.run(["dd", "if=/dev/zero", "of=%s/fill" % root, "bs=1M"], capture_output=True,
                              text=True, check=False)
        assert "No space left on device" in fill.stderr, fill.stderr
        before = ctx.state()
        name = ctx.name("second")
        run = run_playbook(play([dict(ctx.task("create", name=name, template="busybox"))]))
        res = run.task("create")
        assert res.failed, res.result
        assert "No space left on device" in res.msg, res.msg
        # one clear error naming the VE or the store, not an "unexpected error" (an unhandled exception)
        assert "unexpected error" not in res.msg and (str(root) in res.msg or name in res.msg), res.msg
        assert not (root / "ves" / name).exists()
        assert ctx.tmp_entries() == []
        assert ctx.state() == before
        # with room again, the same task works
        (root / "fill").unlink()
        run = run_playbook(play([dict(ctx.task("create", name=name, template="busybox", state="present"),
                                      ignore_errors=False)]))
        assert run.task("create").changed and name in ctx.lxc_ls()
    finally:
        kill_all(root / "ves")
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_disk_full_before_the_template_is_shifted(built_template, cgroup_parent, run_playbook, harness):
    """The first VE on a version copies the template to the VE id range: with no room for that
    copy, the task fails clearly and leaves no half copy or VE behind."""
    root = Path(tempfile.mkdtemp(prefix="vz-test-full-", dir="/var/tmp"))
    sh("mount", "-t", "tmpfs", "-o", "size=16m,mode=0711", "tmpfs", str(root))
    try:
        ctx = Ctx(root, cgroup_parent, None, "g" + secrets.token_hex(2), run_playbook, harness)
        template = {"name": "busybox", "vz_root": str(root)}
        run_playbook(play([{"name": "template", "osvirt.vz.template": template}]))
        fill = subprocess.run(["dd", "if=/dev/zero", "of=%s/fill" % root, "bs=1M"], capture_output=True,
                              text=True, check=False)
        assert "No space left on device" in fill.stderr, fill.stderr
        name = ctx.name("web")
        run = run_playbook(play([ctx.task("create", name=name, template="busybox", state="started")]))
        res = run.task("create")
        assert res.failed and "No space left on device" in res.msg, res.msg
        assert "unexpected error" not in res.msg and (str(root) in res.msg or name in res.msg), res.msg
        assert not (root / "ves" / name).exists()
        assert ctx.tmp_entries() == []
        assert not list((root / "templates").glob("busybox/*/idmap/*/rootfs"))
    finally:
        kill_all(root / "ves")
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
