#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_limits
short_description: Change the resource limits of a Virtual Environment, live
version_added: 0.1.0
description:
  - Sets guarantees, limits, shares and burst of an existing VE. A running VE is changed live, without a
    restart, by writing its cgroup files (cgroup v1 or v2, per controller), its disk quota and the tc shaping
    of its network links.
  - Every change is also written to the VE's LXC config (C(lxc.cgroup.*) keys for v1 controllers,
    C(lxc.cgroup2.*) for v2) and to its C(ve.json), so a restart and C(lxc-autostart) at boot keep it.
  - The same O(limits) dict is the C(limits) option of M(osvirt.vz.ve).
  - Everything is checked before anything changes; a write the kernel refuses undoes the writes before it.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description: Name of the VE; it must exist.
    type: str
    required: true
  limits:
    description:
      - The limits to set. Keys left out keep what the VE has; V(null) or V(unlimited) removes a limit.
      - C(cpu.units) relative weight under contention, 8 to 500000, 1000 is the default
        (cgroup v1 C(cpu.shares), v2 C(cpu.weight)).
      - C(cpu.limit) hard cap as percent of one CPU (V(150%), a bare number is percent) or CPUs (V(1.5cpus))
        (C(cpu.cfs_quota_us) per 100 ms period, v2 C(cpu.max)).
      - C(cpu.burst) quota left unused that may be spent later, same units, at most C(cpu.limit)
        (C(cpu.cfs_burst_us), v2 C(cpu.max.burst)).
      - C(cpu.cpus) how many CPUs the VE may run on; C(cpu.cpuset) which ones, like V(0-1,3) (C(cpuset.cpus)).
        C(cpus) alone picks that many CPUs at a place derived from the VE name.
      - C(memory.ram) hard limit (C(memory.limit_in_bytes), v2 C(memory.max)); C(memory.high) throttle point
        (C(memory.soft_limit_in_bytes), v2 C(memory.high)); C(memory.guarantee) memory the host promises
        (admission control; v2 also C(memory.low)); C(memory.swap) swap on top of ram
        (v1 C(memory.memsw.limit_in_bytes) = ram + swap, v2 C(memory.swap.max)). Sizes like V(512M), V(1.5G).
      - C(numproc) processes and threads (C(pids.max)).
      - C(disk.space) hard quota on the private area (btrfs quota group); C(disk.ioprio) IO weight 0-7;
        C(disk.read_bps), C(disk.write_bps) bytes per second like V(20M/s); C(disk.read_iops), C(disk.write_iops)
        operations per second, on the block device that holds O(vz_root) (C(blkio.*), v2 C(io.weight), C(io.max)).
      - C(net.rate) guaranteed egress of the VE like V(100Mbit); C(net.ceil) the most it may take when the
        host is idle; C(rate) alone is a hard cap. Shaped with tc on the host side of the VE's links.
      - 'vzctl aliases at the top level: C(cpuunits), C(cpulimit), C(ram), C(swap), C(numproc), C(diskspace),
        C(ioprio), C(iolimit) (read and write bytes/s), C(iopslimit) (read and write IOPS), C(rate).'
    type: dict
    required: true
  force:
    description:
      - Lower C(memory.ram) or C(disk.space) below what the VE uses now. Without it such a change is refused
        with a message saying what would happen.
    type: bool
    default: false
  overcommit:
    description:
      - How far the sum of the memory guarantees of the host's VEs may exceed the host's memory, and
        C(memory.ram) the host's memory, as a factor.
      - Defaults to C(overcommit) in C(<vz_root>/host.json), else V(1.0).
    type: float
  lock_timeout:
    description: Seconds to wait for another operation on the same VE before failing with "VE x is busy".
    type: int
    default: 60
notes:
  - A value the host cannot apply fails before anything changes, naming the key and why (for example
    C(cpu.burst) without C(cpu.cfs_burst_us), or C(memory.swap) without swap accounting).
  - docs/limits.md says which keys were verified on which cgroup layout.
seealso:
  - module: osvirt.vz.ve
  - module: osvirt.vz.ve_info
'''

EXAMPLES = r'''
- name: Give web1 more memory and a CPU cap, live
  osvirt.vz.ve_limits:
    name: web1
    limits:
      memory: {ram: 1G, high: 768M, swap: 512M}
      cpu: {limit: 150%, units: 2000}

- name: The same with vzctl names
  osvirt.vz.ve_limits:
    name: web1
    limits: {ram: 1G, swap: 512M, cpulimit: 150, cpuunits: 2000, numproc: 400}

- name: Throttle disk IO and network
  osvirt.vz.ve_limits:
    name: web1
    limits:
      disk: {ioprio: 2, write_bps: 20M/s, read_iops: 500}
      net: {rate: 50Mbit, ceil: 100Mbit}

- name: Remove the CPU cap
  osvirt.vz.ve_limits:
    name: web1
    limits:
      cpu: {limit: unlimited}
'''

RETURN = r'''
ve:
  description: The VE after the change (as M(osvirt.vz.ve) returns it).
  returned: always
  type: dict
limits:
  description: The VE's limits after the change, with unit strings.
  returned: always
  type: dict
  sample: {memory: {ram: 1G, swap: 512M}, cpu: {limit: 150%}}
changes:
  description:
    - The cgroup files of the running VE that were written (or would be, in check mode), with the value
      read before and the value written.
  returned: always
  type: list
  elements: dict
  sample: [{file: /sys/fs/cgroup/memory/vz/web1/memory.limit_in_bytes, before: '536870912', after: '1073741824'}]
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str', 'required': True},
                           limits={'type': 'dict', 'required': True},
                           force={'type': 'bool', 'default': False},
                           overcommit={'type': 'float'},
                           lock_timeout={'type': 'int', 'default': 60}),
        supports_check_mode=True)

    def job():
        host = host_from(module)
        manager = VeManager(host, client_for(host), check_mode=module.check_mode,
                            lock_timeout=module.params['lock_timeout'], overcommit=module.params['overcommit'])
        spec = {'name': module.params['name'], 'state': 'present', 'limits': module.params['limits'],
                'force': module.params['force'], 'must_exist': True}
        result = manager.ensure([spec])[0]
        out = {
            'changed': result['changed'],
            've': result['ve'],
            'limits': result['ve'].get('limits') or {},
            'changes': result['limit_changes'],
            'actions': result['actions'],
        }
        if module._diff:
            out['diff'] = {'before': {'limits': result['diff']['before'].get('limits') or {}},
                           'after': {'limits': result['diff']['after'].get('limits') or {}}}
        if result['error']:
            module.fail_json(msg='VE %s: %s' % (module.params['name'], result['error']),
                             **dict(out, **(result.get('error_details') or {})))
        module.exit_json(**out)

    run(module, job)


if __name__ == '__main__':
    main()
