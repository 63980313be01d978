# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash safety, proved by killing (docs/robustness.md): real operations run as Ansible runs
them, their whole process group SIGKILLed at a random moment, then the same task run again.

After every kill the rerun must succeed and reach the desired state, and the store must hold
no mess: every ves/ entry a complete VE or gone, nothing of the killed run in .tmp, no leaked or
doubled lease, no half-published template version, no VE running twice, a file written inside
a VE before the kill unchanged, configs that liblxc parses (killlib.py has the invariants).

The seed is printed (``-s`` or the terminal summary); ``VZ_KILL_SEED=<seed>`` replays a run,
``VZ_KILL_POINTS=<n>`` scales the number of kill points (60 when unset and in ``make test``;
``make soak-kill`` as many as asked).
Addresses: 10.20.0.170-179 only.
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

from killlib import (ModuleRun, assert_clean, file_digest, kill_points, kill_seed, running_ves,
                     templates_complete, tmp_clean, write_canary)
from template_helpers import publish_variant
from test_ve import BRIDGE, GATEWAY, bridge  # noqa: F401 pylint: disable=unused-import
from vzlib import kill_all, remove_cgroups, sh

SEED = kill_seed()
MIB = 1 << 20
# every kill point of the session, for the summary at its end and docs/robustness.md
REPORT = {"seed": SEED, "ops": {}, "invariant_checks": 0, "started": time.monotonic()}
REPORT_FILE = Path(__file__).resolve().parents[2] / ".build" / "kill-report.json"


def _record(runner, checks):
    REPORT["invariant_checks"] += checks
    REPORT["module_runs"] = REPORT.get("module_runs", 0) + runner.runs
    for op, row in runner.summary().items():
        total = REPORT["ops"].setdefault(op, {"module": 0, "after": 0, "done": 0})
        for key, value in row.items():
            total[key] += value


@pytest.fixture(scope="module", autouse=True)
def kill_report(request):
    print("\nkill suite seed %d (replay with VZ_KILL_SEED=%d)" % (SEED, SEED))
    yield REPORT
    REPORT["seconds"] = round(time.monotonic() - REPORT["started"], 1)
    REPORT["kill_points"] = sum(r["module"] for r in REPORT["ops"].values())
    REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
    REPORT_FILE.write_text(json.dumps({k: v for k, v in REPORT.items() if k != "started"}, indent=2) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("kill suite: seed %d, %d kill points inside modules, %d invariant checks, %d module "
                            "runs, %.0f s" % (SEED, REPORT["kill_points"], REPORT["invariant_checks"],
                                              REPORT.get("module_runs", 0), REPORT["seconds"]))
        for op, row in sorted(REPORT["ops"].items()):
            reporter.write_line("  %-28s %s" % (op, row))


class KillStore:
    """One test's store: vz_root with the busybox template, a cgroup parent, a name prefix, a runner."""

    def __init__(self, root, parent, version, runner):
        self.root, self.parent, self.version, self.run = Path(root), parent, version, runner
        self.prefix = "k" + secrets.token_hex(2)

    def name(self, short):
        return "%s-%s" % (self.prefix, short)

    def ve(self, **options):
        return dict({"vz_root": str(self.root), "cgroup_parent": self.parent}, **options)

    def state(self, name):
        proc = sh("lxc-info", "-P", self.root / "ves", "-n", name, "-sH", check=False)
        return proc.stdout.strip() if proc.returncode == 0 and (self.root / "ves" / name).is_dir() else "ABSENT"

    def meta(self, name):
        return json.loads((self.root / "ves" / name / "ve.json").read_text())

    def attach(self, name, *argv):
        return sh("lxc-attach", "-P", self.root / "ves", "-n", name, "--", *argv, check=False)


def _runner(request, localhost, **kwargs):
    return ModuleRun(localhost, "%d:%s" % (SEED, request.node.name), **kwargs)


@pytest.fixture
def kstore(request, vz_root, cgroup_parent, built_template, localhost):
    templates, version = built_template
    os.chmod(vz_root, 0o711)
    sh("cp", "-a", "--reflink=auto", templates, vz_root / "templates")
    runner = _runner(request, localhost)
    store = KillStore(vz_root, cgroup_parent, version, runner)
    checks = {"n": 0}
    store.checks = checks
    try:
        yield store
    finally:
        _record(runner, checks["n"])
        kill_all(vz_root / "ves")


def _kill_and_rerun(store, op, module, args, duration, root=None, templates=True):
    """One kill point: kill the task, run it again (must succeed), check the store. Returns the rerun."""
    point = store.run.kill_point(op, module, args, duration)
    rerun = store.run.run(module, args)
    assert not rerun.failed, "rerun after %s failed (seed %d)\n%s" % (point, SEED, rerun.describe())
    store.checks["n"] += assert_clean(root or store.root, point, SEED, templates=templates)
    return point, rerun


# ------------------------------------------------------------------------------- VE lifecycle


def test_kill_bulk_create_start_and_removal_of_ten_ves(kstore):
    names = [kstore.name("b%d" % i) for i in range(10)]
    start = kstore.ve(ves=[{"name": n} for n in names], template="busybox", state="started")
    remove = kstore.ve(ves=[{"name": n} for n in names], state="absent")
    create_time = kstore.run.must("ve", start, "bulk create+start").duration
    remove_time = kstore.run.must("ve", remove, "bulk removal").duration
    for _cycle in range(kill_points(5)):
        point, _rerun = _kill_and_rerun(kstore, "bulk create+start 10 VEs", "ve", start, create_time)
        states = {n: kstore.state(n) for n in names}
        assert set(states.values()) == {"RUNNING"}, (point, states)
        point, _rerun = _kill_and_rerun(kstore, "bulk removal 10 VEs", "ve", remove, remove_time)
        assert not any((kstore.root / "ves" / n).exists() for n in names), point
        assert not running_ves(kstore.root), point


def test_kill_stop_start_restart(kstore):
    name = kstore.name("life")
    kstore.run.must("ve", kstore.ve(name=name, template="busybox", state="started"), "create")
    digest = write_canary(kstore.root, name)
    durations = {}
    want = {"stopped": "STOPPED", "started": "RUNNING", "restarted": "RUNNING"}
    for _i in range(kill_points(11)):
        state = kstore.run.rng.choice(sorted(want))
        args = kstore.ve(name=name, state=state)
        if state not in durations:   # measured on the way there, from the state it is in now
            durations[state] = kstore.run.must("ve", args, state).duration
            if state == "stopped":
                durations[state] = max(durations[state], 0.5)
        point, _rerun = _kill_and_rerun(kstore, "stop/start/restart", "ve", args, durations[state])
        assert kstore.state(name) == want[state], point
        assert file_digest(kstore.root, name, "/root/canary") == digest, "canary changed after %s" % point


def test_kill_rebase_to_a_new_version_and_back(kstore):
    name = kstore.name("reb")
    old = "busybox@%s" % kstore.version
    kstore.run.must("ve", kstore.ve(name=name, template=old, state="started"), "create")
    new = "busybox@%s" % publish_variant(kstore.root, "busybox", kstore.version, write={"etc/motd": "version two\n"})
    digest = write_canary(kstore.root, name)
    # a running VE moves to the new version when it restarts: restart: true does it in the same task
    there = kstore.run.must("ve", kstore.ve(name=name, template=new, state="started", restart=True),
                            "rebase").duration
    back = kstore.run.must("ve", kstore.ve(name=name, template=old, state="started", restart=True),
                           "rebase back").duration
    for _i in range(kill_points(3)):
        for ref, duration in ((new, there), (old, back)):
            args = kstore.ve(name=name, template=ref, state="started", restart=True)
            point, _rerun = _kill_and_rerun(kstore, "rebase and back", "ve", args, duration)
            assert kstore.meta(name)["template"] == ref and kstore.state(name) == "RUNNING", point
            motd = kstore.attach(name, "cat", "/etc/motd").stdout
            assert (motd == "version two\n") == (ref == new), (point, motd)
            assert file_digest(kstore.root, name, "/root/canary") == digest, "canary changed after %s" % point


def test_kill_address_change_on_a_running_ve(kstore, bridge):
    name = kstore.name("addr")
    addresses = ["10.20.0.171/24", "10.20.0.172/24"]

    def args(address):
        return kstore.ve(name=name, template="busybox", state="started", network=[
            {"name": "eth0", "bridge": BRIDGE, "ipv4": [address], "gateway4": GATEWAY}])

    kstore.run.must("ve", args(addresses[0]), "create")
    digest = write_canary(kstore.root, name)
    there = kstore.run.must("ve", args(addresses[1]), "address change").duration
    back = kstore.run.must("ve", args(addresses[0]), "address change back").duration
    for _i in range(kill_points(3)):
        for address, duration in ((addresses[1], there), (addresses[0], back)):
            point, _rerun = _kill_and_rerun(kstore, "address change", "ve", args(address), duration)
            inside = kstore.attach(name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
            have = sorted(w for line in inside.splitlines() for w in line.split()[3:4])
            assert have == [address], (point, inside)
            assert file_digest(kstore.root, name, "/root/canary") == digest, "canary changed after %s" % point
    # removal of a running VE with an address: its lease, filter and directory go, whatever the kill hit
    remove = kstore.ve(name=name, state="absent")
    removal = kstore.run.must("ve", remove, "remove").duration
    for _i in range(kill_points(3)):
        kstore.run.must("ve", args(addresses[0]), "create again")
        point, _rerun = _kill_and_rerun(kstore, "removal (with address)", "ve", remove, removal)
        assert not (kstore.root / "ves" / name).exists(), point
        assert not list((kstore.root / "net" / "leases").iterdir()), point


# ------------------------------------------------------------------------------------- limits


def _btrfs_root():
    """A vz_root on a fresh btrfs loop file system with quotas, or None with why it cannot be made."""
    if not (shutil.which("mkfs.btrfs") and shutil.which("btrfs")):
        return None, None, "btrfs-progs is not installed"
    base = Path(tempfile.mkdtemp(prefix="vz-killq-", dir="/var/tmp"))
    image, root = base / "vz.img", base / "vz"
    root.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(512 * MIB)
    try:
        sh("mkfs.btrfs", "-q", "-f", image)
        sh("mount", "-o", "loop", image, root)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(base, ignore_errors=True)
        return None, None, "cannot make a btrfs loop file system: %s" % (exc.stderr or exc).strip()
    sh("btrfs", "quota", "enable", root)
    os.chmod(base, 0o711)
    os.chmod(root, 0o711)
    return base, root, None


def _ifb_works():
    """True when this kernel makes IFB devices (the network rate needs one)."""
    probe = "vzkifb%s" % secrets.token_hex(2)
    if sh("ip", "link", "add", probe, "type", "ifb", check=False).returncode != 0:
        return False
    sh("ip", "link", "del", probe, check=False)
    return True


@pytest.fixture
def quota_store(request, cgroup_parent, built_template, localhost):
    base, root, why = _btrfs_root()
    if root is None:
        if os.environ.get("CI"):
            pytest.fail("disk quota kill points need a btrfs vz_root: %s" % why, pytrace=False)
        pytest.skip("disk quota kill points need a btrfs vz_root: %s" % why)
    templates, version = built_template
    sh("cp", "-a", templates, root / "templates")
    runner = _runner(request, localhost)
    store = KillStore(root, cgroup_parent, version, runner)
    store.checks = {"n": 0}
    try:
        yield store
    finally:
        _record(runner, store.checks["n"])
        kill_all(root / "ves")
        for iface in (root / "ves").glob("*/ve.json"):
            for link in json.loads(iface.read_text()).get("network") or []:
                sh("nft", "delete", "chain", "netdev", "osvirt_vz_guard", "ve_" + link["host_link"], check=False)
        remove_cgroups(cgroup_parent)
        if sh("umount", root, check=False).returncode != 0:
            sh("umount", "-l", root, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_kill_limits_change_with_disk_quota_and_net_rate(quota_store, bridge):
    store = quota_store
    name = store.name("lim")
    shaping = _ifb_works()
    sets = [{"cpu": {"limit": "50%"}, "memory": {"ram": "256M"}, "disk": {"space": "64M"}},
            {"cpu": {"limit": "80%"}, "memory": {"ram": "384M"}, "disk": {"space": "96M"}}]
    if shaping:
        sets[0]["net"], sets[1]["net"] = {"rate": "8Mbit"}, {"rate": "16Mbit"}

    def args(limits):
        return store.ve(name=name, template="busybox", state="started", limits=limits, network=[
            {"name": "eth0", "bridge": BRIDGE, "ipv4": ["10.20.0.175/24"], "gateway4": GATEWAY}])

    if not shaping:   # what this host offers decides: without IFB the rate is refused, nothing changes
        refused = store.run.run("ve", args(dict(sets[0], net={"rate": "8Mbit"})))
        assert refused.failed and "net" in refused.result.get("msg", ""), refused.describe()
        assert not (store.root / "ves" / name).exists()
    store.run.must("ve", args(sets[0]), "create with limits")
    digest = write_canary(store.root, name)
    durations = [store.run.must("ve", args(s), "limits").duration for s in (sets[1], sets[0])]
    for _i in range(kill_points(3)):
        for limits, duration in ((sets[1], durations[0]), (sets[0], durations[1])):
            point, rerun = _kill_and_rerun(store, "limits change (quota%s)" % (", rate" if shaping else ""),
                                           "ve", args(limits), duration)
            assert store.meta(name)["limits"]["disk"]["space"] == int(limits["disk"]["space"][:-1]) * MIB, point
            info = store.run.must("ve_info", {"name": [name], "vz_root": str(store.root)}, "ve_info").result
            usage = info["ves"][0]["usage"]
            assert usage["disk"]["space_limit"] == int(limits["disk"]["space"][:-1]) * MIB, (point, usage)
            if shaping:
                assert usage["net"]["rate"] == int(limits["net"]["rate"][:-4]) * 10 ** 6, (point, usage)
            assert file_digest(store.root, name, "/root/canary") == digest, "canary changed after %s" % point


# ---------------------------------------------------------------------------------- templates


def test_kill_template_builds_busybox_and_layer(kstore):
    busybox = {"name": "busybox", "vz_root": str(kstore.root), "rebuild": True}
    layer = {"name": "kbox-app", "vz_root": str(kstore.root), "rebuild": True,
             "source": {"type": "layer", "base": "busybox",
                        "commands": [["sh", "-c", "echo layer > /etc/layer && dd if=/dev/zero of=/var/blob bs=64k count=32"]]}}
    durations = [kstore.run.must("template", busybox, "busybox build").duration,
                 kstore.run.must("template", layer, "layer build").duration]
    for _i in range(kill_points(6)):
        for op, args, duration in (("template build busybox", busybox, durations[0]),
                                   ("template build layer", layer, durations[1])):
            _kill_and_rerun(kstore, op, "template", args, duration)
    # what was built works: a VE on the newest layer sees its file
    name = kstore.name("app")
    kstore.run.must("ve", kstore.ve(name=name, template="kbox-app", state="started"), "VE on the layer")
    assert kstore.attach(name, "cat", "/etc/layer").stdout == "layer\n"


def test_kill_template_copy_between_lab_hosts(request, lab):
    name = "kcp" + secrets.token_hex(3)
    source = {"type": "copy", "host": "198.18.0.11", "ssh_key": "/var/lib/vzlab/id_ed25519",
              "host_key_checking": "off", "known_hosts": "/dev/null"}
    lab1 = ModuleRun(lab.inventory, "%d:%s:1" % (SEED, request.node.name), host="lab1")
    lab2 = ModuleRun(lab.inventory, "%d:%s" % (SEED, request.node.name), host="lab2",
                     netns="/run/netns/vzlab-lab2")
    root2 = Path("/var/lib/vzlab/lab2/vz")
    copy = {"name": name, "source": source}
    remove = {"name": name, "state": "absent"}
    checks = 0
    try:
        lab1.must("template", {"name": name, "source": {"type": "busybox"}}, "build on lab1")
        duration = lab2.must("template", copy, "copy to lab2").duration
        for _i in range(kill_points(4)):
            lab2.must("template", remove, "remove the copy on lab2")
            point = lab2.kill_point("template copy lab1 -> lab2", "template", copy, duration)
            rerun = lab2.run("template", copy)
            assert not rerun.failed, "rerun after %s failed (seed %d)\n%s" % (point, SEED, rerun.describe())
            problems = templates_complete(root2) + tmp_clean(root2)
            checks += 2
            assert not problems, "after %s (seed %d): %s" % (point, SEED, problems)
            assert (root2 / "templates" / name).is_dir(), point
    finally:
        _record(lab2, checks)
        _record(lab1, 0)
        lab2.run("template", remove)
        lab1.run("template", remove)


def test_killed_builds_leave_no_build_ve_and_no_mount(kstore):
    """The known edges, hit on purpose: a layer build killed while its build VE runs, and a build
    from a VE killed while the VE's merged view is mounted under .tmp. The next build of any
    template takes both away, and what it builds is whole."""
    layer = {"name": "kbox-edge", "vz_root": str(kstore.root), "rebuild": True,
             "source": {"type": "layer", "base": "busybox", "commands": [["sleep", "30"]]}}
    kstore.run.must("ve", kstore.ve(name=kstore.name("src"), template="busybox", state="started"), "source VE")

    def build_ve_runs():
        return any(n.startswith("tbuild-") for n in running_ves(kstore.root))

    point = kstore.run.kill_when("layer build, build VE running", "template", layer, build_ve_runs)
    assert point.phase == "module" and build_ve_runs(), point
    kstore.run.must("ve", kstore.ve(name=kstore.name("src"), state="stopped"), "stop the source VE")
    from_ve = {"name": "kbox-snap", "vz_root": str(kstore.root), "rebuild": True,
               "source": {"type": "ve", "ve": kstore.name("src")}}
    seen = []

    def merged_mounted():
        seen[:] = [m for m in _mounts(kstore.root) if "/.tmp/" in m]
        return bool(seen)

    for _attempt in range(5):   # the merged view is mounted for a moment only: try until a kill hits it
        point = kstore.run.kill_when("build from a VE, merged view mounted", "template", from_ve, merged_mounted)
        if point.phase == "module" and seen:
            break
    assert point.phase == "module" and seen, point
    assert any("/.tmp/" in m for m in _mounts(kstore.root)), "the killed build's mount is gone by itself"
    # the next build (any template) cleans up what the dead builds left, and builds
    kstore.run.must("template", from_ve, "build from the VE again")
    kstore.checks["n"] += assert_clean(kstore.root, point, SEED)


def _mounts(root):
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line.split()[4] for line in handle if line.split()[4].startswith(str(root) + "/")]
