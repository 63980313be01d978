# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The main job on a brand-new host: playbooks/demo.yml through SSH on a lab host, from zero, twice.

A new host here is lab1 given a vz_root, a cgroup parent and a VE bridge (with its own subnet)
that never existed on this machine (random names), through the host role's inventory variables,
so nothing an earlier test, demo or lab run made can help: no data root, no host.json, no
template, no cgroup parent, no bridge, no leases. The first run must build everything and the
second must change nothing. Packages are the machine's (the lab hosts share /usr), so the role's
apt step is off. Everything the test made is removed at the end, whatever happens.
"""

from __future__ import annotations

import secrets
import shlex
import time
from pathlib import Path

import yaml

from vzlib import remove_cgroups

DEMO = Path(__file__).resolve().parents[2] / "playbooks" / "demo.yml"


def _lab_host_vars(ini_path, host):
    """The variables of ``host`` (its line and the group's) from the lab's INI inventory."""
    found, section = {}, None
    for line in Path(ini_path).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and section == "vz_hosts" and line.split()[0] == host:
            found.update(item.split("=", 1) for item in shlex.split(line)[1:])
        elif line and section == "vz_hosts:vars":
            key, value = line.split("=", 1)
            found[key] = shlex.split(value)[0] if value.startswith("'") else value
    return found


def test_demo_from_zero_on_a_new_lab_host_then_unchanged(lab, run_playbook, tmp_path):
    host = lab.hosts[0]
    tag = secrets.token_hex(3)
    subnet = "10.%d.%d" % (100 + int(tag[:2], 16) % 100, int(tag[2:4], 16))
    vz_root = "/var/tmp/vzfresh-%s/vz" % tag
    fresh = {"host_vz_root": vz_root, "host_cgroup_parent": "vzfresh-" + tag, "host_bridge": "vzf" + tag,
             "host_bridge_ipv4": [subnet + ".1/24"], "host_bridge_pool4": subnet + ".0/24",
             "host_install_packages": False}
    assert lab.exec(host, "test", "-e", vz_root, check=False).returncode != 0
    assert not Path("/sys/fs/cgroup/pids", fresh["host_cgroup_parent"]).exists()
    inventory = tmp_path / "fresh.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {host: dict(_lab_host_vars(lab.inventory, host), **fresh)}}}))
    names = ["demo-%02d" % n for n in range(1, 11)]
    try:
        started = time.monotonic()
        first = run_playbook(DEMO, inventory=inventory)
        print("demo from zero: %.1f s" % (time.monotonic() - started))
        assert first.stats[host]["changed"] > 0, first.report()
        table = first.task("Show what was done", host=host).result["msg"]
        assert table[0].endswith("(built now)"), table
        for name in names:
            line = next(line for line in table if line.startswith(name + " "))
            assert " running " in line and (" %s." % subnet) in line, table
            inside = next(line for line in table if line.startswith(name + ": "))
            assert "eth0 %s." % subnet in inside, table
        cpuset = Path("/sys/fs/cgroup/cpuset", fresh["host_cgroup_parent"], names[0])
        assert (cpuset / "cpuset.cpus").read_text().strip(), cpuset
        assert Path("/sys/fs/cgroup/pids", fresh["host_cgroup_parent"], names[0], "pids.max").read_text() == "128\n"

        started = time.monotonic()
        again = run_playbook(DEMO, inventory=inventory)
        print("demo again: %.1f s" % (time.monotonic() - started))
        changed = {h: s["changed"] for h, s in again.stats.items() if s["changed"]}
        assert changed == {}, again.report()
        assert again.task("Show what was done", host=host).result["msg"][1] == \
            "provision: nothing to do, all VEs as asked"
    finally:
        run_playbook([{"hosts": "all", "gather_facts": False, "tasks": [
            {"name": "remove", "osvirt.vz.ve": {"vz_root": vz_root, "state": "absent",
                                                "ves": [{"name": n} for n in names]},
             "ignore_errors": True}]}], inventory=inventory)
        lab.exec(host, "ip", "link", "del", fresh["host_bridge"], check=False)
        lab.exec(host, "rm", "-rf", str(Path(vz_root).parent), check=False)
        remove_cgroups(fresh["host_cgroup_parent"])
