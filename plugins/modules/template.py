#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: template
short_description: Build, publish and remove VE templates
version_added: 0.1.0
description:
  - Templates are root file systems stored once per host in C(<vz_root>/templates/<name>/<version>) and
    shared copy-on-write by every VE built on them.
  - Every build is a new, immutable version named by its UTC build time (C(YYYYMMDD-HHMMSS)), built in
    C(<vz_root>/.tmp) and published by one rename, with a C(manifest.json) (parent, os, arch, packages,
    created, checksum, size).
  - V(present) builds the template when the host has no version of it; O(rebuild) builds a new version anyway.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description: Template name, 1-63 lowercase letters, digits, C(.), C(_), C(+) and C(-).
    type: str
    required: true
  state:
    description:
      - V(present) makes sure a version exists. V(absent) removes O(version), or every version; it refuses
        while a VE uses a version it would remove, and names those VEs.
    type: str
    choices: [present, absent]
    default: present
  version:
    description: With O(state=absent), the one version to remove.
    type: str
  source:
    description: How to build the template.
    type: dict
    default: {type: busybox}
    suboptions:
      type:
        description:
          - V(busybox) is the tiny built-in template from Debian's static busybox (init, sh, ip, udhcpc).
        type: str
        choices: [busybox]
        default: busybox
  rebuild:
    description: Build a new version even when one exists.
    type: bool
    default: false
seealso:
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: The tiny template (a second run changes nothing)
  osvirt.vz.template:
    name: busybox
    state: present

- name: Build a new version anyway
  osvirt.vz.template:
    name: busybox
    rebuild: true

- name: Remove an old version no VE uses any more
  osvirt.vz.template:
    name: busybox
    version: "20261125-101500"
    state: absent
'''

RETURN = r'''
template:
  description: The template after the task.
  returned: always
  type: dict
  contains:
    name:
      description: Template name.
      type: str
    version:
      description: Newest version (null when none is left).
      type: str
    versions:
      description: Every version on the host, oldest first.
      type: list
      elements: str
    manifest:
      description: Manifest of the newest version.
      type: dict
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._fs import read_json
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._templates import TemplateStore


def users_of(host, name, versions):
    """VEs whose layers include one of ``versions`` of template ``name``: {version: [ve, ...]}."""
    wanted = {'%s@%s' % (name, v): v for v in versions}
    users = {}
    try:
        entries = sorted(os.listdir(host.ves_dir))
    except FileNotFoundError:
        entries = []
    for ve in entries:
        meta = read_json(os.path.join(host.ves_dir, ve, 've.json')) or {}
        for layer in meta.get('layers') or []:
            if layer in wanted:
                users.setdefault(wanted[layer], []).append(ve)
    return users


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str', 'required': True},
                           state={'type': 'str', 'choices': ['present', 'absent'], 'default': 'present'},
                           version={'type': 'str'},
                           source={'type': 'dict', 'default': {'type': 'busybox'},
                                   'options': {'type': {'type': 'str', 'choices': ['busybox'],
                                                        'default': 'busybox'}}},
                           rebuild={'type': 'bool', 'default': False}),
        supports_check_mode=True)

    def job():
        params = module.params
        name = _validate.template_name(params['name'])
        if params['version'] is not None:
            _validate.template_version(params['version'])
            if params['state'] != 'absent':
                raise VzError('version is only used with state=absent; a build always makes a new version')
        host = host_from(module)
        store = TemplateStore(host)
        before = store.versions(name)
        actions = []
        if params['state'] == 'present':
            if not before or params['rebuild']:
                if not module.check_mode:
                    host.ensure_layout()
                built = store.build(name, params['source'], check_mode=module.check_mode)
                actions.append('build %s@%s' % (name, built['version']))
        else:
            doomed = [params['version']] if params['version'] else before
            doomed = [v for v in doomed if v in before]
            users = users_of(host, name, doomed)
            if users:
                raise VzError('template %s is in use: %s' % (name, '; '.join(
                    '%s@%s by VE %s' % (name, v, ', '.join(ves)) for v, ves in sorted(users.items()))),
                    users=users)
            for version in doomed:
                if not module.check_mode:
                    store.remove_version(name, version)
                actions.append('remove %s@%s' % (name, version))
        after = store.versions(name) if not module.check_mode else _predicted(before, actions, name)
        latest = after[-1] if after else None
        manifest = store.manifest(name, latest) if latest and latest in store.versions(name) else None
        result = {'changed': bool(actions), 'actions': actions,
                  'template': {'name': name, 'version': latest, 'versions': after, 'manifest': manifest}}
        if module._diff:
            result['diff'] = {'before': {'versions': before}, 'after': {'versions': after}}
        module.exit_json(**result)

    run(module, job)


def _predicted(before, actions, name):
    versions = list(before)
    for action in actions:
        verb, _sep, ref = action.partition(' ')
        version = ref.split('@', 1)[1]
        if verb == 'build':
            versions.append(version)
        elif version in versions:
            versions.remove(version)
    return sorted(versions)


if __name__ == '__main__':
    main()
