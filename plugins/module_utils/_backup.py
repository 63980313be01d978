# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups of VEs in a restic repository: make, list, restore, remove, prune, verify.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

restic (Debian's package) is the engine: it chunks, deduplicates, encrypts and checks; every
backup after the first of a VE reads only the files that changed. What a backup of VE ``x`` holds
is one restic snapshot of the fixed staging path ``<vz_root>/backups/stage/x`` (a fixed path, so
restic finds the previous backup and skips unchanged files)::

    meta/backup.json   ve, created, mode, template name@version and its checksum, limits, network
    meta/config        the VE's LXC config
    meta/ve.json       its metadata
    private/upper/     its private area

tagged ``osvirt-ve``, ``ve=x`` and ``backup=<name>`` (``protected`` for backups retention keeps).
A template version a backup needs is stored once per repository, as a snapshot tagged
``osvirt-template`` and ``template=<name>@<version>`` of ``templates/<name>/<version>`` (rootfs and
manifest), so a host that never had it can restore the VE.

The staging path's ``private`` is, by mode: ``snapshot`` a read-only btrfs snapshot of the VE's
private area (the VE is frozen for the instant); ``suspend`` a bind mount of the private area: a
first pass reads it while the VE runs, then the VE is frozen and a second pass (parent: the first)
reads what changed since, then it is thawed and the first pass forgotten; ``stop`` the VE is
stopped for the backup and started again.

The repository password goes to restic in its environment (RESTIC_PASSWORD), never in argv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from . import _quota, _staging, _validate
from ._errors import VzError
from ._fs import make_dirs, read_json, remove_tree, write_json
from ._locks import Lock
from ._snapshot import Snapshots, snapshot_name
from ._ve_identity import VeTree, write_identity
from ._ve_net import addresses_of, host_link_name
from ._ve_ops import VeOps

MODES = ('snapshot', 'suspend', 'stop')
KEEP_RULES = ('keep_last', 'keep_daily', 'keep_weekly', 'keep_monthly')
# restic's exit code for a snapshot made without some files it could not read
INCOMPLETE_SNAPSHOT = 3
TAG_VE, TAG_TEMPLATE, TAG_PROTECTED = 'osvirt-ve', 'osvirt-template', 'protected'
REPO_RE = re.compile(r'^(/[^\0\n]*|sftp:[^\s\0]+)$')


def backup_name(name):
    """A backup name: like a snapshot name (letters, digits, '.', '-', '_')."""
    try:
        return snapshot_name(name)
    except VzError:
        raise VzError('invalid backup name %r: use 1-63 letters, digits, ".", "-" and "_", starting with a letter '
                      'or digit' % (name,))


def repository(value):
    """A repository: an absolute local path or ``sftp:[user@]host:/path``."""
    if not isinstance(value, str) or not REPO_RE.match(value) or '\n' in value:
        raise VzError('invalid repository %r: use an absolute path or sftp:user@host:/path' % (value,))
    return value


def retention(params):
    """The keep rules given (dict rule -> count); VzError when there is none or one is not a positive number."""
    rules = {k: params.get(k) for k in KEEP_RULES if params.get(k) is not None}
    if not rules:
        raise VzError('state pruned needs at least one keep rule (%s); without one every backup would go'
                      % ', '.join(KEEP_RULES))
    for key, value in rules.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise VzError('%s must be a positive number, got %r' % (key, value))
    return rules


def tags_of(snap):
    """restic snapshot tags as a dict (``ve=x`` -> {'ve': 'x'}; plain tags map to True)."""
    found = {}
    for tag in snap.get('tags') or []:
        key, sep, value = tag.partition('=')
        found[key] = value if sep else True
    return found


def describe(snap):
    """One backup as the module returns it."""
    tags = tags_of(snap)
    return {'id': snap.get('id'), 'short_id': snap.get('short_id') or (snap.get('id') or '')[:8],
            'time': snap.get('time'), 've': tags.get('ve'), 'backup': tags.get('backup'),
            'protected': bool(tags.get(TAG_PROTECTED)), 'template': tags.get('template'),
            'mode': tags.get('mode'), 'host': snap.get('hostname')}


class Restic:
    """The restic command line for one repository (argv lists; password in the environment)."""

    def __init__(self, repo, password, binary='restic'):
        self.repo = repository(repo)
        if not password:
            raise VzError('password is required: restic encrypts every repository')
        self.password = password
        self.binary = binary

    def run(self, args, what, check=True, cwd=None):
        env = dict(os.environ, RESTIC_REPOSITORY=self.repo, RESTIC_PASSWORD=self.password,
                   RESTIC_PROGRESS_FPS='0.01')
        env.pop('RESTIC_PASSWORD_FILE', None)
        env.pop('RESTIC_PASSWORD_COMMAND', None)
        argv = [self.binary, '--no-lock'] if args and args[0] in ('snapshots', 'ls') else [self.binary]
        argv += ['-o', 'sftp.args=-o BatchMode=yes'] if self.repo.startswith('sftp:') else []
        argv += list(args)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=cwd,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VzError('restic is not installed on this host (Debian package restic; the osvirt.vz.host role '
                          'installs it)')
        if check and proc.returncode != 0:
            raise self.error(what, proc, argv)
        return proc

    def error(self, what, proc, argv):
        err = proc.stderr.strip()
        low = err.lower()
        if 'wrong password' in low or 'no key found' in low:
            msg = 'wrong password for repository %s' % self.repo
        elif 'is there a repository at the following location' in low or 'unable to open config file' in low:
            msg = 'repository %s does not exist or is not a restic repository (init: true makes a new one)' % self.repo
        elif 'no space left on device' in low:
            msg = '%s failed: the disk is full (no space left on device): %s' % (what, err[-300:])
        else:
            msg = '%s failed (restic rc=%d): %s' % (what, proc.returncode, err[-600:])
        return VzError(msg, cmd=argv, rc=proc.returncode, stderr=err[-2000:])

    def json(self, args, what):
        proc = self.run(args + ['--json'], what)
        out = proc.stdout.strip()
        try:
            return json.loads(out.splitlines()[-1]) if out and args[0] != 'snapshots' else json.loads(out or 'null')
        except ValueError:
            raise VzError('%s: restic did not answer JSON: %s' % (what, out[-300:]), stdout=out[-2000:])

    def exists(self):
        """True when the repository is there and the password opens it; VzError for a wrong password."""
        proc = self.run(['cat', 'config'], 'open repository', check=False)
        if proc.returncode == 0:
            return True
        err = self.error('open repository', proc, [])
        if err.message.startswith('repository '):
            return False
        raise err

    def init(self):
        self.run(['init'], 'make repository %s' % self.repo)

    def snapshots(self, tags=()):
        args = ['snapshots']
        for tag in tags:
            args += ['--tag', tag]
        return self.json(args, 'list backups') or []


class BackupTask:
    """One ``osvirt.vz.ve_backup`` task on one host."""

    def __init__(self, host, client, restic, check_mode=False, lock_timeout=60, stop_timeout=30):
        self.host = host
        self.client = client
        self.ops = VeOps(host, client, stop_timeout=stop_timeout)
        self.restic = restic
        self.check_mode = check_mode
        self.lock_timeout = lock_timeout
        self._all, self._missing = None, None

    # -- shared -------------------------------------------------------------------------------
    def lock(self, ve, what):
        return Lock(self.host.locks_dir, 've', ve, 'osvirt.vz.ve_backup %s' % what, self.lock_timeout,
                    hint='lock_timeout sets how long to wait')

    def stage_dir(self, ve):
        return os.path.join(self.host.vz_root, 'backups', 'stage', ve)

    def all_snapshots(self):
        """Every restic snapshot of the repository, read once per task (each restic run derives the key
        anew, which costs about half a second); [] when the repository does not exist."""
        if self._all is None:
            proc = self.restic.run(['snapshots', '--json'], 'list backups', check=False)
            if proc.returncode != 0:
                err = self.restic.error('list backups', proc, [])
                if not err.message.startswith('repository '):
                    raise err
                self._missing, self._all = True, []
            else:
                self._missing = False
                self._all = json.loads(proc.stdout or '[]') or []
        return self._all

    def exists(self):
        self.all_snapshots()
        return not self._missing

    def forget_cache(self):
        self._all = None

    def backups(self, ve=None):
        """The VE backups (of ``ve``, or all), oldest first."""
        found = [s for s in self.all_snapshots() if tags_of(s).get(TAG_VE)
                 and (ve is None or tags_of(s).get('ve') == ve)]
        return [describe(s) for s in sorted(found, key=lambda s: s.get('time') or '')]

    def open_repository(self, init=False):
        """Make sure the repository exists (``init``: make it when missing); True when it was made."""
        if self.exists():
            return False
        if not init:
            raise VzError('repository %s does not exist or is not a restic repository (init: true makes a new one)'
                          % self.restic.repo)
        if not self.check_mode:
            if not self.restic.repo.startswith('sftp:'):
                make_dirs(os.path.dirname(self.restic.repo.rstrip('/')) or '/', 0o700)
            self.restic.init()
            self._all, self._missing = [], False
        return True

    def find(self, ve, name=None, ident=None):
        """The backup of VE ``ve`` named ``name`` / with id ``ident`` (else the newest), or VzError."""
        found = self.backups(ve)
        if ident:
            match = [b for b in found if b['id'] == ident or b['short_id'] == ident or b['id'].startswith(ident)]
            what = 'id %s' % ident
        elif name:
            match = [b for b in found if b['backup'] == name]
            what = 'named %s' % name
        else:
            match = found
            what = 'at all'
        if not match:
            raise VzError('the repository has no backup of VE %s %s (it has: %s)'
                          % (ve, what, ', '.join(b['backup'] or b['short_id'] for b in found) or 'none'))
        return match[-1]

    # -- present ------------------------------------------------------------------------------
    def backup(self, ve, name=None, mode=None, protected=False, init=False, require_owner=None):
        """Back up VE ``ve``; with ``name`` only when no backup of that name exists. Returns a result dict."""
        ve = _validate.ve_name(ve)
        name = backup_name(name) if name is not None else None
        meta = self.ops.read_meta(ve)
        if meta is None:
            raise VzError('VE %s does not exist on this host (%s): nothing to back up' % (ve, self.host.ves_dir))
        _validate.owner(ve, meta, require_owner)
        private = os.path.join(self.host.ve_dir(ve), 'private')
        if mode is None:
            mode = 'snapshot' if _quota.is_subvolume(private) else 'suspend'
        if mode not in MODES:
            raise VzError('invalid mode %r: use one of %s' % (mode, ', '.join(MODES)))
        if mode == 'snapshot' and not _quota.is_subvolume(private):
            raise VzError('VE %s: mode snapshot needs its private area on btrfs (a subvolume); %s is not: use mode '
                          'suspend or stop' % (ve, private))
        made = self.open_repository(init)
        existing = [] if made else self.backups(ve)
        if name is not None and any(b['backup'] == name for b in existing):
            return {'changed': False, 'actions': [], 'backup': next(b for b in existing if b['backup'] == name)}
        label = name or time.strftime('%Y%m%d-%H%M%S', time.gmtime())
        actions = (['make repository %s' % self.restic.repo] if made else []) + \
            ['back up %s as %s (%s)' % (ve, label, mode)]
        if self.check_mode:
            return {'changed': True, 'actions': actions, 'backup': {'ve': ve, 'backup': label}}
        self.host.ensure_layout()
        with self.lock(ve, 'backup %s' % label):
            manifest = self.ops.templates.manifest(*_validate.template_ref(meta['template']))
            stored = self.store_templates(manifest)
            actions += ['store template %s in the repository' % t for t in stored]
            started = time.monotonic()
            snap_id, frozen = self._take(ve, meta, manifest, label, mode, protected)
            seconds = round(time.monotonic() - started, 3)
        result = next((b for b in self.backups(ve) if b['id'].startswith(snap_id)), None) or \
            {'id': snap_id, 've': ve, 'backup': label}
        result.update(seconds=seconds, frozen_seconds=frozen)
        return {'changed': True, 'actions': actions, 'backup': result}

    def store_templates(self, manifest):
        """Store each template layer of ``manifest`` the repository lacks (once per repository)."""
        stored = []
        have = {tags_of(s).get('template') for s in self.all_snapshots() if tags_of(s).get(TAG_TEMPLATE)}
        for layer in self.ops.templates.layers(manifest):
            ref = '%s@%s' % (layer['name'], layer['version'])
            if ref in have:
                continue
            path = self.ops.templates.version_dir(layer['name'], layer['version'])
            self.restic.run(['backup', '--tag', '%s,template=%s' % (TAG_TEMPLATE, ref), '--exclude',
                             os.path.join(path, 'idmap'), '--host', 'osvirt-templates', path],
                            'store template %s' % ref)
            self.all_snapshots().append({'id': '', 'tags': [TAG_TEMPLATE, 'template=%s' % ref], 'paths': [path]})
            stored.append(ref)
        return stored

    def _take(self, ve, meta, manifest, label, mode, protected):
        """Stage the VE, run restic, clean up; returns (restic snapshot id, seconds the VE was frozen/stopped)."""
        stage = self.stage_dir(ve)
        self._clear_stage(stage)
        make_dirs(os.path.join(stage, 'meta'), 0o700)
        directory = self.host.ve_dir(ve)
        info = {'ve': ve, 'backup': label, 'mode': mode, 'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'template': meta['template'], 'template_checksum': manifest.get('checksum'),
                'layers': meta.get('layers') or [], 'limits': meta.get('limits') or {},
                'network': meta.get('network') or [], 'hostname': meta.get('hostname') or ve, 'stage': stage}
        tags = '%s,ve=%s,backup=%s,mode=%s,template=%s' % (TAG_VE, ve, label, mode, meta['template'])
        if protected:
            tags += ',' + TAG_PROTECTED
        private = os.path.join(stage, 'private')
        base = ['backup', '--host', os.uname().nodename, '--exclude', os.path.join(private, 'work'), '--json']
        state = self.ops.state(ve)['state']
        frozen = 0.0
        try:
            for filename in ('config', 've.json'):
                with open(os.path.join(directory, filename), 'rb') as handle:
                    data = handle.read()
                with open(os.path.join(stage, 'meta', filename), 'wb') as handle:
                    handle.write(data)
            write_json(os.path.join(stage, 'meta', 'backup.json'), info)
            if mode == 'snapshot':
                began = time.monotonic()
                if state == 'running':
                    self.ops.freeze(ve)
                try:
                    _quota.snapshot(os.path.join(directory, 'private'), private, readonly=True)
                finally:
                    if state == 'running':
                        self.ops.unfreeze(ve)
                frozen = time.monotonic() - began
                return self._restic_backup(base, tags, stage), round(frozen, 4)
            os.mkdir(private, 0o700)
            _mount_bind(os.path.join(directory, 'private'), private)
            if mode == 'stop':
                began = time.monotonic()
                if state in ('running', 'frozen'):
                    if state == 'frozen':
                        self.ops.unfreeze(ve)
                    self.ops.stop(ve)
                try:
                    return self._restic_backup(base, tags, stage), None
                finally:
                    if state in ('running', 'frozen'):
                        self.ops.start(ve, meta, manifest)
                        if state == 'frozen':
                            self.ops.freeze(ve)
            if state != 'running':
                return self._restic_backup(base, tags, stage), 0.0
            # the VE runs: a file it renames or removes while restic reads is an incomplete first
            # pass (restic rc 3), which is all this pass is for; the frozen pass reads it whole
            first = self._restic_backup(base, '%s,ve=%s,osvirt-pass' % (TAG_VE + '-pass', ve), stage,
                                        incomplete_ok=True)
            began = time.monotonic()
            self.ops.freeze(ve)
            try:
                final = self._restic_backup(base + ['--parent', first], tags, stage)
            finally:
                self.ops.unfreeze(ve)
                frozen = time.monotonic() - began
            self.restic.run(['forget', first], 'forget the first pass')
            return final, round(frozen, 4)
        finally:
            self._clear_stage(stage)

    def _restic_backup(self, base, tags, stage, incomplete_ok=False):
        argv = base + ['--tag', tags, stage]
        proc = self.restic.run(argv, 'backup of %s' % stage, check=False)
        # rc 3: restic made the snapshot but could not read some files
        if proc.returncode != 0 and not (incomplete_ok and proc.returncode == INCOMPLETE_SNAPSHOT):
            raise self.restic.error('backup of %s' % stage, proc, [self.restic.binary] + argv)
        for line in reversed(proc.stdout.splitlines()):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get('message_type') == 'summary':
                if self._all is not None and not tags.startswith(TAG_VE + '-pass'):
                    self._all.append({'id': doc['snapshot_id'], 'short_id': doc['snapshot_id'][:8],
                                      'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                                      'tags': tags.split(','), 'hostname': os.uname().nodename, 'paths': [stage]})
                return doc['snapshot_id']
        raise VzError('restic backup of %s gave no summary: %s' % (stage, proc.stdout[-300:]))

    def _clear_stage(self, stage):
        """Remove the staging path: detach the bind mount (never delete through it), drop the snapshot."""
        for point in _staging.mounts_below(stage):
            _umount(point)
        left = _staging.mounts_below(stage)
        if left:   # removing files below a bind mount would remove the VE's own files
            raise VzError('cannot detach %s; remove it by hand before the next backup' % ', '.join(left))
        private = os.path.join(stage, 'private')
        if _quota.is_subvolume(private):
            _quota.remove_subvolume_tree(private)
        remove_tree(stage)

    # -- absent / pruned / verified -------------------------------------------------------------
    def remove(self, ve, name=None, ident=None):
        """Remove one backup (by name or id) of VE ``ve``; nothing when it is not there."""
        try:
            found = self.find(ve, name, ident)
        except VzError:
            return {'changed': False, 'actions': []}
        actions = ['remove backup %s of %s' % (found['backup'] or found['short_id'], ve)]
        if not self.check_mode:
            self.restic.run(['forget', '--prune', found['id']], 'remove backup %s' % found['short_id'])
            self.forget_cache()
        return {'changed': True, 'actions': actions, 'removed': [found]}

    def prune(self, ve, rules):
        """Apply retention per VE (protected backups always kept); returns the backups removed."""
        args = ['forget', '--group-by', 'host,paths', '--tag', TAG_VE + (',ve=%s' % ve if ve else ''),
                '--keep-tag', TAG_PROTECTED]
        for key, value in rules.items():
            args += ['--' + key.replace('_', '-'), str(value)]
        if self.check_mode:
            args.append('--dry-run')
        else:
            args.append('--prune')
        groups = _json_lines(self.restic.run(args + ['--json'], 'apply retention').stdout)
        self.forget_cache()
        removed = [describe(s) for group in groups or [] for s in group.get('remove') or []]
        return {'changed': bool(removed), 'actions': ['remove backup %s of %s' % (b['backup'] or b['short_id'], b['ve'])
                                                      for b in removed], 'removed': removed}

    def verify(self, read_data=True):
        """restic check (with --read-data every byte of the repository is read and checked)."""
        proc = self.restic.run(['check'] + (['--read-data'] if read_data else []), 'verify repository', check=False)
        if proc.returncode != 0:
            why = proc.stderr.strip()[-800:] or proc.stdout.strip()[-800:]
            raise VzError('repository %s failed verification: %s' % (self.restic.repo, why),
                          rc=proc.returncode)
        return {'changed': False, 'actions': [], 'verified': True}

    # -- restored -------------------------------------------------------------------------------
    def restore(self, ve, target=None, name=None, ident=None, force=False, manager=None, network=None, start=False):
        """Restore a backup of VE ``ve`` as VE ``target`` (default ``ve``) on this host.

        Built in .tmp, checked (restic --verify, metadata), renamed into place; an existing VE is replaced
        only with ``force``, and stays until the new one is in place. ``manager``: a ``VeManager`` of this
        host (for a new name: new MAC, addresses from ``network`` or the pools).
        """
        ve = _validate.ve_name(ve)
        target = _validate.ve_name(target or ve)
        self.open_repository(False)
        found = self.find(ve, name, ident)
        exists = self.ops.read_meta(target, broken_ok=True) is not None
        if exists and not force:
            raise VzError('VE %s exists on this host; restoring over it needs force: true (it stays until the '
                          'restored VE is in place)' % target)
        actions = ['restore %s from backup %s of %s' % (target, found['backup'] or found['short_id'], ve)]
        tref = found['template']
        tname, tversion = _validate.template_ref(tref)
        missing = tversion not in self.ops.templates.versions(tname)
        if missing:
            actions.insert(0, 'restore template %s from the repository' % tref)
        if start:
            actions.append('start %s' % target)
        if self.check_mode:
            return {'changed': True, 'actions': actions, 'backup': found}
        self.host.ensure_layout()
        if missing:
            self.restore_template(tref)
        manifest = self.ops.templates.manifest(tname, tversion)
        with self.lock(target, 'restore from %s' % found['short_id']):
            self._restore_into_place(found, ve, target, manifest, exists, manager, network)
            if start:
                meta = self.ops.read_meta(target)
                self.ops.start(target, meta, manifest)
        return {'changed': True, 'actions': actions, 'backup': found}

    def restore_template(self, ref):
        """Publish template version ``ref`` (and the layers below it) from the repository on this host."""
        snaps = [s for s in self.all_snapshots() if tags_of(s).get(TAG_TEMPLATE) and tags_of(s).get('template') == ref]
        if not snaps:
            raise VzError('template %s is neither on this host nor in repository %s' % (ref, self.restic.repo))
        name, version = _validate.template_ref(ref)
        store = self.ops.templates
        staging = store.copy_staging(name, version)
        try:
            work = os.path.join(staging, '.restore')
            self.restic.run(['restore', snaps[-1]['id'], '--target', work], 'restore template %s' % ref)
            source = work + snaps[-1]['paths'][0]
            for entry in ('rootfs', 'manifest.json'):
                os.rename(os.path.join(source, entry), os.path.join(staging, entry))
            remove_tree(work)
            manifest = read_json(os.path.join(staging, 'manifest.json')) or {}
        except BaseException:
            store.discard_copy(name, staging)
            raise
        if manifest.get('parent'):
            parent = manifest['parent'] if '@' in str(manifest['parent']) else None
            if parent and _validate.template_ref(parent)[1] not in store.versions(_validate.template_ref(parent)[0]):
                self.restore_template(parent)
        store.publish_copy(name, version, staging, 'repository %s' % self.restic.repo)

    def _restore_into_place(self, found, ve, target, manifest, exists, manager, network, fill=None):
        """Build VE ``target`` from a backup in .tmp and rename it into place. ``fill(landing)`` puts the
        backup's files below ``landing`` and returns the directory holding ``meta/`` and ``private/``
        (default: restic restore of ``found``)."""
        staging = _staging.make(self.host.tmp_dir, 'restore-%s-' % target)
        claimed = []
        try:
            os.chmod(staging, 0o711)
            work = os.path.join(staging, 've')
            os.mkdir(work, 0o711)
            private = os.path.join(work, 'private')
            _quota.make_private_area(self.host, private)
            landing = os.path.join(private, '.restore')
            # restored inside the new private area, so the move below is a rename (one subvolume on btrfs)
            stage = (fill or self._fill_from_restic(found, ve))(landing)
            saved = read_json(os.path.join(stage, 'meta', 've.json'))
            info = read_json(os.path.join(stage, 'meta', 'backup.json'))
            if not isinstance(saved, dict) or not isinstance(info, dict) or saved.get('name') != ve:
                raise VzError('backup %s of VE %s is damaged: its ve.json or backup.json is missing or wrong'
                              % (found['short_id'], ve))
            if info.get('template_checksum') and info['template_checksum'] != manifest.get('checksum'):
                raise VzError('backup %s was made on template %s with checksum %s, but this host\'s copy has %s'
                              % (found['short_id'], info['template'], info['template_checksum'],
                                 manifest.get('checksum')))
            upper = os.path.join(stage, 'private', 'upper')
            if not os.path.isdir(upper):
                raise VzError('backup %s of VE %s holds no private area' % (found['short_id'], ve))
            os.rename(upper, os.path.join(private, 'upper'))
            remove_tree(landing)
            meta = self._target_meta(saved, target, manifest, manager, network)
            idmap = meta.get('idmap') or {}
            if idmap:
                os.chown(private, idmap['uid'], idmap['gid'])
            os.chmod(private, 0o711)
            os.mkdir(os.path.join(private, 'work'), 0o755)
            if idmap:
                os.chown(os.path.join(private, 'work'), idmap['uid'], idmap['gid'])
            write_json(os.path.join(work, 've.json'), meta)
            claimed = self.ops.claim_addresses(target, meta.get('network') or [])
            old = None
            if exists:   # the old VE goes aside only now, and comes back if the new one cannot take its place
                old_meta = self.ops.read_meta(target, broken_ok=True) or {}
                state = self.ops.state(target)['state']
                if state in ('running', 'frozen'):
                    if state == 'frozen':
                        self.ops.unfreeze(target)
                    self.ops.stop(target)
                old = os.path.join(staging, 'old')
                os.rename(self.host.ve_dir(target), old)
            try:
                os.rename(work, self.host.ve_dir(target))
            except OSError:
                if old:
                    os.rename(old, self.host.ve_dir(target))
                raise
            self.ops.register(meta, manifest)
            if manager is not None and target != ve:
                tree = VeTree(os.path.join(self.host.ve_dir(target), 'private', 'upper'),
                              self.ops.templates.lower_dirs(manifest), idmap)
                write_identity(tree, meta.get('hostname') or target)
            space = ((meta.get('limits') or {}).get('disk') or {}).get('space')
            if space is not None:
                _quota.apply_quota(self.host, meta, space)
            if old:
                keep = set(a for iface in meta.get('network') or [] for a in addresses_of(iface))
                gone = [a for iface in old_meta.get('network') or [] for a in addresses_of(iface) if a not in keep]
                if gone:
                    self.ops.net.release(target, gone)
                _quota.remove_quota(self.host, old_meta, os.path.join(old, 'private'))
        except BaseException:
            if claimed and not os.path.isdir(self.host.ve_dir(target)):
                self.ops.net.release(target, claimed)
            raise
        finally:
            _staging.discard(staging)

    def _fill_from_restic(self, found, ve):
        def fill(landing):
            paths = next((s['paths'] for s in self.all_snapshots() if s['id'] == found['id']), None)
            if not paths:
                raise VzError('backup %s of VE %s has no paths' % (found['short_id'], ve))
            self.restic.run(['restore', found['id'], '--target', landing, '--verify'],
                            'restore backup %s' % found['short_id'])
            return landing + paths[0]
        return fill

    def _target_meta(self, saved, target, manifest, manager, network):
        """The restored VE's metadata on this host: same name keeps MAC and addresses; a new name gets new ones."""
        meta = dict(saved, cgroup_parent=self.host.cgroup_parent, autostart=False)
        if saved.get('idmap'):
            idmap = dict(self.host.idmap()._asdict())
            if (idmap['uid'], idmap['gid']) != (saved['idmap']['uid'], saved['idmap']['gid']):
                raise VzError('VE %s was backed up with ids %d/%d, but this host maps %d/%d: restore it on a host with '
                              'the same /etc/subuid range'
                              % (saved['name'], saved['idmap']['uid'], saved['idmap']['gid'], idmap['uid'], idmap['gid']))
        if target == saved['name'] and network is None:
            meta['network'] = [dict(iface, host_link=host_link_name(target, index, self.host.cgroup_parent))
                               for index, iface in enumerate(saved.get('network') or [])]
            return meta
        if manager is None:
            raise VzError('restoring under a new name needs the VE manager')
        new_meta = manager.restored_meta(target, saved, network)
        return new_meta


def _json_lines(text):
    text = text.strip()
    try:
        return json.loads(text or '[]')
    except ValueError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return []


def _mount_bind(source, target):
    proc = subprocess.run(['mount', '--bind', '-o', 'ro', source, target], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        proc = subprocess.run(['mount', '--bind', source, target], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise VzError('cannot bind %s for the backup: %s' % (source, proc.stderr.strip()), cmd=proc.args)


def _umount(path):
    subprocess.run(['umount', path], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)


# -- portable archives ------------------------------------------------------------------------------
TAR_ARGS = ['--xattrs', '--xattrs-include=*', '--acls', '--numeric-owner']


class ArchiveTask(BackupTask):
    """vzdump-like export without a repository: one zstd tar per backup, holding ``meta/`` (backup.json as
    the manifest, config, ve.json), ``private/upper`` and the template layers (``templates/<name>/<version>``),
    so a machine that has neither the repository nor the template can restore the VE."""

    def __init__(self, host, client, check_mode=False, lock_timeout=60, stop_timeout=30):
        super().__init__(host, client, None, check_mode=check_mode, lock_timeout=lock_timeout,
                         stop_timeout=stop_timeout)

    def export(self, ve, directory, name=None, mode=None, require_owner=None):
        """Write ``<directory>/<ve>-<name>.tar.zst`` (once per name). Returns a result dict."""
        ve = _validate.ve_name(ve)
        name = backup_name(name) if name is not None else time.strftime('%Y%m%d-%H%M%S', time.gmtime())
        directory = _validate.host_path(directory, 'archive_dir', must_exist=False)
        meta = self.ops.read_meta(ve)
        if meta is None:
            raise VzError('VE %s does not exist on this host (%s): nothing to back up' % (ve, self.host.ves_dir))
        _validate.owner(ve, meta, require_owner)
        if mode not in (None,) + MODES:
            raise VzError('invalid mode %r: use one of %s' % (mode, ', '.join(MODES)))
        dest = os.path.join(directory, '%s-%s.tar.zst' % (ve, name))
        if os.path.exists(dest):
            return {'changed': False, 'actions': [], 'archive': dest}
        actions = ['archive %s to %s' % (ve, dest)]
        if self.check_mode:
            return {'changed': True, 'actions': actions, 'archive': dest}
        self.host.ensure_layout()
        make_dirs(directory, 0o700)
        snaps = Snapshots(self.host, self.client, stop_timeout=self.ops.stop_timeout)
        work = _staging.make(self.host.tmp_dir, 'backup-%s-' % ve)
        partial = dest + '.partial'
        try:
            with self.lock(ve, 'archive %s' % name):
                manifest = self.ops.templates.manifest(*_validate.template_ref(meta['template']))
                state = self.ops.state(ve)['state']
                stop = mode == 'stop' and state in ('running', 'frozen')
                if stop:
                    if state == 'frozen':
                        self.ops.unfreeze(ve)
                    self.ops.stop(ve)
                try:
                    snaps.take(ve, 'archive', os.path.join(work, 'snap'))   # frozen for the instant if it runs
                finally:
                    if stop:
                        self.ops.start(ve, meta, manifest)
            os.mkdir(os.path.join(work, 'meta'), 0o700)
            for filename in ('config', 've.json'):
                with open(os.path.join(work, 'snap', filename), 'rb') as handle:
                    data = handle.read()
                with open(os.path.join(work, 'meta', filename), 'wb') as handle:
                    handle.write(data)
            layers = self.ops.templates.layers(manifest)
            write_json(os.path.join(work, 'meta', 'backup.json'), {
                've': ve, 'backup': name, 'format': 'archive', 'mode': mode or 'snapshot',
                'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), 'template': meta['template'],
                'template_checksum': manifest.get('checksum'),
                'layers': ['%s@%s' % (m['name'], m['version']) for m in layers],
                'limits': meta.get('limits') or {}, 'network': meta.get('network') or [],
                'hostname': meta.get('hostname') or ve})
            argv = ['tar', '-cf', '-'] + TAR_ARGS + ['-C', work, 'meta', '-C', os.path.join(work, 'snap'),
                                                     'private/upper', '-C', self.host.vz_root]
            for layer in layers:
                base = 'templates/%s/%s' % (layer['name'], layer['version'])
                argv += [base + '/manifest.json', base + '/rootfs']
            _pipe(argv, ['zstd', '-q', '-T0', '-3', '-f', '-o', partial], 'archive of %s' % ve)
            os.rename(partial, dest)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        finally:
            _staging.discard(work)
        return {'changed': True, 'actions': actions, 'archive': dest}

    def restore_archive(self, path, target=None, force=False, manager=None, network=None, start=False):
        """Restore the VE of archive ``path`` as ``target`` (default: its own name), its template too."""
        path = _validate.host_path(path, 'archive')
        try:
            info = json.loads(_pipe(['zstd', '-dc', '--', path], ['tar', '-xOf', '-', 'meta/backup.json'],
                                    'read %s' % path).decode('utf-8'))
        except (VzError, ValueError, UnicodeDecodeError) as exc:
            raise VzError('%s is not a VE archive of osvirt.vz (no readable meta/backup.json): %s' % (path, exc))
        if not isinstance(info, dict) or not info.get('template'):
            raise VzError('%s is not a VE archive of osvirt.vz (its meta/backup.json names no template)' % path)
        ve = _validate.ve_name(info.get('ve'))
        target = _validate.ve_name(target or ve)
        exists = self.ops.read_meta(target, broken_ok=True) is not None
        if exists and not force:
            raise VzError('VE %s exists on this host; restoring over it needs force: true (it stays until the '
                          'restored VE is in place)' % target)
        missing = [ref for ref in reversed(info.get('layers') or [info['template']])
                   if _validate.template_ref(ref)[1] not in self.ops.templates.versions(_validate.template_ref(ref)[0])]
        actions = ['restore template %s from %s' % (ref, path) for ref in missing] + \
            ['restore %s from archive %s' % (target, path)] + (['start %s' % target] if start else [])
        found = {'id': path, 'short_id': os.path.basename(path), 've': ve, 'backup': info.get('backup'),
                 'template': info['template']}
        if self.check_mode:
            return {'changed': True, 'actions': actions, 'backup': found}
        self.host.ensure_layout()
        for ref in missing:
            self._publish_from_archive(path, ref)
        manifest = self.ops.templates.manifest(*_validate.template_ref(info['template']))

        def fill(landing):
            os.mkdir(landing, 0o700)
            _pipe(['zstd', '-dc', '--', path], ['tar', '-xf', '-', '-C', landing] + TAR_ARGS +
                  ['--exclude=templates'], 'unpack %s' % path)
            return landing

        with self.lock(target, 'restore from %s' % found['short_id']):
            self._restore_into_place(found, ve, target, manifest, exists, manager, network, fill=fill)
            if start:
                self.ops.start(target, self.ops.read_meta(target), manifest)
        return {'changed': True, 'actions': actions, 'backup': found}

    def _publish_from_archive(self, path, ref):
        name, version = _validate.template_ref(ref)
        store = self.ops.templates
        staging = store.copy_staging(name, version)
        try:
            member = 'templates/%s/%s' % (name, version)
            _pipe(['zstd', '-dc', '--', path], ['tar', '-xf', '-', '-C', staging] + TAR_ARGS + [member],
                  'unpack template %s' % ref)
            for entry in ('rootfs', 'manifest.json'):
                os.rename(os.path.join(staging, member, entry), os.path.join(staging, entry))
            remove_tree(os.path.join(staging, 'templates'))
        except BaseException:
            store.discard_copy(name, staging)
            raise
        store.publish_copy(name, version, staging, 'archive %s' % path)


def _pipe(first, second, what):
    """Run ``first | second`` (argv lists, no shell); the output of ``second``; VzError naming ``what`` when
    either fails."""
    one = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    two = subprocess.run(second, stdin=one.stdout, capture_output=True, check=False)
    one.stdout.close()
    err_one = one.stderr.read().decode('utf-8', 'replace')
    one.wait()
    if one.returncode != 0 or two.returncode != 0:
        err = (err_one + two.stderr.decode('utf-8', 'replace')).strip()
        full = 'No space left on device' in err
        raise VzError('%s failed%s: %s' % (what, ' (the disk is full)' if full else '', err[-600:]),
                      cmd=first + ['|'] + second, rc=one.returncode or two.returncode)
    return two.stdout
