# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Template builders: debootstrap, tarball, a VE's merged tree, and application layers.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

``build`` here is the entry point: it checks the source, picks the builder, and hands it to
``TemplateStore.publish`` (``_templates.py``), which makes a staging directory in ``<vz_root>/.tmp``,
calls the builder with the empty ``<staging>/rootfs`` and the task's ``source`` dict, adds the
common manifest fields (name, version, created, arch, checksum, size) and publishes by rename.
The store never imports this file: building needs VEs (``_ves``), which need the store.
A builder fills ``rootfs`` with files owned by HOST ids (root = 0) and returns the
builder-specific part of the manifest (os, release, init, packages, parent). Whatever a builder
leaves behind on failure is inside the staging directory, which ``build`` removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import urllib.parse

from . import _validate
from ._cgroups import CgroupTree
from ._engine.client import LxcClient
from ._engine.config import LxcConfig
from ._errors import VzError
from ._fs import read_json, remove_tree
from ._host import IdMap
from ._idshift import shift_tree
from ._locks import Lock
from ._template_busybox import build_busybox
from ._ve_config import is_owned, render_config
from ._ve_identity import strip_identity
from ._ve_ops import log_tail

# What every debootstrap template gets besides the variant's own packages: an init that boots
# in a VE, the tools to see the network LXC configures, and python3 so that Ansible runs inside.
DEBOOTSTRAP_PACKAGES = ('systemd', 'systemd-sysv', 'iproute2', 'ifupdown', 'python3', 'ca-certificates')
DEFAULT_SUITE = 'bookworm'
DEFAULT_VARIANT = 'minbase'
DEFAULT_MIRROR = 'http://deb.debian.org/debian'
# systemd halts on SIGRTMIN+3 and reboots on SIGINT (ctrl-alt-del); LXC sends these on stop/reboot.
SYSTEMD_INIT = {'system': 'systemd', 'halt_signal': 'SIGRTMIN+3', 'reboot_signal': 'SIGINT'}

_SUITE_RE = re.compile(r'[a-z][a-z0-9.-]{0,63}')
_PACKAGE_RE = re.compile(r'[a-z0-9][a-z0-9+.-]{0,127}')
_COMPONENT_RE = re.compile(r'[a-z][a-z0-9-]{0,63}')
_SHA256_RE = re.compile(r'[0-9a-f]{64}')
_VARIANTS = ('minbase', 'buildd', '-')
_MODE_RE = re.compile(r'0?[0-7]{3,4}')
# name prefix of the throw-away VEs that layer builds run in (under ves/, where LXC finds them)
BUILD_VE_PREFIX = 'tbuild-'

_INTERFACES = """\
# osvirt.vz: LXC configures the VE's interfaces and addresses (lxc.net.*) before init starts,
# so ifupdown only brings up the loopback here.
auto lo
iface lo inet loopback

source /etc/network/interfaces.d/*
"""

_SSH_KEYGEN_UNIT = """\
# osvirt.vz: templates carry no SSH host keys; each VE makes its own before sshd starts.
[Unit]
Description=SSH host keys of this VE
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
"""


# -- shared helpers ------------------------------------------------------------------------------
def _run(argv, what, timeout=None, env=None, tail=5):
    """Run ``argv`` (a list) on the host; raise one VzError naming ``what`` with rc and stderr tail."""
    try:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=env)
    except FileNotFoundError:
        raise VzError('%s: %s is not installed on this host' % (what, argv[0]))
    except subprocess.TimeoutExpired:
        raise VzError('%s: %s did not finish within %d seconds' % (what, argv[0], timeout))
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode('utf-8', 'replace').strip().splitlines()
        raise VzError('%s failed (rc=%d): %s' % (what, proc.returncode, ' | '.join(err[-tail:]) or 'no output'),
                      cmd=argv, rc=proc.returncode)
    return proc.stdout.decode('utf-8', 'replace')


def dpkg_packages(rootfs):
    """Packages installed in a Debian tree as [{'name', 'version'}], read from its dpkg database."""
    admindir = os.path.join(rootfs, 'var', 'lib', 'dpkg')
    if not os.path.isfile(os.path.join(admindir, 'status')):
        return []
    out = _run(['dpkg-query', '--admindir=' + admindir, '-W', '-f=${db:Status-Abbrev}\t${Package}\t${Version}\n'],
               'listing the packages of %s' % rootfs)
    return parse_dpkg_list(out)


def parse_dpkg_list(text):
    """Parse ``<status>\\t<package>\\t<version>`` lines, keeping installed packages only."""
    packages = []
    for line in text.splitlines():
        fields = line.split('\t')
        if len(fields) == 3 and fields[0].startswith('ii'):
            packages.append({'name': fields[1], 'version': fields[2]})
        elif len(fields) == 2:
            packages.append({'name': fields[0], 'version': fields[1]})
    return sorted(packages, key=lambda p: p['name'])


def os_release(rootfs):
    """(ID, VERSION_ID) of a tree from its etc/os-release (or usr/lib/os-release), without following links out."""
    for rel in ('etc/os-release', 'usr/lib/os-release'):
        path = os.path.join(rootfs, rel)
        if os.path.islink(path):
            target = os.readlink(path)
            path = os.path.join(rootfs, os.path.normpath(os.path.join(os.path.dirname(rel), target)).lstrip('/')
                                if not target.startswith('/') else target.lstrip('/'))
        if not os.path.realpath(path).startswith(os.path.realpath(rootfs) + '/'):
            continue
        try:
            with open(path, 'r', encoding='utf-8', errors='replace') as handle:
                values = dict(line.split('=', 1) for line in handle.read().splitlines() if '=' in line)
        except OSError:
            continue
        return (values.get('ID', '').strip('"\'') or None, values.get('VERSION_ID', '').strip('"\'') or None)
    return None, None


def detect_init(rootfs):
    """The halt/reboot signals of the tree's init: systemd, busybox, or LXC's defaults ({})."""
    init = os.path.join(rootfs, 'sbin', 'init')
    seen = 0
    while os.path.islink(init) and seen < 10:
        target = os.readlink(init)
        base = rootfs if target.startswith('/') else os.path.dirname(init)
        init = os.path.normpath(os.path.join(base, target.lstrip('/') if target.startswith('/') else target))
        if not init.startswith(os.path.realpath(rootfs) + '/') and not init.startswith(rootfs + '/'):
            return {}
        seen += 1
    name = os.path.basename(init)
    if name == 'systemd':
        return dict(SYSTEMD_INIT)
    if name == 'busybox':
        return {'system': 'busybox', 'halt_signal': 'SIGUSR1', 'reboot_signal': 'SIGTERM'}
    return {}


# -- debootstrap ------------------------------------------------------------------------------------
def default_mirror(sources_files=('/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list')):
    """The Debian mirror this host's apt uses (deb822 or one-line format); deb.debian.org otherwise."""
    for path in sources_files:
        try:
            with open(path, 'r', encoding='utf-8') as handle:
                text = handle.read()
        except OSError:
            continue
        mirror = mirror_from_sources(text)
        if mirror:
            return mirror
    return DEFAULT_MIRROR


def mirror_from_sources(text):
    """First http(s) URI of a ``deb`` source that is not a security archive, from apt sources text."""
    for stanza in re.split(r'\n\s*\n', text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith('#') or ':' not in line or line[:1].isspace():
                continue
            key, _sep, value = line.partition(':')
            fields[key.strip().lower()] = value.strip()
        if 'deb' in fields.get('types', '').split():
            for uri in fields.get('uris', '').split():
                if uri.startswith(('http://', 'https://')) and 'security' not in uri:
                    return uri.rstrip('/')
    for line in text.splitlines():
        words = [w for w in line.split() if not w.startswith('[')]
        if len(words) >= 3 and words[0] == 'deb' and words[1].startswith(('http://', 'https://')) \
                and 'security' not in words[1]:
            return words[1].rstrip('/')
    return None


def _debootstrap_options(source):
    suite = source.get('suite') or DEFAULT_SUITE
    if not _SUITE_RE.fullmatch(suite):
        raise VzError('invalid debootstrap suite %r: use a Debian suite or code name such as bookworm' % suite)
    variant = source.get('variant') or DEFAULT_VARIANT
    if variant not in _VARIANTS:
        raise VzError('invalid debootstrap variant %r (use one of %s)' % (variant, ', '.join(_VARIANTS)))
    mirror = source.get('mirror') or default_mirror()
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme not in ('http', 'https', 'file') or _validate._PATH_FORBIDDEN.search(mirror.replace(':', '')):
        raise VzError('invalid mirror %r: use an http://, https:// or file:// URL of a Debian archive' % mirror)
    components = list(source.get('components') or ['main'])
    for component in components:
        if not isinstance(component, str) or not _COMPONENT_RE.fullmatch(component):
            raise VzError('invalid archive component %r' % (component,))
    packages = list(DEBOOTSTRAP_PACKAGES)
    for package in source.get('packages') or []:
        if not isinstance(package, str) or not _PACKAGE_RE.fullmatch(package):
            raise VzError('invalid package name %r' % (package,))
        if package not in packages:
            packages.append(package)
    cache = source.get('cache_dir')
    if cache is not None:
        cache = _validate.host_path(cache, 'debootstrap cache_dir', must_exist=False)
    return suite, variant, mirror.rstrip('/'), components, packages, cache


def validate_source(source, store=None):
    """Check a source dict before anything is built (also in check mode); raise one clear VzError.

    With ``store``, what the source names must exist there too (the VE, the base template).
    """
    kind = source.get('type')
    if kind == 'debootstrap':
        _debootstrap_options(source)
    elif kind == 'tarball':
        _tarball_options(source)
    elif kind == 've':
        name = _validate.ve_name(source.get('ve'))
        if store is not None and not os.path.isfile(os.path.join(store.host.ve_dir(name), 've.json')):
            raise VzError('VE %s does not exist on this host (or is not managed by osvirt.vz)' % name)
    elif kind == 'layer':
        base = _layer_options(source)[0]
        if store is not None:
            store.resolve(base)


def build_debootstrap(store, rootfs, source):
    """A Debian tree from a mirror with debootstrap, made ready to boot with systemd in an unprivileged VE."""
    suite, variant, mirror, components, packages, cache = _debootstrap_options(source)
    argv = ['debootstrap', '--variant=' + variant, '--components=' + ','.join(components),
            '--include=' + ','.join(packages)]
    if cache:
        os.makedirs(cache, 0o755, exist_ok=True)
        argv.append('--cache-dir=' + cache)
    argv += [suite, rootfs, mirror]
    try:
        _run(argv, 'debootstrap of suite %s from %s' % (suite, mirror), timeout=3600)
    except VzError as exc:
        log = os.path.join(rootfs, 'debootstrap', 'debootstrap.log')
        hint = _debootstrap_hint(log)
        raise VzError('%s%s' % (exc, ('; ' + hint) if hint else ''), **exc.details)
    prepare_debian_tree(rootfs, mirror, suite, components)
    os_id, release = os_release(rootfs)
    return {'os': os_id or 'debian', 'release': release or suite, 'suite': suite, 'parent': None,
            'packages': dpkg_packages(rootfs), 'init': detect_init(rootfs) or dict(SYSTEMD_INIT)}


def _debootstrap_hint(log):
    try:
        with open(log, 'r', encoding='utf-8', errors='replace') as handle:
            lines = [line.strip() for line in handle.read().splitlines() if line.startswith(('E:', 'W: Failure'))]
    except OSError:
        return ''
    return lines[-1] if lines else ''


def prepare_debian_tree(rootfs, mirror, suite, components):
    """Make a fresh Debian tree a template: nothing of the build host, nothing per machine, no caches."""
    def write(rel, text, mode=0o644):
        path = os.path.join(rootfs, rel)
        if os.path.islink(path):
            os.unlink(path)
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)
        os.chmod(path, mode)

    # each VE gets its own machine id at first boot (systemd fills an empty file)
    write('etc/machine-id', '', 0o444)
    dbus_id = os.path.join(rootfs, 'var/lib/dbus/machine-id')
    if os.path.lexists(dbus_id):
        os.unlink(dbus_id)
    # the hostname is the VE's (lxc.uts.name): no /etc/hostname of the build host
    if os.path.lexists(os.path.join(rootfs, 'etc/hostname')):
        os.unlink(os.path.join(rootfs, 'etc/hostname'))
    write('etc/hosts', '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n')
    write('etc/resolv.conf', '')
    write('etc/network/interfaces', _INTERFACES)
    write('etc/apt/sources.list', 'deb %s %s %s\n' % (mirror, suite, ' '.join(components)))
    # systemd-firstboot would prompt on the console of a VE whose machine id is empty
    os.makedirs(os.path.join(rootfs, 'etc/systemd/system'), 0o755, exist_ok=True)
    mask = os.path.join(rootfs, 'etc/systemd/system/systemd-firstboot.service')
    if not os.path.lexists(mask):
        os.symlink('/dev/null', mask)
    # SSH host keys are per VE: none in the template, made at the VE's first boot
    if os.path.exists(os.path.join(rootfs, 'usr/sbin/sshd')):
        sshdir = os.path.join(rootfs, 'etc/ssh')
        for entry in os.listdir(sshdir):
            if entry.startswith('ssh_host_'):
                os.unlink(os.path.join(sshdir, entry))
        write('etc/systemd/system/osvirt-ssh-hostkeys.service', _SSH_KEYGEN_UNIT)
        os.makedirs(os.path.join(rootfs, 'etc/systemd/system/ssh.service.wants'), 0o755, exist_ok=True)
        link = os.path.join(rootfs, 'etc/systemd/system/ssh.service.wants/osvirt-ssh-hostkeys.service')
        if not os.path.lexists(link):
            os.symlink('../osvirt-ssh-hostkeys.service', link)
    # LXC mounts a fresh /dev in every VE (lxc.autodev): the nodes debootstrap made are never seen
    devdir = os.path.join(rootfs, 'dev')
    for entry in os.listdir(devdir) if os.path.isdir(devdir) else []:
        remove_tree(os.path.join(devdir, entry))
    for rel in ('var/cache/apt/archives', 'var/lib/apt/lists'):
        directory = os.path.join(rootfs, rel)
        for entry in os.listdir(directory) if os.path.isdir(directory) else []:
            path = os.path.join(directory, entry)
            if entry not in ('partial', 'lock') and not os.path.isdir(path):
                os.unlink(path)
    for rel in ('var/cache/apt/pkgcache.bin', 'var/cache/apt/srcpkgcache.bin'):
        if os.path.lexists(os.path.join(rootfs, rel)):
            os.unlink(os.path.join(rootfs, rel))


# -- tarball ----------------------------------------------------------------------------------------
def _tarball_options(source):
    url = source.get('url')
    if not isinstance(url, str) or not url:
        raise VzError('a tarball source needs url: a local path or an http(s):// or file:// URL')
    sha = source.get('sha256')
    if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha.lower().replace('sha256:', '')):
        raise VzError('a tarball source needs sha256: the 64 hex digits of the tarball\'s checksum')
    parsed = urllib.parse.urlparse(url)
    if url.startswith('/'):
        path = url
    elif parsed.scheme == 'file':
        path = urllib.parse.unquote(parsed.path)
    elif parsed.scheme in ('http', 'https'):
        path = None
    else:
        raise VzError('tarball url %r: use a local path or an http://, https:// or file:// URL' % url)
    if path is not None and not os.path.isfile(path):
        raise VzError('tarball %s does not exist on the host' % path)
    return url, path, sha.lower().replace('sha256:', '')


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def build_tarball(store, rootfs, source):
    """A tree from a root file system tarball whose sha256 the operator gives; extracted safely."""
    url, path, expected = _tarball_options(source)
    if path is None:  # download into the staging directory, next to rootfs
        # imported here: the engine's other users (bench, lab tools) run without Ansible installed
        from ansible.module_utils.urls import open_url  # pylint: disable=import-outside-toplevel
        path = os.path.join(os.path.dirname(rootfs), 'download.tar')
        try:
            with open_url(url, timeout=60) as response, open(path, 'wb') as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except Exception as exc:  # pylint: disable=broad-except  # urllib, ssl and http errors alike
            raise VzError('downloading tarball %s failed: %s' % (url, exc))
    actual = file_sha256(path)
    if actual != expected:
        raise VzError('tarball %s has sha256 %s, but the task expects %s; nothing was extracted'
                      % (url, actual, expected))
    safe_extract(path, rootfs)
    if os.path.exists(os.path.join(os.path.dirname(rootfs), 'download.tar')):
        os.unlink(os.path.join(os.path.dirname(rootfs), 'download.tar'))
    os_id, release = os_release(rootfs)
    return {'os': os_id or 'unknown', 'release': release, 'parent': None, 'packages': dpkg_packages(rootfs),
            'init': detect_init(rootfs), 'sha256': expected}


class UnsafeTarball(VzError):
    """A tarball member that could write outside the tree, or a device node."""


def member_path(name):
    """The normalized relative path of a member name; refuses absolute names and '..'."""
    parts = [p for p in name.split('/') if p not in ('', '.')]
    if name.startswith('/'):
        raise UnsafeTarball('member %r has an absolute path' % name)
    if '..' in parts:
        raise UnsafeTarball('member %r contains ".."' % name)
    return '/'.join(parts)


def link_stays_inside(member, target):
    """True when symlink ``member`` -> ``target`` resolves inside the tree, read as the VE reads it.

    An absolute target starts at the tree's root (that is where the VE sees it); a relative one
    starts at the link's directory. Climbing above the root with '..' escapes.
    """
    if target.startswith('/'):
        parts = []
    else:
        parts = member.split('/')[:-1]
    for part in target.split('/'):
        if part in ('', '.'):
            continue
        if part == '..':
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    return True


def check_member(info, symlinks):
    """Refuse a member that is unsafe to extract; ``symlinks`` holds symlink members seen so far."""
    rel = member_path(info.name)
    if info.ischr() or info.isblk():
        raise UnsafeTarball('member %r is a device node (%s %d:%d); templates may not carry device nodes'
                            % (info.name, 'character' if info.ischr() else 'block', info.devmajor, info.devminor))
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk() or info.isfifo()):
        raise UnsafeTarball('member %r has an unsupported type %r' % (info.name, info.type))
    prefix = rel.split('/')
    for depth in range(1, len(prefix)):
        if '/'.join(prefix[:depth]) in symlinks:
            raise UnsafeTarball('member %r lies under the symbolic link %r; writing it would follow the link'
                                % (info.name, '/'.join(prefix[:depth])))
    if info.issym() and not link_stays_inside(rel, info.linkname):
        raise UnsafeTarball('member %r is a symbolic link to %r, which leads outside the root file system'
                            % (info.name, info.linkname))
    if info.islnk():
        try:
            target = member_path(info.linkname)
        except UnsafeTarball:
            raise UnsafeTarball('member %r is a hard link to %r, outside the root file system'
                                % (info.name, info.linkname))
        if any('/'.join(target.split('/')[:d]) in symlinks for d in range(1, target.count('/') + 2)):
            raise UnsafeTarball('member %r is a hard link through the symbolic link to %r' % (info.name, info.linkname))
    return rel


def safe_extract(path, rootfs):
    """Extract a tarball into ``rootfs`` keeping owners (numeric) and modes, refusing unsafe members.

    Every member is checked before anything is extracted, so a refused tarball leaves ``rootfs``
    empty: one error names the first bad member.
    """
    try:
        archive = tarfile.open(path, 'r:*')
    except (tarfile.TarError, OSError) as exc:
        raise VzError('%s is not a readable tarball: %s' % (path, exc))
    with archive:
        members, symlinks = [], set()
        try:
            for info in archive:
                rel = check_member(info, symlinks)
                if info.issym():
                    symlinks.add(rel)
                elif rel in symlinks:  # a later member of the same name replaces the link
                    raise UnsafeTarball('member %r would replace the symbolic link of the same name' % info.name)
                if rel:
                    info.name = rel
                    members.append(info)
        except tarfile.TarError as exc:
            raise VzError('%s is a damaged tarball: %s' % (path, exc))
        kwargs = {'filter': 'fully_trusted'} if hasattr(tarfile, 'data_filter') else {}
        for info in members:  # our own checks above replace tarfile's filters
            archive.extract(info, rootfs, set_attrs=True, numeric_owner=True, **kwargs)
        # directories are created before their contents get modes: set them again at the end
        for info in members:
            if info.isdir():
                target = os.path.join(rootfs, info.name)
                os.lchown(target, info.uid, info.gid)
                os.chmod(target, info.mode)


# -- from a VE ----------------------------------------------------------------------------------------
def _mount_merged(lowers, mountpoint, userxattr):
    """Mount a read-only overlay of ``lowers`` (top first) at ``mountpoint``: the VE's merged view."""
    options = 'ro,lowerdir=' + ':'.join(lowers)
    if userxattr:
        options += ',userxattr'
    _run(['mount', '-t', 'overlay', '-o', options, 'osvirt-merge', mountpoint], 'mounting the merged view')


def build_from_ve(store, rootfs, source):
    """A flat template of a stopped VE: its template layers with its private area on top, host ids."""
    name = _validate.ve_name(source.get('ve'))
    host = store.host
    meta = read_json(os.path.join(host.ve_dir(name), 've.json'))
    if not isinstance(meta, dict):
        raise VzError('VE %s does not exist on this host (or is not managed by osvirt.vz)' % name)
    client = LxcClient(host.ves_dir)
    with Lock(host.locks_dir, 've', name, 'copying VE %s into a template' % name):
        state = client.state(name)['state']
        if state not in ('stopped', 'absent'):
            raise VzError('VE %s is %s: stop it before making a template of it (its files must not change '
                          'during the copy)' % (name, state))
        manifest = store.resolve(meta['template'])
        idmap = IdMap(**meta['idmap']) if meta.get('idmap') else None
        lowers = [os.path.join(host.ve_dir(name), 'private', 'upper')] + store.lower_dirs(manifest, idmap)
        mountpoint = os.path.join(os.path.dirname(rootfs), 'merged')
        os.mkdir(mountpoint, 0o700)
        _mount_merged(lowers, mountpoint, userxattr=idmap is not None)
        try:
            os.rmdir(rootfs)
            _run(['cp', '-a', '--', mountpoint, rootfs], 'copying the files of VE %s' % name)
        finally:
            _run(['umount', mountpoint], 'unmounting the merged view of VE %s' % name)
            os.rmdir(mountpoint)
    if idmap is not None:
        shift_tree(rootfs, idmap, back=True)
    strip_identity(rootfs)   # the VE's hostname is not the template's: each new VE writes its own
    os_id, release = os_release(rootfs)
    return {'os': os_id or manifest.get('os'), 'release': release or manifest.get('release'), 'parent': None,
            'packages': dpkg_packages(rootfs), 'init': manifest.get('init') or detect_init(rootfs),
            'derived_from': {'ve': name, 'template': meta['template']}}


# -- application layer --------------------------------------------------------------------------------
def _layer_options(source):
    base = source.get('base')
    if not base:
        raise VzError('a layer source needs base: the template it goes on top of, as name or name@version')
    _validate.template_ref(base)
    packages = []
    for package in source.get('packages') or []:
        if not isinstance(package, str) or not _PACKAGE_RE.fullmatch(package):
            raise VzError('invalid package name %r' % (package,))
        packages.append(package)
    files = []
    for item in source.get('files') or []:
        if not isinstance(item, dict) or not item.get('src') or not item.get('dest'):
            raise VzError('each file of a layer needs src (a file on the host) and dest (its path in the template)')
        src = _validate.host_path(item['src'], 'layer file src')
        if not os.path.isfile(src):
            raise VzError('layer file src %s is not a regular file' % src)
        dest = '/' + _validate.ve_path(item['dest'], 'layer file dest')
        mode = str(item.get('mode') or '0644')
        if not _MODE_RE.fullmatch(mode):
            raise VzError('layer file %s: invalid mode %r (use octal such as 0644)' % (dest, mode))
        files.append({'src': src, 'dest': dest, 'mode': mode})
    commands = []
    for command in source.get('commands') or []:
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise VzError('each layer command must be a non-empty list of strings (argv), got %r' % (command,))
        commands.append(command)
    if not (packages or files or commands):
        raise VzError('a layer source needs at least one of packages, files or commands')
    return base, packages, files, commands


def _strip_overlay_xattrs(root):
    """Keep only the overlay marks that matter in a lower layer: whiteouts and opaque directories.

    The build VE's overlay wrote ``user.overlay.*`` (it mounts with userxattr); a privileged VE's
    overlay reads ``trusted.overlay.*``: an opaque directory gets both marks, everything else
    (origin, impure) is dropped.
    """
    for current, dirnames, _filenames in os.walk(root):
        for entry in [current] + [os.path.join(current, d) for d in dirnames]:
            try:
                names = os.listxattr(entry, follow_symlinks=False)
            except OSError:
                continue
            opaque = False
            for key in names:
                if key.startswith(('user.overlay.', 'trusted.overlay.')):
                    if key.endswith('.opaque'):
                        opaque = opaque or os.getxattr(entry, key, follow_symlinks=False) == b'y'
                    os.removexattr(entry, key, follow_symlinks=False)
            if opaque:
                os.setxattr(entry, 'trusted.overlay.opaque', b'y', follow_symlinks=False)
                os.setxattr(entry, 'user.overlay.opaque', b'y', follow_symlinks=False)


def build_layer(store, rootfs, source):
    """An application layer: packages, files and commands run in a throw-away VE on the base.

    Only the build VE's private area (its overlay upper dir: new and changed files, and whiteouts
    for removed ones) becomes the layer, shifted back to host ids; its manifest names the base
    as parent, so a VE on the layer stacks layer + base.
    """
    base_ref, packages, files, commands = _layer_options(source)
    host = store.host
    base = store.resolve(base_ref)
    idmap = host.idmap()
    lowers = store.lower_dirs(base, idmap)
    host.check_reachable()
    name = BUILD_VE_PREFIX + secrets.token_hex(4)
    client = LxcClient(host.ves_dir)
    directory = host.ve_dir(name)
    # held while the build VE exists: a later build that can take it knows this one died
    lock = Lock(host.locks_dir, 've', name, 'building a template layer').acquire()
    try:
        os.mkdir(directory, 0o711)
        installed = _build_in_ve(host, client, name, rootfs, base, lowers, idmap, (packages, files, commands))
    finally:
        _remove_build_ve(host, client, name)
        lock.release()
        _unlink(lock.path)
    shift_tree(rootfs, idmap, back=True)
    _strip_overlay_xattrs(rootfs)
    os.chmod(rootfs, 0o755)
    return {'os': base.get('os'), 'release': base.get('release'), 'parent': '%s@%s' % (base['name'], base['version']),
            'parents': ['%s@%s' % (m['name'], m['version']) for m in store.layers(base)],
            'packages': installed, 'init': base.get('init') or {}}


def _build_in_ve(host, client, name, rootfs, base, lowers, idmap, steps):
    """Start the build VE on ``lowers``, run the layer's ``steps`` (packages, files, commands) in it and
    move its upper dir to ``rootfs``; returns the installed packages."""
    directory = host.ve_dir(name)
    private = os.path.join(directory, 'private')
    for path in (private, os.path.join(private, 'upper'), os.path.join(private, 'work')):
        os.mkdir(path, 0o755 if path != private else 0o711)
        os.chown(path, idmap.uid, idmap.gid)
    meta = {'name': name, 'idmap': dict(idmap._asdict()), 'cgroup_parent': host.cgroup_parent,
            'network': [], 'mounts': [], 'apparmor': host.apparmor_enabled()}
    items = []
    for key, value in render_config(host, meta, lowers, base.get('init') or {}):
        if key == 'lxc.net.0.type':
            value = 'none'   # the host's network: the mirror is reachable from there only
        elif key == 'lxc.mount.auto':
            value = 'proc:mixed cgroup:mixed'   # no sysfs: only the owner of a network namespace mounts it
        items.append((key, value))
    items.append(('lxc.mount.entry', '/etc/resolv.conf etc/resolv.conf none bind,ro,create=file 0 0'))
    config = LxcConfig()
    config.replace_owned(is_owned, items)
    config.set('lxc.init.cmd', '/bin/sleep infinity')
    config.save(os.path.join(directory, 'config'))
    try:
        client.start(name, logfile=os.path.join(directory, 'lxc.log'))
    except VzError as exc:
        raise VzError('starting the build VE %s failed: %s; LXC log: %s'
                      % (name, exc, log_tail(os.path.join(directory, 'lxc.log'))), **exc.details)
    installed = _run_layer_steps(client, name, *steps)
    client.kill(name)
    os.rmdir(rootfs)
    os.rename(os.path.join(private, 'upper'), rootfs)
    return installed


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_build_ve(host, client, name):
    """Stop a build VE, remove its directory and cgroups (also one that a killed build left running)."""
    directory = host.ve_dir(name)
    parent = host.cgroup_parent
    config = os.path.join(directory, 'config')
    if os.path.isfile(config):   # the cgroup parent it was started under (host.json may have changed since)
        found = LxcConfig.load(config).get_one('lxc.cgroup.dir.container') or ''
        if found.endswith('/' + name):
            parent = found[:-len(name) - 1]
    if client.state(name)['state'] not in ('stopped', 'absent'):
        client.kill(name)
    remove_tree(directory)
    cgroups = CgroupTree()
    try:
        cgroups.settle(parent, name)   # the killed VE's monitor may still be leaving its cgroups
        cgroups.remove_stale(parent, name)
    except OSError:
        pass


def remove_dead_build_ves(host):
    """Remove the build VEs of layer builds that died (nobody holds their lock); returns their names.

    A build VE runs ``sleep infinity``: a build killed midway leaves it running in ``ves/`` until the
    next template build on the host takes it away here.
    """
    try:
        names = sorted(n for n in os.listdir(host.ves_dir) if n.startswith(BUILD_VE_PREFIX))
    except FileNotFoundError:
        return []
    removed = []
    client = LxcClient(host.ves_dir)
    for name in names:
        try:
            lock = Lock(host.locks_dir, 've', _validate.ve_name(name), 'removing a dead build VE', timeout=0).acquire()
        except VzError:
            continue   # a build in progress, or not a name of ours
        try:
            _remove_build_ve(host, client, name)
            removed.append(name)
        finally:
            lock.release()
            _unlink(lock.path)
    return removed


_APT_ENV = ['env', 'DEBIAN_FRONTEND=noninteractive', 'LC_ALL=C']


def _run_layer_steps(client, name, packages, files, commands):
    """Packages, then files, then commands, inside the running build VE; returns its package list."""
    def attach(argv, what, data=None):
        rc, out, err = client.attach(name, argv, data=data, check=False)
        if rc != 0:
            tail = ' | '.join(line for line in (err or out).strip().splitlines()[-5:])
            raise VzError('layer %s failed with rc=%d: %s' % (what, rc, tail or 'no output'),
                          cmd=argv, rc=rc, stderr=err[-4000:])
        return out

    if packages:
        attach(_APT_ENV + ['apt-get', 'update', '-q'], 'command apt-get update')
        attach(_APT_ENV + ['apt-get', 'install', '-y', '-q', '--no-install-recommends'] + packages,
               'installing packages %s' % ' '.join(packages))
        attach(_APT_ENV + ['apt-get', 'clean'], 'command apt-get clean')
        attach(['find', '/var/lib/apt/lists', '-type', 'f', '!', '-name', 'lock', '-delete'],
               'command find /var/lib/apt/lists -delete')
    for item in files:
        with open(item['src'], 'rb') as handle:
            data = handle.read()
        attach(['mkdir', '-p', os.path.dirname(item['dest'])], 'creating the directory of %s' % item['dest'])
        attach(['tee', item['dest']], 'copying %s to %s' % (item['src'], item['dest']), data=data)
        attach(['chmod', item['mode'], item['dest']], 'chmod %s %s' % (item['mode'], item['dest']))
    for command in commands:
        attach(command, 'command %s' % command)
    out = attach(['dpkg-query', '-W', '-f=${db:Status-Abbrev}\t${Package}\t${Version}\n'], 'listing packages') \
        if packages or _has_dpkg(client, name) else ''
    return parse_dpkg_list(out)


def _has_dpkg(client, name):
    rc, _out, _err = client.attach(name, ['test', '-f', '/var/lib/dpkg/status'], check=False)
    return rc == 0


BUILDERS = {
    'busybox': build_busybox,
    'debootstrap': build_debootstrap,
    'tarball': build_tarball,
    've': build_from_ve,
    'layer': build_layer,
}


def build(store, name, source, check_mode=False, if_absent=False):
    """Build a new version of template ``name`` from ``source`` into ``store`` and publish it.

    The source is checked first, in check mode too (then nothing is built and the predicted
    manifest is returned). With ``if_absent``, a version published by a concurrent build while
    this one waited for the template lock counts: nothing is built and None is returned.
    """
    kind = source.get('type')
    if kind not in BUILDERS:
        raise VzError('template source type %r is not supported here (supported: %s)'
                      % (kind, ', '.join(sorted(BUILDERS))))
    validate_source(source, store)
    if check_mode:  # no lock: check mode must not even create the lock file
        return {'name': name, 'version': store.new_version(name), 'source': source}
    remove_dead_build_ves(store.host)   # what a killed layer build left running
    return store.publish(name, source, lambda rootfs: BUILDERS[kind](store, rootfs, source), if_absent=if_absent)
