# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of osvirt.vz.bridge against the real kernel, inside a network namespace
of their own (the machine's own interfaces, nftables and sysctls are never touched).

Each step runs ``ip netns exec <ns> ansible-playbook`` with one bridge task, whose registered
result is written to a JSON file; the kernel's view is read back with ``ip -j``, ``nft -j`` and
/proc/sys in the same namespace (all three are per network namespace). The settings files go to
a vz_root under the test's tmp_path. Needs root, /usr/bin/python3 with pyroute2, nft and
ansible-playbook. NAT across two hosts is tested in test_bridge_nat_lab.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODULE_PYTHON = "/usr/bin/python3"
NETNS = "vztest-br-%d" % os.getpid()
# a random bridge name with "-" and "." (mapped into the NAT chain's name)
BR = "vzt-%04x.1" % random.randrange(0x10000)


def _ansible_playbook():
    """ansible-playbook of the venv running pytest, else the one on PATH."""
    local = Path(sys.executable).parent / "ansible-playbook"
    return str(local) if local.exists() else shutil.which("ansible-playbook")


def _env():
    env = dict(os.environ)
    # The harness (tests/conftest.py) points this at .build/collections; standalone runs use a
    # link /tmp/coll/ansible_collections/osvirt/vz -> repo when it exists.
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", "/tmp/coll")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_RETRY_FILES_ENABLED"] = "0"
    return env


def _module_python_has_pyroute2():
    return subprocess.run([MODULE_PYTHON, "-c", "import pyroute2"],
                          capture_output=True, check=False).returncode == 0


def _missing_preconditions():
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not _ansible_playbook():
        return "ansible-playbook not found"
    if not _module_python_has_pyroute2():
        return "%s lacks pyroute2 (apt-get install python3-pyroute2)" % MODULE_PYTHON
    return None


@pytest.fixture(scope="module")
def netns():
    """A network namespace of our own, deleted afterwards whatever happens."""
    reason = _missing_preconditions()
    if reason:
        # Under CI a missing precondition is a failure: CI must never go green by skipping.
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        yield NETNS
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def ns_ip(*args):
    """Run ``ip`` inside the test namespace and return its parsed JSON output."""
    out = subprocess.run(["ip", "netns", "exec", NETNS, "ip", "-j", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def kernel_bridge(name):
    """(exists, up, mtu, sorted IPv4 CIDRs, kind) of ``name`` as the kernel shows it."""
    links = [x for x in ns_ip("-d", "addr", "show") if x["ifname"] == name]
    if not links:
        return None
    link = links[0]
    ipv4 = sorted("%s/%d" % (a["local"], a["prefixlen"])
                  for a in link.get("addr_info", []) if a["family"] == "inet")
    ipv6 = sorted("%s/%d" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])
                  if a["family"] == "inet6" and a.get("scope") != "link")
    found = {
        "up": "UP" in link["flags"],
        "mtu": link["mtu"],
        "ipv4": ipv4,
        "kind": link.get("linkinfo", {}).get("info_kind"),
    }
    if ipv6:
        found["ipv6"] = ipv6
    return found


def ns_run(*argv):
    return subprocess.run(["ip", "netns", "exec", NETNS, *argv], capture_output=True, text=True,
                          check=False)


def nat_chains():
    """{chain: [rule texts without the digest counter]} of table ip osvirt_vz_nat in the netns."""
    proc = ns_run("nft", "list", "table", "ip", "osvirt_vz_nat")
    if proc.returncode != 0:
        return {}
    chains, chain = {}, None
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("chain "):
            chain = line.split()[1]
            chains[chain] = []
        elif chain and line and not line.startswith(("type ", "}", "counter ")):
            chains[chain].append(line)
    return chains


def sysctl(key):
    return ns_run("cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()


def run_bridge(tmp_path, args, check=False, diff=True, python=MODULE_PYTHON):
    """Run one osvirt.vz.bridge task in the namespace; return its registered result.

    ``vz_root`` defaults to ``<tmp_path>/vz``, so settings files never land in /var/lib/vz.
    """
    args = dict({"vz_root": str(tmp_path / "vz")}, **args)
    out = tmp_path / "result.json"
    playbook = tmp_path / "play.yml"
    play = [{
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [
            {"name": "bridge", "osvirt.vz.bridge": args, "register": "r", "check_mode": check,
             "diff": diff, "ignore_errors": True},
            {"name": "save", "ansible.builtin.copy": {"content": "{{ r | to_json }}",
                                                      "dest": str(out), "mode": "0600"},
             "check_mode": False, "diff": False},
        ],
    }]
    playbook.write_text(json.dumps(play))
    if out.exists():
        out.unlink()
    proc = subprocess.run(
        ["ip", "netns", "exec", NETNS, _ansible_playbook(), "-i", "localhost,", "-c", "local",
         "-e", "ansible_python_interpreter=%s" % python, str(playbook)],
        capture_output=True, text=True, env=_env(), check=False, cwd=str(tmp_path))
    assert out.exists(), "playbook did not run:\n%s\n%s" % (proc.stdout, proc.stderr)
    return json.loads(out.read_text())


def plain(name, ipv4, mtu, state="present"):
    """The ``bridge`` result of a bridge without NAT, pools or IPv6 in a fresh namespace."""
    return {"name": name, "state": state, "ipv4": ipv4, "ipv6": [], "mtu": mtu, "nat": False,
            "nat_rules": [], "uplink": None, "pool4": None, "pool6": None,
            "forwarding": {"ipv4": False, "ipv6": False}}


def settings_file(tmp_path, name=BR):
    return tmp_path / "vz" / "net" / "bridges" / (name + ".json")


def test_four_steps_then_change_then_absent(netns, tmp_path):
    args = {"name": BR, "ipv4": ["10.20.0.1/24", "10.20.1.1/24"]}
    path = settings_file(tmp_path)

    # 1. check mode: would create, creates nothing
    r = run_bridge(tmp_path, args, check=True)
    assert not r.get("failed"), r
    assert r["changed"] is True
    assert r["actions"] == ["create bridge %s" % BR, "bring %s up" % BR,
                            "add 10.20.0.1/24 to %s" % BR, "add 10.20.1.1/24 to %s" % BR,
                            "write %s" % path]
    assert r["bridge"] == plain(BR, ["10.20.0.1/24", "10.20.1.1/24"], 1500)
    assert r["diff"]["before"]["state"] == "absent"
    assert kernel_bridge(BR) is None
    assert not (tmp_path / "vz").exists()

    # 2. real run
    r = run_bridge(tmp_path, args)
    assert not r.get("failed"), r
    assert r["changed"] is True
    assert kernel_bridge(BR) == {"up": True, "mtu": 1500, "kind": "bridge",
                                 "ipv4": ["10.20.0.1/24", "10.20.1.1/24"]}
    assert r["bridge"] == plain(BR, ["10.20.0.1/24", "10.20.1.1/24"], 1500)
    assert json.loads(path.read_text()) == {
        "name": BR, "ipv4": ["10.20.0.1/24", "10.20.1.1/24"], "ipv6": [], "pool4": None,
        "pool6": None, "nat": False, "uplink": None}

    # 3. repeat: unchanged
    r = run_bridge(tmp_path, args)
    assert r["changed"] is False and r["actions"] == [], r

    # 4. repeat in check mode: unchanged
    r = run_bridge(tmp_path, args, check=True)
    assert r["changed"] is False and r["actions"] == [], r

    # change the address set and the mtu: the old addresses go
    new = {"name": BR, "ipv4": ["10.20.1.1/24", "10.30.0.1/16"], "mtu": 9000}
    r = run_bridge(tmp_path, new, check=True)
    assert r["changed"] is True
    assert kernel_bridge(BR)["ipv4"] == ["10.20.0.1/24", "10.20.1.1/24"]
    r = run_bridge(tmp_path, new)
    assert r["changed"] is True
    assert r["actions"] == ["set mtu of %s to 9000" % BR, "remove 10.20.0.1/24 from %s" % BR,
                            "add 10.30.0.1/16 to %s" % BR, "write %s" % path]
    assert r["diff"]["before"]["ipv4"] == ["10.20.0.1/24", "10.20.1.1/24"]
    assert r["diff"]["after"]["ipv4"] == ["10.20.1.1/24", "10.30.0.1/16"]
    assert kernel_bridge(BR) == {"up": True, "mtu": 9000, "kind": "bridge",
                                 "ipv4": ["10.20.1.1/24", "10.30.0.1/16"]}
    assert json.loads(path.read_text())["ipv4"] == ["10.20.1.1/24", "10.30.0.1/16"]
    assert run_bridge(tmp_path, new)["changed"] is False

    # drift made by hand (extra address, link down) is repaired
    subprocess.run(["ip", "netns", "exec", NETNS, "ip", "addr", "add", "10.99.0.1/24",
                    "dev", BR], check=True)
    subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", BR, "down"],
                   check=True)
    r = run_bridge(tmp_path, new)
    assert r["changed"] is True
    # the settings file already lists the wanted addresses: only the kernel is repaired
    assert r["actions"] == ["bring %s up" % BR, "remove 10.99.0.1/24 from %s" % BR]
    assert kernel_bridge(BR)["ipv4"] == ["10.20.1.1/24", "10.30.0.1/16"]
    assert kernel_bridge(BR)["up"] is True

    # ipv4 omitted: addresses are left alone
    r = run_bridge(tmp_path, {"name": BR})
    assert r["changed"] is False, r

    # absent: check mode, real, repeat
    gone = {"name": BR, "state": "absent"}
    r = run_bridge(tmp_path, gone, check=True)
    assert r["changed"] is True and kernel_bridge(BR) is not None and path.exists()
    r = run_bridge(tmp_path, gone)
    assert r["changed"] is True and r["actions"] == ["delete bridge %s" % BR, "remove %s" % path]
    assert r["bridge"] == plain(BR, [], None, state="absent")
    assert kernel_bridge(BR) is None and not path.exists()
    assert run_bridge(tmp_path, gone)["changed"] is False


def test_ipv6_nat_forwarding_pools_four_steps(netns, tmp_path):
    """Dual stack with NAT and pools: kernel, nft chain, sysctls and settings file agree with
    the result in all four steps; switching NAT off removes the chain; absent removes all."""
    chain = "nat_" + BR.replace("-", "_h").replace(".", "_d")
    path = settings_file(tmp_path)
    # an uplink that exists in the namespace
    assert ns_run("ip", "link", "add", "vzt-up0", "type", "veth", "peer", "name", "vzt-up1").returncode == 0
    args = {"name": BR, "ipv4": ["10.20.0.1/24"], "ipv6": ["fd00:20::1/64", "FD00:21::1/64"],
            "nat": True, "uplink": "vzt-up0", "pool4": "10.20.0.128/25", "pool6": "fd00:20::/64"}
    rule = 'ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname "vzt-up0" masquerade'
    want = {"name": BR, "state": "present", "ipv4": ["10.20.0.1/24"],
            "ipv6": ["fd00:20::1/64", "fd00:21::1/64"], "mtu": 1500, "nat": True,
            "nat_rules": [rule], "uplink": "vzt-up0", "pool4": "10.20.0.128/25",
            "pool6": "fd00:20::/64", "forwarding": {"ipv4": True, "ipv6": True}}

    r1 = run_bridge(tmp_path, args, check=True)
    assert r1["changed"] is True and r1["bridge"] == want, r1
    assert r1["diff"]["before"]["forwarding"] == {"ipv4": False, "ipv6": False}
    assert r1["actions"][-4:] == [
        "set net.ipv4.ip_forward to 1", "set net.ipv6.conf.all.forwarding to 1",
        "set NAT chain ip osvirt_vz_nat %s of %s: %s" % (chain, BR, rule), "write %s" % path]
    assert kernel_bridge(BR) is None and nat_chains() == {} and not path.exists()
    assert sysctl("net.ipv4.ip_forward") == "0"

    r2 = run_bridge(tmp_path, args)
    assert r2["changed"] is True and r2["bridge"] == want and r2["actions"] == r1["actions"], r2
    assert kernel_bridge(BR)["ipv6"] == ["fd00:20::1/64", "fd00:21::1/64"]
    assert nat_chains() == {chain: [rule]}
    assert sysctl("net.ipv4.ip_forward") == "1"
    assert sysctl("net.ipv6.conf.all.forwarding") == "1"
    assert json.loads(path.read_text()) == {
        "name": BR, "ipv4": ["10.20.0.1/24"], "ipv6": ["fd00:20::1/64", "fd00:21::1/64"],
        "pool4": "10.20.0.128/25", "pool6": "fd00:20::/64", "nat": True, "uplink": "vzt-up0"}

    for check in (False, True):
        r = run_bridge(tmp_path, args, check=check)
        assert r["changed"] is False and r["actions"] == [] and r["bridge"] == want, r

    # one IPv6 address less, NAT off: only IPv6 changes among the addresses, the chain goes,
    # forwarding stays on (never turned off)
    off = dict(args, ipv6=["fd00:20::1/64"], nat=False)
    del off["uplink"]
    r = run_bridge(tmp_path, off)
    assert r["actions"] == ["remove fd00:21::1/64 from %s" % BR,
                            "delete NAT chain ip osvirt_vz_nat %s of %s" % (chain, BR),
                            "write %s" % path], r
    assert r["diff"]["before"]["nat_rules"] == [rule] and r["diff"]["after"]["nat_rules"] == []
    assert kernel_bridge(BR)["ipv4"] == ["10.20.0.1/24"]
    assert nat_chains() == {} and sysctl("net.ipv4.ip_forward") == "1"
    assert run_bridge(tmp_path, off)["changed"] is False

    # back to NAT, then absent removes bridge, chain and settings file
    assert run_bridge(tmp_path, args)["changed"] is True
    r = run_bridge(tmp_path, {"name": BR, "state": "absent"})
    assert r["actions"] == ["delete bridge %s" % BR,
                            "delete NAT chain ip osvirt_vz_nat %s of %s" % (chain, BR),
                            "remove %s" % path], r
    assert kernel_bridge(BR) is None and nat_chains() == {} and not path.exists()
    ns_run("ip", "link", "del", "vzt-up0")


@pytest.mark.parametrize("args, message", [
    ({"name": "vzbr-name-too-long", "ipv4": ["10.20.0.1/24"]},
     "invalid bridge name 'vzbr-name-too-long': use 1-15 letters, digits"),
    ({"name": BR, "ipv4": ["10.20.0.1/24", "10.20.0.300/24"]},
     "ipv4 address '10.20.0.300/24' is not a valid IPv4 address"),
    ({"name": BR, "ipv4": ["10.20.0.1"]},
     "ipv4 address '10.20.0.1' must be an IPv4 address with a prefix length"),
    ({"name": BR, "mtu": 40}, "mtu 40 is out of range 68-65535"),
    ({"name": "lo", "state": "absent"},
     "interface lo exists but is not a bridge (link kind: none"),
    ({"name": "lo", "ipv4": ["10.20.0.1/24"]},
     "interface lo exists but is not a bridge"),
    ({"name": BR, "ipv6": ["fe80::1/64"]},
     "ipv6 address fe80::1/64 cannot be assigned to a bridge: it is a link-local address"),
    ({"name": BR, "ipv6": ["fd00::1/64", "fd00::1/64"]}, "is listed twice"),
    ({"name": BR, "ipv6": ["fd00::1"]}, "must be an IPv6 address with a prefix length"),
    ({"name": BR, "ipv4": ["10.20.0.1/24"], "pool4": "10.20.0.7/24"},
     "pool4 '10.20.0.7/24' is not an IPv4 network like 10.30.0.0/24: 10.20.0.7/24 has host bits set"),
    ({"name": BR, "ipv4": ["10.20.0.1/24"], "pool4": "10.21.0.0/24"},
     "pool4 10.21.0.0/24 is not inside a subnet of bridge %s: its IPv4 subnets are 10.20.0.0/24" % BR),
    ({"name": BR, "ipv4": ["10.20.0.1/24"], "pool6": "fd00:20::/64"},
     "pool6 fd00:20::/64 is not inside a subnet of bridge %s: it has no IPv6 address" % BR),
    ({"name": BR, "ipv4": ["10.20.0.1/24"], "nat": True, "uplink": "vzt-nothere"},
     "uplink vzt-nothere of bridge %s does not exist on this host" % BR),
    ({"name": BR, "ipv4": ["10.20.0.1/24"], "uplink": "lo"}, "uplink lo is given but nat is false"),
    ({"name": BR, "ipv4": [], "nat": True},
     "nat on bridge %s needs at least one IPv4 address on the bridge" % BR),
])
def test_bad_input_fails_clearly_and_changes_nothing(netns, tmp_path, args, message):
    before = (ns_ip("-d", "addr", "show"), ns_run("nft", "list", "ruleset").stdout,
              sysctl("net.ipv4.ip_forward"))
    r = run_bridge(tmp_path, args)
    assert r.get("failed") is True
    assert r["changed"] is False
    assert message in r["msg"], r["msg"]
    assert "\n" not in r["msg"]
    assert (ns_ip("-d", "addr", "show"), ns_run("nft", "list", "ruleset").stdout,
            sysctl("net.ipv4.ip_forward")) == before
    assert not (tmp_path / "vz").exists()


def test_missing_pyroute2_is_one_clear_error(netns, tmp_path):
    """The venv's python usually lacks pyroute2: the module must say what to install."""
    if subprocess.run([sys.executable, "-c", "import pyroute2"], capture_output=True,
                      check=False).returncode == 0:
        pytest.skip("%s has pyroute2" % sys.executable)
    r = run_bridge(tmp_path, {"name": BR}, python=sys.executable)
    assert r.get("failed") is True
    assert r["msg"].startswith("python3-pyroute2 is required on the host")
    assert kernel_bridge(BR) is None
