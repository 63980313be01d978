# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""N VEs from debian-12, three ways side by side in one run (the templates issue's last figure).

  (a) osvirt.vz.ve     one task with ``ves:`` (state present), then one task state started
  (b) lxc_container    community.general.lxc_container: overlayfs snapshot clones of a base
                       container (clone_snapshot: true, backing_store: overlayfs), then started
  (c) lxc-copy         ``lxc-copy -P /var/lib/lxc -n <base> -N <name>`` (plain copy, no snapshot)
                       per VE, then ``lxc-start``

For each: per-VE create time (create + start), disk used per VE right after creation (``du -sB1``
of its directory), and the page cache charged to the VEs' memory cgroups with 1 running VE (after
dropping caches) and with N running VEs (each waited for until ``systemctl is-system-running``
says running or degraded, bounded).

(b) and (c) live in LXC's default lxcpath /var/lib/lxc (lxc_container knows no other, see
bench/README.md) under names unique to the run; the base is a plain copy of the shifted debian-12
rootfs with the config osvirt.vz.ve wrote for a warm-up VE. Everything made here is removed at the
end. Run as root, with .venv-bench/bin first on PATH:

    python3 bench/templates_compare.py [--n 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# pylint: disable=wrong-import-position
from ve_create import (Ansible, hierarchies, machine, make_child_cgroups, percentile,  # noqa: E402
                       run, task_times, teardown)
from templates import CACHE, dir_bytes, drop_caches, meminfo_cached  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LXCPATH = '/var/lib/lxc'
TARGET_DISK = 1 << 20
MEMORY = '/sys/fs/cgroup/memory'
BOOT_DEADLINE_S = 240   # for all N VEs of a variant to reach running/degraded


def log(msg):
    print('[templates-compare %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def memory_cgroup_cache(path):
    """(page cache, shmem) of a v1 memory cgroup directory (memory.stat total_*), 0s if it is gone."""
    try:
        with open(os.path.join(path, 'memory.stat'), encoding='utf-8') as handle:
            stats = dict(line.split() for line in handle)
    except OSError:
        return 0, 0
    return int(stats.get('total_cache', 0)), int(stats.get('total_shmem', 0))


def system_state(lxcpath, name):
    return run(['lxc-attach', '-P', lxcpath, '-n', name, '--clear-env', '--',
                'systemctl', 'is-system-running'], check=False).stdout.strip()


def wait_all_running(lxcpath, names, deadline_s=BOOT_DEADLINE_S):
    """Poll every VE until running/degraded or the shared deadline; return {state: count}."""
    deadline = time.monotonic() + deadline_s
    states = {n: '' for n in names}
    while time.monotonic() < deadline:
        for name in names:
            if states[name] not in ('running', 'degraded'):
                states[name] = system_state(lxcpath, name) or 'no answer'
        if all(s in ('running', 'degraded') for s in states.values()):
            break
        time.sleep(1)
    counts = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def joiner(procs):
    """preexec_fn that moves the child into the cgroups whose cgroup.procs files are given."""
    def join():
        for path in procs:
            with open(path, 'w', encoding='utf-8') as handle:
                handle.write(str(os.getpid()))
    return join


class Compare:
    def __init__(self, args):
        self.args = args
        self.tag = str(os.getpid())
        self.workdir = tempfile.mkdtemp(prefix='vz-bench-tcmp-', dir='/var/tmp')
        os.chmod(self.workdir, 0o711)
        self.vz_root = os.path.join(self.workdir, 'vz')
        os.makedirs(self.vz_root, 0o711)
        os.makedirs(os.path.join(self.workdir, 'ansible'))
        self.ansible = Ansible(os.path.join(self.workdir, 'ansible'))
        self.parent = 'vzbench-tcmpa-%s' % self.tag          # cgroup parent of (a)
        self.child = 'vzbench-tcmpbc-%s' % self.tag          # own child cgroup for (b) and (c)
        self.base = 'vzb%s-base' % self.tag
        self.ours = [self.base]                              # containers made in /var/lib/lxc
        self.results = {}
        self.errors = {}
        self.load = []

    def sample_load(self):
        with open('/proc/loadavg', encoding='utf-8') as handle:
            self.load.append(float(handle.read().split()[0]))

    def names(self, key):
        return ['vzb%s-%s%02d' % (self.tag, key, i) for i in range(1, self.args.n + 1)]

    # -- setup (not timed) ----------------------------------------------------------------
    def setup(self):
        common = {'vz_root': self.vz_root}
        log('building debian-12 (debootstrap, packages from %s)' % CACHE)
        self.ansible.play('setup', [
            {'name': 'template', 'osvirt.vz.template': dict(common, name='debian-12', source={
                'type': 'debootstrap', 'suite': 'bookworm', 'cache_dir': CACHE})},
            {'name': 'warm-up VE', 'osvirt.vz.ve': dict(common, name='vzbwarm', template='debian-12',
                                                        state='present', cgroup_parent=self.parent)},
        ])
        with open(os.path.join(self.vz_root, 'ves', 'vzbwarm', 'config'), encoding='utf-8') as handle:
            config = handle.read()
        lower = re.search(r'^lxc\.rootfs\.path = overlay:([^:]+):', config, re.M).group(1)
        log('base container %s/%s (plain copy of %s)' % (DEFAULT_LXCPATH, self.base, lower))
        base = os.path.join(DEFAULT_LXCPATH, self.base)
        os.makedirs(base, 0o711)
        os.chmod(base, 0o711)
        rootfs = os.path.join(base, 'rootfs')   # lxc-copy --snapshot wants the name in the rootfs path
        run(['cp', '-a', lower, rootfs])
        lines = [line for line in config.splitlines()
                 if line.strip() and not line.startswith('#') and not line.startswith(
                     ('lxc.uts.name', 'lxc.rootfs.path', 'lxc.cgroup.dir.', 'lxc.log.file'))]
        lines += ['lxc.uts.name = %s' % self.base, 'lxc.rootfs.path = dir:%s' % rootfs,
                  'lxc.log.file = %s' % os.path.join(base, 'lxc.log'), 'lxc.cgroup.relative = 1']
        with open(os.path.join(base, 'config'), 'w', encoding='utf-8') as handle:
            handle.write('\n'.join(lines) + '\n')
        self.results['template_bytes'] = dir_bytes(os.path.join(self.vz_root, 'templates', 'debian-12'))[1]
        self.results['base_rootfs_bytes'] = dir_bytes(rootfs)[1]
        shutil.rmtree(os.path.join(self.vz_root, 'ves', 'vzbwarm'))

    # -- shared measures ------------------------------------------------------------------
    def page_cache(self, lxcpath, names, start_argv, cgroup_dir):
        """Stop all, drop caches, start 1, then the rest; page cache charged to the VEs' cgroups."""
        for name in names:
            run(['lxc-stop', '-P', lxcpath, '-n', name, '--kill'], check=False)
        drop_caches()
        before = meminfo_cached()
        start_argv(names[0])
        one = wait_all_running(lxcpath, names[:1])
        time.sleep(3)
        cache_1 = memory_cgroup_cache(cgroup_dir(names[0]))
        meminfo_1 = meminfo_cached() - before
        for name in names[1:]:
            start_argv(name)
        states = wait_all_running(lxcpath, names)
        self.sample_load()
        time.sleep(3)
        caches = [memory_cgroup_cache(cgroup_dir(n)) for n in names]
        return {'state_1': one, 'states_n': states,
                'cache_1': cache_1[0] - cache_1[1], 'shmem_1': cache_1[1], 'meminfo_1': meminfo_1,
                'cache_n': sum(c[0] - c[1] for c in caches), 'shmem_n': sum(c[1] for c in caches),
                'meminfo_n': meminfo_cached() - before, 'cgroup_dir': cgroup_dir(names[0]),
                'cache_each_mib': [round((c[0] - c[1]) / (1 << 20), 1) for c in caches]}

    def record(self, key, **fields):
        self.results[key] = fields
        log('%s: %s' % (key, json.dumps({k: v for k, v in fields.items() if k != 'cache_each_mib'})))

    # -- the variants ---------------------------------------------------------------------
    def variant_a(self):
        names = self.names('a')
        lxcpath = os.path.join(self.vz_root, 'ves')
        common = {'vz_root': self.vz_root, 'template': 'debian-12', 'cgroup_parent': self.parent,
                  'ves': [{'name': n} for n in names]}
        try:
            _wall, events = self.ansible.play('a-present', [
                {'name': 'create', 'osvirt.vz.ve': dict(common, state='present')}])
            create_s, _items = task_times(events, 'create')
            self.sample_load()
            disk = [dir_bytes(os.path.join(lxcpath, n))[1] for n in names]
            _wall, events = self.ansible.play('a-started', [
                {'name': 'start', 'osvirt.vz.ve': dict(common, state='started')}])
            start_s, _items = task_times(events, 'start')
            cache = self.page_cache(lxcpath, names, lambda n: run(['lxc-start', '-P', lxcpath, '-n', n]),
                                    lambda n: os.path.join(MEMORY, self.parent, n))
            n = len(names)
            self.record('a', create_mean=create_s / n, start_mean=start_s / n, mean=(create_s + start_s) / n,
                        p50=None, disk_max=max(disk), disk_mean=statistics.mean(disk), **cache)
        finally:
            teardown(lxcpath, extra_cgroups=['/' + self.parent, '/%s.monitor' % self.parent])
            for name in names:
                shutil.rmtree(os.path.join(lxcpath, name), ignore_errors=True)

    def variant_b(self):
        names = self.names('b')
        self.ours += names
        join = joiner(make_child_cgroups(self.child))
        try:
            _wall, events = self.ansible.play('b-clone', [
                {'name': 'clone', 'community.general.lxc_container': {
                    'name': self.base, 'state': 'stopped', 'clone_name': '{{ item }}',
                    'clone_snapshot': True, 'backing_store': 'overlayfs'}, 'loop': names}], preexec_fn=join)
            _clone_s, clone_items = task_times(events, 'clone')
            self.sample_load()
            disk = [dir_bytes(os.path.join(DEFAULT_LXCPATH, n))[1] for n in names]
            _wall, events = self.ansible.play('b-start', [
                {'name': 'start', 'community.general.lxc_container': {'name': '{{ item }}', 'state': 'started'},
                 'loop': names}], preexec_fn=join)
            _start_s, start_items = task_times(events, 'start')
            starts = dict(start_items)
            per_ve = [t + starts.get(n, 0.0) for n, t in clone_items]
            cache = self.page_cache(DEFAULT_LXCPATH, names, lambda n: run(
                ['lxc-start', '-P', DEFAULT_LXCPATH, '-n', n], preexec_fn=join), self.payload_dir)
            self.record('b', create_mean=statistics.mean(t for _n, t in clone_items),
                        start_mean=statistics.mean(t for _n, t in start_items), mean=statistics.mean(per_ve),
                        p50=percentile(per_ve, 50), disk_max=max(disk), disk_mean=statistics.mean(disk), **cache)
        finally:
            self.remove(names)

    def variant_c(self):
        names = self.names('c')
        self.ours += names
        join = joiner(make_child_cgroups(self.child))
        try:
            copies = []
            for name in names:
                start = time.monotonic()
                run(['lxc-copy', '-P', DEFAULT_LXCPATH, '-n', self.base, '-N', name])
                copies.append(time.monotonic() - start)
            self.sample_load()
            disk = [dir_bytes(os.path.join(DEFAULT_LXCPATH, n))[1] for n in names]
            starts = []
            for name in names:
                start = time.monotonic()
                run(['lxc-start', '-P', DEFAULT_LXCPATH, '-n', name], preexec_fn=join)
                starts.append(time.monotonic() - start)
            per_ve = [c + s for c, s in zip(copies, starts)]
            cache = self.page_cache(DEFAULT_LXCPATH, names, lambda n: run(
                ['lxc-start', '-P', DEFAULT_LXCPATH, '-n', n], preexec_fn=join), self.payload_dir)
            self.record('c', create_mean=statistics.mean(copies), start_mean=statistics.mean(starts),
                        mean=statistics.mean(per_ve), p50=percentile(per_ve, 50), disk_max=max(disk),
                        disk_mean=statistics.mean(disk), **cache)
        finally:
            self.remove(names)

    def payload_dir(self, name):
        """Memory cgroup of a container in /var/lib/lxc: lxc.cgroup.relative puts it under the starter's."""
        return os.path.join(MEMORY, hierarchies()[MEMORY].lstrip('/'), self.child, 'lxc.payload.%s' % name)

    def remove(self, names):
        teardown(DEFAULT_LXCPATH, extra_cgroups=[os.path.join(p, self.child) for p in hierarchies().values()],
                 only=names)
        for name in names:
            shutil.rmtree(os.path.join(DEFAULT_LXCPATH, name), ignore_errors=True)

    def run(self):
        try:
            self.setup()
            for key, step in (('a', self.variant_a), ('b', self.variant_b), ('c', self.variant_c)):
                if key not in self.args.only.split(','):
                    continue
                log('variant %s (%d VEs) ...' % (key, self.args.n))
                try:
                    step()
                except Exception as exc:  # pylint: disable=broad-exception-caught
                    self.errors[key] = str(exc)
                    log('variant %s FAILED: %s' % (key, exc))
        finally:
            self.remove(self.ours)
            teardown(os.path.join(self.vz_root, 'ves'),
                     extra_cgroups=['/' + self.parent, '/%s.monitor' % self.parent])
            if self.args.keep:
                log('kept %s' % self.workdir)
            else:
                run(['rm', '-rf', '--one-file-system', self.workdir], check=False)


LABELS = {'a': '(a) osvirt.vz.ve bulk', 'b': '(b) lxc_container overlayfs clone', 'c': '(c) lxc-copy plain copy'}


def report(results, errors, info, n):
    mib = 1 << 20

    def cell(key, fmt):
        res = results.get(key)
        if res is None:
            return 'FAILED' if key in errors else '-'
        return fmt(res)

    rows = [
        ('create, per VE (mean)', lambda r: '%.2f s' % r['create_mean'], ''),
        ('start, per VE (mean)', lambda r: '%.2f s' % r['start_mean'], ''),
        ('create + start per VE, mean / p50', lambda r: '%.2f / %s s' % (
            r['mean'], '%.2f' % r['p50'] if r['p50'] is not None else 'n/a (one task)'), ''),
        ('disk per VE right after creation (max)', lambda r: '%.1f KiB' % (r['disk_max'] / 1024), 'target < 1 MiB'),
        ('page cache, 1 running VE', lambda r: '%.1f MiB' % (r['cache_1'] / mib), 'files, excl. tmpfs'),
        ('page cache, %d running VEs' % n, lambda r: '%.1f MiB' % (r['cache_n'] / mib), 'shared files once'),
        ('meminfo Cached delta, 1 / %d VEs' % n, lambda r: '%.0f / %.0f MiB' % (
            r['meminfo_1'] / mib, r['meminfo_n'] / mib), 'whole machine'),
        ('tmpfs (shmem), %d VEs' % n, lambda r: '%.1f MiB' % (r['shmem_n'] / mib), ''),
        ('VE states after boot', lambda r: json.dumps(r['states_n'], sort_keys=True), ''),
    ]
    keys = ['a', 'b', 'c']
    header = ['%d VEs from debian-12' % n] + [LABELS[k] for k in keys] + ['anchor']
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for label, fmt, note in rows:
        lines.append('| ' + ' | '.join([label] + [cell(k, fmt) for k in keys] + [note]) + ' |')
    text = '\n'.join(lines)
    print('\nmachine: %s' % json.dumps(info, sort_keys=True))
    print('template debian-12 on disk (rootfs + shifted copy): %.0f MiB; base rootfs copy: %.0f MiB'
          % (results.get('template_bytes', 0) / mib, results.get('base_rootfs_bytes', 0) / mib))
    print(text)
    for key, err in errors.items():
        print('\n%s FAILED:\n%s' % (LABELS[key], err))
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=20)
    parser.add_argument('--only', default='a,b,c')
    parser.add_argument('--json', help='write the figures here too')
    parser.add_argument('--keep', action='store_true', help='keep the work dir (not /var/lib/lxc)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit('bench/templates_compare.py needs root')
    os.environ.setdefault('ANSIBLE_COLLECTIONS_PATH', os.path.join(REPO, '.build', 'collections'))
    os.environ.setdefault('ANSIBLE_CONFIG', os.path.join(REPO, 'tests', 'ansible.cfg'))
    info = machine()
    bench = Compare(args)
    bench.run()
    info['load_during_run'] = ' '.join('%.2f' % v for v in bench.load)
    report(bench.results, bench.errors, info, args.n)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump({'machine': info, 'results': bench.results, 'errors': bench.errors}, handle, indent=2)


if __name__ == '__main__':
    main()
