# -*- coding: utf-8 -*-
"""Pure parts of the anti-spoofing filter: the rules of a VE link's chain (no nft is run)."""

import importlib.util
import ipaddress
import sys
from pathlib import Path

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _antispoof, _nft

MAC = '02:11:22:33:44:55'
LINK_LOCAL = 'fe80::11:22ff:fe33:4455'


def rule_with(rules, text):
    found = [r for r in rules if text in r]
    assert len(found) == 1, (text, rules)
    return found[0]


def test_link_local_is_the_kernels_eui64():
    assert str(_antispoof.link_local(MAC)) == LINK_LOCAL
    # the universal/local bit flips: a globally administered MAC gets it set
    assert str(_antispoof.link_local('00:16:3e:00:00:01')) == 'fe80::216:3eff:fe00:1'


def test_every_rule_drops_and_counts_with_a_reason():
    for rule in _antispoof.rules(MAC, ['10.99.0.2/24'], ['fd00:99::2/64']):
        assert ' counter drop comment "' in rule, rule
        assert len(rule.rsplit('comment ', 1)[1]) <= 128   # nft's comment limit


def test_mac_and_ethertype_come_first():
    rules = _antispoof.rules(MAC.upper(), ['10.99.0.2/24'], [])
    assert rules[0].startswith('ether saddr != %s ' % MAC)
    assert rules[1].startswith('ether type != { arp, ip, ip6 } ')


def test_arp_and_ipv4_sources_are_the_ves_addresses():
    rules = _antispoof.rules(MAC, ['10.99.0.3/24', '10.99.0.2/24', '10.99.0.2/32'], [])
    assert rule_with(rules, 'ip saddr').startswith('ip saddr != { 10.99.0.2, 10.99.0.3 } ')
    assert rule_with(rules, 'arp saddr ip !=').startswith('arp saddr ip != { 0.0.0.0, 10.99.0.2, 10.99.0.3 } ')
    assert rule_with(rules, 'arp saddr ether').startswith('arp saddr ether != %s ' % MAC)
    assert rule_with(rules, 'arp saddr ip 0.0.0.0').startswith('arp saddr ip 0.0.0.0 arp operation != request ')
    # htype 1, ptype 0x0800, hlen 6, plen 4: what the offsets of arp saddr ether/ip assume
    assert rule_with(rules, '@nh,0,48').startswith('ether type arp @nh,0,48 != 0x000108000604 ')
    assert not any('{ arp, ip } counter' in r for r in rules)


def test_no_ipv4_address_means_no_arp_and_no_ipv4():
    rules = _antispoof.rules(MAC, [], ['fd00:99::2/64'])
    assert rules[2].startswith('ether type { arp, ip } counter drop ')
    assert not any(r.startswith(('arp ', 'ip saddr')) for r in rules)


def test_ipv6_sources_are_the_ves_addresses_its_link_local_and_dad():
    rules = _antispoof.rules(MAC, [], ['fd00:99::2/64', 'FD00:99::0:3/128'])
    assert rule_with(rules, 'ip6 saddr !=').startswith(
        'ip6 saddr != { ::, fd00:99::2, fd00:99::3, %s } ' % LINK_LOCAL)
    assert rule_with(rules, 'ip6 saddr ::').startswith('ip6 saddr :: meta l4proto != ipv6-icmp ')


def test_neighbour_advertisement_targets_are_matched_raw():
    rules = _antispoof.rules(MAC, [], ['fd00:99::2/64'])
    rule = rule_with(rules, 'nd-neighbor-advert')
    assert rule.startswith('icmpv6 type nd-neighbor-advert @th,64,128 != { 0x')
    targets = rule.split('{ ', 1)[1].split(' }', 1)[0].split(', ')
    assert [ipaddress.IPv6Address(int(t, 16)) for t in targets] == [ipaddress.IPv6Address('fd00:99::2'),
                                                                    ipaddress.IPv6Address(LINK_LOCAL)]
    assert all(len(t) == 34 for t in targets)   # 0x + 32 digits: the field's full 128 bits


def test_many_addresses_stay_in_sets():
    """A rule holds at most 128 expressions: addresses go into sets, never one compare each."""
    rules = _antispoof.rules(MAC, ['10.99.1.%d' % i for i in range(1, 201)],
                             ['fd00:99::%x' % i for i in range(1, 201)])
    assert all(rule.count('!=') <= 1 for rule in rules)
    assert rule_with(rules, 'nd-neighbor-advert').count('0x') == 201


def test_router_advertisements_redirects_and_dhcp_servers_are_dropped():
    rules = _antispoof.rules(MAC, ['10.99.0.2/24'], [])
    assert rule_with(rules, 'nd-router-advert').startswith('icmpv6 type { nd-router-advert, nd-redirect } ')
    assert rule_with(rules, 'icmp type').startswith('icmp type redirect ')
    assert rule_with(rules, 'udp sport').startswith('udp sport { 67, 547 } ')


def test_rules_do_not_depend_on_the_order_of_the_lists():
    one = _antispoof.rules(MAC, ['10.99.0.2/24', '10.99.0.3/24'], ['fd00:99::3/64', 'fd00:99::2/64'])
    two = _antispoof.rules(MAC, ['10.99.0.3/24', '10.99.0.2'], ['fd00:99::2', 'fd00:99::3/64'])
    assert one == two
    assert _antispoof.expected_digest('vz1', MAC, ['10.99.0.2'], []) == _nft.digest(
        _antispoof.chain_header('vz1'), _antispoof.rules(MAC, ['10.99.0.2'], []))


def test_chain_of_a_link():
    assert _antispoof.chain_name('vz1a2b3c4d0') == 've_vz1a2b3c4d0'
    assert _antispoof.chain_header('vz1a2b3c4d0') == (
        'type filter hook ingress device "vz1a2b3c4d0" priority -500; policy accept;')


@pytest.mark.parametrize('link', ['', 'a-b', 'a b', 'x' * 16, 'vz"; drop', None, 5])
def test_bad_links_are_refused(link):
    with pytest.raises(_antispoof.AntispoofError, match='host link'):
        _antispoof.chain_name(link)


@pytest.mark.parametrize('hwaddr, message', [
    ('02:11:22:33:44', 'six hex pairs'), ('zz:11:22:33:44:55', 'six hex pairs'), (None, 'six hex pairs'),
    ('01:00:5e:00:00:01', 'multicast')])
def test_bad_hwaddr_is_refused(hwaddr, message):
    with pytest.raises(_antispoof.AntispoofError, match=message):
        _antispoof.rules(hwaddr, [], [])


@pytest.mark.parametrize('ipv4, ipv6, message', [
    (['10.99.0.300/24'], [], 'not an IPv4 address'),
    (['fd00::1/64'], [], 'not an IPv4 address'),
    ([], ['10.99.0.2/24'], 'not an IPv6 address'),
    ('10.99.0.2/24', [], 'must be a list'),
    (['0.0.0.0/0'], [], 'cannot be the address of a VE'),
    (['224.0.0.1'], [], 'cannot be the address of a VE'),
    ([], ['::/0'], 'cannot be the address of a VE'),
    ([], ['ff02::1'], 'cannot be the address of a VE')])
def test_bad_addresses_are_refused(ipv4, ipv6, message):
    with pytest.raises(_antispoof.AntispoofError, match=message):
        _antispoof.rules(MAC, ipv4, ipv6)


def test_loads_standalone_as_the_hook_does(tmp_path, monkeypatch):
    """The hook imports copies named osvirt_vz_antispoof.py and osvirt_vz_nft.py."""
    module_utils = Path(_antispoof.__file__).parent
    (tmp_path / 'osvirt_vz_nft.py').write_bytes((module_utils / '_nft.py').read_bytes())
    (tmp_path / 'osvirt_vz_antispoof.py').write_bytes((module_utils / '_antispoof.py').read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.util.spec_from_file_location('osvirt_vz_antispoof', tmp_path / 'osvirt_vz_antispoof.py')
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, 'osvirt_vz_antispoof', module)
    monkeypatch.delitem(sys.modules, 'osvirt_vz_nft', raising=False)
    spec.loader.exec_module(module)
    assert module.rules(MAC, ['10.99.0.2'], []) == _antispoof.rules(MAC, ['10.99.0.2'], [])
    assert module._nft.__name__ == 'osvirt_vz_nft'
    with pytest.raises(module.VzError):
        module.rules('bad', [], [])
