# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.ve_backup: restic repositories on this machine, busybox VEs, on a plain
vz_root (mode suspend) and, where the host has btrfs, a btrfs one (mode snapshot)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from test_ve_snapshot import Store, store  # noqa: F401  pylint: disable=unused-import
from vzlib import play, sh

PASSWORD = "test-only-password"


@pytest.fixture
def repo():
    if shutil.which("restic") is None:
        pytest.skip("restic is not installed (make deps installs it)")
    base = Path(tempfile.mkdtemp(prefix="vz-restic-", dir="/var/tmp"))
    try:
        yield base / "repo"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def bk(store, repo, title, **options):
    """One osvirt.vz.ve_backup task (``title`` None: without a name, for four_steps)."""
    task = {"osvirt.vz.ve_backup": dict({"vz_root": str(store.root), "cgroup_parent": store.parent,
                                         "repository": str(repo), "password": PASSWORD}, **options)}
    if title is not None:
        task["name"] = title
    return task


def repo_bytes(repo):
    return int(sh("du", "-sb", str(repo)).stdout.split()[0])


def test_backup_restore_prune_verify(store, repo, four_steps):
    name, copy = store.name("bk"), store.name("cp")
    store.run(play([store.task("start", name=name, template="busybox", state="started")]))
    store.attach(name, "sh", "-c", "echo one > /root/data; "
                 "(i=0; while true; do i=$((i+1)); echo $i > /root/counter.tmp; mv /root/counter.tmp /root/counter; "
                 "done) >/dev/null 2>&1 &")
    result = four_steps(bk(store, repo, None, name=name, backup="first", init=True))
    _check, real, again, _check_again = result.steps["localhost"]
    assert real["backup"]["backup"] == "first" and real["backup"]["ve"] == name
    assert any(a.startswith("store template busybox@") for a in real["actions"]), real["actions"]
    assert real["backup"]["template"] == "busybox@%s" % store.version
    assert [b["backup"] for b in again["backups"]] == ["first"]
    assert store.lxc_state(name) == "RUNNING"

    # a second backup after changing 1 MB grows the repository by about that much
    size = repo_bytes(repo)
    store.attach(name, "sh", "-c", "head -c 1048576 /dev/urandom > /root/onemeg")
    run = store.run(play([bk(store, repo, "second", name=name, backup="second", protected=True),
                          bk(store, repo, "third", name=name)]))
    grown = repo_bytes(repo) - size
    assert 1048576 <= grown < 3 * 1048576, grown
    assert run.task("third")["backup"]["backup"]   # unnamed: named by its time
    assert run.task("second")["backup"]["protected"] is True

    # restore under a new name: its own hostname, built beside the source which keeps running
    run = store.run(play([bk(store, repo, "restore", name=name, backup="second", target=copy, state="restored",
                             start=True)]))
    assert run.task("restore").changed
    assert store.attach(copy, "cat", "/root/data").stdout == "one\n"
    assert store.attach(copy, "hostname").stdout.strip() == copy
    assert int(store.attach(copy, "cat", "/root/counter").stdout) > 0
    assert store.attach(copy, "wc", "-c", "/root/onemeg").stdout.split()[0] == "1048576"
    meta = json.loads((store.ves / copy / "ve.json").read_text())
    assert meta["name"] == copy

    # over an existing VE only with force; the old VE stays as it was when refused
    store.attach(name, "sh", "-c", "echo changed > /root/data")
    res = store.run(play([bk(store, repo, "refused", name=name, backup="first", state="restored")]),
                    expect_fail=True).task("refused")
    assert "force: true" in res.msg and store.attach(name, "cat", "/root/data").stdout == "changed\n"
    store.run(play([bk(store, repo, "forced", name=name, backup="first", state="restored", force=True,
                       start=True)]))
    assert store.attach(name, "cat", "/root/data").stdout == "one\n"
    assert store.attach(name, "test", "-e", "/root/onemeg", check=False).returncode == 1

    # bad input: one clear error each
    cases = [
        ("wrong password", dict(name=name, password="nope"), "wrong password"),
        ("no repository", dict(name=name, repository=str(repo) + "-missing"), "does not exist or is not a restic"),
        ("no backup", dict(name=name, backup="nosuch", state="restored", target=store.name("zz")),
         "has no backup of VE %s named nosuch" % name),
        ("no rule", dict(name=name, state="pruned"), "at least one keep rule"),
        ("no VE", dict(name="nosuchve", backup="x"), "VE nosuchve does not exist"),
        ("bad target", dict(name=name, state="restored", target="Bad_Name"), "invalid"),
        ("target exists", dict(name=name, state="restored", target=copy), "VE %s exists" % copy),
    ]
    for title, options, message in cases:
        res = store.run(play([bk(store, repo, title, **options)]), expect_fail=True).task(title)
        assert message in res.msg, (title, res.msg)
    assert not (store.ves / store.name("zz")).exists()

    # retention: keep_last 1 removes all but the newest, never the protected one
    run = store.run(play([bk(store, repo, "prune", name=name, state="pruned", keep_last=1),
                          bk(store, repo, "list", name=name, state="listed")]))
    names = [b["backup"] for b in run.task("list")["backups"]]
    assert "second" in names and "first" not in names and len(names) == 2, names
    run = store.run(play([bk(store, repo, "verify", state="verified")]))
    assert not run.task("verify").changed

    # a flipped byte in a data pack is found by verified
    packs = sorted((repo / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    victim = packs[-1]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as handle:
        handle.seek(victim.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    res = store.run(play([bk(store, repo, "verify bad", state="verified")]), expect_fail=True).task("verify bad")
    assert "failed verification" in res.msg, res.msg


def test_archive_export_and_restore(store, repo, four_steps):
    """format archive: a running VE exported (frozen for the instant), restored under a new name, started."""
    name, copy = store.name("ar"), store.name("ac")
    out = repo.parent / "exports"
    store.run(play([store.task("start", name=name, template="busybox", state="started")]))
    store.attach(name, "sh", "-c", "echo archived > /root/data")
    task = {"osvirt.vz.ve_backup": {"vz_root": str(store.root), "cgroup_parent": store.parent, "name": name,
                                    "format": "archive", "archive_dir": str(out), "backup": "x1"}}
    result = four_steps(task)
    archive = result.steps["localhost"][1]["archive"]
    assert archive == str(out / ("%s-x1.tar.zst" % name)) and store.lxc_state(name) == "RUNNING"
    run = store.run(play([{"name": "restore", "osvirt.vz.ve_backup": {
        "vz_root": str(store.root), "cgroup_parent": store.parent, "format": "archive", "state": "restored",
        "archive": archive, "target": copy, "start": True}}]))
    assert run.task("restore").changed
    assert store.attach(copy, "cat", "/root/data").stdout == "archived\n"
    assert store.attach(copy, "hostname").stdout.strip() == copy
    res = store.run(play([{"name": "no dir", "osvirt.vz.ve_backup": {
        "vz_root": str(store.root), "name": name, "format": "archive"}}]), expect_fail=True).task("no dir")
    assert "needs archive_dir" in res.msg
