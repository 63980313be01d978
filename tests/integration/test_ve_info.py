# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.ve_info: a throw-away vz_root with three VEs (running,
stopped, frozen) made once for the module, read back with every filter. ve_info is read-only:
every task must report changed=false, in check mode too, and leave the store as it was.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from vzlib import new_cgroup_parent, play, remove_cgroups, sh

GATEWAY = "10.20.0.1"


def _snapshot(root):
    """Every path under root with its mtime (lock files excluded: reading may take none)."""
    result = {}
    for current, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(current, entry)
            if "/locks/" in path or "/private/" in path or path.endswith("lxc.log"):
                continue
            result[path] = os.lstat(path).st_mtime_ns
    return result


class Store:
    def __init__(self, root, parent, prefix, runner, version):
        self.root, self.parent, self.prefix, self.runner, self.version = root, parent, prefix, runner, version
        self.running, self.stopped, self.frozen = (prefix + "-run", prefix + "-stop", prefix + "-frz")

    def info(self, title="info", **options):
        return {"name": title, "osvirt.vz.ve_info": dict({"vz_root": str(self.root)}, **options)}


@pytest.fixture(scope="module")
def store(harness, tmp_path_factory, localhost):
    if not Path("/sys/class/net/vzbr0/bridge").is_dir():
        pytest.fail("bridge vzbr0 is missing (test_ve.py's bridge fixture or the host role makes it)")
    root = Path(tempfile.mkdtemp(prefix="vz-test-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    parent = new_cgroup_parent()
    prefix = "i" + secrets.token_hex(2)
    runner = harness.PlaybookRunner(tmp_path_factory.mktemp("ve_info"), localhost)
    try:
        common = {"vz_root": str(root), "cgroup_parent": parent, "template": "busybox"}
        run = runner(play([
            {"name": "template", "osvirt.vz.template": {"name": "busybox", "vz_root": str(root)}},
            {"name": "ves", "osvirt.vz.ve": dict(common, ves=[
                {"name": prefix + "-run", "state": "started", "owner": "team-a",
                 "network": [{"ipv4": ["10.20.0.220/24"], "gateway4": GATEWAY}]},
                {"name": prefix + "-stop", "state": "stopped",
                 "network": [{"ipv4": ["10.20.0.221/24", "10.20.0.222/24"]}]},
                {"name": prefix + "-frz", "state": "frozen"},
            ])},
        ]))
        yield Store(root, parent, prefix, runner, run.task("template")["template"]["version"])
    finally:
        harness._release_vz_root(root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        remove_cgroups(parent)


def _by_name(res):
    return {v["name"]: v for v in res["ves"]}


def test_all_ves_with_every_field(store):
    before = _snapshot(store.root)
    run = store.runner(play([store.info("all")]))
    res = run.task("all")
    assert not res.changed and res.ok
    assert [v["name"] for v in res["ves"]] == sorted([store.running, store.stopped, store.frozen])
    assert res["missing"] == []
    assert res["host"]["vz_root"] == str(store.root)
    assert res["host"]["cgroup_layout"] in ("v1", "v2", "hybrid")
    ves = _by_name(res)
    for name, ve in ves.items():
        for key in ("state", "template", "template_name", "template_version", "ips", "pid", "memory_bytes",
                    "private_bytes", "created"):
            assert key in ve, f"{name} lacks {key}: {ve}"
        assert ve["template"] == "busybox@%s" % store.version
        assert ve["template_name"] == "busybox"
        assert ve["template_version"] == store.version
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ve["created"]), ve["created"]
        assert isinstance(ve["private_bytes"], int) and ve["private_bytes"] >= 0
    run_ve, stop_ve, frz_ve = ves[store.running], ves[store.stopped], ves[store.frozen]
    assert run_ve["state"] == "running" and stop_ve["state"] == "stopped" and frz_ve["state"] == "frozen"
    assert run_ve["ips"] == ["10.20.0.220"]
    assert stop_ve["ips"] == ["10.20.0.221", "10.20.0.222"]
    assert frz_ve["ips"] == []
    pid = sh("lxc-info", "-P", str(store.root / "ves"), "-n", store.running, "-pH").stdout.strip()
    assert run_ve["pid"] == int(pid)
    assert isinstance(frz_ve["pid"], int)
    assert stop_ve["pid"] is None
    assert run_ve["memory_bytes"] > 0 and frz_ve["memory_bytes"] > 0
    assert stop_ve["memory_bytes"] == 0
    # a running VE has written something into its private area (rcS makes /var/run)
    assert run_ve["private_bytes"] > 0
    assert run_ve["owner"] == "team-a"
    # read-only: nothing in the store changed
    assert _snapshot(store.root) == before


def test_filters_by_name_and_state(store):
    run = store.runner(play([
        store.info("one", name=[store.stopped]),
        store.info("two", name=[store.frozen, store.running]),
        store.info("running", state=["running"]),
        store.info("stopped or frozen", state=["stopped", "frozen"]),
        store.info("name and state", name=[store.running, store.stopped], state=["stopped"]),
        store.info("unknown", name=[store.running, "nosuch-ve", "other-missing"]),
        store.info("no usage", name=[store.running], usage=False),
    ]))

    def names(task):
        return [v["name"] for v in run.task(task)["ves"]]
    assert names("one") == [store.stopped]
    assert names("two") == sorted([store.frozen, store.running])
    assert names("running") == [store.running]
    assert names("stopped or frozen") == sorted([store.stopped, store.frozen])
    assert names("name and state") == [store.stopped]
    assert names("unknown") == [store.running]
    assert run.task("unknown")["missing"] == ["nosuch-ve", "other-missing"]
    # a VE that exists but is filtered out by state is not "missing"
    assert run.task("name and state")["missing"] == []
    no_usage = run.task("no usage")["ves"][0]
    assert "memory_bytes" not in no_usage and "private_bytes" not in no_usage
    assert all(not r.changed for r in run.results)


def test_check_mode_and_bad_input(store):
    before = _snapshot(store.root)
    run = store.runner(play([
        dict(store.info("check"), check_mode=True),
        dict(store.info("bad name", name=["../etc"]), ignore_errors=True),
        dict(store.info("bad state", state=["sleeping"]), ignore_errors=True),
    ]))
    check = run.task("check")
    assert not check.changed and len(check["ves"]) == 3
    bad = run.task("bad name")
    assert bad.failed and "invalid VE name" in bad.msg and "'../etc'" in bad.msg, bad.msg
    bad = run.task("bad state")
    assert bad.failed and "sleeping" in bad.msg, bad.msg
    assert _snapshot(store.root) == before


def test_empty_store(run_playbook, vz_root):
    """A vz_root without any VE (not even a ves/ dir) lists nothing and creates nothing."""
    run = run_playbook(play([{"name": "info", "osvirt.vz.ve_info": {"vz_root": str(vz_root), "name": ["a1"]}}]))
    res = run.task("info")
    assert res.ok and res["ves"] == [] and res["missing"] == ["a1"]
    assert list(Path(vz_root).iterdir()) == []
