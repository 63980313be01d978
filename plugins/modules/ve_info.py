#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_info
short_description: List the Virtual Environments of a host with state, template, addresses and usage
version_added: 0.1.0
description:
  - Reports every VE of the host, or those named or in the given states.
  - One C(lxc-ls) call serves all VEs; the rest is read from files, so the module stays fast with hundreds of VEs.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.info
options:
  name:
    description: Only these VEs. Names that do not exist are listed in RV(missing).
    type: list
    elements: str
  state:
    description: Only VEs in one of these states.
    type: list
    elements: str
    choices: [running, stopped, frozen]
  usage:
    description: Include memory in use and the size of each private area (walks the private area).
    type: bool
    default: true
seealso:
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: All VEs of the host
  osvirt.vz.ve_info:
  register: info

- name: Show a table
  ansible.builtin.debug:
    msg: "{{ info.ves | map(attribute='name') | zip(info.ves | map(attribute='state')) | list }}"

- name: Running VEs on an outdated busybox version
  osvirt.vz.ve_info:
    state: [running]
  register: running
'''

RETURN = r'''
ves:
  description: The VEs, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VE name.
      type: str
    state:
      description: V(running), V(stopped) or V(frozen).
      type: str
    template:
      description: C(name@version) of the template version the VE runs on.
      type: str
    template_name:
      description: Template name.
      type: str
    template_version:
      description: Template version.
      type: str
    ips:
      description: Configured IPv4 addresses.
      type: list
      elements: str
    pid:
      description: PID of the VE's init on the host, when running.
      type: int
    memory_bytes:
      description: Memory the VE's cgroup uses now, in bytes (0 when stopped).
      type: int
    private_bytes:
      description: Disk space of the VE's private area, in bytes.
      type: int
    created:
      description: Creation time, UTC, ISO 8601.
      type: str
missing:
  description: Names asked for with O(name) that do not exist on the host.
  returned: always
  type: list
  elements: str
host:
  description: Facts about the host's VE store.
  returned: always
  type: dict
  sample: {vz_root: /var/lib/vz, cgroup_parent: vz, cgroup_layout: hybrid}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'list', 'elements': 'str'},
                           state={'type': 'list', 'elements': 'str', 'choices': ['running', 'stopped', 'frozen']},
                           usage={'type': 'bool', 'default': True}),
        supports_check_mode=True)

    def job():
        names = [_validate.ve_name(n) for n in module.params['name'] or []]
        host = host_from(module)
        manager = VeManager(host, client_for(host))
        ves = manager.info(names or None, module.params['state'], module.params['usage'])
        found = {v['name'] for v in ves}
        missing = [n for n in names if n not in found and n not in manager.names()]
        module.exit_json(changed=False, ves=ves, missing=missing,
                         host={'vz_root': host.vz_root, 'cgroup_parent': host.cgroup_parent,
                               'cgroup_layout': manager.cgroups.layout})

    run(module, job)


if __name__ == '__main__':
    main()
