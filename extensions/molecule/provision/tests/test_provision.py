# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the osvirt.vz.provision role on three lab hosts (molecule scenario ``provision``)."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest
import testinfra

testinfra_hosts = ['ansible://vz_hosts']

VZ_ROOT = '/var/lib/vz'
INVENTORY = os.path.join(os.environ.get('MOLECULE_EPHEMERAL_DIRECTORY', '.'), 'inventory')


@pytest.fixture(scope='module')
def placement():
    with open(os.path.join(os.environ['MOLECULE_EPHEMERAL_DIRECTORY'], 'placement.json')) as handle:
        return json.load(handle)


def _name(host):
    return host.backend.get_hostname()


def _meta(host, ve):
    return json.loads(host.file('%s/ves/%s/ve.json' % (VZ_ROOT, ve)).content_string)


def _states(host):
    out = host.check_output('lxc-ls -P %s/ves -f -F NAME,STATE' % VZ_ROOT)
    return dict(line.split()[:2] for line in out.splitlines()[1:] if line.strip())


def test_placement_spreads_the_group_and_keeps_the_pin(placement):
    where = placement['placement']
    assert sorted(where) == ['app1', 'app2', 'app3', 'pin1', 'web1', 'web2', 'web3']
    assert where['pin1'] == 'lab1'
    assert sorted(where[ve] for ve in ('web1', 'web2', 'web3')) == ['lab1', 'lab2', 'lab3']


def test_ves_on_their_planned_hosts_in_their_state(host, placement):
    mine = sorted(placement['per_host'][_name(host)])
    states = _states(host)
    assert sorted(states) == mine
    for ve in mine:
        assert states[ve] == ('STOPPED' if ve == 'app3' else 'RUNNING'), ve
        assert _meta(host, ve)['owner'] == 'provision'


def test_memory_limit_in_the_cgroup(host, placement):
    parent = host.ansible.get_variables()['host_cgroup_parent']
    wanted = {'web': 64 << 20, 'app': 32 << 20, 'pin': 48 << 20}
    for ve in placement['per_host'][_name(host)]:
        if ve == 'app3':
            continue
        v1 = host.file('/sys/fs/cgroup/memory/%s/%s/memory.limit_in_bytes' % (parent, ve))
        path = v1 if v1.exists else host.file('/sys/fs/cgroup/%s/%s/memory.max' % (parent, ve))
        assert int(path.content_string.strip()) == wanted[ve[:3]], ve


def test_one_busybox_version_the_same_on_every_host():
    versions = set()
    for other in testinfra.get_hosts(['ansible://vz_hosts'], ansible_inventory=INVENTORY):
        found = other.check_output('ls %s/templates/busybox' % VZ_ROOT).split()
        assert len(found) == 1, found
        versions.add(found[0])
        manifest = json.loads(other.file('%s/templates/busybox/%s/manifest.json' % (VZ_ROOT, found[0])).content_string)
        versions.add(manifest['checksum'])
    assert len(versions) == 2     # one version id and one checksum across the hosts


def test_addresses_from_the_hosts_pool_and_reachable(host, placement):
    pool = ipaddress.ip_network(host.ansible.get_variables()['lab_pool4'])
    for ve in placement['per_host'][_name(host)]:
        network = _meta(host, ve).get('network') or []
        if ve == 'app3':
            assert network == []
            continue
        address = ipaddress.ip_interface(network[0]['ipv4'][0]).ip
        assert address in pool, (ve, str(address))
        assert host.run('busybox ping -c 1 -W 2 %s' % address).rc == 0, ve


def test_guard_chain_per_running_ve_link(host, placement):
    table = host.check_output('nft list table netdev osvirt_vz_guard')
    for ve in placement['per_host'][_name(host)]:
        network = _meta(host, ve).get('network') or []
        if network:
            assert 'chain ve_%s' % network[0]['host_link'] in table, ve
