# -*- coding: utf-8 -*-
"""Pure parts of the nftables runner: scripts and digests (no nft is run)."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _nft


HEADER = 'type filter hook ingress device "vz1" priority -500; policy accept;'


def test_script_replaces_the_chain_in_one_transaction():
    script = _nft.replace_chain_script('netdev', 'osvirt_vz', 've_vz1', HEADER, ['ether type arp drop'])
    lines = script.splitlines()
    assert lines[0] == 'add table netdev osvirt_vz'
    assert lines[1] == 'add chain netdev osvirt_vz ve_vz1 { %s }' % HEADER
    assert lines[2] == 'flush chain netdev osvirt_vz ve_vz1'
    digest = _nft.digest(HEADER, ['ether type arp drop'])
    assert lines[3] == 'add rule netdev osvirt_vz ve_vz1 counter comment "osvirt.vz %s"' % digest
    assert lines[4] == 'add rule netdev osvirt_vz ve_vz1 ether type arp drop'


def test_regular_chain_has_no_header():
    script = _nft.replace_chain_script('ip', 't', 'c', None, [])
    assert 'add chain ip t c\n' in script


def test_digest_changes_with_header_and_rules():
    assert _nft.digest(HEADER, ['a']) != _nft.digest(HEADER, ['b'])
    assert _nft.digest(HEADER, ['a']) != _nft.digest(HEADER.replace('vz1', 'vz2'), ['a'])
    assert _nft.digest(HEADER, ['a', 'b']) != _nft.digest(HEADER, ['b', 'a'])


@pytest.mark.parametrize('name', ['', '1abc', 'a-b', 'a b', 'a;drop', 'x' * 65, None])
def test_bad_names_are_refused(name):
    with pytest.raises(_nft.NftError):
        _nft.replace_chain_script('inet', name, 'c', None, [])
    with pytest.raises(_nft.NftError):
        _nft.replace_chain_script('inet', 't', name, None, [])


def test_bad_family_is_refused():
    with pytest.raises(_nft.NftError, match='family'):
        _nft.replace_chain_script('ipx', 't', 'c', None, [])
