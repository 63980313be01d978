# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the templates issue: template builds and N VEs on debian-12.

  build    debian-12 with debootstrap (packages from --cache-dir when present), then one app
           layer (``hello`` + a file + a command) on it: wall time of each osvirt.vz.template task
  shift    the first VE on debian-12 builds the shifted copy for the VE id range (timed apart)
  create   N VEs from debian-12 in one osvirt.vz.ve task (``ves:``, state present):
           per-VE create time, disk used per VE right after creation (its directory: config,
           ve.json, empty private dirs)
  cache    page cache after dropping caches: with 1 running VE, then with N running VEs
           (/proc/meminfo Cached, and the sum of the VEs' memory cgroup ``total_cache``)

Everything in a throw-away vz_root under /var/tmp with its own cgroup parent; VEs have no network
interface. Run as root:  python3 bench/templates.py [--n 20] [--json out.json]
(ANSIBLE_COLLECTIONS_PATH and ANSIBLE_CONFIG as bench/run sets them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = '/var/cache/osvirt-vz/debootstrap/bookworm-amd64'
# The targets and earlier figures, printed beside the results.
ANCHORS = {'disk_per_ve_target_bytes': 1 << 20, 'debootstrap_issue_note_s': 25.0}


def log(msg):
    print('[templates %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def sh(argv, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, proc.stderr[-2000:]))
    return proc


def playbook(workdir, tasks, label):
    """Run one play on localhost; return its wall time in seconds."""
    path = os.path.join(workdir, '%s.json' % label)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}], handle)
    env = dict(os.environ)
    env.setdefault('ANSIBLE_COLLECTIONS_PATH', os.path.join(REPO, '.build', 'collections'))
    env.setdefault('ANSIBLE_CONFIG', os.path.join(REPO, 'tests', 'ansible.cfg'))
    binary = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
    if not os.path.exists(binary):
        binary = shutil.which('ansible-playbook') or 'ansible-playbook'
    start = time.monotonic()
    sh([binary, '-i', 'localhost,', '-c', 'local', '-e', 'ansible_python_interpreter=/usr/bin/python3', path],
       env=env, cwd=workdir)
    return time.monotonic() - start


def dir_bytes(path):
    return int(sh(['du', '-sb', '--apparent-size', path]).stdout.split()[0]), \
        int(sh(['du', '-sB1', path]).stdout.split()[0])


def meminfo_cached():
    with open('/proc/meminfo', encoding='utf-8') as handle:
        for line in handle:
            if line.startswith('Cached:'):
                return int(line.split()[1]) * 1024
    return 0


def cgroup_cache(parent, name):
    """(page cache, of which shmem/tmpfs) charged to a VE's memory cgroup (v1 memory.stat)."""
    path = '/sys/fs/cgroup/memory/%s/%s/memory.stat' % (parent, name)
    try:
        with open(path, encoding='utf-8') as handle:
            stats = dict(line.split() for line in handle)
    except OSError:
        return 0, 0
    return int(stats.get('total_cache', 0)), int(stats.get('total_shmem', 0))


def wait_running(lxcpath, name, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(['lxc-attach', '-P', lxcpath, '-n', name, '--clear-env', '--', 'systemctl', 'is-system-running'],
                 check=False).stdout.strip()
        if out in ('running', 'degraded'):
            return out
        time.sleep(1)
    return 'timeout'


def drop_caches():
    sh(['sync'])
    with open('/proc/sys/vm/drop_caches', 'w', encoding='utf-8') as handle:
        handle.write('3\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=20)
    parser.add_argument('--json', help='write the figures here too')
    parser.add_argument('--keep', action='store_true', help='keep the vz_root (for a look afterwards)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit('bench/templates.py needs root')
    root = tempfile.mkdtemp(prefix='vz-bench-tpl-', dir='/var/tmp')
    os.chmod(root, 0o711)
    parent = 'vzbench-tpl-%d' % os.getpid()
    with open(os.path.join(root, 'host.json'), 'w', encoding='utf-8') as handle:
        json.dump({'cgroup_parent': parent, 'bridge': 'vzbr0'}, handle)
    workdir = tempfile.mkdtemp(prefix='bench-tpl-play-')
    lxcpath = os.path.join(root, 'ves')
    prefix = 'bt' + secrets.token_hex(2)
    names = ['%s-%03d' % (prefix, i) for i in range(1, args.n + 1)]
    fig = {'n': args.n, 'machine': '%s, %s, %d cores, load %s' % (
        platform.node(), platform.release(), os.cpu_count(), open('/proc/loadavg', encoding='utf-8').read().split()[0])}
    try:
        cached = os.path.isdir(CACHE) and any(f.endswith('.deb') for f in os.listdir(CACHE))
        log('building debian-12 (packages cached: %s)' % cached)
        fig['build_debian12_s'] = playbook(workdir, [{'osvirt.vz.template': {
            'name': 'debian-12', 'vz_root': root,
            'source': {'type': 'debootstrap', 'suite': 'bookworm', 'cache_dir': CACHE}}}], 'debian')
        fig['debs_cached'] = cached
        motd = os.path.join(workdir, 'motd')
        with open(motd, 'w', encoding='utf-8') as handle:
            handle.write('bench layer\n')
        log('building the app layer debian-12+hello')
        fig['build_layer_s'] = playbook(workdir, [{'osvirt.vz.template': {
            'name': 'debian-12+hello', 'vz_root': root,
            'source': {'type': 'layer', 'base': 'debian-12', 'packages': ['hello'],
                       'files': [{'src': motd, 'dest': '/etc/motd'}],
                       'commands': [['sh', '-c', 'echo done > /etc/bench']]}}}], 'layer')
        log('first VE: builds the shifted copy')
        fig['first_ve_with_shift_s'] = playbook(workdir, [{'osvirt.vz.ve': {
            'name': prefix + '-warm', 'template': 'debian-12', 'state': 'present', 'vz_root': root}}], 'warm')
        log('creating %d VEs in one task' % args.n)
        task = {'osvirt.vz.ve': {'template': 'debian-12', 'state': 'present', 'vz_root': root,
                                 'ves': [{'name': n} for n in names]}}
        fig['create_task_s'] = playbook(workdir, [task], 'create')
        fig['create_per_ve_ms'] = fig['create_task_s'] / args.n * 1000
        sizes = [dir_bytes(os.path.join(lxcpath, n)) for n in names]
        fig['disk_per_ve_bytes'] = max(s[1] for s in sizes)
        fig['disk_per_ve_apparent_bytes'] = max(s[0] for s in sizes)
        log('page cache: 1 VE')
        drop_caches()
        base = meminfo_cached()
        sh(['lxc-start', '-P', lxcpath, '-n', names[0]])
        fig['state_1'] = wait_running(lxcpath, names[0])
        time.sleep(3)
        fig['cached_1_bytes'] = meminfo_cached() - base
        fig['cgroup_cache_1_bytes'], fig['cgroup_shmem_1_bytes'] = cgroup_cache(parent, names[0])
        log('page cache: %d VEs' % args.n)
        for name in names[1:]:
            sh(['lxc-start', '-P', lxcpath, '-n', name])
        states = [wait_running(lxcpath, n) for n in names]
        fig['states_n'] = {s: states.count(s) for s in set(states)}
        time.sleep(3)
        fig['cached_n_bytes'] = meminfo_cached() - base
        caches = [cgroup_cache(parent, n) for n in names]
        fig['cgroup_cache_n_bytes'] = sum(c[0] for c in caches)
        fig['cgroup_shmem_n_bytes'] = sum(c[1] for c in caches)
        fig['cgroup_file_cache_each_mib'] = [round((c[0] - c[1]) / (1 << 20), 1) for c in caches]
        fig['template_bytes'] = dir_bytes(os.path.join(root, 'templates', 'debian-12'))[1]
    finally:
        for name in sh(['lxc-ls', '-1', '-P', lxcpath, '--active'], check=False).stdout.split():
            sh(['lxc-stop', '-k', '-P', lxcpath, '-n', name], check=False)
        for hierarchy in os.listdir('/sys/fs/cgroup'):
            for top in ('/sys/fs/cgroup/%s/%s' % (hierarchy, parent), '/sys/fs/cgroup/%s/%s.monitor' % (hierarchy, parent)):
                for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(current)
                    except OSError:
                        pass
        if not args.keep:
            sh(['rm', '-rf', '--one-file-system', root], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    report(fig)
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(fig, handle, indent=2)


def report(fig):
    mib = 1 << 20
    rows = [
        ('debian-12 build (debootstrap%s)' % (', debs cached' if fig.get('debs_cached') else ', download'),
         '%.1f s' % fig['build_debian12_s'], 'issue note: debootstrap ~%.0f s' % ANCHORS['debootstrap_issue_note_s']),
        ('app layer build (hello + file + command)', '%.1f s' % fig['build_layer_s'], ''),
        ('first VE on a version (incl. shifted copy)', '%.1f s' % fig['first_ve_with_shift_s'], 'once per version'),
        ('create %d VEs, one task, per VE' % fig['n'], '%.0f ms' % fig['create_per_ve_ms'], ''),
        ('disk per VE right after creation', '%.1f KiB (apparent %.1f KiB)' % (
            fig['disk_per_ve_bytes'] / 1024, fig['disk_per_ve_apparent_bytes'] / 1024), 'target < 1 MiB'),
        ('template debian-12 on disk (rootfs + shifted copy)', '%.0f MiB' % (fig['template_bytes'] / mib),
         'a plain copy per VE would cost this per VE'),
        ('page cache charged to the VE, 1 running VE', '%.1f MiB files + %.1f MiB tmpfs' % (
            (fig['cgroup_cache_1_bytes'] - fig['cgroup_shmem_1_bytes']) / mib, fig['cgroup_shmem_1_bytes'] / mib),
         'meminfo Cached delta %.1f MiB (whole machine)' % (fig['cached_1_bytes'] / mib)),
        ('page cache charged to the VEs, %d running VEs' % fig['n'], '%.1f MiB files + %.1f MiB tmpfs' % (
            (fig['cgroup_cache_n_bytes'] - fig['cgroup_shmem_n_bytes']) / mib, fig['cgroup_shmem_n_bytes'] / mib),
         'meminfo Cached delta %.1f MiB (whole machine)' % (fig['cached_n_bytes'] / mib)),
        ('file cache per VE (first VE first)', ' '.join('%.1f' % v for v in fig['cgroup_file_cache_each_mib']),
         'MiB; a page is charged to the first VE that reads it'),
        ('VE states after boot', json.dumps(fig['states_n'], sort_keys=True), ''),
    ]
    print('\nmachine: %s' % fig['machine'])
    width = max(len(r[0]) for r in rows)
    for label, value, note in rows:
        print('| %-*s | %s | %s |' % (width, label, value, note))


if __name__ == '__main__':
    main()
