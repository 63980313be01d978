"""Address leases and pool allocation (_addrpool): real lease files in a temporary vz_root."""

import json
import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._addrpool import Leases, canonical, parse_pool, pool_size
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._locks import Lock

POOL = '10.20.0.0/24'


@pytest.fixture
def host(tmp_path):
    host = Host(vz_root=str(tmp_path / 'vz'))
    host.ensure_layout()
    return host


@pytest.fixture
def leases(host):
    return Leases(host)


def live(host, *names):
    """Make VEs exist on the host (their directories), so their leases are not stale."""
    for name in names:
        os.makedirs(host.ve_dir(name), exist_ok=True)


def lease_files(leases):
    return sorted(n for n in os.listdir(leases.directory) if not n.startswith('.'))


def test_allocate_gives_the_lowest_free_address(host, leases):
    live(host, 'web1', 'web2', 'web3')
    assert leases.allocate('web1', 'eth0', POOL) == '10.20.0.1'
    assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.2'
    leases.claim('web3', 'eth0', '10.20.0.4/24')
    assert leases.allocate('web3', 'eth1', POOL) == '10.20.0.3'
    assert leases.allocate('web3', 'eth1', POOL) == '10.20.0.5'
    assert lease_files(leases) == ['10.20.0.1', '10.20.0.2', '10.20.0.3', '10.20.0.4', '10.20.0.5']
    with open(os.path.join(leases.directory, '10.20.0.3')) as handle:
        assert json.load(handle) == {'ve': 'web3', 'interface': 'eth1'}
    assert leases.of('web3') == {'10.20.0.3': 'eth1', '10.20.0.4': 'eth0', '10.20.0.5': 'eth1'}


def test_lease_directory_is_private(host, leases):
    live(host, 'web1')
    leases.allocate('web1', 'eth0', POOL)
    assert os.stat(leases.directory).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(leases.directory, '10.20.0.1')).st_mode & 0o077 == 0


def test_exclude_skips_bridge_and_gateway_addresses(host, leases):
    live(host, 'web1')
    exclude = ['10.20.0.1/24', '10.20.0.2', 'fd00:20::1/64', '192.168.1.1']
    assert leases.predict(POOL, exclude) == '10.20.0.3'
    assert leases.allocate('web1', 'eth0', POOL, exclude) == '10.20.0.3'
    assert leases.allocate('web1', 'eth0', POOL, '10.20.0.1') == '10.20.0.2'


def test_predict_changes_nothing(host, leases):
    assert leases.predict(POOL) == '10.20.0.1'
    assert not os.path.exists(leases.directory)
    live(host, 'web1')
    leases.claim('web1', 'eth0', '10.20.0.1')
    assert leases.predict(POOL) == '10.20.0.2'
    assert lease_files(leases) == ['10.20.0.1']


def test_release_removes_only_that_ves_leases(host, leases):
    live(host, 'web1', 'web2')
    for _round in range(3):
        leases.allocate('web1', 'eth0', POOL)
    leases.allocate('web2', 'eth0', POOL)
    assert leases.release('web1', ['10.20.0.2/24', '10.20.0.4']) == ['10.20.0.2']
    assert lease_files(leases) == ['10.20.0.1', '10.20.0.3', '10.20.0.4']
    assert leases.allocate('web2', 'eth1', POOL) == '10.20.0.2'
    assert leases.release('web1') == ['10.20.0.1', '10.20.0.3']
    assert leases.of('web1') == {}
    assert leases.of('web2') == {'10.20.0.2': 'eth1', '10.20.0.4': 'eth0'}
    assert leases.release('web1') == []


def test_claim_is_idempotent_for_the_same_ve(host, leases):
    live(host, 'web1')
    assert leases.claim('web1', 'eth0', '10.20.0.5/24') is True
    assert leases.claim('web1', 'eth0', '10.20.0.5') is False
    assert leases.owner('10.20.0.5') == {'ve': 'web1', 'interface': 'eth0'}
    # the address moved to another interface of the same VE: the lease follows
    assert leases.claim('web1', 'eth1', '10.20.0.5') is True
    assert leases.of('web1') == {'10.20.0.5': 'eth1'}
    assert lease_files(leases) == ['10.20.0.5']


def test_claim_of_another_ves_address_names_that_ve(host, leases):
    live(host, 'web1', 'web2')
    leases.claim('web1', 'eth0', '10.20.0.5')
    with pytest.raises(VzError) as err:
        leases.claim('web2', 'eth0', '10.20.0.5/24')
    assert str(err.value) == 'address 10.20.0.5 is already used by VE web1 (interface eth0) on this host'
    assert leases.of('web2') == {}


def test_exhausted_pool_names_pool_size_and_asker(host, leases):
    live(host, *('ve%d' % i for i in range(7)))
    got = [leases.allocate('ve%d' % i, 'eth0', '10.20.0.0/29') for i in range(6)]
    assert got == ['10.20.0.%d' % i for i in range(1, 7)]
    with pytest.raises(VzError) as err:
        leases.allocate('ve6', 'eth0', '10.20.0.0/29')
    assert str(err.value) == ('address pool 10.20.0.0/29 is exhausted: all 6 addresses are in use; '
                              'VE ve6 asked for one for interface eth0')
    with pytest.raises(VzError, match='^address pool 10.20.0.0/29 is exhausted: all 6 addresses are in use$'):
        leases.predict('10.20.0.0/29')
    assert leases.of('ve6') == {}


def test_exhausted_message_counts_exclusions(host, leases):
    live(host, 'web1')
    leases.allocate('web1', 'eth0', '10.20.0.0/30', ['10.20.0.1'])
    with pytest.raises(VzError, match=r'all 2 addresses are in use \(1 of them excluded'):
        leases.allocate('web1', 'eth0', '10.20.0.0/30', ['10.20.0.1', '10.20.0.0', '10.20.0.3'])


def test_stale_lease_is_taken_over(host, leases):
    live(host, 'web1', 'web2')
    leases.claim('gone', 'eth0', '10.20.0.1')      # its VE was removed without releasing
    leases.claim('web1', 'eth0', '10.20.0.2')
    assert leases.owner('10.20.0.1') is None
    assert leases.predict(POOL) == '10.20.0.1'
    assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.1'
    assert leases.owner('10.20.0.1') == {'ve': 'web2', 'interface': 'eth0'}
    assert lease_files(leases) == ['10.20.0.1', '10.20.0.2']
    assert not [n for n in os.listdir(leases.directory) if n.startswith('.')]
    # claiming a stale lease works too
    leases.claim('gone', 'eth0', '10.20.0.9')
    leases.claim('web1', 'eth1', '10.20.0.9')
    assert leases.of('web1') == {'10.20.0.2': 'eth0', '10.20.0.9': 'eth1'}
    # the takeovers locked the gone VE's name: no lock file of it is left
    assert 've-gone.lock' not in os.listdir(host.locks_dir)


def test_lease_of_ve_being_created_is_not_stale(host, leases):
    """A VE under construction holds its lock while its directory is still in .tmp."""
    live(host, 'web2')
    with Lock(host.locks_dir, 've', 'new1', 'osvirt.vz.ve new1 (state=started)'):
        leases.claim('new1', 'eth0', '10.20.0.1')
        assert leases.owner('10.20.0.1') == {'ve': 'new1', 'interface': 'eth0'}
        assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.2'
        with pytest.raises(VzError, match='already used by VE new1'):
            leases.claim('web2', 'eth0', '10.20.0.1')
    # the creation failed and its lock is gone: the address is free again
    assert leases.owner('10.20.0.1') is None
    assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.1'


def test_ipv6_pool_skips_the_subnet_router_anycast_address(host, leases):
    live(host, 'web1')
    pool = 'fd00:20::/64'
    assert leases.allocate('web1', 'eth0', pool) == 'fd00:20::1'
    assert leases.allocate('web1', 'eth0', pool, ['fd00:20::2/64']) == 'fd00:20::3'
    leases.claim('web1', 'eth0', 'FD00:20:0:0::2/64')
    assert lease_files(leases) == ['fd00:20::1', 'fd00:20::2', 'fd00:20::3']
    assert leases.of('web1') == {'fd00:20::1': 'eth0', 'fd00:20::2': 'eth0', 'fd00:20::3': 'eth0'}
    # both families live side by side in one directory
    assert leases.allocate('web1', 'eth0', POOL) == '10.20.0.1'
    assert leases.predict(pool) == 'fd00:20::4'


def test_unreadable_lease_is_never_taken(host, leases):
    live(host, 'web1', 'web2')
    os.makedirs(leases.directory, exist_ok=True)
    with open(os.path.join(leases.directory, '10.20.0.1'), 'w') as handle:
        handle.write('')
    assert leases.allocate('web1', 'eth0', POOL) == '10.20.0.2'
    with pytest.raises(VzError, match=r'address lease .*/net/leases/10.20.0.1 is unreadable'):
        leases.claim('web2', 'eth0', '10.20.0.1')
    with pytest.raises(VzError, match='unreadable'):
        leases.owner('10.20.0.1')


def test_foreign_files_and_leftovers_are_ignored(host, leases):
    live(host, 'web1')
    os.makedirs(leases.directory, exist_ok=True)
    for name in ('README', '.new-abc', '010.20.0.1'):
        with open(os.path.join(leases.directory, name), 'w') as handle:
            handle.write('x')
    old = os.path.join(leases.directory, '.new-old')
    with open(old, 'w') as handle:
        handle.write('x')
    os.utime(old, (1, 1))
    assert leases.allocate('web1', 'eth0', POOL) == '10.20.0.1'
    assert not os.path.exists(old)
    assert os.path.exists(os.path.join(leases.directory, '.new-abc'))
    assert leases.of('web1') == {'10.20.0.1': 'eth0'}


@pytest.mark.parametrize('pool, message', [
    ('10.20.0.0/31', 'address pool 10.20.0.0/31 is too small: a pool must be a /30 or larger'),
    ('10.20.0.5/24', 'address pool 10.20.0.5/24 has host bits set; the network is 10.20.0.0/24'),
    ('10.20.0.0', 'must be a network with a prefix length'),
    ('10.20.0.0/33', 'is not a valid IPv4 or IPv6 network'),
    ('fd00::/127', 'a pool must be a /126 or larger'),
    (None, 'must be a network with a prefix length'),
])
def test_bad_pools_are_refused(leases, pool, message):
    with pytest.raises(VzError, match=message.replace('.', r'\.').replace('/', '/')):
        leases.allocate('web1', 'eth0', pool)
    assert not os.path.exists(leases.directory)


@pytest.mark.parametrize('value', ['10.20.0.256', 'fe80::1%eth0', '10.20.0.5/40', '', ' 10.20.0.5', 5])
def test_bad_addresses_are_refused(leases, value):
    with pytest.raises(VzError):
        leases.claim('web1', 'eth0', value)
    assert not os.path.exists(leases.directory)


@pytest.mark.parametrize('ve, ifname', [('../x', 'eth0'), ('Web1', 'eth0'), ('web1', 'eth0/x'), ('web1', '')])
def test_names_are_validated_before_any_path(leases, ve, ifname):
    with pytest.raises(VzError, match='invalid'):
        leases.allocate(ve, ifname, POOL)
    with pytest.raises(VzError, match='invalid'):
        leases.claim(ve, ifname, '10.20.0.5')
    assert not os.path.exists(leases.directory)


def test_canonical_and_sizes():
    assert canonical('10.20.0.5/24') == '10.20.0.5'
    assert canonical('FD00:20:0::5/64') == 'fd00:20::5'
    assert pool_size(parse_pool('10.20.0.0/29')) == 6
    assert pool_size(parse_pool('10.20.0.0/30')) == 2
    assert pool_size(parse_pool('fd00:20::/64')) == 2 ** 64 - 1


def test_a_prepared_lease_has_no_name_a_kill_could_leave_behind(host, leases):
    # a run SIGKILLed between writing its lease and linking it under the address used to leave a
    # ".new-*" file for an hour; an O_TMPFILE lease has no name until it is the lease
    live(host, 'web1')
    leases.claim('web1', 'eth0', '10.20.0.7')
    with leases._prepared('web2', 'eth0') as tmp:
        assert tmp.startswith('/proc/self/fd/')
        assert sorted(os.listdir(leases.directory)) == ['10.20.0.7']
    leases.claim('web1', 'eth1', '10.20.0.7')   # the lease follows the interface: replaced by rename
    assert sorted(os.listdir(leases.directory)) == ['10.20.0.7']
    assert leases.owner('10.20.0.7')['interface'] == 'eth1'


def test_a_moved_ves_addresses_stay_reserved_on_the_host_it_left(host, leases):
    live(host, 'web1', 'web2')
    assert leases.allocate('web1', 'eth0', POOL) == '10.20.0.1'
    leases.claim('web1', 'eth1', '10.20.0.9')
    assert leases.reserve_moved('web1', 'lab2', '2026-12-07T23:00:00Z') == ['10.20.0.1', '10.20.0.9']
    leases.release('web1')
    os.rmdir(host.ve_dir('web1'))
    assert leases.of('web1') == {}
    # the pool passes over the reserved addresses; another VE cannot claim them
    assert leases.predict(POOL) == '10.20.0.2'
    assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.2'
    assert leases.owner('10.20.0.9') == {'ve': 'web1', 'interface': 'eth1', 'moved_to': 'lab2',
                                         'since': '2026-12-07T23:00:00Z'}
    with pytest.raises(VzError, match=r'10\.20\.0\.9 is reserved for VE web1, which moved from this host to lab2'):
        leases.claim('web2', 'eth1', '10.20.0.9')
    # the VE of that name comes back: it leases them again; its arrival voids the reservations
    live(host, 'web1')
    assert leases.claim('web1', 'eth0', '10.20.0.1') is True
    assert sorted(leases.reservations('web1')) == ['10.20.0.1', '10.20.0.9']
    assert leases.release_moved('web1') == ['10.20.0.1', '10.20.0.9']
    assert leases.reservations() == {}
    assert leases.owner('10.20.0.9') is None


def test_an_unreadable_reservation_keeps_its_address_out_of_the_pool(host, leases):
    live(host, 'web2')
    os.makedirs(leases.moved_directory)
    with open(os.path.join(leases.moved_directory, '10.20.0.1'), 'w') as handle:
        handle.write('{cut')
    with open(os.path.join(leases.moved_directory, '.tmp-x'), 'w') as handle:
        handle.write('')
    assert leases.allocate('web2', 'eth0', POOL) == '10.20.0.2'
    with pytest.raises(VzError, match='is not valid JSON'):
        leases.owner('10.20.0.1')
