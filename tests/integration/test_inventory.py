# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The inventory plugin osvirt.vz.ve against two lab hosts with three VEs each (one VE name on
both hosts), plus a third host entry that nothing answers (198.18.0.99, inside the lab's range).

The VEs live in a vz_root of this run on each lab host (``host_vz_root``, the host role's
variable, which the plugin reads) with a cgroup parent of this run, so the listing holds exactly
this test's VEs whatever else runs on the lab. Busybox VEs get the host's Python by read-only bind
mounts (vefleet.PYTHON_MOUNTS: only the tests' way to have Python in a busybox VE).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import vefleet
from vefleet import PYTHON_MOUNTS
from vzlib import play

GHOST = "198.18.0.99"   # inside the lab network; nothing answers there
ADDRESS = "10.20.0.210"


class Fleet:
    def __init__(self, workdir, prefix, template, hosts_ini, env):
        self.workdir = workdir
        self.prefix = prefix
        self.template = template
        self.hosts_ini = hosts_ini
        self.env = env
        self.same = prefix + "-same"
        self.ves = {"lab1": [self.same, prefix + "-a1", prefix + "-a2"],
                    "lab2": [self.same, prefix + "-b1", prefix + "-b2"]}

    def source(self, name, **options):
        """An inventory source file ``<name>.ve.yml`` with these options."""
        path = self.workdir / ("%s.ve.yml" % name)
        path.write_text(json.dumps(dict({"plugin": "osvirt.vz.ve"}, **options)))
        return path

    def cli(self, tool, *args, env=None, check=True):
        proc = subprocess.run([str(vefleet.REPO_ROOT / ".venv" / "bin" / tool), *map(str, args)],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                              env=dict(self.env, **(env or {})), cwd=str(self.workdir), check=False)
        if check:
            assert proc.returncode == 0, "%s %s failed rc=%d\n%s\n%s" % (tool, args, proc.returncode, proc.stdout,
                                                                         proc.stderr)
        return proc

    def inventory(self, *sources, env=None):
        """ansible-inventory --list over the lab hosts file and ``sources``: (data, stderr)."""
        args = ["-i", self.hosts_ini]
        for source in sources:
            args += ["-i", source]
        proc = self.cli("ansible-inventory", *args, "--list", env=env)
        return plain(json.loads(proc.stdout)), proc.stderr

    def name(self, ve, host):
        return "%s.%s" % (ve, host)


def plain(value):
    """ansible-inventory shows unsafe (remote) strings as {"__ansible_unsafe": ...}: unwrap them."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def members(data, group):
    return sorted((data.get(group) or {}).get("hosts") or [])


@pytest.fixture(scope="module")
def fleet(harness, lab, tmp_path_factory):
    h = harness
    workdir = tmp_path_factory.mktemp("inv")
    tag = secrets.token_hex(3)
    prefix = "i" + secrets.token_hex(2)
    template = "bbx-" + tag
    hostvars = vefleet.inventory_hostvars(lab.inventory)
    lines = ["[vz_hosts]"]
    roots = {}
    for host in ("lab1", "lab2"):
        roots[host] = "/var/tmp/vzinv-%s-%s" % (tag, host)
        lines.append("%s ansible_host=%s host_vz_root=%s host_cgroup_parent=vzt-%s-%s"
                     % (host, hostvars[host]["ansible_host"], roots[host], tag, host))
    common = hostvars["lab1"]
    lines += ["", "[vz_hosts:vars]", "ansible_user=root",
              "ansible_ssh_private_key_file=%s" % common["ansible_ssh_private_key_file"],
              "ansible_python_interpreter=/usr/bin/python3",
              "ansible_ssh_common_args='%s'" % common["ansible_ssh_common_args"]]
    hosts_ini = workdir / "hosts.ini"
    hosts_ini.write_text("\n".join(lines) + "\n")
    env = h._playbook_env({"ANSIBLE_CACHE_PLUGIN_TIMEOUT": "3600"})
    f = Fleet(workdir, prefix, template, hosts_ini, env)
    runner = h.PlaybookRunner(workdir, hosts_ini)
    store = {"vz_root": "{{ host_vz_root }}", "cgroup_parent": "{{ host_cgroup_parent }}"}
    try:
        runner(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"},
                                                        "vz_root": "{{ host_vz_root }}"}},
            {"name": "ves", "osvirt.vz.ve": dict(store, template=template, mounts=PYTHON_MOUNTS, ves=[
                {"name": f.same, "network": [{"ipv4": [ADDRESS + "/24"], "gateway4": "10.20.0.1"}]},
                {"name": "{{ '%s-a1' if inventory_hostname == 'lab1' else '%s-b1' }}" % (prefix, prefix)},
                {"name": "{{ '%s-a2' if inventory_hostname == 'lab1' else '%s-b2' }}" % (prefix, prefix)},
            ])},
        ], hosts="vz_hosts"))
        yield f
    finally:
        runner(play([{"name": "cleanup", "ignore_errors": True, "osvirt.vz.ve": dict(store, state="absent", ves=[
            {"name": n} for n in sorted(set(f.ves["lab1"] + f.ves["lab2"]))])}], hosts="vz_hosts"))
        for host, root in roots.items():
            shutil.rmtree(root, ignore_errors=True)
            for mount in Path("/sys/fs/cgroup").iterdir():
                for top in (mount / ("vzt-%s-%s" % (tag, host)), mount / ("vzt-%s-%s.monitor" % (tag, host))):
                    for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                        try:
                            os.rmdir(current)
                        except OSError:
                            pass


def test_lists_every_ve_of_both_hosts_with_its_data(fleet):
    proc = fleet.cli("ansible-inventory", "-i", fleet.hosts_ini, "-i", fleet.source("fleet"), "--list")
    hostvars = json.loads(proc.stdout)["_meta"]["hostvars"]
    assert fleet.name(fleet.same, "lab1") in hostvars, (sorted(hostvars), proc.stderr)
    raw = hostvars[fleet.name(fleet.same, "lab1")]
    # what the host reported is unsafe: never templated
    assert raw["vz_template"] == {"__ansible_unsafe": raw["vz_template"]["__ansible_unsafe"]}
    assert raw["vz_addresses"] == [{"__ansible_unsafe": ADDRESS}]
    data, stderr = fleet.inventory(fleet.source("fleet"))
    expected = sorted(fleet.name(ve, host) for host, ves in fleet.ves.items() for ve in ves)
    assert members(data, "vz_ves") == expected, stderr
    # the same VE name on two hosts: two inventory hosts, each pointing at its own host
    same1, same2 = (data["_meta"]["hostvars"][fleet.name(fleet.same, h)] for h in ("lab1", "lab2"))
    for host, hv in (("lab1", same1), ("lab2", same2)):
        assert hv["ansible_connection"] == "osvirt.vz.ve"
        assert hv["vz_host"] == host and hv["vz_ve"] == fleet.same and hv["ansible_vz_ve"] == fleet.same
        assert hv["ansible_vz_host"] == {"lab1": "198.18.0.11", "lab2": "198.18.0.12"}[host]
        assert hv["ansible_vz_root"].startswith("/var/tmp/vzinv-") and hv["ansible_vz_root"].endswith(host)
        assert hv["ansible_vz_host_user"] == "root" and hv["ansible_vz_host_private_key_file"]
        assert hv["vz_state"] == "running" and isinstance(hv["vz_pid"], int)
        assert hv["vz_template_name"] == fleet.template
        assert hv["vz_template"] == "%s@%s" % (fleet.template, hv["vz_template_version"])
        assert hv["vz_addresses"] == [ADDRESS]
        assert hv["vz_limits"] == {} or isinstance(hv["vz_limits"], dict)
    assert members(data, "vz_host_lab1") == sorted(fleet.name(v, "lab1") for v in fleet.ves["lab1"])
    assert members(data, "template_" + fleet.template.replace("-", "_")) == expected
    assert members(data, "state_running") == expected


def test_ping_every_running_ve(fleet):
    proc = fleet.cli("ansible", "all", "-i", fleet.hosts_ini, "-i", fleet.source("fleet"), "-m", "ping")
    for host, ves in fleet.ves.items():
        assert "%s | SUCCESS" % host in proc.stdout
        for ve in ves:
            assert "%s | SUCCESS" % fleet.name(ve, host) in proc.stdout, proc.stdout
    assert proc.stdout.count("| SUCCESS") == 8, proc.stdout


def test_unreachable_host_is_reported_and_skipped_or_fails(fleet):
    ghost = fleet.workdir / "ghost.ini"
    ghost.write_text("[vz_hosts]\nghost ansible_host=%s ansible_ssh_common_args='-o ConnectTimeout=5'\n" % GHOST)
    start = time.monotonic()
    data, stderr = fleet.inventory(ghost, fleet.source("fleet"))
    elapsed = time.monotonic() - start
    assert "host ghost (%s) cannot be reached" % GHOST in " ".join(stderr.split()), stderr
    assert len(members(data, "vz_ves")) == 6, (data, stderr)
    assert elapsed < 60, elapsed

    strict = fleet.source("strict", fail_on_unreachable=True)
    proc = fleet.cli("ansible-inventory", "-i", fleet.hosts_ini, "-i", ghost, "-i", strict, "--list",
                     env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"}, check=False)
    assert proc.returncode != 0
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "cannot list the VEs of host ghost (%s)" % GHOST in text, text
    # without that setting Ansible only warns, and no VE of the failed source is listed
    data, stderr = fleet.inventory(ghost, strict)
    assert members(data, "vz_ves") == [] and "cannot list the VEs of host ghost" in " ".join(stderr.split())


def test_constructable_and_name_format(fleet):
    source = fleet.source(
        "built", name_format="{host}-{ve}",
        keyed_groups=[{"key": "vz_host", "prefix": "on"}],
        groups={"twins": "vz_ve == '%s'" % fleet.same},
        compose={"first_address": "vz_addresses | first | default('none')"})
    data, _stderr = fleet.inventory(source)
    assert members(data, "on_lab2") == sorted("lab2-%s" % v for v in fleet.ves["lab2"])
    assert members(data, "twins") == ["lab1-%s" % fleet.same, "lab2-%s" % fleet.same]
    hostvars = data["_meta"]["hostvars"]
    assert hostvars["lab1-%s" % fleet.same]["first_address"] == ADDRESS
    assert hostvars["lab1-%s" % fleet.ves["lab1"][1]]["first_address"] == "none"

    # one name for two VEs: refused, naming both
    bare = fleet.source("bare", name_format="{ve}")
    proc = fleet.cli("ansible-inventory", "-i", fleet.hosts_ini, "-i", bare, "--list",
                     env={"ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true"}, check=False)
    text = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "both get the inventory name %s" % fleet.same in text, text


def test_cache_is_used_then_refreshed(fleet):
    cache_dir = fleet.workdir / "cache"
    source = fleet.source("cached", cache=True, cache_plugin="ansible.builtin.jsonfile",
                          cache_connection=str(cache_dir), cache_timeout=3600)
    start = time.monotonic()
    data, _stderr = fleet.inventory(source)
    cold = time.monotonic() - start
    files = list(cache_dir.iterdir())
    assert len(files) == 1, files
    mtime = files[0].stat().st_mtime_ns
    stopped = fleet.ves["lab2"][2]
    assert data["_meta"]["hostvars"][fleet.name(stopped, "lab2")]["vz_state"] == "running"

    # stop a VE behind the cache's back: a cached run still says running and queries no host
    run = fleet.cli("ansible", "lab2", "-i", fleet.hosts_ini, "-m", "osvirt.vz.ve",
                    "-a", json.dumps({"name": stopped, "state": "stopped", "vz_root": "{{ host_vz_root }}",
                                      "cgroup_parent": "{{ host_cgroup_parent }}"}))
    assert "CHANGED" in run.stdout, run.stdout
    start = time.monotonic()
    data, _stderr = fleet.inventory(source, env={"ANSIBLE_SSH_EXECUTABLE": "/bin/false"})
    warm = time.monotonic() - start
    assert data["_meta"]["hostvars"][fleet.name(stopped, "lab2")]["vz_state"] == "running"
    assert files[0].stat().st_mtime_ns == mtime

    # --flush-cache lists again and stores the new state; the stopped VE joins state_stopped
    proc = fleet.cli("ansible-inventory", "-i", fleet.hosts_ini, "-i", source, "--list", "--flush-cache")
    data = plain(json.loads(proc.stdout))
    assert data["_meta"]["hostvars"][fleet.name(stopped, "lab2")]["vz_state"] == "stopped"
    assert members(data, "state_stopped") == [fleet.name(stopped, "lab2")]
    assert files[0].stat().st_mtime_ns != mtime
    print("inventory of 2 lab hosts x 3 VEs: cold %.2fs, cached %.2fs" % (cold, warm))
