# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""osvirt.vz.ve_migrate between the two lab hosts over real SSH (tests/lab/lab).

The module runs on the source (lab1 or lab2) and reaches the target with the lab's key; the
target is given as an inventory hostname (the action plugin resolves it). Covers: check mode
(plan, nothing changes), warm migration of a running busybox VE with a writer inside it
(every line written before the freeze is on the target, none missing), same addresses and
MAC, limits in the target's cgroups, leases moved, the source gone; idempotence; ping-pong
back offline with keep_source; preflight refusals that change nothing on either host.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import lanclient
from vzlib import play

GATEWAY = "10.20.0.1"
VZ = "/var/lib/vz"


def remove_from_lab(run_playbook, lab, name, template):
    """Remove VE ``name`` and template ``template`` from every lab host, with what a move leaves."""
    run_playbook(play([
        {"name": "rm ve", "ignore_errors": True, "osvirt.vz.ve": {"name": name, "state": "absent"}},
        {"name": "rm tpl", "ignore_errors": True, "osvirt.vz.template": {"name": template, "state": "absent"}},
    ], "vz_hosts"), inventory=lab.inventory)
    for host in lab.hosts:
        lab.exec(host, "rm", "-rf", "%s/ves/%s.migrated" % (VZ, name), "%s/templates/%s" % (VZ, template),
                 "%s/migrations/%s.json" % (VZ, name), "%s/migrations/%s.incoming" % (VZ, name), check=False)
    drop_reservations(lab, name)


def drop_reservations(lab, name):
    """Remove what hosts that VE ``name`` left keep of its addresses (net/moved/<address>), as an
    operator does once the VE is gone for good."""
    for host in lab.hosts:
        lab.exec(host, "sh", "-c", 'cd %s/net/moved 2>/dev/null || exit 0; for f in *; do grep -qs \'"ve": "%s"\' '
                 '"$f" && rm -f -- "$f"; done; exit 0' % (VZ, name), check=False)


def reservation(lab, host, address):
    """The reservation ``host`` keeps of ``address`` for a VE that moved away, or None."""
    proc = lab.exec(host, "cat", "%s/net/moved/%s" % (VZ, address), check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def _state(lab, host, name):
    proc = lab.exec(host, "lxc-info", "-P", VZ + "/ves", "-n", name, "-sH", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"


def _attach(lab, host, name, *argv, check=True):
    return lab.exec(host, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--", *argv, check=check)


def _private_sums(lab, host, name, suffix=""):
    """sha256 of every regular file in the VE's private upper layer (path -> digest)."""
    out = lab.exec(host, "sh", "-c", "cd %s/ves/%s%s/private/upper && find . -type f -print0 | sort -z | "
                   "xargs -0 -r sha256sum" % (VZ, name, suffix)).stdout
    return dict(reversed(line.split(None, 1)) for line in out.splitlines())


def _exists(lab, host, path):
    return lab.exec(host, "test", "-e", path, check=False).returncode == 0


def _lease_owner(lab, host, address):
    proc = lab.exec(host, "cat", "%s/net/leases/%s" % (VZ, address), check=False)
    return json.loads(proc.stdout).get("ve") if proc.returncode == 0 and proc.stdout.strip() else None


def _target(host):
    """An inventory hostname, with the lab's throw-away host keys (each lab run makes new ones)."""
    return {"host": host, "host_key_checking": "off", "known_hosts": "/dev/null"}


def _migrate(run_playbook, lab, source, name, target, expect_fail=False, check=False, **options):
    task = {"name": "migrate", "osvirt.vz.ve_migrate": dict({"name": name, "target": _target(target)}, **options)}
    if check:
        task["check_mode"] = True
    run = run_playbook(play([task], source), inventory=lab.inventory, expect_fail=expect_fail)
    return run.task("migrate", host=source)


def test_warm_then_offline_back(lab, run_playbook):
    lab1, lab2 = lab.hosts[:2]
    template = "mig-" + secrets.token_hex(3)
    name = "m" + secrets.token_hex(3)
    address = "10.20.0.%d" % (150 + secrets.randbelow(40))
    try:
        run = run_playbook(play([
            {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}},
            {"name": "ve", "osvirt.vz.ve": {
                "name": name, "template": template, "state": "started",
                "limits": {"memory": {"ram": "96M"}, "numproc": 200},
                "network": [{"ipv4": [address + "/24"], "gateway4": GATEWAY}]}},
        ], lab1), inventory=lab.inventory)
        hwaddr = run_playbook(play([{"name": "info", "osvirt.vz.ve_info": {"name": [name]}}], lab1),
                              inventory=lab.inventory).task("info", host=lab1)["ves"][0]["network"][0]["hwaddr"]
        _attach(lab, lab1, name, "sh", "-c", "mkdir -p /data && head -c 3000000 /dev/urandom > /data/blob && "
                "echo hello > /data/note")
        # a writer inside the VE: one numbered line every 20 ms until the VE is frozen
        _attach(lab, lab1, name, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i >> /data/seq; "
                "usleep 20000; done > /dev/null 2>&1 &")
        time.sleep(0.3)
        before = int(_attach(lab, lab1, name, "sh", "-c", "wc -l < /data/seq").stdout)

        # check mode: the plan, nothing changes on either host
        result = _migrate(run_playbook, lab, lab1, name, lab2, check=True)
        assert result.changed and result["mode"] == "warm", result.result
        assert result["plan"][:4] == ["template", "precopy", "freeze", "final_sync"], result["plan"]
        assert _state(lab, lab1, name) == "RUNNING" and _state(lab, lab2, name) == "ABSENT"
        assert not _exists(lab, lab2, "%s/templates/%s" % (VZ, template))
        assert not _exists(lab, lab1, "%s/migrations/%s.json" % (VZ, name))

        # warm: the VE moves with its files, addresses, limits; the source is gone. A client on the
        # machine's side of the lab LAN pings it all along (what is lost is reported, not judged)
        with lanclient.Pinger(address, duration=120) as ping:
            result = _migrate(run_playbook, lab, lab1, name, lab2)
            time.sleep(1)
        print("warm migration, pings from the LAN: %s; stages %s" % (ping.result(), result["stages"]))
        assert ping.result()["received"] > 0 and ping.result()["error"] is None, ping.result()
        assert result.changed and result["mode"] == "warm", result.result
        assert result["where"] == "target"
        assert [r["round"] for r in result["rounds"]][-1] == "final"
        assert result["downtime"] is not None and result["bytes_moved"] > 3000000, result.result
        for stage in ("preflight", "template", "precopy", "freeze", "final_sync", "stop", "register", "start",
                      "commit"):
            assert stage in result["stages"], (stage, result["stages"])
        assert _state(lab, lab1, name) == "ABSENT" and _state(lab, lab2, name) == "RUNNING"
        assert not _exists(lab, lab1, "%s/ves/%s" % (VZ, name))
        assert _attach(lab, lab2, name, "cat", "/data/note").stdout == "hello\n"
        seq = _attach(lab, lab2, name, "cat", "/data/seq").stdout.split()
        # written while the VE ran during the pre-copy, up to the freeze, no line missing
        assert len(seq) > before and seq == [str(i) for i in range(1, len(seq) + 1)], (before, seq[-3:])
        info = run_playbook(play([{"name": "info", "osvirt.vz.ve_info": {"name": [name]}}], lab2),
                            inventory=lab.inventory).task("info", host=lab2)
        moved = info["ves"][0]
        assert moved["ips"] == [address] and moved["cgroup_parent"] == "vzlab-" + lab2
        assert moved["network"][0]["hwaddr"] == hwaddr
        limit = Path("/sys/fs/cgroup/memory/vzlab-%s/%s/memory.limit_in_bytes" % (lab2, name))
        assert limit.read_text().strip() == str(96 << 20)
        assert _lease_owner(lab, lab2, address) == name and _lease_owner(lab, lab1, address) is None
        # lab1 keeps the address from its pool and its other VEs: the VE uses it on the shared segment
        kept = reservation(lab, lab1, address)
        assert kept and kept["ve"] == name and kept["moved_to"] == lab2, kept
        left = run_playbook(play([{"name": "info", "osvirt.vz.ve_info": {}}], lab1), inventory=lab.inventory)
        assert left.task("info", host=lab1)["host"]["moved_addresses"][address]["ve"] == name
        other = run_playbook(play([{"name": "other", "osvirt.vz.ve": {
            "name": name + "x", "template": template, "state": "stopped",
            "network": [{"ipv4": [address + "/24"]}]}}], lab1), inventory=lab.inventory, expect_fail=True)
        assert "is reserved for VE %s, which moved from this host to %s" % (name, lab2) in \
            other.task("other", host=lab1).msg, other.task("other", host=lab1).msg
        assert _state(lab, lab1, name + "x") == "ABSENT"
        assert lab.exec(lab2, "busybox", "ping", "-c1", "-W2", address, check=False).returncode == 0
        # the target announced the VE: the LAN's bridge sends its MAC to lab2's port now
        assert result["announced"], result.result
        assert lanclient.fdb_port(hwaddr) == lab2
        # the anti-spoofing guard of the VE's link is set on the target
        guard = lab.exec(lab2, "nft", "list", "chain", "netdev", "osvirt_vz_guard",
                         "ve_" + moved["network"][0]["host_link"], check=False)
        assert guard.returncode == 0 and address in guard.stdout, guard.stderr
        assert not _exists(lab, lab1, "%s/migrations/%s.json" % (VZ, name))
        assert not _exists(lab, lab2, "%s/migrations/%s.json" % (VZ, name))

        # idempotent: already there
        again = _migrate(run_playbook, lab, lab1, name, lab2)
        assert not again.changed and again["where"] == "target", again.result

        # and back, offline, keeping lab2's copy fenced as <name>.migrated
        run_playbook(play([{"name": "stop", "osvirt.vz.ve": {"name": name, "state": "stopped"}}], lab2),
                     inventory=lab.inventory)
        sums = _private_sums(lab, lab2, name)
        result = _migrate(run_playbook, lab, lab2, name, lab1, keep_source=True)
        assert result.changed and result["mode"] == "offline" and result["downtime"] is None, result.result
        assert _state(lab, lab1, name) == "STOPPED" and _state(lab, lab2, name) == "ABSENT"
        assert _private_sums(lab, lab1, name) == sums
        assert _exists(lab, lab2, "%s/ves/%s.migrated/config.migrated" % (VZ, name))
        # back home: lab1's reservation is void, lab2 keeps one now
        assert reservation(lab, lab1, address) is None
        assert reservation(lab, lab2, address)["moved_to"] == lab1
        assert not _exists(lab, lab2, "%s/ves/%s.migrated/config" % (VZ, name))

        # ping-pong: one more round trip, the private files unchanged every time
        for source, target in ((lab1, lab2), (lab2, lab1)):
            result = _migrate(run_playbook, lab, source, name, target)
            assert result.changed and _state(lab, target, name) == "STOPPED", result.result
            assert _private_sums(lab, target, name) == sums
        assert _state(lab, lab2, name) == "ABSENT"
    finally:
        remove_from_lab(run_playbook, lab, name, template)
