# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Network rate of VEs: one HTB tree per host, fed from the host side of each VE's veth, over
netlink (pyroute2).

PRIVATE: this file is internal to the osvirt.vz collection. Its functions may change or
disappear in any release; do not import them from outside the collection.

What a VE sends arrives on the host as *ingress* of the host side of its veth (``host_link`` in
ve.json, e.g. ``vz1a2b3c4d0``). Linux queues only on egress, so that ingress is redirected to
the host's shaping device, an IFB whose egress carries one HTB tree for all VEs. The redirect is
an nftables netdev ingress chain per link (``table netdev osvirt_vz_shaping``, chain
``ve_<link>``, priority 0, one rule ``fwd to "vzshape0"``), so it runs *after* the VE's
anti-spoofing chain (_antispoof.py, priority -500): a tc redirect would take the packets before
netfilter sees them, and the IFB re-injects them past it::

    vz1a2b3c4d0 ingress --nft fwd--> vzshape0 (ifb, alias "osvirt.vz VE shaping")
    vz5e6f7a8b0 ingress --nft fwd-->   htb 1: default 0
                                                 class 1:1 rate=ceil=capacity of the host
                                                   class 1:<n> rate ceil     one per VE link
                                                   ...
                                                 filter bpf handle <ifindex> name <link> -> 1:<n>

Each VE's class holds its ``rate`` (guaranteed under contention) and ``ceil`` (the most it may
borrow from what other VEs leave unused: Virtuozzo's ratebound=no); ``rate`` alone is a hard
cap. The classifier of a VE is a five-instruction eBPF program that matches the ifindex the
packet was redirected from (``__sk_buff.ingress_ifindex``, set by nft's ``fwd`` for the IFB),
which root inside the VE cannot forge; its filter carries the link name, so the tree says which class is whose. Everything
lives in the host's network namespace: the VE cannot see or remove it. docs/net-rate.md has the
reasons (this kernel has no skbedit, matchall or police).

The shape is decide, act, report: ``TcNetlink.read`` reads a ``TcState``; ``plan_shaping``
(pure) returns the ``Step`` list; ``TcNetlink.apply`` runs one step, under a host-wide lock.
Rates are bits per second in this API; the kernel keeps bytes per second (HTB's 32-bit fields:
at most 34.3 Gbit/s).

This file imports nothing else of the collection but _nft.py when loaded on its own, so the
host role installs a copy (with _nft.py as osvirt_vz_nft.py) next to the LXC hook (roles/host/files/osvirt-vz-net-hook) that applies the
shaping whenever a VE starts.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import socket
import struct
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

try:
    from . import _nft
except ImportError:  # loaded as a plain module, outside the collection
    try:
        import osvirt_vz_nft as _nft  # type: ignore[no-redef]   # the LXC hook's copies
    except ImportError:
        import _nft  # type: ignore[no-redef]   # plugins/module_utils on sys.path (tests, bench/)

# the collection's error class, or _nft's stand-in where this file is loaded on its own
VzError = _nft.VzError

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

SHAPER = "vzshape0"                 # the host's shaping device (one per network namespace)
SHAPER_ALIAS = "osvirt.vz VE shaping"
HTB_ROOT = 0x10000                  # 1:
TOTAL_CLASS = 0x10001               # 1:1  the host's capacity, shared by all VE classes
MINOR_FIRST, MINOR_LAST = 0x10, 0xFFFE
# The redirect: a netdev ingress chain per VE link. Lower priorities run first: the VE's
# anti-spoofing chain (-500) drops before this one (0) takes the packet away.
REDIRECT_TABLE = "osvirt_vz_shaping"
REDIRECT_PRIORITY = 0
# Earlier versions redirected with tc (u32 match-all + mirred on the link's ingress qdisc, this
# priority). Found on a running VE, it is removed once the nft redirect is in: it would take the
# packets before the anti-spoofing chain, and send them nowhere once the shaper is gone.
INGRESS = 0xFFFF0000                # ffff:
LEGACY_REDIRECT_PRIO = 0xC000
CLASSIFIER_PRIO = 1
ETH_P_ALL = 0x0003
# IFB devices default to a 32-packet queue, too short for TCP at a few Mbit/s with GSO.
SHAPER_TXQLEN = 1000

RATE_MIN_BPS = 8000                      # 1 kB/s
RATE_MAX_BPS = (2 ** 32 - 1) * 8         # HTB's 32-bit bytes/s fields (no rate64 in pyroute2 0.7)
# What the VEs of a host may send together unless the host says otherwise (host.json
# "net_capacity"): set it to the uplink's speed so that the tree, not the uplink, is where VEs
# wait, and guarantees hold.
DEFAULT_CAPACITY_BPS = 10 ** 10
# Bucket sizes: 10 ms at the class's rate, at least two full-size frames.
BURST_SECONDS = 0.01
BURST_MIN_BYTES = 3200
LOCK_PATH = "/run/lock/osvirt-vz-shaping.lock"


class ShapingError(VzError):
    """Bad rates, a device we refuse to touch, or a step netlink refused; shown as is."""


def require_pyroute2():
    """Raise ``ShapingError`` with the install hint when pyroute2 cannot be imported."""
    if not HAS_PYROUTE2:
        raise ShapingError(PYROUTE2_MISSING_MSG, exception=PYROUTE2_IMPORT_ERROR)


# ---------------------------------------------------------------------------------------------
# Pure part: rates, state model, planning
# ---------------------------------------------------------------------------------------------

def _check_rate(value, what):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ShapingError("%s must be a whole number of bits per second, got %r" % (what, value))
    if not RATE_MIN_BPS <= value <= RATE_MAX_BPS:
        raise ShapingError("%s %d bit/s is out of range: %d bit/s (1 kB/s) to %d bit/s "
                           "(HTB's limit, 34.3 Gbit/s)" % (what, value, RATE_MIN_BPS, RATE_MAX_BPS))
    return value


@dataclass(frozen=True)
class Rates:
    """Wanted shaping of one VE link in bytes per second, as the kernel keeps it."""

    rate: int
    ceil: int

    @classmethod
    def from_bps(cls, rate_bps, ceil_bps=None):
        """Validate bits per second and convert (rounded down to whole bytes).

        ``ceil_bps`` None means a hard cap at ``rate_bps``; a ceil below the rate is refused.
        """
        _check_rate(rate_bps, "net.rate")
        if ceil_bps is None:
            ceil_bps = rate_bps
        _check_rate(ceil_bps, "net.ceil")
        if ceil_bps < rate_bps:
            raise ShapingError("net.ceil (%d bit/s) is below net.rate (%d bit/s): ceil is the most "
                               "a VE may take, so it must be at least its rate" % (ceil_bps, rate_bps))
        return cls(rate=rate_bps // 8, ceil=ceil_bps // 8)

    def as_bps(self):
        """``{'rate_bps': ..., 'ceil_bps': ...}`` as ``read_shaping`` returns it."""
        return {"rate_bps": self.rate * 8, "ceil_bps": self.ceil * 8}


def capacity_bytes(capacity_bps):
    """The host's capacity in bytes/s from bits/s (None: ``DEFAULT_CAPACITY_BPS``)."""
    return _check_rate(DEFAULT_CAPACITY_BPS if capacity_bps is None else capacity_bps,
                       "net capacity of the host") // 8


@dataclass
class ShaperState:
    """The device named ``SHAPER``: ours only if kind is ifb and the alias is ours."""

    index: int
    kind: str | None
    alias: str | None
    up: bool


@dataclass
class TcState:
    """What the kernel has for one VE link and the host's shaping tree.

    ``link_index`` None: the link does not exist (the VE is not running).
    ``classifiers``: bpf filters on the shaper, handle -> (link name, classid);
    ``link_indexes``: link name -> its current ifindex (None if gone), for every link a
    classifier names, so that filters of stopped VEs can be found.
    """

    ifname: str
    link_index: int | None = None
    redirect_to: int | None = None              # our redirect chain's target ifindex (0: stale chain)
    legacy_redirect: bool = False               # an earlier version's tc redirect on the link
    shaper: ShaperState | None = None
    htb_root: bool = False                      # htb 1: is the shaper's root qdisc
    classes: dict = field(default_factory=dict)      # classid -> (rate, ceil) bytes/s
    classifiers: dict = field(default_factory=dict)  # handle -> (link name, classid)
    link_indexes: dict = field(default_factory=dict)

    def own_classifiers(self):
        """Handles of the classifiers that name this link, current one first."""
        mine = [h for h, (name, _cid) in self.classifiers.items() if name == self.ifname]
        return sorted(mine, key=lambda h: h != self.link_index)

    def shaping(self):
        """The ``Rates`` in force for this link, or None when its traffic is not shaped by us."""
        if (self.link_index is None or self.shaper is None or not self.htb_root
                or self.redirect_to != self.shaper.index or not self.shaper.up):
            return None
        current = self.classifiers.get(self.link_index)
        if current is None or current[0] != self.ifname or current[1] not in self.classes:
            return None
        rate, ceil = self.classes[current[1]]
        return Rates(rate=rate, ceil=ceil)


@dataclass(frozen=True)
class Step:
    """One netlink step. ``op`` is a key of ``_DESCRIPTIONS``; ``value`` its argument."""

    op: str
    dev: str
    value: object = None

    _DESCRIPTIONS = {
        "create_shaper": "create the shaping device {dev}",
        "shaper_up": "bring {dev} up",
        "add_htb": "add htb qdisc 1: to {dev}",
        "add_class": "add class {cls} to {dev} (rate {rate} ceil {ceil})",
        "change_class": "change class {cls} of {dev} to rate {rate} ceil {ceil}",
        "del_class": "remove class {cls} from {dev}",
        "add_classifier": "send packets from {link} (ifindex {handle}) to class {cls} of {dev}",
        "del_classifier": "remove the classifier of {link} (ifindex {handle}) from {dev}",
        "add_redirect": "redirect what {dev} receives to {target}",
        "del_redirect": "remove the shaping redirect from {dev}",
        "del_legacy_redirect": "remove the tc redirect of an earlier osvirt.vz from {dev}",
        "del_shaper": "delete the shaping device {dev} (no VE is shaped)",
    }

    def describe(self):
        """Readable one-line text for a module's ``actions`` result."""
        text = self._DESCRIPTIONS[self.op]
        if self.op in ("add_class", "change_class"):
            classid, rate, ceil = self.value
            return text.format(dev=self.dev, cls=_classid(classid), rate=format_bps(rate * 8),
                               ceil=format_bps(ceil * 8))
        if self.op == "del_class":
            return text.format(dev=self.dev, cls=_classid(self.value))
        if self.op in ("add_classifier", "del_classifier"):
            handle, link, classid = self.value
            return text.format(dev=self.dev, handle=handle, link=link, cls=_classid(classid))
        return text.format(dev=self.dev, target=self.value)


def _classid(classid):
    return "%x:%x" % (classid >> 16, classid & 0xFFFF)


def format_bps(bps):
    """``8000000`` -> ``'8Mbit'``, ``1500000`` -> ``'1500kbit'`` (exact, for messages)."""
    for unit, factor in (("Gbit", 10 ** 9), ("Mbit", 10 ** 6), ("kbit", 10 ** 3)):
        if bps >= factor and bps % factor == 0:
            return "%d%s" % (bps // factor, unit)
    return "%dbit" % bps


def _free_minor(link, taken):
    """A class minor for ``link``: from a hash of its name (stable across restarts), the next
    free one when taken."""
    span = MINOR_LAST - MINOR_FIRST + 1
    start = int(hashlib.sha1(link.encode()).hexdigest(), 16) % span
    for offset in range(span):
        classid = HTB_ROOT | (MINOR_FIRST + (start + offset) % span)
        if classid not in taken:
            return classid
    raise ShapingError("no free HTB class left on %s for %s" % (SHAPER, link))


def _refuse_foreign_shaper(state):
    shaper = state.shaper
    if shaper is not None and (shaper.kind != "ifb" or shaper.alias != SHAPER_ALIAS):
        raise ShapingError("device %s exists but was not made by osvirt.vz (kind %s, alias %r); refusing to "
                           "touch it" % (SHAPER, shaper.kind, shaper.alias))


def _stale_classifiers(state):
    """Classifiers of links that are gone or were re-created (VE stopped or restarted without
    its post-stop hook), other than this link's."""
    return [h for h, (name, _cid) in sorted(state.classifiers.items())
            if name != state.ifname and state.link_indexes.get(name) != h]


def _drop_orphans(classes, classifiers, keep=None):
    """``del_class`` steps for VE classes no classifier uses (left by a run that stopped
    between adding a class and its classifier); updates ``classes``."""
    used = {classid for _name, classid in classifiers.values()}
    orphans = sorted(c for c in classes if c not in (TOTAL_CLASS, keep) and c not in used)
    for classid in orphans:
        del classes[classid]
    return [Step("del_class", SHAPER, classid) for classid in orphans]


def plan_shaping(state, want, capacity=None):
    """Steps from ``state`` (``TcState``) to ``want`` (``Rates``, or None to remove this link's
    shaping). ``capacity`` is the host's capacity in bytes/s (None: keep what the tree has, or
    the default for a new tree).

    Only the pieces that differ are touched, so a live change of rate or ceil is one
    ``change_class`` step and the VE's traffic keeps flowing. Leftovers of stopped VEs are
    removed on the way; the shaping device goes when no VE is shaped any more. Raises
    ``ShapingError`` when ``SHAPER`` is a device that is not ours, or when ``want`` is set but
    the link is gone.
    """
    _refuse_foreign_shaper(state)
    link = state.ifname
    steps = []
    live = state.shaper is not None and state.htb_root
    classes = dict(state.classes) if live else {}
    classifiers = dict(state.classifiers) if live else {}

    def drop(handle):
        name, classid = classifiers.pop(handle)
        steps.append(Step("del_classifier", SHAPER, (handle, name, classid)))
        if classid in classes and all(c != classid for _n, c in classifiers.values()):
            steps.append(Step("del_class", SHAPER, classid))
            del classes[classid]

    if want is None:
        if state.legacy_redirect:
            steps.append(Step("del_legacy_redirect", link))
        if state.redirect_to is not None:
            steps.append(Step("del_redirect", link))
        if state.shaper is None:
            return steps
        for handle in [h for h in state.own_classifiers() if h in classifiers] + \
                [h for h in _stale_classifiers(state) if h in classifiers]:
            drop(handle)
        steps += _drop_orphans(classes, classifiers)
        if not classifiers and not [c for c in classes if c != TOTAL_CLASS]:
            steps = [s for s in steps if s.dev != SHAPER] + [Step("del_shaper", SHAPER)]
        return steps

    if state.link_index is None:
        raise ShapingError("interface %s does not exist: the VE is not running (its rate is applied "
                           "when it starts)" % link)
    if state.shaper is None:
        steps += [Step("create_shaper", SHAPER), Step("shaper_up", SHAPER)]
    elif not state.shaper.up:
        steps.append(Step("shaper_up", SHAPER))
    if not live:
        # a new root qdisc comes without classes or filters
        steps.append(Step("add_htb", SHAPER))
    total = capacity_bytes(None) if capacity is None and TOTAL_CLASS not in classes else capacity
    if TOTAL_CLASS not in classes:
        steps.append(Step("add_class", SHAPER, (TOTAL_CLASS, total, total)))
        classes[TOTAL_CLASS] = (total, total)
    elif total is not None and classes[TOTAL_CLASS] != (total, total):
        steps.append(Step("change_class", SHAPER, (TOTAL_CLASS, total, total)))
    for handle in _stale_classifiers(state):
        drop(handle)

    own = [h for h in state.own_classifiers() if h in classifiers]
    classid = classifiers[own[0]][1] if own and classifiers[own[0]][1] in classes else None
    for handle in own:
        if handle != state.link_index or classid is None:
            name, old = classifiers.pop(handle)
            steps.append(Step("del_classifier", SHAPER, (handle, name, old)))
    steps += _drop_orphans(classes, classifiers, keep=classid)
    if classid is None:
        taken = set(classes) | {c for _n, c in classifiers.values()}
        classid = _free_minor(link, taken)
        steps.append(Step("add_class", SHAPER, (classid, want.rate, want.ceil)))
    elif classes[classid] != (want.rate, want.ceil):
        steps.append(Step("change_class", SHAPER, (classid, want.rate, want.ceil)))
    if classifiers.get(state.link_index) != (link, classid):
        steps.append(Step("add_classifier", SHAPER, (state.link_index, link, classid)))

    # Redirect last: until the tree classifies the VE's packets, they keep flowing unshaped. The
    # chain is replaced in one transaction, so a stale one (another shaper) needs no removal.
    if state.shaper is None or state.redirect_to != state.shaper.index:
        steps.append(Step("add_redirect", link, SHAPER))
    if state.legacy_redirect:
        steps.append(Step("del_legacy_redirect", link))
    return steps


# ---------------------------------------------------------------------------------------------
# The classifier: a tiny eBPF program (the only way this kernel can tell VEs apart safely)
# ---------------------------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_SKB_INGRESS_IFINDEX = 36           # offsetof(struct __sk_buff, ingress_ifindex)


def _insn(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def classifier_program(ifindex):
    """eBPF (cls_bpf, classid mode): -1 (the filter's classid) for packets redirected from
    ``ifindex``, 0 (no match) for the rest."""
    return b"".join([
        _insn(0xB7, dst=0, imm=0),                                  # r0 = 0
        _insn(0x61, dst=2, src=1, off=_SKB_INGRESS_IFINDEX),        # r2 = skb->ingress_ifindex
        _insn(0x55, dst=2, off=1, imm=ifindex),                     # if r2 != ifindex goto +1
        _insn(0xB7, dst=0, imm=-1),                                 # r0 = -1
        _insn(0x95),                                                # exit
    ])


def load_classifier(ifindex, name):
    """Load ``classifier_program(ifindex)``; returns its file descriptor (close it after the
    filter holds the program)."""
    number = _SYS_BPF.get(os.uname().machine)
    if number is None:
        raise ShapingError("network rate shaping loads an eBPF classifier, which is only wired up for %s here, "
                           "not %s" % (", ".join(sorted(_SYS_BPF)), os.uname().machine))
    program = classifier_program(ifindex)
    insns = ctypes.create_string_buffer(program, len(program))
    license_text = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    prog_name = "".join(c for c in name if c.isalnum() or c in "_.")[:15].encode()
    attr = struct.pack("<IIQQIIQII16s", _BPF_PROG_TYPE_SCHED_CLS, len(program) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_text), 1, len(log), ctypes.addressof(log), 0, 0, prog_name)
    attr = ctypes.create_string_buffer(attr + b"\0" * (128 - len(attr)), 128)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, _BPF_PROG_LOAD, attr, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise ShapingError("could not load the eBPF classifier of %s: %s%s" % (
            name, os.strerror(err), (": " + log.value.decode(errors="replace").strip()) if log.value else ""))
    return fd


# ---------------------------------------------------------------------------------------------
# Netlink (the only part that talks to the kernel)
# ---------------------------------------------------------------------------------------------

def _attr(msg, name):
    return msg.get_attr(name) if msg is not None else None


def redirect_chain(ifname):
    """Name of the nft chain that redirects ``ifname`` to the shaper."""
    return "ve_" + _nft.check_name(ifname, "VE link")


def redirect_header(ifname):
    """Declaration of the redirect chain on the ingress of ``ifname``."""
    return 'type filter hook ingress device "%s" priority %d; policy accept;' % (ifname, REDIRECT_PRIORITY)


def redirect_rules(shaper_index):
    """The redirect's one rule. nft resolves the device name to its ifindex when the rule is
    loaded, so the ifindex is part of the rule text (and of the chain's digest): a shaper made
    again gets a new ifindex, and the chain is rewritten instead of sending to nowhere."""
    return ['fwd to "%s" comment "ifindex %d"' % (SHAPER, shaper_index)]


def read_redirect(ifname, shaper_index):
    """``shaper_index`` when the redirect chain of ``ifname`` sends to that shaper, 0 when a chain
    of ours sends elsewhere (stale), None when there is none. The chain outlives its link."""
    chain = redirect_chain(ifname)
    try:
        found = _nft.chains("netdev", REDIRECT_TABLE).get(chain)
    except _nft.NftError as exc:
        raise ShapingError("could not read the shaping redirect of %s: %s" % (ifname, exc.message))
    if found is None:
        return None
    if shaper_index is not None and found["digest"] == _nft.digest(redirect_header(ifname), redirect_rules(shaper_index)):
        return shaper_index
    return 0


class TcNetlink:
    """pyroute2's ``IPRoute`` for one job: read a ``TcState``, apply one ``Step``.

    Use as a context manager so the netlink socket is closed. ``ipr`` may be passed in, then it
    is not closed here. It must work in this process (pyroute2's ``NetNS`` runs in a helper
    process, where the classifier's file descriptor does not exist).
    """

    def __init__(self, ipr=None, lock_path=LOCK_PATH):
        self._ipr = ipr
        self._own = ipr is None
        self._lock_path = lock_path

    def __enter__(self):
        if self._ipr is None:
            require_pyroute2()
            self._ipr = IPRoute()
        return self

    def __exit__(self, *exc):
        if self._own and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    @contextmanager
    def lock(self):
        """Host-wide lock around read-plan-apply: VEs starting in parallel share the tree."""
        os.makedirs(os.path.dirname(self._lock_path), exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def index(self, name):
        """ifindex of ``name`` or None."""
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def read(self, ifname):
        """The ``TcState`` of ``ifname`` and of the shaping tree."""
        state = TcState(ifname=ifname, link_index=self.index(ifname))
        shaper = self.index(SHAPER)
        if shaper is not None:
            link = self._ipr.get_links(shaper)[0]
            state.shaper = ShaperState(index=shaper, kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
                                       alias=link.get_attr("IFLA_IFALIAS"), up=bool(link["flags"] & 1))
            state.htb_root = any(q["handle"] == HTB_ROOT and q.get_attr("TCA_KIND") == "htb"
                                 for q in self._ipr.get_qdiscs(shaper))
            if state.htb_root and state.shaper.kind == "ifb":
                self._read_tree(state, shaper)
        state.redirect_to = read_redirect(ifname, shaper)
        if state.link_index is not None:
            state.legacy_redirect = self._legacy_redirect(state.link_index)
        return state

    def _legacy_redirect(self, index):
        if not any(q.get_attr("TCA_KIND") == "ingress" for q in self._ipr.get_qdiscs(index)):
            return False
        return any(flt["info"] >> 16 == LEGACY_REDIRECT_PRIO and flt.get_attr("TCA_KIND") == "u32"
                   for flt in self._ipr.get_filters(index=index, parent=INGRESS))

    def _read_tree(self, state, shaper):
        for cls in self._ipr.get_classes(shaper):
            parms = _attr(cls.get_attr("TCA_OPTIONS"), "TCA_HTB_PARMS")
            if parms is not None:
                state.classes[cls["handle"]] = (parms["rate"], parms["ceil"])
        for flt in self._ipr.get_filters(index=shaper, parent=HTB_ROOT):
            options = flt.get_attr("TCA_OPTIONS")
            name = _attr(options, "TCA_BPF_NAME")
            if flt.get_attr("TCA_KIND") == "bpf" and name and flt["handle"]:
                state.classifiers[flt["handle"]] = (name, _attr(options, "TCA_BPF_CLASSID"))
        for name, _cid in state.classifiers.values():
            if name not in state.link_indexes:
                state.link_indexes[name] = self.index(name)

    def apply(self, step):
        """Carry out one ``Step``; raise ``ShapingError`` naming it when netlink or nft refuses."""
        try:
            self._apply(step)
        except NetlinkError as exc:
            raise ShapingError("could not %s: %s" % (step.describe(), exc))
        except _nft.NftError as exc:
            raise ShapingError("could not %s: %s" % (step.describe(), exc.message))

    def _need(self, name, step):
        index = self.index(name)
        if index is None:
            raise ShapingError("could not %s: interface %s disappeared" % (step.describe(), name))
        return index

    def _apply(self, step):
        ipr = self._ipr
        if step.op == "del_redirect":       # also when the link is gone: the chain outlives it
            _nft.delete_chain("netdev", REDIRECT_TABLE, redirect_chain(step.dev))
            return
        if step.op == "create_shaper":
            ipr.link("add", ifname=step.dev, kind="ifb", txqlen=SHAPER_TXQLEN)
            # IFLA_IFALIAS is ignored when creating a link; set it right after
            ipr.link("set", index=self._need(step.dev, step), ifalias=SHAPER_ALIAS)
            return
        index = self._need(step.dev, step)
        if step.op == "shaper_up":
            ipr.link("set", index=index, state="up")
        elif step.op == "add_htb":
            ipr.tc("replace", "htb", index, HTB_ROOT, default=0)
        elif step.op in ("add_class", "change_class"):
            classid, rate, ceil = step.value
            ipr.tc("add-class" if step.op == "add_class" else "change-class", "htb", index, classid,
                   parent=HTB_ROOT if classid == TOTAL_CLASS else TOTAL_CLASS,
                   rate=rate, ceil=ceil, burst=_burst(rate), cburst=_burst(ceil))
        elif step.op == "del_class":
            ipr.tc("del-class", "htb", index, step.value, parent=TOTAL_CLASS)
        elif step.op == "add_classifier":
            handle, link, classid = step.value
            fd = load_classifier(handle, link)
            try:
                ipr.tc("add-filter", "bpf", index, handle, parent=HTB_ROOT, prio=CLASSIFIER_PRIO,
                       protocol=ETH_P_ALL, fd=fd, name=link, classid=classid)
            finally:
                os.close(fd)
        elif step.op == "del_classifier":
            ipr.tc("del-filter", index=index, handle=step.value[0], parent=HTB_ROOT,
                   info=(CLASSIFIER_PRIO << 16) | socket.htons(ETH_P_ALL))
        elif step.op == "add_redirect":
            target = self._need(step.value, step)
            _nft.replace_chain("netdev", REDIRECT_TABLE, redirect_chain(step.dev), redirect_header(step.dev),
                               redirect_rules(target))
        elif step.op == "del_legacy_redirect":
            ipr.tc("del-filter", index=index, parent=INGRESS,
                   info=(LEGACY_REDIRECT_PRIO << 16) | socket.htons(ETH_P_ALL))
        elif step.op == "del_shaper":
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

def ensure_shaping(ifname, want, capacity_bps=None, check_mode=False, netlink=None, only_if_gone=False):
    """Bring ``ifname`` to ``want`` (``Rates`` or None). ``capacity_bps``: what all VEs of the
    host may send together (None: keep the tree's, or ``DEFAULT_CAPACITY_BPS`` for a new one).
    ``only_if_gone`` (removal only): do nothing while a link of that name exists.

    Returns a dict with ``changed``, ``actions`` (readable strings), ``before`` and ``after``
    (``{'rate_bps', 'ceil_bps'}`` or None; ``after`` predicted in check mode). Raises
    ``ShapingError``.
    """
    capacity = None if capacity_bps is None else capacity_bytes(capacity_bps)
    with (netlink or TcNetlink()) as nl:
        # Read and plan without the host-wide lock first: most calls (every VE start and stop
        # runs the hook, the module shapes again after it) find nothing to do, and under many
        # parallel runs holding the lock for them queued every VE of the host behind it. Only a
        # plan with steps takes the lock, and reads and plans again under it.
        try:
            state = nl.read(ifname)
            steps = _plan_steps(state, want, capacity, only_if_gone)
            settled = not steps or check_mode
        except (NetlinkError, VzError):
            settled = False   # e.g. the tree changed while it was read: say it under the lock
        if not settled:
            with nl.lock():
                state = nl.read(ifname)
                steps = _plan_steps(state, want, capacity, only_if_gone)
                if steps and not check_mode:
                    for step in steps:
                        nl.apply(step)
                    after = nl.read(ifname).shaping()
        before = state.shaping()
    if steps is None:   # only_if_gone, and the link is there: nothing of it is ours to touch
        return {"changed": False, "actions": [], "before": before and before.as_bps(),
                "after": before and before.as_bps()}
    if check_mode:
        after = want
    elif not steps:
        after = before
    return {
        "changed": bool(steps),
        "actions": [s.describe() for s in steps],
        "before": before.as_bps() if before else None,
        "after": after.as_bps() if after else None,
    }


def _plan_steps(state, want, capacity, only_if_gone):
    """``plan_shaping``, or None when ``only_if_gone`` finds the link there."""
    if only_if_gone and want is None and state.link_index is not None:
        return None
    return plan_shaping(state, want, capacity)


def apply_shaping(ifname, rate_bps, ceil_bps=None, capacity_bps=None, check_mode=False, netlink=None):
    """Shape what the VE sends through host-side link ``ifname``: ``rate_bps`` guaranteed, up to
    ``ceil_bps`` when other VEs leave capacity unused (None: a hard cap at ``rate_bps``).
    ``rate_bps`` None removes the shaping. ``capacity_bps`` sets what all shaped VEs of the host
    may send together (None: unchanged; a new tree gets ``DEFAULT_CAPACITY_BPS``).

    Idempotent: a second call with the same values changes nothing; a change of rate or ceil is
    applied live (HTB class change, no packet dropped). Returns the ``ensure_shaping`` dict.
    The link must exist (VE running) unless shaping is being removed.
    """
    want = None if rate_bps is None else Rates.from_bps(rate_bps, ceil_bps)
    return ensure_shaping(ifname, want, capacity_bps=capacity_bps, check_mode=check_mode, netlink=netlink)


def read_shaping(ifname, netlink=None):
    """``{'rate_bps': int, 'ceil_bps': int}`` in force on ``ifname`` (ceil equals rate for a hard
    cap), or None when it is not shaped (or does not exist). Values are whole bytes times 8."""
    with (netlink or TcNetlink()) as nl:
        found = nl.read(ifname).shaping()
    return found.as_bps() if found else None


def clear_shaping(ifname, check_mode=False, netlink=None, only_if_gone=False):
    """Remove the shaping of ``ifname`` (also when ``ifname`` is gone, e.g. after the VE
    stopped); the shaping device goes with the last shaped VE. Returns the ``ensure_shaping``
    dict.

    ``only_if_gone``: leave it while a link of that name exists. The post-stop hook uses it: LXC
    may still be tearing down a start that failed while the next start of the VE has made a new
    link and shaped it.
    """
    return ensure_shaping(ifname, None, check_mode=check_mode, netlink=netlink, only_if_gone=only_if_gone)


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
