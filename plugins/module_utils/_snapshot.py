# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named snapshots of a VE's private area and config: create, list, roll back, remove.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A snapshot lives beside the VE it belongs to and goes when the VE is removed::

    <vz_root>/ves/<ve>/snapshots/<snapshot>/
        snapshot.json   name, created, method, whether the VE ran, template@version
        config ve.json  the VE's registration at that instant
        private/        its private area: a read-only btrfs snapshot, or a copy of private/upper

Where the private area is a btrfs subvolume (vz_root on btrfs, docs/disk-quota.md) a snapshot is
one ioctl (read-only subvolume snapshot: milliseconds, no data copied). Elsewhere the upper dir is
copied with ``cp -a --reflink=auto`` (extents shared where the file system can), then brought up
to date with rsync while the VE is frozen. A running VE is frozen (cgroup freezer) for the
instant of the snapshot, so its files are consistent with each other (crash-consistent: what a
power cut would have left, as any file system snapshot).

A snapshot is built in ``<vz_root>/.tmp`` and renamed into place, so a killed run leaves no half
snapshot. A rollback builds the new private area in ``.tmp`` too, swaps it in by rename while the
VE is stopped, then writes the snapshot's registration (config re-rendered for this host).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from . import _quota, _staging, _validate
from ._errors import VzError
from ._fs import atomic_write, disk_usage, make_dirs, read_json, remove_tree, write_json
from ._locks import Lock
from ._ve_config import config_digest
from ._ve_net import addresses_of
from ._ve_ops import VeOps

SNAPSHOT_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,62}')
SNAPSHOTS = 'snapshots'


def snapshot_name(name):
    """A snapshot name: 1-63 letters, digits, dots, dashes and underscores, starting with a letter or digit."""
    if not isinstance(name, str) or not SNAPSHOT_NAME_RE.fullmatch(name):
        raise VzError('invalid snapshot name %r: use 1-63 letters, digits, ".", "-" and "_", starting with a '
                      'letter or digit' % (name,))
    return name


def parse_ref(ref):
    """``<ve>`` or ``<ve>@<snapshot>`` -> (ve, snapshot or None), both validated."""
    if not isinstance(ref, str):
        raise VzError('invalid VE reference %r: use <ve> or <ve>@<snapshot>' % (ref,))
    ve, sep, snap = ref.partition('@')
    return _validate.ve_name(ve), snapshot_name(snap) if sep else None


def snapshot_dir(host, ve, snap):
    return os.path.join(host.ve_dir(ve), SNAPSHOTS, snap)


def describe(host, ve, snap, sizes=True):
    """One snapshot as modules show it: name, created, method, running, template, size_bytes."""
    directory = snapshot_dir(host, ve, snap)
    info = read_json(os.path.join(directory, 'snapshot.json')) or {}
    view = {'name': snap, 'created': info.get('created'), 'method': info.get('method'),
            'running': bool(info.get('running')), 'template': info.get('template')}
    if sizes:
        private = os.path.join(directory, 'private')
        size = _quota.exclusive_bytes(private) if info.get('method') == 'btrfs' else None
        view['size_bytes'] = size if size is not None else disk_usage(directory)
    return view


def list_snapshots(host, ve, sizes=True):
    """Every complete snapshot of VE ``ve``, oldest first."""
    base = os.path.join(host.ve_dir(ve), SNAPSHOTS)
    try:
        names = [n for n in os.listdir(base) if SNAPSHOT_NAME_RE.fullmatch(n)
                 and os.path.isfile(os.path.join(base, n, 'snapshot.json'))]
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [describe(host, ve, n, sizes) for n in names]
    return sorted(found, key=lambda s: (s['created'] or '', s['name']))


def copy_tree(source, dest):
    """Copy the directory ``source`` to the new ``dest``: owners, modes, links, xattrs, whiteouts; extents
    shared where the file system allows (reflink)."""
    _run(['cp', '-a', '--reflink=auto', '--', source, dest], 'copy %s' % source)


def sync_tree(source, dest):
    """Bring the copy ``dest`` up to date with ``source`` (rsync, deletions too)."""
    _run(['rsync', '-aHAX', '--numeric-ids', '--delete', '--', source.rstrip('/') + '/', dest.rstrip('/') + '/'],
         'sync %s' % source)


def _run(argv, what):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = proc.stderr.strip()
        nospace = 'No space left on device' in err or 'Disk quota exceeded' in err
        raise VzError('%s failed%s: %s' % (what, ' (the disk is full)' if nospace else '', err[-600:]),
                      cmd=argv, rc=proc.returncode, stderr=proc.stderr, no_space=nospace)


class Snapshots:
    """Snapshots of the VEs of one host; each call takes the VE's lock."""

    def __init__(self, host, client, check_mode=False, lock_timeout=60, stop_timeout=30):
        self.host = host
        self.ops = VeOps(host, client, stop_timeout=stop_timeout)
        self.check_mode = check_mode
        self.lock_timeout = lock_timeout

    # -- helpers --------------------------------------------------------------------------
    def meta(self, ve, require_owner=None):
        """ve.json of an existing VE; VzError when it does not exist or is someone else's."""
        meta = self.ops.read_meta(_validate.ve_name(ve))
        if meta is None:
            raise VzError('VE %s does not exist on this host (%s)' % (ve, self.host.ves_dir))
        _validate.owner(ve, meta, require_owner)
        return meta

    def lock(self, ve, what):
        return Lock(self.host.locks_dir, 've', ve, 'osvirt.vz.ve_snapshot %s' % what, self.lock_timeout,
                    hint='lock_timeout sets how long to wait')

    def exists(self, ve, snap):
        return os.path.isfile(os.path.join(snapshot_dir(self.host, ve, snap), 'snapshot.json'))

    def require(self, ve, snap):
        if not self.exists(ve, snap):
            have = [s['name'] for s in list_snapshots(self.host, ve, sizes=False)]
            raise VzError('VE %s has no snapshot %s (it has: %s)' % (ve, snap, ', '.join(have) or 'none'))

    # -- create ---------------------------------------------------------------------------
    def create(self, ve, snap, require_owner=None):
        """Snapshot VE ``ve`` as ``snap``; nothing when it exists (idempotent). Returns (changed, info)."""
        snap = snapshot_name(snap)
        self.meta(ve, require_owner)
        if self.exists(ve, snap):
            return False, describe(self.host, ve, snap)
        if self.check_mode:
            return True, {'name': snap}
        self.host.ensure_layout()
        with self.lock(ve, 'create %s' % snap):
            if self.exists(ve, snap):
                return False, describe(self.host, ve, snap)
            self.take(ve, snap, snapshot_dir(self.host, ve, snap))
        return True, describe(self.host, ve, snap)

    def take(self, ve, snap, dest):
        """Make the snapshot directory ``dest`` of VE ``ve`` (caller holds the lock): built in .tmp, frozen
        for the instant if it runs, renamed into place. Returns the method used."""
        meta = self.meta(ve)
        directory = self.host.ve_dir(ve)
        private = os.path.join(directory, 'private')
        staging = _staging.make(self.host.tmp_dir, 'snap-%s-' % ve)
        try:
            os.chmod(staging, 0o700)
            work = os.path.join(staging, snap)
            os.mkdir(work, 0o700)
            method = 'btrfs' if _quota.is_subvolume(private) else 'copy'
            state = self.ops.state(ve)['state']
            running = state == 'running'
            if method == 'copy':   # the bulk while the VE runs, the rest while it is frozen
                os.mkdir(os.path.join(work, 'private'), 0o711)
                copy_tree(os.path.join(private, 'upper'), os.path.join(work, 'private', 'upper'))
            started = time.monotonic()
            if running:
                self.ops.freeze(ve)
            try:
                for filename in ('config', 've.json'):
                    with open(os.path.join(directory, filename), 'rb') as handle:
                        atomic_write(os.path.join(work, filename), handle.read(), 0o600)
                if method == 'btrfs':
                    _quota.snapshot(private, os.path.join(work, 'private'), readonly=True)
                else:
                    sync_tree(os.path.join(private, 'upper'), os.path.join(work, 'private', 'upper'))
            finally:
                if running:
                    self.ops.unfreeze(ve)
            frozen = time.monotonic() - started
            write_json(os.path.join(work, 'snapshot.json'), {
                'name': snap, 've': ve, 'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                'method': method, 'running': state in ('running', 'frozen'), 'template': meta.get('template'),
                'frozen_seconds': round(frozen, 4) if running else 0})
            make_dirs(os.path.dirname(dest), 0o700)
            os.rename(work, dest)
        finally:
            _staging.discard(staging)
        return method

    # -- remove ---------------------------------------------------------------------------
    def remove(self, ve, snap, require_owner=None):
        """Remove snapshot ``snap`` of ``ve``; nothing when it is not there. Returns changed."""
        snap = snapshot_name(snap)
        self.meta(ve, require_owner)
        if not os.path.lexists(snapshot_dir(self.host, ve, snap)):
            return False
        if self.check_mode:
            return True
        with self.lock(ve, 'remove %s' % snap):
            path = snapshot_dir(self.host, ve, snap)
            if not os.path.lexists(path):
                return False
            trash = _staging.make(self.host.tmp_dir, 'trash-snap-%s-' % ve)
            try:
                os.rename(path, os.path.join(trash, snap))
            finally:
                _staging.discard(trash)
        return True

    # -- rollback -------------------------------------------------------------------------
    def rollback(self, ve, snap, restart=False, require_owner=None):
        """Put VE ``ve`` back to snapshot ``snap``: private area, config and metadata.

        A running VE is stopped, rolled back and started again only with ``restart``; otherwise nothing
        changes and the result says ``restart_required``. Returns a dict(changed, restart_required,
        actions, state).
        """
        snap = snapshot_name(snap)
        self.meta(ve, require_owner)
        self.require(ve, snap)
        state = self.ops.state(ve)['state']
        live = state in ('running', 'frozen')
        if live and not restart:
            return {'changed': False, 'restart_required': True, 'actions': [], 'state': state}
        actions = (['stop %s' % ve] if live else []) + ['roll back %s to %s' % (ve, snap)] + \
            (['start %s' % ve] if live else [])
        if self.check_mode:
            return {'changed': True, 'restart_required': False, 'actions': actions, 'state': state}
        self.host.ensure_layout()
        with self.lock(ve, 'rollback to %s' % snap):
            meta = self.meta(ve)
            new_meta, manifest = self._snapshot_meta(ve, snap, meta)
            state = self.ops.state(ve)['state']
            live = state in ('running', 'frozen')
            claimed = self.ops.claim_addresses(ve, new_meta.get('network') or [])
            try:
                if live:
                    if state == 'frozen':
                        self.ops.unfreeze(ve)
                    self.ops.stop(ve)
                self.put_private(ve, os.path.join(snapshot_dir(self.host, ve, snap), 'private'), new_meta)
            except Exception:
                if claimed:
                    self.ops.net.release(ve, claimed)
                raise
            self.register(ve, meta, new_meta, manifest)
            if live:
                self.ops.start(ve, new_meta, manifest)
                self.ops.record_running(ve, self.ops.state(ve)['pid'], config_digest(self.ops.config_on_disk(ve)))
        return {'changed': True, 'restart_required': False, 'actions': actions,
                'state': 'running' if live else 'stopped'}

    def _snapshot_meta(self, ve, snap, meta):
        """The metadata the VE gets back from snapshot ``snap`` (this host's cgroup parent) and its template."""
        saved = read_json(os.path.join(snapshot_dir(self.host, ve, snap), 've.json'))
        if not isinstance(saved, dict) or saved.get('name') != ve:
            raise VzError('snapshot %s of VE %s has no valid ve.json' % (snap, ve))
        new_meta = dict(saved, cgroup_parent=meta.get('cgroup_parent') or self.host.cgroup_parent)
        try:
            manifest = self.ops.templates.manifest(*_validate.template_ref(new_meta['template']))
        except VzError as exc:
            raise VzError('VE %s: snapshot %s was taken on template %s, which this host no longer has: %s'
                          % (ve, snap, new_meta.get('template'), exc))
        return new_meta, manifest

    def put_private(self, ve, source, meta):
        """Replace the (stopped) VE's private area by a writable copy of ``source`` (a snapshot's or a clone
        source's ``private``): built in .tmp, swapped in by rename, the old one removed afterwards."""
        directory = self.host.ve_dir(ve)
        staging = _staging.make(self.host.tmp_dir, 'snap-rb-%s-' % ve)
        try:
            new = os.path.join(staging, 'private')
            self.build_private(source, new, meta)
            old = os.path.join(staging, 'old')
            os.rename(os.path.join(directory, 'private'), old)
            try:
                os.rename(new, os.path.join(directory, 'private'))
            except OSError:
                os.rename(old, os.path.join(directory, 'private'))
                raise
            _quota.remove_quota(self.host, meta, old)
        finally:
            _staging.discard(staging)

    def build_private(self, source, dest, meta):
        """A new, writable private area ``dest`` (upper and an empty work dir) with the files of ``source``:
        a writable snapshot where ``source`` is a subvolume, else a (reflink) copy of its upper dir."""
        idmap = meta.get('idmap') or {}
        if _quota.is_subvolume(source):
            _quota.snapshot(source, dest, readonly=False)
            remove_tree(os.path.join(dest, 'work'))
        else:
            _quota.make_private_area(self.host, dest, idmap.get('uid'), idmap.get('gid'))
            copy_tree(os.path.join(source, 'upper'), os.path.join(dest, 'upper'))
        os.mkdir(os.path.join(dest, 'work'), 0o755)
        if idmap:
            os.chown(os.path.join(dest, 'work'), idmap['uid'], idmap['gid'])

    def register(self, ve, old_meta, new_meta, manifest):
        """Write the VE's config and ve.json from ``new_meta``; lease its addresses (before anything is
        written: an address another VE took meanwhile fails here) and release those it no longer has;
        its disk quota on the new private area."""
        self.ops.claim_addresses(ve, new_meta.get('network') or [])
        self.ops.register(new_meta, manifest)
        keep = {a for iface in new_meta.get('network') or [] for a in addresses_of(iface)}
        gone = [a for iface in (old_meta or {}).get('network') or [] for a in addresses_of(iface) if a not in keep]
        if gone:
            self.ops.net.release(ve, gone)
        space = ((new_meta.get('limits') or {}).get('disk') or {}).get('space')
        if space is not None:
            _quota.apply_quota(self.host, new_meta, space)


class SnapshotTask(Snapshots):
    """What one ``osvirt.vz.ve_snapshot`` task does: decide, act, report."""

    def run(self, ve, snap, state, restart=False, require_owner=None):
        """Result dict of the module: changed, actions, snapshots, snapshot, restart_required, diff, msg."""
        ve = _validate.ve_name(ve)
        if snap is not None:
            snap = snapshot_name(snap)
        self.meta(ve, require_owner)
        before = [s['name'] for s in list_snapshots(self.host, ve, sizes=False)]
        result = {'changed': False, 'actions': [], 'restart_required': False, 'msg': ''}
        if state == 'present':
            result['changed'], _info = self.create(ve, snap, require_owner)
            if result['changed']:
                result['actions'].append('snapshot %s as %s' % (ve, snap))
        elif state == 'absent':
            result['changed'] = self.remove(ve, snap, require_owner)
            if result['changed']:
                result['actions'].append('remove snapshot %s of %s' % (snap, ve))
        elif state == 'rollback':
            done = self.rollback(ve, snap, restart, require_owner)
            result.update(changed=done['changed'], actions=done['actions'], restart_required=done['restart_required'])
            if done['restart_required']:
                result['msg'] = ('VE %s is %s: rolling it back to %s stops it; nothing was done (restart: true '
                                 'rolls it back and starts it again)' % (ve, done['state'], snap))
                result['warning'] = True
        elif state != 'listed':
            raise VzError('invalid state %r: use present, absent, rollback or listed' % (state,))
        snapshots = list_snapshots(self.host, ve)
        after = [s['name'] for s in snapshots]
        if self.check_mode and result['changed']:
            after = sorted(set(before) | {snap}) if state == 'present' else \
                [n for n in before if n != snap] if state == 'absent' else before
        result['snapshots'] = snapshots
        mine = [s for s in snapshots if s['name'] == snap]
        if mine:
            result['snapshot'] = mine[0]
        result['diff'] = {'before': {'ve': ve, 'snapshots': before},
                          'after': {'ve': ve, 'snapshots': after}}
        if state == 'rollback' and result['changed']:
            result['diff']['after']['rolled_back_to'] = snap
        if not result['msg']:
            result['msg'] = '; '.join(result['actions']) or 'nothing to do'
        return result
