# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration test of the osvirt.vz.host role against this machine.

This changes the real machine on purpose (it is a VE host): packages, /var/lib/vz, root's
subordinate ids and the bridge vzbr0 with 10.20.0.1/24 in the root network namespace.
Needs root, /usr/bin/python3 with pyroute2 and ansible-playbook.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vzlib import host_role_sysctls, restore_sysctls

pytestmark = pytest.mark.integration

MODULE_PYTHON = "/usr/bin/python3"
VZ_ROOT = Path("/var/lib/vz")
RECAP_RE = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                      re.MULTILINE)


def _ansible_playbook():
    """ansible-playbook of the venv running pytest, else the one on PATH."""
    local = Path(sys.executable).parent / "ansible-playbook"
    return str(local) if local.exists() else shutil.which("ansible-playbook")


@pytest.fixture(scope="module")
def preconditions():
    reason = None
    if os.geteuid() != 0:
        reason = "needs root: the role changes the machine"
    elif not _ansible_playbook():
        reason = "ansible-playbook not found"
    if reason:
        # Under CI a missing precondition is a failure: CI must never go green by skipping.
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def kept_sysctls():
    """The kernel limits the role raises are machine-wide: put them back afterwards."""
    saved = host_role_sysctls()
    try:
        yield
    finally:
        restore_sysctls(saved)


def run_role(tmp_path, extra_vars=None, check=False):
    """Run the role on localhost; return (rc, stdout+stderr, (ok, changed, failed) or None).

    The role's sysctl file goes to ``tmp_path`` (not /etc/sysctl.d): tests leave the machine's
    boot configuration alone."""
    extra_vars = dict({"host_sysctl_file": str(tmp_path / "60-osvirt-vz.conf")}, **(extra_vars or {}))
    playbook = tmp_path / "host.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost",
        "gather_facts": False,
        "roles": [{"role": "osvirt.vz.host"}],
    }]))
    argv = [_ansible_playbook(), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=%s" % MODULE_PYTHON, str(playbook)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars)]
    if check:
        argv.append("--check")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
    # The harness (tests/conftest.py) points this at .build/collections; standalone runs use a
    # link /tmp/coll/ansible_collections/osvirt/vz -> repo.
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", "/tmp/coll")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          cwd=str(tmp_path), timeout=1200)
    output = proc.stdout + proc.stderr
    match = RECAP_RE.search(proc.stdout)
    recap = None if match is None else (int(match[1]), int(match[2]), int(match[4]))
    return proc.returncode, output, recap


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_host_role_twice_second_run_unchanged(preconditions, kept_sysctls, tmp_path):
    rc, out, recap = run_role(tmp_path)
    assert rc == 0, out
    assert recap is not None and recap[2] == 0, out

    # data root and its directories
    assert _mode(VZ_ROOT) == 0o711
    for name, mode in (("templates", 0o711), ("ves", 0o711), (".tmp", 0o700), ("locks", 0o700),
                       ("backups", 0o700)):
        assert _mode(VZ_ROOT / name) == mode, name
    assert json.loads((VZ_ROOT / "host.json").read_text()) == {
        "cgroup_parent": "vz", "bridge": "vzbr0"}
    assert _mode(VZ_ROOT / "host.json") == 0o644

    # subordinate ids of root
    for path in ("/etc/subuid", "/etc/subgid"):
        assert "root:100000:65536" in Path(path).read_text().splitlines(), path

    # the bridge, in the root network namespace
    link = json.loads(subprocess.run(["ip", "-j", "-d", "addr", "show", "dev", "vzbr0"],
                                     capture_output=True, text=True, check=True).stdout)[0]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert "UP" in link["flags"]
    assert ["%s/%d" % (a["local"], a["prefixlen"]) for a in link["addr_info"]
            if a["family"] == "inet"] == ["10.20.0.1/24"]
    # its settings (pools), which VE networking reads
    assert json.loads((VZ_ROOT / "net" / "bridges" / "vzbr0.json").read_text()) == {
        "name": "vzbr0", "ipv4": ["10.20.0.1/24"], "ipv6": [], "pool4": "10.20.0.0/24",
        "pool6": None, "nat": False, "uplink": None}

    # autostart: unit on systemd hosts, a hint otherwise
    if Path("/run/systemd/system").exists():
        unit = Path("/etc/systemd/system/osvirt-vz-autostart.service").read_text()
        assert "ExecStart=/usr/libexec/osvirt-vz/autostart /var/lib/vz" in unit
        assert "ExecStop=/usr/bin/lxc-autostart -s -P /var/lib/vz/ves" in unit
    else:
        assert "'/usr/libexec/osvirt-vz/autostart /var/lib/vz' at boot" in out

    # kernel limits for the default 200 VEs: in the role's file and live
    conf = (tmp_path / "60-osvirt-vz.conf").read_text()
    assert "fs.inotify.max_user_instances = " in conf and "kernel.keys.maxkeys = " in conf
    assert int(Path("/proc/sys/fs/inotify/max_user_instances").read_text()) >= 25600

    # second run and a check-mode run change nothing
    rc, out, recap = run_role(tmp_path)
    assert rc == 0, out
    assert recap is not None and recap[1] == 0, "second run changed something:\n" + out
    rc, out, recap = run_role(tmp_path, check=True)
    assert rc == 0, out
    assert recap is not None and recap[1] == 0, "check-mode run reports changes:\n" + out


@pytest.mark.parametrize("extra_vars, message", [
    ({"host_subid_count": "many"}, "host_subid_count"),
    ({"host_bridge_ipv4": ["10.20.0.1/24", "x"]}, "bridge_ipv4=10.20.0.1/24,x"),
    ({"host_vz_root": "var/lib/vz"}, "invalid host settings"),
    ({"host_bridge": "vzbr-name-too-long"}, "invalid host settings"),
    ({"host_subid_count": 1000}, "invalid host settings"),
    ({"host_bridge_uplink": "eth0"}, "uplink=eth0"),
    ({"host_bridge_ipv6": ["fd00::1"]}, "bridge_ipv6=fd00::1"),
    ({"host_routed_pool4": "10.30.0.0"}, "routed_pool4=10.30.0.0"),
    ({"host_no_such_var": 1, "host_install_packages": "maybe"}, "host_install_packages"),
])
def test_host_role_rejects_bad_variables_before_changing_anything(preconditions, tmp_path,
                                                                  extra_vars, message):
    before = (VZ_ROOT / "host.json").read_text() if (VZ_ROOT / "host.json").exists() else None
    rc, out, recap = run_role(tmp_path, extra_vars={"host_install_packages": False, **extra_vars})
    assert rc != 0, out
    assert recap is not None and recap[1] == 0 and recap[2] == 1, out
    assert message in out, out
    after = (VZ_ROOT / "host.json").read_text() if (VZ_ROOT / "host.json").exists() else None
    assert before == after


def test_host_role_makes_a_new_cgroup_parent_in_every_hierarchy(preconditions, tmp_path):
    """A cgroup parent that never existed: the role makes it everywhere (cpusets filled), in check
    mode it reports the change and makes nothing, and a second run changes nothing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vzlib import new_cgroup_parent, remove_cgroups  # pylint: disable=import-outside-toplevel
    parent = new_cgroup_parent()
    root = Path(tmp_path) / "vz"
    mounts = sorted({line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                     if line.split(" - ")[1].split()[0] in ("cgroup", "cgroup2")})
    settings = {"host_install_packages": False, "host_cgroup_parent": parent, "host_vz_root": str(root)}
    try:
        rc, out, recap = run_role(tmp_path, extra_vars=settings, check=True)
        assert rc == 0 and recap[1] > 0, out
        assert not any(Path(m, parent).exists() for m in mounts), out
        rc, out, recap = run_role(tmp_path, extra_vars=settings)
        assert rc == 0, out
        assert [m for m in mounts if not Path(m, parent).is_dir()] == [], out
        cpuset = Path("/sys/fs/cgroup/cpuset")
        if cpuset.is_dir():
            for name in ("cpuset.cpus", "cpuset.mems"):
                assert (cpuset / parent / name).read_text().strip() == (cpuset / name).read_text().strip()
        rc, out, recap = run_role(tmp_path, extra_vars=settings)
        assert rc == 0 and recap[1] == 0, "second run changed something:\n" + out
    finally:
        remove_cgroups(parent)
