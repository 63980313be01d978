# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and commands between hosts over SSH: rsync pulls (template copies), pushes and remote
commands (migration).

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Every command is an argv list. rsync takes the SSH command as one string (``-e``) that it
splits on spaces itself, honouring quotes; so every part of it is validated first (no
whitespace, quotes or control characters can reach it) and quoted as well.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess

from . import _validate
from ._errors import VzError

USER_RE = re.compile(r'[a-z_][a-z0-9_.-]{0,31}')
HOSTNAME_RE = re.compile(r'[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*\.?')
HOST_KEY_CHECKING = {'strict': 'yes', 'accept-new': 'accept-new', 'off': 'no'}
# rsync exit codes that mean "the remote side has no such file"
_MISSING_CODES = (23,)


class Remote:
    """Another host reached with SSH as ``user`` with the private key ``ssh_key`` (a path here)."""

    def __init__(self, host, user='root', ssh_key=None, port=None, vz_root='/var/lib/vz', known_hosts=None,
                 host_key_checking='accept-new', connect_timeout=10, alive_interval=None):
        self.host = _remote_host(host)
        if not isinstance(user, str) or not USER_RE.fullmatch(user):
            raise VzError('invalid remote user %r: use a login name like root' % (user,))
        self.user = user
        self.ssh_key = _validate.host_path(ssh_key, 'ssh_key') if ssh_key else None
        if port is not None and not 1 <= int(port) <= 65535:
            raise VzError('invalid SSH port %r: use 1-65535' % (port,))
        self.port = int(port) if port is not None else None
        self.vz_root = _validate.vz_root(vz_root or '/var/lib/vz')
        self.known_hosts = _validate.host_path(known_hosts, 'known_hosts') if known_hosts else None
        if host_key_checking not in HOST_KEY_CHECKING:
            raise VzError('invalid host_key_checking %r: use one of %s'
                          % (host_key_checking, ', '.join(sorted(HOST_KEY_CHECKING))))
        self.host_key_checking = host_key_checking
        self.connect_timeout = int(connect_timeout)
        # seconds between SSH keepalives; three missed ones end the connection (a cut link fails fast)
        self.alive_interval = int(alive_interval) if alive_interval else None
        # a socket path: the first connection becomes the master, later ones (rsync) ride on it
        self.control_path = None

    def __str__(self):
        return '%s@%s' % (self.user, self.host)

    def ssh_argv(self):
        """The SSH command as an argv list: key, batch mode (never a password prompt), host keys."""
        argv = ['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=%d' % self.connect_timeout,
                '-o', 'StrictHostKeyChecking=%s' % HOST_KEY_CHECKING[self.host_key_checking]]
        if self.ssh_key:
            argv += ['-i', self.ssh_key, '-o', 'IdentitiesOnly=yes']
        if self.known_hosts:
            argv += ['-o', 'UserKnownHostsFile=%s' % self.known_hosts]
        if self.port:
            argv += ['-p', str(self.port)]
        if self.alive_interval:
            argv += ['-o', 'ServerAliveInterval=%d' % self.alive_interval, '-o', 'ServerAliveCountMax=3']
        if self.control_path:
            argv += ['-o', 'ControlMaster=auto', '-o', 'ControlPath=%s' % self.control_path,
                     '-o', 'ControlPersist=no']
        return argv

    def command_argv(self, argv):
        """The argv that runs ``argv`` on the remote host. SSH joins the words into one line for the
        remote shell, so each word is quoted here: the remote side sees exactly ``argv``."""
        return self.ssh_argv() + ['--', self.host] + [shlex.quote(str(word)) for word in argv]

    def ssh_command(self):
        """The value of rsync's ``-e``: the validated argv, each part quoted."""
        return ' '.join(shlex.quote(part) for part in self.ssh_argv())

    def spec(self, path):
        """rsync's ``user@host:path`` for a remote absolute path."""
        host = '[%s]' % self.host if ':' in self.host else self.host
        return '%s@%s:%s' % (self.user, host, path)

    # -- commands ------------------------------------------------------------------------
    def _run(self, argv, what):
        try:
            proc = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VzError('%s: rsync is not installed on this host' % what)
        err = proc.stderr.decode('utf-8', 'replace').strip()
        if proc.returncode == 255 or 'connection unexpectedly closed' in err and proc.returncode == 12:
            raise VzError('%s: cannot reach %s over SSH: %s' % (what, self, _last_lines(err)),
                          cmd=argv, rc=proc.returncode, stderr=err)
        if proc.returncode in _MISSING_CODES and 'No such file or directory' in err:
            raise VzError('%s: not found on %s' % (what, self), missing=True, cmd=argv, rc=proc.returncode,
                          stderr=err)
        if proc.returncode != 0:
            raise VzError('%s failed (rsync rc=%d): %s' % (what, proc.returncode, _last_lines(err)),
                          cmd=argv, rc=proc.returncode, stderr=err)
        return proc.stdout.decode('utf-8', 'replace')

    def list_dir(self, path, what):
        """Names in the remote directory ``path`` (rsync --list-only; no remote shell command)."""
        out = self._run(['rsync', '--list-only', '-e', self.ssh_command(), self.spec(path.rstrip('/') + '/')], what)
        names = []
        for line in out.splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[4] != '.':
                names.append(fields[4])
        return names

    def pull(self, path, dest, what, excludes=()):
        """Copy the remote directory ``path`` into ``dest`` with owners, links, hard links, ACLs, xattrs."""
        argv = ['rsync', '-aHAX', '--numeric-ids', '--delete']
        for pattern in excludes:
            argv += ['--exclude', pattern]
        argv += ['-e', self.ssh_command(), self.spec(path.rstrip('/') + '/'), dest.rstrip('/') + '/']
        self._run(argv, what)

    def push(self, path, dest, what, filters=(), timeout=None):
        """Copy the local directory ``path`` into the remote directory ``dest`` (same attributes as
        ``pull``; ``filters`` are rsync filter rules such as ``+ /config``, ``- *``).

        Returns ``{'files': bytes of the files that changed, 'sent': bytes on the wire}`` from
        rsync's statistics, the figures a pre-copy round is judged by.
        """
        argv = ['rsync', '-aHAX', '--numeric-ids', '--delete', '--stats']
        if timeout:
            argv += ['--timeout=%d' % int(timeout)]
        for rule in filters:
            argv += ['--filter', rule]
        argv += ['-e', self.ssh_command(), path.rstrip('/') + '/', self.spec(dest.rstrip('/') + '/')]
        try:
            return rsync_stats(self._run(argv, what))
        except VzError as exc:
            if 'No space left on device' not in (exc.details.get('stderr') or ''):
                raise
            # the receiving side's disk filled up: say where, not only rsync's last lines
            raise VzError('%s failed: the disk of %s is full (no space left on device under %s): %s'
                          % (what, self, dest, _last_lines(exc.details['stderr'])), no_space=True,
                          cmd=argv, rc=exc.details.get('rc'), stderr=exc.details['stderr'])


def rsync_stats(text):
    """``files`` (total transferred file size) and ``sent`` (total bytes sent) of rsync ``--stats``."""
    figures = {'files': 0, 'sent': 0}
    for line in text.splitlines():
        key, _sep, value = line.partition(':')
        number = value.strip().split(' ')[0].replace(',', '') if value else ''
        if not number.isdigit():
            continue
        if key.strip() == 'Total transferred file size':
            figures['files'] = int(number)
        elif key.strip() == 'Total bytes sent':
            figures['sent'] = int(number)
    return figures


def _remote_host(host):
    if not isinstance(host, str) or not host:
        raise VzError('source host is required: the address of a host that has the template')
    try:
        return str(ipaddress.ip_address(host.strip('[]')))
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(host) or len(host) > 253:
        raise VzError('invalid source host %r: use a host name or an IP address' % (host,))
    return host


def _last_lines(text, count=3):
    return ' | '.join(line for line in text.splitlines()[-count:] if line.strip())
