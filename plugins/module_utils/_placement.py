# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capacity-aware placement of VEs onto hosts: pure logic, no I/O.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Input: the facts of each host (what ``osvirt.vz.host_info`` returns as ``host``) and the desired
VEs (each what ``osvirt.vz.ve`` takes, plus an optional ``host`` that pins it and an optional
``anti_affinity`` group name). Output: where every VE goes, which are new and which stay, and a
readable plan. Rules, in order (docs/role-provision.md says why):

1. A VE that exists on a host stays there (placement never moves a VE; migration does).
2. A VE with ``host`` goes to that host.
3. Every other VE goes to a host that is not draining, has room for its guarantees and holds no
   other VE of its anti-affinity group: ``spread`` takes the host with the most free capacity
   relative to its size, ``pack`` the fullest host that still fits.

Resources checked against each host:

- ``memory.guarantee`` against ``capacity.memory x overcommit - guaranteed.memory`` (the same sum
  as admission control in _limits.admit);
- ``net.rate`` against ``capacity.net x overcommit - guaranteed.net``;
- ``disk.space`` against ``capacity.disk_free`` (quotas are caps on a thin store: what existing VEs
  use is already out of disk_free, so overcommit does not apply).

New VEs are placed biggest first (memory, then net, then disk guarantee, then name), members of
anti-affinity groups before the others, so the result depends only on the input, never on the
order of lists or dicts.
"""

from __future__ import annotations

from . import _limits, _validate
from ._errors import VzError

STRATEGIES = ('spread', 'pack')


def _approx_bytes(value):
    """Bytes rounded to one decimal of the largest unit (23.5G, 512M): readable plans and messages."""
    for unit, factor in (('T', 1 << 40), ('G', 1 << 30), ('M', 1 << 20), ('K', 1 << 10)):
        if value >= factor:
            return ('%.1f' % (value / float(factor))).rstrip('0').rstrip('.') + unit
    return '%dB' % value


# resource -> (limits key, how to show an amount)
RESOURCES = (
    ('memory', ('memory', 'guarantee'), _approx_bytes),
    ('net', ('net', 'rate'), _limits.human_bits),
    ('disk', ('disk', 'space'), _approx_bytes),
)
# keys of a desired VE that are placement's, not osvirt.vz.ve's
PLACEMENT_KEYS = ('host', 'anti_affinity')


def _number(value, what):
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise VzError('host facts: %s must be a number, got %r' % (what, value))
    if value < 0:
        raise VzError('host facts: %s must not be negative, got %r' % (what, value))
    return value


class HostState:
    """One host during placement: its size, what is guaranteed on it, which VEs it holds."""

    def __init__(self, name, facts):
        if not isinstance(facts, dict):
            raise VzError('host facts of %s must be a dict (the host return of osvirt.vz.host_info), got %r'
                          % (name, type(facts).__name__))
        self.name = name
        capacity = facts.get('capacity') or {}
        guaranteed = facts.get('guaranteed') or {}
        overcommit = _number(facts.get('overcommit', 1.0), '%s overcommit' % name) or 1.0
        self.overcommit = overcommit
        self.draining = facts.get('draining') or None
        # base size of each resource and what may be promised on it
        self.size = {
            'memory': int(_number(capacity.get('memory'), '%s capacity.memory' % name)),
            'net': int(_number(capacity.get('net'), '%s capacity.net' % name)),
            'disk': int(_number(capacity.get('disk_free'), '%s capacity.disk_free' % name)),
        }
        self.limit = {
            'memory': int(self.size['memory'] * overcommit),
            'net': int(self.size['net'] * overcommit),
            'disk': self.size['disk'],
        }
        self.used = {
            'memory': int(_number(guaranteed.get('memory'), '%s guaranteed.memory' % name)),
            'net': int(_number(guaranteed.get('net'), '%s guaranteed.net' % name)),
            'disk': 0,
        }
        ves = facts.get('ves') or {}
        if not isinstance(ves, (dict, list)):
            raise VzError('host facts of %s: ves must be a dict or list of VE names' % name)
        self.existing = sorted(ves)
        self.ves = set(self.existing)     # every VE on the host after placement
        self.new = []                     # VEs this placement puts here

    def free(self, resource):
        return self.limit[resource] - self.used[resource]

    def fits(self, need):
        """The first resource that ``need`` does not fit into, or None."""
        for resource, _key, _show in RESOURCES:
            if need[resource] and need[resource] > self.free(resource):
                return resource
        return None

    def free_share_after(self, need):
        """The smallest share of any resource left free after adding ``need`` (1.0: all free)."""
        shares = []
        for resource, _key, _show in RESOURCES:
            if self.limit[resource] > 0:
                shares.append((self.free(resource) - need[resource]) / float(self.limit[resource]))
        return min(shares) if shares else 0.0

    def take(self, ve, need):
        for resource in need:
            self.used[resource] += need[resource]
        self.ves.add(ve)
        self.new.append(ve)

    def describe_free(self):
        return ', '.join('%s %s' % (resource, show(max(self.free(resource), 0))) for resource, _key, show in RESOURCES)


def _need(name, limits):
    """What a VE guarantees: {memory: bytes, net: bits/s, disk: bytes} from its limits dict."""
    try:
        change = _limits.parse_change(limits)
    except VzError as exc:
        raise VzError('VE %s: %s' % (name, exc.message))
    return {resource: int(change.get(key) or 0) for resource, key, _show in RESOURCES}


def _desired(ves):
    """Validated desired VEs: name -> {'host', 'group', 'need'}, refusing one name listed twice."""
    if not isinstance(ves, list):
        raise VzError('the VEs to place must be a list of dicts with at least name, got %r' % type(ves).__name__)
    desired = {}
    for item in ves:
        if not isinstance(item, dict) or 'name' not in item:
            raise VzError('every VE to place must be a dict with at least name, got %r' % (item,))
        name = _validate.ve_name(item['name'])
        host = item.get('host')
        if name in desired:
            first = desired[name]['host']
            if host and first and host != first:
                raise VzError('VE %s is listed on two hosts: %s and %s; a VE lives on one host'
                              % (name, min(host, first), max(host, first)))
            raise VzError('VE %s is listed twice; list each VE once' % name)
        group = item.get('anti_affinity')
        if group is not None and (not isinstance(group, str) or not group):
            raise VzError('VE %s: anti_affinity must be a group name (a non-empty string), got %r' % (name, group))
        desired[name] = {'host': host, 'group': group, 'need': _need(name, item.get('limits'))}
    return desired


def _show_need(need):
    parts = ['%s.%s %s' % (key[0], key[1], show(need[resource]))
             for resource, key, show in RESOURCES if need[resource]]
    return ', '.join(parts) if parts else 'no guarantees'


class Placement:
    """The outcome: ``placement`` {ve: host}, ``new``, ``kept``, ``per_host`` and ``plan`` lines."""

    def __init__(self, hosts, placement, kept, strategy):
        self.hosts = hosts
        self.placement = placement
        self.kept = sorted(kept)
        self.new = sorted(set(placement) - set(kept))
        self.strategy = strategy

    def per_host(self):
        return {name: sorted(ve for ve, host in self.placement.items() if host == name)
                for name in sorted(self.hosts)}

    def plan(self):
        lines = ['placement of %d VE(s) on %d host(s), strategy %s: %d new, %d kept'
                 % (len(self.placement), len(self.hosts), self.strategy, len(self.new), len(self.kept))]
        for name in sorted(self.hosts):
            host = self.hosts[name]
            mine = sorted(ve for ve, where in self.placement.items() if where == name)
            new = sorted(ve for ve in mine if ve in self.new)
            kept = sorted(ve for ve in mine if ve not in self.new)
            state = ' (draining since %s: receives no new VE)' % host.draining.get('since', '?') \
                if isinstance(host.draining, dict) else (' (draining: receives no new VE)' if host.draining else '')
            lines.append('%s%s: %d VE(s), new: %s; kept: %s; free after: %s'
                         % (name, state, len(mine), ', '.join(new) or '-', ', '.join(kept) or '-',
                            host.describe_free()))
        return lines

    def as_dict(self):
        return {'placement': dict(sorted(self.placement.items())), 'new': self.new, 'kept': self.kept,
                'per_host': self.per_host(), 'plan': self.plan()}


def place(host_facts, ves, strategy='spread'):
    """Place ``ves`` (list of desired VEs) on the hosts of ``host_facts`` ({host: facts}).

    Returns a :class:`Placement`; raises VzError with one clear message for input that cannot be
    placed (a VE on two hosts, one that fits nowhere, an anti-affinity group with too few hosts,
    an unknown host or strategy).
    """
    if strategy not in STRATEGIES:
        raise VzError('unknown placement strategy %r: use %s' % (strategy, ' or '.join(STRATEGIES)))
    if not isinstance(host_facts, dict):
        raise VzError('host facts must map each host to its facts (osvirt.vz.host_info host), got %r'
                      % type(host_facts).__name__)
    hosts = {str(name): HostState(str(name), facts) for name, facts in host_facts.items()}
    desired = _desired(ves)

    # where each desired VE exists now
    existing = {}
    for name in sorted(hosts):
        for ve in hosts[name].existing:
            if ve in desired:
                existing.setdefault(ve, []).append(name)
    placement, kept = {}, []
    for ve in sorted(desired):
        where, pinned = existing.get(ve, []), desired[ve]['host']
        if len(where) > 1:
            raise VzError('VE %s is listed on two hosts: it exists on %s; remove one copy first'
                          % (ve, ' and '.join(where)))
        if pinned is not None and pinned not in hosts:
            raise VzError('VE %s is pinned to host %s, which is not among the hosts placed on (%s)'
                          % (ve, pinned, ', '.join(sorted(hosts)) or 'none'))
        if where and pinned and where[0] != pinned:
            raise VzError('VE %s is listed on two hosts: pinned to %s but it exists on %s; move it with '
                          'osvirt.vz.ve_migrate or change its host' % (ve, pinned, where[0]))
        if where:
            placement[ve] = where[0]
            kept.append(ve)

    groups = {}
    for ve in sorted(desired):
        if desired[ve]['group']:
            groups.setdefault(desired[ve]['group'], []).append(ve)
    _check_groups(groups, desired, hosts, placement)

    # pinned new VEs: their host must accept them
    for ve in sorted(desired):
        pinned = desired[ve]['host']
        if ve in placement or pinned is None:
            continue
        host, need = hosts[pinned], desired[ve]['need']
        if host.draining:
            raise VzError('VE %s is pinned to host %s, which is draining and receives no new VE' % (ve, pinned))
        _group_clash(ve, desired, host, placement)
        short = host.fits(need)
        if short:
            raise VzError(_no_room(ve, need, short, host))
        host.take(ve, need)
        placement[ve] = pinned

    def order(ve):
        need = desired[ve]['need']
        return (0 if desired[ve]['group'] else 1, -need['memory'], -need['net'], -need['disk'], ve)

    for ve in sorted((v for v in desired if v not in placement), key=order):
        need, group = desired[ve]['need'], desired[ve]['group']
        open_hosts = [h for h in hosts.values() if not h.draining]
        if not open_hosts:
            raise VzError('VE %s has no host to go to: every host is draining (%s)' % (ve, ', '.join(sorted(hosts))))
        allowed = [h for h in open_hosts
                   if not group or not any(placement.get(m) == h.name for m in groups[group] if m != ve)]
        if not allowed:
            raise VzError('anti-affinity group %s: VE %s has no host left without another VE of the group '
                          '(%s)' % (group, ve, ', '.join('%s on %s' % (m, placement[m])
                                                         for m in groups[group] if m in placement)))
        fitting = [h for h in allowed if not h.fits(need)]
        if not fitting:
            raise VzError(_fits_nowhere(ve, need, allowed))
        if strategy == 'spread':
            best = max(fitting, key=lambda h: (h.free_share_after(need), -len(h.ves), _reverse(h.name)))
        else:
            best = min(fitting, key=lambda h: (h.free_share_after(need), -len(h.ves), h.name))
        best.take(ve, need)
        placement[ve] = best.name
    return Placement(hosts, placement, kept, strategy)


def _reverse(name):
    """A key that sorts names backwards, so max() picks the first name on a tie."""
    return tuple(-ord(c) for c in name)


def _group_clash(ve, desired, host, placement):
    group = desired[ve]['group']
    if not group:
        return
    for other in sorted(desired):
        if other != ve and desired[other]['group'] == group and placement.get(other) == host.name:
            raise VzError('anti-affinity group %s: VE %s is pinned to %s, where VE %s of the same group already is'
                          % (group, ve, host.name, other))


def _check_groups(groups, desired, hosts, placement):
    """Refuse groups that cannot be spread: too few hosts, or members already together."""
    for group, members in sorted(groups.items()):
        where = {}
        for ve in members:
            host = placement.get(ve) or desired[ve]['host']
            if host:
                if host in where:
                    raise VzError('anti-affinity group %s: VEs %s and %s are both on host %s; move one with '
                                  'osvirt.vz.ve_migrate or change its host' % (group, where[host], ve, host))
                where[host] = ve
        eligible = sorted(set(h.name for h in hosts.values() if not h.draining) | set(where))
        if len(members) > len(eligible):
            raise VzError('anti-affinity group %s has %d VEs (%s) but only %d host(s) can take them (%s); '
                          'add hosts, end a drain or shrink the group'
                          % (group, len(members), ', '.join(members), len(eligible), ', '.join(eligible) or 'none'))


def _no_room(ve, need, resource, host):
    key, show = [(k, s) for r, k, s in RESOURCES if r == resource][0]
    return ('VE %s does not fit on host %s: %s.%s %s is more than the %s free there (%s)'
            % (ve, host.name, key[0], key[1], show(need[resource]), show(max(host.free(resource), 0)),
               _capacity_note(host, resource)))


def _capacity_note(host, resource):
    show = [s for r, _k, s in RESOURCES if r == resource][0]
    if resource == 'disk':
        return 'disk free %s' % show(host.size['disk'])
    return '%s %s x overcommit %g, %s guaranteed' % (
        resource, show(host.size[resource]), host.overcommit, show(host.used[resource]))


def _fits_nowhere(ve, need, hosts):
    """The message for a VE no host has room for: the resource and the best host's free figure."""
    for resource, key, show in RESOURCES:
        if not need[resource]:
            continue
        best = max(hosts, key=lambda h: (h.free(resource), _reverse(h.name)))
        if need[resource] > best.free(resource):
            return ('VE %s fits on no host: %s.%s %s is more than the most any host has free, %s on %s (%s)'
                    % (ve, key[0], key[1], show(need[resource]), show(max(best.free(resource), 0)), best.name,
                       _capacity_note(best, resource)))
    # each resource alone fits somewhere, but no host has all of them at once
    free = '; '.join('%s %s' % (h.name, h.describe_free()) for h in sorted(hosts, key=lambda h: h.name))
    return 'VE %s fits on no host: no host has %s free at the same time (free: %s)' % (ve, _show_need(need), free)
