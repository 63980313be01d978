# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the foundation issue: create and start N busybox VEs, four ways, side by side.

  (a) floor   bash loop: write the LXC config osvirt.vz.ve writes, mkdir the private dirs, lxc-start
  (b) bulk    osvirt.vz.ve, one task with ``ves:`` of N items
  (c) loop    osvirt.vz.ve, one task with ``loop:`` over N names
  (d) lxc_container  community.general.lxc_container: overlayfs snapshot clones of a base, then start,
              both in a loop
  big         (b) with 100 VEs: wall time of the one task

Each variant gets its own throw-away vz_root under /var/tmp and its own cgroup parent; setup
(template build, warm-up VE) and cleanup (stop and remove) are not timed. No VE has a network
interface (lxc.net.0.type = empty) so that the comparison is about VE creation only.

Only the Python standard library; Ansible runs as ``ansible-playbook`` in a subprocess, with the
small callback in bench/callback_plugins/bench_timer.py writing time stamps of tasks and loop items.
Run as root through ``bench/run`` (``make bench``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CGROUP_ROOT = '/sys/fs/cgroup'
HOST_PYTHON = '/usr/bin/python3'   # Debian's python: has the lxc binding lxc_container needs
DEFAULT_LXCPATH = '/var/lib/lxc'   # LXC's default lxcpath (lxc-config lxc.lxcpath)
WARMUP = 'bwarmup'                 # the warm-up VE; its config is the floor's template

# Figures measured earlier on this machine for 20 busybox VEs (seconds per VE).
ANCHORS = {'a': 0.012, 'd': 1.4}
# Targets of the foundation issue.
TARGET_B_VS_A = 1.5      # (b) per VE within 1.5x of (a) per VE
TARGET_D_VS_B = 10.0     # (b) per VE at least 10x faster than (d) per VE
TARGET_BIG_TASK = 5.0    # 100 VEs in one bulk task: task wall time under 5 s

FLOOR_SCRIPT = r'''#!/bin/bash
# (a) the floor: what osvirt.vz.ve does for a new VE, by hand. Prints "name start before-lxc-start end" per VE.
set -eu
cfg=$(<"$1"); ves=$2; n=$3; prefix=$4; uid=$5; gid=$6; warm=$7
for ((i = 1; i <= n; i++)); do
  printf -v name '%s%03d' "$prefix" "$i"
  t0=$EPOCHREALTIME
  d=$ves/$name
  mkdir -m 0711 "$d" "$d/private"
  mkdir -m 0755 "$d/private/upper" "$d/private/work"
  chown "$uid:$gid" "$d/private" "$d/private/upper" "$d/private/work"
  printf '%s\n' "${cfg//$warm/$name}" > "$d/config"
  tm=$EPOCHREALTIME
  lxc-start -P "$ves" -n "$name"
  t1=$EPOCHREALTIME
  echo "$name $t0 $tm $t1"
done
'''


class BenchError(Exception):
    pass


# -- small helpers -------------------------------------------------------------------------
def log(msg):
    print('[bench %s] %s' % (time.strftime('%H:%M:%S'), msg), flush=True)


def run(argv, check=True, **kwargs):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise BenchError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, detail))
    return proc


def percentile(values, pct):
    """Nearest-rank percentile of a list of numbers."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, int(-(-pct * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def names_for(prefix, n):
    return ['%s%03d' % (prefix, i) for i in range(1, n + 1)]


def subid_base(path):
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            fields = line.strip().split(':')
            if len(fields) == 3 and fields[0] == 'root' and int(fields[2]) >= 65536:
                return int(fields[1])
    raise BenchError('no subordinate id range of root with 65536 ids in %s' % path)


# -- cgroups -------------------------------------------------------------------------------
def hierarchies():
    """{mount point: own cgroup path} for every cgroup hierarchy mounted under /sys/fs/cgroup."""
    own = {}
    with open('/proc/self/cgroup', encoding='utf-8') as handle:
        for line in handle:
            _hid, controllers, path = line.rstrip('\n').split(':', 2)
            own[controllers] = path
    result = {}
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        for line in handle:
            left, _sep, right = line.partition(' - ')
            fields, rfields = left.split(), right.split()
            mount, fstype = fields[4], rfields[0]
            if not mount.startswith(CGROUP_ROOT + '/'):
                continue
            if fstype == 'cgroup2':
                result[mount] = own.get('', '/')
            elif fstype == 'cgroup':
                opts = [o for o in rfields[2].split(',') if o not in ('rw', 'ro')]
                key = ','.join(o for o in opts if '=' not in o or o.startswith('name='))
                for controllers, path in own.items():
                    if controllers and set(controllers.split(',')) == set(key.split(',')):
                        result[mount] = path
    return result


def proc_cgroups(pid):
    """{controllers: path} of a process."""
    result = {}
    try:
        with open('/proc/%d/cgroup' % pid, encoding='utf-8') as handle:
            for line in handle:
                _hid, controllers, path = line.rstrip('\n').split(':', 2)
                result[controllers] = path
    except OSError:
        pass
    return result


def make_child_cgroups(name):
    """Create <own cgroup>/<name> in every hierarchy; return the cgroup.procs files to join it."""
    procs = []
    for mount, own in hierarchies().items():
        path = os.path.join(mount, own.lstrip('/'), name)
        os.makedirs(path, exist_ok=True)
        if os.path.basename(mount) == 'cpuset':
            for key in ('cpuset.cpus', 'cpuset.mems'):
                with open(os.path.join(os.path.dirname(path), key), encoding='utf-8') as src:
                    value = src.read().strip()
                with open(os.path.join(path, key), 'w', encoding='utf-8') as dst:
                    dst.write(value)
        procs.append(os.path.join(path, 'cgroup.procs'))
    return procs


OURS_RE = re.compile(r'(^|/)vzbench-[a-z]+-[0-9]+(\.monitor)?(/|$)')


def remove_cgroup_trees(relative_paths):
    """rmdir, deepest first, every directory under <mount>/<path> in every hierarchy (empty ones only).

    Only paths inside a cgroup parent this benchmark made (vzbench-<variant>-<pid>) are touched.
    """
    for mount in hierarchies():
        for rel in relative_paths:
            top = os.path.join(mount, rel.lstrip('/'))
            if not OURS_RE.search(rel) or not os.path.isdir(top):
                continue
            for current, _dirs, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(current)
                except OSError:
                    pass


# -- processes and memory ------------------------------------------------------------------
def scan_processes():
    """(ppid by pid, cmdline by pid) of every process."""
    ppid, cmdline = {}, {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open('/proc/%d/stat' % pid, 'rb') as handle:
                stat = handle.read().decode('utf-8', 'replace')
            with open('/proc/%d/cmdline' % pid, 'rb') as handle:
                cmd = handle.read().replace(b'\0', b' ').decode('utf-8', 'replace').strip()
        except OSError:
            continue
        ppid[pid] = int(stat.rpartition(')')[2].split()[1])
        cmdline[pid] = cmd
    return ppid, cmdline


def rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid, encoding='utf-8') as handle:
            for line in handle:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ve_processes(lxcpath, names):
    """{name: (monitor pid, init pid)} of running containers, from one scan of /proc."""
    ppid, cmdline = scan_processes()
    wanted = set(names)
    monitors = {}
    for pid, cmd in cmdline.items():
        match = re.fullmatch(r'\[lxc monitor\] (\S+) (\S+)', cmd)
        if match and match.group(1).rstrip('/') == lxcpath.rstrip('/') and match.group(2) in wanted:
            monitors[match.group(2)] = pid
    children = {}
    for pid, parent in ppid.items():
        children.setdefault(parent, []).append(pid)
    result = {}
    for name, monitor in monitors.items():
        kids = sorted(children.get(monitor, []))
        result[name] = (monitor, kids[0] if kids else None)
    return result


def memory_of(lxcpath, names):
    """Mean RSS (init + monitor) and mean memory.usage_in_bytes of the running VEs; also their cgroups."""
    procs = ve_processes(lxcpath, names)
    rss, usage, cgroups = [], [], set()
    mem_mount = os.path.join(CGROUP_ROOT, 'memory')
    for name in names:
        monitor, init = procs.get(name, (None, None))
        if monitor is None or init is None:
            continue
        parts = [rss_kib(monitor), rss_kib(init)]
        if None not in parts:
            rss.append(sum(parts) * 1024)
        for pid in (monitor, init):
            cgroups.update(p for p in proc_cgroups(pid).values())
        path = proc_cgroups(init).get('memory')
        if path and os.path.isdir(mem_mount):
            try:
                with open(os.path.join(mem_mount, path.lstrip('/'), 'memory.usage_in_bytes'), encoding='utf-8') as h:
                    usage.append(int(h.read().strip()))
            except (OSError, ValueError):
                pass
    return {
        'running': len(procs),
        'rss_bytes_mean': statistics.mean(rss) if rss else None,
        'cgroup_bytes_mean': statistics.mean(usage) if usage else None,
        'cgroups': sorted(cgroups),
    }


def running_names(lxcpath):
    proc = run(['lxc-ls', '-P', lxcpath, '--running', '-1'], check=False)
    return proc.stdout.split()


def teardown(lxcpath, extra_cgroups=(), only=None):
    """Kill every running container of the lxcpath (or those in ``only``), then drop their cgroups (not timed)."""
    if not os.path.isdir(lxcpath):
        remove_cgroup_trees(extra_cgroups)
        return
    names = [n for n in running_names(lxcpath) if only is None or n in only]
    cgroups = set(extra_cgroups)
    for name, (monitor, init) in ve_processes(lxcpath, names).items():
        for pid in (monitor, init):
            if pid:
                cgroups.update(proc_cgroups(pid).values())
    for name in names:
        run(['lxc-stop', '-P', lxcpath, '-n', name, '--kill'], check=False)
    deadline = time.monotonic() + 30
    while set(running_names(lxcpath)) & set(names) and time.monotonic() < deadline:
        time.sleep(0.2)
    # the VE cgroups first, then their parents (<parent>, <parent>.monitor, ...)
    remove_cgroup_trees(sorted(cgroups, key=len, reverse=True))
    remove_cgroup_trees(sorted({os.path.dirname(c) for c in cgroups if os.path.dirname(c) != '/'} |
                               set(extra_cgroups), key=len, reverse=True))


# -- ansible -------------------------------------------------------------------------------
class Ansible:
    def __init__(self, workdir):
        self.workdir = workdir
        self.count = 0
        self.playbook_bin = shutil.which('ansible-playbook')
        if not self.playbook_bin:
            raise BenchError('ansible-playbook is not on PATH (run through `make bench`)')

    def play(self, label, tasks, extra_env=None, preexec_fn=None):
        """Run one play against localhost; return wall seconds and the callback's events."""
        self.count += 1
        base = os.path.join(self.workdir, '%02d-%s' % (self.count, label))
        playbook = [{'name': label, 'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks}]
        with open(base + '.yml', 'w', encoding='utf-8') as handle:
            json.dump(playbook, handle, indent=1)
        times = base + '.times.jsonl'
        env = dict(os.environ,
                   OSVIRT_BENCH_TIMES=times,
                   ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, 'callback_plugins'),
                   ANSIBLE_CALLBACKS_ENABLED='bench_timer',
                   ANSIBLE_NOCOLOR='1',
                   ANSIBLE_RETRY_FILES_ENABLED='0')
        env.update(extra_env or {})
        argv = [self.playbook_bin, '-i', 'localhost,', '-c', 'local',
                '-e', 'ansible_python_interpreter=%s' % HOST_PYTHON, base + '.yml']
        with open(base + '.log', 'w', encoding='utf-8') as out:
            start = time.time()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, check=False,
                                  stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)  # pylint: disable=subprocess-popen-preexec-fn
            wall = time.time() - start
        events = []
        if os.path.exists(times):
            with open(times, encoding='utf-8') as handle:
                events = [json.loads(line) for line in handle if line.strip()]
        if proc.returncode != 0:
            failed = [e for e in events if e.get('status') not in (None, 'ok')]
            detail = failed[0].get('msg') if failed else None
            with open(base + '.log', encoding='utf-8') as handle:
                tail = handle.read()[-3000:]
            raise BenchError('ansible-playbook %s failed (rc=%d)%s\n--- %s.log (tail) ---\n%s'
                             % (label, proc.returncode, ': %s' % detail if detail else '', base, tail))
        return wall, events


def task_times(events, task):
    """(task seconds, [(item, seconds)]) of one task from the callback's events."""
    start = next(e['t'] for e in events if e['ev'] == 'task_start' and e['task'] == task)
    end = next(e['t'] for e in events if e['ev'] == 'task_end' and e['task'] == task)
    items, last = [], start
    for event in events:
        if event['ev'] == 'item' and event['task'] == task:
            items.append((event['item'], event['t'] - last))
            last = event['t']
    return end - start, items


# -- the variants --------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.workdir = tempfile.mkdtemp(prefix='osvirt-bench-', dir=args.tmp)
        os.chmod(self.workdir, 0o711)
        self.ansible = Ansible(os.path.join(self.workdir, 'ansible'))
        os.makedirs(self.ansible.workdir)
        self.tag = '%d' % os.getpid()
        self.results = {}
        self.errors = {}

    # a throw-away vz_root with the busybox template and a warm-up VE, per variant (not timed)
    def setup_root(self, variant, keep_warmup=False):
        vz_root = os.path.join(self.workdir, 'vz-%s' % variant)
        os.makedirs(vz_root, 0o711)
        os.chmod(vz_root, 0o711)
        parent = 'vzbench-%s-%s' % (variant, self.tag)
        common = {'vz_root': vz_root}
        self.ansible.play('setup-%s' % variant, [
            {'name': 'template', 'osvirt.vz.template': dict(common, name='busybox')},
            {'name': 'warm-up VE', 'osvirt.vz.ve': dict(common, name=WARMUP, template='busybox', state='started',
                                                        cgroup_parent=parent)},
        ])
        ves = os.path.join(vz_root, 'ves')
        with open(os.path.join(ves, WARMUP, 'config'), encoding='utf-8') as handle:
            config = handle.read()
        if not keep_warmup:
            teardown(ves)
            shutil.rmtree(os.path.join(ves, WARMUP))
        return vz_root, parent, config

    def cleanup(self, lxcpath, vz_root, parents=()):
        teardown(lxcpath, extra_cgroups=list(parents) + ['/%s.monitor' % p.strip('/') for p in parents])
        if not self.args.keep:
            shutil.rmtree(vz_root, ignore_errors=True)

    def record(self, key, **fields):
        self.results[key] = fields
        shown = {k: v for k, v in fields.items() if k not in ('per_ve', 'cgroups')}
        log('%s: %s' % (key, json.dumps(shown, default=str)))

    def variant_a(self):
        n = self.args.n
        vz_root, parent, config = self.setup_root('a')
        ves = os.path.join(vz_root, 'ves')
        try:
            cfg_path = os.path.join(self.workdir, 'floor-config')
            with open(cfg_path, 'w', encoding='utf-8') as handle:
                handle.write(config.rstrip('\n'))
            script = os.path.join(self.workdir, 'floor.sh')
            with open(script, 'w', encoding='utf-8') as handle:
                handle.write(FLOOR_SCRIPT)
            argv = ['bash', script, cfg_path, ves, str(n), 'a', str(subid_base('/etc/subuid')),
                    str(subid_base('/etc/subgid')), WARMUP]
            start = time.time()
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            wall = time.time() - start
            if proc.returncode != 0:
                raise BenchError('floor script failed (rc=%d): %s' % (proc.returncode, proc.stderr.strip()[-2000:]))
            per_ve, lxc_start = [], []
            for line in proc.stdout.splitlines():
                name, t0, tm, t1 = line.split()
                per_ve.append((name, float(t1) - float(t0)))
                lxc_start.append(float(t1) - float(tm))
            mem = memory_of(ves, names_for('a', n))
            self.record('a', n=n, total=wall, task=None, per_ve=per_ve, mean=statistics.mean(t for _n, t in per_ve),
                        lxc_start_mean=statistics.mean(lxc_start), lxc_start_p50=percentile(lxc_start, 50),
                        p50=percentile([t for _n, t in per_ve], 50), p95=percentile([t for _n, t in per_ve], 95),
                        running=mem['running'], rss=mem['rss_bytes_mean'], cgroup_mem=mem['cgroup_bytes_mean'],
                        cgroups=mem['cgroups'][:2])
        finally:
            self.cleanup(ves, vz_root, ['/' + parent])

    def variant_module(self, key, n, loop):
        vz_root, parent, _config = self.setup_root(key)
        ves = os.path.join(vz_root, 'ves')
        names = names_for(key, n)
        common = {'vz_root': vz_root, 'cgroup_parent': parent, 'template': 'busybox', 'state': 'started'}
        try:
            if loop:
                task = {'name': 'create', 'osvirt.vz.ve': dict(common, name='{{ item }}'), 'loop': names}
            else:
                task = {'name': 'create', 'osvirt.vz.ve': dict(common, ves=[{'name': x} for x in names])}
            wall, events = self.ansible.play('ve-%s' % key, [task])
            task_s, items = task_times(events, 'create')
            mem = memory_of(ves, names)
            fields = dict(n=n, total=wall, task=task_s, mean=task_s / n, running=mem['running'],
                          rss=mem['rss_bytes_mean'], cgroup_mem=mem['cgroup_bytes_mean'], cgroups=mem['cgroups'][:2])
            if loop:
                durations = [t for _n, t in items]
                fields.update(per_ve=items, p50=percentile(durations, 50), p95=percentile(durations, 95))
            else:
                fields.update(p50=None, p95=None)
            self.record(key, **fields)
        finally:
            self.cleanup(ves, vz_root, ['/' + parent])

    def variant_d(self):
        n = self.args.n
        if run([HOST_PYTHON, '-c', 'import lxc'], check=False).returncode != 0:
            raise BenchError('%s cannot import the lxc binding (apt-get install python3-lxc)' % HOST_PYTHON)
        vz_root, parent, config = self.setup_root('d', keep_warmup=True)
        ves = os.path.join(vz_root, 'ves')
        # community.general.lxc_container binds its lxc.Container objects without the lxc_path option
        # (get_container_bind: ``lxc.Container(name=self.container_name)``), so starting a container
        # outside LXC's default lxcpath never works (it retries for 60 s, then fails). The clones
        # therefore live in the default lxcpath, under names unique to this run, and are removed after.
        lxcpath = DEFAULT_LXCPATH
        prefix = 'vzb%s-' % self.tag
        base_name = prefix + 'base'
        names = names_for(prefix + 'd', n)
        ours = [base_name] + names
        try:
            # The base container (not timed): the warm-up VE's config and a plain-dir copy of the
            # template rootfs, already owned by the mapped ids. lxc.cgroup.relative puts each clone's
            # cgroup under the cgroup of the process that starts it, which is <own>/<parent>.
            rootfs_lower = re.search(r'^lxc\.rootfs\.path = overlay:([^:]+):', config, re.M).group(1)
            teardown(ves)
            os.makedirs(lxcpath, 0o755, exist_ok=True)
            base = os.path.join(lxcpath, base_name)
            os.makedirs(base, 0o711)
            os.chmod(base, 0o711)
            rootfs = os.path.join(base, 'rootfs')   # lxc-copy wants the container name in the path
            run(['cp', '-a', rootfs_lower, rootfs])
            lines = [line for line in config.splitlines()
                     if line.strip() and not line.startswith('#') and not line.startswith(
                         ('lxc.uts.name', 'lxc.rootfs.path', 'lxc.cgroup.dir.', 'lxc.log.file'))]
            lines += ['lxc.uts.name = %s' % base_name, 'lxc.rootfs.path = dir:%s' % rootfs,
                      'lxc.log.file = %s' % os.path.join(base, 'lxc.log'), 'lxc.cgroup.relative = 1']
            with open(os.path.join(base, 'config'), 'w', encoding='utf-8') as handle:
                handle.write('\n'.join(lines) + '\n')
            procs = make_child_cgroups(parent)

            def join_cgroup():
                for path in procs:
                    with open(path, 'w', encoding='utf-8') as handle:
                        handle.write(str(os.getpid()))

            tasks = [
                {'name': 'clone', 'community.general.lxc_container': {
                    'name': base_name, 'state': 'stopped', 'clone_name': '{{ item }}',
                    'clone_snapshot': True, 'backing_store': 'overlayfs'}, 'loop': names},
                {'name': 'start', 'community.general.lxc_container': {
                    'name': '{{ item }}', 'state': 'started'}, 'loop': names},
            ]
            wall, events = self.ansible.play('lxc_container-d', tasks, preexec_fn=join_cgroup)
            clone_s, clone_items = task_times(events, 'clone')
            start_s, start_items = task_times(events, 'start')
            starts = dict(start_items)
            per_ve = [(name, t + starts.get(name, 0.0)) for name, t in clone_items]
            durations = [t for _n, t in per_ve]
            mem = memory_of(lxcpath, names)
            self.record('d', n=n, total=wall, task=clone_s + start_s, task_clone=clone_s, task_start=start_s,
                        mean=(clone_s + start_s) / n, per_ve=per_ve, p50=percentile(durations, 50),
                        p95=percentile(durations, 95), clone_p50=percentile([t for _n, t in clone_items], 50),
                        start_p50=percentile([t for _n, t in start_items], 50), running=mem['running'],
                        rss=mem['rss_bytes_mean'], cgroup_mem=mem['cgroup_bytes_mean'], cgroups=mem['cgroups'][:2])
        finally:
            rel = sorted({os.path.join(path, parent) for path in hierarchies().values()})
            teardown(lxcpath, extra_cgroups=rel, only=ours)
            for name in ours:
                shutil.rmtree(os.path.join(lxcpath, name), ignore_errors=True)
            self.cleanup(ves, vz_root, ['/' + parent])

    def run(self):
        wanted = self.args.only.split(',')
        steps = [('a', self.variant_a), ('b', lambda: self.variant_module('b', self.args.n, loop=False)),
                 ('c', lambda: self.variant_module('c', self.args.n, loop=True)), ('d', self.variant_d),
                 ('big', lambda: self.variant_module('big', self.args.n_big, loop=False))]
        for key, step in steps:
            if key not in wanted:
                continue
            log('variant %s ...' % key)
            try:
                step()
            except Exception as exc:  # report and go on with the others
                self.errors[key] = str(exc)
                log('variant %s FAILED: %s' % (key, exc))


# -- report --------------------------------------------------------------------------------
def fmt_ms(seconds):
    return '-' if seconds is None else ('%.1f' % (seconds * 1000) if seconds < 0.1 else '%.0f' % (seconds * 1000))


def fmt_s(seconds):
    return '-' if seconds is None else '%.2f' % seconds


def fmt_mib(value):
    return '-' if value is None else '%.2f' % (value / 1048576.0)


def machine():
    mem_kib = 0
    with open('/proc/meminfo', encoding='utf-8') as handle:
        for line in handle:
            if line.startswith('MemTotal:'):
                mem_kib = int(line.split()[1])
    lxc_version = run(['lxc-start', '--version'], check=False).stdout.strip()
    ansible_version = run([shutil.which('ansible-playbook') or 'ansible-playbook', '--version'],
                          check=False).stdout.splitlines()[:1]
    return {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'nproc': os.cpu_count(),
        'memory': '%.1f GiB' % (mem_kib / 1048576.0),
        'kernel': platform.release(),
        'lxc': lxc_version,
        'ansible': ansible_version[0] if ansible_version else '?',
        'python': platform.python_version(),
        'load': _loadavg(),
    }


def _loadavg():
    with open('/proc/loadavg', encoding='utf-8') as handle:
        return ' '.join(handle.read().split()[:3])


LABELS = {
    'a': '(a) floor: bash + lxc-start',
    'b': '(b) osvirt.vz.ve bulk (ves:)',
    'c': '(c) osvirt.vz.ve loop',
    'd': '(d) lxc_container clone+start loop',
    'big': 'bulk, 100 VEs in one task',
}


def report(results, errors, args, info):
    """The table (markdown), the target checks, and notes."""
    out = []
    out.append('VE creation (foundation): busybox VEs created and started, no network interface '
               '(lxc.net.0.type = empty) in every variant.')
    out.append('Machine: %(nproc)s CPUs, %(memory)s, kernel %(kernel)s, LXC %(lxc)s, %(ansible)s, %(date)s; '
               'load average at start %(load_start)s, at end %(load)s (other jobs on the machine skew the figures).' % info)
    out.append('')
    out.append('| variant | N | total s | task s | ms/VE mean | p50 ms | p95 ms | anchor ms/VE | RSS init+monitor MiB '
               '| cgroup memory MiB |')
    out.append('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for key in ('a', 'b', 'c', 'd', 'big'):
        if key in results:
            r = results[key]
            anchor = ANCHORS.get(key)
            out.append('| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |' % (
                LABELS[key], r['n'], fmt_s(r['total']), fmt_s(r.get('task')), fmt_ms(r['mean']), fmt_ms(r.get('p50')),
                fmt_ms(r.get('p95')), fmt_ms(anchor) + ' (N=20)' if anchor else '-', fmt_mib(r.get('rss')),
                fmt_mib(r.get('cgroup_mem'))))
        elif key in errors:
            out.append('| %s | - | FAILED: see below | | | | | %s | | |' % (
                LABELS[key], fmt_ms(ANCHORS[key]) + ' (N=20)' if key in ANCHORS else '-'))
    out.append('')
    out.append('| target | wanted | measured | met |')
    out.append('|---|---|---|---|')
    a, b, d, big = (results.get(k) for k in ('a', 'b', 'd', 'big'))
    if a and b:
        ratio = b['mean'] / a['mean']
        out.append('| (b) per VE within %.1fx of (a) per VE | <= %.1fx | %.2fx (%s vs %s ms) | %s |' % (
            TARGET_B_VS_A, TARGET_B_VS_A, ratio, fmt_ms(b['mean']), fmt_ms(a['mean']),
            'yes' if ratio <= TARGET_B_VS_A else 'NO'))
    else:
        out.append('| (b) per VE within %.1fx of (a) per VE | <= %.1fx | not measured | - |' % (TARGET_B_VS_A, TARGET_B_VS_A))
    if b and d:
        ratio = d['mean'] / b['mean']
        out.append('| (b) at least %dx faster than (d) per VE | >= %dx | %.1fx (%s vs %s ms) | %s |' % (
            TARGET_D_VS_B, TARGET_D_VS_B, ratio, fmt_ms(b['mean']), fmt_ms(d['mean']),
            'yes' if ratio >= TARGET_D_VS_B else 'NO'))
    else:
        out.append('| (b) at least %dx faster than (d) per VE | >= %dx | not measured | - |' % (TARGET_D_VS_B, TARGET_D_VS_B))
    if big:
        out.append('| %d VEs in one bulk task | < %.0f s | %.2f s (task), %.2f s (ansible-playbook) | %s |' % (
            big['n'], TARGET_BIG_TASK, big['task'], big['total'], 'yes' if big['task'] < TARGET_BIG_TASK else 'NO'))
    else:
        out.append('| %d VEs in one bulk task | < %.0f s | not measured | - |' % (args.n_big, TARGET_BIG_TASK))
    out.append('')
    out.append('Columns: total = wall time of the whole variant (bash script / ansible-playbook run); task = the '
               'timed task(s) alone, from the callback\'s task start to task end; ms/VE mean = task / N ((a): '
               'mean of the per-iteration times); p50/p95 = per iteration ((a)) or per loop item ((c), (d): '
               'clone item + start item of the same VE); (b) has only a mean. Memory: mean over the running VEs '
               'of VmRSS(init) + VmRSS(lxc monitor), and of the VE cgroup\'s memory.usage_in_bytes.')
    if a:
        out.append('(a) split: lxc-start alone %s ms mean (p50 %s ms) of the %s ms per VE; the rest is mkdir, chown '
                   'and writing the config.' % (fmt_ms(a['lxc_start_mean']), fmt_ms(a['lxc_start_p50']), fmt_ms(a['mean'])))
    if d:
        out.append('(d) split: clone task %.2f s (p50 %s ms/item), start task %.2f s (p50 %s ms/item).' % (
            d['task_clone'], fmt_ms(d['clone_p50']), d['task_start'], fmt_ms(d['start_p50'])))
    for key, message in errors.items():
        out.append('')
        out.append('%s FAILED:' % LABELS.get(key, key))
        out.append('```')
        out.extend(message.splitlines()[:40])
        out.append('```')
    return '\n'.join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--n', type=int, default=50, help='VEs per variant (default 50)')
    parser.add_argument('--n-big', type=int, default=100, help='VEs in the big bulk task (default 100)')
    parser.add_argument('--only', default='a,b,c,d,big', help='comma list of variants: a,b,c,d,big')
    parser.add_argument('--tmp', default='/var/tmp', help='where the throw-away vz_roots go (default /var/tmp)')
    parser.add_argument('--json', help='also write the raw results to this file')
    parser.add_argument('--markdown', help='also write the report (markdown) to this file')
    parser.add_argument('--keep', action='store_true', help='keep the work directory (playbooks, logs)')
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print('bench: must run as root (LXC, cgroups, id-mapped dirs)', file=sys.stderr)
        return 2
    if args.n < 1 or args.n > 999 or args.n_big < 1 or args.n_big > 999:
        print('bench: --n and --n-big must be 1..999', file=sys.stderr)
        return 2
    load_start = _loadavg()
    bench = Bench(args)
    log('work directory %s (N=%d, big N=%d, variants %s)' % (bench.workdir, args.n, args.n_big, args.only))
    started = time.time()
    try:
        bench.run()
    finally:
        if not args.keep:
            shutil.rmtree(bench.workdir, ignore_errors=True)
    info = dict(machine(), load_start=load_start)
    text = report(bench.results, bench.errors, args, info)
    print()
    print(text)
    print()
    log('done in %.0f s' % (time.time() - started))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as handle:
            json.dump({'machine': info, 'results': bench.results, 'errors': bench.errors}, handle,
                      indent=1, default=str)
    if args.markdown:
        with open(args.markdown, 'w', encoding='utf-8') as handle:
            handle.write(text + '\n')
    return 1 if bench.errors else 0


if __name__ == '__main__':
    sys.exit(main())
