# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.template_info in a throw-away vz_root: versions with their
manifest summary, which VEs use which version, outdated VEs, disk use shared vs private, the
name filter, usage off, check mode, an empty store and a bad name.
"""

from __future__ import annotations


from template_helpers import play, publish_variant
from template_helpers import store  # noqa: F401  pylint: disable=unused-import


def _info(store, check=False, **options):
    task = {"name": "info", "osvirt.vz.template_info": dict({"vz_root": str(store.root)}, **options)}
    return store.run(play([task]), check=check).task("info")


def test_versions_users_outdated_and_disk(store):
    v1 = store.build()
    other = store.build(name="other")
    old_ve, new_ve, other_ve = store.name("old"), store.name("new"), store.name("oth")
    store.run(play([store.ve_task("old", name=old_ve, template="busybox")]))      # running: shifted copy
    v2 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "v2\n"})
    store.run(play([store.ve_task("new", name=new_ve, template="busybox", state="present"),
                    store.ve_task("oth", name=other_ve, template="other", state="present")]))
    store.attach(old_ve, "dd", "if=/dev/zero", "of=/root/blob", "bs=1024", "count=512")

    res = _info(store)
    assert not res.changed
    names = [t["name"] for t in res["templates"]]
    assert names == ["busybox", "other"]
    busybox = res["templates"][0]
    assert busybox["newest"] == v2 and busybox["ves"] == sorted([old_ve, new_ve])
    first, second = busybox["versions"]
    assert first["version"] == v1 and second["version"] == v2
    assert first["ref"] == "busybox@" + v1 and not first["newest"] and second["newest"]
    assert first["ves"] == [old_ve] and second["ves"] == [new_ve]
    assert first["in_use"] and second["in_use"] and first["children"] == []
    for key in ("created", "size", "checksum", "parent", "os", "arch", "packages", "source"):
        assert key in first, key
    assert first["packages"] == 1 and first["os"] == "busybox" and first["parent"] is None
    assert first["checksum"].startswith("sha256:") and first["checksum"] != second["checksum"]
    assert first["size"] > 100_000
    # creating a VE builds the shifted copy of its version for the host's id range
    assert first["idmaps"] == second["idmaps"] and len(first["idmaps"]) == 1
    assert first["shifted_bytes"] > 100_000 and second["shifted_bytes"] > 100_000
    assert res["outdated"] == [{"name": old_ve, "template": "busybox@" + v1, "newest": "busybox@" + v2}]
    by_name = {v["name"]: v for v in res["ves"]}
    assert by_name[old_ve]["outdated"] and not by_name[new_ve]["outdated"] and not by_name[other_ve]["outdated"]
    assert by_name[other_ve]["template"] == "other@" + other
    assert by_name[old_ve]["private_bytes"] >= 512 * 1024
    disk = res["disk"]
    assert disk["ves"] == 3
    assert disk["template_bytes"] == sum(v["size"] for t in res["templates"] for v in t["versions"])
    assert disk["shifted_bytes"] == sum(v["shifted_bytes"] for t in res["templates"] for v in t["versions"])
    assert disk["shared_bytes"] == disk["template_bytes"] + disk["shifted_bytes"]
    assert disk["private_bytes"] == sum(v["private_bytes"] for v in res["ves"])

    # the name filter, usage off, check mode: same answers, read-only
    only = _info(store, check=True, name=["other"], usage=False)
    assert not only.changed
    assert [t["name"] for t in only["templates"]] == ["other"]
    assert [v["name"] for v in only["ves"]] == [other_ve] and only["outdated"] == []
    assert only["disk"]["private_bytes"] is None and only["disk"]["shifted_bytes"] is None
    assert only["templates"][0]["versions"][0]["shifted_bytes"] is None

    # after a rebase nothing is outdated
    store.run(play([store.ve_task("rebase", name=old_ve, rebase="latest", restart=True)]))
    res = _info(store, name=["busybox"])
    assert res["outdated"] == []
    assert res["templates"][0]["versions"][0]["ves"] == [] and not res["templates"][0]["versions"][0]["in_use"]


def test_empty_store_and_bad_names(store):
    res = _info(store)
    assert res["templates"] == [] and res["ves"] == [] and res["outdated"] == []
    assert res["disk"]["ves"] == 0 and res["disk"]["shared_bytes"] == 0
    run = store.run(play([{"name": "bad", "ignore_errors": True,
                           "osvirt.vz.template_info": {"vz_root": str(store.root), "name": ["../etc"]}}]))
    bad = run.task("bad")
    assert bad.failed and "invalid template name '../etc'" in bad.msg, bad.msg
