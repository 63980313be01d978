#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_migrate
short_description: Move a Virtual Environment to another host (offline, warm or live)
version_added: 0.1.0
description:
  - Runs on the host the VE is on (the source) and moves the VE to O(target). Files go from host to host
    with rsync over SSH, never through the controller; the target's part runs over the same SSH connection
    (the target needs Python and this collection's run-time dependencies, nothing installed).
  - Preflight on both hosts before anything changes; each refusal names the VE, the target and the figure
    (name taken, template missing, bridge missing, address leased there, guarantees over capacity, no disk
    quota for C(disk.space), free disk, id range, CRIU).
  - "A journal on both hosts (C(<vz_root>/migrations/<name>.json)) records each step before it is done.
    Before the commit any failure, or the module being killed, puts the source back as it was and removes the
    target's copy; the commit makes the target the owner, then the source is fenced (autostart off, config
    renamed) and removed, or kept as C(<name>.migrated). A rerun of the same task completes a committed
    migration or rolls back one that was not committed, then migrates."
  - The VE keeps its addresses and MAC addresses; its leases move with it; the target sets its guard and
    shaping when it starts it.
  - Check mode runs the whole preflight and returns the plan. A VE that is already on the target (and gone
    from this host) is reported with C(changed=false).
  - See docs/migration.md for the protocol, the journal and what each failure leaves behind.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
options:
  name:
    description: Name of the VE to move.
    type: str
    required: true
  target:
    description:
      - The host to move the VE to. An inventory hostname (the action plugin reads its C(ansible_host),
        C(ansible_user), C(ansible_port) and C(ansible_ssh_private_key_file)), or a dict.
    type: raw
    required: true
    suboptions:
      host:
        description: Address or name of the target host.
        type: str
      user:
        description: SSH user on the target.
        type: str
        default: root
      port:
        description: SSH port of the target.
        type: int
      ssh_key:
        description: Private key on the source host used to log in to the target.
        type: path
      vz_root:
        description: Data root on the target.
        type: path
        default: /var/lib/vz
      python:
        description: Python interpreter on the target.
        type: str
        default: python3
      known_hosts:
        description: Known hosts file for the target's host key.
        type: path
      host_key_checking:
        description: How the target's host key is checked.
        type: str
        choices: [strict, accept-new, 'off']
        default: accept-new
  mode:
    description:
      - V(offline) stops the VE, copies it and starts it on the target if it ran.
      - V(warm) copies while the VE runs (rounds until one moves less than O(precopy_threshold) or after
        O(precopy_rounds)), freezes it, copies what changed, and starts it on the target; the downtime is from
        the freeze to the VE running on the target.
      - V(live) checkpoints the VE with CRIU and restores it on the target, so processes and memory survive.
      - Default V(warm) for a running VE, V(offline) for a stopped one.
    type: str
    choices: [offline, warm, live]
  fallback:
    description: What O(mode=live) does when CRIU cannot move the VE (said before anything is frozen).
    type: str
    choices: [warm, fail]
    default: fail
  keep_source:
    description: Keep the source's copy, stopped and fenced, as C(<name>.migrated) instead of removing it.
    type: bool
    default: false
  keep_target:
    description: On a failure before the commit, keep the files copied to the target so a rerun copies only what changed.
    type: bool
    default: false
  copy_template:
    description: Copy the template versions the VE uses to the target when they are missing there (parents first, checksums verified).
    type: bool
    default: true
  timeout:
    description: Seconds the migration may take before the commit; past it, it is rolled back.
    type: int
  precopy_rounds:
    description: Most pre-copy rounds of O(mode=warm) while the VE runs.
    type: int
    default: 5
  precopy_threshold:
    description: Bytes; a pre-copy round that moves less is the last one.
    type: int
    default: 1048576
  lock_timeout:
    description: Seconds to wait for the VE's lock on either host; V(0) reports a busy VE at once.
    type: int
    default: 0
'''

EXAMPLES = r'''
- name: Move web1 to the host vz2 of the inventory (warm when it runs)
  osvirt.vz.ve_migrate:
    name: web1
    target: vz2

- name: Move db1 offline to an explicit host, keeping the source as db1.migrated
  osvirt.vz.ve_migrate:
    name: db1
    target:
      host: 192.0.2.20
      user: root
      ssh_key: /root/.ssh/vz_hosts
    mode: offline
    keep_source: true

- name: Live migration, warm if CRIU cannot dump the VE
  osvirt.vz.ve_migrate:
    name: app1
    target: vz3
    mode: live
    fallback: warm
'''

RETURN = r'''
changed:
  description: Whether the VE moved (or would move, in check mode).
  returned: always
  type: bool
mode:
  description: The mode used.
  returned: always
  type: str
  sample: warm
where:
  description: Where the VE is after the task (V(target), V(source) in check mode).
  returned: always
  type: str
plan:
  description: The steps of the migration, in order (check mode shows them without doing them).
  returned: always
  type: list
  elements: str
  sample: [precopy, freeze, final_sync, stop, register, start, commit, fence, remove, finish]
stages:
  description: Seconds per stage (connect, preflight, template, precopy, freeze, final_sync, stop, register, start, commit, ...) and total.
  returned: always
  type: dict
rounds:
  description: The copy rounds with C(bytes) of changed files, C(sent) bytes on the wire and C(seconds).
  returned: always
  type: list
  elements: dict
bytes_moved:
  description: Bytes sent to the target by rsync.
  returned: always
  type: int
downtime:
  description: Seconds from freeze (warm), checkpoint (live) or stop (offline) to the VE running on the target; null when it was stopped.
  returned: always
  type: float
announced:
  description: The gratuitous ARP / unsolicited neighbour advertisements sent from the VE at its new place.
  returned: always
  type: list
  elements: str
recovered:
  description: What this run completed or rolled back of an earlier, unfinished migration.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._migrate import Migration
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._rsync import Remote
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

TARGET_KEYS = ('host', 'user', 'port', 'ssh_key', 'vz_root', 'python', 'known_hosts', 'host_key_checking', 'name')


def _target(value):
    if isinstance(value, str):
        value = {'host': value}
    if not isinstance(value, dict) or not value.get('host'):
        raise VzError('target must be an inventory hostname or a dict with host (and user, port, ssh_key)')
    unknown = sorted(set(value) - set(TARGET_KEYS))
    if unknown:
        raise VzError('target: unknown keys %s; use %s' % (', '.join(unknown), ', '.join(TARGET_KEYS[:-1])))
    remote = Remote(value['host'], user=value.get('user') or 'root', ssh_key=value.get('ssh_key'),
                    port=value.get('port'), vz_root=value.get('vz_root') or '/var/lib/vz',
                    known_hosts=value.get('known_hosts'),
                    host_key_checking=value.get('host_key_checking') or 'accept-new', alive_interval=2)
    return remote, value.get('python') or 'python3', value.get('name') or remote.host


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str', 'required': True},
                           target={'type': 'raw', 'required': True},
                           mode={'type': 'str', 'choices': ['offline', 'warm', 'live']},
                           fallback={'type': 'str', 'choices': ['warm', 'fail'], 'default': 'fail'},
                           keep_source={'type': 'bool', 'default': False},
                           keep_target={'type': 'bool', 'default': False},
                           copy_template={'type': 'bool', 'default': True},
                           timeout={'type': 'int'},
                           precopy_rounds={'type': 'int', 'default': 5},
                           precopy_threshold={'type': 'int', 'default': 1 << 20},
                           lock_timeout={'type': 'int', 'default': 0}),
        supports_check_mode=True)

    def job():
        host = host_from(module)
        remote, python, label = _target(module.params['target'])
        p = module.params
        migration = Migration(host, p['name'], remote, mode=p['mode'], keep_source=p['keep_source'],
                              keep_target=p['keep_target'], copy_template=p['copy_template'], timeout=p['timeout'],
                              fallback=p['fallback'], rounds=p['precopy_rounds'], threshold=p['precopy_threshold'],
                              check_mode=module.check_mode, python=python, lock_timeout=p['lock_timeout'],
                              target_label=label)
        result = migration.run()
        diff = result.pop('diff')
        for warning in result.pop('warnings'):
            module.warn(warning)
        if module._diff:
            result['diff'] = diff
        module.exit_json(**result)

    run(module, job)


if __name__ == '__main__':
    main()
