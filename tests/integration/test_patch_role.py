# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Role osvirt.vz.patch through playbooks/patch.yml on the two lab hosts (real SSH, real LXC).

Six running busybox VEs, three per host, on a template of this test run built on lab1 and
copied to lab2. The "upgrade" is an app layer that adds /etc/patch-level; the health check
(kind command, inside each VE through the connection plugin) wants that file and no
/etc/patch-fail, which the test puts into one VE to make it fail.

- bad input (batches, health check kind, unknown template, an unreachable host with
  patch_unreachable=stop): one clear error each, nothing built, no VE changed; with skip, in
  check mode, the host is named and left out and the plan printed (canary, hosts interleaved);
- batches [1, 2, 3] (canary, then both hosts in every batch), patch_max_fail_percentage 50: the
  VE that fails in the batch of two is rolled back to its version, 1 of 2 = 50% does not exceed
  50, so the rollout goes on; the report says patched / rolled_back and lists the private file
  of another VE that hides the new file (hidden_files);
- the rerun (same patch id, the failing VE repaired) builds nothing and patches only that VE;
- a second patch with 49%: the same failure (50% > 49%) stops the rollout after that batch,
  the last batch stays on its version; the rerun continues and skips what is done;
- in-place mode on one VE: commands inside the VE, check, marker; its rerun skips it.
"""

from __future__ import annotations

import json
import os
import secrets
import time

import pytest

from vzlib import play

from template_helpers import REPO_ROOT

PLAYBOOK = str(REPO_ROOT / "playbooks" / "patch.yml")
KEY = "/var/lib/vzlab/id_ed25519"
HEALTH = {"kind": "command", "command": ["sh", "-c", "test -e /etc/patch-level && test ! -e /etc/patch-fail"],
          "retries": 1, "delay": 1}


def _ve_meta(lab, host, ve):
    out = lab.exec(host, "cat", "/var/lib/vz/ves/%s/ve.json" % ve).stdout
    return json.loads(out)


def _versions(lab, host, template):
    proc = lab.exec(host, "ls", "/var/lib/vz/templates/%s" % template, check=False)
    return sorted(v for v in proc.stdout.split() if v[:1].isdigit()) if proc.returncode == 0 else []


def _attach(lab, host, ve, *argv):
    return lab.exec(host, "lxc-attach", "-P", "/var/lib/vz/ves", "-n", ve, "--", *argv)


class Fleet:
    def __init__(self, lab, run_playbook, tmp_path):
        self.lab, self.run_playbook, self.tmp = lab, run_playbook, tmp_path
        self.template = "pbb-" + secrets.token_hex(3)
        prefix = "pt" + secrets.token_hex(2)
        self.ves = ["%s-%s" % (prefix, s) for s in ("a", "b", "c")]
        self.level = tmp_path / "patch-level"
        self.level.write_text("patched\n")

    def name(self, ve, host):
        return "%s.%s" % (ve, host)

    def template_of(self, host, ve):
        return _ve_meta(self.lab, host, ve)["template"]

    def patch(self, expect_fail=False, inventory=None, **extra):
        report = self.tmp / "report.json"
        if report.exists():
            report.unlink()
        started = time.monotonic()
        run = self.run_playbook(PLAYBOOK, inventory=inventory or self.lab.inventory, extra_vars=self.extra(**extra),
                                expect_fail=expect_fail)
        run.seconds = time.monotonic() - started
        run.report = json.loads(report.read_text()) if report.exists() else None
        return run

    def extra(self, **extra):
        extra_vars = {
            "patch_template": self.template, "patch_id": "p1", "patch_batches": [1, 2, 3],
            "patch_max_fail_percentage": 50, "patch_health": HEALTH,
            "patch_layer_commands": [], "patch_layer_files": [{"src": str(self.level), "dest": "/etc/patch-level"}],
            "patch_copy_ssh_key": KEY, "patch_copy_known_hosts": "/dev/null",
            "patch_copy_host_key_checking": "off", "patch_report_file": str(self.tmp / "report.json"),
        }
        extra_vars.update(extra)
        return extra_vars

    def setup(self):
        tasks = [
            {"name": "template", "osvirt.vz.template": {"name": self.template}, "when": "inventory_hostname == 'lab1'"},
            {"name": "copy", "osvirt.vz.template": {"name": self.template, "source": {
                "type": "copy", "host": "198.18.0.11", "ssh_key": KEY, "known_hosts": "/dev/null",
                "host_key_checking": "off"}}, "when": "inventory_hostname != 'lab1'"},
            {"name": "ves", "osvirt.vz.ve": {"template": self.template, "state": "started",
                                             "ves": [{"name": v} for v in self.ves]}},
        ]
        self.run_playbook(play(tasks, hosts="vz_hosts"), inventory=self.lab.inventory)
        return _versions(self.lab, "lab1", self.template)[0]

    def teardown(self):
        tasks = [
            {"name": "ves", "osvirt.vz.ve": {"state": "absent", "ves": [{"name": v} for v in self.ves]},
             "ignore_errors": True},
            {"name": "template", "osvirt.vz.template": {"name": self.template, "state": "absent"},
             "ignore_errors": True},
            {"name": "records", "ansible.builtin.file": {"path": "/var/lib/vz/patches/" + self.template,
                                                         "state": "absent"}},
        ]
        self.run_playbook(play(tasks, hosts="vz_hosts"), inventory=self.lab.inventory)


def _status(report):
    return {v["name"]: v["status"] for v in report["ves"] if v["name"].startswith("pt")}


def test_patch_role_on_two_lab_hosts(lab, run_playbook, tmp_path):
    fleet = Fleet(lab, run_playbook, tmp_path)
    a, b, c = fleet.ves
    try:
        v1 = fleet.setup()
        assert _versions(lab, "lab2", fleet.template) == [v1]

        # -- bad input: one clear error each, nothing changed ------------------------------------
        bad = [
            ({"patch_batches": [1, "ten"]}, "'ten' is not a batch size"),
            ({"patch_health": {"kind": "http"}}, "kind 'http' is not a health check: use one of systemd, tcp, command"),
            ({"patch_template": "nosuch-" + secrets.token_hex(2)}, "unknown template nosuch-"),
        ]
        for extra, message in bad:
            run = fleet.patch(expect_fail=True, **extra)
            assert message in run.stdout + run.stderr, (extra, run.report)
        inventory = tmp_path / "with-unreachable.ini"
        inventory.write_text(lab.inventory.read_text() + "\n[vz_hosts]\nlab9 ansible_host=198.18.0.11 ansible_port=1\n")
        run = fleet.patch(expect_fail=True, inventory=inventory)
        assert "host(s) lab9 cannot be reached: the rollout stops before changing anything" in run.stdout
        assert _versions(lab, "lab1", fleet.template) == [v1] and _versions(lab, "lab2", fleet.template) == [v1]
        # skip: the host is named and left out; check mode prints the plan and changes nothing
        run = fleet.run_playbook(PLAYBOOK, inventory=inventory, check=True, extra_vars=dict(
            fleet.extra(), patch_unreachable="skip"))
        assert "host(s) lab9 cannot be reached and are left out" in run.stdout
        assert "VEs to patch, in order: %s.lab1, %s.lab2, %s.lab1" % (fleet.ves[0], fleet.ves[0], fleet.ves[1]) in run.stdout
        assert "batches: [1, 2, 3]" in run.stdout
        assert _versions(lab, "lab1", fleet.template) == [v1] and _versions(lab, "lab2", fleet.template) == [v1]
        assert all(fleet.template_of(h, v).endswith(v1) for h in ("lab1", "lab2") for v in fleet.ves)

        # -- rollout: canary, batches of 2 and 3, one VE rolled back at exactly 50% ----------------
        _attach(lab, "lab2", a, "touch", "/etc/patch-fail")                  # batch 2 fails
        _attach(lab, "lab1", b, "sh", "-c", "echo mine > /etc/patch-level")  # hides the new file
        run = fleet.patch(expect_fail=True)                                  # a failed VE: rc 2
        v2 = _versions(lab, "lab1", fleet.template)[-1]
        assert v2 > v1 and _versions(lab, "lab2", fleet.template) == [v1, v2]
        status = _status(run.report)
        assert status == {fleet.name(a, "lab1"): "patched", fleet.name(a, "lab2"): "rolled_back",
                          fleet.name(b, "lab1"): "patched", fleet.name(b, "lab2"): "patched",
                          fleet.name(c, "lab1"): "patched", fleet.name(c, "lab2"): "patched"}, run.report["lines"]
        hidden = run.report["hidden_files"][fleet.name(b, "lab1")]
        assert [h["path"] for h in hidden] == ["/etc/patch-level"] and hidden[0]["change"] == "added"
        assert fleet.template_of("lab2", a) == "%s@%s" % (fleet.template, v1)
        assert all(fleet.template_of(h, v) == "%s@%s" % (fleet.template, v2)
                   for h, v in [("lab1", a), ("lab1", b), ("lab2", b), ("lab1", c), ("lab2", c)])
        rolled = [r for r in run.results if r.failed and "Fail the VE" in r.name]
        assert [r.host for r in rolled] == [fleet.name(a, "lab2")]
        print("\nrollout of 6 VEs on 2 lab hosts, batches 1/2/3: %.1f s" % run.seconds)
        (tmp_path / "figures.txt").write_text("rollout %.1f\n" % run.seconds)

        # -- rerun with the VE repaired: nothing built, only that VE patched ----------------------
        _attach(lab, "lab2", a, "rm", "-f", "/etc/patch-fail")
        run = fleet.patch()
        assert _versions(lab, "lab1", fleet.template) == [v1, v2]
        status = _status(run.report)
        assert status[fleet.name(a, "lab2")] == "patched"
        assert sorted(s for n, s in status.items() if n != fleet.name(a, "lab2")) == ["skipped"] * 5
        print("rerun (1 VE to patch): %.1f s" % run.seconds)

        # -- a second patch stops at 49%: 1 failure in the batch of 2 exceeds it -------------------
        _attach(lab, "lab2", a, "touch", "/etc/patch-fail")
        run = fleet.patch(expect_fail=True, patch_id="p2", patch_max_fail_percentage=49)
        v3 = _versions(lab, "lab1", fleet.template)[-1]
        assert v3 > v2
        assert run.report is None   # Ansible ends the playbook when a rollout play stops
        on = {(h, v): fleet.template_of(h, v).split("@")[1] for h in ("lab1", "lab2") for v in fleet.ves}
        assert on == {("lab1", a): v3, ("lab2", a): v2, ("lab1", b): v3,
                      ("lab2", b): v2, ("lab1", c): v2, ("lab2", c): v2}, on
        assert not any(r.host.startswith(c) for r in run.results if "Rebase the VE" in r.name)

        # -- the rerun continues: done VEs skipped, the rest patched --------------------------------
        _attach(lab, "lab2", a, "rm", "-f", "/etc/patch-fail")
        run = fleet.patch(patch_id="p2", patch_max_fail_percentage=49)
        status = _status(run.report)
        assert status[fleet.name(a, "lab1")] == status[fleet.name(b, "lab1")] == "skipped"
        rest = [(a, "lab2"), (b, "lab2"), (c, "lab1"), (c, "lab2")]
        assert all(status[fleet.name(v, h)] == "patched" for v, h in rest), status
        assert _versions(lab, "lab1", fleet.template) == [v1, v2, v3]

        # -- in place, one VE: commands inside it, check, marker; the rerun skips it ----------------
        inplace = {"patch_mode": "in_place", "patch_id": "ip1", "patch_only_ves": [fleet.name(c, "lab1")],
                   "patch_in_place_commands": [["sh", "-c", "echo in-place > /etc/in-place"]],
                   "patch_health": {"kind": "command", "command": ["test", "-e", "/etc/in-place"]}}
        run = fleet.patch(**inplace)
        assert _status(run.report)[fleet.name(c, "lab1")] == "patched"
        assert _attach(lab, "lab1", c, "cat", "/etc/in-place").stdout.strip() == "in-place"
        run = fleet.patch(**inplace)
        assert _status(run.report)[fleet.name(c, "lab1")] == "skipped"
    finally:
        fleet.teardown()


def test_patch_role_timing(lab, run_playbook, tmp_path):
    """Figures for docs/role-patch.md: VZ_PATCH_BENCH=<VEs per host> (skipped without it).

    The VEs of both hosts are patched with batches [1, 10%, 50%, 100%] and the command check;
    prints the wall time of the rollout playbook and of its rerun (nothing left to do).
    """
    per_host = int(os.environ.get("VZ_PATCH_BENCH") or 0)
    if not per_host:
        pytest.skip("figures only: set VZ_PATCH_BENCH=<VEs per host>")
    fleet = Fleet(lab, run_playbook, tmp_path)
    fleet.ves = ["%s-%02d" % (fleet.ves[0][:-2], i) for i in range(per_host)]
    try:
        fleet.setup()
        run = fleet.patch(patch_batches=[1, "10%", "50%", "100%"], patch_max_fail_percentage=0)
        assert run.report["summary"]["patched"] == 2 * per_host, run.report["lines"]
        again = fleet.patch(patch_batches=[1, "10%", "50%", "100%"], patch_max_fail_percentage=0)
        assert again.report["summary"]["patched"] == 0
        print("\n%d VEs on 2 lab hosts, batches [1, 10%%, 50%%, 100%%]: rollout %.1f s, rerun %.1f s"
              % (2 * per_host, run.seconds, again.seconds))
    finally:
        fleet.teardown()


def _losing_a_host(host):
    """playbooks/patch.yml's three plays with one more before the rollout that makes ``host``
    unreachable (SSH port 1): a host lost between the listing and the rollout."""
    return [
        {"name": "prepare", "hosts": "vz_hosts", "gather_facts": False, "roles": [{"role": "osvirt.vz.patch"}]},
        {"name": "lose a host", "hosts": "localhost", "gather_facts": False,
         "tasks": [{"name": "lose it", "ansible.builtin.add_host": {"name": host, "ansible_port": 1}}]},
        {"name": "rollout", "hosts": "patch_ves", "gather_facts": False, "serial": "{{ patch_batches }}",
         "max_fail_percentage": "{{ patch_max_fail_percentage }}",
         "tasks": [{"name": "rollout", "ansible.builtin.include_role": {"name": "osvirt.vz.patch",
                                                                        "tasks_from": "rollout"}}]},
        {"name": "report", "hosts": "vz_hosts", "gather_facts": False,
         "tasks": [{"name": "report", "ansible.builtin.include_role": {"name": "osvirt.vz.patch",
                                                                       "tasks_from": "report"}}]},
    ]


def test_patch_role_host_lost_mid_rollout(lab, run_playbook, tmp_path):
    """lab2 lost after the listing: skip reports its VEs skipped and patches lab1's; stop ends the
    rollout at lab2's first VE, before the rest of that batch is touched."""
    fleet = Fleet(lab, run_playbook, tmp_path)
    a, b, c = fleet.ves
    try:
        v1 = fleet.setup()
        report = tmp_path / "report.json"
        run_playbook(_losing_a_host("lab2"), inventory=lab.inventory,
                     extra_vars=fleet.extra(patch_unreachable="skip", patch_max_fail_percentage=0))
        status = _status(json.loads(report.read_text()))
        assert status == {fleet.name(v, "lab1"): "patched" for v in fleet.ves} | {
            fleet.name(v, "lab2"): "skipped" for v in fleet.ves}, status
        assert all(fleet.template_of("lab2", v).endswith(v1) for v in fleet.ves)
        v2 = fleet.template_of("lab1", a).split("@")[1]
        assert v2 > v1

        report.unlink()
        run = run_playbook(_losing_a_host("lab2"), inventory=lab.inventory, expect_fail=True,
                           extra_vars=fleet.extra(patch_id="p2", patch_max_fail_percentage=100))
        assert "host lab2 of VE %s cannot be reached: the rollout stops here" % a in run.stdout
        assert not report.exists()
        v3 = _versions(lab, "lab1", fleet.template)[-1]
        assert fleet.template_of("lab1", a).endswith(v3)            # the canary
        assert fleet.template_of("lab1", b).endswith(v2)            # same batch as a.lab2: untouched
        assert fleet.template_of("lab1", c).endswith(v2)
    finally:
        fleet.teardown()
