#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_snapshot
short_description: Named snapshots of a Virtual Environment's private area and config
version_added: 0.2.0
description:
  - Creates, lists, rolls back to and removes named snapshots of a VE, also while it runs.
  - A snapshot holds the VE's private area (its own files over the shared template) and its registration
    (LXC config and C(ve.json)), in C(<vz_root>/ves/<ve>/snapshots/<snapshot>). It goes when the VE is removed.
  - Where the private area is a btrfs subvolume (vz_root on btrfs, see the host role's C(host_vz_filesystem)) a
    snapshot is a read-only subvolume snapshot, made in milliseconds without copying data. Elsewhere the private
    area is copied with C(cp --reflink=auto) (extents shared where the file system can).
  - A running VE is frozen for the instant of the snapshot (the final pass of a copy), so its files are
    consistent with each other, as after a power cut.
  - Snapshots take disk space once the VE's files change; M(osvirt.vz.ve_info) lists each with its size.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description: Name of the VE; it must exist.
    type: str
    required: true
  snapshot:
    description:
      - Name of the snapshot, 1-63 letters, digits, C(.), C(-) and C(_), starting with a letter or digit.
      - Required unless O(state=listed).
    type: str
  state:
    description:
      - V(present) takes the snapshot unless one of that name exists (it is never replaced).
      - V(absent) removes it; nothing when it does not exist.
      - V(rollback) puts the VE's private area, config and metadata back as they were in the snapshot. Files the
        VE changed since are lost; other snapshots stay. Like O(osvirt.vz.ve#module:state=restarted) it is an
        action, a change at every run. A running VE is stopped and started again only with O(restart=true);
        without it nothing changes and the result says RV(restart_required).
      - V(listed) changes nothing and returns RV(snapshots).
    type: str
    choices: [present, absent, rollback, listed]
    default: present
  restart:
    description: Allow O(state=rollback) to stop a running VE and start it again afterwards.
    type: bool
    default: false
  require_owner:
    description: Act only if the VE's C(owner) (see M(osvirt.vz.ve)) is this value; otherwise fail, changing nothing.
    type: str
  lock_timeout:
    description: Seconds to wait for another operation on the same VE before failing with "VE x is busy".
    type: int
    default: 60
  stop_timeout:
    description: Seconds a VE's init gets to shut down cleanly before a rollback kills it.
    type: int
    default: 30
notes:
  - A snapshot is not a backup, it lives on the same disk as the VE. Use M(osvirt.vz.ve_backup) for copies elsewhere.
  - A rollback brings back the snapshot's addresses; one that another VE has taken meanwhile fails the rollback
    before anything changes.
seealso:
  - module: osvirt.vz.ve
  - module: osvirt.vz.ve_info
'''

EXAMPLES = r'''
- name: Snapshot a VE before an upgrade (it keeps running; frozen only for the instant)
  osvirt.vz.ve_snapshot:
    name: web1
    snapshot: before-upgrade

- name: List the snapshots of a VE
  osvirt.vz.ve_snapshot:
    name: web1
    state: listed
  register: snaps

- name: Go back to the snapshot, restarting the VE
  osvirt.vz.ve_snapshot:
    name: web1
    snapshot: before-upgrade
    state: rollback
    restart: true

- name: Remove the snapshot
  osvirt.vz.ve_snapshot:
    name: web1
    snapshot: before-upgrade
    state: absent

- name: A new VE from the snapshot
  osvirt.vz.ve:
    name: web2
    clone_from: web1@before-upgrade
'''

RETURN = r'''
snapshot:
  description: The snapshot after the task (absent ones are not returned).
  returned: when O(snapshot) is given and the snapshot exists after the task
  type: dict
  sample: {name: before-upgrade, created: '2026-12-07T23:00:00Z', method: btrfs, running: true,
           template: busybox@20261125-101500, size_bytes: 16384}
snapshots:
  description: Every snapshot of the VE after the task, oldest first, shaped like RV(snapshot).
  returned: always
  type: list
  elements: dict
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: [snapshot web1 as before-upgrade]
restart_required:
  description: True when O(state=rollback) was asked for a running VE without O(restart=true); nothing was done.
  returned: always
  type: bool
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._snapshot import SnapshotTask


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str', 'required': True},
                           snapshot={'type': 'str'},
                           state={'type': 'str', 'default': 'present',
                                  'choices': ['present', 'absent', 'rollback', 'listed']},
                           restart={'type': 'bool', 'default': False},
                           require_owner={'type': 'str'},
                           lock_timeout={'type': 'int', 'default': 60},
                           stop_timeout={'type': 'int', 'default': 30}),
        required_if=[('state', 'present', ['snapshot']), ('state', 'absent', ['snapshot']),
                     ('state', 'rollback', ['snapshot'])],
        supports_check_mode=True)

    def job():
        host = host_from(module)
        task = SnapshotTask(host, client_for(host), check_mode=module.check_mode,
                            lock_timeout=module.params['lock_timeout'], stop_timeout=module.params['stop_timeout'])
        result = task.run(module.params['name'], module.params['snapshot'], module.params['state'],
                          restart=module.params['restart'], require_owner=module.params['require_owner'])
        if result.pop('warning', None):
            module.warn(result['msg'])
        if not module._diff:
            result.pop('diff', None)
        module.exit_json(**result)

    run(module, job)


if __name__ == '__main__':
    main()
