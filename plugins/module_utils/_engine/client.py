# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one LXC client of osvirt.vz.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Every lxc-* command of the collection goes through ``LxcClient``: argv lists only, never a shell
string, and every failure raises ``LxcError`` carrying command, rc, stdout and stderr. The client
does not know how a command reaches the host: it is given a *runner*, a callable
``runner(argv, data=None) -> (rc, stdout, stderr)``. Modules use ``local_runner`` (the module runs
on the host); the connection and inventory plugins pass a runner that goes over SSH.
"""

from __future__ import annotations

import os
import re
import subprocess

from .._errors import VzError

# Container states as LXC names them, folded into the four that the collection speaks of.
STATE_WORDS = {
    'STOPPED': 'stopped',
    'STARTING': 'starting',
    'RUNNING': 'running',
    'STOPPING': 'stopping',
    'ABORTING': 'stopping',
    'FREEZING': 'frozen',
    'FROZEN': 'frozen',
    'THAWED': 'running',
}

# The listing every reader of VE states uses (modules, inventory plugin): one lxc-ls per host.
LIST_ARGS = ('--fancy', '--fancy-format', 'NAME,STATE,PID')
ENV_NAME_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')

_ENV = dict(os.environ, LC_ALL='C', LANG='C')
_ENV.setdefault('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')


class LxcError(VzError):
    """A failed lxc-* command."""

    def __init__(self, message, cmd, rc, stdout, stderr):
        super().__init__(message, cmd=cmd, rc=rc, stdout=stdout, stderr=stderr)
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


def local_runner(argv, data=None):
    """Run ``argv`` on this machine and return (rc, stdout, stderr) as text."""
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, env=_ENV, check=False,
                              stdin=None if data is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        return 127, '', '%s: command not found (is the lxc package installed?)' % argv[0]
    return (proc.returncode, proc.stdout.decode('utf-8', 'replace'),
            proc.stderr.decode('utf-8', 'replace'))


class LxcClient:
    """lxc-* commands against one lxcpath (``<vz_root>/ves``)."""

    def __init__(self, lxcpath, runner=local_runner):
        self.lxcpath = lxcpath
        self.runner = runner

    # -- plumbing -------------------------------------------------------------------------
    def argv(self, tool, name=None, args=()):
        """The argv list ``tool -P lxcpath [-n name] args...`` (nothing is run)."""
        argv = [tool, '-P', self.lxcpath]
        if name is not None:
            argv += ['-n', name]
        return argv + list(args)

    def call(self, tool, name=None, args=(), check=True, data=None, what=None):
        """Run ``tool -P lxcpath [-n name] args...``; raise LxcError on failure when ``check``."""
        argv = self.argv(tool, name, args)
        rc, out, err = self.runner(argv, data)
        if check and rc != 0:
            detail = (err or out).strip().splitlines()
            raise LxcError('%s failed (rc=%d)%s' % (what or ' '.join(argv[:1] + argv[3:]), rc,
                                                    ': ' + detail[-1] if detail else ''),
                           cmd=argv, rc=rc, stdout=out, stderr=err)
        return rc, out, err

    # -- queries --------------------------------------------------------------------------
    def list_argv(self):
        """argv of the listing that ``list`` runs and ``parse_ls`` reads (for runners that batch it)."""
        return self.argv('lxc-ls', args=LIST_ARGS)

    def list(self):
        """Every container of the lxcpath as ``{name: {'state': ..., 'pid': int or None}}``; one command."""
        _rc, out, _err = self.call('lxc-ls', args=LIST_ARGS, what='listing VEs')
        return parse_ls(out)

    def state(self, name):
        """State and init pid of one container: ``{'state': ..., 'pid': ...}`` (state 'absent' if unknown)."""
        rc, out, _err = self.call('lxc-info', name, ['--state', '--pid'], check=False)
        if rc != 0:
            return {'state': 'absent', 'pid': None}
        return parse_info(out)

    # -- actions --------------------------------------------------------------------------
    def start(self, name, logfile=None):
        args = []
        if logfile:
            args += ['--logfile', logfile, '--logpriority', 'ERROR']
        self.call('lxc-start', name, args, what='starting VE %s' % name)

    def stop(self, name, timeout=30):
        """Clean shutdown through the VE's init; killed after ``timeout`` seconds."""
        self.call('lxc-stop', name, ['--timeout', str(int(timeout))], what='stopping VE %s' % name)

    def kill(self, name):
        self.call('lxc-stop', name, ['--kill'], what='killing VE %s' % name)

    def freeze(self, name):
        self.call('lxc-freeze', name, what='freezing VE %s' % name)

    def unfreeze(self, name):
        self.call('lxc-unfreeze', name, what='unfreezing VE %s' % name)

    def wait(self, name, states, timeout=10):
        """Wait until the container reaches one of ``states`` (LXC names, e.g. ['RUNNING'])."""
        self.call('lxc-wait', name, ['--state', '|'.join(states), '--timeout', str(int(timeout))],
                  what='waiting for VE %s to be %s' % (name, ' or '.join(states)))

    def forget(self, name):
        """Remove LXC's own lock file of a container that no longer exists.

        Every lxc-* command on a container makes ``<runtime dir>/lxc/lock/<lxcpath>/.<name>`` and
        nothing removes it: a host that makes and removes VEs all day would keep one file per name
        it ever used (in /run, until the next boot). Call it only while holding the VE's own lock,
        after its directory is gone.
        """
        if self.runner is not local_runner:
            return   # the host is elsewhere; only the modules, which run on it, remove VEs
        base = os.environ.get('XDG_RUNTIME_DIR') if os.geteuid() != 0 else None
        path = os.path.join(base or '/run', 'lxc', 'lock', self.lxcpath.strip('/'), '.' + name)
        try:
            os.unlink(path)
        except OSError:
            pass

    def attach_argv(self, name, argv, env=None):
        """argv of ``lxc-attach`` running ``argv`` inside the VE with a clear environment plus ``env``.

        Every word stays one argv element; a runner that goes over SSH quotes each one.
        """
        return self.argv('lxc-attach', name, _attach_args(argv, env))

    def attach(self, name, argv, data=None, check=True, env=None):
        """Run ``argv`` inside the VE (clear environment plus ``env``); returns (rc, stdout, stderr)."""
        return self.call('lxc-attach', name, _attach_args(argv, env), check=check, data=data,
                         what='running %s in VE %s' % (argv[0], name))


def _attach_args(argv, env):
    args = ['--clear-env']
    for key, value in (env or {}).items():
        if not ENV_NAME_RE.fullmatch(key):
            raise VzError('invalid environment variable name %r' % (key,))
        args += ['--set-var', '%s=%s' % (key, value)]
    return args + ['--'] + list(argv)


def parse_ls(text):
    """Parse ``lxc-ls --fancy --fancy-format NAME,STATE,PID`` output."""
    result = {}
    lines = text.splitlines()
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 3:
            continue
        name, state, pid = fields[0], fields[1], fields[2]
        result[name] = {
            'state': STATE_WORDS.get(state, state.lower()),
            'pid': int(pid) if pid.isdigit() else None,
        }
    return result


def parse_info(text):
    """Parse ``lxc-info --state --pid`` output."""
    state, pid = 'absent', None
    for line in text.splitlines():
        key, _sep, value = line.partition(':')
        value = value.strip()
        if key.strip() == 'State':
            state = STATE_WORDS.get(value, value.lower())
        elif key.strip() == 'PID' and value.isdigit():
            pid = int(value)
    return {'state': state, 'pid': pid}
