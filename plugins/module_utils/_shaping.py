# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network rate of VEs: tc shaping on the host side of a VE's veth, over netlink (pyroute2).

PRIVATE: this file is internal to the osvirt.vz collection. Its functions may change or
disappear in any release; do not import them from outside the collection.

What a VE sends arrives on the host as *ingress* of the host side of its veth (``host_link`` in
ve.json, e.g. ``vz1a2b3c4d0``). Linux queues only on egress, so that ingress is redirected
(u32 match-all filter, ``mirred egress redirect``) to an IFB device of its own, whose egress
carries an HTB tree::

    <host_link> ingress --u32 0/0, mirred--> ifb<host_link> (alias "osvirt.vz shaping of ...")
                                               htb 1: default 1:10
                                                 class 1:1  rate=ceil  ceil=ceil
                                                   class 1:10 rate=rate ceil=ceil

``rate`` alone (ceil None) is a hard cap (1:1 and 1:10 both at ``rate``). With ``ceil`` the VE
may send up to ``ceil``. Everything lives in the host's network namespace: root inside the VE
cannot see or remove it. docs/net-rate.md explains the choices (and why this kernel's tc
feature set rules out a shared tree).

The shape is decide, act, report: ``TcNetlink.read`` reads a ``TcState``; ``plan_shaping``
(pure) returns the ``Step`` list; ``TcNetlink.apply`` runs one step. Rates are bits per second
in this API; the kernel keeps bytes per second (HTB's 32-bit fields: at most 34.3 Gbit/s).

This file imports nothing else of the collection when loaded on its own, so the host role can
install a copy next to the LXC hook (roles/host/files/osvirt-vz-net-hook) that re-applies the
shaping whenever a VE starts.
"""

from __future__ import annotations

import hashlib
import socket
import traceback
from dataclasses import dataclass, field

try:
    from ._errors import VzError
except ImportError:  # loaded by the LXC hook as a plain module, outside the collection
    class VzError(Exception):  # type: ignore[no-redef]
        """Stand-in for the collection's error class (same constructor)."""

        def __init__(self, message, **details):
            super().__init__(message)
            self.message = message
            self.details = details

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError:
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()

    class NetlinkError(Exception):  # type: ignore[no-redef]
        """Stand-in so that ``except NetlinkError`` stays valid without pyroute2."""


PYROUTE2_MISSING_MSG = (
    "network rate shaping needs python3-pyroute2 on the host (Debian/Ubuntu: apt-get install "
    "python3-pyroute2); the Python running this could not import pyroute2"
)

# tc handles (major:minor as one 32-bit number).
HTB_ROOT = 0x10000          # 1:
PARENT_CLASS = 0x10001      # 1:1   the most the VE may take (ceil)
LEAF_CLASS = 0x10010        # 1:10  the VE's rate, borrowing up to ceil from 1:1
INGRESS = 0xFFFF0000        # ffff:
# Filters with a lower number run first: anti-spoofing filters on the same veth should come
# before our redirect, which takes the packet away.
FILTER_PRIO = 0xC000
ETH_P_ALL = 0x0003
# IFB devices default to a 32-packet queue, too short for TCP at a few Mbit/s with GSO.
IFB_TXQLEN = 1000
ALIAS_PREFIX = "osvirt.vz shaping of "

RATE_MIN_BPS = 8000                      # 1 kB/s
RATE_MAX_BPS = (2 ** 32 - 1) * 8         # HTB's 32-bit bytes/s fields (no rate64 in pyroute2 0.7)
# Bucket sizes: 10 ms at the class's rate, at least two full-size frames.
BURST_SECONDS = 0.01
BURST_MIN_BYTES = 3200


class ShapingError(VzError):
    """Bad rates, a device we refuse to touch, or a step netlink refused; shown as is."""


def require_pyroute2():
    """Raise ``ShapingError`` with the install hint when pyroute2 cannot be imported."""
    if not HAS_PYROUTE2:
        raise ShapingError(PYROUTE2_MISSING_MSG, exception=PYROUTE2_IMPORT_ERROR)


# ---------------------------------------------------------------------------------------------
# Pure part: names, rates, state model, planning
# ---------------------------------------------------------------------------------------------

def ifb_name(ifname):
    """Name of the IFB device that shapes ``ifname``: ``ifb<ifname>``, or ``ifb`` + 12 hex
    digits of its sha1 when that would pass IFNAMSIZ (15 characters)."""
    if len(ifname) <= 12:
        return "ifb" + ifname
    return "ifb" + hashlib.sha1(ifname.encode()).hexdigest()[:12]


def ifb_alias(ifname):
    """The alias that marks an IFB device as ours (``ip link`` shows it)."""
    return ALIAS_PREFIX + ifname


def _check_rate(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapingError("net.%s must be a whole number of bits per second, got %r" % (what, value))
    if not RATE_MIN_BPS <= value <= RATE_MAX_BPS:
        raise ShapingError("net.%s %d bit/s is out of range: %d bit/s (1 kB/s) to %d bit/s "
                           "(HTB's limit, 34.3 Gbit/s)" % (what, value, RATE_MIN_BPS, RATE_MAX_BPS))
    return value


@dataclass(frozen=True)
class Rates:
    """Wanted shaping in bytes per second, as the kernel keeps it. ``ceil`` is never None."""

    rate: int
    ceil: int

    @classmethod
    def from_bps(cls, rate_bps, ceil_bps=None):
        """Validate bits per second and convert (rounded down to whole bytes).

        ``ceil_bps`` None means a hard cap at ``rate_bps``; a ceil below the rate is refused.
        """
        _check_rate(rate_bps, "rate")
        if ceil_bps is None:
            ceil_bps = rate_bps
        _check_rate(ceil_bps, "ceil")
        if ceil_bps < rate_bps:
            raise ShapingError("net.ceil (%d bit/s) is below net.rate (%d bit/s): ceil is the most "
                               "a VE may take, so it must be at least its rate" % (ceil_bps, rate_bps))
        return cls(rate=rate_bps // 8, ceil=ceil_bps // 8)

    def as_bps(self):
        """``{'rate_bps': ..., 'ceil_bps': ...}`` as ``read_shaping`` returns it."""
        return {"rate_bps": self.rate * 8, "ceil_bps": self.ceil * 8}


@dataclass
class IfbState:
    """The device under the IFB name: ours only if kind is ifb and the alias names our link."""

    index: int
    kind: str | None
    alias: str | None
    up: bool


@dataclass
class TcState:
    """What the kernel has for one VE link. ``link_index`` None: the link does not exist."""

    ifname: str
    link_index: int | None = None
    ingress: bool = False                       # ingress qdisc ffff: on the link
    other_ingress_filters: bool = False         # filters on ffff: that are not ours
    redirect_to: int | None = None              # our filter's mirred target ifindex
    ifb: IfbState | None = None
    htb_root: bool = False                      # htb 1: is the IFB's root qdisc
    classes: dict = field(default_factory=dict)  # classid -> (rate bytes/s, ceil bytes/s)

    def shaping(self):
        """The ``Rates`` in force, or None when the VE's traffic is not shaped by us."""
        if (self.link_index is None or self.ifb is None or self.redirect_to != self.ifb.index
                or not self.htb_root or LEAF_CLASS not in self.classes):
            return None
        rate, ceil = self.classes[LEAF_CLASS]
        return Rates(rate=rate, ceil=ceil)


@dataclass(frozen=True)
class Step:
    """One netlink step. ``op`` is a key of ``_DESCRIPTIONS``; ``value`` its argument."""

    op: str
    dev: str
    value: object = None

    _DESCRIPTIONS = {
        "create_ifb": "create IFB device {dev} for {target}",
        "ifb_up": "bring {dev} up",
        "add_htb": "add htb qdisc 1: to {dev}",
        "add_class": "add class {cls} to {dev} (rate {rate} ceil {ceil})",
        "change_class": "change class {cls} of {dev} to rate {rate} ceil {ceil}",
        "add_ingress": "add ingress qdisc to {dev}",
        "del_filter": "remove the shaping redirect from {dev}",
        "add_filter": "redirect what {dev} receives to {target}",
        "del_ingress": "remove the ingress qdisc from {dev}",
        "del_ifb": "delete IFB device {dev}",
    }

    def describe(self):
        """Readable one-line text for a module's ``actions`` result."""
        if self.op in ("add_class", "change_class"):
            classid, rate, ceil = self.value
            return self._DESCRIPTIONS[self.op].format(
                dev=self.dev, cls="1:%x" % (classid & 0xFFFF), rate=format_bps(rate * 8),
                ceil=format_bps(ceil * 8))
        return self._DESCRIPTIONS[self.op].format(dev=self.dev, target=self.value)


def format_bps(bps):
    """``8000000`` -> ``'8Mbit'``, ``1500000`` -> ``'1500kbit'`` (exact, for messages)."""
    for unit, factor in (("Gbit", 10 ** 9), ("Mbit", 10 ** 6), ("kbit", 10 ** 3)):
        if bps >= factor and bps % factor == 0:
            return "%d%s" % (bps // factor, unit)
    return "%dbit" % bps


def _refuse_foreign_ifb(state):
    ifb = state.ifb
    if ifb is not None and (ifb.kind != "ifb" or ifb.alias != ifb_alias(state.ifname)):
        raise ShapingError(
            "device %s exists but was not made by osvirt.vz to shape %s (kind %s, alias %r); "
            "refusing to touch it" % (ifb_name(state.ifname), state.ifname, ifb.kind, ifb.alias))


def plan_shaping(state, want):
    """Steps from ``state`` (``TcState``) to ``want`` (``Rates``, or None to remove shaping).

    Only the pieces that differ are touched, so a live change of rate or ceil is one or two
    ``change_class`` steps and the VE's traffic keeps flowing. Raises ``ShapingError`` when the
    IFB name is taken by a device that is not ours, or when ``want`` is set but the link is gone.
    """
    _refuse_foreign_ifb(state)
    link, ifb = state.ifname, ifb_name(state.ifname)
    steps = []
    if want is None:
        if state.redirect_to is not None:
            steps.append(Step("del_filter", link))
        if state.ingress and not state.other_ingress_filters:
            steps.append(Step("del_ingress", link))
        if state.ifb is not None:
            steps.append(Step("del_ifb", ifb))
        return steps

    if state.link_index is None:
        raise ShapingError("interface %s does not exist: the VE is not running (its rate is applied "
                           "when it starts)" % link)
    fresh = state.ifb is None
    if fresh:
        steps.append(Step("create_ifb", ifb, link))
    if fresh or not state.ifb.up:
        steps.append(Step("ifb_up", ifb))
    if fresh or not state.htb_root:
        # a new root qdisc comes without classes
        steps.append(Step("add_htb", ifb))
        classes = {}
    else:
        classes = state.classes
    for classid, rate, ceil in ((PARENT_CLASS, want.ceil, want.ceil), (LEAF_CLASS, want.rate, want.ceil)):
        if classid not in classes:
            steps.append(Step("add_class", ifb, (classid, rate, ceil)))
        elif classes[classid] != (rate, ceil):
            steps.append(Step("change_class", ifb, (classid, rate, ceil)))
    # Redirect last: until the IFB shapes, the VE's packets keep flowing unshaped, never dropped.
    if not state.ingress:
        steps.append(Step("add_ingress", link))
    if fresh or state.redirect_to != state.ifb.index:
        if state.redirect_to is not None:
            steps.append(Step("del_filter", link))
        steps.append(Step("add_filter", link, ifb))
    return steps


# ---------------------------------------------------------------------------------------------
# Netlink (the only part that talks to the kernel)
# ---------------------------------------------------------------------------------------------

def _attr(msg, name):
    return msg.get_attr(name) if msg is not None else None


class TcNetlink:
    """pyroute2's ``IPRoute`` for one job: read a ``TcState``, apply one ``Step``.

    Use as a context manager so the netlink socket is closed. ``ipr`` may be passed in (an
    ``IPRoute`` or ``NetNS``), then it is not closed here.
    """

    def __init__(self, ipr=None):
        self._ipr = ipr
        self._own = ipr is None

    def __enter__(self):
        if self._ipr is None:
            require_pyroute2()
            self._ipr = IPRoute()
        return self

    def __exit__(self, *exc):
        if self._own and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def index(self, name):
        """ifindex of ``name`` or None."""
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def read(self, ifname):
        """The ``TcState`` of ``ifname`` and its IFB."""
        state = TcState(ifname=ifname, link_index=self.index(ifname))
        ifb_index = self.index(ifb_name(ifname))
        if ifb_index is not None:
            link = self._ipr.get_links(ifb_index)[0]
            state.ifb = IfbState(index=ifb_index, kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                                 alias=link.get_attr("IFLA_IFALIAS"), up=bool(link["flags"] & 1))
            for qdisc in self._ipr.get_qdiscs(ifb_index):
                if qdisc["handle"] == HTB_ROOT and qdisc.get_attr("TCA_KIND") == "htb":
                    state.htb_root = True
            if state.htb_root:
                for cls in self._ipr.get_classes(ifb_index):
                    parms = _attr(cls.get_attr("TCA_OPTIONS"), "TCA_HTB_PARMS")
                    if parms is not None:
                        state.classes[cls["handle"]] = (parms["rate"], parms["ceil"])
        if state.link_index is not None:
            self._read_ingress(state)
        return state

    def _read_ingress(self, state):
        index = state.link_index
        state.ingress = any(q.get_attr("TCA_KIND") == "ingress" for q in self._ipr.get_qdiscs(index))
        if not state.ingress:
            return
        for flt in self._ipr.get_filters(index=index, parent=INGRESS):
            if flt["info"] >> 16 != FILTER_PRIO:
                state.other_ingress_filters = True
                continue
            acts = _attr(flt.get_attr("TCA_OPTIONS"), "TCA_U32_ACT")
            for _name, act in (acts or {}).get("attrs", ()):
                if act.get_attr("TCA_ACT_KIND") == "mirred":
                    parms = _attr(act.get_attr("TCA_ACT_OPTIONS"), "TCA_MIRRED_PARMS")
                    if parms is not None:
                        state.redirect_to = parms["ifindex"]
            if state.redirect_to is None:
                state.redirect_to = 0   # a filter of ours without a target: replace it

    def apply(self, step):
        """Carry out one ``Step``; raise ``ShapingError`` naming it when netlink refuses."""
        try:
            self._apply(step)
        except NetlinkError as exc:
            raise ShapingError("could not %s: %s" % (step.describe(), exc))

    def _need(self, name, step):
        index = self.index(name)
        if index is None:
            raise ShapingError("could not %s: interface %s disappeared" % (step.describe(), name))
        return index

    def _apply(self, step):
        ipr = self._ipr
        if step.op == "create_ifb":
            ipr.link("add", ifname=step.dev, kind="ifb", txqlen=IFB_TXQLEN)
            # IFLA_IFALIAS is ignored when creating a link; set it right after
            ipr.link("set", index=self._need(step.dev, step), ifalias=ifb_alias(step.value))
            return
        index = self._need(step.dev, step)
        if step.op == "ifb_up":
            ipr.link("set", index=index, state="up")
        elif step.op == "add_htb":
            ipr.tc("replace", "htb", index, HTB_ROOT, default=LEAF_CLASS & 0xFFFF)
        elif step.op in ("add_class", "change_class"):
            classid, rate, ceil = step.value
            ipr.tc("add-class" if step.op == "add_class" else "change-class", "htb", index, classid,
                   parent=HTB_ROOT if classid == PARENT_CLASS else PARENT_CLASS,
                   rate=rate, ceil=ceil, burst=_burst(rate), cburst=_burst(ceil))
        elif step.op == "add_ingress":
            ipr.tc("add", "ingress", index, INGRESS)
        elif step.op == "add_filter":
            target = self._need(step.value, step)
            ipr.tc("add-filter", "u32", index, parent=INGRESS, prio=FILTER_PRIO, protocol=ETH_P_ALL,
                   keys=["0x0/0x0+0"], target=LEAF_CLASS,
                   action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target})
        elif step.op == "del_filter":
            ipr.tc("del-filter", index=index, parent=INGRESS,
                   info=(FILTER_PRIO << 16) | socket.htons(ETH_P_ALL))
        elif step.op == "del_ingress":
            ipr.tc("del", "ingress", index, INGRESS)
        elif step.op == "del_ifb":
            ipr.link("del", index=index)
        else:  # pragma: no cover - a programming error
            raise ValueError("unknown step %r" % (step.op,))

    def counters(self, ifname):
        """IFLA_STATS64 of ``ifname`` or None when it does not exist."""
        index = self.index(ifname)
        if index is None:
            return None
        return dict(self._ipr.get_links(index)[0].get_attr("IFLA_STATS64") or {})


def _burst(rate_bytes):
    return max(int(rate_bytes * BURST_SECONDS), BURST_MIN_BYTES)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def ensure_shaping(ifname, want, check_mode=False, netlink=None):
    """Bring ``ifname`` to ``want`` (``Rates`` or None). Returns a dict with ``changed``,
    ``actions`` (readable strings), ``before`` and ``after`` (``{'rate_bps', 'ceil_bps'}`` or
    None; ``after`` predicted in check mode). Raises ``ShapingError``.
    """
    with (netlink or TcNetlink()) as nl:
        state = nl.read(ifname)
        before = state.shaping()
        steps = plan_shaping(state, want)
        if not check_mode:
            for step in steps:
                nl.apply(step)
            after = nl.read(ifname).shaping() if steps else before
        else:
            after = want
    return {
        "changed": bool(steps),
        "actions": [s.describe() for s in steps],
        "before": before.as_bps() if before else None,
        "after": after.as_bps() if after else None,
    }


def apply_shaping(ifname, rate_bps, ceil_bps=None, check_mode=False, netlink=None):
    """Shape what the VE sends through host-side link ``ifname``: ``rate_bps`` guaranteed,
    up to ``ceil_bps`` (None: a hard cap at ``rate_bps``). ``rate_bps`` None removes shaping.

    Idempotent: a second call with the same values changes nothing; a change of rate or ceil is
    applied live (HTB class change, no packet dropped). Returns the ``ensure_shaping`` dict.
    The link must exist (VE running) unless shaping is being removed.
    """
    want = None if rate_bps is None else Rates.from_bps(rate_bps, ceil_bps)
    return ensure_shaping(ifname, want, check_mode=check_mode, netlink=netlink)


def read_shaping(ifname, netlink=None):
    """``{'rate_bps': int, 'ceil_bps': int}`` in force on ``ifname`` (ceil equals rate for a hard
    cap), or None when it is not shaped (or does not exist). Values are whole bytes times 8."""
    with (netlink or TcNetlink()) as nl:
        found = nl.read(ifname).shaping()
    return found.as_bps() if found else None


def clear_shaping(ifname, check_mode=False, netlink=None):
    """Remove the shaping of ``ifname`` and its IFB device (also when ``ifname`` is gone, e.g.
    after the VE stopped). Returns the ``ensure_shaping`` dict."""
    return ensure_shaping(ifname, None, check_mode=check_mode, netlink=netlink)


def link_counters(ifname, netlink=None):
    """Traffic of a VE's interface **as the VE sees it**, from its host-side link ``ifname``:
    ``{'rx_bytes', 'tx_bytes', 'rx_packets', 'tx_packets'}`` (what the VE received / sent), or
    None when the link does not exist (VE stopped). The host side's rx is the VE's tx.
    """
    with (netlink or TcNetlink()) as nl:
        stats = nl.counters(ifname)
    if stats is None:
        return None
    return {
        "rx_bytes": stats.get("tx_bytes", 0),
        "tx_bytes": stats.get("rx_bytes", 0),
        "rx_packets": stats.get("tx_packets", 0),
        "tx_packets": stats.get("rx_packets", 0),
    }
