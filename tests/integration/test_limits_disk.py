# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Disk space quota of a VE, seen from inside the VE (module_utils/_quota.py, docs/disk-quota.md).

Each test makes its own small btrfs file system (a 256M sparse image under /var/tmp, loop-mounted,
quotas enabled) and uses it as vz_root; it never needs the host role to have run here. VEs are
made and started with osvirt.vz.ve; the quota functions run with /usr/bin/python3 (as modules do
on a managed host) through a small harness, so this test checks them on a real VE directory while
the ``limits`` option of the modules is wired up.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

HOST_PYTHON = "/usr/bin/python3"
REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO_ROOT / ".build" / "collections"
MIB = 1 << 20

HARNESS = r"""
import json, sys
from ansible_collections.osvirt.vz.plugins.module_utils import _quota
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
args = json.loads(sys.argv[1])
host, meta = Host(args['vz_root']), {'name': args['name']}
try:
    if args['op'] == 'supported':
        out = list(_quota.quota_supported(host))
    elif args['op'] == 'usage':
        out = _quota.quota_usage(host, meta, sync=True)
    elif args['op'] == 'remove':
        out = _quota.remove_quota(host, meta, args.get('path'))
    else:
        fn = _quota.plan_quota if args['op'] == 'plan' else _quota.apply_quota
        out = fn(host, meta, args.get('space'), args.get('inodes'), running=args.get('running', False),
                 force=args.get('force', False))
    print(json.dumps({'ok': out}))
except VzError as exc:
    print(json.dumps({'error': str(exc)}))
"""


import features  # noqa: E402
from vzlib import remove_cgroups, sh  # noqa: E402


def quota(op, root, name, **args):
    """Call a _quota function with /usr/bin/python3; returns its result or {'error': message}."""
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([HOST_PYTHON, "-c", HARNESS, json.dumps(dict(args, op=op, vz_root=str(root),
                                                                       name=name))],
                          capture_output=True, text=True, env=env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return data if "error" in data else data["ok"]


def qgroups(mount_point):
    """Quota groups of the file system: {'0/257': referenced bytes}."""
    out = sh("btrfs", "qgroup", "show", "--raw", mount_point).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if line[:1].isdigit()}


@pytest.fixture(scope="module")
def btrfs_tools():
    """btrfs with quotas on this host (features.py). Without it the tests that enforce a quota do not
    apply: what such a host gets (disk.space refused with the reason, nothing changed) is asserted by
    test_a_host_without_quotas_says_why_and_what_to_do and test_the_modules_on_a_host_without_quotas,
    which run on any host, so the skip holds under CI too."""
    reason = features.why_not("btrfs_quota")
    if reason:
        pytest.skip("disk quota enforcement needs btrfs: %s" % reason)


@pytest.fixture
def quota_root(request, btrfs_tools):
    """A vz_root on a fresh 256M btrfs loop file system with quotas enabled (unless the test passes
    False as the fixture's param), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vz-quota-", dir="/var/tmp"))
    image, root = base / "vz.img", base / "vz"
    root.mkdir()
    mounted = False
    try:
        with open(image, "wb") as handle:
            handle.truncate(256 * MIB)
        sh("mkfs.btrfs", "-q", "-f", image)
        sh("mount", "-o", "loop", image, root)
        mounted = True
        if getattr(request, "param", True):
            sh("btrfs", "quota", "enable", root)
        os.chmod(base, 0o711)
        os.chmod(root, 0o711)   # unprivileged VEs traverse vz_root
        yield root
    finally:
        if (root / "ves").is_dir():
            for name in sh("lxc-ls", "-1", "-P", root / "ves", "--active", check=False).stdout.split():
                sh("lxc-stop", "-k", "-P", root / "ves", "-n", name, check=False)
        if mounted:
            if sh("umount", root, check=False).returncode != 0:
                sh("umount", "-l", root, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def store(quota_root, run_playbook):
    """quota_root with the busybox template and a cgroup parent of its own."""
    parent = "vzq-" + secrets.token_hex(3)
    run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "template", "osvirt.vz.template": {"name": "busybox", "vz_root": str(quota_root)}}]}])
    try:
        yield quota_root, parent
    finally:
        if (quota_root / "ves").is_dir():
            for name in sh("lxc-ls", "-1", "-P", quota_root / "ves", "--active", check=False).stdout.split():
                sh("lxc-stop", "-k", "-P", quota_root / "ves", "-n", name, check=False)
        remove_cgroups(parent)


def ve_task(root, parent, name, state):
    return {"name": "ve %s" % state, "osvirt.vz.ve": {
        "name": name, "template": "busybox", "state": state, "vz_root": str(root), "cgroup_parent": parent}}


def play(*tasks):
    return [{"hosts": "localhost", "gather_facts": False, "tasks": list(tasks)}]


def attach(root, name, *argv):
    return sh("lxc-attach", "-P", root / "ves", "-n", name, "--", *argv, check=False)


def test_disk_space_is_enforced_inside_the_ve_and_raised_live(store, run_playbook):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    assert quota("supported", root, name)[0] is True
    run_playbook(play(ve_task(root, parent, name, "stopped")))
    private = root / "ves" / name / "private"
    # made as a subvolume (make_private_area), owned by the VE's mapped root, no limit yet
    assert private.stat().st_ino == 256 and private.stat().st_uid == 100000
    assert quota("usage", root, name)["space_limit"] is None

    # check mode first: says it would change, changes nothing
    assert quota("plan", root, name, space=20 * MIB) is True
    assert quota("usage", root, name)["space_limit"] is None

    result = quota("apply", root, name, space=20 * MIB)
    assert result["changed"] is True and result["qgroup"].startswith("0/")
    assert quota("apply", root, name, space=20 * MIB) == {"changed": False, "qgroup": result["qgroup"]}
    assert quota("plan", root, name, space=20 * MIB) is False
    usage = quota("usage", root, name)
    assert usage["space_limit"] == 20 * MIB and 0 < usage["space_used"] < MIB
    assert usage["inodes_used"] is None and usage["inodes_limit"] is None

    run_playbook(play(ve_task(root, parent, name, "started")))
    pid_before = sh("lxc-info", "-P", root / "ves", "-n", name, "-pH").stdout.strip()

    # 30M inside a 20M quota: the write fails with EDQUOT, seen from inside the VE
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30")
    assert write.returncode != 0, write
    assert "Disk quota exceeded" in write.stderr, write.stderr
    sh("sync")
    usage = quota("usage", root, name)
    assert 18 * MIB <= usage["space_used"] <= 20 * MIB, usage

    # lowering below the use is refused (nothing changes) unless forced
    refused = quota("apply", root, name, space=10 * MIB, running=True)
    assert "uses" in refused["error"] and "force: true" in refused["error"], refused
    assert quota("usage", root, name)["space_limit"] == 20 * MIB
    # disk.inodes cannot be limited with btrfs quota groups: one clear error
    refused = quota("apply", root, name, space=20 * MIB, inodes=1000, running=True)
    assert "disk.inodes cannot be limited" in refused["error"]

    # raised live to 50M: the same write now succeeds, the VE was not restarted
    assert quota("apply", root, name, space=50 * MIB, running=True)["changed"] is True
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30")
    assert write.returncode == 0, write.stderr
    assert sh("lxc-info", "-P", root / "ves", "-n", name, "-pH").stdout.strip() == pid_before
    assert attach(root, name, "ls", "-l", "/root/big").stdout.split()[4] == str(30 * MIB)
    sh("sync")
    usage = quota("usage", root, name)
    assert usage["space_limit"] == 50 * MIB and 30 * MIB <= usage["space_used"] <= 32 * MIB, usage

    # lowered live below the use with force: writes fail, deleting still works
    assert quota("apply", root, name, space=10 * MIB, running=True, force=True)["changed"] is True
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/more", "bs=1M", "count=1")
    assert "Disk quota exceeded" in write.stderr, write
    assert attach(root, name, "rm", "/root/big").returncode == 0
    # no limit at all
    assert quota("apply", root, name, space=None, running=True)["changed"] is True
    assert quota("usage", root, name)["space_limit"] is None
    assert attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=60").returncode == 0


def test_a_ve_made_before_quotas_is_moved_into_a_subvolume_when_stopped(store, run_playbook):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    run_playbook(play(ve_task(root, parent, name, "started")))
    assert attach(root, name, "sh", "-c", "echo kept > /root/note && rm /bin/true").returncode == 0
    run_playbook(play(ve_task(root, parent, name, "stopped")))
    private = root / "ves" / name / "private"
    # what an earlier version made: a plain directory (copied with owners, xattrs and whiteouts)
    sh("cp", "-a", private, root / "ves" / name / "plain")
    sh("btrfs", "subvolume", "delete", private)
    (root / "ves" / name / "plain").rename(private)
    assert private.stat().st_ino != 256

    run_playbook(play(ve_task(root, parent, name, "started")))
    refused = quota("apply", root, name, space=20 * MIB, running=True)
    assert "is a plain directory" in refused["error"] and "stop it" in refused["error"], refused
    assert private.stat().st_ino != 256
    # asking for no quota on a VE without one is no change
    assert quota("apply", root, name, space=None, running=True) == {"changed": False, "qgroup": None}

    run_playbook(play(ve_task(root, parent, name, "stopped")))
    qgroup = quota("apply", root, name, space=20 * MIB)["qgroup"]
    assert private.stat().st_ino == 256 and private.stat().st_uid == 100000
    assert sorted(p.name for p in (root / "ves" / name).iterdir() if p.name.startswith("private")) == ["private"]
    run_playbook(play(ve_task(root, parent, name, "started")))
    # the VE's files and its deletions (overlay whiteouts) survived the move
    assert attach(root, name, "cat", "/root/note").stdout == "kept\n"
    assert attach(root, name, "ls", "/bin/true").returncode != 0
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30")
    assert "Disk quota exceeded" in write.stderr, write

    # removal (osvirt.vz.ve state=absent calls remove_quota): no subvolume, no quota group left
    assert qgroup in qgroups(root)
    run_playbook(play(ve_task(root, parent, name, "absent")))
    assert not (root / "ves" / name).exists()
    sh("btrfs", "subvolume", "sync", root)
    assert qgroup not in qgroups(root)
    assert sh("btrfs", "subvolume", "list", root).stdout.strip() == ""


def test_remove_quota_of_a_moved_private_area(store, run_playbook):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    run_playbook(play(ve_task(root, parent, name, "stopped")))
    qgroup = quota("apply", root, name, space=20 * MIB)["qgroup"]
    moved = root / ".tmp" / ("moved-" + name)
    (root / "ves" / name / "private").rename(moved)
    assert quota("remove", root, name, path=str(moved)) is True
    assert not moved.exists()
    assert quota("remove", root, name, path=str(moved)) is False
    sh("btrfs", "subvolume", "sync", root)
    assert qgroup not in qgroups(root)


@pytest.mark.parametrize("quota_root", [False], indirect=True)
def test_quotas_enabled_after_the_ve_was_made(store, run_playbook):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    run_playbook(play(ve_task(root, parent, name, "stopped")))
    # btrfs without quotas: refused with what to do; the private area is a subvolume already
    supported, reason = quota("supported", root, name)
    assert supported is False and 'btrfs quota enable %s' % root in reason, reason
    refused = quota("apply", root, name, space=20 * MIB)
    assert "quotas are not enabled" in refused["error"], refused
    assert (root / "ves" / name / "private").stat().st_ino == 256
    # once enabled, that subvolume has its quota group: no move needed, even while the VE runs
    sh("btrfs", "quota", "enable", root)
    run_playbook(play(ve_task(root, parent, name, "started")))
    assert quota("apply", root, name, space=20 * MIB, running=True)["changed"] is True
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30")
    assert "Disk quota exceeded" in write.stderr, write


@pytest.mark.parametrize("space, message", [
    (0, "must be a positive number of bytes"),
    (-MIB, "must be a positive number of bytes"),
])
def test_bad_values_change_nothing(store, run_playbook, space, message):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    run_playbook(play(ve_task(root, parent, name, "stopped")))
    refused = quota("apply", root, name, space=space)
    assert message in refused["error"], refused
    assert quota("usage", root, name)["space_limit"] is None


def test_a_host_without_quotas_says_why_and_what_to_do(vz_root):
    # vz_root of the usual fixture: ext4 here, which has no usable quota on this kernel
    supported, reason = quota("supported", vz_root, "web1")
    assert supported is False
    assert "run the osvirt.vz.host role with host_vz_filesystem" in reason, reason
    (vz_root / "ves" / "web1" / "private").mkdir(parents=True)
    refused = quota("apply", vz_root, "web1", space=20 * MIB)
    assert refused["error"].startswith("VE web1: disk.space cannot be applied: vz_root"), refused


# --------------------------------------------- through the modules (osvirt.vz.ve, ve_limits, ve_info)


def test_disk_space_through_the_modules(store, run_playbook, four_steps):
    root, parent = store
    name = "q" + secrets.token_hex(3)
    common = {"name": name, "vz_root": str(root), "cgroup_parent": parent}
    result = four_steps({"osvirt.vz.ve": dict(common, template="busybox", state="started",
                                              limits={"disk": {"space": "20M"}})})
    real = result.steps["localhost"][1]
    assert real["ve"]["state"] == "running"
    assert quota("usage", root, name)["space_limit"] == 20 * MIB
    pid = sh("lxc-info", "-P", root / "ves", "-n", name, "-pH").stdout.strip()
    write = attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30")
    assert "Disk quota exceeded" in write.stderr, write

    # raised live with the vzctl alias; the write succeeds, same init pid
    result = four_steps({"osvirt.vz.ve_limits": dict(common, limits={"diskspace": "50M"})})
    check, real = result.steps["localhost"][:2]
    assert check["diff"]["before"]["limits"]["disk"]["space"] != check["diff"]["after"]["limits"]["disk"]["space"]
    assert quota("usage", root, name)["space_limit"] == 50 * MIB
    assert attach(root, name, "dd", "if=/dev/zero", "of=/root/big", "bs=1M", "count=30").returncode == 0
    assert sh("lxc-info", "-P", root / "ves", "-n", name, "-pH").stdout.strip() == pid

    # usage against the limit in ve_info
    sh("sync")
    info = run_playbook(play({"name": "info", "osvirt.vz.ve_info": {"name": [name], "vz_root": str(root)}}))
    disk = info.task("info")["ves"][0]["usage"]["disk"]
    assert disk["space_limit"] == 50 * MIB and 30 * MIB <= disk["space_used"] <= 32 * MIB, disk

    # bad input: one clear error each, the limit stays
    for limits, message in (({"disk": {"space": "10M"}}, "force: true"),
                            ({"disk": {"inodes": 1000}}, "disk.inodes cannot be limited"),
                            ({"disk": {"space": "0"}}, "disk.space")):
        run = run_playbook(play({"name": "bad", "osvirt.vz.ve_limits": dict(common, limits=limits)}),
                           expect_fail=True)
        assert message in run.task("bad").msg, run.report()
        assert quota("usage", root, name)["space_limit"] == 50 * MIB
    run = run_playbook(play({"name": "forced", "osvirt.vz.ve_limits": dict(
        common, limits={"disk": {"space": "10M"}}, force=True)}))
    assert run.task("forced").changed and quota("usage", root, name)["space_limit"] == 10 * MIB

    # removal: no subvolume, no quota group left
    qgroup = "0/%s" % sh("btrfs", "inspect-internal", "rootid", root / "ves" / name / "private").stdout.strip()
    run_playbook(play({"name": "absent", "osvirt.vz.ve": dict(common, state="absent")}))
    sh("btrfs", "subvolume", "sync", root)
    assert qgroup not in qgroups(root)
    assert sh("btrfs", "subvolume", "list", root).stdout.strip() == ""


def test_the_modules_on_a_host_without_quotas(vz_root, run_playbook):
    # vz_root of the usual fixture is on ext4 here: disk.space is refused, saying what to do
    os.chmod(vz_root, 0o711)
    run_playbook(play({"name": "template", "osvirt.vz.template": {"name": "busybox", "vz_root": str(vz_root)}}))
    run = run_playbook(play({"name": "ve", "osvirt.vz.ve": {
        "name": "q" + secrets.token_hex(3), "template": "busybox", "state": "present", "vz_root": str(vz_root),
        "limits": {"disk": {"space": "20M"}}}}), expect_fail=True)
    message = run.task("ve").msg
    assert "disk.space cannot be applied" in message and "host_vz_filesystem" in message, message
    assert not (vz_root / "ves").exists() or list((vz_root / "ves").iterdir()) == []
