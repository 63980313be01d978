# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VEs on one host: their metadata and the plan that gets them to the state a task asks for.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A VE lives in ``<vz_root>/ves/<name>/``::

    config          LXC config (lxcpath is <vz_root>/ves, so plain lxc-* tools see the VE)
    ve.json         our metadata: template@version, hostname, network, mounts, created, owner
    private/upper   the VE's own copy-on-write layer (overlay upper dir)
    private/work    overlay work dir
    lxc.log         LXC's error log of the last start

Its root file system is overlay(lower = template layers, upper = private/upper), mounted by LXC
inside the VE's mount namespace: creating a VE copies no template file.

The module front end calls ``VeManager.ensure(specs)``; everything else here is the means:
``plan_transitions`` (pure, unit-tested) decides the steps, ``VeManager`` runs them under a
per-VE lock and rolls a new VE back if its first start fails. The steps on one VE are ``VeOps``
(``_ve_ops.py``, shared with migration, snapshots and backups); its network is ``_ve_net.py``, its
LXC config ``_ve_config.py``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from . import _boot, _limits, _quota, _staging, _validate
from ._engine.config import LxcConfig
from ._errors import VzError
from ._fs import atomic_write, disk_usage, read_json, write_inside, write_json
from ._locks import Lock
from ._rebase import hidden_files
from ._ve_config import NET_HOOK, config_digest, is_owned
from ._snapshot import Snapshots, list_snapshots, parse_ref, snapshot_dir
from ._ve_identity import VeTree, reset_machine_identity, write_identity
from ._ve_net import check_forwarding, describe_live, normalize_network, plan_live_network, resolv_conf
from ._ve_ops import VeOps

STATES = ('present', 'started', 'stopped', 'restarted', 'frozen', 'absent')
META_SCHEMA = 1

# What a new VE gets for options the task leaves out.
SPEC_DEFAULTS = {
    'hostname': None,          # the VE name
    'autostart': False,
    'mounts': [],
    'network': [],
    'privileged': False,
    'ttys': 0,                 # lxc.tty.max; 0 keeps the VE checkpointable (CRIU, docs/criu.md)
    'console': True,           # false: lxc.console.path = none, which LXC 5.0's restore needs
    'owner': None,
}
SPEC_KEYS = ('template',) + tuple(SPEC_DEFAULTS) + ('limits',)


# -- planning ----------------------------------------------------------------------------------
_PATHS = {
    # (current, desired) -> steps; 'absent' current means the VE does not exist
    'present': {'absent': ['create'], 'stopped': [], 'running': [], 'frozen': []},
    'started': {'absent': ['create', 'start'], 'stopped': ['start'], 'running': [], 'frozen': ['unfreeze']},
    'stopped': {'absent': ['create'], 'stopped': [], 'running': ['stop'], 'frozen': ['unfreeze', 'stop']},
    'restarted': {'absent': ['create', 'start'], 'stopped': ['start'], 'running': ['stop', 'start'],
                  'frozen': ['unfreeze', 'stop', 'start']},
    'frozen': {'absent': ['create', 'start', 'freeze'], 'stopped': ['start', 'freeze'],
               'running': ['freeze'], 'frozen': []},
    # a VE that is removed gets no clean shutdown: its private area is deleted next anyway
    'absent': {'absent': [], 'stopped': ['destroy'], 'running': ['kill', 'destroy'],
               'frozen': ['unfreeze', 'kill', 'destroy']},
}


def plan_transitions(current, desired, config_changed=False, restart=False, stale=None):
    """Steps that take a VE from ``current`` to ``desired`` state.

    ``current`` is one of absent/stopped/running/frozen. ``config_changed`` means the LXC config
    on disk is rewritten (step 'configure'). ``stale`` means a running VE runs another config than
    the one asked for (by default: ``config_changed``; it stays true after an earlier run wrote the
    change without restarting). A stale VE is restarted when ``restart`` is true or the desired
    state is 'restarted'; otherwise the result says a restart is required.
    Returns ``(steps, restart_required)``.
    """
    if stale is None:
        stale = config_changed
    if desired not in _PATHS:
        raise VzError('invalid state %r: use one of %s' % (desired, ', '.join(STATES)))
    if current not in _PATHS[desired]:
        raise VzError('cannot plan from VE state %r' % current)
    steps = list(_PATHS[desired][current])
    restart_required = False
    if current == 'absent' or desired == 'absent':
        return steps, False
    head = ['configure'] if config_changed else []
    live = current in ('running', 'frozen') and 'stop' not in steps
    if stale and live and desired in ('started', 'frozen', 'present'):
        if restart:
            prefix = ['unfreeze'] if current == 'frozen' else []
            tail = ['freeze'] if current == 'frozen' or desired == 'frozen' else []
            return head + prefix + ['stop', 'start'] + tail, False
        restart_required = True
    return head + steps, restart_required


# -- metadata and config -----------------------------------------------------------------------
def normalize_mounts(ve, mounts, host):
    """Validate bind mounts (host path -> VE path) and fill in their defaults."""
    result, targets = [], set()
    for mount in mounts or []:
        if not isinstance(mount, dict) or not mount.get('source') or not mount.get('target'):
            raise VzError('VE %s: each mount needs a source (host path) and a target (VE path)' % ve)
        source = _validate.host_path(mount['source'], 'VE %s mount source' % ve, forbidden_root=host.vz_root)
        target = '/' + _validate.ve_path(mount['target'], 'VE %s mount target' % ve)
        if target in targets:
            raise VzError('VE %s: mount target %s is used twice' % (ve, target))
        targets.add(target)
        result.append({'source': source, 'target': target, 'readonly': bool(mount.get('readonly'))})
    return result


def public_view(meta, state, pid=None):
    """The VE as modules return it."""
    network = meta.get('network') or []
    ips = [a.split('/')[0] for key in ('ipv4', 'ipv6') for iface in network for a in iface.get(key) or []]
    return {
        'name': meta['name'],
        'state': state,
        'template': meta.get('template'),
        'hostname': meta.get('hostname') or meta['name'],
        'ips': ips,
        'pid': pid,
        'autostart': bool(meta.get('autostart')),
        'privileged': bool(meta.get('privileged')),
        'owner': meta.get('owner'),
        'created': meta.get('created'),
        'limits': _limits.describe(meta.get('limits')),
    }


def spec_view(meta):
    """The part of the metadata that a task can ask for; used for --diff (limits with unit strings)."""
    view = {k: meta.get(k) for k in SPEC_KEYS if k in meta}
    if 'limits' in view:
        view['limits'] = _limits.describe(view['limits'])
    return view


# -- the manager -------------------------------------------------------------------------------
class VeManager(VeOps):
    """Brings VEs of one host to the state tasks ask for, with the steps of ``VeOps``."""

    def __init__(self, host, client, check_mode=False, lock_timeout=60, stop_timeout=30, workers=4,
                 overcommit=None, wait_for=None, wait_timeout=300):
        super().__init__(host, client, stop_timeout=stop_timeout, overcommit=overcommit)
        self._pending_limits = {}
        self._parents_ready = set()
        self.check_mode = check_mode
        self.lock_timeout = lock_timeout
        # VEs worked on at once. With wait_for, a worker waits for its VE's boot before it takes
        # the next one, so this also bounds how many VEs boot at the same time (no boot storm).
        if int(workers) < 1:
            raise VzError('start_concurrency must be at least 1, got %s' % workers)
        self.workers = int(workers)
        if wait_for is not None and wait_for not in _boot.WAIT_FOR:
            raise VzError('wait_for must be one of %s, got %r' % (', '.join(_boot.WAIT_FOR), wait_for))
        if int(wait_timeout) < 1:
            raise VzError('wait_timeout must be at least 1 (seconds), got %s' % wait_timeout)
        self.wait_for, self.wait_timeout = wait_for, int(wait_timeout)

    # -- desired state --------------------------------------------------------------------
    def desired_meta(self, spec, meta):
        """Merge a task's options into the VE's metadata; returns (new meta, template manifest)."""
        name = spec['name']
        current = dict(meta or {})
        new = dict(current) if meta else {'name': name, 'schema': META_SCHEMA}
        for key, default in SPEC_DEFAULTS.items():
            if spec.get(key) is not None:
                new[key] = spec[key]
            elif key not in new:
                new[key] = default
        new['network'] = normalize_network(name, new['network'], self.host,
                                           current.get('cgroup_parent') if meta else self.host.cgroup_parent,
                                           current.get('network') if meta else None)
        new['mounts'] = normalize_mounts(name, new['mounts'], self.host)
        if new.get('hostname') is not None and not _validate.VE_NAME_RE.fullmatch(new['hostname']) and not \
                all(_validate.VE_NAME_RE.fullmatch(p) for p in new['hostname'].split('.')):
            raise VzError('VE %s: invalid hostname %r' % (name, new['hostname']))
        if not isinstance(new['ttys'], int) or isinstance(new['ttys'], bool) or not 0 <= new['ttys'] <= 16:
            raise VzError('VE %s: ttys must be a number from 0 to 16, got %r' % (name, new['ttys']))
        if meta and bool(meta.get('privileged')) != bool(new['privileged']):
            raise VzError('VE %s: privileged cannot change on an existing VE (its files are owned by other '
                          'ids); create a new VE instead' % name)
        manifest = self._wanted_template(name, spec, current if meta else None)
        new['template'] = '%s@%s' % (manifest['name'], manifest['version'])
        new['layers'] = ['%s@%s' % (m['name'], m['version']) for m in self.templates.layers(manifest)]
        new['cgroup_parent'] = current.get('cgroup_parent') if meta else self.host.cgroup_parent
        new['limits'] = _limits.merge(current.get('limits') or {}, _limits.parse_change(spec.get('limits')))
        if not meta:
            new['idmap'] = None if new['privileged'] else dict(self.host.idmap()._asdict())
            new['apparmor'] = self.host.apparmor_enabled()
            new['created'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        return new, manifest

    def _wanted_template(self, name, spec, current):
        """Manifest of the version a VE should run on (``current``: its metadata, None when new).

        ``name`` alone keeps the version an existing VE has; ``name@version`` asks for that version
        (a rebase, older versions included); ``rebase: latest`` asks for the newest version of the
        VE's template. A VE never moves to another template name: its private area was made on it.
        """
        wanted, rebase = spec.get('template'), spec.get('rebase')
        if rebase not in (None, 'latest'):
            raise VzError('VE %s: invalid rebase %r: use "latest"' % (name, rebase))
        if wanted is None and current is None:
            raise VzError('VE %s does not exist: template is required to create it' % name)
        tname, tversion = _validate.template_ref(wanted) if wanted is not None else (None, None)
        if rebase and tversion:
            raise VzError('VE %s: template %s names a version and rebase: latest asks for the newest; use one '
                          'of them' % (name, wanted))
        if current is None:
            return self.templates.resolve(wanted)
        cname, cversion = _validate.template_ref(current['template'])
        if tname is not None and tname != cname:
            raise VzError('VE %s is built on template %s; it cannot move to template %s (its private area was '
                          'made on %s: create a new VE instead)' % (name, cname, tname, cname))
        if rebase:
            return self.templates.resolve(cname)
        if tversion is None:
            return self.templates.manifest(cname, cversion)
        return self.templates.resolve('%s@%s' % (cname, tversion))

    def _plan_limits(self, plan, force):
        """Validate a change of limits and prepare its live writes; nothing changes here."""
        name, meta, new_meta = plan['name'], plan['meta'] or {}, plan['new_meta']
        old, new = meta.get('limits') or {}, new_meta.get('limits') or {}
        parent = new_meta['cgroup_parent']
        settings = self.limit_settings(new_meta)
        _limits.check(name, new, self.facts)
        self.ensure_cgroup_parent(parent)
        _limits.check_files(name, settings, self.cgroups, parent)
        if any(_limits.get(new, *key) and _limits.get(new, *key) != _limits.get(old, *key)
               for key in _limits.GUARANTEES):
            others = {}
            for other in self.names():
                if other != name:
                    others[other] = self._pending_limits.get(other, (self.read_meta(other) or {}).get('limits') or {})
            others.update({k: v for k, v in self._pending_limits.items() if k != name})
            _limits.admit(name, new, others, self.facts)
        self._pending_limits[name] = new
        if new.get('net') and not new_meta.get('network'):
            raise VzError('VE %s: limits: net.rate and net.ceil shape the VE\'s network interfaces, but it has none'
                          % name)
        running = plan['current'] in ('running', 'frozen')
        ram = _limits.get(new, 'memory', 'ram')
        if running and ram is not None and ram != _limits.get(old, 'memory', 'ram'):
            used = self.cgroups.memory_usage(parent, name)
            if used is not None and ram < used and not force:
                raise VzError('VE %s uses %s of memory now; lowering memory.ram to %s makes the kernel reclaim '
                              'its page cache and, if that is not enough, %s; set force: true to do it anyway'
                              % (name, _limits.human_size(used), _limits.human_size(ram),
                                 'refuse the change (cgroup v1 reports EBUSY, nothing is changed)'
                                 if self.cgroups.controller('memory')[0] == 'v1'
                                 else 'OOM-kill processes inside the VE'))
        disk_old, disk_new = old.get('disk') or {}, new.get('disk') or {}
        plan['quota'] = None
        if (disk_old.get('space'), disk_old.get('inodes')) != (disk_new.get('space'), disk_new.get('inodes')):
            if plan['meta'] is not None:
                _quota.plan_quota(self.host, new_meta, disk_new.get('space'), disk_new.get('inodes'), running, force)
            else:
                _quota.check_limits(name, disk_new.get('space'), disk_new.get('inodes'), None, None, force)
                if disk_new.get('space') is not None:
                    supported, why = _quota.quota_supported(self.host)
                    if not supported:
                        raise VzError('VE %s: disk.space cannot be applied: %s' % (name, why))
            plan['quota'] = (disk_new.get('space'), disk_new.get('inodes'))
        plan['shaping'] = (old.get('net') or {}) != (new.get('net') or {})
        plan['limit_writes'] = []
        if running:
            old_settings = self.limit_settings(meta) if meta else []
            plan['limit_writes'] = _limits.pending(_limits.live_plan(old_settings, settings, self.cgroups, parent,
                                                                     name))

    def ensure_cgroup_parent(self, parent):
        """Make the VE parent cgroup exist (not in check mode), once per manager and parent.

        A new host has none until the first VE starts, and the files some limits need exist only
        below a hierarchy's root: checking them in the parent keeps the answer independent of
        what ran on the host before.
        """
        if self.check_mode or parent in self._parents_ready:
            return
        try:
            self.cgroups.ensure_parent(parent)
        except OSError as exc:
            raise VzError('cannot make the VE parent cgroup %s: %s' % (parent, exc))
        self._parents_ready.add(parent)

    # -- the whole job --------------------------------------------------------------------
    def ensure(self, specs, restart=False):
        """Bring every VE of ``specs`` (dicts with name, state and options) to its state.

        Everything is validated before anything changes. Returns a list of per-VE results, each
        with ``ve`` (public view), ``changed``, ``actions``, ``restart_required``, ``warnings``,
        ``diff`` and ``error`` (None, or the message when that VE failed).
        """
        names = [_validate.ve_name(s.get('name')) for s in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise VzError('VE %s is listed more than once in one task' % ', '.join(duplicates))
        for spec in specs:   # malformed interfaces fail before any lock file or lease is written
            if spec.get('state') != 'absent' and spec.get('network') is not None:
                normalize_network(spec['name'], spec['network'], self.host)
        if not self.check_mode:
            self.host.ensure_layout()
        self.net.begin_task()
        if any(s.get('state') != 'absent' and not s.get('privileged') for s in specs):
            self.host.check_reachable()
        locks = []
        try:
            if not self.check_mode:
                # a clone's source is locked too: it is read (and frozen for an instant) meanwhile
                sources = {parse_ref(s['clone_from'])[0]: 'clone source of %s' % s['name'] for s in specs
                           if s.get('clone_from') and s.get('state') != 'absent'}
                for name in sorted(set(names) | set(sources)):
                    op = next(('%s (state=%s)' % (name, s.get('state')) for s in specs if s['name'] == name),
                              '%s (%s)' % (name, sources.get(name)))
                    locks.append(Lock(self.host.locks_dir, 've', name, 'osvirt.vz.ve ' + op,
                                      self.lock_timeout, hint='lock_timeout sets how long to wait').acquire())
            states = self.states()
            plans = [self._plan(spec, states.get(spec['name']), restart) for spec in specs]
            if self.check_mode:
                return [self._predict(plan) for plan in plans]
            if len(plans) == 1:
                results = [self._execute(plans[0])]
            else:
                with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(plans)))) as pool:
                    results = list(pool.map(self._execute, plans))
            started = [(r, p) for r, p in zip(results, plans) if r['ve']['state'] in ('running', 'frozen') and
                       r['ve']['pid'] is None]
            if started:
                final = self.states() if len(started) > 1 else {
                    started[0][0]['ve']['name']: self.client.state(started[0][0]['ve']['name'])}
                for result, plan in started:
                    result['ve']['pid'] = (final.get(result['ve']['name']) or {}).get('pid')
                    if 'start' in plan['steps'] and plan['config'] is not None and not result['error']:
                        self.record_running(plan['name'], result['ve']['pid'], config_digest(plan['config']))
            return results
        finally:
            for lock in reversed(locks):
                # a VE that is gone (removed, or never made) keeps no lock file
                lock.release(remove=not os.path.lexists(self.host.ve_dir(lock.name)))

    def _plan(self, spec, listed, restart):
        name = spec['name']
        desired_state = spec.get('state') or 'started'
        meta = self.read_meta(name, broken_ok=desired_state == 'absent')
        if meta is None and spec.get('must_exist'):
            raise VzError('VE %s does not exist on this host (%s)' % (name, self.host.ves_dir))
        if meta is None:
            current = 'absent'
        else:
            current = (listed or {}).get('state', 'stopped')
            if current in ('starting', 'stopping'):
                self.client.wait(name, ['RUNNING', 'STOPPED', 'FROZEN'], timeout=self.stop_timeout)
                current = self.client.state(name)['state']
        plan = {'spec': spec, 'name': name, 'meta': meta, 'current': current, 'desired': desired_state,
                'pid': (listed or {}).get('pid'), 'clone': None}
        if meta is None and spec.get('clone_from') and desired_state != 'absent':
            spec, plan['clone'] = self._clone_spec(spec)
            plan['spec'] = spec
        if desired_state == 'absent':
            plan['new_meta'], plan['manifest'], plan['config'] = meta, None, None
            plan['steps'], plan['restart_required'] = plan_transitions(current, 'absent')
            return plan
        new_meta, manifest = self.desired_meta(spec, meta)
        if plan['clone']:
            new_meta['limits'] = _limits.merge(plan['clone']['meta'].get('limits') or {},
                                               _limits.parse_change(spec.get('limits')))
            new_meta['cloned_from'] = plan['clone']['ref']
        plan['claims'], plan['release'] = self.net.plan_addresses(name, meta, new_meta)
        if meta is not None and meta.get('template') != new_meta['template']:
            plan['rebase'] = self._rebase_info(meta, manifest)
        config = self.desired_config(new_meta, manifest, create=False)
        config_changed = meta_changed = stale = False
        if meta is not None:
            on_disk = self.config_on_disk(name)
            config_changed = sorted(on_disk) != sorted(config)
            meta_changed = spec_view(meta) != spec_view(new_meta)
            plan['disk_digest'] = config_digest(on_disk)
            if current in ('running', 'frozen'):
                stale = self.running_digest(name, plan['pid'], on_disk) != config_digest(config)
        plan.update(new_meta=new_meta, manifest=manifest, config=config)
        live_net = []
        if current in ('running', 'frozen'):
            live_net = plan_live_network(meta, new_meta)
        steps, plan['restart_required'] = plan_transitions(current, desired_state, config_changed, restart, stale)
        if meta_changed and 'configure' not in steps:
            steps.insert(0, 'configure')   # metadata only (e.g. owner): nothing to restart for
        check_forwarding(name, new_meta, steps)
        plan['live_net'] = live_net if 'stop' not in steps else []
        if plan['live_net']:
            # live first, then persist: a refused change leaves config and ve.json as they were
            steps.insert(steps.index('configure') if 'configure' in steps else 0, 'network')
        if meta is not None and resolv_conf(new_meta['network']) not in (None, resolv_conf(meta.get('network'))):
            steps.append('resolver')
        if meta is not None and meta.get('identity') != (new_meta.get('hostname') or name):
            steps.append('identity')   # /etc/hostname and /etc/hosts follow the hostname the VE gets
        if (meta or {}).get('limits') != new_meta.get('limits') or spec.get('limits') is not None and \
                current in ('running', 'frozen'):
            self._plan_limits(plan, spec.get('force'))
            if plan['quota'] is not None or plan['shaping'] and current in ('running', 'frozen') or \
                    plan['limit_writes']:
                # live first, then persist: a refused write leaves config and ve.json as they were
                steps.insert(steps.index('create') + 1 if 'create' in steps else 0, 'limits')
        if plan['claims']:
            steps.insert(0, 'addresses')
        plan['steps'] = steps
        return plan

    def _rebase_info(self, meta, manifest):
        """From/to of a rebase, whether it goes back in time, and what the private area hides."""
        old_ref = meta['template']
        new_ref = '%s@%s' % (manifest['name'], manifest['version'])
        info = {'from': old_ref, 'to': new_ref, 'rollback': new_ref < old_ref,
                'hidden_files': None, 'hidden_more': 0, 'warnings': []}
        try:
            old_manifest = self.templates.manifest(*_validate.template_ref(old_ref))
            old_lowers = self.templates.lower_dirs(old_manifest)
        except VzError as exc:
            info['warnings'].append('VE %s: cannot tell which private files hide changes of %s: %s'
                                    % (meta['name'], new_ref, exc))
            return info
        upper = os.path.join(self.host.ve_dir(meta['name']), 'private', 'upper')
        info['hidden_files'], info['hidden_more'] = hidden_files(upper, old_lowers,
                                                                 self.templates.lower_dirs(manifest))
        if info['rollback']:
            info['warnings'].append('VE %s goes back from %s to the older version %s (rollback)'
                                    % (meta['name'], old_ref, new_ref))
        if info['hidden_more']:
            info['warnings'].append('VE %s: %d more private files hide changes of %s than hidden_files lists'
                                    % (meta['name'], info['hidden_more'], new_ref))
        return info

    def _label(self, plan, step):
        """The action text of one step (None: no action of its own); a configure that moves the VE to
        another version says so."""
        rebase = plan.get('rebase')
        if step == 'configure' and rebase:
            return 'rebase %s from %s to %s%s' % (plan['name'], rebase['from'], rebase['to'],
                                                  ' (rollback to an older version)' if rebase['rollback'] else '')
        if step == 'network':
            return 'network %s: %s' % (plan['name'], '; '.join(describe_live(c) for c in plan['live_net']))
        if step == 'addresses':   # part of creating a VE; on an existing one, its own action
            return None if 'create' in plan['steps'] else \
                'lease %s for %s' % (', '.join(c['address'] for c in plan['claims']), plan['name'])
        if step == 'resolver':
            return 'write /etc/resolv.conf of %s' % plan['name']
        if step == 'create' and plan.get('clone'):
            return 'clone %s from %s' % (plan['name'], plan['clone']['ref'])
        if step == 'identity':   # part of a hostname change; on its own for a VE made before it was written
            return None if 'configure' in plan['steps'] else \
                'write /etc/hostname and /etc/hosts of %s' % plan['name']
        return '%s %s' % (step, plan['name'])

    def _predict(self, plan):
        """What a check-mode run reports: the plan, with nothing done."""
        state = _final_state(plan['current'], plan['steps'])
        meta = plan['new_meta'] or plan['meta'] or {'name': plan['name']}
        return self._result(plan, meta, state, plan['pid'] if state == plan['current'] else None,
                            [label for label in (self._label(plan, step) for step in plan['steps']) if label])

    def _result(self, plan, meta, state, pid, actions, error=None):
        before = spec_view(plan['meta']) if plan['meta'] else {}
        before['state'] = plan['current']
        after = spec_view(meta) if state != 'absent' else {}
        after['state'] = state
        warnings = []
        if meta.get('privileged') and state != 'absent':
            warnings.append('VE %s is privileged: root inside it is root on the host' % plan['name'])
        if meta.get('autostart') and meta.get('network') and state != 'absent' and not os.path.exists(NET_HOOK):
            # the modules guard and shape at start themselves; lxc-autostart at boot runs only the hook
            warnings.append('VE %s starts at boot, but the network hook %s is not installed: lxc-autostart would '
                            'start it without its anti-spoofing filter and network rate; run the osvirt.vz.host '
                            'role on this host' % (plan['name'], NET_HOOK))
        writes = plan.get('limit_done')
        if writes is None:
            writes = [(p, _limits.read_file(p), v) for p, v in plan.get('limit_writes') or []]
        rebase = plan.get('rebase')
        if rebase:
            warnings += rebase['warnings']
        return {
            'rebase': {k: rebase[k] for k in ('from', 'to', 'rollback', 'hidden_files')} if rebase else None,
            've': public_view(meta, state, pid) if state != 'absent' else {'name': plan['name'], 'state': 'absent'},
            'limit_changes': [{'file': p, 'before': b, 'after': a} for p, b, a in writes],
            'changed': bool(actions),
            'actions': actions,
            'restart_required': plan['restart_required'],
            'warnings': warnings,
            'diff': {'before': before, 'after': after},
            'error': error,
        }

    def _execute(self, plan):
        name, done = plan['name'], []
        state, pid = plan['current'], plan['pid']
        created, step = False, 'prepare'
        try:
            for step in plan['steps']:
                getattr(self, '_step_' + step)(plan)
                if self._label(plan, step):
                    done.append(self._label(plan, step))
                created = created or step == 'create'
                state = _final_state(state, [step])
                if state != plan['current'] or step in ('start', 'stop', 'kill'):
                    pid = None
        except Exception as exc:  # roll back a VE this run created, then report
            message = describe_error(exc, '%s of VE %s' % (step, name))
            if plan.get('limit_done') and step != 'limits':
                # the live limits were written but not persisted: put the old values back
                _limits.undo(plan['limit_done'])
                done.append('roll back limits %s' % name)
                plan['limit_done'] = []
            if plan.get('claimed') and not created:
                try:
                    self.net.release(name, plan['claimed'])
                except VzError as exc:  # pragma: no cover - best effort, reported
                    message += '; releasing the new address leases failed too: %s' % exc
            if created:
                try:
                    self._step_destroy(plan)
                    done.append('roll back %s' % name)
                    state = 'absent'
                except Exception as rollback:  # pragma: no cover - best effort, reported
                    message += '; rolling back the new VE failed too: %s' % rollback
            else:
                if plan.get('saved'):
                    message += self._undo_configure(plan)
                state = self.client.state(name)['state'] if plan['meta'] else 'absent'
            details = getattr(exc, 'details', {}) or {}
            result = self._result(plan, plan['new_meta'] or plan['meta'] or {'name': name}, state, None, done,
                                  error=message)
            result['error_details'] = {k: v for k, v in details.items() if k in ('cmd', 'rc', 'stdout', 'stderr')}
            # what was done and then undone (live limits put back, a new VE removed) is no change
            undone = {'limits %s' % name, 'roll back limits %s' % name, 'create %s' % name, 'roll back %s' % name}
            if state == plan['current'] and set(done) <= undone and \
                    ('roll back limits %s' % name in done or 'roll back %s' % name in done):
                result['changed'] = False
            return result
        meta = plan['new_meta'] or plan['meta'] or {'name': name}
        result = self._result(plan, meta, state, pid, done)
        if self.wait_for and state == 'running':
            init = (plan.get('manifest') or {}).get('init') or {}
            boot = _boot.wait_booted(self.client, name, init.get('system'), self.wait_timeout)
            result['ve']['boot'] = boot
            result['error'] = _boot.boot_error(name, boot, self.wait_for, self.wait_timeout)
        return result

    # -- steps ----------------------------------------------------------------------------
    def _step_create(self, plan):
        """Write the VE's directory in .tmp and publish it by rename: never half-registered."""
        name, meta = plan['name'], plan['new_meta']
        config = self.desired_config(meta, plan['manifest'], create=True)
        staging = _staging.make(self.host.tmp_dir, 've-%s-' % name)
        try:
            os.chmod(staging, 0o711)
            private = os.path.join(staging, 'private')
            idmap = meta.get('idmap') or {}
            if plan.get('clone'):
                self._clone_private(plan, private, meta)
            else:
                # a btrfs subvolume where the host has quotas, so disk.space can be set at any time
                _quota.make_private_area(self.host, private, idmap.get('uid'), idmap.get('gid'))
                for path in (os.path.join(private, 'upper'), os.path.join(private, 'work')):
                    os.mkdir(path, 0o755)
                    if idmap:
                        os.chown(path, idmap['uid'], idmap['gid'])
            resolver = resolv_conf(meta.get('network'))
            if resolver is not None:
                write_inside(os.path.join(private, 'upper'), 'etc', 'resolv.conf', resolver,
                             idmap.get('uid', 0), idmap.get('gid', 0))
            meta['identity'] = meta.get('hostname') or name
            tree = VeTree(os.path.join(private, 'upper'), self.templates.lower_dirs(plan['manifest']), idmap)
            write_identity(tree, meta['identity'])
            if plan.get('clone'):   # like virt-sysprep: what identifies a machine is not copied
                reset_machine_identity(tree)
            cfg = LxcConfig()
            cfg.replace_owned(is_owned, config)
            cfg.save(os.path.join(staging, 'config'))
            write_json(os.path.join(staging, 've.json'), meta)
            os.rename(staging, self.host.ve_dir(name))
        except BaseException:
            _staging.discard(staging)
            raise
        _staging.release(staging)

    # -- clones -----------------------------------------------------------------------------
    def _clone_spec(self, spec):
        """The spec of a new VE cloned from ``clone_from`` (``<ve>`` or ``<ve>@<snapshot>``), with the source's
        settings where the task leaves them out, and the clone's source: dict(ve, snapshot, ref, meta).

        The clone runs on the source's template version (its private area was made on it), gets a new MAC
        (derived from its own name), its own hostname (its name unless given) and new addresses: the task's
        ``network``, else the source's interfaces with ``auto`` addresses from the pools.
        """
        name = spec['name']
        source, snap = parse_ref(spec['clone_from'])
        if source == name:
            raise VzError('VE %s cannot be cloned from itself' % name)
        src_meta = self.read_meta(source)
        if src_meta is None:
            raise VzError('VE %s: clone_from names VE %s, which does not exist on this host' % (name, source))
        if snap is not None:
            Snapshots(self.host, self.client).require(source, snap)
            from_snap = read_json(os.path.join(snapshot_dir(self.host, source, snap), 've.json'))
            if not isinstance(from_snap, dict):
                raise VzError('snapshot %s of VE %s has no valid ve.json' % (snap, source))
            src_meta = from_snap
        tname, tversion = _validate.template_ref(src_meta['template'])
        if spec.get('template') is not None and _validate.template_ref(spec['template'])[0] != tname:
            raise VzError('VE %s: clone_from %s is built on template %s, not %s'
                          % (name, spec['clone_from'], tname, spec['template']))
        if spec.get('rebase'):
            raise VzError('VE %s: a clone runs on the template version of its source; rebase it afterwards' % name)
        if spec.get('privileged') is not None and bool(spec['privileged']) != bool(src_meta.get('privileged')):
            raise VzError('VE %s: a clone is privileged exactly when its source %s is (its files are owned by the '
                          'same ids)' % (name, source))
        new = dict(spec, template='%s@%s' % (tname, tversion), privileged=bool(src_meta.get('privileged')))
        for key in ('autostart', 'mounts', 'ttys', 'console', 'owner'):
            if new.get(key) is None and src_meta.get(key) is not None:
                new[key] = src_meta[key]
        if new.get('network') is None:
            new['network'] = [_clone_interface(iface) for iface in src_meta.get('network') or []]
        return new, {'ve': source, 'snapshot': snap, 'meta': src_meta, 'ref': spec['clone_from']}

    def restored_meta(self, name, saved, network=None):
        """Metadata of VE ``name`` restored from another VE's backup (``saved``: its ve.json): its settings,
        with its own MAC and hostname, and the addresses of ``network`` (else the saved interfaces with
        ``auto`` addresses). Nothing is leased here."""
        spec = {'name': name, 'template': saved['template'], 'hostname': None, 'autostart': False,
                'privileged': bool(saved.get('privileged')),
                'network': network if network is not None else [_clone_interface(i) for i in saved.get('network') or []]}
        for key in ('mounts', 'ttys', 'console', 'owner'):
            spec[key] = saved.get(key)
        new_meta, _manifest = self.desired_meta(spec, None)
        new_meta['limits'] = saved.get('limits') or {}
        new_meta['identity'] = name
        self.net.plan_addresses(name, None, new_meta)
        return new_meta

    def _clone_private(self, plan, private, meta):
        """The clone's private area ``private``: a writable copy (btrfs: snapshot) of the source's, taken
        from its snapshot, or from the VE itself (frozen for the instant when it runs)."""
        clone = plan['clone']
        snaps = Snapshots(self.host, self.client, stop_timeout=self.stop_timeout)
        if clone['snapshot']:
            snaps.build_private(os.path.join(snapshot_dir(self.host, clone['ve'], clone['snapshot']), 'private'),
                                private, meta)
            return
        if self.client.state(clone['ve'])['state'] in ('running', 'frozen'):
            work = _staging.make(self.host.tmp_dir, 'clone-%s-' % plan['name'])
            try:
                snaps.take(clone['ve'], 'clone', os.path.join(work, 'source'))
                snaps.build_private(os.path.join(work, 'source', 'private'), private, meta)
            finally:
                _staging.discard(work)
        else:
            snaps.build_private(os.path.join(self.host.ve_dir(clone['ve']), 'private'), private, meta)

    def _step_configure(self, plan):
        name = plan['name']
        directory = self.host.ve_dir(name)
        if plan['current'] in ('running', 'frozen') and plan.get('disk_digest'):
            # the VE keeps running what it was started with: remember that before the file changes
            on_disk = self.config_on_disk(name)
            self.record_running(name, plan['pid'], self.running_digest(name, plan['pid'], on_disk))
        config = self.desired_config(plan['new_meta'], plan['manifest'], create=True)
        if plan.get('rebase'):  # what _undo_configure puts back if the VE fails on the new version
            plan['saved'] = {f: _read_bytes(os.path.join(directory, f)) for f in ('config', 've.json')}
        self.write_registration(name, plan['new_meta'], config)
        if plan.get('release'):
            self.net.release(name, plan['release'])

    def _step_addresses(self, plan):
        """Lease the VE's new addresses (a predicted `auto` address taken meanwhile is replaced)."""
        self.net.claim(plan['name'], plan['claims'], plan['new_meta']['network'], plan.setdefault('claimed', []))

    def _step_network(self, plan):
        """Change addresses and gateways of a running VE's interfaces live (put back on failure)."""
        self.net.apply_live(plan['pid'], plan['live_net'], plan['meta']['network'])

    def _step_resolver(self, plan):
        """Write the VE's /etc/resolv.conf: inside a running VE through /proc/<pid>/root, else into its
        private area; never following a link the VE made, as the VE's root user."""
        name, meta = plan['name'], plan['new_meta']
        now = self.client.state(name)
        if now['state'] in ('running', 'frozen') and now['pid']:
            root = '/proc/%d/root' % now['pid']
        else:
            root = os.path.join(self.host.ve_dir(name), 'private', 'upper')
        self.net.write_resolver(root, meta['network'], meta.get('idmap'))

    def _step_identity(self, plan):
        """Write the VE's /etc/hostname and its 127.0.1.1 line of /etc/hosts (keeping its other lines),
        then record in ve.json which hostname they hold."""
        name, meta = plan['name'], plan['new_meta']
        hostname = meta.get('hostname') or name
        self.write_identity(name, meta, plan['manifest'], hostname)
        plan['new_meta'] = dict(meta, identity=hostname)

    def write_identity(self, name, meta, manifest, hostname):
        """/etc/hostname and /etc/hosts of VE ``name`` (running or stopped) say ``hostname``; ve.json records it."""
        now = self.client.state(name)
        running = now['state'] in ('running', 'frozen') and now['pid']
        tree = VeTree.of(self.host.ve_dir(name), now['pid'] if running else None,
                         self.templates.lower_dirs(manifest), meta.get('idmap'))
        write_identity(tree, hostname)
        on_disk = self.read_meta(name)
        write_json(os.path.join(self.host.ve_dir(name), 've.json'), dict(on_disk, identity=hostname))

    def _step_limits(self, plan):
        """Apply changed limits: live cgroup writes (running VE), disk quota, network shaping."""
        name, meta = plan['name'], plan['new_meta']
        limits = meta.get('limits') or {}
        running = plan['current'] in ('running', 'frozen')
        plan['limit_done'] = _limits.apply_live(plan['limit_writes']) if plan['limit_writes'] else []
        if plan['quota'] is not None:
            try:
                _quota.apply_quota(self.host, meta, plan['quota'][0], plan['quota'][1], running,
                                   plan['spec'].get('force'))
            except Exception:
                _limits.undo(plan['limit_done'])
                plan['limit_done'] = []
                raise
        if running and plan['shaping']:
            self.net.shape(meta)

    def _undo_configure(self, plan):
        """Put a rebased VE's config and metadata back and start it again if it ran; returns a note."""
        name, directory = plan['name'], self.host.ve_dir(plan['name'])
        try:
            for filename, data in plan['saved'].items():
                atomic_write(os.path.join(directory, filename), data)
            if plan['current'] in ('running', 'frozen') and self.client.state(name)['state'] == 'stopped':
                for attempt in range(5):  # the failed start's monitor may still be leaving its cgroup
                    time.sleep(0.5 * (attempt + 1))
                    try:
                        self._step_start(dict(plan, manifest=None, new_meta=plan['meta']))
                        break
                    except VzError:
                        if attempt == 4:
                            raise
                if plan['current'] == 'frozen':
                    self.client.freeze(name)
                self.record_running(name, self.client.state(name)['pid'], config_digest(
                    self.config_on_disk(name)))
        except Exception as exc:  # pragma: no cover - best effort, reported
            return '; putting %s back failed too: %s' % (plan['meta']['template'], exc)
        return '; VE %s is back on %s as it was' % (name, plan['meta']['template'])

    def _step_start(self, plan):
        self.start(plan['name'], plan['new_meta'] or plan['meta'], plan['manifest'])

    def _step_stop(self, plan):
        self.stop(plan['name'])

    def _step_kill(self, plan):
        self.kill(plan['name'])

    def _step_freeze(self, plan):
        self.freeze(plan['name'])

    def _step_unfreeze(self, plan):
        self.unfreeze(plan['name'])

    def _step_destroy(self, plan):
        """Remove the VE: rename its directory away first (atomic), then delete it without following links."""
        self.unregister(plan['name'], plan['meta'] or plan['new_meta'] or {})

    # -- info -----------------------------------------------------------------------------
    def info(self, names=None, states=None, usage=True):
        """Every VE (or those named / in ``states``) with state, template, ips, pid, usage."""
        listed = self.states()
        wanted = set(names) if names else None
        result = []
        for name in self.names():
            if wanted is not None and name not in wanted:
                continue
            meta = self.read_meta(name, broken_ok=True)
            entry = listed.get(name) or {'state': 'stopped', 'pid': None}
            if states and entry['state'] not in states:
                continue
            broken = meta.get('broken') or self._config_broken(name)
            if broken:
                result.append(dict(public_view({'name': name}, entry['state'], entry['pid']), broken=broken))
                continue
            view = public_view(meta, entry['state'], entry['pid'])
            view['restart_required'] = False
            if entry['state'] in ('running', 'frozen'):
                try:
                    on_disk = self.config_on_disk(name)
                except OSError:
                    on_disk = []
                view['restart_required'] = self.running_digest(name, entry['pid'], on_disk) != config_digest(on_disk)
            tname, _sep, version = (meta.get('template') or '').partition('@')
            view.update({'template_name': tname, 'template_version': version or None,
                         'layers': meta.get('layers') or [], 'network': meta.get('network') or [],
                         'mounts': meta.get('mounts') or [], 'cgroup_parent': meta.get('cgroup_parent')})
            view['interfaces'] = self.net.interfaces(meta, entry['pid'] if entry['state'] in ('running', 'frozen')
                                                     else None)
            if usage:
                view['memory_bytes'] = (self.cgroups.memory_usage(meta.get('cgroup_parent') or
                                                                  self.host.cgroup_parent, name)
                                        if entry['state'] in ('running', 'frozen') else 0)
                view['private_bytes'] = disk_usage(os.path.join(self.host.ve_dir(name), 'private'))
                view['usage'] = self.accounting(meta, entry['state'])
            # snapshots take space of their own: listed with their size, never counted silently
            view['snapshots'] = list_snapshots(self.host, name, sizes=usage)
            result.append(view)
        return result

    def _config_broken(self, name):
        """Why a VE's LXC config is unusable (missing, or empty: cut short), or None."""
        path = os.path.join(self.host.ve_dir(name), 'config')
        try:
            if os.path.getsize(path) > 0:
                return None
        except OSError:
            return 'VE %s is broken: its LXC config %s is missing (state: absent still removes it)' % (name, path)
        return ('VE %s is broken: its LXC config %s is empty (cut short by a full disk or a crash); a run with its '
                'state writes it again, state: absent removes the VE' % (name, path))

    def accounting(self, meta, state):
        """Use against each limit and limit hits of a VE: memory, numproc, cpu (running VEs), disk, net."""
        name, limits = meta['name'], meta.get('limits') or {}
        running = state in ('running', 'frozen')
        use = _limits.usage(self.cgroups, meta.get('cgroup_parent') or self.host.cgroup_parent, name, limits) \
            if running else {}
        disk = _quota.quota_usage(self.host, meta)
        use['disk'] = dict(disk, space_limit=disk.get('space_limit') or _limits.get(limits, 'disk', 'space'))
        net = self.net.counters(meta) if running and meta.get('network') else {'rx_bytes': None, 'tx_bytes': None}
        use['net'] = dict(net, rate=_limits.get(limits, 'net', 'rate'), ceil=_limits.get(limits, 'net', 'ceil'))
        return use


def describe_error(exc, what):
    """One readable sentence for an exception raised while doing ``what``."""
    if isinstance(exc, VzError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return '%s failed: %s%s' % (what, exc.strerror, (' (%s)' % exc.filename) if exc.filename else '')
    return '%s failed: %s' % (what, exc)


def _final_state(state, steps):
    after = {'create': 'stopped', 'start': 'running', 'stop': 'stopped', 'kill': 'stopped', 'freeze': 'frozen',
             'unfreeze': 'running', 'destroy': 'absent'}
    for step in steps:
        state = after.get(step, state)
    return state


def _clone_interface(iface):
    """A source's interface as a clone asks for it: same network, new (pool) addresses, MAC from the new name."""
    item = {k: iface[k] for k in ('name', 'mode', 'bridge', 'mtu', 'nameservers', 'searchdomains')
            if iface.get(k) is not None}
    if iface.get('mode') == 'routed':
        item.pop('bridge', None)
    for key, auto in (('ipv4', 'auto4'), ('ipv6', 'auto6')):
        if iface.get(key) or iface.get(auto):
            item[key] = ['auto']
    return item


def _read_bytes(path):
    with open(path, 'rb') as handle:
        return handle.read()
