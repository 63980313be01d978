# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.template: real builds of the busybox template in a
throw-away vz_root (the ``vz_root`` fixture), never /var/lib/vz.

Covers: four steps of a build, the manifest, atomic publication (nothing left in .tmp),
``rebuild``, removal of a version (refused while a VE uses it, naming the VE) and one clear
error for a bad name or version.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from vzlib import play

VERSION_RE = re.compile(r"^\d{8}-\d{6}$")


def _template(vz_root, **options):
    return {"osvirt.vz.template": dict({"name": "busybox", "vz_root": str(vz_root)}, **options)}


def _versions(vz_root, name="busybox"):
    directory = Path(vz_root) / "templates" / name
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir())


def _tmp_entries(vz_root):
    tmp = Path(vz_root) / ".tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


# ------------------------------------------------------------------------------ building


def test_busybox_four_steps(four_steps, vz_root):
    """A fresh vz_root: check mode predicts a build, the build happens once, then nothing."""
    result = four_steps(_template(vz_root, state="present", source={"type": "busybox"}))
    check, real, again, check_again = result.steps["localhost"]
    assert len(check["actions"]) == 1 and check["actions"][0].startswith("build busybox@"), check.result
    assert len(real["actions"]) == 1 and real["actions"][0].startswith("build busybox@"), real.result
    assert again["actions"] == [] and check_again["actions"] == []
    version = real["template"]["version"]
    assert VERSION_RE.match(version), version
    assert real["actions"] == ["build busybox@%s" % version]
    # exactly one version, published; the repeat runs report it and built nothing
    assert _versions(vz_root) == [version]
    assert again["template"]["version"] == version
    assert again["template"]["versions"] == [version]
    assert check_again["template"]["versions"] == [version]


def test_manifest_and_publication(run_playbook, vz_root):
    run = run_playbook(play([dict(_template(vz_root), name="build", register="r")]))
    res = run.task("build")
    assert res.changed
    version = res["template"]["version"]
    directory = Path(vz_root) / "templates" / "busybox" / version
    manifest = json.loads((directory / "manifest.json").read_text())
    for key in ("name", "version", "parent", "os", "arch", "packages", "created", "checksum", "size"):
        assert key in manifest, f"manifest.json lacks {key}: {manifest}"
    assert manifest["name"] == "busybox"
    assert manifest["version"] == version
    assert manifest["parent"] is None
    assert manifest["os"] == "busybox"
    assert manifest["arch"] == platform.machine()
    assert any(p.get("name") == "busybox-static" for p in manifest["packages"]), manifest["packages"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created"]), manifest["created"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", manifest["checksum"]), manifest["checksum"]
    assert isinstance(manifest["size"], int) and manifest["size"] > 100_000, manifest["size"]
    # the module returns the same manifest
    assert res["template"]["manifest"] == manifest
    # the published tree is a usable busybox root
    rootfs = directory / "rootfs"
    assert (rootfs / "bin" / "busybox").is_file()
    assert os.readlink(rootfs / "sbin" / "init") == "../bin/busybox"
    assert (rootfs / "etc" / "inittab").is_file()
    # built in .tmp and published by rename: nothing is left behind in .tmp
    assert _tmp_entries(vz_root) == []


def test_rebuild_makes_a_newer_version(run_playbook, vz_root):
    run = run_playbook(play([
        dict(_template(vz_root), name="first"),
        dict(_template(vz_root, rebuild=True), name="rebuild"),
        dict(_template(vz_root), name="present again"),
    ]))
    first, rebuild, again = run.task("first"), run.task("rebuild"), run.task("present again")
    v1 = first["template"]["version"]
    v2 = rebuild["template"]["version"]
    assert rebuild.changed and rebuild["actions"] == ["build busybox@%s" % v2]
    assert v2 > v1, (v1, v2)
    assert rebuild["template"]["versions"] == [v1, v2]
    assert again.ok and again["template"]["version"] == v2
    assert _versions(vz_root) == [v1, v2]
    # the same tree gives the same checksum: the manifest's checksum describes content
    m1 = json.loads((Path(vz_root) / "templates/busybox" / v1 / "manifest.json").read_text())
    m2 = json.loads((Path(vz_root) / "templates/busybox" / v2 / "manifest.json").read_text())
    assert m1["checksum"] == m2["checksum"]
    assert _tmp_entries(vz_root) == []


# ------------------------------------------------------------------------------- removal


def test_absent_refuses_a_version_in_use_and_removes_an_unused_one(
        run_playbook, four_steps, vz_root, cgroup_parent):
    run = run_playbook(play([
        dict(_template(vz_root), name="v1"),
        {"name": "ve on v1", "osvirt.vz.ve": {
            "name": "user1", "template": "busybox", "state": "present",
            "vz_root": str(vz_root), "cgroup_parent": cgroup_parent}},
        dict(_template(vz_root, rebuild=True), name="v2"),
    ]))
    v1 = run.task("v1")["template"]["version"]
    v2 = run.task("v2")["template"]["version"]
    assert run.task("ve on v1")["ve"]["template"] == "busybox@%s" % v1

    # removing v1 (used by user1) is refused, naming the VE; nothing is removed
    fail = run_playbook(play([dict(_template(vz_root, state="absent", version=v1), name="rm v1")]),
                        expect_fail=True)
    res = fail.task("rm v1")
    assert res.failed
    assert "in use" in res.msg and "user1" in res.msg and v1 in res.msg, res.msg
    assert _versions(vz_root) == [v1, v2]
    # removing every version is refused as well
    fail = run_playbook(play([dict(_template(vz_root, state="absent"), name="rm all")]), expect_fail=True)
    assert "user1" in fail.task("rm all").msg
    assert _versions(vz_root) == [v1, v2]

    # v2 is unused: four steps of its removal
    result = four_steps(_template(vz_root, state="absent", version=v2))
    check, real, again, _check_again = result.steps["localhost"]
    assert check["actions"] == ["remove busybox@%s" % v2]
    assert real["actions"] == ["remove busybox@%s" % v2]
    assert again["actions"] == []
    assert real["template"]["versions"] == [v1]
    assert _versions(vz_root) == [v1]
    assert (Path(vz_root) / "templates/busybox" / v1 / "rootfs/bin/busybox").is_file()
    assert _tmp_entries(vz_root) == []


# ----------------------------------------------------------------------------- bad input


BAD_VERSIONS = ["latest", "../../etc", "20260101-1200", "20260101-120000\n"]
BAD_NAMES = ["../x", "Busybox", "a b", "a/b", "-x", "x" * 64, "", "x;reboot"]


def test_invalid_version_and_name_are_one_clear_error_each(run_playbook, vz_root):
    """Each bad value fails its task alone with a message naming it; nothing is touched."""
    run_playbook(play([dict(_template(vz_root), name="build")]))
    before = _versions(vz_root)
    tasks = [dict(_template(vz_root, state="absent", version=v), name="version %d" % i, ignore_errors=True)
             for i, v in enumerate(BAD_VERSIONS)]
    tasks += [{"name": "name %d" % i, "ignore_errors": True,
               "osvirt.vz.template": {"name": n, "vz_root": str(vz_root)}} for i, n in enumerate(BAD_NAMES)]
    tasks += [{"name": "name %d absent" % i, "ignore_errors": True,
               "osvirt.vz.template": {"name": n, "state": "absent", "vz_root": str(vz_root)}}
              for i, n in enumerate(BAD_NAMES)]
    run = run_playbook(play(tasks))
    for i, version in enumerate(BAD_VERSIONS):
        res = run.task("version %d" % i)
        assert res.failed, res.result
        assert "invalid template version" in res.msg and repr(version) in res.msg, res.msg
        assert "unexpected error" not in res.msg, res.msg
    for i, name in enumerate(BAD_NAMES):
        for task in ("name %d" % i, "name %d absent" % i):
            res = run.task(task)
            assert res.failed, res.result
            assert "invalid template name" in res.msg and repr(name) in res.msg, res.msg
            assert "unexpected error" not in res.msg, res.msg
    assert _versions(vz_root) == before
    assert sorted(p.name for p in (Path(vz_root) / "templates").iterdir()) == ["busybox"]
    assert _tmp_entries(vz_root) == []
