# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests for plugins/module_utils/_shaping.py: rates, the classifier program and the plan of
the host's shaping tree.

No root, no netlink, no nft: ``FakeKernel`` keeps links, the shaper's classes and classifiers and
the redirect chains in dicts and carries out the planned steps the way the kernel would.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _antispoof, _shaping
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._shaping import (
    DEFAULT_CAPACITY_BPS, RATE_MAX_BPS, SHAPER, SHAPER_ALIAS, TOTAL_CLASS, Rates, ShaperState,
    ShapingError, Step, TcState, apply_shaping, capacity_bytes, classifier_program, clear_shaping,
    format_bps, link_counters, plan_shaping, read_shaping)

LINK = "vz1a2b3c4d0"
OTHER = "vz5e6f7a8b0"
MBIT = 10 ** 6
DEFAULT_TOTAL = DEFAULT_CAPACITY_BPS // 8


class FakeKernel:
    """Just enough of the kernel for the plan: links, redirect chains, the shaper's tree."""

    def __init__(self, links=(LINK,)):
        self.next_index = 10
        self.links = {}
        for name in links:
            self.add_link(name, "veth")
        # link name -> ifindex its redirect chain sends to; a netdev chain outlives its link
        # (kernel 6.18) and hooks the next link of that name
        self.redirect = {}
        self.legacy = set()              # links with an earlier version's tc redirect
        self.htb = False                 # htb 1: on the shaper
        self.classes = {}                # classid -> (rate, ceil)
        self.classifiers = {}            # handle -> (link name, classid)
        self.applied = []
        self.locked = 0
        self.counters_of = {}

    def add_link(self, name, kind, alias=None, up=False):
        self.next_index += 1
        self.links[name] = {"index": self.next_index, "kind": kind, "alias": alias, "up": up}
        return self.next_index

    def restart(self, name):
        """A VE restarted without its post-stop hook: a new veth (the redirect chain stays)."""
        del self.links[name]
        return self.add_link(name, "veth")

    def stop(self, name):
        del self.links[name]

    # the TcNetlink interface
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @contextmanager
    def lock(self):
        self.locked += 1
        yield

    def read(self, ifname):
        link = self.links.get(ifname)
        state = TcState(ifname=ifname, link_index=link["index"] if link else None)
        shaper = self.links.get(SHAPER)
        if shaper:
            state.shaper = ShaperState(index=shaper["index"], kind=shaper["kind"], alias=shaper["alias"],
                                       up=shaper["up"])
            state.htb_root = self.htb
            if self.htb:
                state.classes = dict(self.classes)
                state.classifiers = dict(self.classifiers)
                state.link_indexes = {n: (self.links[n]["index"] if n in self.links else None)
                                      for n, _c in self.classifiers.values()}
        state.legacy_redirect = bool(link) and ifname in self.legacy
        target = self.redirect.get(ifname)
        if target is not None:
            state.redirect_to = target if shaper and target == shaper["index"] else 0
        return state

    def apply(self, step):
        self.applied.append(step)
        dev = step.dev
        if step.op == "create_shaper":
            assert dev == SHAPER and dev not in self.links
            self.add_link(dev, "ifb", alias=SHAPER_ALIAS)
        elif step.op == "shaper_up":
            self.links[dev]["up"] = True
        elif step.op == "add_htb":
            self.htb, self.classes, self.classifiers = True, {}, {}
        elif step.op == "add_class":
            classid, rate, ceil = step.value
            assert classid not in self.classes
            assert classid == TOTAL_CLASS or TOTAL_CLASS in self.classes, "VE class before 1:1"
            self.classes[classid] = (rate, ceil)
        elif step.op == "change_class":
            classid, rate, ceil = step.value
            assert classid in self.classes
            self.classes[classid] = (rate, ceil)
        elif step.op == "del_class":
            assert all(c != step.value for _n, c in self.classifiers.values()), "class still in use"
            del self.classes[step.value]
        elif step.op == "add_classifier":
            handle, name, classid = step.value
            assert handle not in self.classifiers and classid in self.classes
            assert self.links[name]["index"] == handle
            self.classifiers[handle] = (name, classid)
        elif step.op == "del_classifier":
            del self.classifiers[step.value[0]]
        elif step.op == "add_redirect":      # replaces the chain
            index = self.links[dev]["index"]
            assert self.links[SHAPER]["up"] and self.classifiers.get(index, ("",))[0] == dev, \
                "redirect before the tree classifies the link"
            self.redirect[dev] = self.links[step.value]["index"]
        elif step.op == "del_redirect":
            del self.redirect[dev]
        elif step.op == "del_legacy_redirect":
            self.legacy.remove(dev)
        elif step.op == "del_shaper":
            del self.links[dev]
            self.htb, self.classes, self.classifiers = False, {}, {}
        else:
            raise AssertionError(step.op)

    def counters(self, ifname):
        return self.counters_of.get(ifname) if ifname in self.links else None

    def ops(self):
        return [s.op for s in self.applied]

    def class_of(self, name):
        found = [c for n, c in self.classifiers.values() if n == name]
        return found[0] if found else None


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


# --- capacity, formats, classifier -------------------------------------------------------------

def test_capacity_default_and_bounds():
    assert capacity_bytes(None) == DEFAULT_TOTAL
    assert capacity_bytes(32 * MBIT) == 4 * MBIT
    with pytest.raises(ShapingError, match="net capacity of the host 100 bit/s is out of range"):
        capacity_bytes(100)


@pytest.mark.parametrize("bps, text", [
    (8 * MBIT, "8Mbit"), (10 ** 9, "1Gbit"), (1500000, "1500kbit"), (8001, "8001bit"),
    (167772160, "167772160bit"),
])
def test_format_bps(bps, text):
    assert format_bps(bps) == text


def test_classifier_program_matches_the_ingress_ifindex():
    program = classifier_program(4242)
    insns = [struct.unpack("<BBhi", program[i:i + 8]) for i in range(0, len(program), 8)]
    assert insns == [
        (0xB7, 0x00, 0, 0),          # r0 = 0 (no match)
        (0x61, 0x12, 36, 0),         # r2 = skb->ingress_ifindex
        (0x55, 0x02, 1, 4242),       # if r2 != 4242 skip the next
        (0xB7, 0x00, 0, -1),         # r0 = -1: the filter's classid
        (0x95, 0x00, 0, 0),          # exit
    ]


# --- plan: from nothing ------------------------------------------------------------------------

def test_plan_from_nothing_builds_the_tree_and_redirects_last():
    kernel = FakeKernel()
    state = kernel.read(LINK)
    steps = plan_shaping(state, Rates.from_bps(8 * MBIT))
    classid = steps[4].value[0]
    assert steps == [
        Step("create_shaper", SHAPER),
        Step("shaper_up", SHAPER),
        Step("add_htb", SHAPER),
        Step("add_class", SHAPER, (TOTAL_CLASS, DEFAULT_TOTAL, DEFAULT_TOTAL)),
        Step("add_class", SHAPER, (classid, MBIT, MBIT)),
        Step("add_classifier", SHAPER, (state.link_index, LINK, classid)),
        Step("add_redirect", LINK, SHAPER),
    ]
    assert classid >> 16 == 1 and 0x10 <= classid & 0xFFFF <= 0xFFFE


def test_describe_steps():
    kernel = FakeKernel()
    result = apply_shaping(LINK, 8 * MBIT, 80 * MBIT, capacity_bps=10 ** 9, check_mode=True, netlink=kernel)
    classid = "1:%x" % (_shaping._free_minor(LINK, {TOTAL_CLASS}) & 0xFFFF)
    assert result["actions"] == [
        "create the shaping device vzshape0",
        "bring vzshape0 up",
        "add htb qdisc 1: to vzshape0",
        "add class 1:1 to vzshape0 (rate 1Gbit ceil 1Gbit)",
        "add class %s to vzshape0 (rate 8Mbit ceil 80Mbit)" % classid,
        "send packets from vz1a2b3c4d0 (ifindex 11) to class %s of vzshape0" % classid,
        "redirect what vz1a2b3c4d0 receives to vzshape0",
    ]


def test_class_minor_is_stable_and_probes_past_taken_ones():
    first = _shaping._free_minor(LINK, {TOTAL_CLASS})
    assert _shaping._free_minor(LINK, {TOTAL_CLASS}) == first
    second = _shaping._free_minor(LINK, {TOTAL_CLASS, first})
    assert second != first and second >> 16 == 1


# --- apply / read / idempotence / live change -------------------------------------------------

def test_apply_then_read_then_idempotent_lock_only_for_changes():
    kernel = FakeKernel()
    first = apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert first["changed"] and first["before"] is None
    assert first["after"] == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    kernel.applied.clear()
    again = apply_shaping(LINK, 8 * MBIT, 8 * MBIT, netlink=kernel)   # same thing said differently
    assert not again["changed"] and again["actions"] == [] and kernel.applied == []
    assert again["before"] == again["after"]
    assert kernel.locked == 1   # the second call found nothing to do: it never waited for the lock


def test_a_second_ve_joins_the_same_tree():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    apply_shaping(OTHER, 4 * MBIT, 16 * MBIT, netlink=kernel)
    assert kernel.ops() == ["add_class", "add_classifier", "add_redirect"]
    assert kernel.class_of(LINK) != kernel.class_of(OTHER)
    assert kernel.classes[kernel.class_of(OTHER)] == (MBIT // 2, 2 * MBIT)
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}


def test_live_change_touches_only_the_ves_class():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    shaper = kernel.links[SHAPER]["index"]
    kernel.applied.clear()
    result = apply_shaping(LINK, 16 * MBIT, 40 * MBIT, netlink=kernel)
    assert kernel.applied == [Step("change_class", SHAPER, (kernel.class_of(LINK), 2 * MBIT, 5 * MBIT))]
    assert result["before"]["rate_bps"] == 8 * MBIT
    assert result["after"] == {"rate_bps": 16 * MBIT, "ceil_bps": 40 * MBIT}
    assert kernel.links[SHAPER]["index"] == shaper          # same tree: traffic never unshaped


def test_capacity_is_kept_unless_given():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, capacity_bps=100 * MBIT, netlink=kernel)
    apply_shaping(OTHER, 8 * MBIT, netlink=kernel)
    assert kernel.classes[TOTAL_CLASS] == (100 * MBIT // 8, 100 * MBIT // 8)
    kernel.applied.clear()
    apply_shaping(OTHER, 8 * MBIT, capacity_bps=1000 * MBIT, netlink=kernel)
    assert kernel.applied == [Step("change_class", SHAPER, (TOTAL_CLASS, 125 * MBIT, 125 * MBIT))]


def test_check_mode_predicts_and_changes_nothing():
    kernel = FakeKernel()
    result = apply_shaping(LINK, 8 * MBIT, 16 * MBIT, check_mode=True, netlink=kernel)
    assert result["changed"] and len(result["actions"]) == 7
    assert result["after"] == {"rate_bps": 8 * MBIT, "ceil_bps": 16 * MBIT}
    assert kernel.applied == [] and SHAPER not in kernel.links
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    removal = clear_shaping(LINK, check_mode=True, netlink=kernel)
    assert removal["changed"] and removal["after"] is None and kernel.applied == []


# --- removal ----------------------------------------------------------------------------------------

def test_removing_the_last_ve_removes_the_shaper():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    result = apply_shaping(LINK, None, netlink=kernel)
    assert kernel.ops() == ["del_redirect", "del_shaper"]
    assert result["before"] == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT} and result["after"] is None
    assert SHAPER not in kernel.links and read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    assert not clear_shaping(LINK, netlink=kernel)["changed"] and kernel.applied == []


def test_removing_one_ve_keeps_the_others():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    apply_shaping(OTHER, 4 * MBIT, netlink=kernel)
    kernel.applied.clear()
    clear_shaping(LINK, netlink=kernel)
    assert kernel.ops() == ["del_redirect", "del_classifier", "del_class"]
    assert read_shaping(OTHER, netlink=kernel) == {"rate_bps": 4 * MBIT, "ceil_bps": 4 * MBIT}


def test_clear_after_the_ve_stopped_removes_its_class():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    apply_shaping(OTHER, 8 * MBIT, netlink=kernel)
    kernel.stop(LINK)
    assert read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    clear_shaping(LINK, netlink=kernel)
    # the redirect chain outlives the link: removed too, or it would send the next link of that name
    assert kernel.ops() == ["del_redirect", "del_classifier", "del_class"] and kernel.class_of(LINK) is None
    assert LINK not in kernel.redirect


def test_clear_only_if_gone_leaves_a_live_link_alone():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.applied.clear()
    result = clear_shaping(LINK, only_if_gone=True, netlink=kernel)
    assert not result["changed"] and kernel.applied == []
    assert result["after"] == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    kernel.stop(LINK)
    assert clear_shaping(LINK, only_if_gone=True, netlink=kernel)["actions"] == [
        "remove the shaping redirect from vz1a2b3c4d0", "delete the shaping device vzshape0 (no VE is shaped)"]


def test_leftovers_of_stopped_ves_go_with_the_next_change():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    apply_shaping(OTHER, 8 * MBIT, netlink=kernel)
    kernel.stop(OTHER)                      # its post-stop hook did not run
    kernel.applied.clear()
    apply_shaping(LINK, 12 * MBIT, netlink=kernel)
    assert kernel.ops() == ["del_classifier", "del_class", "change_class"]
    assert kernel.class_of(OTHER) is None


def test_restart_without_post_stop_reuses_the_class_for_the_new_link():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    classid = kernel.class_of(LINK)
    new_index = kernel.restart(LINK)
    assert read_shaping(LINK, netlink=kernel) is None     # the old classifier matches the old ifindex
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["del_classifier", "add_classifier"]     # the redirect chain hooked the new link
    assert kernel.classifiers == {new_index: (LINK, classid)}


# --- refusals ---------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("kind, alias", [("veth", None), ("ifb", None), ("ifb", "something else")])
def test_foreign_device_under_the_shaper_name_is_refused(kind, alias):
    kernel = FakeKernel()
    kernel.add_link(SHAPER, kind, alias=alias, up=True)
    for call in (lambda: apply_shaping(LINK, 8 * MBIT, netlink=kernel),
                 lambda: clear_shaping(LINK, netlink=kernel)):
        with pytest.raises(ShapingError, match="device vzshape0 exists but was not made by osvirt.vz"):
            call()
    assert kernel.applied == []


# --- repair of half-made or tampered states ----------------------------------------------------

def test_repairs_a_shaper_left_down():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.links[SHAPER]["up"] = False
    assert read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    assert apply_shaping(LINK, 8 * MBIT, netlink=kernel)["actions"] == ["bring vzshape0 up"]


def test_repairs_a_missing_root_qdisc_with_a_fresh_tree():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.htb, kernel.classes, kernel.classifiers = False, {}, {}
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["add_htb", "add_class", "add_class", "add_classifier"]
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}


def test_half_made_state_after_a_crash_is_completed():
    kernel = FakeKernel()
    for step in plan_shaping(kernel.read(LINK), Rates.from_bps(8 * MBIT))[:5]:   # stopped after its class
        kernel.apply(step)
    assert read_shaping(LINK, netlink=kernel) is None                          # not shaped yet: says so
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    # the class without a classifier is nobody's for sure: replaced, not leaked
    assert kernel.ops() == ["del_class", "add_class", "add_classifier", "add_redirect"]
    assert sorted(kernel.classes) == sorted([TOTAL_CLASS, kernel.class_of(LINK)])


def test_redirect_to_another_device_is_replaced():
    kernel = FakeKernel()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    kernel.redirect[LINK] = 999
    assert read_shaping(LINK, netlink=kernel) is None
    kernel.applied.clear()
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.ops() == ["add_redirect"]        # one transaction replaces the chain
    assert kernel.redirect[LINK] == kernel.links[SHAPER]["index"]


def test_an_earlier_versions_tc_redirect_goes_once_the_nft_one_is_in():
    kernel = FakeKernel(links=(LINK, OTHER))
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    apply_shaping(OTHER, 8 * MBIT, netlink=kernel)
    del kernel.redirect[LINK]
    kernel.legacy.update({LINK, OTHER})      # as a running VE shaped before the upgrade has it
    kernel.applied.clear()
    assert apply_shaping(LINK, 8 * MBIT, netlink=kernel)["actions"] == [
        "redirect what vz1a2b3c4d0 receives to vzshape0",
        "remove the tc redirect of an earlier osvirt.vz from vz1a2b3c4d0"]
    kernel.applied.clear()
    clear_shaping(OTHER, netlink=kernel)
    assert kernel.ops()[:2] == ["del_legacy_redirect", "del_redirect"] and not kernel.legacy


def test_redirect_chain_runs_after_the_anti_spoofing_chain_and_names_the_shaper_ifindex():
    assert _shaping.redirect_chain(LINK) == "ve_" + LINK
    assert _shaping.redirect_header(LINK) == 'type filter hook ingress device "%s" priority 0; policy accept;' % LINK
    assert _shaping.REDIRECT_PRIORITY > _antispoof.PRIORITY     # the guard drops first
    assert _shaping.redirect_rules(7) == ['fwd to "vzshape0" comment "ifindex 7"']
    with pytest.raises(Exception, match="VE link"):
        _shaping.redirect_chain("vz-bad")


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
    monkeypatch.syspath_prepend(str(path.parent))         # where it finds _nft.py
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
    assert kernel.links[SHAPER]["alias"] == module.SHAPER_ALIAS


def test_nothing_to_do_never_waits_for_the_host_wide_lock():
    """Every VE start and stop asks to clear or apply shaping; when there is nothing to do (an
    unshaped VE, or the hook shaped it already) the call must not queue behind the lock that
    every VE of the host shares."""
    kernel = FakeKernel(links=(LINK, OTHER))
    assert not clear_shaping(LINK, netlink=kernel)["changed"]
    assert not clear_shaping(LINK, netlink=kernel, only_if_gone=True)["changed"]
    assert kernel.locked == 0
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert kernel.locked == 1
    apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert not clear_shaping(OTHER, netlink=kernel)["changed"]
    assert kernel.locked == 1
    kernel.stop(LINK)
    assert clear_shaping(LINK, netlink=kernel)["changed"]   # a real change takes the lock again
    assert kernel.locked == 2


class _ChangingKernel(FakeKernel):
    """The first read fails as netlink does when another process deletes the shaper meanwhile."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = 0

    def read(self, ifname):
        self.reads += 1
        if self.reads == 1:
            raise _shaping.NetlinkError("No such device")
        return super().read(ifname)


def test_a_read_that_races_a_change_is_done_again_under_the_lock():
    kernel = _ChangingKernel()
    result = apply_shaping(LINK, 8 * MBIT, netlink=kernel)
    assert result["changed"] and kernel.locked == 1
    assert read_shaping(LINK, netlink=kernel) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
