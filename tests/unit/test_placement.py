"""Placement of VEs onto hosts (_placement): strategies, stability, capacity, anti-affinity, errors."""

import random

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._placement import place

G = 1 << 30
M = 1 << 20


def host(memory=8 * G, net=10 ** 10, disk=100 * G, overcommit=1.0, guaranteed=None, ves=(), draining=None):
    guaranteed = guaranteed or {}
    return {'capacity': {'cpus': 4, 'memory': memory, 'net': net, 'disk_total': disk, 'disk_free': disk},
            'overcommit': overcommit, 'draining': draining,
            'guaranteed': {'memory': guaranteed.get('memory', 0), 'net': guaranteed.get('net', 0),
                           'disk': guaranteed.get('disk', 0)},
            'ves': {name: {'owner': None, 'template': 'busybox@20261125-101500', 'state': 'running'} for name in ves}}


def ve(name, memory=None, net=None, disk=None, **extra):
    limits = {}
    if memory:
        limits.setdefault('memory', {})['guarantee'] = memory
    if net:
        limits.setdefault('net', {})['rate'] = net
    if disk:
        limits.setdefault('disk', {})['space'] = disk
    item = {'name': name, 'template': 'busybox'}
    if limits:
        item['limits'] = limits
    item.update(extra)
    return item


def fleet(n=3, **kwargs):
    return {'h%d' % i: host(**kwargs) for i in range(1, n + 1)}


def errmsg(hosts, ves, strategy='spread'):
    with pytest.raises(VzError) as caught:
        place(hosts, ves, strategy)
    return caught.value.message


# -- strategies --------------------------------------------------------------------------------
def test_spread_without_guarantees_goes_round_the_hosts():
    result = place(fleet(3), [ve('v%d' % i) for i in range(6)]).as_dict()
    assert result['per_host'] == {'h1': ['v0', 'v3'], 'h2': ['v1', 'v4'], 'h3': ['v2', 'v5']}
    assert result['new'] == ['v%d' % i for i in range(6)] and result['kept'] == []


def test_spread_prefers_the_host_with_most_free_share():
    hosts = {'big': host(memory=16 * G), 'small': host(memory=4 * G)}
    result = place(hosts, [ve('a', memory='1G'), ve('b', memory='1G'), ve('c', memory='1G')]).as_dict()
    # big keeps more free share after each of the first VEs: 15/16 > 3/4, 14/16 > 3/4, 13/16 > 3/4
    assert result['per_host'] == {'big': ['a', 'b', 'c'], 'small': []}


def test_spread_counts_existing_guarantees():
    hosts = {'h1': host(guaranteed={'memory': 6 * G}), 'h2': host(guaranteed={'memory': 2 * G})}
    assert place(hosts, [ve('a', memory='1G')]).placement == {'a': 'h2'}


def test_pack_fills_the_fullest_host_that_fits():
    hosts = {'h1': host(memory=4 * G, guaranteed={'memory': 3 * G}), 'h2': host(memory=4 * G),
             'h3': host(memory=4 * G, guaranteed={'memory': 1 * G})}
    result = place(hosts, [ve('a', memory='512M'), ve('b', memory='512M'), ve('c', memory='512M')], 'pack')
    # h1 has room for two 512M VEs (1G free); the third goes to the next fullest, h3
    assert result.as_dict()['per_host'] == {'h1': ['a', 'b'], 'h2': [], 'h3': ['c']}


def test_pack_without_guarantees_uses_one_host():
    result = place(fleet(3), [ve('v%d' % i) for i in range(5)], 'pack').as_dict()
    assert result['per_host'] == {'h1': ['v0', 'v1', 'v2', 'v3', 'v4'], 'h2': [], 'h3': []}


def test_unknown_strategy():
    assert errmsg(fleet(2), [ve('a')], 'random') == "unknown placement strategy 'random': use spread or pack"


# -- stability ---------------------------------------------------------------------------------
@pytest.mark.parametrize('strategy', ['spread', 'pack'])
def test_second_run_keeps_every_ve_where_it_is(strategy):
    ves = [ve('v%02d' % i, memory='%dM' % (64 * (i % 3 + 1)), net='%dMbit' % (10 * (i % 4 + 1))) for i in range(12)]
    first = place(fleet(3), ves, strategy).as_dict()
    # the hosts after the first run: its VEs exist, their guarantees are summed in the facts
    after = {}
    for name, members in first['per_host'].items():
        memory = sum(64 * M * (int(v[1:]) % 3 + 1) for v in members)
        net = sum(10 ** 7 * (int(v[1:]) % 4 + 1) for v in members)
        after[name] = host(ves=members, guaranteed={'memory': memory, 'net': net})
    second = place(after, ves, strategy).as_dict()
    assert second['placement'] == first['placement']
    assert second['new'] == [] and second['kept'] == sorted(first['placement'])


def test_existing_ve_stays_even_where_another_host_is_emptier():
    hosts = {'h1': host(ves=['a', 'b', 'c'], guaranteed={'memory': 7 * G}), 'h2': host()}
    result = place(hosts, [ve('a', memory='1G'), ve('b'), ve('c'), ve('d')])
    assert result.placement == {'a': 'h1', 'b': 'h1', 'c': 'h1', 'd': 'h2'}
    assert result.kept == ['a', 'b', 'c'] and result.new == ['d']


def test_existing_ve_on_a_draining_host_stays_there():
    hosts = {'h1': host(ves=['a'], draining={'since': '2026-12-07T10:00:00Z', 'reason': 'kernel', 'by': 'ops'}),
             'h2': host()}
    result = place(hosts, [ve('a'), ve('b')])
    assert result.placement == {'a': 'h1', 'b': 'h2'}
    assert any('draining since 2026-12-07T10:00:00Z' in line for line in result.plan())


def test_other_ves_on_a_host_count_but_are_not_placed():
    hosts = {'h1': host(ves=['foreign'], guaranteed={'memory': 7 * G}), 'h2': host()}
    result = place(hosts, [ve('a', memory='2G')])
    assert result.placement == {'a': 'h2'} and 'foreign' not in result.placement


def test_output_does_not_depend_on_input_order():
    ves = [ve('v%02d' % i, memory='%dM' % (32 * (i % 5 + 1)), anti_affinity='g' if i < 3 else None) for i in range(20)]
    hosts = fleet(4)
    expected = place(hosts, ves).as_dict()
    for seed in range(5):
        shuffled = list(ves)
        random.Random(seed).shuffle(shuffled)
        reordered = dict(sorted(hosts.items(), key=lambda _item: random.Random(seed).random()))
        assert place(reordered, shuffled).as_dict() == expected


# -- draining, pinning -------------------------------------------------------------------------
def test_draining_host_receives_nothing():
    hosts = fleet(2)
    hosts['h1']['draining'] = {'since': '2026-12-07T10:00:00Z', 'reason': 'maintenance', 'by': 'evacuate'}
    result = place(hosts, [ve('v%d' % i) for i in range(4)]).as_dict()
    assert result['per_host'] == {'h1': [], 'h2': ['v0', 'v1', 'v2', 'v3']}


def test_all_hosts_draining():
    hosts = fleet(2, draining={'since': 'x'})
    assert errmsg(hosts, [ve('a')]) == 'VE a has no host to go to: every host is draining (h1, h2)'


def test_pinned_ve_goes_to_its_host_and_counts():
    hosts = {'h1': host(memory=2 * G), 'h2': host(memory=2 * G)}
    result = place(hosts, [ve('p', memory='1536M', host='h1'), ve('a', memory='1G')])
    assert result.placement == {'p': 'h1', 'a': 'h2'}


def test_pinned_to_a_draining_host():
    hosts = fleet(2)
    hosts['h2']['draining'] = {'since': 'x'}
    assert errmsg(hosts, [ve('p', host='h2')]) == 'VE p is pinned to host h2, which is draining and receives no new VE'


def test_pinned_to_an_unknown_host():
    assert 'pinned to host nope, which is not among the hosts placed on (h1, h2)' in errmsg(fleet(2), [ve('p', host='nope')])


def test_pinned_ve_that_does_not_fit_its_host():
    hosts = {'h1': host(memory=1 * G, guaranteed={'memory': 768 * M}), 'h2': host()}
    assert errmsg(hosts, [ve('p', memory='512M', host='h1')]) == (
        'VE p does not fit on host h1: memory.guarantee 512M is more than the 256M free there '
        '(memory 1G x overcommit 1, 768M guaranteed)')


# -- a VE on two hosts ---------------------------------------------------------------------------
def test_ve_pinned_on_two_hosts():
    assert errmsg(fleet(2), [ve('a', host='h2'), ve('a', host='h1')]) == \
        'VE a is listed on two hosts: h1 and h2; a VE lives on one host'


def test_ve_listed_twice():
    assert errmsg(fleet(2), [ve('a'), ve('a')]) == 'VE a is listed twice; list each VE once'


def test_ve_pinned_on_one_host_existing_on_another():
    hosts = {'h1': host(ves=['a']), 'h2': host()}
    assert errmsg(hosts, [ve('a', host='h2')]) == (
        'VE a is listed on two hosts: pinned to h2 but it exists on h1; move it with osvirt.vz.ve_migrate '
        'or change its host')


def test_ve_existing_on_two_hosts():
    hosts = {'h1': host(ves=['a']), 'h2': host(ves=['a'])}
    assert errmsg(hosts, [ve('a')]) == 'VE a is listed on two hosts: it exists on h1 and h2; remove one copy first'


def test_same_name_on_two_hosts_is_fine_when_not_desired():
    hosts = {'h1': host(ves=['tmp']), 'h2': host(ves=['tmp'])}
    assert place(hosts, [ve('a')]).placement == {'a': 'h1'}


# -- capacity ----------------------------------------------------------------------------------
def test_fits_nowhere_names_ve_resource_and_best_host():
    hosts = {'h1': host(memory=4 * G, guaranteed={'memory': 3 * G}),
             'h2': host(memory=4 * G, guaranteed={'memory': 2 * G})}
    assert errmsg(hosts, [ve('big', memory='3G')]) == (
        'VE big fits on no host: memory.guarantee 3G is more than the most any host has free, 2G on h2 '
        '(memory 4G x overcommit 1, 2G guaranteed)')


def test_fits_nowhere_for_net():
    hosts = fleet(2, net=10 ** 9)
    message = errmsg(hosts, [ve('fast', net='2Gbit')])
    assert message.startswith('VE fast fits on no host: net.rate 2Gbit is more than the most any host has free, 1Gbit on h1')


def test_fits_nowhere_for_disk_uses_free_space():
    hosts = {'h1': host(disk=10 * G), 'h2': host(disk=20 * G)}
    message = errmsg(hosts, [ve('fat', disk='30G')])
    assert 'disk.space 30G is more than the most any host has free, 20G on h2 (disk free 20G)' in message


def test_disk_of_new_ves_adds_up():
    hosts = {'h1': host(disk=10 * G)}
    place(hosts, [ve('a', disk='5G'), ve('b', disk='5G')])
    assert 'disk.space 1G' in errmsg(hosts, [ve('a', disk='5G'), ve('b', disk='5G'), ve('c', disk='1G')])


def test_no_single_host_has_all_resources():
    hosts = {'h1': host(memory=4 * G, net=10 ** 9, guaranteed={'net': 9 * 10 ** 8}),
             'h2': host(memory=4 * G, net=10 ** 9, guaranteed={'memory': 3 * G + 512 * M})}
    message = errmsg(hosts, [ve('x', memory='1G', net='500Mbit')])
    assert message.startswith('VE x fits on no host: no host has memory.guarantee 1G, net.rate 500Mbit free at the same time')


def test_overcommit_makes_room():
    ves = [ve('a', memory='3G'), ve('b', memory='3G')]
    assert 'fits on no host' in errmsg({'h1': host(memory=4 * G)}, ves)
    assert place({'h1': host(memory=4 * G, overcommit=1.5)}, ves).placement == {'a': 'h1', 'b': 'h1'}
    assert 'x overcommit 1.5' in errmsg({'h1': host(memory=4 * G, overcommit=1.5)}, ves + [ve('c', memory='1G')])


def test_overcommit_applies_to_net_not_disk():
    hosts = {'h1': host(net=10 ** 9, disk=1 * G, overcommit=2.0)}
    assert place(hosts, [ve('a', net='1500Mbit')]).placement == {'a': 'h1'}
    assert 'disk.space 2G' in errmsg(hosts, [ve('b', disk='2G')])


def test_biggest_ves_placed_first():
    # in list order, spread would put two 1G VEs on each host and leave no room for the 4G one
    hosts = {'h1': host(memory=4 * G), 'h2': host(memory=4 * G)}
    ves = [ve('s%d' % i, memory='1G') for i in range(4)] + [ve('big', memory='4G')]
    assert place(hosts, ves).as_dict()['per_host'] == {'h1': ['big'], 'h2': ['s0', 's1', 's2', 's3']}


def test_bad_limits_name_the_ve():
    assert errmsg(fleet(1), [ve('a', memory='lots')]).startswith("VE a: limits: memory.guarantee = 'lots'")


def test_bad_ve_name():
    assert 'invalid VE name' in errmsg(fleet(1), [{'name': 'Bad_Name'}])


def test_bad_facts():
    assert 'capacity.memory must be a number' in errmsg({'h1': {'capacity': {'memory': 'x'}}}, [ve('a')])


# -- anti-affinity -----------------------------------------------------------------------------
def test_anti_affinity_spreads_a_group_even_with_pack():
    ves = [ve('db%d' % i, anti_affinity='db') for i in range(3)] + [ve('app%d' % i) for i in range(3)]
    result = place(fleet(3), ves, 'pack').as_dict()
    hosts_of_db = {result['placement']['db%d' % i] for i in range(3)}
    assert hosts_of_db == {'h1', 'h2', 'h3'}
    assert {result['placement']['app%d' % i] for i in range(3)} == {'h1'}


def test_anti_affinity_group_larger_than_hosts():
    ves = [ve('db%d' % i, anti_affinity='db') for i in range(3)]
    assert errmsg(fleet(2), ves) == ('anti-affinity group db has 3 VEs (db0, db1, db2) but only 2 host(s) can take '
                                     'them (h1, h2); add hosts, end a drain or shrink the group')


def test_anti_affinity_with_one_host_left_after_drain():
    hosts = fleet(2)
    hosts['h2']['draining'] = {'since': 'x'}
    assert 'anti-affinity group db has 2 VEs (db0, db1) but only 1 host(s) can take them (h1)' in \
        errmsg(hosts, [ve('db0', anti_affinity='db'), ve('db1', anti_affinity='db')])


def test_anti_affinity_counts_members_that_exist_on_a_draining_host():
    hosts = fleet(2)
    hosts['h2'] = host(ves=['db1'], draining={'since': 'x'})
    result = place(hosts, [ve('db0', anti_affinity='db'), ve('db1', anti_affinity='db')])
    assert result.placement == {'db0': 'h1', 'db1': 'h2'}


def test_anti_affinity_members_already_together():
    hosts = {'h1': host(ves=['db0', 'db1']), 'h2': host()}
    assert errmsg(hosts, [ve('db0', anti_affinity='db'), ve('db1', anti_affinity='db')]) == (
        'anti-affinity group db: VEs db0 and db1 are both on host h1; move one with osvirt.vz.ve_migrate '
        'or change its host')


def test_anti_affinity_pinned_member_blocks_its_host():
    ves = [ve('db0', anti_affinity='db', host='h2'), ve('db1', anti_affinity='db'), ve('db2', anti_affinity='db')]
    result = place(fleet(3), ves)
    assert result.placement['db0'] == 'h2' and {result.placement['db1'], result.placement['db2']} == {'h1', 'h3'}


def test_anti_affinity_blocked_by_capacity():
    hosts = {'h1': host(memory=1 * G), 'h2': host(memory=8 * G)}
    ves = [ve('db0', memory='2G', anti_affinity='db'), ve('db1', memory='2G', anti_affinity='db')]
    # db0 takes h2 (the only one with room); db1 may not share it and h1 is too small
    assert errmsg(hosts, ves).startswith('VE db1 fits on no host: memory.guarantee 2G is more than the most any host '
                                         'has free, 1G on h1')


def test_bad_anti_affinity_value():
    assert 'anti_affinity must be a group name' in errmsg(fleet(1), [ve('a', anti_affinity=3)])


# -- output ------------------------------------------------------------------------------------
def test_result_shape_and_plan():
    hosts = {'h1': host(ves=['old']), 'h2': host()}
    result = place(hosts, [ve('old'), ve('new1', memory='64M')]).as_dict()
    assert set(result) == {'placement', 'new', 'kept', 'per_host', 'plan'}
    assert result['placement'] == {'new1': 'h2', 'old': 'h1'}
    assert result['new'] == ['new1'] and result['kept'] == ['old']
    assert result['per_host'] == {'h1': ['old'], 'h2': ['new1']}
    assert result['plan'][0] == 'placement of 2 VE(s) on 2 host(s), strategy spread: 1 new, 1 kept'
    assert result['plan'][2].startswith('h2: 1 VE(s), new: new1; kept: -; free after: memory 7.9G, net 10Gbit, disk 100G')


def test_empty_inputs():
    assert place({}, []).as_dict()['placement'] == {}
    assert place(fleet(2), []).as_dict()['per_host'] == {'h1': [], 'h2': []}
    assert 'every host is draining ()' in errmsg({}, [ve('a')])


def test_hundred_hosts_thousand_ves_is_quick():
    import time
    hosts = {'h%03d' % i: host(memory=64 * G) for i in range(100)}
    ves = [ve('v%04d' % i, memory='256M', anti_affinity='g%d' % (i % 50) if i % 2 else None) for i in range(1000)]
    start = time.monotonic()
    result = place(hosts, ves).as_dict()
    assert time.monotonic() - start < 10
    assert all(len(members) == 10 for members in result['per_host'].values())


# -- the filters -------------------------------------------------------------------------------
def test_filter_returns_the_interface_and_raises_filter_errors():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.osvirt.vz.plugins.filter.placement import placement
    result = placement(fleet(2), [ve('a'), ve('b')])
    assert result['per_host'] == {'h1': ['a'], 'h2': ['b']}
    with pytest.raises(AnsibleFilterError, match="unknown placement strategy 'fill': use spread or pack"):
        placement(fleet(2), [ve('a')], strategy='fill')


def test_placed_ves_strips_placement_keys():
    from ansible_collections.osvirt.vz.plugins.filter.placement import placed_ves, placement
    ves = [ve('b', anti_affinity='g'), ve('a', anti_affinity='g', host='h2'), ve('c')]
    result = placement(fleet(2), ves)
    assert placed_ves(ves, result, 'h2') == [{'name': 'a', 'template': 'busybox'}]
    assert [item['name'] for item in placed_ves(ves, result, 'h1')] == ['b', 'c']
