# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for plugins/module_utils/_shaping.py: rates, names and the shaping plan.

No root and no netlink: ``FakeKernel`` keeps links, the IFB's classes and the ingress redirect
in dicts and carries out the planned steps the way the kernel would.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _shaping
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._shaping import (
    LEAF_CLASS, PARENT_CLASS, RATE_MAX_BPS, IfbState, Rates, ShapingError, Step, TcState,
    apply_shaping, clear_shaping, format_bps, ifb_alias, ifb_name, link_counters, plan_shaping,
    read_shaping)

LINK = "vz1a2b3c4d0"
IFB = "ifbvz1a2b3c4d0"


class FakeKernel:
    """Just enough of the kernel for the shaping plan: links, one ingress redirect, HTB."""

    def __init__(self, links=(LINK,)):
        self.next_index = 10
        self.links = {}
        for name in links:
            self.add_link(name, "veth")
        self.ingress = set()             # links with an ingress qdisc
        self.redirect = {}               # link -> ifindex our filter redirects to
        self.foreign_filters = set()     # links with someone else's ingress filters
        self.htb = set()                 # IFBs with htb 1:
        self.classes = {}                # IFB -> {classid: (rate, ceil)}
        self.applied = []
        self.counters_of = {}

    def add_link(self, name, kind, alias=None, up=False):
        self.next_index += 1
        self.links[name] = {"index": self.next_index, "kind": kind, "alias": alias, "up": up}
        return self.next_index

    # the TcNetlink interface
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, ifname):
        link = self.links.get(ifname)
        state = TcState(ifname=ifname, link_index=link["index"] if link else None)
        ifb = self.links.get(ifb_name(ifname))
        if ifb:
            state.ifb = IfbState(index=ifb["index"], kind=ifb["kind"], alias=ifb["alias"], up=ifb["up"])
            state.htb_root = ifb_name(ifname) in self.htb
            if state.htb_root:
                state.classes = dict(self.classes.get(ifb_name(ifname), {}))
        if link:
            state.ingress = ifname in self.ingress
            state.redirect_to = self.redirect.get(ifname)
            state.other_ingress_filters = ifname in self.foreign_filters
        return state

    def apply(self, step):
        self.applied.append(step)
        dev = step.dev
        if step.op == "create_ifb":
            assert dev not in self.links
            self.add_link(dev, "ifb", alias=ifb_alias(step.value))
        elif step.op == "ifb_up":
            self.links[dev]["up"] = True
        elif step.op == "add_htb":
            self.htb.add(dev)
            self.classes[dev] = {}
        elif step.op == "add_class":
            classid, rate, ceil = step.value
            assert classid not in self.classes[dev]
            assert classid == PARENT_CLASS or PARENT_CLASS in self.classes[dev], "leaf before parent"
            self.classes[dev][classid] = (rate, ceil)
        elif step.op == "change_class":
            classid, rate, ceil = step.value
            assert classid in self.classes[dev]
            self.classes[dev][classid] = (rate, ceil)
        elif step.op == "add_ingress":
            assert dev not in self.ingress
            self.ingress.add(dev)
        elif step.op == "add_filter":
            assert dev in self.ingress and dev not in self.redirect
            assert self.links[step.value]["up"] and step.value in self.htb, "redirect before shaping"
            self.redirect[dev] = self.links[step.value]["index"]
        elif step.op == "del_filter":
            del self.redirect[dev]
        elif step.op == "del_ingress":
            self.ingress.discard(dev)
            self.redirect.pop(dev, None)
            self.foreign_filters.discard(dev)
        elif step.op == "del_ifb":
            del self.links[dev]
            self.htb.discard(dev)
            self.classes.pop(dev, None)
        else:
            raise AssertionError(step.op)

    def counters(self, ifname):
        return self.counters_of.get(ifname) if ifname in self.links else None

    def ops(self):
        return [s.op for s in self.applied]


MBIT = 10 ** 6


# --- rates ---------------------------------------------------------------------------------------

def test_rates_hard_cap_when_no_ceil():
    assert Rates.from_bps(8 * MBIT) == Rates(rate=MBIT, ceil=MBIT)


def test_rates_with_ceil_in_bytes():
    assert Rates.from_bps(8 * MBIT, 100 * MBIT) == Rates(rate=MBIT, ceil=12500000)
    assert Rates.from_bps(8 * MBIT, 100 * MBIT).as_bps() == {"rate_bps": 8 * MBIT, "ceil_bps": 100 * MBIT}


def test_rates_round_down_to_whole_bytes():
    assert Rates.from_bps(8007).rate == 1000
    assert Rates.from_bps(10 ** 6 + 7).as_bps()["rate_bps"] == 10 ** 6


def test_rates_top_of_range():
    assert Rates.from_bps(RATE_MAX_BPS).rate == 2 ** 32 - 1


@pytest.mark.parametrize("rate, ceil, words", [
    (0, None, "net.rate 0 bit/s is out of range"),
    (-8000, None, "net.rate -8000 bit/s is out of range"),
    (7999, None, "out of range: 8000 bit/s"),
    (RATE_MAX_BPS + 8, None, "34.3 Gbit/s"),
    (8 * MBIT, 40 * 10 ** 9, "net.ceil 40000000000 bit/s is out of range"),
    (8 * MBIT, 4 * MBIT, "net.ceil .4000000 bit/s. is below net.rate .8000000 bit/s."),
    ("8Mbit", None, "net.rate must be a whole number of bits per second, got '8Mbit'"),
    (8e6, None, "got 8000000.0"),
    (True, None, "got True"),
    (8 * MBIT, "9M", "net.ceil must be a whole number"),
])
def test_rates_bad(rate, ceil, words):
    with pytest.raises(ShapingError, match=words):
        Rates.from_bps(rate, ceil)


def test_shaping_error_is_the_collections_error():
    assert issubclass(ShapingError, VzError)


# --- names ---------------------------------------------------------------------------------------

def test_ifb_name_readable_for_ve_links():
    assert ifb_name(LINK) == IFB
    assert ifb_name("x" * 12) == "ifb" + "x" * 12


def test_ifb_name_of_long_links_is_hashed_and_fits():
    first, second = ifb_name("a" * 15), ifb_name("a" * 14 + "b")
    assert len(first) == len(second) == 15
    assert first != second and first.startswith("ifb")


@pytest.mark.parametrize("bps, text", [
    (8 * MBIT, "8Mbit"), (10 ** 9, "1Gbit"), (1500000, "1500kbit"), (8001, "8001bit"),
    (167772160, "167772160bit"),
])
def test_format_bps(bps, text):
    assert format_bps(bps) == text


# --- plan: from nothing ------------------------------------------------------------------------

def test_plan_hard_cap_from_nothing_redirects_last():
    steps = plan_shaping(FakeKernel().read(LINK), Rates.from_bps(8 * MBIT))
    assert steps == [
        Step("create_ifb", IFB, LINK),
        Step("ifb_up", IFB),
        Step("add_htb", IFB),
        Step("add_class", IFB, (PARENT_CLASS, MBIT, MBIT)),
        Step("add_class", IFB, (LEAF_CLASS, MBIT, MBIT)),
        Step("add_ingress", LINK),
        Step("add_filter", LINK, IFB),
    ]


def test_plan_rate_and_ceil_parent_holds_ceil():
    steps = plan_shaping(FakeKernel().read(LINK), Rates.from_bps(8 * MBIT, 80 * MBIT))
    classes = [s.value for s in steps if s.op == "add_class"]
    assert classes == [(PARENT_CLASS, 10 * MBIT, 10 * MBIT), (LEAF_CLASS, MBIT, 10 * MBIT)]


def test_describe_steps():
    steps = plan_shaping(FakeKernel().read(LINK), Rates.from_bps(8 * MBIT, 80 * MBIT))
    assert [s.describe() for s in steps] == [
        "create IFB device ifbvz1a2b3c4d0 for vz1a2b3c4d0",
        "bring ifbvz1a2b3c4d0 up",
        "add htb qdisc 1: to ifbvz1a2b3c4d0",
        "add class 1:1 to ifbvz1a2b3c4d0 (rate 80Mbit ceil 80Mbit)",
        "add class 1:10 to ifbvz1a2b3c4d0 (rate 8Mbit ceil 80Mbit)",
        "add ingress qdisc to vz1a2b3c4d0",
        "redirect what vz1a2b3c4d0 receives to ifbvz1a2b3c4d0",
    ]


# --- apply / read / idempotence / live change -------------------------------------------------

def test_apply_then_read_then_idempotent():
    kernel = FakeKernel()
    first = apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert first["changed"] and first["before"] is None
    assert first["after"] == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    kernel.applied.clear()
    again = apply_shaping(LINK, 8 * MBIT, 8 * MBIT, netlink=kernel)   # same thing said differently
    assert not again["changed"] and again["actions"] == [] and kernel.applied == []
    assert again["before"] == again["after"]


def test_live_rate_change_touches_only_the_leaf():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, 80 * MBIT, netlink=kernel)
    kernel.applied.clear()
    result = apply_shaping(LINK, 16 * MBIT, 80 * MBIT, netlink=kernel)
    assert kernel.applied == [Step("change_class", IFB, (LEAF_CLASS, 2 * MBIT, 10 * MBIT))]
    assert result["before"]["rate_bps"] == 8 * MBIT and result["after"]["rate_bps"] == 16 * MBIT


def test_live_ceil_change_touches_both_classes_and_nothing_else():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    index = kernel.links[IFB]["index"]
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, 40 * MBIT, netlink=kernel)
    assert kernel.ops() == ["change_class", "change_class"]
    assert kernel.links[IFB]["index"] == index          # same IFB: traffic never unshaped
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 40 * MBIT}


def test_check_mode_predicts_and_changes_nothing():
    kernel = FakeKernel()
    result = apply_shaping(LINK, 8 * MBIT, 16 * MBIT, check_mode=True, netlink=kernel)
    assert result["changed"] and len(result["actions"]) == 7
    assert result["after"] == {"rate_bps": 8 * MBIT, "ceil_bps": 16 * MBIT}
    assert kernel.applied == [] and IFB not in kernel.links
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    removal = clear_shaping(LINK, check_mode=True, netlink=kernel)
    assert removal["changed"] and removal["after"] is None and kernel.applied == []


def test_rate_none_removes_everything_of_ours():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    result = apply_shaping(LINK, None, netlink=kernel)
    assert kernel.ops() == ["del_filter", "del_ingress", "del_ifb"]
    assert result["before"] == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT} and result["after"] is None
    assert IFB not in kernel.links and read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    assert not clear_shaping(LINK, netlink=kernel)["changed"] and kernel.applied == []


def test_removal_keeps_an_ingress_qdisc_others_filter_on():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.foreign_filters.add(LINK)
    kernel.applied.clear()
    clear_shaping(LINK, netlink=kernel)
    assert kernel.ops() == ["del_filter", "del_ifb"] and LINK in kernel.ingress


def test_clear_after_the_ve_stopped_removes_the_ifb():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    del kernel.links[LINK]                  # the veth goes away with the VE, and its filters
    kernel.ingress.discard(LINK)
    kernel.redirect.pop(LINK)
    assert read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    assert clear_shaping(LINK, netlink=kernel)["actions"] == ["delete IFB device %s" % IFB]


def test_apply_on_a_stopped_ve_is_a_clear_error_and_changes_nothing():
    kernel = FakeKernel(links=())
    with pytest.raises(ShapingError, match="interface vz1a2b3c4d0 does not exist: the VE is not running"):
        apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.applied == []


def test_bad_rate_changes_nothing():
    kernel = FakeKernel()
    with pytest.raises(ShapingError, match="below net.rate"):
        apply_shaping(LINK, 8 * MBIT, MBIT, netlink=kernel)
    assert kernel.applied == []


@pytest.mark.parametrize("kind, alias", [("veth", None), ("ifb", None), ("ifb", "osvirt.vz shaping of other")])
def test_foreign_device_under_the_ifb_name_is_refused(kind, alias):
    kernel = FakeKernel()
    kernel.add_link(IFB, kind, alias=alias, up=True)
    for call in (lambda: apply_shaping(LINK, 8 * MBIT, netlink=kernel),
                 lambda: clear_shaping(LINK, netlink=kernel)):
        with pytest.raises(ShapingError, match="device ifbvz1a2b3c4d0 exists but was not made by osvirt.vz"):
            call()
    assert kernel.applied == []


# --- repair of half-made or tampered states ----------------------------------------------------

def test_repairs_an_ifb_left_down():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.links[IFB]["up"] = False
    kernel.applied.clear()
    assert apply_shaping(LINK, 8 * MBIT, netlink=kernel)["actions"] == ["bring %s up" % IFB]


def test_repairs_a_missing_root_qdisc_with_fresh_classes():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.htb.discard(IFB)
    kernel.classes[IFB] = {}
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["add_htb", "add_class", "add_class"]
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}


def test_half_made_state_after_a_crash_is_completed():
    kernel = FakeKernel()
    state = kernel.read(LINK)
    for step in plan_shaping(state, Rates.from_bps(8 * MBIT))[:4]:   # stopped after class 1:1
        kernel.apply(step)
    assert read_shaping(LINK, netlink=kernel) is None                # not shaped yet: says so
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["add_class", "add_ingress", "add_filter"]


def test_redirect_to_another_device_is_replaced():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.redirect[LINK] = 999
    assert read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["del_filter", "add_filter"]
    assert kernel.redirect[LINK] == kernel.links[IFB]["index"]


# --- counters ------------------------------------------------------------------------------------

def test_link_counters_are_seen_from_the_ve():
    kernel = FakeKernel()
    kernel.counters_of = {LINK: {"rx_bytes": 100, "tx_bytes": 7, "rx_packets": 3, "tx_packets": 1,
                                 "rx_errors": 0}}
    seen_from_the_ve = {"rx_bytes": 7, "tx_bytes": 100, "rx_packets": 1, "tx_packets": 3}
    assert link_counters(LINK, netlink=kernel) == seen_from_the_ve
    assert link_counters("vzgone0", netlink=kernel) is None


# --- pyroute2 guard and the hook's stand-alone import ------------------------------------------

def test_missing_pyroute2_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(_shaping, "HAS_PYROUTE2", False)
    with pytest.raises(ShapingError, match="needs python3-pyroute2 on the host .*apt-get install python3-pyroute2"):
        read_shaping(LINK)


def test_loads_as_a_plain_module_for_the_lxc_hook(monkeypatch):
    # the hook puts the installed copy's directory on sys.path and imports it by name
    path = Path(_shaping.__file__)
    spec = importlib.util.spec_from_file_location("osvirt_vz_shaping", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "osvirt_vz_shaping", module)
    spec.loader.exec_module(module)
    assert module.VzError is not VzError                  # its own stand-in, no package needed
    with pytest.raises(module.ShapingError, match="out of range") as info:
        module.Rates.from_bps(0)
    assert info.value.message.startswith("net.rate 0")
    kernel = FakeKernel()
    assert module.apply_shaping(LINK, 8 * MBIT, netlink=kernel)["changed"]
