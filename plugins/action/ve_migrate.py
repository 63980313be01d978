# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of osvirt.vz.ve_migrate: turn ``target: <inventory host>`` into how to reach it.

The module runs on the source host and connects to the target itself (data never passes the
controller). When ``target`` names an inventory host, its address, user, port, key and Python
interpreter come from that host's variables, the way Ansible would reach it; a dict is passed on
as it is (its ``host`` may itself be an inventory host, whose address then fills in the gaps).
Where the source host has ``host_peer_ssh: true`` (the host role's peer SSH), its peer key and
known hosts file are used instead of the controller's key, with strict host key checking.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# target key -> inventory variables that give it, first found wins
_FROM_INVENTORY = {
    'host': ('ansible_host', 'ansible_ssh_host'),
    'user': ('ansible_user', 'ansible_ssh_user'),
    'port': ('ansible_port', 'ansible_ssh_port'),
    'ssh_key': ('ansible_ssh_private_key_file', 'ansible_private_key_file'),
    'python': ('ansible_python_interpreter',),
}


PEER_KEY = '/root/.ssh/osvirt_vz_peer'
PEER_KNOWN_HOSTS = '/root/.ssh/osvirt_vz_peer_known_hosts'


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = dict(self._task.args)
        target = args.get('target')
        if target is None:
            raise AnsibleActionFail('target is required: an inventory hostname or a dict with host')
        if isinstance(target, str):
            target = {'host': target}
        if not isinstance(target, dict):
            raise AnsibleActionFail('target must be an inventory hostname or a dict with host, user, port, ssh_key')
        target = dict(target)
        explicit = dict(target)
        hostvars = task_vars.get('hostvars') or {}
        name = target.get('host')
        if isinstance(name, str) and name in hostvars:
            found = hostvars[name]
            target.setdefault('name', name)
            resolved = {}
            for key, variables in _FROM_INVENTORY.items():
                for variable in variables:
                    value = found.get(variable)
                    if value not in (None, ''):
                        resolved[key] = self._templar.template(value)
                        break
            for key, value in resolved.items():
                if key == 'host' or target.get(key) in (None, ''):
                    target[key] = value
            if found.get('vz_root') and not target.get('vz_root'):
                target['vz_root'] = self._templar.template(found['vz_root'])
        if self._templar.template(task_vars.get('host_peer_ssh', False)) in (True, 'true', 'yes', 1):
            # the host role's peer SSH key (roles/host "Peer SSH") is how hosts log in to each other
            target['ssh_key'] = explicit.get('ssh_key') or self._templar.template(
                task_vars.get('host_peer_ssh_key', PEER_KEY))
            target['known_hosts'] = explicit.get('known_hosts') or self._templar.template(
                task_vars.get('host_peer_ssh_known_hosts', PEER_KNOWN_HOSTS))
            target['host_key_checking'] = explicit.get('host_key_checking') or 'strict'
        if str(target.get('python') or '').startswith('auto') or '{{' in str(target.get('python') or ''):
            target.pop('python')   # interpreter discovery is the controller's; the module runs python3
        args['target'] = target
        result.update(self._execute_module(module_name='osvirt.vz.ve_migrate', module_args=args,
                                           task_vars=task_vars))
        return result
