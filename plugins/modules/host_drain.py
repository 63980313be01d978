#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: host_drain
short_description: Mark a VE host as draining and record where its VEs went
version_added: 0.1.0
description:
  - 'Sets or clears the drain mark of the host, the key C(draining) of C(<vz_root>/host.json)
    (C({"since": "<ISO 8601 UTC>", "reason": ..., "by": ...})). Every other key of C(host.json) is kept.
    Placement (the filter C(osvirt.vz.placement)) and the C(osvirt.vz.provision) role give a draining host no VE.'
  - Keeps the evacuation record C(<vz_root>/evacuated.json) - for each VE moved away, the inventory host it went
    to, the migration mode, the state it had and whether the move is C(moving) or C(moved) - so that
    the C(osvirt.vz.evacuate) role can finish an interrupted evacuation and bring every VE back.
  - The mark keeps the time it was first set; a rerun with the same options changes nothing.
  - Clearing the mark while the record still lists VEs is refused (they would be forgotten) unless O(force=true).
  - Files are written atomically, the record before the mark, under the host's drain lock (C(<vz_root>/locks/host-drain.lock)).
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common.actions
options:
  state:
    description:
      - V(present) marks the host draining (and records O(record)).
      - V(absent) clears the mark and the (then empty) record.
      - V(query) changes nothing and returns the mark and the record.
      - Not given, the mark stays as it is and only O(record) and O(forget) change the record.
    type: str
    choices: [present, absent, query]
  reason:
    description: Why the host is drained, kept in the mark. Left as it is when not given.
    type: str
  by:
    description: Who or what drains the host (a person, a pipeline), kept in the mark. Left as it is when not given.
    type: str
  record:
    description:
      - VEs to add to the evacuation record or to update there, by name. Not with O(state=absent).
      - Each value has C(target) (the inventory hostname the VE goes to), C(mode) (V(offline), V(warm) or V(live)),
        C(state_before) (V(running), V(stopped) or V(frozen)) and C(status) (V(moving) before the migration,
        V(moved) after it; default V(moved)).
    type: dict
  forget:
    description: VEs to drop from the evacuation record (they are back).
    type: list
    elements: str
    default: []
  force:
    description: With O(state=absent), clear the mark even though the record still lists VEs, and drop the record.
    type: bool
    default: false
  vz_root:
    description: The host's data root. It must exist (the C(osvirt.vz.host) role makes it).
    type: str
    default: /var/lib/vz
seealso:
  - module: osvirt.vz.ve_migrate
'''

EXAMPLES = r'''
- name: Mark the host draining before its maintenance
  osvirt.vz.host_drain:
    state: present
    reason: kernel update
    by: ops

- name: Record that web1 is on its way to vz2 (the mark stays as it is)
  osvirt.vz.host_drain:
    record:
      web1: {target: vz2, mode: warm, state_before: running, status: moving}

- name: Read the mark and the record
  osvirt.vz.host_drain:
    state: query
  register: drain

- name: Forget web1, it is back
  osvirt.vz.host_drain:
    forget: [web1]

- name: Clear the mark (refused while the record lists VEs that are not back)
  osvirt.vz.host_drain:
    state: absent
'''

RETURN = r'''
draining:
  description: The mark after the task (V(null) when the host is not draining).
  returned: always
  type: dict
  sample: {since: "2026-12-07T23:30:00Z", reason: kernel update, by: ops}
evacuated:
  description: The evacuation record after the task, VE name -> C(target), C(mode), C(state_before), C(status), C(updated).
  returned: always
  type: dict
  sample: {web1: {target: vz2, mode: warm, state_before: running, status: moved, updated: "2026-12-07T23:31:02Z"}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._drain import HostDrain
from ansible_collections.osvirt.vz.plugins.module_utils._module import run


def main():
    module = AnsibleModule(
        argument_spec={
            'state': {'type': 'str', 'choices': ['present', 'absent', 'query']},
            'reason': {'type': 'str'},
            'by': {'type': 'str'},
            'record': {'type': 'dict'},
            'forget': {'type': 'list', 'elements': 'str', 'default': []},
            'force': {'type': 'bool', 'default': False},
            'vz_root': {'type': 'str', 'default': '/var/lib/vz'},
        },
        supports_check_mode=True)

    def job():
        p = module.params
        changed, before, after = HostDrain(p['vz_root']).change(
            check_mode=module.check_mode, state=p['state'], reason=p['reason'], by=p['by'], record=p['record'],
            forget=p['forget'], force=p['force'])
        result = {'changed': changed, 'draining': after['draining'], 'evacuated': after['evacuated']}
        if module._diff:
            result['diff'] = {'before': before, 'after': after}
        module.exit_json(**result)

    run(module, job)


if __name__ == '__main__':
    main()
