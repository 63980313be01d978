# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CRIU on a host: is it usable, can this VE be dumped, checkpoint and restore through LXC.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Live migration freezes a VE, dumps its processes with CRIU (``lxc-checkpoint``), moves the images
and restores them on the target. This file is the one place that knows CRIU: which binary LXC will
run, what ``criu check`` says, which VE configurations CRIU or LXC's glue cannot dump, and how to
read CRIU's logs and statistics when something fails. Commands go through a ``run`` callable,
``run(argv) -> (rc, stdout, stderr)`` (``_engine.client.local_runner`` or a module's
``run_command``), always as argv lists. See docs/criu.md.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time

from . import _validate
from ._errors import VzError

# Where `make deps` (scripts/criu-build) installs the CRIU it builds; first choice of probe().
CRIU_PATHS = ('/usr/local/sbin/criu',)
# What scripts/criu-build says about its last run (state=, version=, reason=, ...).
BUILD_STATUS = '/var/cache/osvirt-vz/criu/status'
# PATH for lxc-checkpoint, which runs the first `criu` on its PATH: the probed binary's directory
# goes in front, so a Debian 3.17 in /usr/sbin is never picked by accident.
STD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# CRIU before 4.2 cannot dump any TCP socket on kernels >= 6.16 ("Can't get 1:16 opt").
TCP_FIX = ((6, 16), (4, 2))
# Network types LXC's restore knows how to recreate (src/lxc/criu.c, criu_ok()).
RESTORABLE_NET_TYPES = ('veth', 'macvlan', 'none', 'empty')
# LXC's compiled-in lxc.rootfs.mount on Debian 12 (where restore bind-mounts the VE's root).
DEFAULT_ROOTFS_MOUNT = '/usr/lib/x86_64-linux-gnu/lxc/rootfs'

_VERSION_RE = re.compile(r'^Version:\s*(\d+(?:\.\d+)*)', re.M)
_IMG_COMMON_MAGIC = 0x54564319
_IMG_SERVICE_MAGIC = 0x55105940
_DUMP_STATS = {1: 'freezing_time_us', 2: 'frozen_time_us', 3: 'memdump_time_us', 4: 'memwrite_time_us',
               5: 'pages_scanned', 6: 'pages_skipped_parent', 7: 'pages_written'}
_RESTORE_STATS = {1: 'pages_compared', 2: 'pages_skipped_cow', 3: 'forking_time_us', 4: 'restore_time_us',
                  5: 'pages_restored'}


# -- versions ---------------------------------------------------------------------------------
def parse_version(text):
    """``criu --version`` output -> version tuple, e.g. (4, 2, 1); None when there is none."""
    match = _VERSION_RE.search(text or '')
    return tuple(int(p) for p in match.group(1).split('.')) if match else None


def version_string(version):
    return '.'.join(str(p) for p in version) if version else 'unknown'


def kernel_version(release):
    """``uname -r`` -> (major, minor), e.g. '6.18.44-fc' -> (6, 18); None when unreadable."""
    match = re.match(r'(\d+)\.(\d+)', release or '')
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_problem(version, kernel_release):
    """Why CRIU ``version`` (tuple) cannot dump VEs on this kernel, or None."""
    kernel = kernel_version(kernel_release)
    if version is None:
        return 'cannot read the CRIU version'
    if kernel and kernel >= TCP_FIX[0] and tuple(version[:2]) < TCP_FIX[1]:
        return ('CRIU %s cannot dump TCP sockets on kernel %s (>= %d.%d needs CRIU >= %d.%d)'
                % (version_string(version), kernel_release, TCP_FIX[0][0], TCP_FIX[0][1],
                   TCP_FIX[1][0], TCP_FIX[1][1]))
    return None


# -- the binary -------------------------------------------------------------------------------
def find_criu(paths=CRIU_PATHS, search_path=STD_PATH):
    """The CRIU binary to use: the first executable of ``paths``, else the first ``criu`` on
    ``search_path``; None when there is none."""
    candidates = list(paths) + [os.path.join(d, 'criu') for d in search_path.split(':') if d]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def build_status(path=BUILD_STATUS):
    """What the last ``scripts/criu-build`` run recorded: {state, version, path, reason, ...};
    {} when it never ran. ``state`` is ok, failed or unsupported."""
    try:
        with open(path, encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except OSError:
        return {}
    return dict(line.split('=', 1) for line in lines if '=' in line)


def _last_error(text, default):
    """The line of CRIU's output that says why: its last error other than the closing summary."""
    lines = [line.strip() for line in (text or '').splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('Error') or 'Error (' in line]
    causes = [line for line in errors if not line.endswith('FAILED.')]
    return (causes or errors or lines or [default])[-1]


def probe(run, criu=None, kernel_release=None, arch=None):
    """Is CRIU usable on this host? ``run(argv) -> (rc, out, err)``.

    Returns ``{path, version, check_ok, reason, dirty_tracking, kernel, arch}``: ``path`` of the
    binary (None if there is none), ``version`` as a string, ``check_ok`` True when
    ``criu check`` passes and the version can dump TCP on this kernel, ``reason`` why not (None
    when usable), ``dirty_tracking`` whether the kernel tracks dirty memory (pre-dump, i.e.
    pre-copy rounds while the VE runs), ``kernel`` release and ``arch``. Needs root.
    """
    uname = os.uname()
    result = {'path': criu or find_criu(), 'version': None, 'check_ok': False, 'reason': None,
              'dirty_tracking': False, 'kernel': kernel_release or uname.release, 'arch': arch or uname.machine}
    if not result['path']:
        status = build_status()
        result['reason'] = 'criu not found (looked at %s and on %s)' % (', '.join(CRIU_PATHS), STD_PATH)
        if status.get('reason'):
            result['reason'] += '; make deps said: %s' % status['reason']
        return result
    rc, out, err = run([result['path'], '--version'])
    version = parse_version(out) if rc == 0 else None
    if version is None:
        result['reason'] = '%s --version failed (rc=%s): %s' % (result['path'], rc, _last_error(out + err, 'no output'))
        return result
    result['version'] = version_string(version)
    rc, out, err = run([result['path'], 'check'])
    if rc != 0 or 'Looks good' not in out + err:
        result['reason'] = 'criu check fails: %s' % _last_error(out + err, 'rc=%s' % rc)
        return result
    result['reason'] = version_problem(version, result['kernel'])
    result['check_ok'] = result['reason'] is None
    rc, _out, _err = run([result['path'], 'check', '--feature', 'mem_dirty_track'])
    result['dirty_tracking'] = rc == 0
    return result


def compatible(source, target):
    """Can images dumped on ``source`` be restored on ``target``? Both are probe() results.

    Returns ``(ok, reasons)``. The rule: both pass ``criu check``, same architecture, same CRIU
    major version, and the target's CRIU is not older than the source's (CRIU reads images of
    older versions, not of newer ones).
    """
    reasons = []
    for what, side in (('source', source), ('target', target)):
        if not side.get('check_ok'):
            reasons.append('%s host: CRIU is not usable: %s' % (what, side.get('reason') or 'not probed'))
    if reasons:
        return False, reasons
    if source.get('arch') != target.get('arch'):
        reasons.append('source is %s, target is %s: CRIU images do not cross architectures'
                       % (source.get('arch'), target.get('arch')))
    have, want = parse_version('Version: %s' % target['version']), parse_version('Version: %s' % source['version'])
    if have[0] != want[0]:
        reasons.append('CRIU %s on the source and %s on the target: major versions differ'
                       % (source['version'], target['version']))
    elif have < want:
        reasons.append('the target\'s CRIU %s is older than the source\'s %s: it may not read the images'
                       % (target['version'], source['version']))
    return not reasons, reasons


# -- can this VE be dumped --------------------------------------------------------------------
def _pairs(config):
    """(key, value) pairs of an LxcConfig, a list of pairs, a dict (values may be lists) or text."""
    if isinstance(config, str):
        from ._engine.config import LxcConfig  # pylint: disable=import-outside-toplevel
        return LxcConfig.parse(config).items()
    if isinstance(config, dict):
        return [(k, x) for k, v in config.items() for x in (v if isinstance(v, (list, tuple)) else [v])]
    items = config.items() if hasattr(config, 'items') else config
    return [(k, str(v)) for k, v in items]


def _host_apparmor(host):
    if isinstance(host, dict):
        if 'apparmor' in host:
            return bool(host['apparmor'])
    elif host is not None and hasattr(host, 'apparmor_enabled'):
        return bool(host.apparmor_enabled())
    try:
        with open('/sys/module/apparmor/parameters/enabled', encoding='ascii') as handle:
            return handle.read().strip() == 'Y'
    except OSError:
        return False


def _bind_mounts(pairs):
    """(source, target, options) of the bind mounts among lxc.mount.entry values."""
    mounts = []
    for key, value in pairs:
        if key != 'lxc.mount.entry':
            continue
        fields = value.split()
        if len(fields) >= 4 and 'bind' in fields[3].split(','):
            mounts.append((fields[0], fields[1], fields[3]))
    return mounts


def _inside(path, directory):
    path, directory = os.path.normpath(path), os.path.normpath(directory)
    return path == directory or path.startswith(directory.rstrip('/') + '/')


def dump_blockers(config, host=None):
    """Why CRIU (through lxc-checkpoint) cannot checkpoint and restore this VE as configured.

    ``config``: the VE's LXC config (LxcConfig, (key, value) pairs, dict or text). ``host``: a
    dict of host facts (``apparmor``: bool, ``rootfs_mount``: LXC's default lxc.rootfs.mount) or a
    ``_host.Host``; None reads this machine. Returns human-readable reasons, [] when nothing is
    known to block. Bind mount sources are looked at on this machine's filesystem.
    """
    pairs = _pairs(config)
    values = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value.strip())

    def last(key, default=None):
        return values[key][-1] if values.get(key) else default

    reasons = []
    ttys = last('lxc.tty.max', '0')
    if ttys not in ('', '0'):
        reasons.append('lxc.tty.max = %s: the VE\'s /dev/tty1..%s are host ptys that CRIU cannot dump '
                       '(set ttys: 0)' % (ttys, ttys))
    if last('lxc.console.path') != 'none':
        reasons.append('the VE has a console (lxc.console.path is not none): LXC 5.0 restores a dump of it '
                       'only with a console it does not set up, and fails (set console: false)')
    profile = last('lxc.apparmor.profile')
    if profile and profile != 'unconfined' and not _host_apparmor(host):
        reasons.append('lxc.apparmor.profile = %s but the kernel has no AppArmor: lxc-checkpoint restores '
                       'with --lsm-profile apparmor:%s, which fails here' % (profile, profile))
    if last('lxc.apparmor.allow_nesting', '0') == '1' or \
            any('nesting' in v for v in values.get('lxc.include', [])):
        reasons.append('nesting is enabled: CRIU cannot dump containers nested inside the VE')
    auto = ' '.join(values.get('lxc.mount.auto', [])).split()
    if any(a in ('cgroup:rw', 'cgroup-full:rw', 'cgroup-full', 'cgroup-full:mixed') for a in auto):
        reasons.append('lxc.mount.auto = %s: a writable cgroup tree inside the VE (nesting) cannot be '
                       'dumped' % ' '.join(auto))
    for key, value in pairs:
        match = re.fullmatch(r'lxc\.net\.(\d+)\.type', key)
        if match and value.strip() not in RESTORABLE_NET_TYPES:
            reasons.append('%s = %s: lxc-checkpoint restores only %s links'
                           % (key, value.strip(), '/'.join(RESTORABLE_NET_TYPES)))
        match = re.fullmatch(r'lxc\.net\.(\d+)\.veth\.mode', key)
        if match and value.strip() == 'router':
            reasons.append('%s = router: lxc-checkpoint recreates the link on restore but not the host '
                           'routes and proxy entries LXC adds at start' % key)
    rootfs_mount = last('lxc.rootfs.mount') or (host.get('rootfs_mount') if isinstance(host, dict) else None) \
        or DEFAULT_ROOTFS_MOUNT
    unprivileged = bool(values.get('lxc.idmap'))
    for source, target, _options in _bind_mounts(pairs):
        if not source.startswith('/'):
            continue
        real = os.path.realpath(source)
        if real != os.path.normpath(source):
            reasons.append('bind mount %s -> /%s: the source is a symlink to %s; CRIU matches mounts by '
                           'real path (use %s)' % (source, target.lstrip('/'), real, real))
        if unprivileged and _inside(rootfs_mount, real):
            reasons.append('bind mount %s -> /%s contains lxc.rootfs.mount %s: an unprivileged VE is '
                           'restored there, and CRIU cannot tell the two mounts apart (set '
                           'lxc.rootfs.mount outside it)' % (source, target.lstrip('/'), rootfs_mount))
    return reasons


def process_blockers(init_pid, proc='/proc'):
    """Why the processes of a running VE (its init is host pid ``init_pid``) cannot be dumped now.

    Finds processes in a session or process group led from outside the VE, as ``lxc-attach`` leaves
    what it starts unless that calls setsid (CRIU: "A session leader ... is outside of its pid
    namespace"). Returns human-readable reasons, [] when none is found.
    """
    def read(path):
        try:
            with open(path, encoding='utf-8', errors='replace') as handle:
                return handle.read()
        except OSError:
            return None

    def pid_ns(pid):
        try:
            return os.readlink('%s/%s/ns/pid' % (proc, pid))
        except OSError:
            return None

    wanted = pid_ns(init_pid)
    if wanted is None:
        return ['the VE\'s init (pid %s) is not running' % init_pid]
    reasons = []
    for entry in sorted(os.listdir(proc), key=lambda e: (len(e), e)):
        if not entry.isdigit() or pid_ns(entry) != wanted:
            continue
        stat = read('%s/%s/stat' % (proc, entry))
        if not stat or ')' not in stat:
            continue
        comm = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat[stat.rindex(')') + 2:].split()
        for what, leader in (('session', fields[3]), ('process group', fields[2])):
            # 0: the leader lives in a pid namespace above this /proc's (a sandboxed runner's
            # session, say); the VE's namespace is below it, so that leader is outside the VE too
            if leader == '0' or pid_ns(leader) != wanted:
                where = 'pid %s' % leader if leader != '0' else 'not visible from this host\'s pid namespace'
                reasons.append('process %s (%s) is in a %s led from outside the VE (%s): started by '
                               'lxc-attach without setsid?' % (entry, comm, what, where))
                break
    return reasons


# File systems CRIU 4.2 has no dumper for, found mounted inside VEs. systemd (Debian 12's 252)
# mounts each service's credentials as ramfs under /run/credentials; lxc-checkpoint then fails
# with "mnt: FS mnt ./run/credentials/... unsupported id" after the VE was frozen for the dump.
UNDUMPABLE_FS = ('ramfs',)


def mount_blockers(init_pid, proc='/proc'):
    """Mounts inside a running VE (init at host pid ``init_pid``) that CRIU cannot dump, as reasons."""
    try:
        with open('%s/%s/mountinfo' % (proc, init_pid), encoding='utf-8', errors='replace') as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    reasons = []
    for line in lines:
        head, sep, tail = line.partition(' - ')
        if not sep or len(head.split()) < 5 or not tail.split():
            continue
        fstype, where = tail.split()[0], head.split()[4]
        if fstype in UNDUMPABLE_FS:
            reasons.append('mount %s inside the VE is %s, which CRIU cannot dump%s' % (
                where, fstype, ' (systemd\'s service credentials)' if where.startswith('/run/credentials/') else ''))
    return reasons


# -- checkpoint and restore -------------------------------------------------------------------
def _lxc_checkpoint(lxcpath, name, images_dir, args, criu):
    _validate.ve_name(name)
    for what, path in (('lxcpath', lxcpath), ('images_dir', images_dir)):
        if not isinstance(path, str) or not os.path.isabs(path):
            raise VzError('%s must be an absolute path, got %r' % (what, path))
    path = STD_PATH
    if criu:
        path = os.path.dirname(criu) + ':' + STD_PATH
    return ['env', 'PATH=' + path, 'lxc-checkpoint', '-P', lxcpath, '-n', name, '-D', images_dir] + list(args)


def log_tail(images_dir, action, lines=12):
    """The end of CRIU's ``<action>.log`` in ``images_dir``, with its last error lines first."""
    try:
        with open(os.path.join(images_dir, '%s.log' % action), encoding='utf-8', errors='replace') as handle:
            text = handle.read().splitlines()
    except OSError:
        return ''
    errors = [line for line in text if 'Error' in line][-lines // 2:]
    tail = [line for line in text[-lines:] if line not in errors]
    return '\n'.join(errors + tail)


def _read_varint(data, pos):
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7f) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _protobuf_fields(data):
    """Top-level fields of a protobuf message: {number: int or bytes} (varint and length-delimited)."""
    fields, pos = {}, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            fields[number], pos = _read_varint(data, pos)
        elif kind == 2:
            size, pos = _read_varint(data, pos)
            fields[number], pos = data[pos:pos + size], pos + size
        elif kind == 5:
            fields[number], pos = struct.unpack_from('<I', data, pos)[0], pos + 4
        elif kind == 1:
            fields[number], pos = struct.unpack_from('<Q', data, pos)[0], pos + 8
        else:
            raise ValueError('protobuf wire type %d' % kind)
    return fields


def parse_stats(data):
    """CRIU's stats-dump / stats-restore image -> {name: number} (times in microseconds)."""
    pos = 0
    magic = struct.unpack_from('<I', data, pos)[0]
    pos += 4
    if magic in (_IMG_COMMON_MAGIC, _IMG_SERVICE_MAGIC):
        pos += 4                                   # the image's own magic follows the set's
    size = struct.unpack_from('<I', data, pos)[0]
    entry = _protobuf_fields(data[pos + 4:pos + 4 + size])
    stats = {}
    for number, names in ((1, _DUMP_STATS), (2, _RESTORE_STATS)):
        if isinstance(entry.get(number), bytes):
            stats.update({names[k]: v for k, v in _protobuf_fields(entry[number]).items() if k in names})
    return stats


def read_stats(images_dir, action):
    """parse_stats() of ``stats-<action>`` in ``images_dir``; {} when it is missing or unreadable."""
    try:
        with open(os.path.join(images_dir, 'stats-%s' % action), 'rb') as handle:
            return parse_stats(handle.read())
    except (OSError, ValueError, IndexError, struct.error):
        return {}


def _fail(what, name, images_dir, action, argv, rc, out, err):
    tail = log_tail(images_dir, action)
    message = '%s of VE %s failed (lxc-checkpoint rc=%s): %s' % (
        what, name, rc, _last_error(tail, '') or _last_error(err + out, 'no output'))
    raise VzError(message, cmd=argv, rc=rc, stdout=out, stderr=err, criu_log=tail,
                  criu_log_file=os.path.join(images_dir, '%s.log' % action))


def checkpoint(run, lxcpath, name, images_dir, stop=True, criu=None, verbose=False):
    """Dump running VE ``name`` of ``lxcpath`` into ``images_dir`` (must not hold a dump yet).

    With ``stop`` the VE is stopped after the dump (it stays frozen from the start of the dump until
    then); without, it keeps running. ``criu``: the binary probe() found (its directory goes first on
    lxc-checkpoint's PATH). Returns {images_dir, seconds, bytes, stats}; ``stats`` from CRIU's
    stats-dump (frozen_time_us, memdump_time_us, pages_written, ...). Raises VzError with the tail
    of CRIU's dump.log on failure.
    """
    if os.path.exists(os.path.join(images_dir, 'inventory.img')):
        raise VzError('VE %s: %s already holds a dump; checkpoint into a fresh directory' % (name, images_dir))
    argv = _lxc_checkpoint(lxcpath, name, images_dir, (['-s'] if stop else []) + (['-v'] if verbose else []), criu)
    start = time.monotonic()
    rc, out, err = run(argv)
    seconds = time.monotonic() - start
    if rc != 0:
        _fail('checkpoint', name, images_dir, 'dump', argv, rc, out, err)
    return {'images_dir': images_dir, 'seconds': round(seconds, 3), 'bytes': _tree_size(images_dir),
            'stats': read_stats(images_dir, 'dump')}


def overlay_mount_argv(rootfs_path, options, target):
    """``mount`` argv that mounts an ``overlay:<lower>...:<upper>`` rootfs on ``target`` as LXC does
    (lowerdir = all but the last path, workdir = ``work`` next to the upper dir)."""
    parts = rootfs_path[len('overlay:'):].split(':')
    if len(parts) < 2 or not all(os.path.isabs(p) for p in parts):
        raise VzError('cannot read the overlay rootfs %r' % rootfs_path)
    lowers, upper = parts[:-1], parts[-1]
    opts = 'lowerdir=%s,upperdir=%s,workdir=%s' % (':'.join(lowers), upper,
                                                   os.path.join(os.path.dirname(upper), 'work'))
    if options:
        opts += ',' + options
    return ['mount', '-t', 'overlay', '-o', opts, lowers[0], target]


def restore_config(config_text, rootfs_dir):
    """The VE's config for ``lxc-checkpoint -r --rcfile``: its rootfs as the directory ``rootfs_dir``.

    LXC 5.0's restore bind-mounts lxc.rootfs.path as it stands, which fails for an ``overlay:`` path
    (ENOENT); given a directory where the overlay is already mounted, it works.
    """
    from ._engine.config import LxcConfig  # pylint: disable=import-outside-toplevel
    config = LxcConfig.parse(config_text)
    config.set('lxc.rootfs.path', rootfs_dir)
    config.remove('lxc.rootfs.options')
    return config.render()


def restore(run, lxcpath, name, images_dir, criu=None, verbose=False):
    """Restore VE ``name`` (stopped, its config in ``lxcpath``) from the dump in ``images_dir``.

    An overlay rootfs (every VE of osvirt.vz) is mounted first on ``<lxcpath>/<name>/.criu-rootfs``
    (private, so nothing propagates into the VE) and handed to lxc-checkpoint through ``--rcfile``;
    the host's mount goes again right after (the restored VE holds its own). lxc-checkpoint itself
    runs here, not through ``run``: the restored VE's monitor keeps its stderr, which a runner with
    pipes would wait on; its output is in ``<images_dir>/lxc-restore.out``. Returns {images_dir,
    seconds, stats} (``stats`` from stats-restore: restore_time_us, forking_time_us,
    pages_restored). Raises VzError with the tail of CRIU's restore.log on failure.
    """
    if not os.path.exists(os.path.join(images_dir, 'inventory.img')):
        raise VzError('VE %s: %s holds no dump (no inventory.img)' % (name, images_dir))
    _validate.ve_name(name)
    config_path = os.path.join(lxcpath, name, 'config')
    try:
        with open(config_path, encoding='utf-8') as handle:
            text = handle.read()
    except OSError as exc:
        raise VzError('VE %s: cannot read %s: %s' % (name, config_path, exc.strerror)) from exc
    from ._engine.config import LxcConfig  # pylint: disable=import-outside-toplevel
    parsed = LxcConfig.parse(text)
    rootfs = parsed.get_one('lxc.rootfs.path', '')
    if parsed.get('lxc.idmap'):
        # the first restored task opens some images (openat on the images dir) right after it enters
        # the VE's new user namespace, before its id map is written: it is nobody then, so the dir
        # (LXC makes it 0700) must be searchable by all. Its parent keeps the dump private.
        os.chmod(images_dir, 0o711)
    args, mounted = ['-r'] + (['-v'] if verbose else []), None
    start = time.monotonic()
    try:
        if rootfs.startswith('overlay:'):
            mounted = os.path.join(lxcpath, name, '.criu-rootfs')
            cleanup(run, lxcpath, name)                 # a leftover of a killed run
            os.makedirs(mounted, 0o755, exist_ok=True)
            for argv in (overlay_mount_argv(rootfs, parsed.get_one('lxc.rootfs.options'), mounted),
                         ['mount', '--make-private', mounted]):
                rc, out, err = run(argv)
                if rc != 0:
                    raise VzError('VE %s: cannot mount its rootfs for the restore: %s'
                                  % (name, (err or out).strip()), cmd=argv, rc=rc)
            rcfile = os.path.join(lxcpath, name, '.criu-restore.config')
            with open(rcfile, 'w', encoding='utf-8') as handle:
                handle.write(restore_config(text, mounted))
            args += ['--rcfile', rcfile]
        argv = _lxc_checkpoint(lxcpath, name, images_dir, args, criu)
        rc, out, err = _run_detached(argv, os.path.join(images_dir, 'lxc-restore.out'))
        seconds = time.monotonic() - start
        if rc != 0:
            _fail('restore', name, images_dir, 'restore', argv, rc, out, err)
    finally:
        if mounted:
            cleanup(run, lxcpath, name)
    return {'images_dir': images_dir, 'seconds': round(seconds, 3), 'stats': read_stats(images_dir, 'restore')}


def cleanup(run, lxcpath, name):
    """Remove what a killed restore() of VE ``name`` can leave: the host's mount of its rootfs on
    ``<lxcpath>/<name>/.criu-rootfs`` and the ``--rcfile`` copy of its config. Safe to call anytime."""
    _validate.ve_name(name)
    mounted = os.path.join(lxcpath, name, '.criu-rootfs')
    _unmount(run, mounted)
    for path in (mounted, os.path.join(lxcpath, name, '.criu-restore.config')):
        try:
            os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
        except OSError:
            pass


def _run_detached(argv, output):
    """Run ``argv`` with its output in the file ``output``; (rc, output text, '').

    lxc-checkpoint -r leaves the restored VE's monitor running with its stderr: through a pipe (a
    runner that captures output) the caller would wait until the VE stops.
    """
    with open(output, 'wb') as handle:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                              env=dict(os.environ, LC_ALL='C', LANG='C'), check=False)
    with open(output, encoding='utf-8', errors='replace') as handle:
        return proc.returncode, handle.read(), ''


def _unmount(run, path):
    if os.path.ismount(path):
        run(['umount', '-l', path])


def _tree_size(path):
    total = 0
    for directory, _dirs, files in os.walk(path):
        for file in files:
            try:
                total += os.lstat(os.path.join(directory, file)).st_size
            except OSError:
                pass
    return total
