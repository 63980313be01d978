# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.ve on this machine: real LXC, real overlayfs, real veths on
the bridge vzbr0 (10.20.0.1/24).

Every test works in a throw-away vz_root (the ``vz_root`` fixture) with a cgroup parent of its
own (``vzt-<random>``), so it never touches /var/lib/vz, the demo's VEs or another test. The
busybox template is built once per module and copied into each test's vz_root (2 MB). VE
names carry a random prefix: the host side of a VE's veth is named after the VE, so the same
name in two vz_roots on one machine would collide. Addresses are 10.20.0.200-250 only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from collections import deque
from pathlib import Path

import pytest

from vzlib import VeStore, kill_all, ping, play, sh

BRIDGE = "vzbr0"
BRIDGE_CIDR = "10.20.0.1/24"
GATEWAY = "10.20.0.1"
HOST_PYTHON = "/usr/bin/python3"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bridge(request, harness, tmp_path_factory, localhost):
    """vzbr0 with 10.20.0.1/24 on the machine; made by osvirt.vz.bridge when missing."""
    if not Path("/sys/class/net/%s/bridge" % BRIDGE).is_dir():
        runner = harness.PlaybookRunner(tmp_path_factory.mktemp("bridge"), localhost)
        bridge = {"name": BRIDGE, "state": "present", "ipv4": [BRIDGE_CIDR]}
        runner(play([{"name": "bridge", "osvirt.vz.bridge": bridge}]))
    addrs = sh("ip", "-j", "addr", "show", "dev", BRIDGE).stdout
    assert "10.20.0.1" in addrs, addrs
    return BRIDGE


class Ctx(VeStore):
    """A VeStore with the queries of a running VE."""

    def pid(self, name):
        out = sh("lxc-info", "-P", str(self.ves), "-n", name, "-pH", check=False).stdout.strip()
        return int(out) if out.isdigit() else None

    def attach(self, name, *argv, check=True):
        return sh("lxc-attach", "-P", str(self.ves), "-n", name, "--", *argv, check=check)

    def config(self, name):
        return (self.ves / name / "config").read_text()


@pytest.fixture
def ctx(vz_root, cgroup_parent, built_template, run_playbook, bridge):
    templates, version = built_template
    # mkdtemp made vz_root 0700; unprivileged VEs must traverse it (the host role makes 0711)
    os.chmod(vz_root, 0o711)
    sh("cp", "-a", "--reflink=auto", str(templates), str(vz_root / "templates"))
    c = Ctx(root=vz_root, parent=cgroup_parent, version=version, prefix="t" + secrets.token_hex(2),
            run=run_playbook)
    try:
        yield c
    finally:
        kill_all(vz_root / "ves")


# ---------------------------------------------------------------------- one VE, network


def test_ve_with_network_four_steps(ctx, four_steps):
    name = ctx.name("web")
    result = four_steps({"osvirt.vz.ve": ctx.ve(
        name=name, template="busybox", state="started",
        network=[{"name": "eth0", "mode": "bridged", "bridge": BRIDGE,
                  "ipv4": ["10.20.0.201/24"], "gateway4": GATEWAY}])})
    check, real, again, check_again = result.steps["localhost"]
    assert check["actions"] == ["create %s" % name, "start %s" % name]
    assert real["actions"] == ["create %s" % name, "start %s" % name]
    assert again["actions"] == [] and check_again["actions"] == []
    ve = real["ve"]
    assert ve["name"] == name and ve["state"] == "running"
    assert ve["template"] == "busybox@%s" % ctx.version
    assert ve["ips"] == ["10.20.0.201"]
    assert isinstance(ve["pid"], int) and ve["pid"] == ctx.pid(name)
    assert again["ve"]["pid"] == ve["pid"]
    # diff mode (four_steps runs with --diff): before absent, after running
    assert check["diff"]["before"]["state"] == "absent"
    assert check["diff"]["after"]["state"] == "running"
    assert real["diff"]["after"]["template"] == "busybox@%s" % ctx.version
    assert again["diff"]["before"] == again["diff"]["after"]
    # the kernel's view
    assert ctx.lxc_state(name) == "RUNNING"
    listing = sh("lxc-ls", "-P", str(ctx.ves), "-f").stdout
    assert re.search(r"^%s\s+RUNNING\s.*10\.20\.0\.201" % re.escape(name), listing, re.M), listing
    assert ping("10.20.0.201"), "VE %s is not pingable at 10.20.0.201" % name
    route = ctx.attach(name, "ip", "route").stdout
    assert "default via 10.20.0.1" in route, route


def test_private_area_holds_only_the_ves_changes(ctx):
    name = ctx.name("priv")
    run = ctx.run(play([ctx.task("create", name=name, template="busybox", state="present")]))
    res = run.task("create")
    assert res["actions"] == ["create %s" % name] and res["ve"]["state"] == "stopped"
    directory = ctx.ves / name
    upper = directory / "private" / "upper"
    # creating a VE copies no template file: the upper dir holds only the VE's identity (its own
    # /etc/hostname and /etc/hosts, issue 13), besides a config and the metadata
    held = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert held == ["etc", "etc/hostname", "etc/hosts"], held
    assert (directory / "private" / "work").is_dir()
    assert sorted(p.name for p in directory.iterdir()) == ["config", "private", "ve.json"]
    meta = json.loads((directory / "ve.json").read_text())
    assert meta["template"] == "busybox@%s" % ctx.version
    rootfs = [line for line in ctx.config(name).splitlines() if line.startswith("lxc.rootfs.path")]
    assert len(rootfs) == 1 and rootfs[0].split("=", 1)[1].strip().startswith("overlay:"), rootfs
    assert rootfs[0].rstrip().endswith(":" + str(upper)), rootfs
    assert ctx.lxc_state(name) == "STOPPED"

    ctx.run(play([ctx.task("start", name=name, state="started")]))
    ctx.attach(name, "sh", "-c", "echo x > /root/f")
    assert (upper / "root" / "f").read_text() == "x\n"
    # the template's tree is untouched
    template_root = ctx.root / "templates" / "busybox" / ctx.version
    assert not list(template_root.glob("**/root/f"))
    # the file is visible inside, and survives a restart (it lives in the private area)
    ctx.run(play([ctx.task("restart", name=name, state="restarted")]))
    assert ctx.attach(name, "cat", "/root/f").stdout == "x\n"


# ---------------------------------------------------------------------- state machine

STATES = ("present", "started", "stopped", "frozen", "restarted", "absent")
LXC_WORD = {"running": "RUNNING", "stopped": "STOPPED", "frozen": "FROZEN", "absent": "ABSENT"}
# (current, desired) -> the steps the module takes
EXPECTED_STEPS = {
    ("absent", "present"): ["create"],
    ("stopped", "present"): [],
    ("running", "present"): [],
    ("frozen", "present"): [],
    ("absent", "started"): ["create", "start"],
    ("stopped", "started"): ["start"],
    ("running", "started"): [],
    ("frozen", "started"): ["unfreeze"],
    ("absent", "stopped"): ["create"],
    ("stopped", "stopped"): [],
    ("running", "stopped"): ["stop"],
    ("frozen", "stopped"): ["unfreeze", "stop"],
    ("absent", "frozen"): ["create", "start", "freeze"],
    ("stopped", "frozen"): ["start", "freeze"],
    ("running", "frozen"): ["freeze"],
    ("frozen", "frozen"): [],
    ("absent", "restarted"): ["create", "start"],
    ("stopped", "restarted"): ["start"],
    ("running", "restarted"): ["stop", "start"],
    ("frozen", "restarted"): ["unfreeze", "stop", "start"],
    ("absent", "absent"): [],
    ("stopped", "absent"): ["destroy"],
    # a VE being removed is killed, not shut down cleanly (nothing of it is kept)
    ("running", "absent"): ["kill", "destroy"],
    ("frozen", "absent"): ["unfreeze", "kill", "destroy"],
}


def _final(current, desired):
    if desired == "present":
        return "stopped" if current == "absent" else current
    return {"started": "running", "stopped": "stopped", "frozen": "frozen", "restarted": "running",
            "absent": "absent"}[desired]


def _walk():
    """A sequence of (current, desired) that takes every transition at least once."""
    remaining = set(EXPECTED_STEPS)
    current, seq = "absent", []
    while remaining:
        options = [d for d in STATES if (current, d) in remaining]
        if options:
            options.sort(key=lambda d: -sum(1 for e in remaining if e[0] == _final(current, d)))
            desired = options[0]
        else:  # go to the nearest state that still has an untried transition
            prev, queue, goal = {current: None}, deque([current]), None
            while queue:
                s = queue.popleft()
                if any(e[0] == s for e in remaining):
                    goal = s
                    break
                for d in STATES:
                    n = _final(s, d)
                    if n not in prev:
                        prev[n] = (s, d)
                        queue.append(n)
            step, s = None, goal
            while prev[s]:
                step, s = prev[s], prev[s][0]
            desired = step[1]
        remaining.discard((current, desired))
        seq.append((current, desired))
        current = _final(current, desired)
    return seq


def test_every_state_transition(ctx):
    """present/started/stopped/frozen/restarted/absent from absent, stopped, running and frozen:
    the right steps, `changed` exactly when something was done (restarted: always), and the
    state LXC reports afterwards."""
    name = ctx.name("sm")
    seq = _walk()
    assert set(seq) == set(EXPECTED_STEPS)
    tasks = []
    for i, (current, desired) in enumerate(seq):
        tasks.append(ctx.task("%02d %s -> %s" % (i, current, desired), name=name, template="busybox",
                              state=desired))
        tasks.append({"name": "%02d lxc-info" % i, "ansible.builtin.command":
                      {"argv": ["lxc-info", "-P", str(ctx.ves), "-n", name, "-sH"]},
                      "changed_when": False, "failed_when": False})
    run = ctx.run(play(tasks))
    for i, (current, desired) in enumerate(seq):
        res = run.task("%02d %s -> %s" % (i, current, desired))
        want = ["%s %s" % (step, name) for step in EXPECTED_STEPS[(current, desired)]]
        assert res["actions"] == want, (current, desired, res.result)
        assert res.changed == bool(want), (current, desired, res.result)
        if desired == "restarted":
            assert res.changed
        final = _final(current, desired)
        assert res["ve"]["state"] == final, (current, desired, res["ve"])
        if final in ("running", "frozen"):
            assert isinstance(res["ve"]["pid"], int), res["ve"]
        info = run.task("%02d lxc-info" % i)
        got = info["stdout"].strip() if info["rc"] == 0 else "ABSENT"
        assert got == LXC_WORD[final], (current, desired, info.result)
    assert (ctx.ves / name).exists() == (_final(*seq[-1]) != "absent")


def test_restarted_gives_a_new_init(ctx):
    name = ctx.name("rs")
    run = ctx.run(play([
        ctx.task("start", name=name, template="busybox"),
        ctx.task("restart", name=name, state="restarted"),
        dict(ctx.task("restart check", name=name, state="restarted"), check_mode=True),
    ]))
    first, second, check = run.task("start"), run.task("restart"), run.task("restart check")
    assert second.changed and second["actions"] == ["stop %s" % name, "start %s" % name]
    assert second["ve"]["pid"] != first["ve"]["pid"]
    assert second["ve"]["pid"] == ctx.pid(name)
    assert check.changed and check["actions"] == ["stop %s" % name, "start %s" % name]
    assert ctx.pid(name) == second["ve"]["pid"], "check mode restarted the VE"


# ------------------------------------------------------------------------------- bulk


def test_bulk_ten_ves_four_steps(ctx, four_steps):
    names = [ctx.name("b%d" % i) for i in range(10)]
    items = []
    for i, name in enumerate(names):
        item = {"name": name, "network": [{"ipv4": ["10.20.0.%d/24" % (210 + i)], "gateway4": GATEWAY}]}
        if i == 3:
            item["state"] = "stopped"
        if i == 5:
            item["hostname"] = "custom-host"
        items.append(item)
    result = four_steps({"osvirt.vz.ve": ctx.ve(template="busybox", state="started", ves=items)})
    check, real, again, check_again = result.steps["localhost"]
    for res in (check, real):
        assert len(res["actions"]) == 19, res["actions"]    # 10 creates, 9 starts
        assert [a for a in res["actions"] if a.startswith("create")] == ["create %s" % n for n in names]
    assert "start %s" % names[3] not in real["actions"]
    assert again["actions"] == [] and check_again["actions"] == []
    for res in (real, again):
        ves = res["ves"]
        assert [v["name"] for v in ves] == names, "results are not in task order"
        for i, ve in enumerate(ves):
            assert ve["template"] == "busybox@%s" % ctx.version
            assert ve["ips"] == ["10.20.0.%d" % (210 + i)]
            if i == 3:
                assert ve["state"] == "stopped" and ve["pid"] is None, ve
            else:
                assert ve["state"] == "running", ve
                assert isinstance(ve["pid"], int) and ve["pid"] == ctx.pid(names[i]), ve
            assert ve["hostname"] == ("custom-host" if i == 5 else names[i])
    assert "ve" not in real.result
    # the kernel agrees
    states = {n: ctx.lxc_state(n) for n in names}
    assert states[names[3]] == "STOPPED"
    assert all(s == "RUNNING" for n, s in states.items() if n != names[3]), states
    assert ctx.attach(names[5], "hostname").stdout.strip() == "custom-host"
    assert ctx.attach(names[0], "hostname").stdout.strip() == names[0]
    assert ping("10.20.0.219") and ping("10.20.0.210")
    assert not ping("10.20.0.213", attempts=1)   # the stopped one


# ------------------------------------------------------------ configuration changes


def test_config_change_on_running_ve(ctx):
    """A hostname change on a running VE is written, reported as restart_required, and the VE
    keeps running (same pid); ``restart: true`` applies it."""
    name = ctx.name("cfg")
    net = [{"ipv4": ["10.20.0.202/24"], "gateway4": GATEWAY}]
    run = ctx.run(play([ctx.task("start", name=name, template="busybox", network=net)]))
    pid = run.task("start")["ve"]["pid"]
    assert ctx.attach(name, "hostname").stdout.strip() == name

    run = ctx.run(play([
        dict(ctx.task("change check", name=name, hostname="h-one"), check_mode=True),
        ctx.task("change", name=name, hostname="h-one"),
    ]), diff=True)
    check, change = run.task("change check"), run.task("change")
    for res in (check, change):
        assert res.changed and res["actions"] == ["configure %s" % name], res.result
        assert res["restart_required"] is True
        assert res["diff"]["before"]["hostname"] is None or res["diff"]["before"]["hostname"] == name
        assert res["diff"]["after"]["hostname"] == "h-one"
        assert res["diff"]["before"]["state"] == res["diff"]["after"]["state"] == "running"
    assert change["ve"]["pid"] == pid and ctx.pid(name) == pid, "the VE was restarted"
    assert ctx.attach(name, "hostname").stdout.strip() == name
    assert "lxc.uts.name = h-one" in ctx.config(name)


def test_pending_change_is_applied_by_a_later_restart(ctx):
    """A change written without restart stays pending: the next run still says
    restart_required, and a run with ``restart: true`` applies it (RETURN doc of
    restart_required: "True when a running VE's new configuration waits for a restart")."""
    name = ctx.name("pend")
    run = ctx.run(play([
        ctx.task("start", name=name, template="busybox"),
        ctx.task("change", name=name, hostname="h-one"),
    ]))
    pid = run.task("start")["ve"]["pid"]
    assert run.task("change")["restart_required"] is True and ctx.pid(name) == pid
    again = ctx.run(play([ctx.task("again", name=name, hostname="h-one")])).task("again")
    still_old = ctx.attach(name, "hostname").stdout.strip() == name
    apply = ctx.run(play([ctx.task("apply", name=name, hostname="h-one", restart=True)])).task("apply")
    problems = []
    if still_old and again["restart_required"] is not True:
        problems.append("a second run without restart says restart_required=%r while the VE still runs "
                        "the old hostname" % again["restart_required"])
    if not apply.changed or ctx.pid(name) == pid:
        problems.append("restart: true did not apply the pending change (changed=%r, actions=%r, pid %s)"
                        % (apply.changed, apply["actions"], ctx.pid(name)))
    if ctx.attach(name, "hostname").stdout.strip() != "h-one":
        problems.append("hostname inside is still %r" % ctx.attach(name, "hostname").stdout.strip())
    assert not problems, "; ".join(problems)
    assert apply["restart_required"] is False


def test_config_change_with_restart_in_one_task(ctx):
    name = ctx.name("cfr")
    run = ctx.run(play([
        ctx.task("start", name=name, template="busybox"),
        ctx.task("change", name=name, hostname="h-two", restart=True),
        ctx.task("again", name=name, hostname="h-two", restart=True),
    ]))
    pid = run.task("start")["ve"]["pid"]
    change, again = run.task("change"), run.task("again")
    assert change["actions"] == ["configure %s" % name, "stop %s" % name, "start %s" % name]
    assert change["restart_required"] is False
    assert change["ve"]["pid"] != pid and change["ve"]["pid"] == ctx.pid(name)
    assert change["ve"]["hostname"] == "h-two"
    assert ctx.attach(name, "hostname").stdout.strip() == "h-two"
    assert again.ok and again["actions"] == [] and again["ve"]["pid"] == change["ve"]["pid"]


def test_keys_the_module_does_not_own_survive(ctx):
    name = ctx.name("keep")
    ctx.run(play([ctx.task("create", name=name, template="busybox", state="present")]))
    config = ctx.ves / name / "config"
    config.write_text(config.read_text() + "# a hand-made comment\nlxc.environment = FOO=bar\n")
    run = ctx.run(play([
        ctx.task("change", name=name, hostname="kept-host", autostart=True),
        ctx.task("start", name=name, state="started"),
        ctx.task("again", name=name, hostname="kept-host", autostart=True),
    ]))
    assert run.task("change").changed and run.task("again").ok
    text = config.read_text()
    assert "lxc.environment = FOO=bar" in text
    assert "# a hand-made comment" in text
    assert "lxc.uts.name = kept-host" in text and "lxc.start.auto = 1" in text
    # and LXC applies it: init's environment has FOO
    environ = (Path("/proc") / str(ctx.pid(name)) / "environ").read_bytes().split(b"\0")
    assert b"FOO=bar" in environ


# ------------------------------------------------------------------------------ mounts


def test_readonly_mount(ctx):
    name = ctx.name("mnt")
    source = Path(tempfile.mkdtemp(prefix="vzt-mount-", dir="/var/tmp"))
    try:
        (source / "hello.txt").write_text("from the host\n")
        os.chmod(source, 0o755)
        os.chmod(source / "hello.txt", 0o644)
        mounts = [{"source": str(source), "target": "/mnt/host", "readonly": True}]
        run = ctx.run(play([
            ctx.task("start", name=name, template="busybox", mounts=mounts),
            ctx.task("again", name=name, template="busybox", mounts=mounts),
        ]))
        assert run.task("start").changed and run.task("again").ok
        assert ctx.attach(name, "cat", "/mnt/host/hello.txt").stdout == "from the host\n"
        write = ctx.attach(name, "sh", "-c", "echo x > /mnt/host/new.txt", check=False)
        assert write.returncode != 0
        assert "Read-only" in write.stderr or "read-only" in write.stderr.lower(), write.stderr
        write = ctx.attach(name, "rm", "/mnt/host/hello.txt", check=False)
        assert write.returncode != 0
        assert sorted(p.name for p in source.iterdir()) == ["hello.txt"]
        mountinfo = ctx.attach(name, "cat", "/proc/self/mountinfo").stdout
        line = [m for m in mountinfo.splitlines() if " /mnt/host " in m]
        assert line and " ro," in line[0] or line[0].split()[5].startswith("ro"), line
    finally:
        kill_all(ctx.ves)
        shutil.rmtree(source, ignore_errors=True)


# --------------------------------------------------------------------------- autostart


def test_autostart_through_lxc_autostart(ctx):
    """VEs come back after a host boot through ``lxc-autostart -P <vz_root>/ves``."""
    auto, manual = ctx.name("auto"), ctx.name("manual")
    ctx.run(play([ctx.task("bulk", template="busybox", ves=[
        {"name": auto, "autostart": True}, {"name": manual}])]))
    assert "lxc.start.auto = 1" in ctx.config(auto)
    assert "lxc.start.auto = 0" in ctx.config(manual)
    # "the host went down": every VE stops
    for name in (auto, manual):
        sh("lxc-stop", "-k", "-P", str(ctx.ves), "-n", name)
        assert ctx.lxc_state(name) == "STOPPED"
    sh("lxc-autostart", "-P", str(ctx.ves), timeout=60)
    sh("lxc-wait", "-P", str(ctx.ves), "-n", auto, "-s", "RUNNING", "-t", "10")
    assert ctx.lxc_state(auto) == "RUNNING"
    assert ctx.lxc_state(manual) == "STOPPED"
    # and the module sees it running, without changing anything
    run = ctx.run(play([ctx.task("check", name=auto, state="started", autostart=True)]))
    assert run.task("check").ok


# ---------------------------------------------------------------------------- security


def _subid(path):
    for line in Path(path).read_text().splitlines():
        user, start, count = line.split(":")
        if user == "root" and int(count) >= 65536:
            return int(start)
    raise AssertionError("no root range in %s" % path)


def test_security_defaults(ctx):
    name = ctx.name("sec")
    run = ctx.run(play([ctx.task("start", name=name, template="busybox")]))
    assert not run.task("start").get("warnings")
    uid, gid = _subid("/etc/subuid"), _subid("/etc/subgid")
    config = ctx.config(name)
    lines = {tuple(part.strip() for part in line.split("=", 1)) for line in config.splitlines()
             if "=" in line and not line.startswith("#")}
    assert ("lxc.idmap", "u 0 %d 65536" % uid) in lines, config
    assert ("lxc.idmap", "g 0 %d 65536" % gid) in lines, config
    assert ("lxc.seccomp.profile", "/usr/share/lxc/config/common.seccomp") in lines, config
    drops = set(" ".join(v for k, v in lines if k == "lxc.cap.drop").split())
    assert {"sys_module", "sys_time", "sys_rawio", "mac_admin", "mac_override"} <= drops, drops
    assert ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed") in lines, config
    assert ("lxc.cgroup.dir.container", "%s/%s" % (ctx.parent, name)) in lines, config
    assert not any(k.startswith("lxc.apparmor") and v == "unconfined" for k, v in lines)

    # effective inside the VE
    uid_map = ctx.attach(name, "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map == ["0", str(uid), "65536"], uid_map
    gid_map = ctx.attach(name, "cat", "/proc/self/gid_map").stdout.split()
    assert gid_map == ["0", str(gid), "65536"], gid_map
    inside = ctx.attach(name, "grep", "CapBnd", "/proc/1/status").stdout.split()[1]
    host = [line.split()[1] for line in Path("/proc/1/status").read_text().splitlines()
            if line.startswith("CapBnd")][0]
    assert inside != host, (inside, host)
    caps = int(inside, 16)
    for bit in (16, 25, 17, 33, 32):   # sys_module, sys_time, sys_rawio, mac_admin, mac_override
        assert not caps & (1 << bit), "capability %d is not dropped: %s" % (bit, inside)
    seccomp = ctx.attach(name, "grep", "^Seccomp:", "/proc/1/status").stdout.split()
    assert seccomp[1] == "2", seccomp
    # init runs as the mapped root on the host, in the VE's cgroup under our parent
    pid = ctx.pid(name)
    status = Path("/proc/%d/status" % pid).read_text()
    assert re.search(r"^Uid:\s+%d\s" % uid, status, re.M), status
    assert Path("/sys/fs/cgroup/memory/%s/%s" % (ctx.parent, name)).is_dir()
    cgroup = Path("/proc/%d/cgroup" % pid).read_text()
    assert re.search(r":memory:/%s/%s(/|$)" % (re.escape(ctx.parent), name), cgroup, re.M), cgroup
    # cgroup namespace: the VE sees itself at the root
    inside_cg = ctx.attach(name, "cat", "/proc/1/cgroup").stdout
    assert ctx.parent not in inside_cg, inside_cg


def test_privileged_opt_in_warns(ctx):
    name = ctx.name("priv")
    run = ctx.run(play([
        ctx.task("start", name=name, template="busybox", privileged=True),
        ctx.task("again", name=name, template="busybox", privileged=True),
        dict(ctx.task("flip", name=name, privileged=False), ignore_errors=True),
    ]))
    start = run.task("start")
    assert start.changed and start["ve"]["privileged"] is True and start["ve"]["state"] == "running"
    warnings = " ".join(start.get("warnings") or [])
    assert "privileged" in warnings and name in warnings, start.result
    assert "privileged" in " ".join(run.task("again").get("warnings") or [])
    assert "lxc.idmap" not in ctx.config(name)
    uid_map = ctx.attach(name, "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map == ["0", "0", "4294967295"], uid_map
    flip = run.task("flip")
    assert flip.failed and "privileged cannot change" in flip.msg, flip.result


# ------------------------------------------------------------------------ identity inside


def test_identity_inside_follows_the_hostname(ctx):
    """/etc/hostname and the 127.0.1.1 line of /etc/hosts say the VE's hostname: at create (stopped),
    at a change of a running VE (its own lines of /etc/hosts kept), and once for a VE made before."""
    name = ctx.name("idn")
    upper = ctx.ves / name / "private" / "upper"
    run = ctx.run(play([ctx.task("create", name=name, template="busybox", state="stopped",
                                 hostname="app.example.test")]))
    assert run.task("create")["actions"] == ["create %s" % name]
    assert (upper / "etc" / "hostname").read_text() == "app.example.test\n"
    hosts = (upper / "etc" / "hosts").read_text()
    assert "127.0.1.1\tapp.example.test app\n" in hosts and "127.0.0.1\tlocalhost" in hosts, hosts
    ve_uid = json.loads((ctx.ves / name / "ve.json").read_text())["idmap"]["uid"]
    assert (upper / "etc" / "hosts").stat().st_uid == ve_uid   # written as the VE's root

    ctx.run(play([ctx.task("start", name=name, state="started")]))
    assert ctx.attach(name, "cat", "/etc/hostname").stdout == "app.example.test\n"
    assert ctx.attach(name, "hostname").stdout.strip() == "app.example.test"
    ctx.attach(name, "sh", "-c", "echo '10.9.9.9 db.internal' >> /etc/hosts")

    run = ctx.run(play([ctx.task("rename", name=name, hostname="web"),
                        ctx.task("again", name=name, hostname="web")]))
    assert run.task("rename")["actions"] == ["configure %s" % name]
    assert run.task("again").ok
    inside = ctx.attach(name, "cat", "/etc/hosts").stdout
    assert "127.0.1.1\tweb\n" in inside and "app.example.test" not in inside, inside
    assert "10.9.9.9 db.internal" in inside, inside
    assert ctx.attach(name, "cat", "/etc/hostname").stdout == "web\n"

    # a VE made before identities were written gets them at its next run, once
    meta_path = ctx.ves / name / "ve.json"
    meta = json.loads(meta_path.read_text())
    del meta["identity"]
    meta_path.write_text(json.dumps(meta))
    run = ctx.run(play([dict(ctx.task("fix check", name=name), check_mode=True),
                        ctx.task("fix", name=name), ctx.task("fixed", name=name)]))
    assert run.task("fix check")["actions"] == ["write /etc/hostname and /etc/hosts of %s" % name]
    assert run.task("fix")["actions"] == ["write /etc/hostname and /etc/hosts of %s" % name]
    assert run.task("fixed").ok
    assert json.loads(meta_path.read_text())["identity"] == "web"
