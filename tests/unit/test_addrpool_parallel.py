"""Pool allocation from many processes at the same moment: never the same address twice.

Each process does what the creation of a VE does: take the VE's lock, allocate, make the VE's
directory, let go of the lock. A barrier releases all of them at once.
"""

import multiprocessing
import os
import queue
import threading

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._addrpool import Leases
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._locks import Lock

CTX = multiprocessing.get_context('fork')


def _create(vz_root, name, pool, barrier, results):
    try:
        host = Host(vz_root=vz_root)
        with Lock(host.locks_dir, 've', name, 'osvirt.vz.ve %s (state=started)' % name, timeout=30):
            barrier.wait(60)
            try:
                address = Leases(host).allocate(name, 'eth0', pool)
            except VzError as exc:
                results.put((name, 'error', str(exc)))
                return
            os.mkdir(host.ve_dir(name))
        results.put((name, 'ok', address))
    except Exception as exc:  # pylint: disable=broad-except
        results.put((name, 'crash', repr(exc)))


def _race(tmp_path, pool, count, stale=()):
    host = Host(vz_root=str(tmp_path / 'vz'))
    host.ensure_layout()
    for i, address in enumerate(stale):  # leases of VEs removed without releasing them
        Leases(host).claim('gone%d' % i, 'eth0', address)
    barrier = CTX.Barrier(count)
    results = CTX.Queue()
    workers = [CTX.Process(target=_create, args=(host.vz_root, 've%d' % i, pool, barrier, results))
               for i in range(count)]
    for worker in workers:
        worker.start()
    got = []
    try:
        for _worker in range(count):
            got.append(results.get(timeout=120))
    except queue.Empty:
        pytest.fail('only %d of %d processes reported' % (len(got), count))
    finally:
        for worker in workers:
            worker.join(30)
    assert not [g for g in got if g[1] == 'crash'], got
    leases = Leases(host)
    files = sorted(n for n in os.listdir(leases.directory) if not n.startswith('.'))
    return got, files, leases


def test_twenty_processes_get_twenty_distinct_addresses(tmp_path):
    got, files, leases = _race(tmp_path, '10.20.0.0/24', 20)
    addresses = [address for _name, outcome, address in got if outcome == 'ok']
    assert len(addresses) == 20
    assert len(set(addresses)) == 20
    assert sorted(addresses, key=lambda a: int(a.rsplit('.', 1)[1])) == ['10.20.0.%d' % i for i in range(1, 21)]
    assert len(files) == 20 and set(files) == set(addresses)
    for name, _outcome, address in got:
        assert leases.of(name) == {address: 'eth0'}


def test_forty_processes_on_a_pool_of_thirty(tmp_path):
    got, files, _leases = _race(tmp_path, '10.20.0.0/27', 40)
    ok = [address for _name, outcome, address in got if outcome == 'ok']
    errors = [message for _name, outcome, message in got if outcome == 'error']
    assert len(ok) == 30 and len(set(ok)) == 30
    assert len(errors) == 10
    for message in errors:
        assert message.startswith('address pool 10.20.0.0/27 is exhausted: all 30 addresses are in use')
    assert sorted(files) == sorted(ok)


def test_forty_processes_take_over_thirty_stale_leases(tmp_path):
    stale = ['10.20.0.%d' % i for i in range(1, 31)]
    got, files, leases = _race(tmp_path, '10.20.0.0/27', 40, stale)
    ok = [address for _name, outcome, address in got if outcome == 'ok']
    assert sorted(ok) == sorted(stale)
    assert len([g for g in got if g[1] == 'error']) == 10
    assert sorted(files) == sorted(stale)
    assert not [n for n in os.listdir(leases.directory) if n.startswith('.')]
    for name, outcome, address in got:
        if outcome == 'ok':
            assert leases.of(name) == {address: 'eth0'}


def test_threads_of_one_process_get_distinct_addresses(tmp_path):
    """osvirt.vz.ve creates the VEs of one task in threads: leases hold between threads too."""
    host = Host(vz_root=str(tmp_path / 'vz'))
    host.ensure_layout()
    barrier = threading.Barrier(16)
    got = {}

    def create(name):
        with Lock(host.locks_dir, 've', name, 'test', timeout=30):
            barrier.wait(30)
            got[name] = Leases(host).allocate(name, 'eth0', 'fd00:20::/120')
            os.mkdir(host.ve_dir(name))

    threads = [threading.Thread(target=create, args=('ve%d' % i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(got.values()) == sorted('fd00:20::%x' % i for i in range(1, 17))
