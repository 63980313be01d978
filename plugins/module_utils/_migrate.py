# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a VE to another host: preflight, copy, commit, rollback (the source's side).

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The protocol (docs/migration.md): preflight on both hosts (nothing changes) -> the VE's lock on
both -> missing template versions pushed and verified -> copy (pre-copy rounds while the VE runs
for warm) -> freeze (warm) or stop (offline) -> final copy -> the target registers and starts
its copy -> **commit** (the target's journal says it owns the VE) -> the source is fenced
(autostart off, config renamed) and removed or kept as ``<name>.migrated``. Each step is a
``Step`` with ``do`` and ``undo``; the journal (``_migrate_journal``) is written before each
step, so a rerun after a crash completes a committed migration or rolls back one that is not.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time

from . import _criu, _validate
from ._errors import VzError
from ._fs import disk_usage, remove_tree, sync_filesystem
from ._locks import Lock
from ._migrate_agent import IDLE, Channel, MigrationOps, _run
from ._migrate_journal import MAX_ROUNDS, MODES, ROUND_THRESHOLD, Journal, downtime, next_round, plan_steps, \
    resumable_copy, resume_action

# What of a VE's directory goes to the target: its config, metadata and private upper layer (the
# overlay's work directory is made anew there; logs and the running record stay behind).
COPY_FILTERS = ('+ /config', '+ /ve.json', '+ /private/', '+ /private/upper/***', '+ /private/checkpoint/***', '- *')
MIGRATED_SUFFIX = '.migrated'
FENCED_CONFIG = 'config.migrated'


class Step:
    """One step of a migration: ``do`` it; ``undo`` puts back what it changed (None: nothing to undo)."""

    def __init__(self, name, do, undo=None):
        self.name, self.do, self.undo = name, do, undo


# Fault injection for tests and drills: "<step>:kill" (SIGKILL this process as the step begins) or
# "<step>:fail" (the step fails) or "<step>:sleep:<seconds>"; read from the module's environment.
FAULT_ENV = 'OSVIRT_VZ_MIGRATE_FAULT'


def _fault(step):
    spec = os.environ.get(FAULT_ENV) or ''
    where, _sep, action = spec.partition(':')
    if where != step:
        return
    if action == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == 'fail':
        raise VzError('injected fault before step %s (%s)' % (step, FAULT_ENV))
    elif action.startswith('sleep:'):
        time.sleep(float(action.partition(':')[2]))


class Guardian:
    """A child process that undoes an unfinished migration if this process dies before it ends.

    The module can be killed (SIGKILL, OOM, a lost controller): then nothing of it runs again, yet
    the source must be left as it was. The guardian waits on a pipe; a clean end of the migration
    writes to it; end of file without that means the module died, and the guardian runs what a
    rerun would (``Migration.recover``): complete a committed migration, or roll back one that was
    not (after the target's agent fenced its copy). It inherits the VE's lock, so no other
    operation interleaves, and leaves the module's stdout alone (the controller waits for it).
    """

    def __init__(self, migration):
        self.pid = None
        read_end, self._write = os.pipe()
        pid = os.fork()
        if pid == 0:   # the guardian
            try:
                os.close(self._write)
                channel = migration.channel
                for stream in (channel.proc.stdin, channel.proc.stdout, channel.proc.stderr) if channel else ():
                    try:   # the agent must see end of file when this process's parent dies
                        os.close(stream.fileno())
                    except (OSError, ValueError):
                        pass
                migration.channel = None
                os.environ.pop(FAULT_ENV, None)   # an injected fault is for the module, not for its recovery
                os.setsid()
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                word = os.read(read_end, 16)
                if not word:
                    migration.recover()
            finally:
                os._exit(0)  # pylint: disable=protected-access
        os.close(read_end)
        self.pid = pid

    def dismiss(self):
        """The migration ended in this process (done or rolled back): the guardian leaves."""
        if self.pid is None:
            return
        try:
            os.write(self._write, b'done')
            os.close(self._write)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        self.pid = None


class Migration:
    """One VE's move from this host to ``remote`` (an ``_rsync.Remote``)."""

    def __init__(self, host, name, remote, mode=None, keep_source=False, keep_target=False, copy_template=True,
                 timeout=None, fallback='fail', rounds=MAX_ROUNDS, threshold=ROUND_THRESHOLD, check_mode=False,
                 python='python3', lock_timeout=0, target_label=None, stop_timeout=30):
        self.host = host
        self.name = _validate.ve_name(name)
        self.remote = remote
        self.mode = mode
        if mode is not None and mode not in MODES:
            raise VzError('invalid mode %r: use one of %s' % (mode, ', '.join(MODES)))
        if fallback not in ('warm', 'fail'):
            raise VzError('invalid fallback %r: use warm or fail' % (fallback,))
        self.keep_source, self.keep_target, self.copy_template = keep_source, keep_target, copy_template
        self.timeout, self.fallback = timeout, fallback
        self.rounds, self.threshold = max(1, int(rounds)), int(threshold)
        self.check_mode = check_mode
        self.python = python
        self.lock_timeout = lock_timeout
        self.where = target_label or remote.host
        self.ops = MigrationOps(host, stop_timeout=stop_timeout)
        self.journal = Journal(host.vz_root, self.name)
        self.channel = None
        self.timings, self.rounds_done, self.actions, self.recovered = {}, [], [], []
        self.bytes_moved = 0
        self._t0 = time.monotonic()
        self._deadline = self._t0 + timeout if timeout else None

    # -- the whole job --------------------------------------------------------------------
    def run(self):
        """Migrate (or finish or roll back an unfinished migration, then migrate). Returns the result dict."""
        lock = None
        control = tempfile.mkdtemp(prefix='osvirt-ssh-')
        self.remote.control_path = os.path.join(control, 'cm')
        try:
            if not self.check_mode:
                self.host.ensure_layout()
            if not self.check_mode or os.path.isdir(self.host.locks_dir):
                lock = Lock(self.host.locks_dir, 've', self.name, 'osvirt.vz.ve_migrate %s to %s'
                            % (self.name, self.where), self.lock_timeout).acquire()
            started = time.monotonic()
            self.channel = self._connect()
            hello = self._hello(self.channel)
            self.timings['connect'] = round(time.monotonic() - started, 3)
            if resumable_copy(self.journal.data if self.journal.exists else None, hello['journal']):
                self.recovered.append('target: copying onto the files an earlier try kept (keep_target)')
            elif self.journal.exists or hello['journal']:
                if self.check_mode:
                    return self._result(True, 'unfinished', plan=['resume the unfinished migration'])
                outcome = self._resume(hello)
                if outcome == 'complete':
                    return self._result(True, 'target')
                hello = (self.channel or self._reconnect()).call('hello_again')
            meta = self.ops.meta(self.name)
            if meta is None:
                if hello['meta'] is not None:
                    return self._result(False, 'target', target_state=hello['state'])
                raise VzError('VE %s does not exist on this host (%s) nor on %s'
                              % (self.name, self.host.ves_dir, self.where))
            if hello['meta'] is not None and not hello['journal']:
                raise VzError('VE %s exists on this host and on %s: refusing to migrate (remove one copy first)'
                              % (self.name, self.where))
            return self._migrate(meta)
        finally:
            if self.channel is not None:
                self.channel.close()
            if self.remote.control_path:
                remove_tree(os.path.dirname(self.remote.control_path))
            if lock is not None:
                lock.release()
            self.remote.control_path = None
            remove_tree(control)

    def _connect(self):
        return Channel(self.remote, python=self.python, idle=IDLE)

    def _hello(self, channel):
        try:
            return channel.call('hello', ve=self.name, operation='osvirt.vz.ve_migrate %s from %s'
                                % (self.name, os.uname().nodename), lock_timeout=self.lock_timeout,
                                keep_target=self.keep_target, check_mode=self.check_mode)
        except VzError as exc:
            if exc.details.get('lost_target'):
                raise VzError('VE %s cannot move to %s: the target is not reachable over SSH as %s: %s'
                              % (self.name, self.where, self.remote, exc), lost_target=True)
            if exc.details.get('busy'):
                raise VzError('VE %s is busy on %s: %s' % (self.name, self.where, exc), busy=True)
            raise

    def _reconnect(self):
        """A new connection after a lost one; the old agent fences and leaves the lock within IDLE s."""
        if self.channel is not None:
            self.channel.close(clean=False)
        self.channel = None
        channel = self._connect()
        saved, self.lock_timeout = self.lock_timeout, IDLE + 10
        try:
            self._hello(channel)
        finally:
            self.lock_timeout = saved
        self.channel = channel
        return channel

    # -- preflight and plan -----------------------------------------------------------------
    def preflight(self, meta, state):
        """Every reason the move cannot go ahead, from both hosts; returns (mode, missing templates)."""
        started = time.monotonic()
        running = state in ('running', 'frozen')
        mode = self.mode or ('warm' if running else 'offline')
        problems, notes = [], []
        if mode == 'live' and not running:
            mode = 'offline'
            notes.append('VE %s is stopped: nothing to checkpoint, moved offline' % self.name)
        if mode == 'live':
            why = self._live_blockers(meta)
            if why:
                if self.fallback == 'warm':
                    notes.append('VE %s cannot move live to %s (%s): moved warm instead' % (self.name, self.where, why))
                    mode = 'warm'
                else:
                    problems.append('VE %s cannot move live to %s: %s (fallback: warm would move it with a restart)'
                                    % (self.name, self.where, why))
        private = disk_usage(os.path.join(self.host.ve_dir(self.name), 'private'))
        layers = list(reversed(meta.get('layers') or [meta['template']]))   # parents first
        store = self.ops.templates
        template_bytes = sum(disk_usage(os.path.join(store.version_dir(*_validate.template_ref(ref)), 'rootfs'))
                             for ref in layers)
        answer = self.channel.call('preflight', meta=meta, private_bytes=private, template_bytes=template_bytes,
                                   where=self.where)
        problems += answer['problems']
        missing = [ref for ref in layers if ref in answer['missing_templates']]
        if missing and not self.copy_template:
            problems.append('VE %s cannot move to %s: template %s is not there and copy_template is false'
                            % (self.name, self.where, ', '.join(missing)))
        if problems:
            raise VzError('; '.join(problems), problems=len(problems))
        self.timings['preflight'] = round(time.monotonic() - started, 3)
        self.notes = notes
        return mode, missing, private

    def _live_blockers(self, meta):
        here, there = _criu.probe(_run), self.channel.call('criu')
        for side, probe in (('this host', here), (self.where, there)):
            if not probe.get('check_ok'):
                return 'CRIU on %s: %s' % (side, probe.get('reason') or 'criu check fails')
        ok, reasons = _criu.compatible(here, there)
        if not ok:
            return '; '.join(reasons)
        from ._engine.config import LxcConfig  # pylint: disable=import-outside-toplevel
        blockers = list(_criu.dump_blockers(LxcConfig.load(os.path.join(self.host.ve_dir(self.name), 'config')),
                                            self.host))
        pid = self.ops.state(self.name)['pid']
        if pid and hasattr(_criu, 'process_blockers'):
            blockers += _criu.process_blockers(pid) + _criu.mount_blockers(pid)
        return '; '.join(blockers) if blockers else None

    # -- doing it -------------------------------------------------------------------------
    def _migrate(self, meta):
        state = self.ops.state(self.name)['state']
        mode, missing, private = self.preflight(meta, state)
        running = state in ('running', 'frozen')
        plan = plan_steps(mode, running, bool(missing), self.keep_source)
        self.mode_used = mode
        if self.check_mode:
            return self._result(True, 'source', plan=plan, state=state, private_bytes=private)
        self.journal.start(role='source', target=self.where, mode=mode, state=state, autostart=bool(meta.get('autostart')),
                           keep_source=self.keep_source, keep_target=self.keep_target, pid=os.getpid())
        steps = self._steps(plan, meta, missing, mode)
        done = []
        step = None
        guardian = Guardian(self)
        try:
            for step in steps:
                if step.name == 'commit':
                    break
                self._check_deadline(step.name)
                self._do(step)
                done.append(step)
        except BaseException as exc:
            message = str(exc) if isinstance(exc, VzError) else '%s of VE %s failed: %r' % (step.name, self.name, exc)
            rolled = self._rollback(done + [step])
            guardian.dismiss()
            raise VzError('VE %s was not moved to %s: %s; rolled back: %s' % (
                self.name, self.where, message, ', '.join(rolled) or 'nothing to undo'), rolled_back=True)
        # the commit: from here on only completion
        try:
            for step in steps[steps.index(next(s for s in steps if s.name == 'commit')):]:
                self._do(step)
        finally:
            guardian.dismiss()
        return self._result(True, 'target', plan=plan, state=state, private_bytes=private)

    def _do(self, step):
        started = time.monotonic()
        self.journal.begin(step.name)
        _fault(step.name)
        step.do()
        self.journal.end(step.name)
        self.timings[step.name] = round(time.monotonic() - started, 3)
        self.actions.append(step.name)

    def _check_deadline(self, what):
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise VzError('the migration took longer than timeout (%ss) before %s' % (self.timeout, what))

    def _steps(self, plan, meta, missing, mode):
        name = self.name
        table = {
            'template': Step('template', lambda: self._copy_templates(missing)),
            'precopy': Step('precopy', lambda: self._precopy(meta)),
            'freeze': Step('freeze', self._freeze, self._unfreeze),
            'checkpoint': Step('checkpoint', self._checkpoint, self._restart_source),
            'final_sync': Step('final_sync', lambda: self._final_sync(meta)),
            'stop': Step('stop', lambda: self._stop(mode), self._restart_source),
            'register': Step('register', lambda: self.channel.call('register', autostart=bool(meta.get('autostart')))),
            'start': Step('start', self._start_target),
            'restore': Step('restore', self._restore_target),
            'commit': Step('commit', self._commit),
            'fence': Step('fence', self._fence),
            'remove': Step('remove', lambda: self.ops.remove(name) if self.ops.meta(name) else None),
            'keep': Step('keep', self._keep),
            'finish': Step('finish', self._finish),
        }
        return [table[s] for s in plan]

    def _push(self, src, dest, what):
        started = time.monotonic()
        stats = self.remote.push(src, dest, what, filters=COPY_FILTERS if src == self.host.ve_dir(self.name) else
                                 ('- /idmap/',), timeout=max(30, int(self.timeout or 0)))
        self.bytes_moved += stats['sent']
        return stats, round(time.monotonic() - started, 3)

    def _copy_templates(self, missing):
        store = self.ops.templates
        for ref in missing:
            tname, tversion = _validate.template_ref(ref)
            staging = self.channel.call('template_staging', name=tname, version=tversion)
            self._push(store.version_dir(tname, tversion), staging, 'copying template %s to %s' % (ref, self.where))
            self.channel.call('publish_template', name=tname, version=tversion, staging=staging,
                              origin=os.uname().nodename)

    def _stage(self, meta):
        if not getattr(self, '_incoming', None):
            self._incoming = self.channel.call('stage', meta=meta, source=os.uname().nodename)
        return self._incoming

    def _precopy(self, meta):
        """Copy rounds while the VE runs, until a round moves little (``next_round``)."""
        incoming = self._stage(meta)
        moved = []
        while next_round(moved, self.threshold, self.rounds):
            self._check_deadline('pre-copy round %d' % (len(moved) + 1))
            stats, seconds = self._push(self.host.ve_dir(self.name), incoming, 'pre-copy of VE %s to %s'
                                        % (self.name, self.where))
            moved.append(stats['files'])
            self.rounds_done.append({'round': len(moved), 'bytes': stats['files'], 'sent': stats['sent'],
                                     'seconds': seconds})
        # both sides write back what the rounds dirtied while the VE still runs (see sync_filesystem)
        started = time.monotonic()
        self.channel.call('flush')
        sync_filesystem(self.host.ve_dir(self.name))
        self.timings['flush'] = round(time.monotonic() - started, 3)
        self.channel.call('prepare')

    def _final_sync(self, meta):
        incoming = self._stage(meta)
        stats, seconds = self._push(self.host.ve_dir(self.name), incoming, 'final copy of VE %s to %s'
                                    % (self.name, self.where))
        self.rounds_done.append({'round': 'final', 'bytes': stats['files'], 'sent': stats['sent'], 'seconds': seconds})
        self.channel.call('prepare')

    def _freeze(self):
        self.timings['freeze_at'] = time.monotonic()
        self.ops.freeze(self.name)

    def _unfreeze(self):
        self.ops.unfreeze(self.name)

    def _stop(self, mode):
        """Stop the source (a frozen VE is killed: its files are the copy); autostart off until the end."""
        if mode == 'offline':
            self.timings['stop_at'] = time.monotonic()
        self.ops.set_autostart(self.name, False)
        self.ops.stop(self.name, kill=mode != 'offline')

    def _checkpoint(self):
        images = os.path.join(self.host.ve_dir(self.name), 'private', 'checkpoint')
        remove_tree(images)
        self.timings['checkpoint_at'] = time.monotonic()
        self.ops.set_autostart(self.name, False)
        _criu.checkpoint(_run, self.host.ves_dir, self.name, images, stop=True)

    def _restart_source(self):
        """Undo of stop/checkpoint: the source runs again as it did, with its autostart."""
        data = self.journal.data or {}
        if self.ops.meta(self.name) is None:
            return
        self.ops.set_autostart(self.name, bool(data.get('autostart')))
        now = self.ops.state(self.name)['state']
        images = os.path.join(self.host.ve_dir(self.name), 'private', 'checkpoint')
        if data.get('state') in ('running', 'frozen') and now == 'stopped' and \
                os.path.exists(os.path.join(images, 'inventory.img')) and self._restore_here(images):
            pass   # a live migration's checkpoint: the processes go on where they were
        elif data.get('state') in ('running', 'frozen') and now == 'stopped':
            self.ops.start(self.name)
            if data.get('state') == 'frozen':
                self.ops.freeze(self.name)
        elif data.get('state') == 'running' and now == 'frozen':
            self.ops.unfreeze(self.name)
        if os.path.isdir(images):
            remove_tree(images)

    def _restore_here(self, images):
        """Undo of a checkpoint: restore the VE from its own dump on this host (True when it worked)."""
        try:
            _criu.restore(_run, self.host.ves_dir, self.name, images)
            self.ops.after_start(self.name)
            return True
        except (VzError, OSError):
            return False

    def _start_target(self):
        self.channel.call('start')
        self.timings['running_at'] = time.monotonic()
        self.announced = self.channel.call('announce')

    def _restore_target(self):
        self.channel.call('restore')
        self.timings['running_at'] = time.monotonic()
        self.announced = self.channel.call('announce')

    def _commit(self):
        started = time.monotonic()
        self.channel.call('commit')
        self.journal.update(committed=True)
        self.timings['commit'] = round(time.monotonic() - started, 3)

    def _fence(self):
        """The source never starts again: autostart off, config renamed (lxc-start, lxc-autostart find none)."""
        directory = self.host.ve_dir(self.name)
        if not os.path.isdir(directory):
            return
        config = os.path.join(directory, 'config')
        if os.path.exists(config):
            self.ops.set_autostart(self.name, False)
            os.rename(config, os.path.join(directory, FENCED_CONFIG))
        # the VE keeps its addresses on the shared segment: reserved here before the leases go
        self.ops.reserve_moved(self.name, self.where)
        self.ops.release(self.name)

    def _keep(self):
        directory = self.host.ve_dir(self.name)
        if os.path.isdir(directory):
            kept = directory + MIGRATED_SUFFIX
            if os.path.lexists(kept):
                remove_tree(kept)
            os.rename(directory, kept)

    def _finish(self):
        if self.channel is not None:
            self.channel.call('finish')
        self.journal.remove()

    # -- failures and reruns ------------------------------------------------------------------
    def recover(self):
        """What a rerun does first, run by the guardian after the module died (no result to report)."""
        self.journal = Journal(self.host.vz_root, self.name)
        self.channel = None
        try:
            if not self.journal.exists:
                return
            try:
                self._reconnect()
            except VzError:
                self.channel = None
            hello = {'journal': 'unreachable'} if self.channel is None else self.channel.call('hello_again')
            self._resume(hello)
        except Exception:   # pylint: disable=broad-except  # the journal stays; the next run decides
            pass
        finally:
            if self.channel is not None:
                self.channel.close()
            if self.remote.control_path:   # the dead module's SSH control socket directory
                remove_tree(os.path.dirname(self.remote.control_path))

    def _rollback(self, steps):
        """Before the commit: remove the target's copy, then put the source back as it was."""
        rolled = []
        try:
            rolled += self._abort_target()
        except VzError as exc:
            rolled.append('the target keeps a copy to clean up (%s): the next run removes it' % exc)
            if self.channel is not None:
                wait = self.channel.fenced_by() - time.monotonic()
                if wait > 0:   # the agent fences its uncommitted copy by then: never two running copies
                    time.sleep(wait)
        for step in reversed([s for s in steps if s is not None]):
            if step.undo is not None:
                try:
                    step.undo()
                    rolled.append('undo %s' % step.name)
                except Exception as exc:   # pylint: disable=broad-except  # reported, the rest is still undone
                    rolled.append('undo %s failed: %s' % (step.name, exc))
        self._restart_source()
        if not any('keeps a copy' in r for r in rolled):
            self.journal.remove()
        else:
            self.journal.update(doing=None, rolled_back=True)
        return rolled

    def _abort_target(self):
        channel = self.channel
        try:
            return channel.call('abort') if channel is not None else self._reconnect().call('abort')
        except VzError as exc:
            if not exc.details.get('lost_target'):
                raise
        return self._reconnect().call('abort')

    def _resume(self, hello):
        """A rerun: finish a committed migration, or roll back one that is not committed."""
        source = self.journal.data
        action = resume_action(source, hello['journal'])
        if action == 'complete':
            self.recovered.append('the migration to %s was committed: completing it' % self.where)
            keep = (source or {}).get('keep_source', self.keep_source)
            self.journal.data = self.journal.data or {'ve': self.name, 'done': [], 'doing': None}
            for step in ('fence', 'keep' if keep else 'remove', 'finish'):
                self._do(self._steps([step], None, [], None)[0])
            return 'complete'
        if action == 'unknown':
            raise VzError('VE %s: an earlier migration to %s was committing when it stopped and %s cannot say '
                          'whether it committed; the source stays stopped: rerun when %s is reachable'
                          % (self.name, self.where, self.where, self.where))
        if self.channel is not None:
            rolled = self.channel.call('abort', keep=bool((source or {}).get('keep_target', self.keep_target)))
            self.recovered += ['target: %s' % r for r in rolled]
        else:   # the target's agent fenced its copy IDLE seconds after it last heard from the source
            wait = (source or {}).get('updated', 0) + IDLE + 3 - time.time()
            if wait > 0:
                time.sleep(wait)
            self.recovered.append('target: not reachable; its agent removed an uncommitted copy by itself')
        if source is not None:
            self._restart_source()
            self.recovered.append('source: VE %s is %s again' % (self.name, self.ops.state(self.name)['state']))
            self.journal.remove()
        return 'rollback'

    # -- report ---------------------------------------------------------------------------
    def _result(self, changed, where, plan=None, state=None, private_bytes=None, target_state=None):
        stages = {k: v for k, v in self.timings.items() if not k.endswith('_at')}
        mode = getattr(self, 'mode_used', self.mode)
        stages['total'] = round(time.monotonic() - self._t0, 3)
        before = {'host': os.uname().nodename if where != 'target' or changed else self.where}
        return {
            'changed': changed,
            've': self.name,
            'target': self.where,
            'mode': mode,
            'where': where,
            'plan': plan or [],
            'actions': self.actions,
            'state': state or target_state,
            'stages': stages,
            'rounds': self.rounds_done,
            'bytes_moved': self.bytes_moved,
            'private_bytes': private_bytes,
            'downtime': downtime(self.timings, mode) if mode else None,
            'recovered': self.recovered,
            'announced': getattr(self, 'announced', []),
            'warnings': getattr(self, 'notes', []),
            'diff': {'before': {'ve': self.name, 'host': before['host']},
                     'after': {'ve': self.name, 'host': self.where if changed or where == 'target' else before['host']}},
        }
