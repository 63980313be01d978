# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The template store: immutable, versioned root filesystems shared by VEs.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Layout (under ``<vz_root>/templates``)::

    <name>/<version>/rootfs/          the published tree, owned by host ids, never changed
    <name>/<version>/manifest.json    name, version, parent, os, arch, packages, created, checksum
    <name>/<version>/idmap/<uid>-<gid>-<count>-f<format>/rootfs/
                                      the same tree shifted to an unprivileged id range (a cache,
                                      built once per range and shared by every VE on it; the
                                      format says which ids ``_idshift`` moves, so copies made
                                      by an older release are made again, at a new path)

A version is built in ``<vz_root>/.tmp`` and published by one rename, so a half-built template is
never visible. Versions are UTC time stamps, so they sort by build time and ``name`` alone means
the newest.
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import subprocess
import tempfile
import time

from . import _idshift, _staging, _validate
from ._errors import VzError
from ._fs import make_dirs, read_json, remove_tree, write_json, disk_usage
from ._locks import Lock


class TemplateStore:
    """Templates of one host."""

    def __init__(self, host):
        self.host = host
        self.root = host.templates_dir

    # -- lookup ---------------------------------------------------------------------------
    def version_dir(self, name, version):
        return os.path.join(self.root, _validate.template_name(name), _validate.template_version(version))

    def versions(self, name):
        """Published versions of ``name``, oldest first."""
        directory = os.path.join(self.root, _validate.template_name(name))
        try:
            entries = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(v for v in entries if _validate.TEMPLATE_VERSION_RE.fullmatch(v)
                      and os.path.isfile(os.path.join(directory, v, 'manifest.json')))

    def names(self):
        try:
            return sorted(n for n in os.listdir(self.root) if _validate.TEMPLATE_NAME_RE.fullmatch(n))
        except FileNotFoundError:
            return []

    def manifest(self, name, version):
        data = read_json(os.path.join(self.version_dir(name, version), 'manifest.json'))
        if data is None:
            raise VzError('template %s@%s does not exist on this host' % (name, version))
        return data

    def resolve(self, ref):
        """Turn ``name`` or ``name@version`` into the manifest of a published version."""
        name, version = _validate.template_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise VzError('template %s does not exist on this host (build it with osvirt.vz.template)' % name)
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise VzError('template %s has no version %s on this host (versions: %s)'
                          % (name, version, ', '.join(versions)))
        return self.manifest(name, version)

    def layers(self, manifest):
        """Manifests of a version and its parents, top layer first."""
        chain, seen = [manifest], set()
        while chain[-1].get('parent'):
            ref = chain[-1]['parent']
            if ref in seen:
                raise VzError('template %s@%s has a parent loop' % (manifest['name'], manifest['version']))
            seen.add(ref)
            chain.append(self.resolve(ref))
        return chain

    def lower_dirs(self, manifest, idmap=None, create=True):
        """The overlay lower directories of a version, top first, shifted to ``idmap`` if given."""
        dirs = []
        for layer in self.layers(manifest):
            base = self.version_dir(layer['name'], layer['version'])
            if idmap is None:
                dirs.append(os.path.join(base, 'rootfs'))
            else:
                dirs.append(self.shifted_rootfs(layer['name'], layer['version'], idmap, create))
        return dirs

    # -- unprivileged copies --------------------------------------------------------------
    def shifted_rootfs(self, name, version, idmap, create=True):
        """Path of the copy of a version owned by ``idmap``'s ids; built once under the template lock.

        The path carries ``SHIFT_FORMAT``: a copy an older release shifted (owners only, ACLs left
        pointing at host ids) is never used again; a VE configured on it sees a config change and
        moves to the new copy at its next start. The old copy stays (a running VE may still have
        it as a lower layer) until its version is removed.
        """
        base = self.version_dir(name, version)
        key = '%d-%d-%d-f%d' % (idmap.uid, idmap.gid, idmap.count, _idshift.SHIFT_FORMAT)
        target = os.path.join(base, 'idmap', key)
        rootfs = os.path.join(target, 'rootfs')
        if os.path.isdir(rootfs) or not create:
            return rootfs
        with Lock(self.host.locks_dir, 'template', name, 'shifting %s@%s to ids %s' % (name, version, key)):
            if os.path.isdir(rootfs):
                return rootfs
            make_dirs(os.path.join(base, 'idmap'), 0o711)
            staging = _staging.make(self.host.tmp_dir, 'shift-%s-%s-' % (name, version))
            try:
                os.chmod(staging, 0o711)
                _copy_tree(os.path.join(base, 'rootfs'), os.path.join(staging, 'rootfs'))
                _idshift.shift_tree(os.path.join(staging, 'rootfs'), idmap)   # every id: owners, ACLs, capabilities
                os.rename(staging, target)
            except BaseException:
                _staging.discard(staging)
                raise
            _staging.release(staging)
        return rootfs

    # -- building -------------------------------------------------------------------------
    def new_version(self, name):
        """A fresh version id (UTC build time) later than every existing version of ``name``."""
        existing = set(self.versions(name))
        stamp = time.time()
        while True:
            version = time.strftime('%Y%m%d-%H%M%S', time.gmtime(stamp))
            if version not in existing and (not existing or version > max(existing)):
                return version
            stamp += 1

    def publish(self, name, source, fill, if_absent=False):
        """Publish a new version of ``name`` whose tree ``fill(rootfs)`` makes; return its manifest.

        Under the template's lock, ``fill`` gets an empty ``rootfs`` in a staging directory and
        returns the builder's part of the manifest (``_template_build.build`` chooses the builder);
        the store adds name, version, created, arch, source, checksum and size and publishes by one
        rename. Whatever a failed ``fill`` leaves behind is removed with the staging directory.
        With ``if_absent``, a version published by a concurrent build while this one waited for
        the template lock counts: nothing is built and None is returned.
        """
        with Lock(self.host.locks_dir, 'template', name, 'building template %s' % name):
            _staging.sweep(self.host.tmp_dir)   # what a killed build left: its work directory, mounts below it
            _remove_if_empty(os.path.join(self.root, name))   # and the name of a first build that never published
            if if_absent and self.versions(name):
                return None
            version = self.new_version(name)
            staging = _staging.make(self.host.tmp_dir, 'build-%s-' % name)
            try:
                os.chmod(staging, 0o711)
                rootfs = os.path.join(staging, 'rootfs')
                os.mkdir(rootfs, 0o755)
                manifest = fill(rootfs)
                manifest.update({
                    'name': name,
                    'version': version,
                    'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                    'arch': platform.machine(),
                    'source': source,
                    'checksum': 'sha256:' + tree_checksum(rootfs),
                    'size': disk_usage(rootfs),
                })
                manifest.setdefault('parent', None)
                write_json(os.path.join(staging, 'manifest.json'), manifest)
                make_dirs(os.path.join(self.root, name), 0o711)   # the name appears with its first version
                os.rename(staging, os.path.join(self.root, name, version))
            except BaseException:
                _staging.discard(staging)
                raise
            _staging.release(staging)
        return manifest

    # -- removal --------------------------------------------------------------------------
    def remove_version(self, name, version):
        """Unpublish a version: rename it away first (atomic), then delete the files."""
        target = self.version_dir(name, version)
        trash = _staging.make(self.host.tmp_dir, 'trash-%s-%s-' % (name, version))
        try:
            os.rename(target, os.path.join(trash, 'v'))
        finally:
            _staging.discard(trash)
        try:  # the last version gone: the template's name goes too
            os.rmdir(os.path.dirname(target))
        except OSError:
            pass

    # -- who uses what (template_info, removal, pruning) ----------------------------------
    def ve_templates(self):
        """{VE name: its ve.json} for every VE of the host (read-only, no LXC call)."""
        ves_dir = self.host.ves_dir
        try:
            entries = sorted(os.listdir(ves_dir))
        except FileNotFoundError:
            return {}
        result = {}
        for ve in entries:
            if not _validate.VE_NAME_RE.fullmatch(ve):
                continue
            meta = read_json(os.path.join(ves_dir, ve, 've.json'))
            if isinstance(meta, dict):
                result[ve] = meta
        return result

    def users(self, ves=None):
        """Which VEs use which versions: {'name@version': [VE, ...]}.

        A VE uses every layer of its template (the VEs of an app template use its OS template too).
        """
        users = {}
        for ve, meta in sorted((ves if ves is not None else self.ve_templates()).items()):
            for ref in meta.get('layers') or ([meta['template']] if meta.get('template') else []):
                users.setdefault(ref, []).append(ve)
        return users

    def children(self):
        """Versions other published versions stack on: {'name@version': ['child@version', ...]}."""
        children = {}
        for name in self.names():
            for version in self.versions(name):
                parent = (read_json(os.path.join(self.root, name, version, 'manifest.json')) or {}).get('parent')
                if parent:
                    children.setdefault(parent, []).append('%s@%s' % (name, version))
        return children

    def in_use(self, name, versions):
        """Why versions of ``name`` must stay: {version: ['VE web1', 'template x@v', ...]} for those in use."""
        users, children = self.users(), self.children()
        reasons = {}
        for version in versions:
            ref = '%s@%s' % (name, version)
            why = ['VE %s' % ve for ve in users.get(ref, [])] + ['template %s' % c for c in children.get(ref, [])]
            if why:
                reasons[version] = why
        return reasons

    def remove_unused(self, name, versions, check_mode=False):
        """Remove ``versions`` of ``name`` unless one is in use; then nothing is removed and the error names the users.

        The check and the removal happen under the template lock, so a concurrent prune or copy cannot interleave.
        """
        def check():
            users = self.in_use(name, versions)
            if users:
                raise VzError('template %s is in use: %s' % (name, '; '.join(
                    '%s@%s by %s' % (name, v, ', '.join(why)) for v, why in sorted(users.items()))), users=users)
        if check_mode:
            check()
            return list(versions)
        with Lock(self.host.locks_dir, 'template', name, 'removing template %s' % name):
            check()
            for version in versions:
                self.remove_version(name, version)
        return list(versions)

    def prune_plan(self, name, keep, planned=()):
        """Versions of ``name`` that pruning to the newest ``keep`` removes, and older ones kept because in use.

        Never the newest version, never one a VE or another template version uses. ``planned`` are
        versions a check-mode run would have built first. Returns ``(removable, kept_in_use)``;
        ``kept_in_use`` maps a version to why it stays.
        """
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise VzError('prune keep must be a whole number of at least 1 (the newest version always stays), '
                          'got %r' % (keep,))
        older = sorted(set(self.versions(name)) | set(planned))[:-keep]
        kept = self.in_use(name, older)
        return [v for v in older if v not in kept and v not in planned], kept

    def prune(self, name, keep, check_mode=False, planned=()):
        """Remove the versions ``prune_plan`` names, under the template lock; returns the plan."""
        if check_mode:
            return self.prune_plan(name, keep, planned)
        with Lock(self.host.locks_dir, 'template', name, 'pruning template %s' % name):
            removable, kept = self.prune_plan(name, keep)
            for version in removable:
                self.remove_version(name, version)
        return removable, kept

    # -- template_info ----------------------------------------------------------------------
    def summary(self, names=None, usage=True):
        """Templates, versions, their users, outdated VEs and disk use (shared vs private).

        ``names`` limits the report to these templates (and VEs on them). With ``usage`` the shifted
        copies and private areas are measured (a walk of each); template sizes come from manifests.
        """
        ves = self.ve_templates()
        users, children = self.users(ves), self.children()
        wanted = set(names) if names else None
        templates, newest = [], {}
        disk = {'template_bytes': 0, 'shifted_bytes': 0 if usage else None, 'private_bytes': 0 if usage else None}
        for name in self.names():
            if wanted is not None and name not in wanted:
                continue
            versions = self.versions(name)
            if not versions:
                continue
            newest[name] = versions[-1]
            entries = []
            for version in versions:
                manifest = self.manifest(name, version)
                ref = '%s@%s' % (name, version)
                idmap_dir = os.path.join(self.version_dir(name, version), 'idmap')
                try:
                    idmaps = sorted(os.listdir(idmap_dir))
                except FileNotFoundError:
                    idmaps = []
                entry = {
                    'version': version, 'ref': ref, 'newest': version == versions[-1],
                    'created': manifest.get('created'), 'size': manifest.get('size'),
                    'checksum': manifest.get('checksum'), 'parent': manifest.get('parent'),
                    'os': manifest.get('os'), 'arch': manifest.get('arch'),
                    'source': (manifest.get('source') or {}).get('type'),
                    'packages': len(manifest.get('packages') or []),
                    'ves': users.get(ref, []), 'children': children.get(ref, []),
                    'idmaps': idmaps, 'shifted_bytes': None,
                }
                entry['in_use'] = bool(entry['ves'] or entry['children'])
                disk['template_bytes'] += manifest.get('size') or 0
                if usage:
                    entry['shifted_bytes'] = sum(disk_usage(os.path.join(idmap_dir, key)) for key in idmaps)
                    disk['shifted_bytes'] += entry['shifted_bytes']
                entries.append(entry)
            templates.append({'name': name, 'newest': versions[-1], 'versions': entries,
                              'ves': sorted({ve for e in entries for ve in e['ves']})})
        report_ves, outdated = [], []
        for ve, meta in sorted(ves.items()):
            tname, _sep, version = (meta.get('template') or '').partition('@')
            if wanted is not None and tname not in wanted:
                continue
            item = {'name': ve, 'template': meta.get('template'), 'template_name': tname,
                    'template_version': version or None, 'newest': newest.get(tname),
                    'outdated': bool(newest.get(tname)) and version != newest.get(tname),
                    'private_bytes': None}
            if usage:
                item['private_bytes'] = disk_usage(os.path.join(self.host.ves_dir, ve, 'private'))
                disk['private_bytes'] += item['private_bytes']
            report_ves.append(item)
            if item['outdated']:
                outdated.append({'name': ve, 'template': item['template'],
                                 'newest': '%s@%s' % (tname, newest[tname])})
        disk['shared_bytes'] = disk['template_bytes'] + (disk['shifted_bytes'] or 0)
        disk['ves'] = len(report_ves)
        return {'templates': templates, 'ves': report_ves, 'outdated': outdated, 'disk': disk}

    # -- copies from another host ---------------------------------------------------------
    def copy_plan(self, name, remote, version=None):
        """Versions to copy from ``remote`` (an ``_rsync.Remote``) so ``name@version`` is here.

        ``version`` None means the newest version on the remote host. Returns ``(version, chain)``:
        ``chain`` lists ``(name, version, manifest)`` of the missing versions, parents first; empty
        when the version is here already. Reads only: the manifests go to a temporary directory.
        """
        name = _validate.template_name(name)
        remote_dir = '%s/templates/%s' % (remote.vz_root, name)
        if version is None:
            remote_versions = sorted(v for v in self._remote_list(remote, remote_dir, name)
                                     if _validate.TEMPLATE_VERSION_RE.fullmatch(v))
            if not remote_versions:
                raise VzError('template %s has no version on %s under %s' % (name, remote.host, remote.vz_root))
            version = remote_versions[-1]
        version = _validate.template_version(version)
        chain, ref, seen = [], '%s@%s' % (name, version), set()
        while ref:
            rname, rversion = _validate.template_ref(ref)
            if rversion is None or ref in seen:
                raise VzError('template %s on %s has a bad parent chain at %s' % (name, remote.host, ref))
            seen.add(ref)
            if rversion in self.versions(rname):
                break
            manifest = self._remote_manifest(remote, rname, rversion)
            chain.append((rname, rversion, manifest))
            ref = manifest.get('parent')
        return version, list(reversed(chain))

    def _remote_list(self, remote, path, name):
        try:
            return remote.list_dir(path, 'listing template %s on %s' % (name, remote.host))
        except VzError as exc:
            if exc.details.get('missing'):
                raise VzError('template %s does not exist on %s (no %s)' % (name, remote.host, path))
            raise

    def _remote_manifest(self, remote, name, version):
        """The manifest of ``name@version`` on ``remote``, fetched into a temporary directory."""
        scratch = tempfile.mkdtemp(prefix='vz-manifest-')
        try:
            try:
                remote.pull('%s/templates/%s/%s' % (remote.vz_root, name, version), scratch,
                            'reading manifest of %s@%s on %s' % (name, version, remote.host),
                            excludes=['/rootfs/', '/idmap/'])
            except VzError as exc:
                if exc.details.get('missing'):
                    raise VzError('template %s@%s does not exist on %s' % (name, version, remote.host))
                raise
            manifest = read_json(os.path.join(scratch, 'manifest.json'))
        finally:
            remove_tree(scratch)
        if not isinstance(manifest, dict) or manifest.get('name') != name or manifest.get('version') != version:
            raise VzError('template %s@%s on %s has no valid manifest.json' % (name, version, remote.host))
        return manifest

    def copy_version(self, name, version, remote):
        """Pull ``name@version`` from ``remote`` into .tmp, verify its checksum, publish it by rename.

        The copy is the same immutable version, so it keeps its version id. On a checksum mismatch
        nothing is published and the staging directory is removed.
        """
        remote_path = '%s/templates/%s/%s' % (remote.vz_root, name, version)
        staging = self.copy_staging(name, version)
        try:
            remote.pull(remote_path, staging, 'copying template %s@%s from %s' % (name, version, remote.host),
                        excludes=['/idmap/'])
        except BaseException:
            self.discard_copy(name, staging)
            raise
        return self.publish_copy(name, version, staging, remote.host)

    def copy_staging(self, name, version):
        """A new staging directory in .tmp for a copy of ``name@version`` that arrives from another host."""
        return _staging.make(self.host.tmp_dir, 'copy-%s-%s-' % (name, version))

    def discard_copy(self, name, staging):
        """Remove a copy that will not be published, and the template directory a first copy made."""
        _staging.discard(staging)
        try:  # a first copy that failed leaves no empty template directory behind
            os.rmdir(os.path.join(self.root, name))
        except OSError:
            pass

    def publish_copy(self, name, version, staging, origin):
        """Verify the copy of ``name@version`` in ``staging`` (from host ``origin``) and publish it by rename.

        Both a pull (``copy_version``) and a push from another host (migration) end here. On any
        mismatch nothing is published; the staging directory is removed in every case.
        """
        try:
            os.chmod(staging, 0o711)
            manifest = read_json(os.path.join(staging, 'manifest.json'))
            if not isinstance(manifest, dict) or manifest.get('name') != name or manifest.get('version') != version:
                raise VzError('the copy of template %s@%s from %s has no valid manifest.json; nothing published'
                              % (name, version, origin))
            rootfs = os.path.join(staging, 'rootfs')
            if not os.path.isdir(rootfs) or os.path.islink(rootfs):
                raise VzError('the copy of template %s@%s from %s has no rootfs; nothing published'
                              % (name, version, origin))
            actual = 'sha256:' + tree_checksum(rootfs)
            if actual != manifest.get('checksum'):
                raise VzError('the copy of template %s@%s from %s does not match its manifest checksum (manifest %s, '
                              'copy %s): the source tree was changed or damaged; nothing published'
                              % (name, version, origin, manifest.get('checksum'), actual),
                              expected=manifest.get('checksum'), actual=actual)
            with Lock(self.host.locks_dir, 'template', name, 'copying template %s@%s' % (name, version)):
                if version not in self.versions(name):
                    make_dirs(os.path.join(self.root, name), 0o711)   # made only now: a kill leaves none
                    os.rename(staging, os.path.join(self.root, name, version))
        except BaseException:
            self.discard_copy(name, staging)
            raise
        finally:
            _staging.discard(staging)
        return manifest

    def copy_from(self, name, remote, version=None, check_mode=False):
        """Make ``name@version`` (default: the newest on ``remote``) present here, copying its missing chain.

        Returns the ``(name, version)`` pairs copied (or that check mode would copy), parents first. A version
        that is here already needs no connection at all.
        """
        name = _validate.template_name(name)
        if version is not None and _validate.template_version(version) in self.versions(name):
            return []
        version, chain = self.copy_plan(name, remote, version)
        if not check_mode:
            self.host.ensure_layout()
            for cname, cversion, _manifest in chain:
                self.copy_version(cname, cversion, remote)
        return [(cname, cversion) for cname, cversion, _manifest in chain]


def _remove_if_empty(path):
    try:
        os.rmdir(path)
    except OSError:
        pass   # missing, or holds versions


def _copy_tree(src, dst):
    """Copy a tree with owners, modes, links, xattrs; reflinks where the filesystem has them."""
    proc = subprocess.run(['cp', '-a', '--reflink=auto', '--', src, dst], capture_output=True, check=False)
    if proc.returncode != 0:
        raise VzError('copying %s failed: %s' % (src, proc.stderr.decode('utf-8', 'replace').strip()))


def tree_checksum(root):
    """sha256 over a canonical listing of a tree: paths, types, modes, owners, link targets, contents."""
    digest = hashlib.sha256()
    for current, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for entry in sorted(dirnames + filenames):
            path = os.path.join(current, entry)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            digest.update(('%s\0%o\0%d\0%d\0' % (rel, st.st_mode, st.st_uid, st.st_gid)).encode('utf-8', 'surrogateescape'))
            if stat.S_ISLNK(st.st_mode):
                digest.update(os.readlink(path).encode('utf-8', 'surrogateescape'))
            elif stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b''):
                        digest.update(chunk)
            digest.update(b'\n')
    return digest.hexdigest()
