# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run argv lists on a VE host from the controller: locally, or over Ansible's own ssh plugin.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The connection plugin and the inventory plugin reach a VE host the way Ansible reaches it:
``ansible.builtin.ssh`` with the host's address, user, port, key and ssh arguments (so the
ControlPersist master, ``ssh_args`` and ``control_path_dir`` of ansible.cfg apply and are shared
with ordinary tasks on that host), or a plain subprocess when the host is the controller.
Commands are argv lists; over SSH every word is quoted with ``shlex.quote`` before the remote
shell sees it, so no VE name, path or argument can inject shell code.

``HostRunner.runner`` is the runner the LXC client (``_engine/client.py``) expects.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

LOCAL_NAMES = ('localhost', '127.0.0.1', '::1')
_LOCAL_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
# The plugin loader imports a plugin's module on first use; two threads doing that at once see a
# half-initialised module ("module ... ssh has no attribute 'Connection'"): load one at a time.
_LOADER_LOCK = threading.Lock()


def quote_command(argv):
    """One shell command line that runs exactly ``argv`` (every word quoted)."""
    return ' '.join(shlex.quote(str(word)) for word in argv)


class HostRunner:
    """Runs argv lists on one VE host; ``name`` is how messages call the host."""

    def __init__(self, name, connection='ssh', address=None, user=None, port=None, private_key_file=None,
                 ssh_common_args=None, ssh_extra_args=None, password=None, sudo=False, timeout=None):
        if connection not in ('ssh', 'local'):
            raise AnsibleConnectionFailure('host %s: connection %r is not supported to reach a VE host '
                                           '(use ssh or local)' % (name, connection))
        self.name = name
        self.connection = connection
        self.address = address or name
        self.sudo = bool(sudo)
        self._ssh = None
        self._streams = True
        if connection == 'ssh':
            self._ssh = self._ssh_plugin(user, port, private_key_file, ssh_common_args, ssh_extra_args,
                                         password, timeout)
            # sshpass feeds a password through a pipe that only the plugin's own run loop serves
            self._streams = not password

    def _ssh_plugin(self, user, port, private_key_file, ssh_common_args, ssh_extra_args, password, timeout):
        context = PlayContext()
        context.remote_addr = self.address
        with _LOADER_LOCK:
            conn = connection_loader.get('ansible.builtin.ssh', context, task_uuid='osvirt.vz',
                                         ansible_playbook_pid=str(os.getpid()))
        variables = {
            'ansible_host': self.address,
            'ansible_user': user,
            'ansible_port': port,
            'ansible_ssh_private_key_file': private_key_file,
            'ansible_ssh_common_args': ssh_common_args,
            'ansible_ssh_extra_args': ssh_extra_args,
            'ansible_password': password,
            'ansible_ssh_timeout': timeout,
        }
        conn.set_options(var_options={k: v for k, v in variables.items() if v not in (None, '')})
        return conn

    @property
    def is_local(self):
        return self._ssh is None

    def _full(self, argv):
        return (['sudo', '-n', '--'] if self.sudo else []) + [str(word) for word in argv]

    # -- whole results in memory ------------------------------------------------------------
    def run(self, argv, data=None):
        """Run ``argv`` on the host; ``data`` (bytes) goes to its stdin. Returns (rc, stdout, stderr) bytes.

        Raises AnsibleConnectionFailure when the host cannot be reached.
        """
        argv = self._full(argv)
        if self._ssh is None:
            try:
                proc = subprocess.run(argv, input=data, capture_output=True, check=False, env=_local_env(),
                                      stdin=None if data is not None else subprocess.DEVNULL)
            except FileNotFoundError:
                return 127, b'', ('%s: command not found' % argv[0]).encode()
            return proc.returncode, proc.stdout, proc.stderr
        return self._ssh.exec_command(quote_command(argv), in_data=data, sudoable=False)

    def runner(self, argv, data=None):
        """The same as ``run`` with text in and out: the runner of ``LxcClient``."""
        rc, out, err = self.run(argv, data.encode() if isinstance(data, str) else data)
        return rc, to_text(out, errors='surrogate_or_replace'), to_text(err, errors='surrogate_or_replace')

    # -- streams ----------------------------------------------------------------------------
    def _popen_argv(self, argv):
        argv = self._full(argv)
        if self._ssh is None:
            return argv
        self._ssh.host = self._ssh.get_option('host')
        return self._ssh._build_command(self._ssh.get_option('ssh_executable'), 'ssh', self._ssh.host,
                                        quote_command(argv))

    def send(self, argv, source):
        """Run ``argv`` with the open binary file ``source`` streamed to its stdin; (rc, stdout, stderr)."""
        if not self._streams:
            return self.run(argv, source.read())
        proc = subprocess.Popen(self._popen_argv(argv), stdin=source, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_local_env() if self.is_local else None)
        out, err = proc.communicate()
        self._check_ssh(proc.returncode, err)
        return proc.returncode, out, err

    def receive(self, argv, sink):
        """Run ``argv`` with its stdout streamed into the open binary file ``sink``; (rc, stderr)."""
        if not self._streams:
            rc, out, err = self.run(argv)
            sink.write(out)
            return rc, err
        proc = subprocess.Popen(self._popen_argv(argv), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.PIPE, env=_local_env() if self.is_local else None)
        _out, err = proc.communicate()
        self._check_ssh(proc.returncode, err)
        return proc.returncode, err

    def _check_ssh(self, rc, err):
        if self._ssh is not None and rc == 255:
            raise AnsibleConnectionFailure('cannot reach VE host %s over SSH: %s'
                                           % (self.name, to_text(err, errors='surrogate_or_replace').strip()))

    def reset(self):
        """Drop the SSH control master of the host (the next command opens a new one)."""
        if self._ssh is not None:
            self._ssh.reset()


def _local_env():
    env = dict(os.environ)
    path = env.get('PATH', '')
    # lxc-* live in /usr/bin, but sudo and friends may not be on a minimal PATH
    env['PATH'] = path + ':' + _LOCAL_PATH if path else _LOCAL_PATH
    return env
