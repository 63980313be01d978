# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Parallel runs leave nothing behind: many ``ansible-playbook`` runs at once against one host.

Each round starts, at the same moment:

* ``RUNS`` (16: eight per core of this 2-core machine) runs that each create and start their own
  ``VES`` (5) VEs in one task (an interface on the test's bridge with an ``auto`` address, limits
  including ``net.rate`` where the host can shape), run a command inside every one of them through
  the ``osvirt.vz.ve`` connection plugin (stdin in, stdout out), change their limits live, and
  remove them;
* ``FIGHTERS`` (4) runs doing the same to one shared set of 5 VEs. Each of their tasks either does
  its job or fails with the VE lock's "busy" message (two of them wait one second for a lock, two
  the default 60 s); an attach finds the VE running, or the connection plugin says by name what
  it found (gone, stopped), or lxc-attach itself reports the VE going away under it;
* one long-lived process that runs the VE manager in-process over 5 VEs of its own (create,
  start, attach, change limits, remove) and reports its own open file descriptors.

After ``ROUNDS`` (3) rounds, the machine holds nothing the runs made (tests/integration/
leftovers.py: VEs, cgroups in every hierarchy incl. name=systemd and .monitor, processes in
them, leases, lock files of the store and LXC's, .tmp entries, nft chains, veths, the bridge,
shaping classes and classifiers, mounts, processes), and the in-process manager holds no more
descriptors after the last round than after the first.

All in one throw-away vz_root, cgroup parent and bridge (10.26.<n>.0/24, made and removed with
osvirt.vz.bridge). Traffic: none leaves the VEs. A longer soak: VZ_PARALLEL_ROUNDS, VZ_PARALLEL_RUNS
and VZ_PARALLEL_VES raise the counts (docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from leftovers import LXC_LOCKS, Scope, leaks, machine_state
from vzlib import kill_all, play, remove_cgroups, sh

HOST_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FD_HELPER = HERE / "helpers" / "ve_fds.py"
SHAPING_DIR = REPO / "plugins" / "module_utils"

ROUNDS = int(os.environ.get("VZ_PARALLEL_ROUNDS", "3"))
RUNS = int(os.environ.get("VZ_PARALLEL_RUNS", "16"))
VES = int(os.environ.get("VZ_PARALLEL_VES", "5"))
FIGHTERS = 4
FIGHT_VES = 5
SHORT_LOCK = 1          # seconds two fighters wait for a VE lock; the other two wait the default
BUSY = "is busy"        # what every lock timeout says (plugins/module_utils/_locks.py)

SHAPING_PROBE = r"""
import subprocess, sys
sys.path.insert(0, sys.argv[1])
import _shaping
subprocess.run(["ip", "link", "add", "vzprobe0", "type", "veth", "peer", "name", "vzprobe1"], check=True)
subprocess.run(["ip", "link", "set", "vzprobe1", "up"], check=True)
subprocess.run(["ip", "link", "set", "vzprobe0", "up"], check=True)
try:
    _shaping.apply_shaping("vzprobe0", 1000000)
    _shaping.clear_shaping("vzprobe0")
except Exception as exc:
    print("no: %s" % exc)
else:
    print("yes")
"""


def can_shape():
    """(True, '') when this host can shape a link's rate as osvirt.vz does (IFB, nft netdev
    ``fwd``, an eBPF classifier, pyroute2), tried on a link in a network namespace of its
    own (a veth: this kernel may have no dummy links); else (False, why)."""
    proc = subprocess.run(["unshare", "--net", HOST_PYTHON, "-c", SHAPING_PROBE, str(SHAPING_DIR)],
                          capture_output=True, text=True, check=False, timeout=60)
    out = proc.stdout.strip()
    if proc.returncode == 0 and out == "yes":
        return True, ""
    return False, out or proc.stderr.strip()[-300:]


class Store:
    """The test's vz_root, cgroup parent, bridge and the names of its VEs."""

    def __init__(self, root, parent, bridge, n, shaping):
        self.root, self.parent, self.bridge, self.n, self.shaping = root, parent, bridge, n, shaping
        self.tag = secrets.token_hex(2)

    def common(self):
        return {"vz_root": str(self.root), "cgroup_parent": self.parent}

    def network(self):
        return [{"name": "eth0", "bridge": self.bridge, "ipv4": ["auto"]}]

    def limits(self, second=False, shaped=False):
        """The limits of a VE; ``shaped`` adds net.rate where the host can shape."""
        limits = {"memory": {"ram": "96M" if second else "64M"}, "numproc": 96 if second else 64,
                  "cpu": {"units": 700 if second else 500}}
        if second:
            limits["cpu"]["limit"] = "50%"
        if shaped and self.shaping:
            limits["net"] = {"rate": "4Mbit" if second else "2Mbit"}
        return limits

    def ves(self, names, second=False):
        """Bulk items: the first VE of each run is shaped. Every shaping step holds one host-wide
        lock, so shaping all VEs makes each round minutes longer without exercising more."""
        return [dict({"name": n}, **({"limits": self.limits(second, shaped=True)} if i == 0 else {}))
                for i, n in enumerate(names)]

    def own_names(self, rnd, run):
        return ["pz%s-%d-%02d-%d" % (self.tag, rnd, run, i) for i in range(VES)]

    def fight_names(self):
        return ["pz%s-f%d" % (self.tag, i) for i in range(FIGHT_VES)]

    def fd_names(self):
        return ["pz%s-fd%d" % (self.tag, i) for i in range(VES)]

    def playbook(self, names, group, lock_timeout=None):
        """create+start (limits, network) -> attach into each -> change limits -> remove."""
        base = dict(self.common(), template="busybox", network=self.network())
        if lock_timeout is not None:
            base["lock_timeout"] = lock_timeout
        tolerant = {"ignore_errors": True} if group == "fight" else {}
        host_vars = {"ansible_connection": "osvirt.vz.ve", "ansible_vz_host": "localhost",
                     "ansible_vz_root": str(self.root), "ansible_python_interpreter": HOST_PYTHON}
        attach = {"name": "attach", "ansible.builtin.raw": "echo abc | cat; hostname"}
        if group == "fight":
            attach["ignore_unreachable"] = True
            attach["ignore_errors"] = True
        create = dict(base, state="started", limits=self.limits(), ves=self.ves(names))
        change = dict(base, state="started", limits=self.limits(second=True), ves=self.ves(names, second=True))
        remove = dict(self.common(), state="absent", ves=[{"name": n} for n in names])
        if lock_timeout is not None:
            remove["lock_timeout"] = lock_timeout
        as_hosts = dict(host_vars, name="{{ item }}", groups=group)
        return [
            {"hosts": "localhost", "gather_facts": False, "tasks": [
                dict({"name": "create", "osvirt.vz.ve": create}, **tolerant),
                {"name": "VEs as hosts", "ansible.builtin.add_host": as_hosts, "loop": names},
            ]},
            {"hosts": group, "gather_facts": False, "tasks": [attach]},
            {"hosts": "localhost", "gather_facts": False, "tasks": [
                dict({"name": "limits", "osvirt.vz.ve": change}, **tolerant),
                dict({"name": "remove", "osvirt.vz.ve": remove}, **tolerant),
            ]},
        ]


class Run:
    """One ansible-playbook process started in the background."""

    def __init__(self, harness, workdir, playbook, label):
        self.harness, self.label = harness, label
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "playbook.yml"
        path.write_text(json.dumps(playbook, indent=1))
        self.results_file = workdir / "results.json"
        inventory = workdir / "hosts.ini"
        inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % HOST_PYTHON)
        self.cmd = [harness._ansible_bin("ansible-playbook"), "-i", str(inventory), str(path)]
        self.proc = subprocess.Popen(self.cmd, cwd=str(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     # one process per module run instead of four (no temp dir to make,
                                     # copy into and remove): on 2 cores this is a third of a round
                                     env=harness._playbook_env({"VZ_RESULTS_FILE": str(self.results_file),
                                                                "ANSIBLE_PIPELINING": "1"}))
        self.rc, self.output, self.hosts = None, "", {}

    def wait(self, timeout):
        try:
            self.output = self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.output = self.proc.communicate()[0]
        self.rc = self.proc.returncode
        try:
            data = json.loads(self.results_file.read_text())
        except (OSError, ValueError):
            data = None
        self.hosts = self.harness._task_results(data) if data else {}
        return self

    def results(self, name):
        return [r for host in self.hosts.values() for r in host if r.name == name]

    def report(self):
        return "%s: rc=%s\n%s" % (self.label, self.rc, self.output[-4000:])


def _check_own(run, names, store):
    assert run.rc == 0, run.report()
    attach = {r.host: r for r in run.results("attach")}
    assert sorted(attach) == sorted(names), run.report()
    for name, res in attach.items():
        lines = res.get("stdout", "").split()
        assert lines[:2] == ["abc", name], "%s: attach into %s said %r" % (run.label, name, res.get("stdout"))
    [create] = run.results("create")
    assert [v["state"] for v in create["ves"]] == ["running"] * len(names), run.report()
    [change] = run.results("limits")
    assert all(v["limits"]["memory"]["ram"] == "96M" for v in change["ves"]), change["ves"]
    if store.shaping:
        assert change["ves"][0]["limits"]["net"]["rate"] == "4Mbit", change["ves"]


def _check_fighter(run):
    """Every VE task of a fighter did its job or failed busy; every attach reached the VE or was
    told it is gone or stopped, by name. Returns the number of busy answers."""
    assert run.rc is not None and run.hosts, run.report()
    busy = 0
    for name in ("create", "limits", "remove"):
        for res in run.results(name):
            if res.failed:
                assert BUSY in res.msg and "lock_timeout" in res.msg, "%s: %s failed, and not busy: %s" % (
                    run.label, name, res.msg)
                busy += 1
    for res in run.results("attach"):
        if res.unreachable:   # the connection plugin names the VE and what it found
            assert "VE %s on host localhost" % res.host in res.msg, "%s: attach into %s: %s" % (
                run.label, res.host, res.msg)
        elif res.failed:      # the VE went away under a running lxc-attach: its own words
            assert "lxc-attach" in res.get("stderr", "") + res.get("stdout", ""), "%s: attach into %s: %s" % (
                run.label, res.host, res.result)
        else:
            assert res.get("stdout", "").split()[:2] == ["abc", res.host], res.result
    return busy


@pytest.fixture
def store(built_template, harness, tmp_path):
    """vz_root with the busybox template and a cgroup parent of this test; the machine's
    inventory is taken before anything is made (``store.before``)."""
    templates, _version = built_template
    n = random.randint(1, 254)
    root = Path(tempfile.mkdtemp(prefix="vz-test-par-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    parent = "vzt-" + secrets.token_hex(3)
    bridge = "vzp%sb" % secrets.token_hex(2)
    shaping, why = can_shape()
    s = Store(root, parent, bridge, n, shaping)
    s.why_no_shaping = why
    s.scope = Scope(root, parent, [], [bridge])
    s.before = machine_state(s.scope)
    s.run = harness.PlaybookRunner(tmp_path, None)
    s.inventory = tmp_path / "local.ini"
    s.inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % HOST_PYTHON)
    try:
        sh("cp", "-a", "--reflink=auto", str(templates), str(root / "templates"))
        yield s
    finally:
        kill_all(root / "ves")
        harness._release_vz_root(root)
        sh("ip", "link", "del", bridge, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        remove_cgroups(parent)
        # LXC makes /run/lxc/lock/<lxcpath> for any query, even of a VE that does not exist (and
        # VEs that went with the store, not through state=absent, leave their lock files there)
        sh("rm", "-rf", "--one-file-system", str(LXC_LOCKS / str(root).lstrip("/")), check=False)


@contextmanager
def own_bridge(store):
    """The store's bridge with a pool, made and removed with osvirt.vz.bridge."""
    task = {"name": store.bridge, "vz_root": str(store.root), "ipv4": ["10.26.%d.1/24" % store.n],
            "pool4": "10.26.%d.0/24" % store.n}
    store.run(play([{"name": "bridge", "osvirt.vz.bridge": task}]), inventory=store.inventory)
    try:
        yield
    finally:
        store.run(play([{"name": "no bridge", "osvirt.vz.bridge": dict(task, state="absent")}]),
                  inventory=store.inventory)


def _round(store, harness, tmp_path, helper, rnd):
    """One round: RUNS own runs, FIGHTERS fighters and one in-process round, all at once.
    Returns (the helper's answer, the fighters' busy count)."""
    own = {i: store.own_names(rnd, i) for i in range(RUNS)}
    store.scope.ve_names += [n for names in own.values() for n in names]
    runs = [Run(harness, tmp_path / ("r%d-own%02d" % (rnd, i)), store.playbook(own[i], "own%d" % i),
                "round %d run %d" % (rnd, i)) for i in range(RUNS)]
    fighters = [Run(harness, tmp_path / ("r%d-fight%d" % (rnd, i)),
                    store.playbook(store.fight_names(), "fight", lock_timeout=SHORT_LOCK if i < 2 else None),
                    "round %d fighter %d" % (rnd, i)) for i in range(FIGHTERS)]
    helper.stdin.write("round %d\n" % rnd)
    helper.stdin.flush()
    for run in runs + fighters:
        run.wait(timeout=900)
    answer = json.loads(helper.stdout.readline())
    for i, run in enumerate(runs):
        _check_own(run, own[i], store)
    busy = sum(_check_fighter(run) for run in fighters)
    assert not answer["errors"], "the in-process manager, round %d: %s" % (rnd, answer["errors"])
    # the fighters' last remove may have been a busy one: converge (and prove it can), then look
    store.run(play([{"name": "converge", "osvirt.vz.ve": dict(
        store.common(), state="absent", ves=[{"name": n} for n in store.fight_names()])}]),
        inventory=store.inventory)
    found = leaks(store.before, machine_state(store.scope))
    if found.get("links") == [store.bridge]:
        del found["links"]   # the bridge stays for the next round
    assert not found, "round %d left behind: %s" % (rnd, json.dumps(found, indent=1))
    return answer, busy


def test_parallel_runs_leave_nothing_behind(store, harness, tmp_path):
    print("\nnet.rate: %s" % ("shaped" if store.shaping else "not offered here: %s" % store.why_no_shaping))
    store.scope.ve_names = store.fight_names() + store.fd_names()
    spec = {"vz_root": str(store.root), "cgroup_parent": store.parent, "names": store.fd_names(),
            "network": store.network(), "limits": store.limits(shaped=True),
            "change": store.limits(second=True, shaped=True)}
    fds, busy, timings = [], 0, []
    with own_bridge(store):
        helper = subprocess.Popen([HOST_PYTHON, str(FD_HELPER), str(harness.COLLECTIONS_PATH), json.dumps(spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        store.scope.own_pids = [helper.pid]
        try:
            for rnd in range(ROUNDS):
                started = time.monotonic()
                answer, fights = _round(store, harness, tmp_path, helper, rnd)
                timings.append(time.monotonic() - started)
                fds.append(answer)
                busy += fights
        finally:
            helper.stdin.close()
            helper.wait(timeout=120)
            store.scope.own_pids = []
    found = leaks(store.before, machine_state(store.scope))
    assert not found, "left behind after %d rounds: %s" % (ROUNDS, json.dumps(found, indent=1))
    print("rounds: %s s; fighters' busy answers: %d; descriptors of the in-process manager after each round: %s"
          % (", ".join("%.0f" % t for t in timings), busy, [a["fds"] for a in fds]))
    assert fds[-1]["fds"] <= fds[0]["fds"], "descriptors grow from round to round: %s -> %s" % (
        fds[0]["targets"], fds[-1]["targets"])


def test_busy_message_names_holder_and_lock_timeout(store):
    """A VE whose lock another operation holds: the task fails after lock_timeout seconds with one
    message that names the VE, what holds it and the option to wait longer; nothing is made."""
    name = "pz%s-busy" % store.tag
    locks = store.root / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [HOST_PYTHON, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'osvirt.vz.ve %s (state=absent) (pid 1)\\n'); "
         "print('held', flush=True); sys.stdin.read()" % name, str(locks / ("ve-%s.lock" % name))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run = store.run(play([{"name": "busy", "osvirt.vz.ve": dict(
            store.common(), name=name, template="busybox", state="started", lock_timeout=1)}]),
            inventory=store.inventory, expect_fail=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    msg = run.task("busy").msg
    assert msg.startswith("VE %s is busy" % name), msg
    assert "osvirt.vz.ve %s (state=absent)" % name in msg and "lock_timeout" in msg and "1 s" in msg, msg
    assert not (store.root / "ves" / name).exists()
