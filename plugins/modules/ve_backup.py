#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_backup
short_description: Back up and restore Virtual Environments with restic
version_added: 0.2.0
description:
  - Backs up a VE into a restic repository, lists, restores, removes and prunes its backups, and verifies the
    repository. restic (Debian's package C(restic)) does the storage - incremental, deduplicated, encrypted.
  - Each backup holds the VE's LXC config, C(ve.json), limits, network, private area and the name, version and
    checksum of its template. Each template version is stored once per repository, so a host that never had it
    can restore the VE, and twenty VEs of one template cost little more than one.
  - 'Modes, as vzdump has them: V(snapshot) (a read-only btrfs snapshot of the private area, the VE frozen for
    that instant; the default where the private area is a subvolume), V(suspend) (a first pass while the VE
    runs, then the VE is frozen while a second pass reads what changed; the default elsewhere), V(stop) (the VE
    is stopped for the backup and started again).'
  - A restore builds the VE in C(<vz_root>/.tmp), has restic verify what it wrote, and renames it into place
    only then. An existing VE is replaced only with O(force=true), and stays until the restored one is in place.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description:
      - The VE to back up, or whose backups to restore, remove, prune or list.
      - Required for O(state=present), O(state=restored) and O(state=absent); for O(state=pruned) and
        O(state=listed) without it every VE's backups count.
    type: str
  repository:
    description:
      - The restic repository, an absolute local path or C(sftp:user@host:/path).
      - Required with O(format=restic).
    type: str
  password:
    description: The repository's password (encryption key). Required with O(format=restic).
    type: str
  format:
    description:
      - V(restic) keeps backups in the O(repository).
      - V(archive) writes a portable export like vzdump's, C(<archive_dir>/<name>-<backup>.tar.zst) (zstd tar
        holding C(meta/backup.json) as manifest, config, C(ve.json), the private area and the template layers),
        for a machine without the repository or the template; restored with O(archive). Only O(state=present)
        and O(state=restored). Every archive is full.
    type: str
    choices: [restic, archive]
    default: restic
  archive_dir:
    description: Directory of the archives written with O(format=archive) and O(state=present).
    type: path
  archive:
    description: The archive to restore with O(format=archive) and O(state=restored).
    type: path
  init:
    description: Make the repository when it does not exist (O(state=present) only). Otherwise a missing repository is an error.
    type: bool
    default: false
  state:
    description:
      - V(present) makes a backup. With O(backup) only when no backup of that name exists (idempotent); without
        it every run makes a new backup, named by its UTC time.
      - V(restored) restores a backup (O(backup) or O(backup_id), else the newest) as VE O(target).
      - V(absent) removes a backup (O(backup) or O(backup_id)) and frees its data.
      - V(pruned) applies the keep rules to each VE's backups; C(protected) backups are always kept.
      - V(verified) reads every byte of the repository and checks it (C(restic check --read-data)).
      - V(listed) changes nothing and returns RV(backups).
    type: str
    choices: [present, restored, absent, pruned, verified, listed]
    default: present
  backup:
    description: Name of a backup, 1-63 letters, digits, C(.), C(-) and C(_).
    type: str
  backup_id:
    description: restic snapshot id (or its prefix) of a backup, instead of O(backup).
    type: str
  mode:
    description: How a running VE is read consistently; see the description. Default by file system.
    type: str
    choices: [snapshot, suspend, stop]
  protected:
    description: Mark the new backup protected, so O(state=pruned) never removes it.
    type: bool
    default: false
  target:
    description:
      - Name of the restored VE; defaults to O(name). Under another name it gets its own MAC, hostname and
        addresses (O(network), else V(auto) addresses from the pools of the backed-up VE's networks).
    type: str
  network:
    description: Interfaces of a VE restored under a new name, like O(osvirt.vz.ve#module:network).
    type: list
    elements: dict
  force:
    description: Restore over an existing VE of the O(target) name.
    type: bool
    default: false
  start:
    description: Start the restored VE.
    type: bool
    default: false
  keep_last:
    description: With O(state=pruned), keep the newest this many backups of each VE.
    type: int
  keep_daily:
    description: With O(state=pruned), keep the newest backup of each of this many days.
    type: int
  keep_weekly:
    description: With O(state=pruned), keep the newest backup of each of this many weeks.
    type: int
  keep_monthly:
    description: With O(state=pruned), keep the newest backup of each of this many months.
    type: int
  require_owner:
    description: Back up or restore only if the VE's C(owner) is this value; otherwise fail, changing nothing.
    type: str
  lock_timeout:
    description: Seconds to wait for another operation on the same VE before failing with "VE x is busy".
    type: int
    default: 60
  stop_timeout:
    description: Seconds a VE's init gets to shut down cleanly (mode V(stop), restore over a running VE).
    type: int
    default: 30
notes:
  - Needs restic on the host. The repository's own lock keeps concurrent restic runs apart.
  - A backup of a running VE in mode V(snapshot) or V(suspend) is crash-consistent, like a power cut.
seealso:
  - module: osvirt.vz.ve_snapshot
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: Back up a VE once a day under the day's name (a rerun the same day changes nothing)
  osvirt.vz.ve_backup:
    name: web1
    repository: /srv/backups/vz
    password: "{{ vault_restic_password }}"
    init: true
    backup: "daily-{{ now(utc=true, fmt='%Y%m%d') }}"

- name: Back up to a backup host over SFTP, keeping this one forever
  osvirt.vz.ve_backup:
    name: web1
    repository: sftp:backup@vault1:/srv/restic/vz
    password: "{{ vault_restic_password }}"
    backup: before-migration
    protected: true

- name: Restore the newest backup of web1 as a new VE web1-copy and start it
  osvirt.vz.ve_backup:
    name: web1
    target: web1-copy
    state: restored
    start: true
    repository: /srv/backups/vz
    password: "{{ vault_restic_password }}"

- name: Keep 7 daily and 4 weekly backups of every VE
  osvirt.vz.ve_backup:
    state: pruned
    keep_daily: 7
    keep_weekly: 4
    repository: /srv/backups/vz
    password: "{{ vault_restic_password }}"

- name: A portable export, then its restore on a machine without the repository or the template
  osvirt.vz.ve_backup:
    name: web1
    format: archive
    archive_dir: /srv/exports
    backup: move-20261207

- name: Restore the export as web1 (on the other machine)
  osvirt.vz.ve_backup:
    format: archive
    state: restored
    archive: /srv/exports/web1-move-20261207.tar.zst

- name: Check every byte of the repository
  osvirt.vz.ve_backup:
    state: verified
    repository: /srv/backups/vz
    password: "{{ vault_restic_password }}"
'''

RETURN = r'''
archive:
  description: Path of the archive written (or found) with O(format=archive).
  returned: with O(format=archive) and O(state=present)
  type: str
backup:
  description: The backup made, restored or found (C(id), C(short_id), C(time), C(ve), C(backup), C(protected),
    C(template), C(mode), C(host); a new backup also C(seconds) and C(frozen_seconds)).
  returned: for O(state=present) and O(state=restored)
  type: dict
  sample: {id: 4f0c3a..., short_id: 4f0c3a1b, ve: web1, backup: daily-20261207, protected: false,
           template: busybox@20261125-101500, mode: suspend, seconds: 1.2, frozen_seconds: 0.05}
backups:
  description: The backups in the repository after the task (of O(name), or all), oldest first.
  returned: always
  type: list
  elements: dict
removed:
  description: Backups removed (or that would be, in check mode).
  returned: for O(state=absent) and O(state=pruned)
  type: list
  elements: dict
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: [back up web1 as daily-20261207 (suspend)]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._backup import ArchiveTask, BackupTask, Restic, retention
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._validate import ve_name
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str'},
                           repository={'type': 'str'},
                           password={'type': 'str', 'no_log': True},
                           format={'type': 'str', 'default': 'restic', 'choices': ['restic', 'archive']},
                           archive_dir={'type': 'path'},
                           archive={'type': 'path'},
                           init={'type': 'bool', 'default': False},
                           state={'type': 'str', 'default': 'present',
                                  'choices': ['present', 'restored', 'absent', 'pruned', 'verified', 'listed']},
                           backup={'type': 'str'},
                           backup_id={'type': 'str'},
                           mode={'type': 'str', 'choices': ['snapshot', 'suspend', 'stop']},
                           protected={'type': 'bool', 'default': False},
                           target={'type': 'str'},
                           network={'type': 'list', 'elements': 'dict'},
                           force={'type': 'bool', 'default': False},
                           start={'type': 'bool', 'default': False},
                           keep_last={'type': 'int'},
                           keep_daily={'type': 'int'},
                           keep_weekly={'type': 'int'},
                           keep_monthly={'type': 'int'},
                           require_owner={'type': 'str'},
                           lock_timeout={'type': 'int', 'default': 60},
                           stop_timeout={'type': 'int', 'default': 30}),
        required_if=[('state', 'present', ['name']), ('state', 'absent', ['name']),
                     ('state', 'absent', ['backup', 'backup_id'], True), ('format', 'restic', ['repository', 'password'])],
        mutually_exclusive=[('backup', 'backup_id')],
        supports_check_mode=True)
    p = module.params

    def job():
        host = host_from(module)
        name = ve_name(p['name']) if p['name'] is not None else None
        state = p['state']
        if p['format'] == 'archive':
            archive_job(host, name, state)
            return
        if state == 'restored' and name is None:
            module.fail_json(msg='state restored needs name (the VE whose backup is restored)')
        rules = retention(p) if state == 'pruned' else None
        task = BackupTask(host, client_for(host), Restic(p['repository'], p['password']),
                          check_mode=module.check_mode, lock_timeout=p['lock_timeout'], stop_timeout=p['stop_timeout'])
        if state != 'present':
            task.open_repository(False)
        before = task.backups(name)
        if state == 'present':
            result = task.backup(name, p['backup'], p['mode'], p['protected'], p['init'], p['require_owner'])
        elif state == 'restored':
            manager = VeManager(host, client_for(host), check_mode=module.check_mode)
            result = task.restore(name, p['target'], p['backup'], p['backup_id'], p['force'], manager, p['network'],
                                  p['start'])
        elif state == 'absent':
            result = task.remove(name, p['backup'], p['backup_id'])
        elif state == 'pruned':
            result = task.prune(name, rules)
        elif state == 'verified':
            result = task.verify()
        else:
            result = {'changed': False, 'actions': []}
        after = task.backups(name) if not module.check_mode else before
        result['backups'] = after
        if module._diff:
            result['diff'] = {'before': {'backups': [b['backup'] or b['short_id'] for b in before]},
                              'after': {'backups': [b['backup'] or b['short_id'] for b in after]}}
        module.exit_json(**result)

    def archive_job(host, name, state):
        task = ArchiveTask(host, client_for(host), check_mode=module.check_mode, lock_timeout=p['lock_timeout'],
                           stop_timeout=p['stop_timeout'])
        if state == 'present':
            if not p['archive_dir']:
                module.fail_json(msg='format archive with state present needs archive_dir')
            result = task.export(name, p['archive_dir'], p['backup'], p['mode'], p['require_owner'])
        elif state == 'restored':
            if not p['archive']:
                module.fail_json(msg='format archive with state restored needs archive (the file to restore)')
            manager = VeManager(host, client_for(host), check_mode=module.check_mode)
            result = task.restore_archive(p['archive'], p['target'] or name, p['force'], manager, p['network'],
                                          p['start'])
        else:
            module.fail_json(msg='format archive supports state present and restored only, not %s' % state)
        module.exit_json(**result)

    run(module, job)


if __name__ == '__main__':
    main()
