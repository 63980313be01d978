#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: host_info
short_description: Facts of a VE host for placement - capacity, guarantees in use, drain mark, VEs, templates
version_added: 0.1.0
description:
  - Reports what capacity-aware placement needs to know about a host (the input of the
    P(osvirt.vz.placement#filter) filter and of the C(osvirt.vz.provision) role) - its size, the sums
    of the guarantees its VEs hold, whether it is draining, its VEs and its template versions.
  - Read-only. It makes nothing, not even the data root, so it also runs on a host that never had a VE.
  - One C(lxc-ls) call lists the VE states; the rest is read from C(host.json), each VE's C(ve.json)
    and the template store.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.info
options: {}
notes:
  - The drain mark is the key C(draining) of C(<vz_root>/host.json), a dict with C(since) (ISO 8601, UTC),
    C(reason) and C(by); hosts that carry it receive no new VE from placement.
seealso:
  - module: osvirt.vz.ve_info
  - module: osvirt.vz.template_info
'''

EXAMPLES = r'''
- name: Facts of every VE host
  osvirt.vz.host_info:
  register: vz_host

- name: Where would three new VEs go?
  ansible.builtin.debug:
    msg: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, ['vz_host', 'host'])))
             | osvirt.vz.placement([{'name': 'web1'}, {'name': 'web2'}, {'name': 'web3'}]) }}"
  run_once: true
'''

RETURN = r'''
host:
  description: Facts of the host.
  returned: always
  type: dict
  contains:
    name:
      description: Host name of the host (as the kernel knows it).
      type: str
    vz_root:
      description: The data root.
      type: str
    cgroup_parent:
      description: Parent cgroup of the VEs.
      type: str
    bridge:
      description: Default bridge of bridged VE interfaces.
      type: str
    draining:
      description: The drain mark from C(host.json) (C(since), C(reason), C(by)), or V(null) when the host takes VEs.
      type: dict
    overcommit:
      description: Factor by which the guarantees may exceed memory and network capacity (C(host.json), default 1).
      type: float
    capacity:
      description:
        - C(cpus) CPUs this host can run VEs on, C(memory) bytes of memory, C(net) bits/s the VEs may send
          together (C(net_capacity) of C(host.json), default 10 Gbit/s), C(disk_total) and C(disk_free) bytes of
          the file system of the data root (of its nearest existing parent when it does not exist yet).
      type: dict
    guaranteed:
      description:
        - Sums over the host's VEs of C(memory.guarantee) (C(memory), bytes), C(net.rate) (C(net), bits/s) and
          C(disk.space) (C(disk), bytes), from their C(ve.json).
      type: dict
    ves:
      description: Every VE of the host by name, with C(owner), C(template) (C(name@version)) and C(state).
      type: dict
    templates:
      description: Published versions of each template, oldest first.
      type: dict
  sample:
    name: vz1
    vz_root: /var/lib/vz
    cgroup_parent: vz
    bridge: vzbr0
    draining: null
    overcommit: 1.0
    capacity: {cpus: 8, memory: 33554432000, net: 10000000000, disk_total: 500107862016, disk_free: 402653184000}
    guaranteed: {memory: 1073741824, net: 200000000, disk: 21474836480}
    ves: {web1: {owner: provision, template: busybox@20261125-101500, state: running}}
    templates: {busybox: ['20261125-101500']}
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._fs import read_json
from ansible_collections.osvirt.vz.plugins.module_utils._host_facts import host_facts
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run


def main():
    module = AnsibleModule(argument_spec=dict(HOST_ARGS), supports_check_mode=True)

    def job():
        host = host_from(module)
        settings = read_json(os.path.join(host.vz_root, 'host.json'), {}) or {}
        module.exit_json(changed=False, host=host_facts(host, client_for(host), settings))

    run(module, job)


if __name__ == '__main__':
    main()
