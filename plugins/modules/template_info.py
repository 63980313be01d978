#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: template_info
short_description: List VE templates, their versions, which VEs use them and the disk they share
version_added: 0.1.0
description:
  - Reports the templates of a host with every published version and a summary of its manifest
    (created, size, checksum, parent, number of packages).
  - Says which VEs use which version (read from each VE's C(ve.json); a VE uses every layer of its template),
    which VEs run on an outdated version (not the newest of their template), and how much disk is shared
    (template trees and their shifted copies) against what the VEs' private areas hold.
  - Read-only and fast. It reads files only and makes no LXC call.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.info
options:
  name:
    description: Only these templates (and the VEs on them).
    type: list
    elements: str
  usage:
    description:
      - Measure the shifted copies and the VEs' private areas (a walk of each). Without it those sizes are null;
        template sizes always come from the manifests.
    type: bool
    default: true
seealso:
  - module: osvirt.vz.template
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: Every template of the host
  osvirt.vz.template_info:
  register: info

- name: VEs still on an old busybox version
  osvirt.vz.template_info:
    name: [busybox]
    usage: false
  register: busybox

- name: Show them
  ansible.builtin.debug:
    msg: "{{ busybox.outdated | map(attribute='name') | list }}"
'''

RETURN = r'''
templates:
  description: Templates sorted by name, each with its versions oldest first.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Template name.
      type: str
    newest:
      description: Newest version, which C(name) alone means.
      type: str
    ves:
      description: VEs that use any version of the template.
      type: list
      elements: str
    versions:
      description:
        - One entry per version with C(version), C(ref) (C(name@version)), C(newest), C(created), C(size) (bytes),
          C(checksum), C(parent), C(os), C(arch), C(source) (how it was built), C(packages) (count), C(ves) (VEs
          using it), C(children) (versions stacked on it), C(in_use), C(idmaps) (shifted copies, C(<uid>-<gid>-<count>-f<format>);
          a name without C(-f<format>) is a copy an older release made, no longer used)
          and C(shifted_bytes).
      type: list
      elements: dict
  sample:
    - name: busybox
      newest: "20261201-080000"
      ves: [web1]
      versions:
        - {version: "20261201-080000", ref: busybox@20261201-080000, newest: true, created: "2026-12-01T08:00:00Z",
           size: 2150400, checksum: "sha256:4f1c...", parent: null, os: busybox, arch: x86_64, source: busybox,
           packages: 1, ves: [web1], children: [], in_use: true, idmaps: [100000-100000-65536-f2],
           shifted_bytes: 2150400}
ves:
  description: VEs on the listed templates, with C(name), C(template), C(template_name), C(template_version),
    C(newest) (newest version of their template), C(outdated) and C(private_bytes).
  returned: always
  type: list
  elements: dict
outdated:
  description: VEs whose version is not the newest of their template, with C(name), C(template) and C(newest).
  returned: always
  type: list
  elements: dict
  sample: [{name: web2, template: busybox@20261125-101500, newest: busybox@20261201-080000}]
disk:
  description:
    - Disk use in bytes. C(template_bytes) (template trees, from the manifests) plus C(shifted_bytes) (their copies
      per id range) make C(shared_bytes), stored once whatever the number of VEs; C(private_bytes) is the sum of the
      VEs' private areas; C(ves) counts those VEs.
  returned: always
  type: dict
  sample: {template_bytes: 2150400, shifted_bytes: 2150400, shared_bytes: 4300800, private_bytes: 81920, ves: 10}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._templates import TemplateStore


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'list', 'elements': 'str'},
                           usage={'type': 'bool', 'default': True}),
        supports_check_mode=True)

    def job():
        names = [_validate.template_name(n) for n in module.params['name'] or []]
        store = TemplateStore(host_from(module))
        module.exit_json(changed=False, **store.summary(names or None, module.params['usage']))

    run(module, job)


if __name__ == '__main__':
    main()
