# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the migration issue: osvirt.vz.ve_migrate offline vs warm (vs live) on the lab.

For each private-area size (``--sizes``, default 10M,200M) and mode (``--modes``, default
offline,warm): a running busybox VE on lab1 with that much random data in /data/blob, moved to
lab2 with ``osvirt.vz.ve_migrate``; the module's own report gives the figures: downtime (freeze
or stop to running on the target), total time, each stage, the copy rounds and bytes sent. The
VE is removed afterwards. Lab hosts run on this one machine, so "the network" is a veth pair:
the figures measure rsync, SSH, LXC and the protocol, not a wire.

Run as root, holding the machine's test lock (tests/integration/testlock.py; other jobs share the lab):

    flock /run/osvirt-test.lock python3 bench/migrate.py [--sizes 10M,200M,1G] [--modes offline,warm]
                                                        [--json out.json]

(ANSIBLE_COLLECTIONS_PATH and ANSIBLE_CONFIG as bench/run sets them; `make collection-link` first).
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
LAB = os.path.join(REPO, 'tests', 'lab', 'lab')
# Figures of other projects the issue compares with (seconds).
ANCHORS = {'lxd_live_downtime': '4-5 s (canonical/lxd#2858)',
           'proxmox_restart_migration': 'some hundreds of ms (pve-docs pct.adoc)',
           'criu_frozen_time_small_tree': '0.282 s (criu#702)',
           'target_warm_downtime': '<= 1 s at every size'}
UNITS = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}


def log(msg):
    print('[migrate %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def size_bytes(text):
    return int(text[:-1]) * UNITS[text[-1].upper()] if text[-1].upper() in UNITS else int(text)


def sh(argv, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, proc.stderr[-2000:]))
    return proc


class Lab:
    def __init__(self, workdir):
        sh([LAB, 'up', '2'], timeout=900)
        self.inventory = os.path.join(workdir, 'inventory.ini')
        with open(self.inventory, 'w', encoding='utf-8') as handle:
            handle.write(sh([LAB, 'inventory']).stdout)
        self.workdir = workdir

    def exec(self, host, *argv, check=True):
        return sh([LAB, 'exec', host, '--'] + list(argv), check=check, timeout=900)

    def play(self, host, tasks, label):
        """Run tasks on a lab host; return (wall seconds, results of the tasks by name)."""
        path = os.path.join(self.workdir, label + '.json')
        with open(path, 'w', encoding='utf-8') as handle:
            json.dump([{'hosts': host, 'gather_facts': False, 'tasks': tasks}], handle)
        results_file = os.path.join(self.workdir, label + '.results.json')
        # ansible-core has no json stdout callback: the tests' aggregate callback writes the results
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default', ANSIBLE_CALLBACKS_ENABLED='vz_results',
                   ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, 'tests', 'integration', 'helpers', 'callback_plugins'),
                   VZ_RESULTS_FILE=results_file, ANSIBLE_NOCOLOR='1')
        env.setdefault('ANSIBLE_COLLECTIONS_PATH', os.path.join(REPO, '.build', 'collections'))
        env.setdefault('ANSIBLE_CONFIG', os.path.join(REPO, 'tests', 'ansible.cfg'))
        binary = os.path.join(REPO, '.venv', 'bin', 'ansible-playbook')
        if not os.path.exists(binary):
            binary = shutil.which('ansible-playbook') or 'ansible-playbook'
        started = time.monotonic()
        proc = subprocess.run([binary, '-i', self.inventory, path], capture_output=True, text=True, env=env,
                              check=False, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - started
        try:
            with open(results_file, encoding='utf-8') as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            raise RuntimeError('%s: no results from ansible-playbook: %s %s'
                               % (label, proc.stdout[-1500:], proc.stderr[-1500:]))
        results = {}
        for play in data.get('plays', []):
            for task in play.get('tasks', []):
                results[task['task']['name']] = task['hosts'].get(host, {})
        if proc.returncode != 0:
            failed = {k: v.get('msg') for k, v in results.items() if v.get('failed')}
            raise RuntimeError('%s failed: %s' % (label, failed or proc.stdout[-1500:]))
        return wall, results


def one(lab, template, size, mode, index):
    name = 'bm%s%d' % (secrets.token_hex(2), index)
    address = '10.20.0.%d' % (220 + index % 30)
    target = {'host': 'lab2', 'host_key_checking': 'off', 'known_hosts': '/dev/null'}
    try:
        spec = {'name': name, 'template': template, 'state': 'started',
                'network': [{'ipv4': [address + '/24'], 'gateway4': '10.20.0.1'}]}
        if mode == 'live':
            spec['console'] = False   # LXC 5.0 cannot restore a VE with a console (docs/criu.md)
        lab.play('lab1', [{'name': 've', 'osvirt.vz.ve': spec}], 've-%s' % name)
        lab.exec('lab1', 'lxc-attach', '-P', '/var/lib/vz/ves', '-n', name, '--', 'sh', '-c',
                 'mkdir -p /data && head -c %d /dev/urandom > /data/blob' % size)
        wall, results = lab.play('lab1', [{'name': 'migrate', 'osvirt.vz.ve_migrate': {
            'name': name, 'target': target, 'mode': mode}}], 'migrate-%s' % name)
        result = results['migrate']
        return {'size': size, 'mode': result['mode'], 'downtime_s': result['downtime'],
                'module_total_s': result['stages'].get('total'), 'task_wall_s': round(wall, 3),
                'bytes_moved': result['bytes_moved'], 'stages': result['stages'], 'rounds': result['rounds']}
    finally:
        for host in ('lab1', 'lab2'):
            try:
                lab.play(host, [{'name': 'rm', 'ignore_errors': True,
                                 'osvirt.vz.ve': {'name': name, 'state': 'absent'}}], 'rm-%s-%s' % (name, host))
            except RuntimeError as exc:
                log('cleanup on %s: %s' % (host, exc))
            # the host a VE left keeps its address reserved; the VE is gone for good now
            lab.exec(host, 'rm', '-f', '/var/lib/vz/net/moved/%s' % address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--sizes', default='10M,200M')
    parser.add_argument('--modes', default='offline,warm')
    parser.add_argument('--json')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root')
    workdir = tempfile.mkdtemp(prefix='bench-migrate-')
    lab = Lab(workdir)
    template = 'bmig-' + secrets.token_hex(3)
    rows = []
    try:
        lab.play('lab1', [{'name': 't', 'osvirt.vz.template': {'name': template, 'source': {'type': 'busybox'}}}],
                 'template')
        index = 0
        for size in [size_bytes(s) for s in args.sizes.split(',')]:
            for mode in args.modes.split(','):
                index += 1
                log('%s, %d MiB ...' % (mode, size >> 20))
                row = one(lab, template, size, mode, index)
                rows.append(row)
                log('%s %d MiB: downtime %s s, total %s s, sent %d MiB, rounds %s'
                    % (row['mode'], size >> 20, row['downtime_s'], row['module_total_s'], row['bytes_moved'] >> 20,
                       [(r['round'], r['bytes'] >> 10) for r in row['rounds']]))
    finally:
        for host in ('lab1', 'lab2'):
            try:
                lab.play(host, [{'name': 'rm', 'ignore_errors': True,
                                 'osvirt.vz.template': {'name': template, 'state': 'absent'}}], 'rmt-' + host)
            except RuntimeError:
                pass
            lab.exec(host, 'rm', '-rf', '/var/lib/vz/templates/' + template, check=False)
        sh([LAB, 'down'], check=False, timeout=900)
        shutil.rmtree(workdir, ignore_errors=True)
    report = {'machine': {'kernel': platform.release(), 'cpus': os.cpu_count(),
                          'load_before': os.getloadavg()}, 'anchors': ANCHORS, 'results': rows}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump(report, handle, indent=2)


if __name__ == '__main__':
    main()
