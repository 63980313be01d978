# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The osvirt.vz.host role's network settings on lab1 (tests/lab/lab), over real SSH.

A bridge with a random name and subnet, IPv6, NAT through eth0, pools and routed pools, in a
vz_root under /var/tmp (not lab1's /var/lib/vz, whose host.json the lab owns). The role runs
twice (the second run and a check-mode run change nothing); then the bridge, its NAT chain and
the vz_root are removed and lab1's forwarding sysctls put back, whatever happens.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import tempfile
from pathlib import Path

from vzlib import play


def test_role_network_settings_on_lab1(lab, run_playbook):
    bridge = "vzr%s" % secrets.token_hex(3)
    octet = random.randrange(1, 250)
    vz_root = Path(tempfile.mkdtemp(prefix="vz-role-net-", dir="/var/tmp"))
    role_vars = {
        "host_vz_root": str(vz_root), "host_bridge": bridge,
        "host_bridge_ipv4": ["10.78.%d.1/24" % octet], "host_bridge_ipv6": ["fd00:78:%x::1/64" % octet],
        "host_bridge_nat": True, "host_bridge_uplink": "eth0",
        "host_bridge_pool4": "10.78.%d.0/25" % octet, "host_bridge_pool6": "fd00:78:%x::/64" % octet,
        "host_routed_pool4": "10.79.%d.0/24" % octet, "host_routed_pool6": "fd00:79:%x::/64" % octet,
        "host_install_packages": False, "host_autostart_service": False,
        # machine-wide kernel limits (and /etc is the machine's): test_host_role_sysctl.py covers them
        "host_sysctl": False,
    }
    role = play([{"name": "host role", "ansible.builtin.include_role": {"name": "osvirt.vz.host"}}], "lab1")
    sysctls = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
    before = {path: lab.exec("lab1", "cat", path).stdout.strip() for path in sysctls}
    try:
        first = run_playbook(role, inventory=lab.inventory, extra_vars=role_vars)
        assert first.stats["lab1"]["changed"] > 0, first.report()
        host_json = json.loads((vz_root / "host.json").read_text())
        assert host_json["bridge"] == bridge
        assert host_json["routed_pool4"] == "10.79.%d.0/24" % octet
        assert host_json["routed_pool6"] == "fd00:79:%x::/64" % octet
        settings = json.loads((vz_root / "net" / "bridges" / (bridge + ".json")).read_text())
        assert settings == {"name": bridge, "ipv4": ["10.78.%d.1/24" % octet],
                            "ipv6": ["fd00:78:%x::1/64" % octet], "pool4": "10.78.%d.0/25" % octet,
                            "pool6": "fd00:78:%x::/64" % octet, "nat": True, "uplink": "eth0"}
        chain = lab.exec("lab1", "nft", "list", "chain", "ip", "osvirt_vz_nat", "nat_" + bridge).stdout
        assert 'oifname "eth0" masquerade' in chain, chain
        assert [lab.exec("lab1", "cat", path).stdout.strip() for path in sysctls] == ["1", "1"]

        again = run_playbook(role, inventory=lab.inventory, extra_vars=role_vars)
        assert again.stats["lab1"]["changed"] == 0, again.report()
        check = run_playbook(role, inventory=lab.inventory, extra_vars=role_vars, check=True)
        assert check.stats["lab1"]["changed"] == 0, check.report()
    finally:
        run_playbook(play([{"name": "remove", "osvirt.vz.bridge": {
            "name": bridge, "state": "absent", "vz_root": str(vz_root)}}], "lab1"), inventory=lab.inventory)
        for path, value in before.items():
            if value in ("0", "1"):
                lab.exec("lab1", "sh", "-c", 'echo "$1" > "$2"', "-", value, path, check=False)
        shutil.rmtree(vz_root, ignore_errors=True)
    assert lab.exec("lab1", "ip", "link", "show", bridge, check=False).returncode != 0
