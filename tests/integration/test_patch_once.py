# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
""""Patch once for all" with module-level pieces (docs/patching.md), in a throw-away vz_root:

build v1 -> six running VEs on v1 -> build v2 (rebuild) -> rebase the VEs in two batches of
three with ``rebase: latest`` + ``restart: true`` (bulk form; four steps for each batch) ->
template_info shows the second batch outdated after batch 1 and nothing after batch 2 ->
``prune: {keep: 1}`` removes v1 (four steps). Finally the documented playbook (batches of a
VE list with the ``batch`` filter) runs once more and changes nothing.
"""

from __future__ import annotations


from template_helpers import play
from template_helpers import store  # noqa: F401  pylint: disable=unused-import


def _outdated(store):
    task = {"name": "info", "osvirt.vz.template_info": {"vz_root": str(store.root), "name": ["busybox"]}}
    res = store.run(play([task])).task("info")
    return sorted(v["name"] for v in res["outdated"]), res


def test_patch_once_for_all(store, four_steps):
    v1 = store.build()
    names = [store.name("p%d" % i) for i in range(6)]
    store.run(play([store.ve_task("six", template="busybox", ves=[{"name": n} for n in names])]))
    pids = {n: store.pid(n) for n in names}
    assert all(pids.values()), pids
    assert _outdated(store)[0] == []

    # the new version (a real upgrade would rebuild with newer packages)
    v2 = store.build(rebuild=True)
    assert v2 > v1
    assert _outdated(store)[0] == names

    batches = [names[:3], names[3:]]
    for number, batch in enumerate(batches, 1):
        task = store.opts(rebase="latest", restart=True, ves=[{"name": n} for n in batch])
        result = four_steps({"osvirt.vz.ve": task})
        check, real, again, _check_again = result.steps["localhost"]
        for res in (check, real):
            assert sorted(r["name"] for r in res["rebased"]) == batch, res.result
            assert all(r["from"] == "busybox@" + v1 and r["to"] == "busybox@" + v2 for r in res["rebased"])
            assert sorted(res["actions"]) == sorted(
                ["rebase %s from busybox@%s to busybox@%s" % (n, v1, v2) for n in batch] +
                ["stop %s" % n for n in batch] + ["start %s" % n for n in batch])
        # an identical rebuild changes no file, so no private file hides anything
        assert real["hidden_files"] == {n: [] for n in batch}
        assert real["restart_required"] is False and again["restart_required"] is False
        for n in batch:
            assert store.lxc_state(n) == "RUNNING" and store.pid(n) != pids[n]
            assert store.meta(n)["template"] == "busybox@" + v2
        outdated, info = _outdated(store)
        assert outdated == (batches[1] if number == 1 else []), info["outdated"]

    versions = {v["version"]: v for v in info["templates"][0]["versions"]}
    assert versions[v1]["ves"] == [] and sorted(versions[v2]["ves"]) == names

    result = four_steps({"osvirt.vz.template": {"name": "busybox", "vz_root": str(store.root), "prune": {"keep": 1}}})
    check, real, again, _check_again = result.steps["localhost"]
    assert check["pruned"] == [v1] and real["pruned"] == [v1] and again["pruned"] == []
    assert store.versions() == [v2]
    assert all(store.lxc_state(n) == "RUNNING" for n in names)

    # the documented playbook form: batches of a VE list, one bulk task per batch; all done already
    run = store.run(play([{
        "name": "rebase in batches",
        "osvirt.vz.ve": {"vz_root": str(store.root), "cgroup_parent": store.parent, "rebase": "latest",
                         "restart": True, "ves": "{{ item }}"},
        "loop": "{{ ves | batch(3) | list }}",
    }]), extra_vars={"ves": [{"name": n} for n in names]})
    assert not run.task("rebase in batches").changed
