# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the rebase part of the templates issue ("patch once for all").

  hidden   _rebase.hidden_files on synthetic trees: a template of --files files (a Debian 12 tree
           has about 20000), private areas of 0 .. 10000 entries, half of them hiding a change
           (same size, other contents, so the contents are compared)
  rebase   osvirt.vz.ve with ves: of --n busybox VEs and rebase: latest: stopped VEs (config only),
           then running VEs with restart: true (stop + start on the new version)
  info     osvirt.vz.template_info over those --n VEs, with and without usage

The issue sets no anchor for these figures; they are printed for docs/patching.md. Needs root and
LXC; runs in a throw-away vz_root under /var/tmp with its own cgroup parent; cleans up.
Run:  .venv/bin/python bench/rebase.py [--n 20] [--files 20000]
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
sys.path.insert(0, os.path.join(REPO, '.build', 'collections'))

from ansible_collections.osvirt.vz.plugins.module_utils._rebase import hidden_files  # noqa: E402


def _tree(root, files, text, mtime):
    for i in range(files):
        path = os.path.join(root, 'd%03d' % (i % 500), 'f%05d' % i)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as handle:
            handle.write(text)
        os.utime(path, (mtime, mtime))


def bench_hidden(tmp, files):
    old, new = os.path.join(tmp, 'old'), os.path.join(tmp, 'new')
    _tree(old, files, 'version 1\n', 1000)
    _tree(new, files, 'version 2\n', 2000)     # every file changed, same size: contents compared
    rows = []
    for count in (0, 100, 1000, 10000):
        upper = os.path.join(tmp, 'upper-%d' % count)
        os.makedirs(upper)
        for i in range(count):
            # even entries cover template files (hidden changes), odd ones are the VE's own files
            index = (i // 2) * 2 if i % 2 == 0 else files + i
            path = os.path.join(upper, 'd%03d' % (index % 500), 'f%05d' % index)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as handle:
                handle.write('private\n')
        start = time.perf_counter()
        found, more = hidden_files(upper, [old], [new], limit=100000)
        rows.append((count, len(found) + more, time.perf_counter() - start))
    return rows


def _playbook(tmp, tasks):
    path = os.path.join(tmp, 'play-%s.yml' % secrets.token_hex(3))
    with open(path, 'w') as handle:
        json.dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}], handle)
    inventory = os.path.join(tmp, 'inventory.ini')
    with open(inventory, 'w') as handle:
        handle.write('localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, '.build', 'collections'),
               ANSIBLE_CONFIG=os.path.join(REPO, 'tests', 'ansible.cfg'))
    binary = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
    start = time.perf_counter()
    proc = subprocess.run([binary, '-i', inventory, path], capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit('playbook failed:\n%s\n%s' % (proc.stdout[-3000:], proc.stderr[-3000:]))
    return elapsed


def bench_modules(tmp, n):
    root = tempfile.mkdtemp(prefix='vz-bench-rebase-', dir='/var/tmp')
    os.chmod(root, 0o711)
    parent = 'vzbench-rebase-%d' % os.getpid()
    common = {'vz_root': root, 'cgroup_parent': parent}
    names = [{'name': 'brb%03d' % i} for i in range(n)]
    rows = []
    try:
        _playbook(tmp, [{'osvirt.vz.template': {'name': 'busybox', 'vz_root': root}},
                        {'osvirt.vz.ve': dict(common, template='busybox', state='stopped', ves=names)},
                        {'osvirt.vz.template': {'name': 'busybox', 'vz_root': root, 'rebuild': True}}])
        rows.append(('rebase %d stopped VEs (one bulk task)' % n,
                     _playbook(tmp, [{'osvirt.vz.ve': dict(common, rebase='latest', state='stopped', ves=names)}])))
        _playbook(tmp, [{'osvirt.vz.ve': dict(common, state='started', ves=names)},
                        {'osvirt.vz.template': {'name': 'busybox', 'vz_root': root, 'rebuild': True}}])
        rows.append(('rebase %d running VEs, restart: true' % n,
                     _playbook(tmp, [{'osvirt.vz.ve': dict(common, rebase='latest', restart=True, ves=names)}])))
        rows.append(('template_info, %d VEs, usage: true' % n,
                     _playbook(tmp, [{'osvirt.vz.template_info': {'vz_root': root}}])))
        rows.append(('template_info, %d VEs, usage: false' % n,
                     _playbook(tmp, [{'osvirt.vz.template_info': {'vz_root': root, 'usage': False}}])))
        rows.append(('empty playbook (ansible-playbook start-up)', _playbook(tmp, [])))
    finally:
        for item in names:
            subprocess.run(['lxc-stop', '-k', '-P', os.path.join(root, 'ves'), '-n', item['name']],
                           capture_output=True, check=False)
        subprocess.run(['rm', '-rf', '--one-file-system', root], check=False)
        for controller in os.listdir('/sys/fs/cgroup'):
            for top in (parent, parent + '.monitor'):
                base = os.path.join('/sys/fs/cgroup', controller, top)
                for current, _dirs, _files in sorted(os.walk(base), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(current)
                    except OSError:
                        pass
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=20, help='VEs to rebase (default 20)')
    parser.add_argument('--files', type=int, default=20000, help='files of the synthetic template (default 20000)')
    parser.add_argument('--skip-modules', action='store_true', help='only the hidden_files figures')
    args = parser.parse_args()
    print('machine: %s, %d CPUs, kernel %s' % (platform.node(), os.cpu_count(), platform.release()))
    tmp = tempfile.mkdtemp(prefix='vz-bench-hidden-', dir='/var/tmp')
    try:
        print('\nhidden_files over a template of %d files (every file changed in the new version)' % args.files)
        print('%-28s %10s %10s' % ('private entries', 'hidden', 'seconds'))
        for count, found, seconds in bench_hidden(tmp, args.files):
            print('%-28d %10d %10.3f' % (count, found, seconds))
        if not args.skip_modules:
            print('\nmodules (wall time of ansible-playbook, start-up included)')
            for what, seconds in bench_modules(tmp, args.n):
                print('%-48s %8.2f s' % (what, seconds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
