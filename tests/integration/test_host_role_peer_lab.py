# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The osvirt.vz.host role's peer SSH step on lab1 and lab2 (tests/lab/lab), over real SSH.

The lab inventory points the step at per-host files under the lab's directory (the lab hosts
share the machine's /root): the peer key, the authorized_keys file the host's sshd reads besides
the lab key, and the known_hosts file. After the step each host reaches the other with its peer
key, checking the other's host key; the key is refused from any other address; a second run and
a check-mode run change nothing. The files are removed at the end.
"""

from __future__ import annotations

from pathlib import Path

from vzlib import play, sh

LAB_DIR = Path("/var/lib/vzlab")
ADDRESSES = {"lab1": "198.18.0.11", "lab2": "198.18.0.12"}


def _ssh_argv(source, target, *cmd):
    key = LAB_DIR / source / "osvirt_vz_peer"
    known = LAB_DIR / source / "osvirt_vz_peer_known_hosts"
    return ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=%s" % known,
            "-o", "ConnectTimeout=5", "root@" + ADDRESSES[target]] + list(cmd)


def _peer_files():
    return [LAB_DIR / h / f for h in ADDRESSES
            for f in ("osvirt_vz_peer", "osvirt_vz_peer.pub", "osvirt_vz_peer_known_hosts", "authorized_keys")]


def test_peer_ssh_between_two_lab_hosts(lab, run_playbook):
    step = play([{"name": "peer ssh", "ansible.builtin.include_role": {
        "name": "osvirt.vz.host", "tasks_from": "peer_ssh"}}], "vz_hosts")
    for path in _peer_files():
        path.unlink(missing_ok=True)        # whatever an earlier run on a kept lab left
    try:
        first = run_playbook(step, inventory=lab.inventory)
        for host in ("lab1", "lab2"):
            assert first.stats[host]["changed"] > 0, first.report()
        for source, target in (("lab1", "lab2"), ("lab2", "lab1")):
            # from inside the source host, as a host-to-host copy runs
            out = lab.exec(source, *_ssh_argv(source, target, "hostname")).stdout.strip()
            assert out == target
            line = (LAB_DIR / target / "authorized_keys").read_text().strip()
            assert line.startswith('restrict,from="%s" ssh-ed25519 ' % ADDRESSES[source]), line
            assert line.endswith(" osvirt-vz-peer@" + source)
        # rsync over that key works (what template copy and migration do)
        out = lab.exec("lab1", "rsync", "-e", " ".join(_ssh_argv("lab1", "lab2")[:-1]), "--list-only",
                       "root@%s:/etc/hostname" % ADDRESSES["lab2"]).stdout
        assert "hostname" in out, out
        # the key is refused from an address that is not the peer's (here: the machine, 198.18.0.1)
        refused = sh(*_ssh_argv("lab1", "lab2", "true"), check=False)
        assert refused.returncode == 255, refused

        again = run_playbook(step, inventory=lab.inventory)
        check = run_playbook(step, inventory=lab.inventory, check=True)
        for host in ("lab1", "lab2"):
            assert again.stats[host]["changed"] == 0, again.report()
            assert check.stats[host]["changed"] == 0, check.report()
    finally:
        for path in _peer_files():
            path.unlink(missing_ok=True)
