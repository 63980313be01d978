# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cost of address leases (plugins/module_utils/_addrpool.py) on a host with many addresses in use.

    python3 bench/pools.py [--leases 1000] [--n 100] [--procs 20] [--dir /tmp]

(needs `make collection-link`; no root, no LXC, no network: leases are files in a temporary
vz_root that is removed at the end). One go, figures printed:

- allocate, per address, with --leases leases of live VEs already in the pool (IPv4 /20 and IPv6
  /64): the lease directory is listed once and each lease below the first free address is read;
- the same when all those leases are stale (their VEs gone): the lowest one is taken over;
- claim, owner, predict, of and release;
- --procs processes allocating from one pool at the same moment (each as a VE creation does it:
  VE lock, allocate, VE directory), wall time and distinct addresses.

The issue has no time anchor for pools; the figure to compare with is the cost of creating one VE
(docs/benchmarks.md: tens of milliseconds), which an allocation must not noticeably add to.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path.insert(0, os.path.join(REPO, '.build', 'collections'))

# pylint: disable=wrong-import-position
from ansible_collections.osvirt.vz.plugins.module_utils._addrpool import Leases  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._locks import Lock  # noqa: E402


def timed(func, *args):
    start = time.perf_counter()
    result = func(*args)
    return (time.perf_counter() - start) * 1000.0, result


def summary(label, times):
    times = sorted(times)
    p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
    print('  %-52s n=%-4d median %7.3f ms   p90 %7.3f ms   max %7.3f ms'
          % (label, len(times), statistics.median(times), p90, times[-1]))


def fresh_host(base, name):
    host = Host(vz_root=os.path.join(base, name))
    host.ensure_layout()
    return host


def fill(host, leases, count, addresses, live=True):
    for i in range(count):
        ve = 'ba%d' % i
        if live:
            os.mkdir(host.ve_dir(ve))
        leases.claim(ve, 'eth0', addresses(i))


def bench_allocate(base, args, family):
    pool = '10.20.0.0/20' if family == 4 else 'fd00:20::/64'

    def addresses(i):
        if family == 4:
            return '10.20.%d.%d' % ((i + 1) // 256, (i + 1) % 256)
        return 'fd00:20::%x' % (i + 1)
    host = fresh_host(base, 'live%d' % family)
    leases = Leases(host)
    claim_times = []
    for i in range(args.leases):
        ve = 'ba%d' % i
        os.mkdir(host.ve_dir(ve))
        claim_times.append(timed(leases.claim, ve, 'eth0', addresses(i))[0])
    print('pool %s, %d leases of live VEs present:' % (pool, args.leases))
    summary('claim (one lease made)', claim_times)
    summary('owner (one lease read)', [timed(leases.owner, addresses(i))[0] for i in range(0, args.leases, 10)])
    summary('predict (check mode)', [timed(leases.predict, pool)[0] for _round in range(20)])
    times = []
    for i in range(args.n):
        ve = 'bn%d' % i
        os.mkdir(host.ve_dir(ve))
        times.append(timed(leases.allocate, ve, 'eth0', pool)[0])
    summary('allocate, per address (%d more)' % args.n, times)
    summary('of (all leases listed and read)', [timed(leases.of, 'bn0')[0] for _round in range(10)])
    summary('release of one VE (all leases read)',
            [timed(leases.release, 'bn%d' % i)[0] for i in range(min(args.n, 20))])
    shutil.rmtree(host.vz_root)

    host = fresh_host(base, 'stale%d' % family)
    leases = Leases(host)
    fill(host, leases, args.leases, addresses, live=False)
    times = []
    for i in range(args.n):
        ve = 'bn%d' % i
        os.mkdir(host.ve_dir(ve))
        times.append(timed(leases.allocate, ve, 'eth0', pool)[0])
    print('pool %s, %d stale leases (VEs gone, never released):' % (pool, args.leases))
    summary('allocate, per address (takes the lowest stale one over)', times)
    shutil.rmtree(host.vz_root)


def _create(vz_root, name, pool, barrier, results):
    host = Host(vz_root=vz_root)
    with Lock(host.locks_dir, 've', name, 'bench', timeout=60):
        barrier.wait(120)
        start = time.perf_counter()
        address = Leases(host).allocate(name, 'eth0', pool)
        took = (time.perf_counter() - start) * 1000.0
        os.mkdir(host.ve_dir(name))
    results.put((address, took))


def bench_parallel(base, args):
    ctx = multiprocessing.get_context('fork')
    host = fresh_host(base, 'parallel')
    barrier = ctx.Barrier(args.procs + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=_create, args=(host.vz_root, 'bp%d' % i, '10.20.0.0/24', barrier, results))
               for i in range(args.procs)]
    for worker in workers:
        worker.start()
    barrier.wait(120)
    start = time.perf_counter()
    got = [results.get(timeout=120) for _worker in workers]
    wall = (time.perf_counter() - start) * 1000.0
    for worker in workers:
        worker.join()
    addresses = [a for a, _t in got]
    print('%d processes allocating from 10.20.0.0/24 at the same moment:' % args.procs)
    print('  wall %.1f ms, %d distinct addresses of %d, lease files %d'
          % (wall, len(set(addresses)), len(addresses),
             len([n for n in os.listdir(Leases(host).directory) if not n.startswith('.')])))
    summary('allocate in one process, under contention', [t for _a, t in got])
    shutil.rmtree(host.vz_root)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--leases', type=int, default=1000)
    parser.add_argument('--n', type=int, default=100)
    parser.add_argument('--procs', type=int, default=20)
    parser.add_argument('--dir', default=None, help='where the temporary vz_root goes (default: $TMPDIR)')
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix='vzbench-pools-', dir=args.dir)
    try:
        print('machine: %s, %d CPUs, Python %s, leases on %s'
              % (platform.node(), os.cpu_count(), platform.python_version(), base))
        bench_allocate(base, args, 4)
        bench_allocate(base, args, 6)
        bench_parallel(base, args)
        print('anchor: none in the issue for pools; one VE creation costs tens of ms (docs/benchmarks.md)')
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == '__main__':
    main()
