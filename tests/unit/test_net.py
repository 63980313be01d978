# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for plugins/module_utils/_net.py: validation, planning, address diffing.

No root and no netlink: ``ensure_bridge`` runs against ``FakeNetlink``.
"""

from __future__ import annotations

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._net import (
    BridgeSpec,
    Change,
    HostState,
    LinkState,
    NAT_HEADER,
    NetError,
    VzError,
    check_pool_inside,
    describe_host,
    describe_link,
    diff_addresses,
    ensure_bridge,
    nat_chain_name,
    nat_rules,
    normalize_ipv4,
    normalize_ipv6,
    plan_bridge,
    plan_host,
    predict_host,
    predict_link,
    sort_addresses,
    validate_mtu,
    validate_pool,
)
from ansible_collections.osvirt.vz.plugins.module_utils._nft import digest


# --- bridge names (rules of _validate.ifname) ---------------------------------------------------

def spec_named(name):
    return BridgeSpec.from_params({"name": name})


@pytest.mark.parametrize("name", ["vzbr0", "a", "br-1.2_x", "x" * 15, "..a", "a.."])
def test_bridge_name_ok(name):
    assert spec_named(name).name == name


@pytest.mark.parametrize("name", ["", None, "x" * 16, ".", "..", "br 0", "br/0", "br:0", "brü",
                                  "vzbr0\n"])
def test_bridge_name_bad(name):
    with pytest.raises(VzError, match="invalid bridge name .*1-15 letters"):
        spec_named(name)


# --- validate_mtu ------------------------------------------------------------------------------

@pytest.mark.parametrize("mtu", [None, 68, 1500, 9000, 65535])
def test_mtu_ok(mtu):
    assert validate_mtu(mtu) == mtu


@pytest.mark.parametrize("mtu", [67, 0, -1, 65536, True, "1500"])
def test_mtu_bad(mtu):
    with pytest.raises(VzError, match="mtu"):
        validate_mtu(mtu)


# --- normalize_ipv4 ----------------------------------------------------------------------------

def test_ipv4_none_means_unmanaged():
    assert normalize_ipv4(None) is None


def test_ipv4_empty_list():
    assert normalize_ipv4([]) == []


def test_ipv4_keeps_order_and_canonicalizes():
    assert normalize_ipv4([" 10.20.0.1/24", "192.168.5.1/255.255.255.0", "10.0.0.1/32"]) == [
        "10.20.0.1/24", "192.168.5.1/24", "10.0.0.1/32"]


@pytest.mark.parametrize("value, words", [
    (["10.20.0.1"], "must be an IPv4 address with a prefix length"),
    ([1], "must be an IPv4 address with a prefix length"),
    (["10.20.0.300/24"], "not a valid IPv4"),
    (["10.20.0.1/33"], "not a valid IPv4"),
    (["fe80::1/64"], "not a valid IPv4"),
    (["bridge/24"], "not a valid IPv4"),
    (["10.20.0.0/24"], "network or broadcast address"),
    (["10.20.0.255/24"], "network or broadcast address"),
    (["127.0.0.1/8"], "cannot be assigned"),
    (["224.0.0.1/4"], "cannot be assigned"),
    (["0.0.0.0/32"], "cannot be assigned"),
    (["10.20.0.1/24", "10.20.0.1/16"], "listed twice"),
    ("10.20.0.1/24", "not a string"),
])
def test_ipv4_bad(value, words):
    with pytest.raises(VzError, match=words):
        normalize_ipv4(value)


def test_ipv4_point_to_point_prefixes_allow_any_address():
    assert normalize_ipv4(["10.0.0.0/31", "10.0.0.1/31"]) == ["10.0.0.0/31", "10.0.0.1/31"]


def test_sort_addresses_is_numeric():
    assert sort_addresses(["10.20.0.10/24", "10.20.0.9/24", "9.0.0.1/8"]) == [
        "9.0.0.1/8", "10.20.0.9/24", "10.20.0.10/24"]


# --- diff_addresses ----------------------------------------------------------------------------

def test_diff_same_set_any_order():
    assert diff_addresses(["10.0.0.1/24", "10.1.0.1/24"], ["10.1.0.1/24", "10.0.0.1/24"]) == (
        [], [])


def test_diff_add_and_remove():
    assert diff_addresses(["10.0.0.1/24", "10.0.0.5/24"], ["10.0.0.1/24", "10.2.0.1/16"]) == (
        ["10.2.0.1/16"], ["10.0.0.5/24"])


def test_diff_prefix_change_is_remove_plus_add():
    assert diff_addresses(["10.0.0.1/24"], ["10.0.0.1/16"]) == (["10.0.0.1/16"], ["10.0.0.1/24"])


def test_diff_empty_desired_removes_all():
    assert diff_addresses(["10.0.0.1/24"], []) == ([], ["10.0.0.1/24"])


# --- BridgeSpec --------------------------------------------------------------------------------

def test_spec_from_params():
    spec = BridgeSpec.from_params({"name": "vzbr0", "state": "present",
                                   "ipv4": ["10.20.0.1/24"], "mtu": None})
    assert spec == BridgeSpec("vzbr0", "present", ("10.20.0.1/24",), None)
    assert spec.nat is False and spec.forwarding is None and spec.vz_root == "/var/lib/vz"
    assert spec.settings_path == "/var/lib/vz/net/bridges/vzbr0.json"


def test_spec_rejects_bad_state():
    with pytest.raises(VzError, match="state"):
        BridgeSpec.from_params({"name": "vzbr0", "state": "up"})


# --- plan_bridge / predict_bridge --------------------------------------------------------------

def link(ipv4=(), mtu=1500, up=True, kind="bridge", name="vzbr0", ipv6=()):
    return LinkState(name=name, index=7, kind=kind, mtu=mtu, up=up, ipv4=list(ipv4), ipv6=list(ipv6))


def ops(changes):
    return [(c.op, c.value) for c in changes]


def test_plan_create():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24", "10.21.0.1/24"), mtu=9000)
    assert ops(plan_bridge(spec, None)) == [
        ("create", 9000), ("up", None), ("add_ipv4", "10.20.0.1/24"), ("add_ipv4", "10.21.0.1/24")]
    assert predict_link(spec, None) == {
        "name": "vzbr0", "state": "present", "ipv4": ["10.20.0.1/24", "10.21.0.1/24"], "ipv6": [],
        "mtu": 9000}


def test_plan_create_default_mtu_prediction():
    spec = BridgeSpec("vzbr0")
    assert predict_link(spec, None)["mtu"] == 1500
    assert predict_link(spec, None)["ipv4"] == []


def test_plan_nothing_to_do():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",))
    assert plan_bridge(spec, link(["10.20.0.1/24"])) == []


def test_plan_unmanaged_addresses_and_mtu_are_kept():
    spec = BridgeSpec("vzbr0")
    current = link(["10.20.0.1/24"], mtu=9000)
    assert plan_bridge(spec, current) == []
    assert predict_link(spec, current) == describe_link("vzbr0", current)


def test_plan_down_bridge_is_brought_up():
    assert ops(plan_bridge(BridgeSpec("vzbr0"), link(up=False))) == [("up", None)]


def test_plan_fix_everything_removals_first():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.2/24",), mtu=1400)
    current = link(["10.20.0.1/24"], mtu=1500, up=False)
    assert ops(plan_bridge(spec, current)) == [
        ("set_mtu", 1400), ("up", None), ("del_ipv4", "10.20.0.1/24"), ("add_ipv4", "10.20.0.2/24")]


def test_plan_absent():
    assert ops(plan_bridge(BridgeSpec("vzbr0", "absent"), link())) == [("delete", None)]
    assert plan_bridge(BridgeSpec("vzbr0", "absent"), None) == []
    assert predict_link(BridgeSpec("vzbr0", "absent"), link())["state"] == "absent"


@pytest.mark.parametrize("state", ["present", "absent"])
def test_plan_refuses_non_bridge(state):
    with pytest.raises(NetError, match="lo exists but is not a bridge"):
        plan_bridge(BridgeSpec("lo", state), link(kind=None, name="lo"))
    with pytest.raises(NetError, match="link kind: veth"):
        plan_bridge(BridgeSpec("lo", state), link(kind="veth", name="lo"))


def test_change_descriptions():
    assert Change("create", "vzbr0", 9000).describe() == "create bridge vzbr0 with mtu 9000"
    assert Change("create", "vzbr0").describe() == "create bridge vzbr0"
    assert Change("add_ipv4", "vzbr0", "10.20.0.1/24").describe() == "add 10.20.0.1/24 to vzbr0"
    assert Change("del_ipv4", "vzbr0", "10.0.0.1/8").describe() == "remove 10.0.0.1/8 from vzbr0"


# --- ipv6 ----------------------------------------------------------------------------------------

def test_ipv6_none_means_unmanaged_and_canonical_form():
    assert normalize_ipv6(None) is None
    assert normalize_ipv6([" FD00:20:0::1/64", "2001:db8::1/128"]) == [
        "fd00:20::1/64", "2001:db8::1/128"]


@pytest.mark.parametrize("value, words", [
    (["fd00::1"], "must be an IPv6 address with a prefix length"),
    ([5], "must be an IPv6 address with a prefix length"),
    (["fd00::g/64"], "not a valid IPv6"),
    (["fd00::1/129"], "not a valid IPv6"),
    (["10.20.0.1/24"], "not a valid IPv6"),
    (["fe80::1/64"], "link-local"),
    (["ff02::1/64"], "multicast"),
    (["::1/128"], "loopback"),
    (["::/0"], "unspecified"),
    (["::ffff:10.0.0.1/120"], "IPv4-mapped"),
    (["fd00::1/64", "FD00::1/48"], "listed twice"),
    ("fd00::1/64", "not a string"),
])
def test_ipv6_bad(value, words):
    with pytest.raises(VzError, match=words):
        normalize_ipv6(value)


def test_plan_ipv6_per_family_diff_leaves_ipv4_alone():
    spec = BridgeSpec("vzbr0", ipv6=("fd00:20::1/64", "fd00:21::1/64"))
    current = link(["10.20.0.1/24"], ipv6=["fd00:20::1/64", "fd00:99::1/64"])
    assert ops(plan_bridge(spec, current)) == [
        ("del_ipv6", "fd00:99::1/64"), ("add_ipv6", "fd00:21::1/64")]
    after = predict_link(spec, current)
    assert after["ipv4"] == ["10.20.0.1/24"]
    assert after["ipv6"] == ["fd00:20::1/64", "fd00:21::1/64"]


def test_plan_create_with_both_families():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), ipv6=("fd00:20::1/64",))
    assert ops(plan_bridge(spec, None))[-2:] == [
        ("add_ipv4", "10.20.0.1/24"), ("add_ipv6", "fd00:20::1/64")]


# --- pools -------------------------------------------------------------------------------------

def test_pool_canonical():
    assert validate_pool(None, 4) is None
    assert validate_pool(" 10.20.0.0/24", 4) == "10.20.0.0/24"
    assert validate_pool("FD00:20::/64", 6) == "fd00:20::/64"


@pytest.mark.parametrize("value, family, words", [
    ("10.20.0.5/24", 4, "pool4 '10.20.0.5/24' is not an IPv4 network .*host bits set"),
    ("10.20.0.0", 4, "pool4 '10.20.0.0' is not an IPv4 network .*prefix length"),
    ("fd00::/64", 4, "pool4 fd00::/64 is not an IPv4 network"),
    ("10.20.0.0/24", 6, "pool6 10.20.0.0/24 is not an IPv6 network"),
    ("bogus/24", 4, "pool4 'bogus/24' is not an IPv4 network"),
])
def test_pool_malformed(value, family, words):
    with pytest.raises(VzError, match=words):
        validate_pool(value, family)


def test_pool_inside_a_subnet():
    check_pool_inside("vzbr0", "10.20.0.128/25", ["10.30.0.1/24", "10.20.0.1/24"], 4)
    check_pool_inside("vzbr0", "10.20.0.0/24", ["10.20.0.1/24"], 4)
    check_pool_inside("vzbr0", "fd00:20::/64", ["fd00:20::1/48"], 6)
    check_pool_inside("vzbr0", None, [], 4)


def test_pool_outside_names_the_subnets():
    with pytest.raises(VzError, match=r"pool4 10.21.0.0/24 is not inside a subnet of bridge vzbr0: "
                                      r"its IPv4 subnets are 10.20.0.0/24, 10.30.0.0/16$"):
        check_pool_inside("vzbr0", "10.21.0.0/24", ["10.20.0.1/24", "10.20.0.2/24", "10.30.0.1/16"], 4)
    with pytest.raises(VzError, match="pool4 10.20.0.0/23 is not inside"):
        check_pool_inside("vzbr0", "10.20.0.0/23", ["10.20.0.1/24"], 4)
    with pytest.raises(VzError, match="pool6 fd00:20::/64 .*it has no IPv6 address"):
        check_pool_inside("vzbr0", "fd00:20::/64", [], 6)


# --- NAT ---------------------------------------------------------------------------------------

def test_nat_rules_without_uplink():
    assert nat_rules("vzbr0", ["10.20.0.1/24", "10.20.0.2/24", "10.30.0.1/16"]) == [
        'ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname != "vzbr0" masquerade',
        'ip saddr 10.30.0.0/16 ip daddr != 10.30.0.0/16 oifname != "vzbr0" masquerade']


def test_nat_rules_with_uplink():
    assert nat_rules("vzbr0", ["10.20.0.1/24"], "eth0") == [
        'ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname "eth0" masquerade']


@pytest.mark.parametrize("bridge, chain", [
    ("vzbr0", "nat_vzbr0"), ("br-1.2_x", "nat_br_h1_d2__x"), ("a_d", "nat_a__d"), ("a.", "nat_a_d"),
    ("-" * 15, "nat_" + "_h" * 15), ("0br", "nat_0br")])
def test_nat_chain_names_are_valid_and_distinct(bridge, chain):
    assert nat_chain_name(bridge) == chain


def test_spec_uplink_needs_nat_and_is_not_the_bridge():
    with pytest.raises(VzError, match="uplink eth0 is given but nat is false"):
        BridgeSpec.from_params({"name": "vzbr0", "uplink": "eth0"})
    with pytest.raises(VzError, match="uplink vzbr0 is the bridge itself"):
        BridgeSpec.from_params({"name": "vzbr0", "uplink": "vzbr0", "nat": True})
    with pytest.raises(VzError, match="invalid uplink"):
        BridgeSpec.from_params({"name": "vzbr0", "uplink": "eth 0", "nat": True})


# --- plan_host ---------------------------------------------------------------------------------

SYSCTL_OFF = {"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"}


def host_state(**kw):
    kw.setdefault("sysctl", dict(SYSCTL_OFF))
    return HostState(**kw)


def link_after(ipv4=("10.20.0.1/24",), ipv6=()):
    return {"name": "vzbr0", "state": "present", "ipv4": list(ipv4), "ipv6": list(ipv6), "mtu": 1500}


def test_plan_host_plain_bridge_writes_settings_only():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), pool4="10.20.0.0/24")
    changes = plan_host(spec, link_after(), host_state())
    assert [c.op for c in changes] == ["write_settings"]
    path, settings = changes[0].value
    assert path == "/var/lib/vz/net/bridges/vzbr0.json"
    assert settings == {"name": "vzbr0", "ipv4": ["10.20.0.1/24"], "ipv6": [], "pool4": "10.20.0.0/24",
                        "pool6": None, "nat": False, "uplink": None}
    assert plan_host(spec, link_after(), host_state(settings=settings)) == []


def test_plan_host_nat_turns_forwarding_on_and_writes_chain():
    spec = BridgeSpec("vzbr0", nat=True, uplink="eth0")
    changes = plan_host(spec, link_after(), host_state(uplink_exists=True))
    assert [c.op for c in changes] == ["sysctl", "nat", "write_settings"]
    assert changes[0].describe() == "set net.ipv4.ip_forward to 1"
    rules = ['ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname "eth0" masquerade']
    assert changes[1].value == ("nat_vzbr0", tuple(rules))
    assert changes[1].describe() == ("set NAT chain ip osvirt_vz_nat nat_vzbr0 of vzbr0: " + rules[0])
    done = host_state(sysctl={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"},
                      nat_digest=digest(NAT_HEADER, rules), settings=changes[2].value[1], uplink_exists=True)
    assert plan_host(spec, link_after(), done) == []
    assert describe_host("vzbr0", done)["nat_rules"] == rules
    assert predict_host(spec, link_after(), host_state(uplink_exists=True)) == describe_host("vzbr0", done)


def test_plan_host_ipv6_forwarding_only_with_ipv6_addresses():
    spec = BridgeSpec("vzbr0", forwarding=True)
    assert [c.value[0] for c in plan_host(spec, link_after(), host_state()) if c.op == "sysctl"] == [
        "net.ipv4.ip_forward"]
    assert [c.value[0] for c in plan_host(spec, link_after(ipv6=["fd00::1/64"]), host_state())
            if c.op == "sysctl"] == ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]


def test_plan_host_forwarding_false_never_turns_it_off():
    spec = BridgeSpec("vzbr0", nat=True, forwarding=False)
    on = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    assert not [c for c in plan_host(spec, link_after(), host_state(sysctl=on)) if c.op == "sysctl"]
    assert not [c for c in plan_host(spec, link_after(), host_state()) if c.op == "sysctl"]


def test_plan_host_nat_off_removes_a_chain_left_over():
    spec = BridgeSpec("vzbr0")
    changes = plan_host(spec, link_after(), host_state(nat_digest="abc"))
    assert [c.op for c in changes] == ["nat_delete", "write_settings"]
    assert changes[0].describe() == "delete NAT chain ip osvirt_vz_nat nat_vzbr0 of vzbr0"


def test_plan_host_a_chain_changed_by_hand_is_rewritten_and_shown():
    spec = BridgeSpec("vzbr0", nat=True)
    host = host_state(nat_digest="0123", settings={"nat": True, "ipv4": ["10.20.0.1/24"]})
    assert [c.op for c in plan_host(spec, link_after(), host)][:2] == ["sysctl", "nat"]
    assert "holds rules not recorded" in describe_host("vzbr0", host)["nat_rules"][0]


@pytest.mark.parametrize("spec, after, host, words", [
    (BridgeSpec("vzbr0", nat=True), link_after(ipv4=()), host_state(),
     "nat on bridge vzbr0 needs at least one IPv4 address"),
    (BridgeSpec("vzbr0", nat=True, uplink="eth9"), link_after(), host_state(uplink_exists=False),
     "uplink eth9 of bridge vzbr0 does not exist"),
    (BridgeSpec("vzbr0", nat=True), link_after(), host_state(nft=False), "nft is not installed"),
    (BridgeSpec("vzbr0", pool4="10.99.0.0/24"), link_after(), host_state(),
     "pool4 10.99.0.0/24 is not inside a subnet of bridge vzbr0"),
    (BridgeSpec("vzbr0", pool6="fd00::/64"), link_after(), host_state(),
     "pool6 fd00::/64 is not inside a subnet of bridge vzbr0: it has no IPv6 address"),
    (BridgeSpec("vzbr0"), link_after(ipv6=["fd00::1/64"]),
     host_state(sysctl={"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": None}),
     "IPv6 is disabled"),
])
def test_plan_host_bad_input(spec, after, host, words):
    with pytest.raises(VzError, match=words):
        plan_host(spec, after, host)


def test_plan_host_absent_removes_chain_and_settings_not_forwarding():
    spec = BridgeSpec("vzbr0", "absent")
    host = host_state(nat_digest="abc", settings={"name": "vzbr0"},
                      sysctl={"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "0"})
    assert [(c.op, c.value) for c in plan_host(spec, describe_link("vzbr0", None), host)] == [
        ("nat_delete", "nat_vzbr0"), ("remove_settings", "/var/lib/vz/net/bridges/vzbr0.json")]
    assert predict_host(spec, describe_link("vzbr0", None), host) == {
        "nat": False, "nat_rules": [], "uplink": None, "pool4": None, "pool6": None,
        "forwarding": {"ipv4": True, "ipv6": False}}
    assert plan_host(spec, describe_link("vzbr0", None), host_state()) == []


# --- ensure_bridge against a fake kernel -------------------------------------------------------

class FakeNetlink:
    """Kernel stand-in: one dict of links; deleting a primary address flushes its subnet's
    secondaries like Linux does without promote_secondaries."""

    def __init__(self, links=None):
        self.links = links or {}
        self.applied = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def exists(self, name):
        return name in self.links or name == "eth0"

    def read_bridge(self, name):
        cur = self.links.get(name)
        return None if cur is None else LinkState(
            **{**cur.__dict__, "ipv4": list(cur.ipv4), "ipv6": list(cur.ipv6)})

    def apply(self, change):
        import ipaddress
        self.applied.append(change)
        if change.op == "create":
            self.links[change.name] = link(mtu=change.value or 1500, up=False, name=change.name)
            return
        cur = self.links[change.name]
        if change.op == "delete":
            del self.links[change.name]
        elif change.op == "set_mtu":
            cur.mtu = change.value
        elif change.op == "up":
            cur.up = True
        elif change.op == "add_ipv4":
            cur.ipv4.append(change.value)
        elif change.op == "add_ipv6":
            cur.ipv6.append(change.value)
        elif change.op == "del_ipv6":
            cur.ipv6.remove(change.value)
        elif change.op == "del_ipv4":
            net = ipaddress.ip_interface(change.value).network
            primary = next(a for a in cur.ipv4 if ipaddress.ip_interface(a).network == net)
            if primary == change.value:
                cur.ipv4 = [a for a in cur.ipv4 if ipaddress.ip_interface(a).network != net]
            else:
                cur.ipv4.remove(change.value)


class FakeSystem:
    """Host stand-in: sysctls, NAT chain digests and settings files in dicts."""

    def __init__(self, refuse_nat=False):
        self.sysctl = dict(SYSCTL_OFF)
        self.chains = {}
        self.files = {}
        self.applied = []
        self.refuse_nat = refuse_nat

    @staticmethod
    def lock(_spec):
        import contextlib
        return contextlib.nullcontext()

    def read(self, spec, netlink):
        return HostState(sysctl=dict(self.sysctl), nat_digest=self.chains.get(spec.nat_chain),
                         settings=self.files.get(spec.settings_path),
                         uplink_exists=netlink.exists(spec.uplink) if spec.uplink else None)

    def check(self, change):
        if change.op == "nat" and self.refuse_nat:
            raise NetError("could not %s: nft refused the change" % change.describe())

    def apply(self, change):
        self.applied.append(change)
        if change.op == "sysctl":
            self.sysctl[change.value[0]] = change.value[1]
        elif change.op == "nat":
            self.chains[change.value[0]] = digest(NAT_HEADER, list(change.value[1]))
        elif change.op == "nat_delete":
            del self.chains[change.value]
        elif change.op == "write_settings":
            self.files[change.value[0]] = change.value[1]
        elif change.op == "remove_settings":
            del self.files[change.value]


def test_ensure_create_then_idempotent():
    nl, system = FakeNetlink(), FakeSystem()
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",))
    first = ensure_bridge(spec, netlink=nl, system=system)
    assert first["changed"] is True
    assert first["actions"] == ["create bridge vzbr0", "bring vzbr0 up", "add 10.20.0.1/24 to vzbr0",
                                "write /var/lib/vz/net/bridges/vzbr0.json"]
    assert first["bridge"] == {"name": "vzbr0", "state": "present", "ipv4": ["10.20.0.1/24"], "ipv6": [],
                               "mtu": 1500, "nat": False, "nat_rules": [], "uplink": None,
                               "pool4": None, "pool6": None,
                               "forwarding": {"ipv4": False, "ipv6": False}}
    assert first["diff"]["before"]["state"] == "absent"
    second = ensure_bridge(spec, netlink=nl, system=system)
    assert second["changed"] is False
    assert second["actions"] == []
    assert second["diff"]["before"] == second["diff"]["after"]


def test_ensure_nat_pools_check_mode_predicts_the_real_run():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), ipv6=("fd00:20::1/64",), nat=True, uplink="eth0",
                      pool4="10.20.0.128/25", pool6="fd00:20::/64")
    nl, system = FakeNetlink(), FakeSystem()
    check = ensure_bridge(spec, check_mode=True, netlink=nl, system=system)
    assert nl.applied == [] and system.applied == []
    real = ensure_bridge(spec, netlink=nl, system=system)
    assert check["bridge"] == real["bridge"] and check["actions"] == real["actions"]
    assert real["bridge"]["forwarding"] == {"ipv4": True, "ipv6": True}
    assert real["bridge"]["nat"] is True
    assert system.files[spec.settings_path]["pool6"] == "fd00:20::/64"
    assert ensure_bridge(spec, netlink=nl, system=system)["changed"] is False


def test_ensure_bad_input_changes_nothing():
    nl, system = FakeNetlink(), FakeSystem()
    with pytest.raises(VzError, match="pool4 10.21.0.0/24 is not inside"):
        ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), pool4="10.21.0.0/24"), netlink=nl,
                      system=system)
    with pytest.raises(VzError, match="uplink eth7 of bridge vzbr0 does not exist"):
        ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), nat=True, uplink="eth7"), netlink=nl,
                      system=system)
    with pytest.raises(NetError, match="nft refused"):
        ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), nat=True), netlink=nl,
                      system=FakeSystem(refuse_nat=True))
    assert nl.applied == [] and system.applied == []


def test_ensure_absent_removes_bridge_chain_and_settings():
    nl, system = FakeNetlink(), FakeSystem()
    ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",), nat=True), netlink=nl, system=system)
    gone = ensure_bridge(BridgeSpec("vzbr0", "absent"), netlink=nl, system=system)
    assert gone["actions"] == ["delete bridge vzbr0", "delete NAT chain ip osvirt_vz_nat nat_vzbr0 of vzbr0",
                               "remove /var/lib/vz/net/bridges/vzbr0.json"]
    assert nl.links == {} and system.chains == {} and system.files == {}
    assert system.sysctl["net.ipv4.ip_forward"] == "1"


def test_ensure_check_mode_changes_nothing():
    nl, system = FakeNetlink(), FakeSystem()
    result = ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",)), check_mode=True, netlink=nl,
                           system=system)
    assert result["changed"] is True
    assert result["bridge"]["state"] == "present"
    assert nl.applied == [] and nl.links == {} and system.applied == []


def test_ensure_readds_secondary_flushed_with_its_primary():
    nl = FakeNetlink({"vzbr0": link(["10.20.0.1/24", "10.20.0.2/24"])})
    result = ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.2/24",)), netlink=nl, system=FakeSystem())
    assert nl.links["vzbr0"].ipv4 == ["10.20.0.2/24"]
    assert result["bridge"]["ipv4"] == ["10.20.0.2/24"]
    assert result["actions"][:2] == ["remove 10.20.0.1/24 from vzbr0", "add 10.20.0.2/24 to vzbr0"]


def test_ensure_refuses_non_bridge_without_changes():
    nl = FakeNetlink({"eth1": link(kind=None, name="eth1")})
    with pytest.raises(NetError, match="not a bridge"):
        ensure_bridge(BridgeSpec("eth1", "absent"), netlink=nl, system=FakeSystem())
    assert nl.applied == []
