# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of removing and pruning template versions with osvirt.vz.template in a
throw-away vz_root: ``prune: {keep: N}`` in four steps (never the newest, never one in use,
listed in kept_in_use), check mode predicting a build plus prune, a version another template
is built on (kept by prune, refused by absent), and bad keep values.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from template_helpers import play, publish_variant, tree_checksum
from template_helpers import store  # noqa: F401  pylint: disable=unused-import


def _child(store, parent_ref, name="app"):
    """Publish a one-file layer template ``name`` whose parent is ``parent_ref``."""
    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    directory = store.root / "templates" / name / version
    (directory / "rootfs" / "etc").mkdir(parents=True)
    (directory / "rootfs" / "etc" / "app.conf").write_text("app\n")
    os.chmod(store.root / "templates" / name, 0o711)
    manifest = {"name": name, "version": version, "parent": parent_ref, "os": "busybox", "packages": [],
                "created": "2026-11-25T00:00:00Z", "size": 4096,
                "checksum": "sha256:" + tree_checksum(str(directory / "rootfs"))}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return version


def test_prune_four_steps_keeps_newest_and_versions_in_use(store, four_steps):
    v1 = store.build()
    ve = store.name("p")
    store.run(play([store.ve_task("on v1", name=ve, template="busybox", state="present")]))
    v2 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "2\n"})
    v3 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "3\n"})
    v4 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "4\n"})

    result = four_steps({"osvirt.vz.template": {"name": "busybox", "vz_root": str(store.root),
                                                "prune": {"keep": 1}}})
    check, real, again, check_again = result.steps["localhost"]
    expected = ["remove busybox@%s" % v2, "remove busybox@%s" % v3]
    assert check["actions"] == expected and real["actions"] == expected, real.result
    assert check["pruned"] == [v2, v3] and real["pruned"] == [v2, v3]
    assert real["kept_in_use"] == {v1: ["VE %s" % ve]}
    assert again["actions"] == [] and again["kept_in_use"] == {v1: ["VE %s" % ve]}
    assert check_again["actions"] == []
    assert check["diff"]["after"]["versions"] == [v1, v4]
    assert store.versions() == [v1, v4]
    assert real["template"]["versions"] == [v1, v4] and real["template"]["version"] == v4
    assert store.tmp_entries() == []

    # once the VE moves on, v1 goes too; keep 2 of [v1, v4] removes nothing
    store.run(play([store.ve_task("rebase", name=ve, rebase="latest", state="present")]))
    res = store.run(play([store.template_task("keep2", name="busybox", prune={"keep": 2})])).task("keep2")
    assert not res.changed and store.versions() == [v1, v4]
    res = store.run(play([store.template_task("keep1", name="busybox", prune={"keep": 1})])).task("keep1")
    assert res["pruned"] == [v1] and res["kept_in_use"] == {} and store.versions() == [v4]


def test_check_mode_predicts_a_build_followed_by_prune(store):
    v1 = store.build()
    v2 = store.build(rebuild=True)
    task = store.template_task("rebuild and prune", name="busybox", rebuild=True, prune={"keep": 1})
    check = store.run(play([task]), check=True).task("rebuild and prune")
    assert store.versions() == [v1, v2]
    assert check.changed and check["actions"][0].startswith("build busybox@")
    assert check["pruned"] == [v1, v2]
    real = store.run(play([task])).task("rebuild and prune")
    assert real["pruned"] == [v1, v2]
    assert store.versions() == [real["template"]["version"]]


def test_a_version_other_templates_build_on_stays(store):
    v1 = store.build()
    v2 = store.build(rebuild=True)
    child = _child(store, "busybox@" + v1)
    res = store.run(play([store.template_task("prune", name="busybox", prune={"keep": 1})])).task("prune")
    assert not res.changed and res["kept_in_use"] == {v1: ["template app@%s" % child]}
    run = store.run(play([store.template_task("rm", name="busybox", version=v1, state="absent")]), expect_fail=True)
    msg = run.task("rm").msg
    assert "in use" in msg and "template app@%s" % child in msg and v1 in msg, msg
    assert store.versions() == [v1, v2]


@pytest.mark.parametrize("keep", [0, -1])
def test_bad_keep_is_one_clear_error(store, keep):
    store.build()
    before = store.versions()
    run = store.run(play([dict(store.template_task("prune", name="busybox", prune={"keep": keep}),
                               ignore_errors=True)]))
    res = run.task("prune")
    assert res.failed and "keep must be a whole number of at least 1" in res.msg, res.msg
    assert store.versions() == before
