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
    LinkState,
    NetError,
    VzError,
    describe_bridge,
    diff_addresses,
    ensure_bridge,
    normalize_ipv4,
    plan_bridge,
    predict_bridge,
    sort_addresses,
    validate_mtu,
)


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


def test_spec_rejects_bad_state():
    with pytest.raises(VzError, match="state"):
        BridgeSpec.from_params({"name": "vzbr0", "state": "up"})


# --- plan_bridge / predict_bridge --------------------------------------------------------------

def link(ipv4=(), mtu=1500, up=True, kind="bridge", name="vzbr0"):
    return LinkState(name=name, index=7, kind=kind, mtu=mtu, up=up, ipv4=list(ipv4))


def ops(changes):
    return [(c.op, c.value) for c in changes]


def test_plan_create():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24", "10.21.0.1/24"), mtu=9000)
    assert ops(plan_bridge(spec, None)) == [
        ("create", 9000), ("up", None), ("add_ipv4", "10.20.0.1/24"), ("add_ipv4", "10.21.0.1/24")]
    assert predict_bridge(spec, None) == {
        "name": "vzbr0", "state": "present", "ipv4": ["10.20.0.1/24", "10.21.0.1/24"], "mtu": 9000}


def test_plan_create_default_mtu_prediction():
    spec = BridgeSpec("vzbr0")
    assert predict_bridge(spec, None)["mtu"] == 1500
    assert predict_bridge(spec, None)["ipv4"] == []


def test_plan_nothing_to_do():
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",))
    assert plan_bridge(spec, link(["10.20.0.1/24"])) == []


def test_plan_unmanaged_addresses_and_mtu_are_kept():
    spec = BridgeSpec("vzbr0")
    current = link(["10.20.0.1/24"], mtu=9000)
    assert plan_bridge(spec, current) == []
    assert predict_bridge(spec, current) == describe_bridge("vzbr0", current)


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
    assert predict_bridge(BridgeSpec("vzbr0", "absent"), link())["state"] == "absent"


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

    def read_bridge(self, name):
        cur = self.links.get(name)
        return None if cur is None else LinkState(**{**cur.__dict__, "ipv4": list(cur.ipv4)})

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
        elif change.op == "del_ipv4":
            net = ipaddress.ip_interface(change.value).network
            primary = next(a for a in cur.ipv4 if ipaddress.ip_interface(a).network == net)
            if primary == change.value:
                cur.ipv4 = [a for a in cur.ipv4 if ipaddress.ip_interface(a).network != net]
            else:
                cur.ipv4.remove(change.value)


def test_ensure_create_then_idempotent():
    nl = FakeNetlink()
    spec = BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",))
    first = ensure_bridge(spec, netlink=nl)
    assert first["changed"] is True
    assert first["actions"] == ["create bridge vzbr0", "bring vzbr0 up", "add 10.20.0.1/24 to vzbr0"]
    assert first["bridge"] == {"name": "vzbr0", "state": "present", "ipv4": ["10.20.0.1/24"],
                               "mtu": 1500}
    assert first["diff"]["before"]["state"] == "absent"
    second = ensure_bridge(spec, netlink=nl)
    assert second["changed"] is False
    assert second["actions"] == []
    assert second["diff"]["before"] == second["diff"]["after"]


def test_ensure_check_mode_changes_nothing():
    nl = FakeNetlink()
    result = ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.1/24",)), check_mode=True, netlink=nl)
    assert result["changed"] is True
    assert result["bridge"]["state"] == "present"
    assert nl.applied == [] and nl.links == {}


def test_ensure_readds_secondary_flushed_with_its_primary():
    nl = FakeNetlink({"vzbr0": link(["10.20.0.1/24", "10.20.0.2/24"])})
    result = ensure_bridge(BridgeSpec("vzbr0", ipv4=("10.20.0.2/24",)), netlink=nl)
    assert nl.links["vzbr0"].ipv4 == ["10.20.0.2/24"]
    assert result["bridge"]["ipv4"] == ["10.20.0.2/24"]
    assert result["actions"] == ["remove 10.20.0.1/24 from vzbr0", "add 10.20.0.2/24 to vzbr0"]


def test_ensure_refuses_non_bridge_without_changes():
    nl = FakeNetlink({"eth0": link(kind=None, name="eth0")})
    with pytest.raises(NetError, match="not a bridge"):
        ensure_bridge(BridgeSpec("eth0", "absent"), netlink=nl)
    assert nl.applied == []
