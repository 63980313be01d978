# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""osvirt.vz.template, ve and ve_info on two lab hosts over real SSH (tests/lab/lab).

The lab hosts use their default /var/lib/vz and the cgroup parent of their host.json
(vzlab-labN). The template gets a name of this test run and the VEs a random prefix, so the
test neither depends on nor disturbs what else lives on the lab hosts; everything it made is
removed with state=absent at the end, whatever happens.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from vzlib import play

LAB_HOSTS = "vz_hosts"   # the inventory group of `lab inventory`
GATEWAY = "10.20.0.1"
# The lab hosts' VE bridges share one L2 segment (the lab LAN), so the VEs of the same name on
# both hosts get addresses of their host's block (lab1 10.20.0.16/28, lab2 10.20.0.32/28) and
# MACs of their host, as VEs on one segment must.
ADDRESSES = {"lab1": ["10.20.0.20", "10.20.0.21", "10.20.0.22"],
             "lab2": ["10.20.0.36", "10.20.0.37", "10.20.0.38"]}


def _ves_per_host(names):
    """The ``ves`` list for both hosts: the same names, the host's addresses and MACs (Jinja)."""
    ves = []
    for i, name in enumerate(names):
        address = "10.20.0.{{ 16 * (inventory_hostname[3:] | int) + %d }}/24" % (4 + i)
        hwaddr = "02:c6:12:bb:{{ '%%02x' | format(inventory_hostname[3:] | int) }}:%02x" % i
        ves.append({"name": name, "network": [{"ipv4": [address], "gateway4": GATEWAY, "hwaddr": hwaddr}]})
    return ves


def _lab_ping(lab, host, address, attempts=5):
    for _attempt in range(attempts):
        if lab.exec(host, "busybox", "ping", "-c1", "-W2", address, check=False).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def _lab_state(lab, host, name):
    proc = lab.exec(host, "lxc-info", "-P", "/var/lib/vz/ves", "-n", name, "-sH", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"


def test_template_and_bulk_ves_on_two_lab_hosts(lab, four_steps, run_playbook):
    hosts = lab.hosts[:2]
    assert len(hosts) == 2, lab.hosts
    template = "bbx-" + secrets.token_hex(3)
    prefix = "l" + secrets.token_hex(2)
    names = ["%s-%s" % (prefix, s) for s in ("a", "b", "c")]
    ves = _ves_per_host(names)
    try:
        # the template: four steps on both hosts at once
        result = four_steps({"osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
                            hosts="vz_hosts", inventory=lab.inventory)
        assert sorted(result.steps) == sorted(hosts)
        versions = {}
        for host in hosts:
            real = result.steps[host][1]
            versions[host] = real["template"]["version"]
            assert real["actions"] == ["build %s@%s" % (template, versions[host])]

        # three VEs with network in one task: four steps on both hosts at once
        result = four_steps({"osvirt.vz.ve": {"template": template, "state": "started", "ves": ves}},
                            hosts="vz_hosts", inventory=lab.inventory)
        for host in hosts:
            check, real, again, _check_again = result.steps[host]
            assert check["actions"] == real["actions"]
            assert sorted(real["actions"]) == sorted(["create %s" % n for n in names] +
                                                     ["start %s" % n for n in names])
            assert [v["name"] for v in again["ves"]] == names
            for ve, address in zip(again["ves"], ADDRESSES[host]):
                assert ve["state"] == "running" and ve["ips"] == [address], ve
                assert ve["template"] == "%s@%s" % (template, versions[host])
                assert isinstance(ve["pid"], int)

        for host in hosts:
            parent = "vzlab-" + host
            for name, address in zip(names, ADDRESSES[host]):
                # the VE's cgroup is under the lab host's parent, seen on the machine
                assert Path("/sys/fs/cgroup/memory", parent, name).is_dir(), (host, name)
                assert _lab_state(lab, host, name) == "RUNNING"
                # reachable from inside its own host
                assert _lab_ping(lab, host, address), "%s on %s is not pingable" % (name, host)
            hostname = lab.exec(host, "lxc-attach", "-P", "/var/lib/vz/ves", "-n", names[0], "--",
                                "hostname").stdout.strip()
            assert hostname == names[0]

        # ve_info per host
        run = run_playbook(play([{"name": "info", "osvirt.vz.ve_info": {"name": names + ["nosuch"]}}], LAB_HOSTS),
                           inventory=lab.inventory)
        for host in hosts:
            info = run.task("info", host=host)
            assert not info.changed
            assert [v["name"] for v in info["ves"]] == sorted(names)
            assert info["missing"] == ["nosuch"]
            assert info["host"]["cgroup_parent"] == "vzlab-" + host
            for ve in info["ves"]:
                assert ve["state"] == "running" and ve["memory_bytes"] > 0
                assert ve["template_name"] == template and ve["template_version"] == versions[host]

        # the same name on the two hosts are two VEs: stopping it on lab1 leaves lab2's alone
        run = run_playbook(play([{"name": "stop", "osvirt.vz.ve": {"name": names[0], "state": "stopped"}}], LAB_HOSTS),
                           inventory=lab.inventory, limit=hosts[0])
        assert run.task("stop", host=hosts[0]).changed
        assert _lab_state(lab, hosts[0], names[0]) == "STOPPED"
        assert _lab_state(lab, hosts[1], names[0]) == "RUNNING"
        assert _lab_ping(lab, hosts[1], ADDRESSES[hosts[1]][0])
        assert not _lab_ping(lab, hosts[0], ADDRESSES[hosts[0]][0], attempts=1)

        # state absent on both hosts
        run = run_playbook(play([{"name": "absent", "osvirt.vz.ve": {
            "state": "absent", "ves": [{"name": n} for n in names]}}], LAB_HOSTS), inventory=lab.inventory)
        for host in hosts:
            res = run.task("absent", host=host)
            assert res.changed and [v["state"] for v in res["ves"]] == ["absent"] * 3
            for name in names:
                assert _lab_state(lab, host, name) == "ABSENT"
                assert not Path("/sys/fs/cgroup/memory", "vzlab-" + host, name).exists()
    finally:
        run_playbook(play([
            {"name": "cleanup ves", "ignore_errors": True,
             "osvirt.vz.ve": {"state": "absent", "ves": [{"name": n} for n in names]}},
            {"name": "cleanup template", "ignore_errors": True,
             "osvirt.vz.template": {"name": template, "state": "absent"}},
        ], LAB_HOSTS), inventory=lab.inventory)
        for host in hosts:   # state=absent keeps the empty templates/<name> directory
            lab.exec(host, "rmdir", "/var/lib/vz/templates/" + template, check=False)
