# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Host networking of osvirt.vz: bridges (netlink, pyroute2), their NAT (nftables), forwarding
(sysctl) and the bridge settings file that VE networking reads.

PRIVATE: this file is internal to the osvirt.vz collection. Its functions and classes may change
or disappear in any release; do not import them from outside the collection.

The shape is decide, act, report:

- ``BridgeSpec.from_params`` validates what the user asked for (pure, no netlink);
- ``Netlink.read_bridge`` reads what the kernel has into a ``LinkState``;
- ``plan_bridge`` compares the two and returns a list of ``Change`` objects (pure);
- ``plan_host`` does the same for what lies beside the link: forwarding sysctls, the NAT chain
  and ``<vz_root>/net/bridges/<name>.json`` (pure, from a ``HostState``);
- ``Netlink.apply`` / ``HostSystem.apply`` carry out one ``Change``; ``ensure_bridge`` ties it
  together, checks everything (pools, uplink, the nft script) before the first change and honours
  check mode.

Addresses are handled per family (``diff_addresses`` is family-neutral).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import traceback
from dataclasses import dataclass, field

from . import _nft, _validate
from ._errors import VzError
from ._fs import make_dirs, read_json, write_json
from ._host import bridge_settings_path, host_pool
from ._locks import Lock

try:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    HAS_PYROUTE2 = True
    PYROUTE2_IMPORT_ERROR = None
except ImportError:
    # The module reports this with one clear message; see ``require_pyroute2``.
    HAS_PYROUTE2 = False
    PYROUTE2_IMPORT_ERROR = traceback.format_exc()
    IPRoute = None  # pylint: disable=invalid-name

    class NetlinkError(Exception):  # type: ignore[no-redef]
        """Stand-in so that ``except NetlinkError`` stays valid without pyroute2."""

        code = 0


PYROUTE2_MISSING_MSG = (
    "python3-pyroute2 is required on the host (Debian/Ubuntu: apt-get install python3-pyroute2); "
    "the Python running this module could not import pyroute2"
)

NAT_FAMILY = "ip"
NAT_TABLE = "osvirt_vz_nat"
# srcnat priority: after the filter hooks, like iptables' POSTROUTING nat chain
NAT_HEADER = "type nat hook postrouting priority 100;"
SYSCTL_FORWARD4 = "net.ipv4.ip_forward"
SYSCTL_FORWARD6 = "net.ipv6.conf.all.forwarding"

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


def normalize_ipv6(addresses):
    """Validate a list of IPv6 interface addresses in CIDR form and return them canonical.

    ``['FD00:20::1/64']`` becomes ``['fd00:20::1/64']``; the order is kept. ``None`` means "do
    not manage IPv6 addresses". Raises ``VzError`` for a missing prefix length, a non-IPv6
    value, link-local (the kernel makes its own), multicast, loopback, unspecified or
    IPv4-mapped addresses, and the same address listed twice.
    """
    if addresses is None:
        return None
    if isinstance(addresses, str):
        raise VzError("ipv6 must be a list of addresses like fd00:20::1/64, not a string")
    result = []
    seen = {}
    for raw in addresses:
        value = raw.strip() if isinstance(raw, str) else raw
        if not isinstance(value, str) or "/" not in value:
            raise VzError("ipv6 address %r must be an IPv6 address with a prefix length, like "
                          "fd00:20::1/64" % (raw,))
        try:
            iface = ipaddress.IPv6Interface(value)
        except ValueError as exc:
            raise VzError("ipv6 address %r is not a valid IPv6 address: %s" % (raw, exc))
        ip = iface.ip
        text = iface.with_prefixlen
        for bad, why in ((ip.is_link_local, "a link-local address (the kernel adds its own)"),
                         (ip.is_multicast, "a multicast address"),
                         (ip.is_loopback, "the loopback address"),
                         (ip.is_unspecified, "the unspecified address"),
                         (ip.ipv4_mapped is not None, "an IPv4-mapped address")):
            if bad:
                raise VzError("ipv6 address %s cannot be assigned to a bridge: it is %s" % (text, why))
        if ip in seen:
            raise VzError("ipv6 address %s is listed twice (%s and %s)" % (ip, seen[ip], text))
        seen[ip] = text
        result.append(text)
    return result


def validate_pool(value, family):
    """Return pool4/pool6 as a canonical network (``10.20.0.0/24``), None when unset."""
    return host_pool(value, family, "pool%d" % family)


def check_pool_inside(bridge, pool, addresses, family):
    """Raise ``VzError`` unless network ``pool`` lies inside the subnet of one of ``addresses``
    (the bridge's CIDR addresses of that family after the task). Pure."""
    if pool is None:
        return
    net = ipaddress.ip_network(pool)
    subnets = []
    for addr in addresses:
        subnet = ipaddress.ip_interface(addr).network
        if net.subnet_of(subnet):
            return
        if str(subnet) not in subnets:
            subnets.append(str(subnet))
    where = ("its IPv%d subnets are %s" % (family, ", ".join(subnets)) if subnets
             else "it has no IPv%d address" % family)
    raise VzError("pool%d %s is not inside a subnet of bridge %s: %s"
                  % (family, pool, bridge, where))


def nat_chain_name(bridge):
    """Name of the NAT chain of ``bridge`` in table ``ip osvirt_vz_nat``: ``nat_`` + the bridge
    name with ``_`` -> ``__``, ``.`` -> ``_d``, ``-`` -> ``_h`` (nft names allow only letters,
    digits and ``_``; the mapping is one-to-one, so two bridges never share a chain)."""
    escaped = bridge.replace("_", "__").replace(".", "_d").replace("-", "_h")
    return _nft.check_name("nat_" + escaped, "nft chain")


def nat_rules(bridge, ipv4, uplink=None):
    """The masquerade rules of ``bridge`` (pure): one per IPv4 subnet of its addresses.

    Traffic from the subnet to anywhere else is masqueraded when it leaves through ``uplink``,
    or, without an uplink, through any interface but the bridge itself.
    """
    subnets = []
    for addr in ipv4:
        subnet = str(ipaddress.IPv4Interface(addr).network)
        if subnet not in subnets:
            subnets.append(subnet)
    out = 'oifname "%s"' % uplink if uplink else 'oifname != "%s"' % bridge
    return ["ip saddr %s ip daddr != %s %s masquerade" % (net, net, out) for net in subnets]


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
    """What the user asked for. ``ipv4``/``ipv6``/``mtu`` of None mean "leave as the kernel has
    it"; ``forwarding`` of None means "on when ``nat`` is on, else left alone".

    Names follow ``_validate.ifname``: 1-15 of ``[A-Za-z0-9_.-]``, not ``.`` or ``..``.
    """

    name: str
    state: str = "present"
    ipv4: tuple | None = None
    mtu: int | None = None
    ipv6: tuple | None = None
    nat: bool = False
    uplink: str | None = None
    forwarding: bool | None = None
    pool4: str | None = None
    pool6: str | None = None
    vz_root: str = "/var/lib/vz"

    @classmethod
    def from_params(cls, params):
        """Build a validated spec from module parameters; raise ``VzError`` on bad input.

        Checks that need the kernel (pools inside the bridge's subnets when its addresses are
        not given, the uplink's existence) are made by ``plan_host``.
        """
        state = params.get("state") or "present"
        if state not in ("present", "absent"):
            raise VzError("state must be present or absent, got %r" % (state,))
        name = _validate.ifname(params.get("name"), "bridge name")
        ipv4 = normalize_ipv4(params.get("ipv4"))
        ipv6 = normalize_ipv6(params.get("ipv6"))
        nat = bool(params.get("nat"))
        uplink = params.get("uplink")
        if uplink is not None:
            uplink = _validate.ifname(uplink, "uplink")
            if not nat:
                raise VzError("uplink %s is given but nat is false; uplink only selects the "
                              "interface NAT applies to" % uplink)
            if uplink == name:
                raise VzError("uplink %s is the bridge itself; name the interface towards the "
                              "outside" % uplink)
        forwarding = params.get("forwarding")
        return cls(
            name=name,
            state=state,
            ipv4=None if ipv4 is None else tuple(ipv4),
            mtu=validate_mtu(params.get("mtu")),
            ipv6=None if ipv6 is None else tuple(ipv6),
            nat=nat,
            uplink=uplink,
            forwarding=None if forwarding is None else bool(forwarding),
            pool4=validate_pool(params.get("pool4"), 4),
            pool6=validate_pool(params.get("pool6"), 6),
            vz_root=_validate.vz_root(params.get("vz_root") or "/var/lib/vz"),
        )

    @property
    def settings_path(self):
        """``<vz_root>/net/bridges/<name>.json``."""
        return bridge_settings_path(self.vz_root, self.name)

    @property
    def nat_chain(self):
        """Name of this bridge's chain in table ``ip osvirt_vz_nat``."""
        return nat_chain_name(self.name)


@dataclass
class LinkState:
    """What the kernel has under one interface name."""

    name: str
    index: int
    kind: str | None          # IFLA_INFO_KIND: 'bridge', 'veth', ... or None (lo, physical)
    mtu: int
    up: bool                  # administrative state (IFF_UP), not carrier
    ipv4: list = field(default_factory=list)
    ipv6: list = field(default_factory=list)   # without link-local addresses

    @property
    def is_bridge(self):
        """True if this link is a Linux bridge."""
        return self.kind == "bridge"


@dataclass
class HostState:
    """What the host has beside the link: forwarding sysctls (``{key: '0'|'1'|None}``, None when
    the key is missing, e.g. IPv6 disabled), the digest of the bridge's NAT chain (None: no chain),
    the bridge settings file (None: no file), whether the uplink exists and nft is installed."""

    sysctl: dict = field(default_factory=dict)
    nat_digest: str | None = None
    settings: dict | None = None
    uplink_exists: bool | None = None
    nft: bool = True


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
        "add_ipv6": "add {value} to {name}",
        "del_ipv6": "remove {value} from {name}",
        "delete": "delete bridge {name}",
        "sysctl": "set {value[0]} to {value[1]}",
        "nat": "set NAT chain %s %s {value[0]} of {name}: {rules}" % (NAT_FAMILY, NAT_TABLE),
        "nat_delete": "delete NAT chain %s %s {value} of {name}" % (NAT_FAMILY, NAT_TABLE),
        "write_settings": "write {value[0]}",
        "remove_settings": "remove {value}",
    }

    def describe(self):
        """Readable one-line text for the module's ``actions`` result."""
        rules = "; ".join(self.value[1]) if self.op == "nat" else ""
        text = self._DESCRIPTIONS[self.op].format(name=self.name, value=self.value, rules=rules)
        if self.op == "create" and self.value:
            text += " with mtu %s" % self.value
        return text


def describe_link(name, current):
    """Link part of the result: ``name``, ``state``, ``ipv4``, ``ipv6`` (sorted), ``mtu``."""
    if current is None:
        return {"name": name, "state": "absent", "ipv4": [], "ipv6": [], "mtu": None}
    return {
        "name": name,
        "state": "present",
        "ipv4": sort_addresses(current.ipv4),
        "ipv6": sort_addresses(current.ipv6),
        "mtu": current.mtu,
    }


def _refuse_non_bridge(spec, current):
    if current is not None and not current.is_bridge:
        kind = current.kind or "none, like loopback or a physical NIC"
        raise NetError(
            "interface %s exists but is not a bridge (link kind: %s); refusing to %s it"
            % (spec.name, kind, "delete" if spec.state == "absent" else "manage"))


def plan_bridge(spec, current):
    """Return the list of link ``Change`` needed to go from ``current`` (``LinkState`` or None)
    to ``spec``. Raises ``NetError`` when an interface of that name exists but is not a bridge.
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
        for addr in spec.ipv6 or ():
            changes.append(Change("add_ipv6", spec.name, addr))
        return changes

    if spec.mtu is not None and current.mtu != spec.mtu:
        changes.append(Change("set_mtu", spec.name, spec.mtu))
    if not current.up:
        changes.append(Change("up", spec.name))
    for family, wanted, have in ((4, spec.ipv4, current.ipv4), (6, spec.ipv6, current.ipv6)):
        if wanted is None:
            continue
        to_add, to_remove = diff_addresses(have, list(wanted))
        # Removals first: an old address may sit in the same subnet as a new one.
        changes.extend(Change("del_ipv%d" % family, spec.name, a) for a in to_remove)
        changes.extend(Change("add_ipv%d" % family, spec.name, a) for a in to_add)
    return changes


def predict_link(spec, current):
    """The ``describe_link`` dict the kernel will show after ``plan_bridge`` has been applied."""
    if spec.state == "absent":
        return describe_link(spec.name, None)
    if current is None:
        current = LinkState(spec.name, 0, "bridge", DEFAULT_BRIDGE_MTU, True)
    return {
        "name": spec.name,
        "state": "present",
        "ipv4": sort_addresses(spec.ipv4 if spec.ipv4 is not None else current.ipv4),
        "ipv6": sort_addresses(spec.ipv6 if spec.ipv6 is not None else current.ipv6),
        "mtu": spec.mtu if spec.mtu is not None else current.mtu,
    }


def wanted_settings(spec, link):
    """Content of ``<vz_root>/net/bridges/<name>.json`` for the bridge after the task (pure)."""
    return {"name": spec.name, "ipv4": list(link["ipv4"]), "ipv6": list(link["ipv6"]),
            "pool4": spec.pool4, "pool6": spec.pool6, "nat": spec.nat, "uplink": spec.uplink}


def forwarding_keys(spec, link):
    """The sysctls the task turns on: IPv4 forwarding when forwarding is on (explicitly, or
    because of NAT), IPv6 forwarding too when the bridge has IPv6 addresses. Never turned off:
    they are host-wide, and other bridges or routed VEs may rely on them."""
    forwarding = spec.nat if spec.forwarding is None else spec.forwarding
    if spec.state != "present" or not forwarding:
        return []
    return [SYSCTL_FORWARD4] + ([SYSCTL_FORWARD6] if link["ipv6"] else [])


def plan_host(spec, link, host):
    """Changes beside the link (sysctls, NAT chain, settings file) for the bridge whose link will
    look like ``link`` (``predict_link``), given ``host`` (``HostState``). Pure.

    Raises ``VzError`` for what is only known with the kernel's view: a pool outside the
    bridge's subnets, NAT without an IPv4 address or without nft, a missing uplink, IPv6
    addresses on a host without IPv6.
    """
    changes = []
    if spec.state == "absent":
        if host.nat_digest is not None:
            changes.append(Change("nat_delete", spec.name, spec.nat_chain))
        if host.settings is not None:
            changes.append(Change("remove_settings", spec.name, spec.settings_path))
        return changes

    check_pool_inside(spec.name, spec.pool4, link["ipv4"], 4)
    check_pool_inside(spec.name, spec.pool6, link["ipv6"], 6)
    if link["ipv6"] and host.sysctl.get(SYSCTL_FORWARD6, "0") is None:
        raise VzError("bridge %s cannot get IPv6 addresses: IPv6 is disabled on this host "
                      "(/proc/sys/net/ipv6 is missing)" % spec.name)
    if spec.nat:
        if not link["ipv4"]:
            raise VzError("nat on bridge %s needs at least one IPv4 address on the bridge"
                          % spec.name)
        if spec.uplink and not host.uplink_exists:
            raise VzError("uplink %s of bridge %s does not exist on this host"
                          % (spec.uplink, spec.name))
        if not host.nft:
            raise VzError("nat on bridge %s needs nftables: nft is not installed "
                          "(Debian/Ubuntu: apt-get install nftables)" % spec.name)

    for key in forwarding_keys(spec, link):
        if host.sysctl.get(key) != "1":
            changes.append(Change("sysctl", spec.name, (key, "1")))
    if spec.nat:
        rules = tuple(nat_rules(spec.name, link["ipv4"], spec.uplink))
        if host.nat_digest != _nft.digest(NAT_HEADER, rules):
            changes.append(Change("nat", spec.name, (spec.nat_chain, rules)))
    elif host.nat_digest is not None:
        changes.append(Change("nat_delete", spec.name, spec.nat_chain))
    settings = wanted_settings(spec, link)
    if host.settings != settings:
        changes.append(Change("write_settings", spec.name, (spec.settings_path, settings)))
    return changes


def describe_host(name, host):
    """Host part of the result from ``host`` (``HostState``): nat, nat_rules, uplink, pools,
    forwarding. ``nat_rules`` are those the settings file implies when the chain still carries
    their digest; a chain changed behind our back shows as one line naming its digest."""
    settings = host.settings or {}
    rules = []
    if host.nat_digest is not None:
        rules = nat_rules(name, settings.get("ipv4") or [], settings.get("uplink"))
        if not settings.get("nat") or _nft.digest(NAT_HEADER, rules) != host.nat_digest:
            rules = ["(chain %s holds rules not recorded in the settings file, digest %s)"
                     % (nat_chain_name(name), host.nat_digest)]
    return {
        "nat": host.nat_digest is not None,
        "nat_rules": rules,
        "uplink": settings.get("uplink"),
        "pool4": settings.get("pool4"),
        "pool6": settings.get("pool6"),
        "forwarding": {"ipv4": host.sysctl.get(SYSCTL_FORWARD4) == "1",
                       "ipv6": host.sysctl.get(SYSCTL_FORWARD6) == "1"},
    }


def predict_host(spec, link, host):
    """``describe_host`` as it will be after ``plan_host`` has been applied (check mode, diff)."""
    if spec.state == "absent":
        after = HostState(sysctl=dict(host.sysctl))
    else:
        sysctl = dict(host.sysctl)
        sysctl.update((key, "1") for key in forwarding_keys(spec, link))
        settings = wanted_settings(spec, link)
        digest = (_nft.digest(NAT_HEADER, nat_rules(spec.name, link["ipv4"], spec.uplink))
                  if spec.nat else None)
        after = HostState(sysctl=sysctl, nat_digest=digest, settings=settings)
    return describe_host(spec.name, after)


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

    def exists(self, name):
        """True if an interface called ``name`` exists."""
        return self._index(name) is not None

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
        ipv6 = []
        for msg in self._ipr.get_addr(family=socket.AF_INET6, index=index):
            iface = ipaddress.IPv6Interface("%s/%d" % (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"]))
            if not iface.ip.is_link_local:  # the kernel's own, never ours to manage
                ipv6.append(iface.with_prefixlen)
        return LinkState(
            name=name,
            index=index,
            kind=link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
            mtu=link.get_attr("IFLA_MTU"),
            up=bool(link["flags"] & _IFF_UP),
            ipv4=ipv4,
            ipv6=ipv6,
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
        elif change.op in ("add_ipv6", "del_ipv6"):
            iface = ipaddress.IPv6Interface(change.value)
            self._ipr.addr("add" if change.op == "add_ipv6" else "del", index=index,
                           family=socket.AF_INET6, address=str(iface.ip),
                           prefixlen=iface.network.prefixlen)
        else:  # pragma: no cover - a programming error, not a user error
            raise ValueError("unknown change %r" % (change.op,))


# ---------------------------------------------------------------------------------------------
# Beside the link: sysctls, nftables, the settings file
# ---------------------------------------------------------------------------------------------

def _sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


class HostSystem:
    """Reads a ``HostState`` and applies the host-side ``Change`` operations (sysctl, nat,
    nat_delete, write_settings, remove_settings). nft errors become ``NetError``."""

    @staticmethod
    def lock(spec):
        """The bridge's lock in ``<vz_root>/locks`` (created when missing), as a context manager."""
        locks_dir = os.path.join(spec.vz_root, "locks")
        make_dirs(locks_dir, 0o700)
        return Lock(locks_dir, "bridge", spec.name, "osvirt.vz.bridge on %s" % spec.name)

    def read(self, spec, netlink):
        """The ``HostState`` of ``spec``'s bridge; ``netlink`` answers whether the uplink exists."""
        sysctl = {}
        for key in (SYSCTL_FORWARD4, SYSCTL_FORWARD6):
            try:
                with open(_sysctl_path(key), "r", encoding="ascii") as handle:
                    sysctl[key] = handle.read().strip()
            except FileNotFoundError:
                sysctl[key] = None
        has_nft = _nft.nft_binary() is not None
        digest = None
        if has_nft:
            try:
                found = _nft.chains(NAT_FAMILY, NAT_TABLE).get(spec.nat_chain)
            except _nft.NftError as exc:
                raise NetError(exc.message)
            if found is not None:
                # a chain without our comment still is ours by name: report it, replace it
                digest = found["digest"] or "none"
        settings = read_json(spec.settings_path, None)
        if settings is not None and not isinstance(settings, dict):
            settings = {"invalid": True}
        uplink = netlink.exists(spec.uplink) if spec.uplink else None
        return HostState(sysctl=sysctl, nat_digest=digest, settings=settings,
                         uplink_exists=uplink, nft=has_nft)

    @staticmethod
    def check(change):
        """Let nft check a NAT chain's script without applying it (before anything changes)."""
        if change.op == "nat":
            chain, rules = change.value
            try:
                _nft.apply(_nft.replace_chain_script(NAT_FAMILY, NAT_TABLE, chain, NAT_HEADER,
                                                     list(rules)), check_only=True)
            except _nft.NftError as exc:
                raise NetError("could not %s: %s" % (change.describe(), exc.message))

    @staticmethod
    def apply(change):
        """Carry out one host-side ``Change``."""
        try:
            if change.op == "sysctl":
                key, value = change.value
                # one write(2) on procfs: the kernel takes the whole value or nothing
                fd = os.open(_sysctl_path(key), os.O_WRONLY)
                try:
                    os.write(fd, (value + "\n").encode("ascii"))
                finally:
                    os.close(fd)
            elif change.op == "nat":
                chain, rules = change.value
                _nft.replace_chain(NAT_FAMILY, NAT_TABLE, chain, NAT_HEADER, list(rules))
            elif change.op == "nat_delete":
                _nft.delete_chain(NAT_FAMILY, NAT_TABLE, change.value)
            elif change.op == "write_settings":
                path, settings = change.value
                make_dirs(os.path.dirname(os.path.dirname(path)), 0o711)
                make_dirs(os.path.dirname(path), 0o755)
                write_json(path, settings)
            elif change.op == "remove_settings":
                try:
                    os.unlink(change.value)
                except FileNotFoundError:
                    pass
            else:  # pragma: no cover - a programming error, not a user error
                raise ValueError("unknown change %r" % (change.op,))
        except _nft.NftError as exc:
            raise NetError("could not %s: %s" % (change.describe(), exc.message))
        except OSError as exc:
            raise NetError("could not %s: %s" % (change.describe(), exc.strerror or exc))


def _plan(spec, nl, system):
    """Read the kernel and the host, and plan: (current link, link changes, predicted link,
    HostState, host changes). Raises ``VzError`` on bad input."""
    current = nl.read_bridge(spec.name)
    link_after = predict_link(spec, current)
    host = system.read(spec, nl)
    return current, plan_bridge(spec, current), link_after, host, plan_host(spec, link_after, host)


def ensure_bridge(spec, check_mode=False, netlink=None, system=None):
    """Bring the host to ``spec``; in check mode only compute what would change.

    Everything that can be checked is checked before the first change (input against the
    kernel's view, the nft script with ``nft -c``), so bad input changes nothing. Changes are
    made under the bridge's lock (``<vz_root>/locks/bridge-<name>.lock``), planned again once it
    is held, so two runs for one bridge never interleave.
    Returns a dict with ``changed``, ``actions`` (readable strings), ``bridge`` (the state after,
    predicted in check mode) and ``diff`` (``before``/``after`` dicts). Raises ``VzError``.
    """
    system = system or HostSystem()
    with (netlink or Netlink()) as nl:
        current, changes, link_after, host, host_changes = _plan(spec, nl, system)
        if not check_mode and (changes or host_changes):
            with system.lock(spec) as lock:
                current, changes, link_after, host, host_changes = _plan(spec, nl, system)
                after = _apply(spec, nl, system, changes, host_changes)
                if lock is not None and spec.state == "absent":
                    lock.remove_on_exit = True   # the bridge is gone: so is its lock file
        before = dict(describe_link(spec.name, current), **describe_host(spec.name, host))
        if check_mode or not (changes or host_changes):
            after = dict(link_after, **predict_host(spec, link_after, host))
    changes = changes + host_changes
    return {
        "changed": bool(changes),
        "actions": [c.describe() for c in changes],
        "bridge": after,
        "diff": {"before": before, "after": after},
    }


def _apply(spec, nl, system, changes, host_changes):
    """Carry out the planned changes (``changes`` gets the IPv4 re-adds); return the state after."""
    if not (changes or host_changes):
        return None
    for change in host_changes:
        system.check(change)
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
    for change in host_changes:
        system.apply(change)
    return dict(describe_link(spec.name, nl.read_bridge(spec.name)),
                **describe_host(spec.name, system.read(spec, nl)))
