# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host networking of osvirt.vz: bridges, over netlink with pyroute2.

PRIVATE: this file is internal to the osvirt.vz collection. Its functions and classes may change
or disappear in any release; do not import them from outside the collection.

The shape is decide, act, report:

- ``BridgeSpec.from_params`` validates what the user asked for (pure, no netlink);
- ``Netlink.read_bridge`` reads what the kernel has into a ``LinkState``;
- ``plan_bridge`` compares the two and returns a list of ``Change`` objects (pure);
- ``Netlink.apply`` carries out one ``Change``; ``ensure_bridge`` ties it together and honours
  check mode.

Addresses are handled per family (``diff_addresses`` is family-neutral) so that IPv6, NAT and
address pools can be added later as further fields of ``BridgeSpec`` and further ``Change``
operations without reshaping the rest.
"""

from __future__ import annotations

import ipaddress
import socket
import traceback
from dataclasses import dataclass, field

from . import _validate
from ._errors import VzError

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError:
    # The module reports this with one clear message; see ``require_pyroute2``.
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()

    class NetlinkError(Exception):  # type: ignore[no-redef]
        """Stand-in so that ``except NetlinkError`` stays valid without pyroute2."""


PYROUTE2_MISSING_MSG = (
    "python3-pyroute2 is required on the host (Debian/Ubuntu: apt-get install python3-pyroute2); "
    "the Python running this module could not import pyroute2"
)

MTU_MIN = 68
MTU_MAX = 65535
# A new Linux bridge without ports has this MTU unless told otherwise.
DEFAULT_BRIDGE_MTU = 1500
_IFF_UP = 0x1


class NetError(VzError):
    """A host network state we refuse to change, or a step netlink refused; shown as is.

    Bad input raises the collection's ``VzError`` (as ``_validate`` does); catch ``VzError``.
    """


# ---------------------------------------------------------------------------------------------
# Validation (pure)
# ---------------------------------------------------------------------------------------------

def validate_mtu(mtu):
    """Return ``mtu`` as int (or None when unset); raise ``VzError`` outside 68-65535."""
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise VzError("mtu must be an integer, got %r" % (mtu,))
    if not MTU_MIN <= mtu <= MTU_MAX:
        raise VzError("mtu %d is out of range %d-%d" % (mtu, MTU_MIN, MTU_MAX))
    return mtu


def normalize_ipv4(addresses):
    """Validate a list of IPv4 interface addresses in CIDR form and return them canonical.

    ``['10.20.0.1/24']`` stays as is, ``['10.020.0.1/24']`` is rejected by ``ipaddress``.
    The order of the input is kept (the first address of a subnet becomes the kernel's primary
    address). ``None`` means "do not manage addresses" and is returned unchanged.

    Raises ``VzError`` for: a missing prefix length, a non-IPv4 value, a network or broadcast
    address used as a host address, loopback/multicast/unspecified addresses, and the same
    address listed twice.
    """
    if addresses is None:
        return None
    if isinstance(addresses, str):
        raise VzError("ipv4 must be a list of addresses like 10.20.0.1/24, not a string")
    result = []
    seen = {}
    for raw in addresses:
        # Syntax, prefix length, network and broadcast addresses: the collection-wide rules.
        iface = _validate.ipv4_interface(raw.strip() if isinstance(raw, str) else raw,
                                         "ipv4 address")
        text = iface.with_prefixlen
        ip = iface.ip
        if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip == ipaddress.IPv4Address(
                "255.255.255.255"):
            raise VzError("ipv4 address %s cannot be assigned to a bridge" % text)
        if ip in seen:
            raise VzError(
                "ipv4 address %s is listed twice (%s and %s)" % (ip, seen[ip], iface.with_prefixlen))
        seen[ip] = iface.with_prefixlen
        result.append(iface.with_prefixlen)
    return result


def sort_addresses(addresses):
    """Return CIDR address strings in numeric order (stable output for results and diffs)."""
    return sorted(addresses, key=ipaddress.ip_interface)


def diff_addresses(current, desired):
    """Compare two lists of CIDR strings of one family.

    Returns ``(to_add, to_remove)``: ``to_add`` in the order of ``desired``, ``to_remove`` in the
    order of ``current``. An address with another prefix length counts as a different address
    (it is removed and added again).
    """
    current_set = set(current)
    desired_set = set(desired)
    to_add = [a for a in desired if a not in current_set]
    to_remove = [a for a in current if a not in desired_set]
    return to_add, to_remove


# ---------------------------------------------------------------------------------------------
# Model (pure)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BridgeSpec:
    """What the user asked for. ``ipv4``/``mtu`` of None mean "leave as the kernel has it".

    Names follow ``_validate.ifname``: 1-15 of ``[A-Za-z0-9_.-]``, not ``.`` or ``..``.
    """

    name: str
    state: str = "present"
    ipv4: tuple | None = None
    mtu: int | None = None

    @classmethod
    def from_params(cls, params):
        """Build a validated spec from module parameters; raise ``VzError`` on bad input."""
        state = params.get("state") or "present"
        if state not in ("present", "absent"):
            raise VzError("state must be present or absent, got %r" % (state,))
        ipv4 = normalize_ipv4(params.get("ipv4"))
        return cls(
            name=_validate.ifname(params.get("name"), "bridge name"),
            state=state,
            ipv4=None if ipv4 is None else tuple(ipv4),
            mtu=validate_mtu(params.get("mtu")),
        )


@dataclass
class LinkState:
    """What the kernel has under one interface name."""

    name: str
    index: int
    kind: str | None          # IFLA_INFO_KIND: 'bridge', 'veth', ... or None (lo, physical)
    mtu: int
    up: bool                  # administrative state (IFF_UP), not carrier
    ipv4: list = field(default_factory=list)

    @property
    def is_bridge(self):
        """True if this link is a Linux bridge."""
        return self.kind == "bridge"


@dataclass(frozen=True)
class Change:
    """One step towards the wanted state. ``op`` is one of the ``_DESCRIPTIONS`` keys."""

    op: str
    name: str
    value: object = None

    _DESCRIPTIONS = {
        "create": "create bridge {name}",
        "set_mtu": "set mtu of {name} to {value}",
        "up": "bring {name} up",
        "add_ipv4": "add {value} to {name}",
        "del_ipv4": "remove {value} from {name}",
        "delete": "delete bridge {name}",
    }

    def describe(self):
        """Readable one-line text for the module's ``actions`` result."""
        text = self._DESCRIPTIONS[self.op].format(name=self.name, value=self.value)
        if self.op == "create" and self.value:
            text += " with mtu %s" % self.value
        return text


def describe_bridge(name, current):
    """Result/diff dict for a bridge: ``name``, ``state``, ``ipv4`` (sorted), ``mtu``."""
    if current is None:
        return {"name": name, "state": "absent", "ipv4": [], "mtu": None}
    return {
        "name": name,
        "state": "present",
        "ipv4": sort_addresses(current.ipv4),
        "mtu": current.mtu,
    }


def _refuse_non_bridge(spec, current):
    if current is not None and not current.is_bridge:
        kind = current.kind or "none, like loopback or a physical NIC"
        raise NetError(
            "interface %s exists but is not a bridge (link kind: %s); refusing to %s it"
            % (spec.name, kind, "delete" if spec.state == "absent" else "manage"))


def plan_bridge(spec, current):
    """Return the list of ``Change`` needed to go from ``current`` (``LinkState`` or None) to
    ``spec``. Raises ``NetError`` when an interface of that name exists but is not a bridge.
    """
    _refuse_non_bridge(spec, current)
    changes = []
    if spec.state == "absent":
        if current is not None:
            changes.append(Change("delete", spec.name))
        return changes

    if current is None:
        changes.append(Change("create", spec.name, spec.mtu))
        changes.append(Change("up", spec.name))
        for addr in spec.ipv4 or ():
            changes.append(Change("add_ipv4", spec.name, addr))
        return changes

    if spec.mtu is not None and current.mtu != spec.mtu:
        changes.append(Change("set_mtu", spec.name, spec.mtu))
    if not current.up:
        changes.append(Change("up", spec.name))
    if spec.ipv4 is not None:
        to_add, to_remove = diff_addresses(current.ipv4, list(spec.ipv4))
        # Removals first: an old address may sit in the same subnet as a new one.
        changes.extend(Change("del_ipv4", spec.name, a) for a in to_remove)
        changes.extend(Change("add_ipv4", spec.name, a) for a in to_add)
    return changes


def predict_bridge(spec, current):
    """The ``describe_bridge`` dict the kernel will show after ``plan_bridge`` has been applied.

    Used for check mode and the diff's ``after``.
    """
    if spec.state == "absent":
        return describe_bridge(spec.name, None)
    if current is None:
        ipv4 = list(spec.ipv4 or ())
        mtu = spec.mtu if spec.mtu is not None else DEFAULT_BRIDGE_MTU
    else:
        ipv4 = list(spec.ipv4) if spec.ipv4 is not None else list(current.ipv4)
        mtu = spec.mtu if spec.mtu is not None else current.mtu
    return {"name": spec.name, "state": "present", "ipv4": sort_addresses(ipv4), "mtu": mtu}


# ---------------------------------------------------------------------------------------------
# Netlink (the only part that talks to the kernel)
# ---------------------------------------------------------------------------------------------

def _broadcast(cidr):
    """Broadcast address like ``ip addr add ... brd +``; None for /31 and /32."""
    net = ipaddress.IPv4Interface(cidr).network
    return str(net.broadcast_address) if net.prefixlen <= 30 else None


class Netlink:
    """Thin wrapper around pyroute2's ``IPRoute``: read one link, apply one ``Change``.

    Use as a context manager so the netlink socket is closed.
    """

    def __init__(self, ipr=None):
        self._ipr = ipr

    def __enter__(self):
        if self._ipr is None:
            self._ipr = IPRoute()
        return self

    def __exit__(self, *exc):
        self._ipr.close()

    def _index(self, name):
        found = self._ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def read_bridge(self, name):
        """Return the ``LinkState`` of interface ``name``, or None if there is none."""
        index = self._index(name)
        if index is None:
            return None
        link = self._ipr.get_links(index)[0]
        ipv4 = []
        for msg in self._ipr.get_addr(family=socket.AF_INET, index=index):
            # IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on p2p links).
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            ipv4.append("%s/%d" % (addr, msg["prefixlen"]))
        return LinkState(
            name=name,
            index=index,
            kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
            mtu=link.get_attr("IFLA_MTU"),
            up=bool(link["flags"] & _IFF_UP),
            ipv4=ipv4,
        )

    def apply(self, change):
        """Carry out one ``Change``; raise ``NetError`` naming the step when netlink refuses."""
        try:
            self._apply(change)
        except NetlinkError as exc:
            raise NetError("could not %s: %s" % (change.describe(), exc))

    def _apply(self, change):
        if change.op == "create":
            kwargs = {"ifname": change.name, "kind": "bridge"}
            if change.value:
                kwargs["mtu"] = change.value
            self._ipr.link("add", **kwargs)
            return
        index = self._index(change.name)
        if index is None:
            raise NetError("could not %s: interface disappeared" % change.describe())
        if change.op == "delete":
            self._ipr.link("del", index=index)
        elif change.op == "set_mtu":
            self._ipr.link("set", index=index, mtu=change.value)
        elif change.op == "up":
            self._ipr.link("set", index=index, state="up")
        elif change.op in ("add_ipv4", "del_ipv4"):
            iface = ipaddress.IPv4Interface(change.value)
            kwargs = {"index": index, "address": str(iface.ip), "prefixlen": iface.network.prefixlen}
            if change.op == "add_ipv4":
                brd = _broadcast(change.value)
                if brd:
                    kwargs["broadcast"] = brd
                self._ipr.addr("add", **kwargs)
            else:
                self._ipr.addr("del", **kwargs)
        else:  # pragma: no cover - a programming error, not a user error
            raise ValueError("unknown change %r" % (change.op,))


def ensure_bridge(spec, check_mode=False, netlink=None):
    """Bring the host to ``spec``; in check mode only compute what would change.

    Returns a dict with ``changed``, ``actions`` (readable strings), ``bridge`` (the state after,
    predicted in check mode) and ``diff`` (``before``/``after`` dicts). Raises ``NetError``.
    """
    with (netlink or Netlink()) as nl:
        current = nl.read_bridge(spec.name)
        changes = plan_bridge(spec, current)
        before = describe_bridge(spec.name, current)
        if check_mode or not changes:
            after = predict_bridge(spec, current)
        else:
            for change in changes:
                if change.op != "add_ipv4":
                    nl.apply(change)
            if spec.state == "present" and spec.ipv4:
                # Add addresses after all removals, against a fresh read: deleting a primary
                # address also deletes the secondaries of its subnet (unless the sysctl
                # promote_secondaries is set), so a wanted address may have gone with it.
                missing = diff_addresses(nl.read_bridge(spec.name).ipv4, list(spec.ipv4))[0]
                for addr in missing:
                    change = Change("add_ipv4", spec.name, addr)
                    nl.apply(change)
                    if change not in changes:
                        changes.append(change)
            after = describe_bridge(spec.name, nl.read_bridge(spec.name))
    return {
        "changed": bool(changes),
        "actions": [c.describe() for c in changes],
        "bridge": after,
        "diff": {"before": before, "after": after},
    }
