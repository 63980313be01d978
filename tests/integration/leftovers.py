# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a test leaves on the machine: an inventory of host state, and the difference of two.

``machine_state(scope)`` lists, for one test's :class:`Scope` (its vz_root, cgroup parent, VE
names and the bridge it made), everything of the host that VE operations make and must take away
again::

    ves            directories under <vz_root>/ves
    store          lock files of VEs, templates and bridges that are gone (<vz_root>/locks),
                   leases (<vz_root>/net/leases), entries of <vz_root>/.tmp
    cgroups        cgroup directories below <parent> and <parent>.monitor in every hierarchy
                   (v1 controllers, named v1 hierarchies such as name=systemd, the v2 mount)
    tasks          processes that sit in one of those cgroups
    nft            nftables chains (any table) named after one of the scope's host links, and the
                   scope's bridge in a chain or set name
    links          network links: the scope's host links (veths), its bridge, IFB devices it made
    tc             classifiers of the shaping device naming a scope link, HTB classes no classifier
                   uses (orphans), and a shaping device that shapes nothing (it must be gone then)
    mounts         mount points and mount sources/options under the vz_root, in this mount namespace
    lxc_locks      LXC's own lock files of the scope's containers (/run/lxc/lock/<lxcpath>/.<ve>)
    processes      processes whose command line names the vz_root, the cgroup parent or a VE

``leaks(before, after)`` is what ``after`` has that ``before`` had not, per kind, without the
empty kinds: ``assert not leaks(before, after)`` says "nothing is left behind".

Other tests may run on the machine at the same time (other VE stores, the lab): every kind is
narrowed to names of this scope, except the two shaping checks (an orphan class and an idle
shaping device), which are wrong whoever made them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / ".build" / "collections"))

from ansible_collections.osvirt.vz.plugins.module_utils._ve_net import host_link_name  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup")
LXC_LOCKS = Path("/run/lxc/lock")
SHAPER = "vzshape0"
MAX_INTERFACES = 4   # host links are counted for interface indexes 0..3 of each VE


@dataclass
class Scope:
    """What identifies one test's objects on the host."""

    vz_root: Path
    cgroup_parent: str
    ve_names: List[str] = field(default_factory=list)
    bridges: List[str] = field(default_factory=list)
    own_pids: List[int] = field(default_factory=list)   # the test's own helpers, not leftovers

    def host_links(self) -> FrozenSet[str]:
        return frozenset(host_link_name(ve, index, self.cgroup_parent)
                         for ve in self.ve_names for index in range(MAX_INTERFACES))

    def words(self) -> List[str]:
        """Strings that mark a command line or mount as this scope's."""
        return [str(self.vz_root), self.cgroup_parent] + list(self.bridges)


def _run(*argv: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                          timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def _listdir(path: Path) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _ves(scope: Scope) -> FrozenSet[str]:
    return frozenset(_listdir(scope.vz_root / "ves"))


def _lock_of_gone_object(scope: Scope, filename: str) -> bool:
    """A lock file in <vz_root>/locks whose VE, template or bridge does not exist (any more)."""
    kind, _sep, name = filename[:-len(".lock")].partition("-") if filename.endswith(".lock") else ("", "", "")
    if kind == "ve":
        return not (scope.vz_root / "ves" / name).exists()
    if kind == "template":
        return not (scope.vz_root / "templates" / name).exists()
    if kind == "bridge":
        return not Path("/sys/class/net", name).exists()
    if kind == "tmp":
        return False   # the store's own (the sweep of .tmp): it lives as long as the store
    return True   # not a lock file of ours at all


def _store(scope: Scope) -> FrozenSet[str]:
    found = ["locks/" + n for n in _listdir(scope.vz_root / "locks") if _lock_of_gone_object(scope, n)]
    found += ["net/leases/" + n for n in _listdir(scope.vz_root / "net" / "leases")]
    found += [".tmp/" + n for n in _listdir(scope.vz_root / ".tmp")]
    return frozenset(found)


def _cgroup_tops(scope: Scope) -> Iterable[Path]:
    for mount in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        for top in (scope.cgroup_parent, scope.cgroup_parent + ".monitor"):
            yield mount / top


def _cgroups(scope: Scope) -> FrozenSet[str]:
    """Cgroup dirs below the parent (the parent itself is the host's, made once and kept)."""
    found = set()
    for top in _cgroup_tops(scope):
        for current, dirnames, _files in os.walk(top):
            for name in dirnames:
                found.add(str(Path(current, name).relative_to(CGROUP_ROOT)))
    return frozenset(found)


def _tasks(scope: Scope) -> FrozenSet[str]:
    found = set()
    for top in _cgroup_tops(scope):
        for current, _dirs, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            try:
                pids = Path(current, "cgroup.procs").read_text().split()
            except OSError:
                continue
            found.update("%s in %s" % (pid, Path(current).relative_to(CGROUP_ROOT)) for pid in pids)
    return frozenset(found)


def _nft(scope: Scope) -> FrozenSet[str]:
    text = _run("nft", "-j", "list", "ruleset")
    try:
        items = json.loads(text).get("nftables", []) if text else []
    except ValueError:
        items = []
    links, found = scope.host_links(), set()
    for item in items:
        for kind in ("chain", "set", "map", "flowtable"):
            obj = item.get(kind)
            if not obj:
                continue
            name = obj.get("name", "")
            if any(link in name for link in links) or any(br in name for br in scope.bridges):
                found.add("%s %s %s %s" % (kind, obj.get("family"), obj.get("table"), name))
        rule = item.get("rule")
        if rule and any(link in json.dumps(rule.get("expr", [])) for link in links):
            found.add("rule %s %s %s naming a VE link" % (rule.get("family"), rule.get("table"), rule.get("chain")))
    return frozenset(found)


def _links(scope: Scope) -> FrozenSet[str]:
    text = _run("ip", "-j", "link", "show")
    try:
        links = json.loads(text) if text else []
    except ValueError:
        links = []
    ours = scope.host_links() | set(scope.bridges)
    return frozenset(link["ifname"] for link in links if link.get("ifname") in ours)


def _tc(scope: Scope) -> FrozenSet[str]:
    if not Path("/sys/class/net", SHAPER).exists():
        return frozenset()
    found = set()
    try:
        filters = json.loads(_run("tc", "-j", "filter", "show", "dev", SHAPER) or "[]")
        classes = json.loads(_run("tc", "-j", "class", "show", "dev", SHAPER) or "[]")
    except ValueError:
        return frozenset()
    links = scope.host_links()
    used = set()
    for flt in filters:
        options = flt.get("options") or {}
        flowid = options.get("flowid") or options.get("classid")
        if flowid:
            used.add(flowid)
        text = json.dumps(flt)
        for link in links:
            if link in text:
                found.add("%s classifier of %s" % (SHAPER, link))
    for cls in classes:
        handle = cls.get("handle")
        if handle in ("1:1", None) or handle in used:
            continue
        found.add("%s class %s used by no classifier" % (SHAPER, handle))
    if not filters and not [c for c in classes if c.get("handle") != "1:1"]:
        found.add("%s exists but shapes nothing" % SHAPER)
    return frozenset(found)


def _mounts(scope: Scope) -> FrozenSet[str]:
    root = str(scope.vz_root)
    found = set()
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return frozenset()
    for line in lines:
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")
        if point == root or point.startswith(root + "/") or root + "/" in line.split(" - ", 1)[-1]:
            found.add(point)
    return frozenset(found)


def _lxc_locks(scope: Scope) -> FrozenSet[str]:
    directory = LXC_LOCKS / str(scope.vz_root / "ves").lstrip("/")
    return frozenset(str(directory / n) for n in _listdir(directory))


def _processes(scope: Scope) -> FrozenSet[str]:
    words = scope.words() + [" %s" % name for name in scope.ve_names]
    mine = {os.getpid(), os.getppid(), *scope.own_pids}
    found = set()
    for entry in _listdir(Path("/proc")):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        line = " " + cmdline.strip()
        if any(w in line for w in words):
            found.add("%s %s" % (entry, cmdline.strip()[:200]))
    return frozenset(found)


KINDS = {
    "ves": _ves,
    "store": _store,
    "cgroups": _cgroups,
    "tasks": _tasks,
    "nft": _nft,
    "links": _links,
    "tc": _tc,
    "mounts": _mounts,
    "lxc_locks": _lxc_locks,
    "processes": _processes,
}


def machine_state(scope: Scope) -> Dict[str, FrozenSet[str]]:
    """Everything of ``scope`` the host holds now, kind by kind (see the module docstring)."""
    return {kind: probe(scope) for kind, probe in KINDS.items()}


def leaks(before: Dict[str, FrozenSet[str]], after: Dict[str, FrozenSet[str]]) -> Dict[str, List[str]]:
    """What ``after`` holds that ``before`` did not, per kind; empty kinds left out."""
    found = {}
    for kind, items in after.items():
        new = sorted(items - before.get(kind, frozenset()))
        if new:
            found[kind] = new
    return found
