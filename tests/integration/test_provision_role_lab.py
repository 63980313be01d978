"""The provision role on the two lab hosts (playbooks/provision.yml with an inventory directory).

Covers: check mode prints the placement and the plan and changes nothing; bad input (a VE pinned
on two hosts, a VE that fits nowhere, an anti-affinity group larger than the hosts) fails the
play with one message before anything changes; a real run with ``pack`` (busybox built once on
one host, copied to the other, the pinned VE on lab2), a second run with changed=0 and the same
placement; prune removes only the role owner's VEs that the inventory no longer lists. Names are
random; every VE made is removed, and the busybox versions this test added.
"""

from __future__ import annotations

import json
import secrets
import shutil

import pytest
import yaml

from template_helpers import REPO_ROOT

PLAYBOOK = REPO_ROOT / "playbooks" / "provision.yml"
KEY = "/var/lib/vzlab/id_ed25519"
ROLE = "osvirt.vz.provision : "
STOP_TASK = ROLE + "Stop the play with the reason alone"
PLACE_TASK = ROLE + "Place them (capacity, strategy, anti-affinity; existing VEs stay)"

pytestmark = pytest.mark.lab


def _ves_on(lab, host):
    out = lab.exec(host, "lxc-ls", "-P", "/var/lib/vz/ves", "-1", check=False).stdout
    return sorted(out.split())


def _meta(lab, host, ve):
    return json.loads(lab.exec(host, "cat", "/var/lib/vz/ves/%s/ve.json" % ve).stdout)


def _busybox_versions(lab, host):
    out = lab.exec(host, "ls", "/var/lib/vz/templates/busybox", check=False).stdout
    return sorted(out.split())


class Inventory:
    """The lab's inventory as a directory with group_vars and host_vars, as a fleet would have."""

    def __init__(self, lab, tmp_path):
        self.dir = tmp_path / "inventory"
        self.dir.mkdir()
        shutil.copy(str(lab.inventory), str(self.dir / "lab.ini"))
        (self.dir / "group_vars").mkdir()
        (self.dir / "host_vars").mkdir()

    def write(self, fleet, pinned=None, **group):
        group_vars = dict(group, provision_fleet_ves=fleet, provision_copy_ssh_key=KEY,
                          provision_copy_known_hosts="/dev/null", provision_copy_host_key_checking="off")
        (self.dir / "group_vars" / "vz_hosts.yml").write_text(yaml.safe_dump(group_vars))
        for host in ("lab1", "lab2"):
            items = (pinned or {}).get(host, [])
            (self.dir / "host_vars" / ("%s.yml" % host)).write_text(yaml.safe_dump({"provision_ves": items}))
        return self.dir


def _ve(name, **extra):
    return dict({"name": name, "template": "busybox", "state": "stopped",
                 "limits": {"memory": {"ram": "64M", "guarantee": "16M"}}}, **extra)


def test_provision_role_on_the_lab(lab, run_playbook, tmp_path):
    tag = secrets.token_hex(2)
    names = ["pv%s-%s" % (tag, n) for n in ("a", "b", "c")]
    pin, pin1, foreign = "pv%s-pin" % tag, "pv%s-pin1" % tag, "pv%s-ci" % tag
    inventory = Inventory(lab, tmp_path)
    versions_before = {host: _busybox_versions(lab, host) for host in lab.hosts}
    before = {host: _ves_on(lab, host) for host in lab.hosts}
    try:
        fleet = [_ve(n) for n in names]
        pinned = {"lab1": [_ve(pin1)], "lab2": [_ve(pin)]}

        # bad input: one message each, nothing changed
        for bad_fleet, bad_pinned, message in (
                (fleet, {"lab1": [_ve(pin)], "lab2": [_ve(pin)]},
                 "provision: VE %s is listed on two hosts: lab1 and lab2; a VE lives on one host" % pin),
                ([_ve(names[0], limits={"memory": {"ram": "100T", "guarantee": "100T"}})], {},
                 "provision: VE %s fits on no host: memory.guarantee 100T is more than the most any host has free"
                 % names[0]),
                ([_ve(n, anti_affinity="g") for n in names], {},
                 "provision: anti-affinity group g has 3 VEs (%s) but only 2 host(s) can take them (lab1, lab2)"
                 % ", ".join(names))):
            run = run_playbook(PLAYBOOK, inventory=inventory.write(bad_fleet, bad_pinned), expect_fail=True)
            assert run.task(STOP_TASK, host="lab1").msg.startswith(message), run.report()
            assert not [r for r in run.results if r.changed], run.report()
        assert {host: _ves_on(lab, host) for host in lab.hosts} == before

        # check mode: the placement and the plan, no change
        inventory.write(fleet, pinned, provision_strategy="pack")
        run = run_playbook(PLAYBOOK, inventory=inventory.dir, check=True)
        plan = run.task(ROLE + "Show the placement and the plan", host="lab1")["msg"]
        assert plan[0] == "placement of 5 VE(s) on 2 host(s), strategy pack: 5 new, 0 kept", plan
        assert {host: _ves_on(lab, host) for host in lab.hosts} == before
        assert {host: _busybox_versions(lab, host) for host in lab.hosts} == versions_before

        # the real run: pack puts the fleet VEs on one host, the pinned VEs on theirs; busybox built on lab1
        # and copied to lab2: the same version on both
        first = run_playbook(PLAYBOOK, inventory=inventory.dir)
        placement = first.task(PLACE_TASK, host="lab1")["ansible_facts"]["provision_placement"]["placement"]
        assert placement[pin] == "lab2" and placement[pin1] == "lab1"
        assert len({placement[n] for n in names}) == 1, placement
        for host in lab.hosts:
            mine = sorted(ve for ve, where in placement.items() if where == host)
            assert sorted(set(_ves_on(lab, host)) - set(before[host])) == mine
            for ve in mine:
                assert _meta(lab, host, ve)["owner"] == "provision"
        assert _busybox_versions(lab, "lab1")[-1] == _busybox_versions(lab, "lab2")[-1]

        # second run: nothing changes, same placement
        again = run_playbook(PLAYBOOK, inventory=inventory.dir)
        assert not [r.name for r in again.results if r.changed], again.report()
        assert again.task(PLACE_TASK, host="lab1")["ansible_facts"]["provision_placement"]["placement"] == placement

        # prune: a VE of another owner stays, the owner's VE no longer listed goes
        home = placement[names[0]]
        run_playbook([{"hosts": home, "gather_facts": False, "tasks": [
            {"osvirt.vz.ve": {"name": foreign, "template": "busybox", "state": "stopped", "owner": "ci"}}]}],
            inventory=inventory.dir)
        inventory.write(fleet[1:], pinned, provision_strategy="pack", provision_prune=True)
        pruned = run_playbook(PLAYBOOK, inventory=inventory.dir)
        assert pruned.task(ROLE + "Remove the VEs of the owner that the inventory no longer lists", host=home).changed
        left = _ves_on(lab, home)
        assert names[0] not in left and foreign in left and names[1] in left
    finally:
        for host in lab.hosts:
            made = sorted(set(_ves_on(lab, host)) - set(before[host]))
            if made:
                run_playbook([{"hosts": host, "gather_facts": False, "tasks": [
                    {"osvirt.vz.ve": {"ves": [{"name": ve} for ve in made], "state": "absent"}}]}],
                    inventory=lab.inventory)
            for version in sorted(set(_busybox_versions(lab, host)) - set(versions_before[host])):
                run_playbook([{"hosts": host, "gather_facts": False, "tasks": [
                    {"osvirt.vz.template": {"name": "busybox", "version": version, "state": "absent"}}]}],
                    inventory=lab.inventory)
