# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for the pure parts of plugins/module_utils/_vnet.py: address and default-route
planning, onlink, broadcast, the counters' direction and ve_info's interface entries of a stopped
VE. The netlink parts run against real namespaces in tests/integration/test_vnet.py.
"""

from __future__ import annotations

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _vnet
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


# --- plan_addresses -----------------------------------------------------------------------------

def test_add_missing_and_skip_present():
    assert _vnet.plan_addresses(["10.20.0.5/24"], add=["10.20.0.5/24", "10.20.0.6/24"]) == \
        ([], ["10.20.0.6/24"])


def test_remove_absent_is_no_step_and_remove_matches_any_prefix():
    assert _vnet.plan_addresses(["10.20.0.5/24"], remove=["10.20.0.9/24"]) == ([], [])
    assert _vnet.plan_addresses(["10.20.0.5/24"], remove=["10.20.0.5/32"]) == (["10.20.0.5/24"], [])


def test_other_prefix_is_replaced():
    assert _vnet.plan_addresses(["10.20.0.5/24"], add=["10.20.0.5/25"]) == (["10.20.0.5/24"], ["10.20.0.5/25"])


def test_both_families_and_canonical_ipv6():
    assert _vnet.plan_addresses(["fd00:20::5/64"], add=["FD00:20:0::5/64", "fd00:20::6/64", "10.1.0.2/16"]) == \
        ([], ["fd00:20::6/64", "10.1.0.2/16"])


def test_duplicates_in_request_collapse():
    assert _vnet.plan_addresses([], add=["10.20.0.6/24", "10.20.0.6/24"]) == ([], ["10.20.0.6/24"])


@pytest.mark.parametrize("bad", ["10.20.0.300/24", "10.20.0.5", "fd00::/129", "", None, "eth0"])
def test_bad_address_is_one_clear_error(bad):
    with pytest.raises(VzError) as err:
        _vnet.plan_addresses([], add=[bad])
    assert "address to add" in str(err.value)


def test_add_and_remove_same_address_is_an_error():
    with pytest.raises(VzError, match="both added and removed"):
        _vnet.plan_addresses([], add=["10.20.0.6/24"], remove=["10.20.0.6/32"])


# --- default routes -----------------------------------------------------------------------------

def test_gateway_none_leaves_route_alone():
    assert _vnet.plan_gateway(4, None, ["10.20.0.1"]) == []


def test_gateway_same_is_no_step():
    assert _vnet.plan_gateway(4, ("10.20.0.1", "10.20.0.1"), ["10.20.0.1"]) == []


def test_gateway_change_replaces_and_deletes_old():
    assert _vnet.plan_gateway(4, ("10.20.0.1", "10.20.0.254"), ["10.20.0.1"]) == \
        [("replace", "10.20.0.254"), ("delete", "10.20.0.1")]


def test_gateway_set_when_missing_and_plain_string():
    assert _vnet.plan_gateway(6, "fe80::1", []) == [("replace", "fe80::1")]


def test_gateway_removed():
    assert _vnet.plan_gateway(4, ("10.20.0.1", None), ["10.20.0.1"]) == [("delete", "10.20.0.1")]
    assert _vnet.plan_gateway(4, ("10.20.0.1", None), []) == []


def test_gateway_wrong_family_or_shape():
    with pytest.raises(VzError, match="not an IPv4 address"):
        _vnet.plan_gateway(4, (None, "fe80::1"), [])
    with pytest.raises(VzError, match="not a valid IP address"):
        _vnet.plan_gateway(6, (None, "fe80::zz"), [])
    with pytest.raises(VzError, match="pair"):
        _vnet.plan_gateway(4, ("10.0.0.1",), [])


def test_onlink_only_outside_the_subnets():
    assert _vnet.needs_onlink("169.254.0.1", ["10.20.0.5/32"])
    assert not _vnet.needs_onlink("10.20.0.1", ["10.20.0.5/24"])
    assert not _vnet.needs_onlink("fe80::1", ["fd00::5/128"])
    assert _vnet.needs_onlink("fd00:1::1", ["fd00::5/64", "10.20.0.5/24"])


def test_broadcast_like_brd_plus():
    assert _vnet.broadcast("10.20.0.5/24") == "10.20.0.255"
    assert _vnet.broadcast("10.20.0.5/30") == "10.20.0.7"
    assert _vnet.broadcast("10.20.0.5/31") is None
    assert _vnet.broadcast("10.20.0.5/32") is None
    assert _vnet.broadcast("fd00::5/64") is None


def test_primary_removal_detected():
    current = {"10.20.0.5/24": 0, "10.20.0.6/24": _vnet.IFA_F_SECONDARY, "10.30.0.5/24": 0}
    assert _vnet._loses_secondaries(current, ["10.20.0.5/24"])
    assert not _vnet._loses_secondaries(current, ["10.20.0.6/24"])
    assert not _vnet._loses_secondaries(current, ["10.30.0.5/24"])
    assert not _vnet._loses_secondaries(current, ["10.20.0.5/24", "10.20.0.6/24"])


def test_host_route_address_forms():
    assert str(_vnet._host_ip("10.20.0.5")) == "10.20.0.5"
    assert str(_vnet._host_ip("10.20.0.5/24")) == "10.20.0.5"
    assert str(_vnet._host_ip("fd00::5/64")) == "fd00::5"
    with pytest.raises(VzError, match="host route address"):
        _vnet._host_ip("10.20.0.500")


# --- counters and ve_info -----------------------------------------------------------------------

class FakeLink:
    def __init__(self, attrs):
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


def test_counters_are_the_ves_view():
    link = FakeLink({"IFLA_STATS64": {"rx_bytes": 100, "tx_bytes": 7, "rx_packets": 3, "tx_packets": 1},
                     "IFLA_OPERSTATE": "UP"})
    assert _vnet._stats(link) == {"tx_bytes": 100, "rx_bytes": 7, "tx_packets": 3, "rx_packets": 1,
                                  "state": "up"}


def test_dad_state():
    assert _vnet._dad_state(0x80) == "ok"
    assert _vnet._dad_state(_vnet.IFA_F_TENTATIVE) == "tentative"
    assert _vnet._dad_state(_vnet.IFA_F_TENTATIVE | _vnet.IFA_F_DADFAILED) == "dadfailed"


def test_interfaces_of_a_stopped_ve():
    network = [{"name": "eth0", "mode": "routed", "bridge": None, "ipv4": ["10.20.0.5/32"],
                "ipv6": ["fd00::5/128"], "gateway4": "169.254.0.1", "gateway6": "fe80::1", "mtu": None,
                "hwaddr": "02:00:00:00:00:01", "host_link": "vz0123abcd0"},
               {"name": "eth1", "bridge": "vzbr0", "ipv4": [], "hwaddr": "02:00:00:00:00:02",
                "host_link": "vz0123abcd1"}]
    result = _vnet.describe_interfaces(network, None)
    assert [i["name"] for i in result] == ["eth0", "eth1"]
    assert result[0]["mode"] == "routed" and result[0]["ipv6"] == ["fd00::5/128"]
    assert result[1]["mode"] == "bridged" and result[1]["ipv6"] == [] and result[1]["gateway6"] is None
    assert all(i["live"] is None and i["counters"] is None for i in result)


def test_bad_pid_refused_before_any_netlink(monkeypatch):
    monkeypatch.setattr(_vnet, "HAS_PYROUTE2", True)
    for pid in (0, 1, -5, True, "12"):
        with pytest.raises(VzError, match="invalid VE pid"):
            _vnet._ve_socket(pid)


def test_names_validated_before_anything(monkeypatch):
    monkeypatch.setattr(_vnet, "HAS_PYROUTE2", True)
    with pytest.raises(VzError, match="interface name inside the VE"):
        _vnet.apply_addresses(4242, "../../x", add=["10.20.0.6/24"])
    with pytest.raises(VzError, match="host link name"):
        _vnet.host_routes("a/b", add=["10.20.0.6"])
    with pytest.raises(VzError, match="host link name"):
        _vnet.link_stats("x" * 16)
