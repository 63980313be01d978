# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The target's side of a migration, and the channel the source drives it through.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The module runs on the source host. For the target's part it starts this file there over SSH
(``python3 -c BOOTSTRAP``; the collection's module_utils arrive as a zip on stdin, so the target
needs Python and the collection's run-time dependencies, nothing installed) and sends one JSON
request per line; each gets one JSON answer. The agent holds the VE's lock on the target for as
long as the connection lives, so a second migration of the VE finds it busy on both hosts.

Fencing by lease: the source pings while it waits for long copies. An agent that hears nothing
for ``idle`` seconds, or whose stdin ends (the module was killed, the link was cut), removes the
target's copy of a VE that is not committed (stops it first if it runs). So a source that lost
its target may start its own copy again once ``idle`` seconds (plus a margin) have passed since
the last answer: the target's copy is then gone, never two running copies.

``MigrationOps`` is the one place that calls the VE steps of ``_ve_ops`` (both hosts use it).
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import zipfile

from . import _addrpool, _announce, _criu, _limits, _quota, _validate
from ._engine.client import LxcClient
from ._engine.config import LxcConfig
from ._errors import VzError
from ._fs import make_dirs, read_json, remove_tree, sync_filesystem, write_json
from ._host import Host
from ._locks import Lock
from ._migrate_journal import Journal
from ._templates import TemplateStore
from ._ve_config import config_digest
from ._ve_net import host_link_name
from ._ve_ops import VeOps

PACKAGE = __name__.rpartition('.')[0]
IDLE = 12            # seconds without a request after which an agent fences its uncommitted copy
PING_EVERY = 2


# -- the VE steps migration uses, in one place ------------------------------------------------------
class MigrationOps:
    """The per-VE steps of ``_ve_ops.VeOps`` as migration uses them on either host."""

    def __init__(self, host, stop_timeout=30):
        self.host = host
        self.stop_timeout = stop_timeout
        self.client = LxcClient(host.ves_dir)
        self.ve = VeOps(host, self.client, stop_timeout=stop_timeout)
        self.templates = self.ve.templates

    def meta(self, name):
        return self.ve.read_meta(name)

    def names(self):
        return self.ve.names()

    def state(self, name):
        if self.meta(name) is None:
            return {'state': 'absent', 'pid': None}
        return self.ve.state(name)

    def manifest(self, meta):
        return self.templates.manifest(*_validate.template_ref(meta['template']))

    def stop(self, name, kill=False):
        """Stop a VE: a clean shutdown, or with ``kill`` SIGKILL to its init (a frozen VE dies at the thaw,
        without running another instruction: its files stay as they were when it was frozen)."""
        now = self.ve.state(name)
        if now['state'] not in ('running', 'frozen'):
            return
        if not kill:
            if now['state'] == 'frozen':
                self.ve.unfreeze(name)
            self.ve.stop(name)
            return
        if now['pid']:
            try:
                os.kill(now['pid'], signal.SIGKILL)
            except ProcessLookupError:
                pass
        if now['state'] == 'frozen':
            try:
                self.ve.unfreeze(name)
            except VzError:   # lxc-unfreeze waits for THAWED; a VE whose init died goes STOPPED instead
                if self.ve.state(name)['state'] == 'frozen':
                    raise
        # init is dead; LXC still tears the VE down (its links, cgroups, post-stop hooks), which
        # takes long on a loaded host. lxc-stop --kill is for an init that did not die, and a VE
        # that reached STOPPED meanwhile is what was wanted ("is not running" is no failure).
        try:
            self.client.wait(name, ['STOPPED'], timeout=max(10, self.stop_timeout))
        except VzError:
            try:
                self.ve.kill(name)
            except VzError:
                if self.ve.state(name)['state'] != 'stopped':
                    raise

    def freeze(self, name):
        self.ve.freeze(name)

    def unfreeze(self, name):
        if self.ve.state(name)['state'] == 'frozen':
            self.ve.unfreeze(name)

    def start(self, name):
        """Start a registered VE: limits from its config, then its guard and shaping."""
        meta = self.meta(name)
        self.ve.start(name, meta, self.manifest(meta))
        pid = self.ve.state(name)['pid']
        self.ve.record_running(name, pid, config_digest(self.ve.config_on_disk(name)))
        return pid

    def adopt(self, meta):
        """``meta`` of a VE from another host as this host keeps it: its cgroup parent, its host link names."""
        meta = dict(meta)
        meta['cgroup_parent'] = self.host.cgroup_parent
        meta['network'] = [dict(iface, host_link=host_link_name(meta['name'], index, self.host.cgroup_parent))
                           for index, iface in enumerate(meta.get('network') or [])]
        return meta

    def prepare(self, meta):
        """The shifted template copies of the VE's id range, made before they are needed."""
        self.ve.desired_config(meta, self.manifest(meta), create=True)

    def register(self, meta):
        self.ve.register(meta, self.manifest(meta))

    def set_autostart(self, name, on, directory=None):
        directory = directory or self.host.ve_dir(name)
        path = os.path.join(directory, 'config')
        cfg = LxcConfig.load(path)
        cfg.set('lxc.start.auto', '1' if on else '0')
        cfg.save(path)
        meta = read_json(os.path.join(directory, 've.json'))
        meta['autostart'] = bool(on)
        write_json(os.path.join(directory, 've.json'), meta)

    def claim(self, meta):
        return self.ve.claim_addresses(meta['name'], meta.get('network') or [])

    def release(self, name):
        if os.path.isdir(os.path.join(self.host.vz_root, 'net', 'leases')):
            self.ve.net.release(name)

    def reserve_moved(self, name, moved_to):
        """Keep VE ``name``'s addresses from this host's other VEs and pools: it lives on ``moved_to``."""
        return self.ve.net.leases.reserve_moved(name, moved_to, time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))

    def arrived(self, name):
        """VE ``name`` lives here now: reservations this host kept for it since it left are void."""
        return self.ve.net.leases.release_moved(name)

    def after_start(self, name):
        self.ve.after_start(self.meta(name))

    def remove(self, name):
        """Remove a stopped VE with its private area, leases, guard and cgroups."""
        self.ve.unregister(name, self.meta(name))


# -- the target's operations ----------------------------------------------------------------------
def incoming_dir(host, ve):
    return os.path.join(host.vz_root, 'migrations', _validate.ve_name(ve) + '.incoming')


class Target:
    """What the agent does on the target host for one VE (one instance per connection)."""

    def __init__(self, vz_root):
        self.host = Host(vz_root=vz_root)
        self.ops = MigrationOps(self.host)
        self.lock = None
        self.ve = None
        self.keep_target = False
        self.journal = None

    # every op returns a JSON-able value or raises VzError
    def op_hello(self, ve, operation, lock_timeout=0, keep_target=False, check_mode=False):
        self.ve = _validate.ve_name(ve)
        self.keep_target = bool(keep_target)
        if self.lock is not None:
            pass
        elif not check_mode or os.path.isdir(self.host.locks_dir):
            if not check_mode:
                self.host.ensure_layout()
            self.lock = Lock(self.host.locks_dir, 've', self.ve, operation, lock_timeout).acquire()
        self.journal = Journal(self.host.vz_root, self.ve)
        meta = self.ops.meta(self.ve)
        return {'journal': self.journal.data, 'meta': meta,
                'state': self.ops.state(self.ve)['state'],
                'incoming': os.path.isdir(incoming_dir(self.host, self.ve)),
                'hostname': os.uname().nodename}

    def op_hello_again(self):
        """The journal and state again (after an abort), on the connection that holds the lock."""
        self.journal = Journal(self.host.vz_root, self.ve)
        meta = self.ops.meta(self.ve)
        return {'journal': self.journal.data, 'meta': meta,
                'state': self.ops.state(self.ve)['state'],
                'incoming': os.path.isdir(incoming_dir(self.host, self.ve)), 'hostname': os.uname().nodename}

    def op_ping(self):
        return True

    def op_preflight(self, meta, private_bytes, template_bytes, where):
        """Every reason the target cannot take VE ``meta`` (list of sentences); changes nothing."""
        name, problems = meta['name'], []
        prefix = 'VE %s cannot move to %s: ' % (name, where)
        journal = self.journal.data or {}
        existing = self.ops.meta(name)
        if existing is not None and journal.get('phase') not in ('registered', 'started'):
            problems.append(prefix + 'a VE named %s exists there already (%s)' % (name, self.host.ve_dir(name)))
        store = TemplateStore(self.host)
        missing = [ref for ref in meta.get('layers') or [meta['template']]
                   if _validate.template_ref(ref)[1] not in store.versions(_validate.template_ref(ref)[0])]
        for iface in meta.get('network') or []:
            if iface.get('mode', 'bridged') == 'bridged' and not self.host.bridge_exists(iface['bridge']):
                problems.append(prefix + 'interface %s needs bridge %s, which does not exist there'
                                % (iface['name'], iface['bridge']))
        leases = _addrpool.Leases(self.host)
        for iface in meta.get('network') or []:
            for cidr in (iface.get('ipv4') or []) + (iface.get('ipv6') or []):
                owner = leases.owner(cidr.split('/')[0])
                if owner and owner.get('ve') != name:
                    problems.append(prefix + 'address %s (interface %s) is %s there by VE %s%s'
                                    % (cidr.split('/')[0], iface['name'],
                                       'reserved' if owner.get('moved_to') else 'used', owner.get('ve'),
                                       ', which moved to %s' % owner['moved_to'] if owner.get('moved_to') else ''))
        limits = meta.get('limits') or {}
        facts = self.ops.ve.facts
        try:
            _limits.check(name, limits, facts)
            others = {}
            for other in self.ops.names():
                if other != name:
                    others[other] = (self.ops.meta(other) or {}).get('limits') or {}
            _limits.admit(name, limits, others, facts)
        except VzError as exc:
            problems.append(prefix + str(exc))
        if _limits.get(limits, 'disk', 'space'):
            supported, why = _quota.quota_supported(self.host)
            if not supported:
                problems.append(prefix + 'disk.space is set and the target has no disk quota: %s' % why)
        stat = os.statvfs(self.host.vz_root if os.path.isdir(self.host.vz_root) else '/')
        free = stat.f_bavail * stat.f_frsize
        need = int((private_bytes + template_bytes) * 1.1) + (16 << 20)
        if free < need:
            problems.append(prefix + 'it has %s free under %s, the private area and templates need %s'
                            % (_limits.human_size(free), self.host.vz_root, _limits.human_size(need)))
        if meta.get('idmap'):
            try:
                idmap = self.host.idmap()
                if (idmap.uid, idmap.gid) != (meta['idmap']['uid'], meta['idmap']['gid']):
                    problems.append(prefix + 'its files are owned by ids from %d/%d, the target maps unprivileged '
                                    'VEs to %d/%d' % (meta['idmap']['uid'], meta['idmap']['gid'], idmap.uid,
                                                      idmap.gid))
            except VzError as exc:
                problems.append(prefix + str(exc))
        try:
            adopted = self.ops.adopt(meta)
            _limits.check_files(name, self.ops.ve.limit_settings(adopted), self.ops.ve.cgroups,
                                adopted['cgroup_parent'])
        except VzError as exc:
            problems.append(prefix + str(exc))
        except OSError:
            pass   # the cgroup parent does not exist yet: the first start makes it
        return {'problems': problems, 'missing_templates': missing, 'free_bytes': free}

    def op_criu(self):
        return _criu.probe(_run)

    def op_stage(self, meta, source):
        """Make (or keep, to resume) the directory the source's files are copied into."""
        directory = incoming_dir(self.host, self.ve)
        if not os.path.isdir(directory):
            make_dirs(os.path.dirname(directory), 0o700)
            staging = directory + '.new'
            remove_tree(staging)
            os.mkdir(staging, 0o711)
            idmap = meta.get('idmap') or {}
            private = os.path.join(staging, 'private')
            _quota.make_private_area(self.host, private, idmap.get('uid'), idmap.get('gid'))
            for sub in ('upper', 'work'):
                os.mkdir(os.path.join(private, sub), 0o755)
                if idmap:
                    os.chown(os.path.join(private, sub), idmap['uid'], idmap['gid'])
            os.rename(staging, directory)
        self._phase('staging', source=source, keep_target=self.keep_target)
        return directory

    def op_template_staging(self, name, version):
        return TemplateStore(self.host).copy_staging(name, version)

    def op_publish_template(self, name, version, staging, origin):
        if not staging.startswith(self.host.tmp_dir + '/'):
            raise VzError('template staging %s is not under %s' % (staging, self.host.tmp_dir))
        TemplateStore(self.host).publish_copy(name, version, staging, origin)
        copied = (self.journal.data or {}).get('templates_copied', [])
        self._phase(None, templates_copied=copied + ['%s@%s' % (name, version)])
        return True

    def op_flush(self):
        """Write the copied files back to disk now, not in the first fsync of the downtime."""
        sync_filesystem(incoming_dir(self.host, self.ve))
        return True

    def op_prepare(self):
        """The shifted template copies the VE will need (made now, while the source still runs)."""
        meta = read_json(os.path.join(incoming_dir(self.host, self.ve), 've.json'))
        self.ops.prepare(self.ops.adopt(meta))
        return True

    def op_register(self, autostart):
        """Make the copied files this host's VE (autostart off until the commit) and lease its addresses."""
        directory = incoming_dir(self.host, self.ve)
        if (self.journal.data or {}).get('phase') in ('registered', 'started'):
            return self.ops.meta(self.ve)
        meta = read_json(os.path.join(directory, 've.json'))
        if not isinstance(meta, dict) or meta.get('name') != self.ve:
            raise VzError('the copy of VE %s on %s has no valid ve.json' % (self.ve, os.uname().nodename))
        meta = self.ops.adopt(dict(meta, autostart=False))
        work = os.path.join(directory, 'private', 'work')
        remove_tree(work)
        os.mkdir(work, 0o755)
        if meta.get('idmap'):
            os.chown(work, meta['idmap']['uid'], meta['idmap']['gid'])
        for leftover in ('running.json', 'lxc.log'):
            try:
                os.unlink(os.path.join(directory, leftover))
            except FileNotFoundError:
                pass
        self.ops.set_autostart(self.ve, False, directory)   # the source's config until registered: never autostarted
        self._phase('registering', autostart=bool(autostart))
        os.rename(directory, self.host.ve_dir(self.ve))
        self.ops.register(meta)
        disk = (meta.get('limits') or {}).get('disk') or {}
        if disk.get('space') is not None or disk.get('inodes') is not None:   # its quota group is per host
            _quota.apply_quota(self.host, meta, disk.get('space'), disk.get('inodes'))
        self.ops.claim(meta)
        self._phase('registered')
        return meta

    def op_start(self):
        pid = self.ops.start(self.ve)
        self._phase('started')
        return {'pid': pid}

    def op_announce(self):
        return announce(self.ops.meta(self.ve), self.ops.state(self.ve)['pid'])

    def op_restore(self):
        """Live mode: restore the checkpoint the source copied into the private area (CRIU)."""
        images = os.path.join(self.host.ve_dir(self.ve), 'private', 'checkpoint')
        _criu.restore(_run, self.host.ves_dir, self.ve, images)
        pid = self.ops.state(self.ve)['pid']
        self.ops.after_start(self.ve)
        self._phase('started')
        remove_tree(images)
        return {'pid': pid}

    def op_commit(self):
        """The commit: one atomic journal write says this host owns the VE; then its autostart comes back."""
        if (self.journal.data or {}).get('phase') not in ('registered', 'started', 'committed'):
            raise VzError('VE %s cannot be committed on %s: its copy is not registered'
                          % (self.ve, os.uname().nodename))
        self._phase('committed')
        self.ops.arrived(self.ve)
        if self.journal.data.get('autostart'):
            self.ops.set_autostart(self.ve, True)
        return True

    def op_abort(self, keep=None):
        """Remove what this migration gave the target (or keep the copied files for a resume)."""
        return self.abort(self.keep_target if keep is None else keep)

    def abort(self, keep):
        data = self.journal.data or {}
        phase, done = data.get('phase'), []
        if phase == 'committed':
            raise VzError('VE %s is committed on %s; it is not removed' % (self.ve, os.uname().nodename))
        if phase in ('registering', 'registered', 'started') and self.ops.meta(self.ve) is not None:
            if self.ops.state(self.ve)['state'] in ('running', 'frozen', 'starting'):
                self.ops.stop(self.ve, kill=True)
                done.append('stopped the target copy')
            if keep:
                self.ops.release(self.ve)
                os.rename(self.host.ve_dir(self.ve), incoming_dir(self.host, self.ve))
            else:
                self.ops.remove(self.ve)
                done.append('removed the target copy')
        elif phase == 'registering':
            self.ops.release(self.ve)
        if not keep and os.path.isdir(incoming_dir(self.host, self.ve)):
            remove_tree(incoming_dir(self.host, self.ve))
            done.append('removed the copied files')
        if not keep:
            store = TemplateStore(self.host)
            for ref in reversed(data.get('templates_copied') or []):
                tname, tversion = _validate.template_ref(ref)
                try:
                    store.remove_unused(tname, [tversion])
                    done.append('removed template %s' % ref)
                except (VzError, OSError):
                    pass   # in use by another VE, or a template of another task: it stays
            self.journal.remove()
        else:
            self._phase('staging', kept=True)
            done.append('kept the copied files for a resume')
        return done

    def op_finish(self):
        if self.journal.exists:
            self.journal.remove()
        return True

    def op_state(self):
        return self.ops.state(self.ve)

    def fence(self):
        """Lost the source (EOF or silence): an uncommitted copy must not live on."""
        if self.journal is not None and self.journal.exists and \
                (self.journal.data or {}).get('phase') not in (None, 'committed'):
            try:
                self.abort(self.keep_target)
            except Exception:   # pylint: disable=broad-except  # nothing to report to: the journal stays
                pass

    def _phase(self, phase, **fields):
        if not self.journal.exists:
            self.journal.start(role='target')
        if phase is not None:
            fields['phase'] = phase
        self.journal.update(**fields)


def announce(meta, pid):
    """Tell the segment the VE's addresses are here now: gratuitous ARP / unsolicited NA from inside
    the VE (``_announce``), so bridges and neighbours learn its new place at once; returns what was sent."""
    sent = []
    for iface in (meta or {}).get('network') or [] if pid else []:
        addresses = (iface.get('ipv4') or []) + (iface.get('ipv6') or [])
        if not addresses:
            continue
        try:
            sent += _announce.announce(pid, iface['name'], addresses, count=2, interval=0.1)
        except Exception as exc:   # pylint: disable=broad-except  # neighbours learn at the VE's first packet
            sent.append('announcing on %s failed: %s' % (iface['name'], exc))
    return sent


def _run(argv, data=None, timeout=120):
    proc = subprocess.run(argv, input=data, capture_output=True, check=False, timeout=timeout)
    return proc.returncode, proc.stdout.decode('utf-8', 'replace'), proc.stderr.decode('utf-8', 'replace')


def serve(vz_root, idle=IDLE, stdin=None, stdout=None):
    """The agent's loop: one JSON request per line in, one answer per line out; fence on EOF or silence."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    target = Target(vz_root)
    lines = queue.Queue()

    def reader():
        for line in stdin:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=reader, daemon=True).start()
    last = time.monotonic()
    try:
        while True:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() - last > idle:
                    break
                continue
            if line is None:
                break
            last = time.monotonic()
            request = json.loads(line)
            if request.get('op') == 'bye':
                stdout.write(json.dumps({'ok': True, 'result': True}) + '\n')
                stdout.flush()
                target.journal = None   # a clean goodbye: the source decided what stays
                break
            try:
                if request.get('op') not in ('hello', 'ping', 'criu') and target.ve is None:
                    raise VzError('the agent serves one VE: hello names it first')
                handler = getattr(target, 'op_' + str(request.get('op')), None)
                if handler is None:
                    raise VzError('the agent has no operation %r' % (request.get('op'),))
                result = handler(**request.get('args') or {})
                answer = {'ok': True, 'result': result}
            except VzError as exc:
                answer = {'ok': False, 'error': exc.message,
                          'details': {k: v for k, v in exc.details.items() if isinstance(v, (str, int, bool))}}
            except OSError as exc:
                answer = {'ok': False, 'error': 'file system error on the target: %s%s'
                          % (exc.strerror or exc, (' (%s)' % exc.filename) if exc.filename else '')}
            except Exception as exc:   # pylint: disable=broad-except
                answer = {'ok': False, 'error': 'unexpected error on the target: %r' % (exc,)}
            stdout.write(json.dumps(answer) + '\n')
            stdout.flush()
            last = time.monotonic()
    finally:
        target.fence()
        if target.lock is not None:
            target.lock.release()


# -- the source's end ---------------------------------------------------------------------------
BOOTSTRAP = (
    "import sys,io,zipfile,tempfile,shutil,os\n"
    "d=sys.stdin.buffer\n"
    "n=int(d.readline())\n"
    "t=tempfile.mkdtemp(prefix='osvirt-migrate-')\n"
    "try:\n"
    " zipfile.ZipFile(io.BytesIO(d.read(n))).extractall(t)\n"
    " sys.path.insert(0,t)\n"
    " out=os.fdopen(os.dup(1),'w')\n"
    " os.dup2(2,1)\n"
    " from ansible_collections.osvirt.vz.plugins.module_utils import _migrate_agent as a\n"
    " a.serve(sys.argv[1],int(sys.argv[2]),d,out)\n"
    "finally:\n"
    " shutil.rmtree(t,ignore_errors=True)\n"
)


def package_zip():
    """The collection's module_utils loaded in this process, as zip bytes (sources only)."""
    import importlib  # pylint: disable=import-outside-toplevel
    import pkgutil  # pylint: disable=import-outside-toplevel
    package = sys.modules[PACKAGE]
    # modules imported only when needed (the guard, shaping, netlink) must travel too
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + '.'):
        try:
            importlib.import_module(info.name)
        except ImportError:
            pass   # an optional part this host lacks; the target then lacks it as well
    buffer = io.BytesIO()
    written = set()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, module in sorted(sys.modules.items()):
            if module is None or not (name == PACKAGE or name.startswith(PACKAGE + '.')):
                continue
            spec = getattr(module, '__spec__', None)
            loader = getattr(spec, 'loader', None)
            source = loader.get_source(name) if loader is not None and hasattr(loader, 'get_source') else None
            is_package = bool(getattr(spec, 'submodule_search_locations', None))
            path = name.replace('.', '/') + ('/__init__.py' if is_package else '.py')
            archive.writestr(path, source or '')
            written.add(path)
        parts = PACKAGE.split('.')
        for depth in range(1, len(parts) + 1):
            path = '/'.join(parts[:depth]) + '/__init__.py'
            if path not in written:
                archive.writestr(path, '')
    return buffer.getvalue()


class Channel:
    """The connection to the agent on the target (requests are serialised; a thread pings)."""

    def __init__(self, remote, python='python3', idle=IDLE):
        self.remote = remote
        self.idle = idle
        self.last_answer = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        argv = remote.command_argv([python, '-c', BOOTSTRAP, remote.vz_root, str(idle)])
        blob = package_zip()
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, close_fds=True)
        except FileNotFoundError:
            raise VzError('ssh is not installed on this host')
        self._stderr = []
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self.proc.stdin.write(b'%d\n' % len(blob) + blob)
            self.proc.stdin.flush()
        except OSError:
            pass   # the answer to the first request says why
        self._pinger = threading.Thread(target=self._ping, daemon=True)
        self._pinger.start()

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line.decode('utf-8', 'replace').rstrip())
            del self._stderr[:-20]

    def _ping(self):
        while not self._stop.wait(PING_EVERY):
            try:
                self.call('ping')
            except VzError:
                return

    def call(self, op, **args):
        """Send one request and return its result; VzError with the target's message on failure."""
        with self._lock:
            try:
                self.proc.stdin.write((json.dumps({'op': op, 'args': args}) + '\n').encode())
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (OSError, ValueError):
                line = b''
            if not line:
                self.proc.poll()
                raise VzError('lost the connection to %s (%s): %s' % (
                    self.remote, op, ' | '.join(l for l in self._stderr[-3:] if l) or 'ssh ended'),
                    lost_target=True)
            self.last_answer = time.monotonic()
        answer = json.loads(line)
        if not answer.get('ok'):
            raise VzError(answer.get('error') or 'the target failed %s' % op, **(answer.get('details') or {}))
        return answer.get('result')

    def close(self, clean=True):
        self._stop.set()
        if clean and self.proc.poll() is None:
            try:
                self.call('bye')
            except VzError:
                pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=self.idle + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def fenced_by(self):
        """The monotonic time after which the agent has certainly fenced an uncommitted copy."""
        return self.last_answer + self.idle + 3
