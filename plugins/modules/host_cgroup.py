#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: host_cgroup
short_description: Make the VE parent cgroup of a host in every cgroup hierarchy
version_added: 0.1.0
description:
  - Every VE's cgroups live under one parent cgroup (C(vz) by default). This module makes that parent in every
    cgroup hierarchy of the host (each cgroup v1 controller, named v1 hierarchies such as C(name=systemd), the
    cgroup v2 tree), so that the files some limits need, which the kernel offers only below a hierarchy's root
    (C(pids.max), C(blkio.bfq.weight), every cgroup v2 interface file), can be checked before a VE exists.
  - cgroup v1 cpuset levels get the CPUs and memory nodes of the level above (a new cpuset is empty), also when an
    earlier run stopped between making a level and filling it. cgroup v2 levels get the controllers VEs use
    (cpu, cpuset, io, memory, pids) enabled in C(cgroup.subtree_control), root first.
  - The M(osvirt.vz.host) role runs it; M(osvirt.vz.ve) and M(osvirt.vz.ve_limits) make the same parent when it is
    missing, so a host that never ran the role works too.
  - The parent does not survive a reboot (cgroup file systems live in memory); the modules make it again.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
seealso:
  - module: osvirt.vz.ve_limits
'''

EXAMPLES = r'''
- name: Make the VE parent cgroup named in host.json
  osvirt.vz.host_cgroup:

- name: Make a nested parent
  osvirt.vz.host_cgroup:
    cgroup_parent: machine/vz
'''

RETURN = r'''
cgroup_parent:
  description: The parent cgroup, relative to each hierarchy's root.
  returned: always
  type: str
  sample: vz
dirs:
  description: The parent's directory in every hierarchy.
  returned: always
  type: list
  elements: str
  sample: [/sys/fs/cgroup/blkio/vz, /sys/fs/cgroup/cpu,cpuacct/vz, /sys/fs/cgroup/pids/vz]
actions:
  description: What was done (or would be, in check mode); directories made, C(<dir> cpuset.cpus) for a cpuset list
    filled, C(<dir>/cgroup.subtree_control +<controller>) for a controller enabled.
  returned: always
  type: list
  elements: str
  sample: [/sys/fs/cgroup/pids/vz, /sys/fs/cgroup/cpuset/vz cpuset.cpus]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._cgroups import CgroupTree
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, host_from, run


def main():
    module = AnsibleModule(argument_spec=dict(HOST_ARGS), supports_check_mode=True)

    def job():
        parent = host_from(module).cgroup_parent
        tree = CgroupTree()
        if not tree.mounts():
            raise VzError('this host has no cgroup file system mounted (none in /proc/self/mountinfo)')
        before = tree.missing_parent(parent)
        try:
            actions = tree.ensure_parent(parent, check_mode=module.check_mode)
        except OSError as exc:
            raise VzError('cannot make the VE parent cgroup %s: %s' % (parent, exc))
        after = before if module.check_mode else tree.missing_parent(parent)
        result = {'changed': bool(actions), 'cgroup_parent': parent, 'dirs': tree.parent_dirs(parent),
                  'actions': actions}
        if module._diff:
            result['diff'] = {'before': {'missing': before, 'pending': actions},
                              'after': {'missing': [] if module.check_mode else after, 'pending': []}}
        module.exit_json(**result)

    run(module, job)


if __name__ == '__main__':
    main()
