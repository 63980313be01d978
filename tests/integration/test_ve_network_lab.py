# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Routed VEs on a lab host (tests/lab/lab), where the host-wide settings they need can be
changed without touching this machine: lab1 is a network namespace with its own sysctls and no
default route.

- routed IPv4 on a host without a route to 169.254.0.1: refused before anything is made (the
  kernel would not answer the VE's ARP for its gateway);
- routed IPv6 while net.ipv6.conf.all.forwarding is 0: refused, naming the sysctl;
- with IPv6 forwarding on (set for this test in lab1's namespace and put back afterwards) a routed
  IPv6 VE starts with its /128 address and default route via fe80::1 and answers the host.
"""

from __future__ import annotations

import random
import secrets

from vzlib import play

LAB_HOST = "lab1"


def _exec(lab, *argv, check=False):
    return lab.exec(LAB_HOST, *argv, check=check)


def test_routed_on_a_lab_host(lab, run_playbook):
    template = "bbx-" + secrets.token_hex(3)
    prefix = "r" + secrets.token_hex(2)
    v4, v6 = prefix + "-v4", prefix + "-v6"
    address6 = "fd22:%x::5" % random.randint(0x100, 0xfff)
    forwarding = _exec(lab, "sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip()
    has_default = bool(_exec(lab, "ip", "route", "show", "default").stdout.strip())

    def ve(name, **iface):
        return {"name": "ve %s" % name, "ignore_errors": True,
                "osvirt.vz.ve": {"name": name, "template": template, "network": [dict(iface, mode="routed")]}}

    try:
        build = {"name": "template", "osvirt.vz.template": {"name": template, "source": {"type": "busybox"}}}
        run_playbook(play([build], LAB_HOST), inventory=lab.inventory)
        _exec(lab, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=0", check=True)
        run = run_playbook(play([ve(v4, ipv4=["10.22.9.5"]), ve(v6, ipv6=[address6])], LAB_HOST),
                           inventory=lab.inventory)
        if not has_default:
            res = run.task("ve %s" % v4)
            assert res.failed and "needs a route on the host to 169.254.0.1" in res.msg, res.msg
            assert _exec(lab, "test", "-e", "/var/lib/vz/ves/" + v4).returncode != 0
        res = run.task("ve %s" % v6)
        assert res.failed and "net.ipv6.conf.all.forwarding is 0" in res.msg, res.msg
        assert _exec(lab, "test", "-e", "/var/lib/vz/ves/" + v6).returncode != 0

        _exec(lab, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", check=True)
        run = run_playbook(play([ve(v6, ipv6=[address6])], LAB_HOST), inventory=lab.inventory)
        res = run.task("ve %s" % v6)
        assert not res.failed and res["ve"]["state"] == "running", res.msg
        inside = _exec(lab, "lxc-attach", "-P", "/var/lib/vz/ves", "-n", v6, "--", "ip", "-6", "route").stdout
        assert "default via fe80::1" in inside, inside
        assert "%s/128" % address6 in _exec(lab, "lxc-attach", "-P", "/var/lib/vz/ves", "-n", v6, "--",
                                            "ip", "-6", "addr").stdout
        answered = any(_exec(lab, "busybox", "ping", "-c1", "-W2", address6).returncode == 0 for _i in range(8))
        assert answered, "the routed IPv6 VE does not answer its host"
    finally:
        run_playbook(play([
            {"name": "cleanup ves", "ignore_errors": True,
             "osvirt.vz.ve": {"state": "absent", "ves": [{"name": v4}, {"name": v6}]}},
            {"name": "cleanup template", "ignore_errors": True,
             "osvirt.vz.template": {"name": template, "state": "absent"}},
        ], LAB_HOST), inventory=lab.inventory)
        _exec(lab, "rmdir", "/var/lib/vz/templates/" + template)
        _exec(lab, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=%s" % (forwarding or "0"))
