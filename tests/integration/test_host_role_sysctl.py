# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The host role's kernel limits for many VEs (roles/host/tasks/sysctl.yml) on this machine.

These sysctls are machine-wide (the neighbour thresholds exist in the initial network namespace
only), so every test puts back every value it found, and writes its sysctl file in its own
temporary directory instead of /etc/sysctl.d.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vzlib import host_role_sysctls, play, restore_sysctls, sh

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NEIGH = [k for k in yaml.safe_load((REPO / "roles/host/vars/main.yml").read_text())["host_sysctl_wanted"]
         if ".neigh." in k]


def _proc(key):
    return Path("/proc/sys") / key.replace(".", "/")


def _read(key):
    return int(_proc(key).read_text().split()[0])


@pytest.fixture
def saved_sysctls():
    """Every value the role may change, put back afterwards (also when the test fails)."""
    before = host_role_sysctls()
    try:
        yield before
    finally:
        restore_sysctls(before)


def _tasks(conf, ves):
    return play([{"name": "kernel limits", "ansible.builtin.include_role": {
        "name": "osvirt.vz.host", "tasks_from": "sysctl.yml"},
        "vars": {"host_sysctl_file": str(conf), "host_expected_ves": ves}}])


def _file_values(conf):
    lines = [line.split(" = ") for line in conf.read_text().splitlines() if " = " in line and not line.startswith("#")]
    return {key: int(value) for key, value in lines}


def _changed(run):
    return sorted(r.name.split(" : ", 1)[-1] for r in run.results if r.changed)


def test_limits_scale_apply_live_keep_higher_and_converge(saved_sysctls, run_playbook, tmp_path):
    conf = tmp_path / "60-osvirt-vz.conf"
    # a value the host has above what the role wants stays; one below it is raised
    _proc("vm.max_map_count").write_text("262199\n")
    _proc("fs.inotify.max_user_instances").write_text("128\n")
    check = run_playbook(_tasks(conf, 300), check=True)
    assert not conf.exists() and _read("fs.inotify.max_user_instances") == 128
    assert "Write the kernel limits of a VE host" in _changed(check)

    first = run_playbook(_tasks(conf, 300))
    assert _changed(first) == ["Apply the kernel limits live", "Write the kernel limits of a VE host"]
    values = _file_values(conf)
    assert values["fs.inotify.max_user_instances"] == max(38400, int(saved_sysctls["fs.inotify.max_user_instances"]))
    assert values["kernel.keys.maxkeys"] >= 15000 and values["kernel.keys.maxbytes"] >= 15000000
    assert values["vm.max_map_count"] == 262199                       # kept, not lowered to 262144
    assert values["kernel.pty.max"] >= 1024 + 16 * 300
    assert values["net.ipv4.neigh.default.gc_thresh3"] >= 8192
    for key, value in values.items():
        assert _read(key) == value, key                                 # live as in the file
    assert set(values) == set(saved_sysctls)                            # every key this host has

    # fewer VEs later: nothing live is lowered, the file stays
    fewer = run_playbook(_tasks(conf, 10))
    assert _changed(fewer) == [] and _file_values(conf) == values

    # lowered by hand (or a boot that did not read the file): applied again, the file unchanged
    _proc("kernel.keys.maxkeys").write_text("200\n")
    third = run_playbook(_tasks(conf, 300))
    assert _changed(third) == ["Apply the kernel limits live"]
    assert _file_values(conf) == values
    assert _read("kernel.keys.maxkeys") == values["kernel.keys.maxkeys"]


def test_in_a_network_namespace_the_neighbour_thresholds_are_left_out(saved_sysctls, run_playbook, tmp_path):
    """A lab host is a network namespace: the neighbour table thresholds do not exist there (the
    table and its limits are the initial namespace's, for all), the other limits are the machine's."""
    netns = "vzt-sysctl-" + tmp_path.name[-6:].replace("_", "")
    sh("ip", "netns", "add", netns)
    try:
        python = tmp_path / "python-in-netns"
        python.write_text('#!/bin/sh\nexec ip netns exec %s /usr/bin/python3 "$@"\n' % netns)
        python.chmod(0o755)
        inventory = tmp_path / "netns.ini"
        inventory.write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % python)
        conf = tmp_path / "60-osvirt-vz.conf"
        _proc("fs.inotify.max_user_instances").write_text("128\n")
        run = run_playbook(_tasks(conf, 200), inventory=inventory)
        assert "Apply the kernel limits live" in _changed(run)
        values = _file_values(conf)
        assert not set(NEIGH) & set(values), values
        assert set(values) == set(saved_sysctls) - set(NEIGH)
        assert _read("fs.inotify.max_user_instances") == values["fs.inotify.max_user_instances"] >= 25600
        for key in NEIGH:                                                 # the initial namespace's stay
            assert _proc(key).read_text().strip() == saved_sysctls[key]
    finally:
        sh("ip", "netns", "del", netns, check=False)
