# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The connection plugin osvirt.vz.ve against real VEs: one on this machine (reached locally)
and one on each of two lab hosts (reached over real SSH with ControlPersist).

Every playbook runs on the three VEs at once (group ``targets``). The VEs are busybox VEs with
the host's Python bind-mounted read-only (see vefleet.PYTHON_MOUNTS: only the tests' way to have
Python in a busybox VE). Names carry a random prefix; the local VE lives in a throw-away
vz_root with its own cgroup parent, the lab VEs in the lab hosts' /var/lib/vz under a template
of this run's own name; everything is removed at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import vefleet
from vefleet import PYTHON_MOUNTS, drive
from vzlib import play, remove_cgroups, sh

TARGETS = ("ve-local", "ve-lab1", "ve-lab2")
AWKWARD = ["with space", "it's", 'dq"x', "-leading-dash", "ünï-漢字", "$(touch pwned)", "semi;colon", "back\\slash"]


class Fleet:
    """The VEs of this module: names, where they live, and an inventory of them."""

    def __init__(self, root, parent, prefix, template, hostvars, inventory):
        self.root = root
        self.parent = parent
        self.prefix = prefix
        self.template = template
        self.hostvars = hostvars          # lab host -> its hostvars
        self.inventory = inventory
        self.running = prefix + "-run"
        self.stopped = prefix + "-stop"
        self.missing = prefix + "-nosuch"

    def vars(self, target, ve=None):
        """Connection variables of ``ve`` (default: the running VE) on a target."""
        if target == "ve-local":
            base = {"ansible_vz_host": "localhost", "ansible_vz_root": str(self.root)}
        else:
            base = vefleet.lab_connection_vars(self.hostvars[target.split("-", 1)[1]])
        return dict(base, ansible_vz_ve=ve or self.running, inventory_hostname=target)


def _write_inventory(path, fleet):
    groups = {}
    for group, ve in (("targets", fleet.running), ("stopped", fleet.stopped), ("missing", fleet.missing)):
        hosts = {}
        for target in TARGETS:
            variables = fleet.vars(target, ve)
            variables.pop("inventory_hostname")
            hosts[target if group == "targets" else "%s-%s" % (group, target)] = variables
        groups[group] = {"hosts": hosts, "vars": {"ansible_connection": "osvirt.vz.ve"}}
    path.write_text(json.dumps({"all": {"children": groups}}, ensure_ascii=False))


@pytest.fixture(scope="module")
def fleet(harness, lab, localhost, tmp_path_factory):
    h = harness
    workdir = tmp_path_factory.mktemp("conn")
    runner = h.PlaybookRunner(workdir, localhost)
    root = Path(tempfile.mkdtemp(prefix="vz-test-conn-", dir="/var/tmp"))
    os.chmod(root, 0o711)
    prefix = "c" + secrets.token_hex(2)
    template = "bbx-" + secrets.token_hex(3)
    parent = "vzt-" + secrets.token_hex(3)
    hostvars = vefleet.inventory_hostvars(lab.inventory)
    inventory = workdir / "ves.yml"
    f = Fleet(root, parent, prefix, template, hostvars, inventory)
    ves = [{"name": f.running, "state": "started"}, {"name": f.stopped, "state": "stopped"}]
    try:
        runner(play([
            {"name": "template", "osvirt.vz.template": {"name": "busybox", "vz_root": str(root)}},
            {"name": "ves", "osvirt.vz.ve": {"template": "busybox", "vz_root": str(root), "cgroup_parent": parent,
                                             "mounts": PYTHON_MOUNTS, "ves": ves}},
        ]))
        runner(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
            {"name": "ves", "osvirt.vz.ve": {"template": template, "mounts": PYTHON_MOUNTS, "ves": ves}},
        ], hosts="vz_hosts"), inventory=lab.inventory)
        _write_inventory(inventory, f)
        yield f
    finally:
        runner(play([
            {"name": "cleanup ves", "ignore_errors": True,
             "osvirt.vz.ve": {"state": "absent", "ves": [{"name": v["name"]} for v in ves]}},
            {"name": "cleanup template", "ignore_errors": True,
             "osvirt.vz.template": {"name": template, "state": "absent"}},
        ], hosts="vz_hosts"), inventory=lab.inventory)
        for host in lab.hosts:
            lab.exec(host, "rmdir", "/var/lib/vz/templates/" + template, check=False)
        for name in (f.running, f.stopped):
            sh("lxc-stop", "-k", "-P", root / "ves", "-n", name, check=False)
        h._release_vz_root(root)
        shutil.rmtree(root, ignore_errors=True)
        remove_cgroups(parent)


def _by_host(run, name):
    return {host: run.task(name, host=host) for host in TARGETS}


# ---------------------------------------------------------------------------- commands


def test_commands_exit_codes_output_environment(fleet, run_playbook):
    run = run_playbook(play([
        {"name": "raw", "raw": "echo out; echo err >&2; exit 3", "register": "r", "ignore_errors": True},
        {"name": "hostname", "ansible.builtin.command": "hostname"},
        {"name": "env", "ansible.builtin.shell": 'pwd; echo "$PATH"; echo "$HOME"; id -u; env | sort'},
        {"name": "argv", "ansible.builtin.command": {"argv": ["printf", "%s|"] + AWKWARD}},
        {"name": "exit 7", "ansible.builtin.shell": "echo before; exit 7", "ignore_errors": True},
        {"name": "missing command", "ansible.builtin.raw": "no-such-command-osvirt", "ignore_errors": True},
    ], hosts="targets"), inventory=fleet.inventory)
    for host in TARGETS:
        raw = run.task("raw", host=host)
        assert raw.failed and raw["rc"] == 3, raw.result
        assert raw["stdout"] == "out\n" and raw["stderr"] == "err\n", raw.result
        assert run.task("hostname", host=host)["stdout"] == fleet.running   # inside the VE
        lines = run.task("env", host=host)["stdout"].splitlines()
        assert lines[:4] == ["/root", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "/root", "0"]
        env_names = {line.split("=", 1)[0] for line in lines[4:]}
        # a clear environment: nothing of the host's or of the SSH session leaks in
        assert not env_names & {"SSH_CONNECTION", "SSH_CLIENT", "VIRTUAL_ENV", "ANSIBLE_CONFIG", "MAIL"}, env_names
        assert run.task("argv", host=host)["stdout"] == "|".join(AWKWARD) + "|"
        exit7 = run.task("exit 7", host=host)
        assert exit7.failed and exit7["rc"] == 7 and exit7["stdout"] == "before"
        missing = run.task("missing command", host=host)
        assert missing.failed and missing["rc"] == 127 and not missing.unreachable


@pytest.mark.parametrize("pipelining", [True, False])
def test_modules_and_pipelining(fleet, run_playbook, pipelining):
    run = run_playbook(play([
        {"name": "ping", "ansible.builtin.ping": {}},
        {"name": "whoami", "ansible.builtin.command": "id -u"},
    ], hosts="targets"), inventory=fleet.inventory,
        extra_vars={"ansible_pipelining": pipelining}, env={"ANSIBLE_VERBOSITY": "3"})
    for host in TARGETS:
        assert run.task("ping", host=host)["ping"] == "pong"
        assert run.task("whoami", host=host)["stdout"] == "0"
    # without pipelining, modules travel by put_file; with it, through the attach's stdin
    assert ("PUT " in run.stdout) is (not pipelining), run.stdout[-3000:]


def test_become_inside_the_ve(fleet, run_playbook):
    """su of the VE (busybox) builds the become command; Ansible never pipelines through su."""
    run = run_playbook(play([
        {"name": "become nobody", "ansible.builtin.command": "id -u", "become": True, "become_method": "su",
         "become_user": "nobody", "become_flags": "-s /bin/sh"},
        {"name": "become nobody raw", "ansible.builtin.raw": "id -u; echo ~", "become": True,
         "become_method": "su", "become_user": "nobody", "become_flags": "-s /bin/sh"},
        {"name": "become root", "ansible.builtin.shell": "id -u; echo $HOME", "become": True, "become_method": "su",
         "become_flags": "-s /bin/sh"},
    ], hosts="targets"), inventory=fleet.inventory)
    for host in TARGETS:
        assert run.task("become nobody", host=host)["stdout"] == "65534"
        assert run.task("become nobody raw", host=host)["stdout"].split() == ["65534", "/nonexistent"]
        assert run.task("become root", host=host)["stdout"].splitlines()[0] == "0"


# ------------------------------------------------------------------------------- files


def test_put_fetch_big_binary_file_and_modes(fleet, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.write(os.urandom(50 * 1024 * 1024))
    os.chmod(big, 0o640)
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    for target in TARGETS:
        back = tmp_path / ("back-" + target)
        results = drive(fleet.vars(target), [
            ["put", str(big), "/root/big.bin"],
            ["exec", "sha256sum /root/big.bin; stat -c %a /root/big.bin"],
            ["fetch", "/root/big.bin", str(back)],
            ["exec", "rm /root/big.bin"],
        ])
        assert results[0] == {"ok": True} and results[2] == {"ok": True}, results
        sums = results[1]["stdout"].decode().split()
        assert sums[0] == digest and sums[-1] == "640", (target, sums)
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
        assert oct(back.stat().st_mode & 0o777) == "0o640"
        back.unlink()


def test_put_fetch_awkward_names(fleet, tmp_path):
    ops, sources = [], {}
    for index, name in enumerate(AWKWARD):
        source = tmp_path / ("src%d" % index)
        source.write_bytes(b"\x00%d\xff%s\n" % (index, name.encode()))
        os.chmod(source, 0o751 if index % 2 else 0o600)
        sources[name] = source
        ops += [["put", str(source), "/root/" + name], ["fetch", "/root/" + name, str(tmp_path / ("back%d" % index))]]
    ops.append(["exec", "ls -1 /root; stat -c '%a %n' /root/*"])
    for target in TARGETS:
        results = drive(fleet.vars(target), ops)
        assert all(r == {"ok": True} for r in results[:-1]), (target, results)
        listing = results[-1]["stdout"].decode()
        for index, name in enumerate(AWKWARD):
            back = tmp_path / ("back%d" % index)
            assert back.read_bytes() == sources[name].read_bytes(), (target, name)
            mode = "751" if index % 2 else "600"
            assert "%s /root/%s" % (mode, name) in listing, (target, name, listing)
            assert oct(back.stat().st_mode & 0o777)[2:] == mode
            back.unlink()
        # "$(touch pwned)" is a file name, never a command
        assert "pwned\n" not in listing.replace("$(touch pwned)\n", ""), listing
        drive(fleet.vars(target), [["exec", "rm -f /root/*"]])


def test_copy_and_fetch_modules(fleet, run_playbook, tmp_path):
    source = tmp_path / "payload"
    source.write_bytes(os.urandom(300 * 1024))
    run = run_playbook(play([
        {"name": "dir", "ansible.builtin.file": {"path": "/root/ünï dir", "state": "directory", "mode": "0755"}},
        {"name": "copy", "ansible.builtin.copy": {"src": str(source), "dest": "/root/ünï dir/it's here",
                                                  "mode": "0604"}},
        {"name": "copy again", "ansible.builtin.copy": {"src": str(source), "dest": "/root/ünï dir/it's here",
                                                        "mode": "0604"}},
        {"name": "fetch", "ansible.builtin.fetch": {"src": "/root/ünï dir/it's here",
                                                    "dest": str(tmp_path / "fetched") + "/{{ inventory_hostname }}",
                                                    "flat": True}},
        {"name": "stat", "ansible.builtin.stat": {"path": "/root/ünï dir/it's here", "checksum_algorithm": "sha1"}},
    ], hosts="targets"), inventory=fleet.inventory)
    want = hashlib.sha1(source.read_bytes()).hexdigest()
    for host in TARGETS:
        assert run.task("copy", host=host).changed and not run.task("copy again", host=host).changed
        stat = run.task("stat", host=host)["stat"]
        assert stat["checksum"] == want and stat["mode"] == "0604"
        assert (tmp_path / "fetched" / host).read_bytes() == source.read_bytes()


# ------------------------------------------------------------------------------ errors


def test_missing_and_stopped_ve_fail_clearly(fleet, run_playbook):
    for target in TARGETS:
        host = "localhost" if target == "ve-local" else fleet.vars(target)["ansible_vz_host"]
        missing, stopped = drive(fleet.vars(target, fleet.missing), [["exec", "true"]]), \
            drive(fleet.vars(target, fleet.stopped), [["exec", "true"]])
        assert missing[0]["error"] == "AnsibleConnectionFailure", missing
        assert missing[0]["msg"].startswith("VE %s on host %s does not exist" % (fleet.missing, host)), missing
        assert stopped[0]["error"] == "AnsibleConnectionFailure", stopped
        assert stopped[0]["msg"].startswith("VE %s on host %s is stopped" % (fleet.stopped, host)), stopped
    run = run_playbook(play([{"name": "ping", "ansible.builtin.ping": {}}], hosts="missing:stopped"),
                       inventory=fleet.inventory, expect_fail=True)
    for target in TARGETS:
        res = run.task("ping", host="missing-" + target)
        assert res.unreachable and "does not exist" in res.msg and fleet.missing in res.msg, res.msg
        res = run.task("ping", host="stopped-" + target)
        assert res.unreachable and "is stopped" in res.msg and fleet.stopped in res.msg, res.msg


def test_no_injection_through_names(fleet, tmp_path):
    marker = Path("/tmp/osvirt-pwned-%s" % fleet.prefix)
    for bad in ("x;touch %s" % marker, "$(touch %s)" % marker, "-n", "../" + fleet.running, fleet.running + " "):
        result = drive(fleet.vars("ve-local", bad), [["exec", "true"]])[0]
        assert result["error"] == "AnsibleConnectionFailure" and "invalid VE name" in result["msg"], result
    bad_root = dict(fleet.vars("ve-lab1"), ansible_vz_root="/var/lib/vz;touch %s" % marker)
    result = drive(bad_root, [["exec", "true"]])[0]
    assert result["error"] == "AnsibleConnectionFailure" and "vz_root" in result["msg"], result
    assert not marker.exists()
    # a command that needs no quoting help from us: it runs as written, inside the VE only
    out = drive(fleet.vars("ve-lab1"), [["exec", "echo $(echo inner) 'single' \"double\""]])[0]
    assert out["rc"] == 0 and out["stdout"] == b"inner single double\n"
    subprocess.run(["rm", "-f", str(marker)], check=False)
