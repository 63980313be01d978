# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection plugin osvirt.vz.ve: run tasks inside a VE through its host (ssh + lxc-attach)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: ve
author: osvirt developers (!UNKNOWN)
short_description: Run tasks inside an osvirt.vz VE through its host (SSH or local, then lxc-attach)
description:
  - Reaches the VE's host the way Ansible reaches that host, with C(ansible.builtin.ssh) (so the
    ControlPersist master and the C(ssh_args) of C(ansible.cfg) apply, shared with the host's own
    tasks), or without SSH when the host is the controller, and runs each command inside the VE
    with C(lxc-attach --clear-env) as the VE's root, from the VE root's home directory.
  - No sshd is needed inside the VE. The VE needs C(/bin/sh) and C(cat); modules need a Python
    inside the VE.
  - Files are streamed through the attach in both directions (binary safe, any size, any file
    name); C(put_file) keeps the mode of the local file.
  - C(become) runs inside the VE (for example C(become_method=su) or C(sudo) of the VE), built
    by Ansible's become plugins. Password prompts of become are not answered; root in the VE
    needs none.
  - The inventory plugin C(osvirt.vz.ve) sets every variable below for the VEs it lists.
    Written by hand, a VE host entry looks like
    C(web1 ansible_connection=osvirt.vz.ve ansible_vz_host=192.0.2.10 ansible_vz_host_user=root).
  - A VE that does not exist or is stopped fails the task as unreachable, with one message that
    names the host and the VE.
options:
  ve:
    description:
      - Name of the VE on its host. Defaults to the inventory host name.
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_vz_ve
  vz_root:
    description: Data root of the VE host; the VEs live in C(<vz_root>/ves).
    type: str
    default: /var/lib/vz
    vars:
      - name: ansible_vz_root
  vz_host:
    description:
      - Address (or name) of the VE's host, as SSH reaches it.
      - C(localhost), C(127.0.0.1) and C(::1) mean the controller itself unless
        O(vz_host_connection) says otherwise.
    type: str
    required: true
    vars:
      - name: ansible_vz_host
  vz_host_connection:
    description:
      - How to reach the VE's host. C(auto) is C(local) for C(localhost), C(127.0.0.1) and C(::1)
        and C(ssh) for every other host.
    type: str
    default: auto
    choices: [auto, ssh, local]
    vars:
      - name: ansible_vz_host_connection
  vz_host_user:
    description: SSH user on the VE host (the ssh plugin's C(remote_user) settings apply when unset).
    type: str
    vars:
      - name: ansible_vz_host_user
  vz_host_port:
    description: SSH port of the VE host.
    type: int
    vars:
      - name: ansible_vz_host_port
  vz_host_private_key_file:
    description: SSH private key for the VE host.
    type: path
    vars:
      - name: ansible_vz_host_private_key_file
  vz_host_ssh_common_args:
    description: Extra arguments for every ssh call to the VE host (like C(ansible_ssh_common_args)).
    type: str
    vars:
      - name: ansible_vz_host_ssh_common_args
  vz_host_ssh_extra_args:
    description: Extra arguments for ssh only (like C(ansible_ssh_extra_args)).
    type: str
    vars:
      - name: ansible_vz_host_ssh_extra_args
  vz_host_password:
    description: SSH password of the VE host (needs C(sshpass); files are then sent whole, not streamed).
    type: str
    vars:
      - name: ansible_vz_host_password
  vz_host_sudo:
    description:
      - Run C(lxc-attach) through C(sudo -n) on the host, for a host user that is not root and
        may run it without a password.
    type: bool
    default: false
    vars:
      - name: ansible_vz_host_sudo
  vz_host_timeout:
    description: SSH connect timeout for the VE host, in seconds (the ssh plugin's setting when unset).
    type: int
    vars:
      - name: ansible_vz_host_timeout
  ve_path:
    description: C(PATH) of commands inside the VE (the environment is otherwise cleared).
    type: str
    default: /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    vars:
      - name: ansible_vz_ve_path
  remote_user:
    description:
      - The user commands run as inside the VE. Only C(root) is supported; use C(become) for
        other users.
    type: str
    default: root
    choices: [root]
  pipelining:
    description:
      - Send modules to the VE's Python through stdin instead of a temporary file.
    type: bool
    default: false
    env:
      - name: ANSIBLE_PIPELINING
    ini:
      - section: defaults
        key: pipelining
      - section: connection
        key: pipelining
    vars:
      - name: ansible_pipelining
"""

EXAMPLES = r"""
# Usually set by the inventory plugin osvirt.vz.ve; by hand in an INI inventory:
# [ves]
# web1 ansible_connection=osvirt.vz.ve ansible_vz_host=192.0.2.10 ansible_vz_host_user=root
# web1-on-controller ansible_connection=osvirt.vz.ve ansible_vz_ve=web1 ansible_vz_host=localhost

- name: Patch every VE built from debian-12
  hosts: template_debian_12
  gather_facts: false
  tasks:
    - name: Upgrade the packages inside the VE
      ansible.builtin.apt:
        upgrade: dist
        update_cache: true
"""

import os
import re
import stat

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import LxcClient
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.plugin_utils._hostrun import LOCAL_NAMES, HostRunner

display = Display()

# Commands start in the home directory of the VE's root, whatever the host's cwd was.
_PROLOGUE = 'cd "$HOME" 2>/dev/null || cd /\n'
# put_file: the destination is $1 (never part of the script), the mode $2.
_PUT_SCRIPT = 'cat > "$1" && chmod "$2" "$1"'
# fetch_file: the mode goes to stderr first, then the file's bytes to stdout.
_FETCH_SCRIPT = '[ -r "$1" ] || { echo "cannot read $1" >&2; exit 2; }; ' \
                '(stat -c %a "$1" 2>/dev/null || echo) >&2; exec cat < "$1"'


class Connection(ConnectionBase):
    """ssh (or local) to the VE's host, then lxc-attach into the VE."""

    transport = 'osvirt.vz.ve'
    has_pipelining = True
    default_user = 'root'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._runner = None
        self._client = None
        self._ve = None

    # -- setup ------------------------------------------------------------------------------
    def _connect(self):
        if self._connected:
            return self
        try:
            self._ve = _validate.ve_name(self.get_option('ve'))
            vz_root = _validate.vz_root(self.get_option('vz_root'))
        except VzError as exc:
            raise AnsibleConnectionFailure('osvirt.vz.ve: %s' % exc)
        address = self.get_option('vz_host')
        if not address:
            raise AnsibleConnectionFailure('osvirt.vz.ve: VE %s has no host: set ansible_vz_host (the inventory '
                                           'plugin osvirt.vz.ve does)' % self._ve)
        kind = self.get_option('vz_host_connection')
        if kind == 'auto':
            kind = 'local' if address in LOCAL_NAMES else 'ssh'
        self._runner = HostRunner(
            address, connection=kind, address=address, user=self.get_option('vz_host_user'),
            port=self.get_option('vz_host_port'), private_key_file=self.get_option('vz_host_private_key_file'),
            ssh_common_args=self.get_option('vz_host_ssh_common_args'),
            ssh_extra_args=self.get_option('vz_host_ssh_extra_args'),
            password=self.get_option('vz_host_password'), sudo=self.get_option('vz_host_sudo'),
            timeout=self.get_option('vz_host_timeout'))
        self._client = LxcClient(os.path.join(vz_root, 'ves'), runner=self._runner.runner)
        display.vvv('ATTACH TO VE %s ON %s (%s)' % (self._ve, address, kind), host=self._ve)
        self._connected = True
        return self

    def _attach_argv(self, argv):
        env = {'PATH': self.get_option('ve_path'), 'HOME': '/root', 'USER': 'root', 'LOGNAME': 'root',
               'SHELL': '/bin/sh'}
        return self._client.attach_argv(self._ve, argv, env)

    def _where(self):
        return 'VE %s on host %s' % (self._ve, self._runner.name)

    def _check_attach(self, rc, err):
        """Turn a failed attach (VE missing, stopped, no LXC) into one AnsibleConnectionFailure.

        Only a failing lxc-attach costs the extra lxc-info round trip: a command inside the VE may
        fail as it likes.
        """
        if rc == 0:
            return
        text = to_text(err, errors='surrogate_or_replace')
        if rc == 127 and 'lxc-attach' in text and re.search(r'not found|No such file', text) and \
                not re.search(r'^lxc-attach: ', text, re.M):
            raise AnsibleConnectionFailure('%s: lxc-attach is not installed on the host' % self._where())
        if not re.search(r'^lxc-attach: %s: ' % re.escape(self._ve), text, re.M):
            return
        state = self._client.state(self._ve)['state']
        if state == 'absent':
            raise AnsibleConnectionFailure('%s does not exist (no such VE in %s)' % (self._where(), self._client.lxcpath))
        if state != 'running':
            raise AnsibleConnectionFailure('%s is %s: start it first (osvirt.vz.ve state=started)'
                                           % (self._where(), state))
        if rc == 1 and 'Failed to get attach context' in text:
            raise AnsibleConnectionFailure('%s: lxc-attach failed: %s' % (self._where(), text.strip().splitlines()[-1]))

    # -- commands ---------------------------------------------------------------------------
    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv('EXEC in %s: %s' % (self._where(), cmd), host=self._ve)
        rc, out, err = self._runner.run(self._attach_argv(['/bin/sh', '-c', _PROLOGUE + cmd]), in_data)
        self._check_attach(rc, err)
        return rc, out, err

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv('PUT %s TO %s in %s' % (in_path, out_path, self._where()), host=self._ve)
        try:
            source = open(to_bytes(in_path, errors='surrogate_or_strict'), 'rb')
        except OSError as exc:
            raise AnsibleFileNotFound('file or module does not exist: %s (%s)' % (in_path, exc.strerror))
        with source:
            mode = '%o' % stat.S_IMODE(os.fstat(source.fileno()).st_mode)
            rc, _out, err = self._runner.send(self._attach_argv(['/bin/sh', '-c', _PUT_SCRIPT, 'sh', out_path, mode]),
                                              source)
        self._check_attach(rc, err)
        if rc != 0:
            raise AnsibleError('failed to write %s in %s: %s' % (out_path, self._where(), _last_line(err)))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv('FETCH %s FROM %s TO %s' % (in_path, self._where(), out_path), host=self._ve)
        b_out = to_bytes(out_path, errors='surrogate_or_strict')
        partial = b_out + b'.osvirt-partial'
        with open(partial, 'wb') as sink:
            rc, err = self._runner.receive(self._attach_argv(['/bin/sh', '-c', _FETCH_SCRIPT, 'sh', in_path]), sink)
        try:
            self._check_attach(rc, err)
            if rc != 0:
                raise AnsibleError('failed to read %s in %s: %s' % (in_path, self._where(), _last_line(err)))
            mode = to_text(err, errors='surrogate_or_replace').split('\n', 1)[0].strip()
            if re.fullmatch(r'[0-7]{1,4}', mode):
                os.chmod(partial, int(mode, 8))
            os.rename(partial, b_out)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)

    def reset(self):
        if self._runner is not None:
            self._runner.reset()

    def close(self):
        # the SSH control master stays up for the next task (ControlPersist), like ansible.builtin.ssh
        self._connected = False


def _last_line(err):
    lines = to_text(err, errors='surrogate_or_replace').strip().splitlines()
    return lines[-1] if lines else 'no error output'
