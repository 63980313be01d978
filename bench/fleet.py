# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet benchmark: per-task cost of the connection plugin osvirt.vz.ve, and inventory listing time.

Part 1 (conn): one playbook of T tasks (``ansible.builtin.command: "true"``, pipelining on)
against N hosts, five ways in one run:

  ssh-floor   N inventory aliases of lab host lab1, over SSH (the floor for one hop)
  ve-ssh      N VEs on lab1 through osvirt.vz.ve (SSH to lab1 + lxc-attach)
  local-floor N aliases of localhost, connection local (no hop at all)
  ve-local    N VEs on this machine through osvirt.vz.ve (local lxc-attach)
  lxc         the same N local VEs through community.general.lxc (python3-lxc, local only;
              without pipelining: with it, that plugin breaks modules)

Per task = from the task's start to its last host's result (bench_timer callback); the mean
over the T tasks is reported. Each way gets an untimed warm-up run first (SSH master up, caches
warm).

Part 2 (inv): H inventory hosts with V VEs each (created, not started), listed by the inventory
plugin: cold (--flush-cache) and cached, next to ansible-inventory of the hosts file alone.
The H hosts are aliases of the lab hosts lab1/lab2 in turn, each with its own vz_root.

Needs root, LXC, the lab (tests/lab/lab up 2) and ansible-playbook with community.general on PATH
(bench/run and `make bench` use .venv-bench). Everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LAB = REPO / 'tests' / 'lab' / 'lab'
# Only this benchmark's way to have Python in a busybox VE: the host's, bind-mounted read-only.
PYTHON_MOUNTS = [
    {'source': '/usr', 'target': '/usr', 'readonly': True},
    {'source': '/usr/lib', 'target': '/lib', 'readonly': True},
    {'source': '/usr/lib64', 'target': '/lib64', 'readonly': True},
]
DEBIAN_LXC = Path('/usr/lib/python3/dist-packages')
ANCHOR_RATIO = 1.3


def sh(*argv, check=True, env=None, timeout=1800):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if check and proc.returncode != 0:
        raise SystemExit('failed (rc=%d): %s\n%s\n%s' % (proc.returncode, ' '.join(map(str, argv)),
                                                         proc.stdout[-4000:], proc.stderr[-4000:]))
    return proc


def ansible_env(extra=None):
    env = dict(os.environ)
    env.setdefault('ANSIBLE_COLLECTIONS_PATH', str(REPO / '.build' / 'collections'))
    env.setdefault('ANSIBLE_CONFIG', str(REPO / 'tests' / 'ansible.cfg'))
    env.update({'ANSIBLE_PIPELINING': '1', 'ANSIBLE_NOCOLOR': '1', 'ANSIBLE_HOST_KEY_CHECKING': '0',
                'ANSIBLE_CALLBACK_PLUGINS': str(HERE / 'callback_plugins'),
                'ANSIBLE_CALLBACKS_ENABLED': 'bench_timer', 'ANSIBLE_FORKS': '20'})
    env.update(extra or {})
    return env


def playbook(workdir, name, plays):
    path = workdir / (name + '.yml')
    path.write_text(json.dumps(plays, indent=1))
    return path


def run_playbook(workdir, inventory, book, env=None):
    return sh('ansible-playbook', '-i', inventory, book, env=ansible_env(env))


def lab_vars():
    """Connection variables of the lab hosts, from `lab inventory` (through ansible-inventory)."""
    ini = sh(LAB, 'inventory').stdout
    with tempfile.NamedTemporaryFile('w', suffix='.ini', delete=False) as handle:
        handle.write(ini)
    try:
        data = json.loads(sh('ansible-inventory', '-i', handle.name, '--list', env=ansible_env()).stdout)
    finally:
        os.unlink(handle.name)
    return data['_meta']['hostvars']


def ssh_line(hv):
    return ('ansible_host=%s ansible_user=%s ansible_ssh_private_key_file=%s ansible_python_interpreter=/usr/bin/python3 '
            "ansible_ssh_common_args='%s'" % (hv['ansible_host'], hv.get('ansible_user', 'root'),
                                              hv['ansible_ssh_private_key_file'], hv['ansible_ssh_common_args']))


def ve_ssh_line(hv):
    return ('ansible_vz_host=%s ansible_vz_host_user=%s ansible_vz_host_private_key_file=%s '
            "ansible_vz_host_ssh_common_args='%s'" % (hv['ansible_host'], hv.get('ansible_user', 'root'),
                                                      hv['ansible_ssh_private_key_file'], hv['ansible_ssh_common_args']))


def task_times(times_file):
    """Per task: last result time minus task start, in seconds, in play order."""
    starts, ends, order = {}, {}, []
    for line in Path(times_file).read_text().splitlines():
        event = json.loads(line)
        if event['ev'] == 'task_start':
            starts[event['task']] = event['t']
            order.append(event['task'])
        elif event['ev'] == 'task_end':
            if event.get('status') != 'ok':
                raise SystemExit('task %s failed: %s %s' % (event['task'], event.get('msg'), event.get('stderr')))
            ends[event['task']] = max(ends.get(event['task'], 0), event['t'])
    return [ends[t] - starts[t] for t in order if t in ends]


def timed(workdir, label, inventory, book, env=None):
    run_playbook(workdir, inventory, book, env)                      # warm-up, not timed
    times = workdir / ('times-%s.jsonl' % label)
    start = time.monotonic()
    run_playbook(workdir, inventory, book, dict(env or {}, OSVIRT_BENCH_TIMES=str(times)))
    wall = time.monotonic() - start
    per_task = task_times(times)
    return {'label': label, 'wall': wall, 'tasks': len(per_task), 'mean': statistics.mean(per_task),
            'p50': statistics.median(per_task), 'max': max(per_task)}


# -- part 1 -----------------------------------------------------------------------------------
def bench_connection(args, workdir, hostvars):
    tag = secrets.token_hex(2)
    names = ['fb%s-%02d' % (tag, i) for i in range(1, args.ves + 1)]
    root = Path(tempfile.mkdtemp(prefix='vzbench-fleet-', dir='/var/tmp'))
    os.chmod(root, 0o711)
    parent = 'vzbench-fleet-%d' % os.getpid()
    template = 'bbx-bench-' + tag
    lab1 = hostvars[args.lab_host]
    hosts_ini = workdir / 'lab.ini'
    hosts_ini.write_text('[vz_hosts]\n%s %s\n' % (args.lab_host, ssh_line(lab1)))
    local_ini = workdir / 'local.ini'
    local_ini.write_text('localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n')
    ves = [{'name': n} for n in names]
    results, links = [], []
    try:
        run_playbook(workdir, local_ini, playbook(workdir, 'setup-local', [{'hosts': 'localhost', 'gather_facts': False,
                     'tasks': [{'osvirt.vz.template': {'name': 'busybox', 'vz_root': str(root)}},
                               {'osvirt.vz.ve': {'template': 'busybox', 'vz_root': str(root), 'cgroup_parent': parent,
                                                 'mounts': PYTHON_MOUNTS, 'ves': ves}}]}]))
        run_playbook(workdir, hosts_ini, playbook(workdir, 'setup-lab', [{'hosts': 'vz_hosts', 'gather_facts': False,
                     'tasks': [{'osvirt.vz.template': {'name': template, 'source': {'type': 'busybox'}}},
                               {'osvirt.vz.ve': {'template': template, 'mounts': PYTHON_MOUNTS, 'ves': ves}}]}]))
        book = playbook(workdir, 'tasks', [{'hosts': 'all', 'gather_facts': False, 'tasks': [
            {'name': 't%02d' % i, 'ansible.builtin.command': 'true'} for i in range(1, args.tasks + 1)]}])
        inventories = {
            'ssh-floor': ''.join('h%02d %s\n' % (i, ssh_line(lab1)) for i in range(1, args.ves + 1)),
            've-ssh': ''.join('%s ansible_connection=osvirt.vz.ve %s\n' % (n, ve_ssh_line(lab1)) for n in names),
            'local-floor': ''.join('l%02d ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n' % i
                                   for i in range(1, args.ves + 1)),
            've-local': ''.join('%s ansible_connection=osvirt.vz.ve ansible_vz_host=localhost ansible_vz_root=%s\n'
                                % (n, root) for n in names),
        }
        for label, text in inventories.items():
            path = workdir / ('%s.ini' % label)
            path.write_text(text)
            results.append(timed(workdir, label, path, book))
            print('  %-12s %.3f s per task' % (label, results[-1]['mean']), flush=True)
        # community.general.lxc knows only LXC's default lxcpath: start the same VEs from there
        default_path = Path(sh('lxc-config', 'lxc.lxcpath').stdout.strip() or '/var/lib/lxc')
        for name in names:
            sh('lxc-stop', '-k', '-P', root / 'ves', '-n', name, check=False)
            link = default_path / name
            link.symlink_to(root / 'ves' / name)
            links.append(link)
            sh('lxc-start', '-P', default_path, '-n', name)
        shim = workdir / 'pylxc'
        shim.mkdir()
        for entry in DEBIAN_LXC.iterdir():
            if entry.name == 'lxc' or entry.name.startswith('_lxc.'):
                (shim / entry.name).symlink_to(entry)
        path = workdir / 'lxc.ini'
        path.write_text(''.join('%s ansible_connection=community.general.lxc ansible_python_interpreter=/usr/bin/python3\n'
                                % n for n in names))
        # with pipelining, community.general.lxc (12.3.0) hands modules over broken:
        # "SyntaxError: unterminated string literal" from the module's Python; it runs without
        results.append(timed(workdir, 'lxc', path, book, env={'PYTHONPATH': str(shim), 'ANSIBLE_PIPELINING': '0'}))
        print('  %-12s %.3f s per task' % ('lxc', results[-1]['mean']), flush=True)
    finally:
        for link in links:
            sh('lxc-stop', '-k', '-P', link.parent, '-n', link.name, check=False)
            link.unlink()
        for name in names:
            sh('lxc-stop', '-k', '-P', root / 'ves', '-n', name, check=False)
        run_playbook(workdir, hosts_ini, playbook(workdir, 'cleanup-lab', [{'hosts': 'vz_hosts', 'gather_facts': False,
                     'tasks': [{'osvirt.vz.ve': {'state': 'absent', 'ves': ves}, 'ignore_errors': True},
                               {'osvirt.vz.template': {'name': template, 'state': 'absent'},
                                'ignore_errors': True}]}]))
        sh(LAB, 'exec', args.lab_host, '--', 'rmdir', '/var/lib/vz/templates/' + template, check=False)
        shutil.rmtree(root, ignore_errors=True)
        remove_cgroups(parent)
    return results


def remove_cgroups(parent):
    for mount in Path('/sys/fs/cgroup').iterdir():
        for top in (mount / parent, mount / (parent + '.monitor')):
            for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(current)
                except OSError:
                    pass


# -- part 2 -----------------------------------------------------------------------------------
def bench_inventory(args, workdir, hostvars):
    tag = secrets.token_hex(2)
    lab_hosts = sorted(h for h in hostvars if h.startswith('lab'))[:2]
    lines, roots = ['[vz_hosts]'], []
    for i in range(1, args.inv_hosts + 1):
        lab = lab_hosts[(i - 1) % len(lab_hosts)]
        root = '/var/tmp/vzbench-inv-%s-h%d' % (tag, i)
        roots.append(root)
        lines.append('h%d %s host_vz_root=%s' % (i, ssh_line(hostvars[lab]), root))
    hosts_ini = workdir / 'inv-hosts.ini'
    hosts_ini.write_text('\n'.join(lines) + '\n')
    source = workdir / 'fleet.ve.yml'
    source.write_text(json.dumps({'plugin': 'osvirt.vz.ve', 'cache': True, 'cache_plugin': 'ansible.builtin.jsonfile',
                                  'cache_connection': str(workdir / 'cache'), 'cache_timeout': 3600}))
    ves = [{'name': 'v%s-%02d' % (tag, i)} for i in range(1, args.inv_ves + 1)]
    try:
        run_playbook(workdir, hosts_ini, playbook(workdir, 'inv-setup', [{'hosts': 'vz_hosts', 'gather_facts': False,
                     'tasks': [{'osvirt.vz.template': {'name': 'busybox', 'vz_root': '{{ host_vz_root }}'}},
                               {'osvirt.vz.ve': {'template': 'busybox', 'vz_root': '{{ host_vz_root }}',
                                                 'state': 'present', 'ves': ves}}]}]))
        env = ansible_env()
        figures = {}
        for label, cmd in (('hosts file only', ['-i', hosts_ini]),
                           ('cold', ['-i', hosts_ini, '-i', source, '--flush-cache']),
                           ('cached', ['-i', hosts_ini, '-i', source])):
            samples = []
            for _round in range(args.rounds):
                start = time.monotonic()
                out = sh('ansible-inventory', *cmd, '--list', env=env).stdout
                samples.append(time.monotonic() - start)
            count = len((json.loads(out).get('vz_ves') or {}).get('hosts') or [])
            figures[label] = {'median': statistics.median(samples), 'min': min(samples), 'ves': count}
            print('  %-16s %.2f s (%d VEs)' % (label, figures[label]['median'], count), flush=True)
        return figures
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--ves', type=int, default=10)
    parser.add_argument('--tasks', type=int, default=20)
    parser.add_argument('--lab-host', default='lab1')
    parser.add_argument('--inv-hosts', type=int, default=5)
    parser.add_argument('--inv-ves', type=int, default=20)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--only', default='conn,inv')
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit('bench/fleet.py needs root')
    sh(LAB, 'up', '2')
    hostvars = lab_vars()
    parts = args.only.split(',')
    with tempfile.TemporaryDirectory(prefix='vzbench-fleet-') as tmp:
        workdir = Path(tmp)
        print('machine: %s, nproc %s, load %s' % (os.uname().release, os.cpu_count(),
                                                  ' '.join(Path('/proc/loadavg').read_text().split()[:3])))
        if 'conn' in parts:
            print('per-task time, %d tasks x %d hosts, pipelining on:' % (args.tasks, args.ves), flush=True)
            results = bench_connection(args, workdir, hostvars)
            by = {r['label']: r for r in results}
            print('\n| way | hosts | tasks | per task mean s | p50 s | max s | playbook wall s |')
            print('|---|---:|---:|---:|---:|---:|---:|')
            for r in results:
                row = (r['label'], args.ves, r['tasks'], r['mean'], r['p50'], r['max'], r['wall'])
                print('| %s | %d | %d | %.3f | %.3f | %.3f | %.2f |' % row)
            ratio = by['ve-ssh']['mean'] / by['ssh-floor']['mean']
            print('\n| target | wanted | measured | met |\n|---|---|---|---|')
            print('| ve-ssh per task vs ssh-floor per task | <= %.1fx | %.2fx (%.3f vs %.3f s) | %s |'
                  % (ANCHOR_RATIO, ratio, by['ve-ssh']['mean'], by['ssh-floor']['mean'],
                     'yes' if ratio <= ANCHOR_RATIO else 'no'))
            if 'lxc' in by:
                print('| ve-local vs community.general.lxc per task | - | %.2fx (%.3f vs %.3f s) | - |'
                      % (by['ve-local']['mean'] / by['lxc']['mean'], by['ve-local']['mean'], by['lxc']['mean']))
        if 'inv' in parts:
            print('\ninventory, %d hosts x %d VEs (median of %d):' % (args.inv_hosts, args.inv_ves, args.rounds))
            bench_inventory(args, workdir, hostvars)
    return 0


if __name__ == '__main__':
    sys.exit(main())
