# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash safety by killing: run a module as Ansible runs it, SIGKILL its whole process group at a
random moment, and check what the host holds afterwards (not a test module).

``ModuleRun(inventory, seed, host="localhost", netns=None)``
    Runs ``ansible <host> -m osvirt.vz.<module> -a <json>`` in a session of its own.
    ``run(module, args)`` runs to the end and returns an :class:`Outcome` whose ``duration`` is
    how long the module itself ran; ``kill(op, module, args, delay)`` SIGKILLs every process group
    of the run ``delay`` seconds after the module started: the controller's, and the group of the
    worker that runs the module (Ansible's workers call setsid) with every command the module
    started; on an SSH host (``netns``: the host's network namespace) the group sshd made for the
    module too. It returns a :class:`KillPoint` saying where the kill landed (``module``: while
    the module ran, ``after``: the module had ended, the controller not yet, ``done``: all had
    ended). ``delay_for(duration)`` draws a delay from a measured duration (a quarter of the
    draws from its last fifth). Every draw comes from one ``random.Random(seed)``: the seed is
    printed, and ``VZ_KILL_SEED=<seed>`` replays a failure.

Invariants (each returns a list of problems, empty when the invariant holds; ``assert_clean``
runs the store-wide ones and fails with all problems at once):

``ves_complete(root)``            every directory under ves/ is a complete VE (ve.json naming it,
                                  a config that liblxc and the collection both parse, private/upper
                                  and private/work) or is gone; no build VE (``tbuild-*``) is left
``tmp_clean(root)``               nothing in .tmp, nothing mounted under vz_root but what running
                                  VEs have (LXC mounts inside the VE's own namespace)
``leases_consistent(root)``       every lease names an existing VE that has the address; every
                                  address of every VE is leased to it, once; no crash leftovers
``templates_complete(root)``      every template version is complete (manifest naming it, rootfs
                                  whose checksum matches, shifted copies complete); nothing else
``single_instances(root)``        no VE has two LXC monitors or two init processes, none runs
                                  without its directory
``file_digest(root, name, path)`` sha256 of a file of a VE, read inside it when it runs, else
                                  from its private area
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / ".build" / "collections"))

from ansible_collections.osvirt.vz.plugins.module_utils._engine.config import LxcConfig  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum  # noqa: E402

VENV_BIN = REPO_ROOT / ".venv" / "bin"
VE_NAME_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
VERSION_RE = re.compile(r"\d{8}-\d{6}")


def kill_seed() -> int:
    """The seed of this run: VZ_KILL_SEED when set (to replay a failure), else a fresh one."""
    value = os.environ.get("VZ_KILL_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 2 ** 31)


def kill_points(default: int) -> int:
    """How many kill points an operation gets: ``default``, scaled by VZ_KILL_POINTS / 60 when set
    (VZ_KILL_POINTS is the total the suite aims at: 60 when unset, as in ``make test``)."""
    total = os.environ.get("VZ_KILL_POINTS")
    if not total:
        return default
    return max(1, round(default * int(total) / 60))


@dataclass
class Outcome:
    """One module run that ran to its end."""

    rc: int
    result: Dict[str, Any]
    duration: float
    output: str = field(repr=False)

    @property
    def failed(self) -> bool:
        return self.rc != 0 or bool(self.result.get("failed"))

    def describe(self) -> str:
        return "rc=%d %s\n%s" % (self.rc, self.result.get("msg", ""), self.output[-6000:])


@dataclass
class KillPoint:
    """One kill: which operation, after how long, and where it landed."""

    op: str
    delay: float
    phase: str          # module / after (the module had ended) / done
    commands: List[str] = field(default_factory=list)   # what the module was running then

    def __str__(self):
        doing = ": " + ", ".join(self.commands) if self.commands else ""
        return "%s killed after %.2fs (%s%s)" % (self.op, self.delay, self.phase, doing)


def _processes() -> Dict[int, tuple]:
    """{pid: (ppid, pgid)} of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != b"Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def _group_members(pgid: int, table=None) -> List[int]:
    table = _processes() if table is None else table
    return [pid for pid, (_ppid, group) in table.items() if group == pgid]


def _descendants(root: int, table) -> List[int]:
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _group) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ModuleRun:
    """Runs osvirt.vz modules the way Ansible runs them, to the end or until killed."""

    def __init__(self, inventory: Path, seed: int, host: str = "localhost", env: Optional[Dict[str, str]] = None,
                 netns: Optional[str] = None):
        self.inventory, self.host, self.seed = inventory, host, seed
        # a host reached by SSH runs the module in a session of sshd's: found by its network namespace
        self.netns = os.stat(netns).st_ino if netns else None
        self.rng = random.Random(seed)
        self.points: List[KillPoint] = []
        self.runs = 0   # module runs started (to the end or killed), for the suite's time figures
        self.env = dict(os.environ)
        self.env.update({
            "ANSIBLE_COLLECTIONS_PATH": str(REPO_ROOT / ".build" / "collections"),
            "ANSIBLE_CONFIG": str(REPO_ROOT / "tests" / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_LOCAL_TEMP": str(REPO_ROOT / ".build" / "ansible-tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        self.env["PATH"] = "%s:%s" % (VENV_BIN, self.env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        self.env.update(env or {})

    def argv(self, module: str, args: Dict[str, Any]) -> List[str]:
        binary = VENV_BIN / "ansible"
        return [str(binary if binary.exists() else "ansible"), self.host, "-i", str(self.inventory),
                "-m", "osvirt.vz." + module, "-a", json.dumps(args)]

    def _start(self, module, args):
        self.runs += 1
        return subprocess.Popen(self.argv(module, args), env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def run(self, module: str, args: Dict[str, Any], timeout: float = 600) -> Outcome:
        """Run the module to its end; its result as the callback printed it. ``duration`` is how long
        the module itself ran (from its process' start to the end), the span kills are drawn from."""
        start = time.monotonic()
        proc = self._start(module, args)
        module_start = module_end = None
        while proc.poll() is None and time.monotonic() - start < timeout:
            running = self._module_running(proc.pid)
            if running and module_start is None:
                module_start = time.monotonic()
            elif not running and module_start is not None and module_end is None:
                module_end = time.monotonic()
            time.sleep(0.02)
        out, _err = proc.communicate(timeout=timeout)
        end = time.monotonic()
        return Outcome(rc=proc.returncode, result=_parse_result(out),
                       duration=(module_end or end) - (module_start or start), output=out)

    def _module_groups(self, leader):
        """Process groups that run the module. Ansible's workers call setsid, so a local module runs
        in the group of a worker below the controller ``leader``; on an SSH host (pipelining feeds the
        module to a python3 on stdin) in a session of sshd's, found by the host's network namespace."""
        table = _processes()
        groups = set()
        if self.netns is None:
            for pid in _descendants(leader, table):
                if "AnsiballZ_" in _cmdline(pid):
                    groups.add(table[pid][1])
            return sorted(groups)
        for pid, (_ppid, group) in table.items():
            try:
                if os.stat("/proc/%d/ns/net" % pid).st_ino != self.netns:
                    continue
            except OSError:
                continue
            line = _cmdline(pid)
            if "python3" in line and "sleep 0" in line or "AnsiballZ_" in line:
                groups.add(group)
        return sorted(groups)

    def _module_running(self, leader):
        return bool(self._module_groups(leader))

    def _all_groups(self, leader):
        """The controller's group and every group below it (its workers')."""
        table = _processes()
        return sorted({leader} | {table[p][1] for p in _descendants(leader, table)})

    def must(self, module: str, args: Dict[str, Any], what: str) -> Outcome:
        outcome = self.run(module, args)
        assert not outcome.failed, "%s failed (seed %s)\n%s" % (
            what, self.seed, outcome.describe())
        return outcome

    def delay_for(self, duration: float) -> float:
        """A kill delay (counted from the module's start) for a module that runs ``duration``
        seconds: anywhere in it, a quarter of the draws in its last fifth, where a module
        publishes and cleans up."""
        if self.rng.random() < 0.25:
            return duration * self.rng.uniform(0.8, 1.0)
        return duration * self.rng.uniform(0.02, 1.0)

    def kill(self, op: str, module: str, args: Dict[str, Any], delay: float, timeout: float = 120) -> KillPoint:
        """Start the module and SIGKILL its whole process group ``delay`` seconds after the module
        itself started (the controller's start before it is not counted)."""
        proc = self._start(module, args)
        start = time.monotonic()
        while proc.poll() is None and not self._module_running(proc.pid) and time.monotonic() - start < timeout:
            time.sleep(0.01)
        module_start = time.monotonic()
        deadline = module_start + delay
        self.observed = None   # how long the module ran, when it ended before the kill
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
            if self.observed is None and not self._module_running(proc.pid):
                self.observed = time.monotonic() - module_start
                break
        return self._kill_now(op, proc, delay)

    def _kill_now(self, op, proc, delay):
        phase, commands, groups = "done", [], []
        if proc.poll() is None:
            module = self._module_groups(proc.pid)
            groups = sorted(set(self._all_groups(proc.pid)) | set(module))
            table = _processes()
            lines = [_cmdline(pid) for group in groups for pid in _group_members(group, table)]
            phase = "module" if module else "after"
            commands = sorted({line.split()[0].rsplit("/", 1)[-1] for line in lines
                               if line and "ansible" not in line and "AnsiballZ_" not in line
                               and not line.startswith("/bin/sh") and "sleep 0" not in line})
            for group in groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.communicate()
        for _attempt in range(500):   # every member of those groups has gone (not only the leaders)
            table = _processes()
            if not any(_group_members(g, table) for g in groups):
                break
            time.sleep(0.01)
        point = KillPoint(op=op, delay=delay, phase=phase, commands=commands)
        self.points.append(point)
        return point

    def kill_when(self, op: str, module: str, args: Dict[str, Any], ready, timeout: float = 120) -> KillPoint:
        """Start the module and SIGKILL its process groups as soon as ``ready()`` is true (a moment
        chosen by what the module has made, not by time: e.g. its build VE runs)."""
        proc = self._start(module, args)
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() - start < timeout and not ready():
            time.sleep(0.02)
        return self._kill_now(op, proc, time.monotonic() - start)

    def kill_point(self, op: str, module: str, args: Dict[str, Any], duration: float, tries: int = 4) -> KillPoint:
        """Kill ``module`` once inside its run: a delay drawn from ``duration``, drawn again from
        what the module really took when it ended first (load varies), up to ``tries`` times."""
        delay = self.delay_for(duration)
        for _attempt in range(tries):
            point = self.kill(op, module, args, delay)
            if point.phase == "module":
                break
            delay = self.delay_for(self.observed or delay * 0.5) * 0.9
        return point

    def summary(self) -> Dict[str, Dict[str, int]]:
        """{op: {'module': n, 'after': n, 'done': n}} over every kill so far."""
        table: Dict[str, Dict[str, int]] = {}
        for point in self.points:
            row = table.setdefault(point.op, {"module": 0, "after": 0, "done": 0})
            row[point.phase] += 1
        return table


def _parse_result(output: str) -> Dict[str, Any]:
    """The JSON after ``host | STATUS =>`` of the minimal callback ({} when there is none)."""
    match = re.search(r"^\S+ \| [A-Z!]+ => ", output, re.M)
    if not match:
        return {"msg": "no module result in the output"}
    try:
        return json.JSONDecoder().raw_decode(output[match.end():])[0]
    except ValueError:
        return {"msg": "unreadable module result"}


# ---------------------------------------------------------------------------------- invariants


def _mounts_under(root: Path) -> List[str]:
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == str(root) or point.startswith(str(root) + "/"):
                found.append(point)
    return found


def lxc_parses(ves: Path, name: str) -> Optional[str]:
    """None when liblxc loads the VE's config (lxc-info reads a key of it), else why not."""
    proc = subprocess.run(["lxc-info", "-P", str(ves), "-n", name, "-c", "lxc.rootfs.path"],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or "lxc.rootfs.path" not in proc.stdout:
        why = (proc.stderr or proc.stdout).strip()
        return "liblxc cannot read the config of %s: rc=%d %s" % (name, proc.returncode, why)
    return None


def ves_complete(root: Path) -> List[str]:
    """Every entry of ves/ is a complete VE; no build VE is left."""
    problems = []
    ves = Path(root) / "ves"
    if not ves.is_dir():
        return problems
    for entry in sorted(ves.iterdir()):
        name = entry.name
        if name.startswith("tbuild-"):
            problems.append("build VE %s left in ves/" % name)
            continue
        if not VE_NAME_RE.fullmatch(name) or not entry.is_dir() or entry.is_symlink():
            problems.append("ves/%s is not a VE directory" % name)
            continue
        try:
            meta = json.loads((entry / "ve.json").read_text())
        except (OSError, ValueError) as exc:
            problems.append("VE %s: ve.json unreadable: %s" % (name, exc))
            continue
        if not isinstance(meta, dict) or meta.get("name") != name or not meta.get("template"):
            problems.append("VE %s: ve.json does not describe it: %r" % (name, meta))
        for sub in ("private/upper", "private/work"):
            if not (entry / sub).is_dir():
                problems.append("VE %s: %s missing" % (name, sub))
        try:
            config = LxcConfig.load(str(entry / "config"))
        except (OSError, ValueError) as exc:
            problems.append("VE %s: config unreadable: %s" % (name, exc))
            continue
        rootfs = config.get_one("lxc.rootfs.path") or ""
        if not rootfs.startswith("overlay:") or not rootfs.endswith(str(entry / "private" / "upper")):
            problems.append("VE %s: lxc.rootfs.path is %r" % (name, rootfs))
        for lower in rootfs[len("overlay:"):].split(":")[:-1]:
            if not os.path.isdir(lower):
                problems.append("VE %s: lower layer %s does not exist" % (name, lower))
        if config.get_one("lxc.uts.name") is None:
            problems.append("VE %s: config has no lxc.uts.name" % name)
        why = lxc_parses(ves, name)
        if why:
            problems.append(why)
    return problems


def running_ves(root: Path) -> List[str]:
    ves = Path(root) / "ves"
    if not ves.is_dir():
        return []
    return subprocess.run(["lxc-ls", "-1", "-P", str(ves), "--active"], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL).stdout.split()


def tmp_clean(root: Path) -> List[str]:
    """Nothing in .tmp; nothing mounted under vz_root (LXC mounts a VE's root in the VE's own
    mount namespace, so the host's table holds none of them)."""
    problems = []
    tmp = Path(root) / ".tmp"
    if tmp.is_dir():
        left = sorted(p.name for p in tmp.iterdir())
        if left:
            problems.append(".tmp holds %s" % ", ".join(left))
    mounts = [m for m in _mounts_under(Path(root)) if m != str(root)]
    if mounts:
        problems.append("mounted under vz_root: %s" % ", ".join(mounts))
    return problems


def _addresses(meta: Dict[str, Any]) -> List[str]:
    return [a.split("/")[0] for iface in meta.get("network") or [] for key in ("ipv4", "ipv6")
            for a in iface.get(key) or []]


def leases_consistent(root: Path) -> List[str]:
    """Each lease names an existing VE that has the address; each VE address is leased to it."""
    problems = []
    directory = Path(root) / "net" / "leases"
    metas = {}
    ves = Path(root) / "ves"
    for meta_file in sorted(ves.glob("*/ve.json")) if ves.is_dir() else []:
        try:
            metas[meta_file.parent.name] = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
    leases = {}
    if directory.is_dir():
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                problems.append("lease leftover %s" % entry.name)
                continue
            try:
                lease = json.loads(entry.read_text())
            except (OSError, ValueError) as exc:
                problems.append("lease %s unreadable: %s" % (entry.name, exc))
                continue
            leases[entry.name] = lease
            ve = lease.get("ve")
            if ve not in metas:
                problems.append("lease %s held by %s, which does not exist (leaked)" % (entry.name, ve))
            elif entry.name not in _addresses(metas[ve]):
                problems.append("lease %s held by %s, which does not use it (leaked)" % (entry.name, ve))
    seen: Dict[str, str] = {}
    for ve, meta in metas.items():
        for address in _addresses(meta):
            if address in seen:
                problems.append("address %s used by %s and %s" % (address, seen[address], ve))
            seen[address] = ve
            if (leases.get(address) or {}).get("ve") != ve:
                problems.append("VE %s uses %s without holding its lease (%r)" % (ve, address, leases.get(address)))
    return problems


def templates_complete(root: Path) -> List[str]:
    """Every published version is whole: manifest, rootfs with its checksum, complete shifted copies."""
    problems = []
    templates = Path(root) / "templates"
    if not templates.is_dir():
        return problems
    for tdir in sorted(templates.iterdir()):
        if not tdir.is_dir():
            problems.append("templates/%s is not a directory" % tdir.name)
            continue
        versions = sorted(tdir.iterdir())
        if not versions:
            problems.append("template %s has no version (an empty directory)" % tdir.name)
        for vdir in versions:
            where = "%s@%s" % (tdir.name, vdir.name)
            if not VERSION_RE.fullmatch(vdir.name):
                problems.append("templates/%s/%s is not a version" % (tdir.name, vdir.name))
                continue
            try:
                manifest = json.loads((vdir / "manifest.json").read_text())
            except (OSError, ValueError) as exc:
                problems.append("%s: manifest unreadable (half published): %s" % (where, exc))
                continue
            if manifest.get("name") != tdir.name or manifest.get("version") != vdir.name:
                problems.append("%s: manifest names %s@%s" % (where, manifest.get("name"), manifest.get("version")))
            if not (vdir / "rootfs").is_dir():
                problems.append("%s: no rootfs" % where)
                continue
            actual = "sha256:" + tree_checksum(str(vdir / "rootfs"))
            if actual != manifest.get("checksum"):
                problems.append("%s: rootfs checksum %s, manifest %s" % (where, actual, manifest.get("checksum")))
            idmap = vdir / "idmap"
            for key in sorted(idmap.iterdir()) if idmap.is_dir() else []:
                if not (key / "rootfs").is_dir():
                    problems.append("%s: shifted copy %s has no rootfs" % (where, key.name))
            extra = sorted(p.name for p in vdir.iterdir() if p.name not in ("rootfs", "manifest.json", "idmap"))
            if extra:
                problems.append("%s: unexpected entries %s" % (where, ", ".join(extra)))
    return problems


def _monitors() -> Dict[tuple, List[int]]:
    """{(lxcpath, name): [monitor pids]} from the LXC monitors' process titles."""
    found: Dict[tuple, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        line = _cmdline(int(entry))
        if line.startswith("[lxc monitor] "):
            parts = line[len("[lxc monitor] "):].rsplit(" ", 1)
            if len(parts) == 2:
                found.setdefault((parts[0], parts[1]), []).append(int(entry))
    return found


def _live_children(pid: int) -> List[int]:
    """Children of ``pid`` that are not zombies (a VE's init that died and awaits its monitor)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid), encoding="ascii") as handle:
            children = [int(p) for p in handle.read().split()]
    except OSError:
        return []
    alive = []
    for child in children:
        try:
            with open("/proc/%d/stat" % child, "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    alive.append(child)
        except OSError:
            continue
    return alive


def _instances(lxcpath: str) -> List[str]:
    problems = []
    for (path, name), pids in sorted(_monitors().items()):
        if path != lxcpath:
            continue
        running = [pid for pid in pids if _live_children(pid)]   # a monitor with a live init: a running copy
        inits = [c for pid in running for c in _live_children(pid)]
        if len(running) > 1 or len(inits) > 1:
            problems.append("VE %s runs %d times: monitors %s, init processes %s" % (name, len(running), running,
                                                                                     inits))
        if name.startswith("tbuild-") and running:
            problems.append("build VE %s still runs (monitor %s)" % (name, running))
        elif running and not (Path(lxcpath) / name / "ve.json").is_file():
            problems.append("VE %s runs (monitor %s) but has no directory: a copy nothing manages" % (name, running))
    return problems


def single_instances(root: Path, settle: float = 10.0) -> List[str]:
    """No VE of this store runs twice (two monitors with a live init each, or two inits), none runs
    without its directory. A monitor that is still tearing down a stopped VE (its init gone or a
    zombie) is no running copy; what looks like one is looked at again for up to ``settle`` seconds,
    as LXC finishes a stop asynchronously."""
    lxcpath = str(Path(root) / "ves")
    deadline = time.monotonic() + settle
    problems = _instances(lxcpath)
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = _instances(lxcpath)
    return problems


def assert_clean(root: Path, point: Optional[KillPoint] = None, seed: Optional[int] = None,
                 templates: bool = True) -> int:
    """Run the store-wide invariants; fail with every problem found. Returns how many ran."""
    checks = [ves_complete, tmp_clean, leases_consistent, single_instances]
    if templates:
        checks.append(templates_complete)
    problems = []
    for check in checks:
        problems += ["%s: %s" % (check.__name__, p) for p in check(root)]
    assert not problems, "after %s (seed %s, replay with VZ_KILL_SEED=%s):\n  %s" % (
        point, seed, seed, "\n  ".join(problems))
    return len(checks)


def file_digest(root: Path, name: str, path: str) -> Optional[str]:
    """sha256 of ``path`` in VE ``name``: read inside the VE when it runs, else from its private area."""
    ves = Path(root) / "ves"
    if name in running_ves(root):
        proc = subprocess.run(["lxc-attach", "-P", str(ves), "-n", name, "--", "cat", path],
                              capture_output=True, check=False, stdin=subprocess.DEVNULL)
        return hashlib.sha256(proc.stdout).hexdigest() if proc.returncode == 0 else None
    try:
        return hashlib.sha256((ves / name / "private" / "upper" / path.lstrip("/")).read_bytes()).hexdigest()
    except OSError:
        return None


def write_canary(root: Path, name: str, path: str = "/root/canary", size: int = 65536) -> str:
    """Write random bytes to ``path`` inside the running VE ``name`` (and sync); returns their sha256."""
    data = os.urandom(size)
    subprocess.run(["lxc-attach", "-P", str(Path(root) / "ves"), "-n", name, "--", "sh", "-c",
                    "cat > %s && sync" % path], input=data, check=True, capture_output=True)
    return hashlib.sha256(data).hexdigest()
