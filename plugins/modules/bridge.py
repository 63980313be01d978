#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bridge
short_description: Manage a Linux bridge on a VE host
version_added: 0.1.0
description:
  - Ensures that a Linux bridge exists, is up and carries exactly the given IPv4 addresses,
    or that it does not exist.
  - VEs with a C(bridged) network interface are attached to such a bridge; the host role
    M(osvirt.vz.host) creates the default one (C(vzbr0)).
  - Talks to the kernel over netlink with pyroute2; it never parses the output of C(ip).
  - The bridge is not persisted across reboots by this module; run it (or the host role) at boot,
    or configure the bridge in the host's network configuration as well.
author:
  - osvirt developers (!UNKNOWN)
requirements:
  - python3-pyroute2 (pyroute2 0.7 or newer) on the managed host.
  - Root privileges (CAP_NET_ADMIN) on the managed host.
options:
  name:
    description:
      - Name of the bridge interface.
      - 1 to 15 characters of letters, digits, C(_), C(.) and C(-); not C(.) or C(..).
    type: str
    required: true
  state:
    description:
      - C(present) creates the bridge if needed, brings it up and sets O(ipv4) and O(mtu).
      - C(absent) deletes the bridge; ports attached to it are detached by the kernel.
      - The module refuses to change or delete an interface of that name that is not a bridge.
    type: str
    choices: [present, absent]
    default: present
  ipv4:
    description:
      - IPv4 addresses of the bridge in CIDR form, for example V(10.20.0.1/24).
      - The exact set is ensured; IPv4 addresses on the bridge that are not listed are removed.
        An empty list removes all IPv4 addresses.
      - When omitted, the IPv4 addresses of the bridge are left as they are.
      - The first address of a subnet becomes the primary address of that subnet.
      - IPv6 addresses are never touched.
    type: list
    elements: str
  mtu:
    description:
      - MTU of the bridge, 68 to 65535.
      - When omitted, the kernel's value is kept (1500 for a new bridge).
    type: int
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
notes:
  - Only IPv4 addresses are managed for now. NAT, IPv6 and address pools are planned.
seealso:
  - name: Linux bridge
    description: The kernel documentation of the bridge device.
    link: https://docs.kernel.org/networking/bridge.html
"""

EXAMPLES = r"""
- name: Default VE bridge with one address
  osvirt.vz.bridge:
    name: vzbr0
    ipv4:
      - 10.20.0.1/24

- name: Bridge with two subnets and jumbo frames
  osvirt.vz.bridge:
    name: vzbr1
    ipv4:
      - 10.30.0.1/24
      - 10.31.0.1/24
    mtu: 9000

- name: Bridge without any IPv4 address (VEs only talk among themselves)
  osvirt.vz.bridge:
    name: vzbr-internal
    ipv4: []

- name: Remove a bridge
  osvirt.vz.bridge:
    name: vzbr1
    state: absent
"""

RETURN = r"""
bridge:
  description: The bridge after the task (predicted in check mode).
  returned: success
  type: dict
  contains:
    name:
      description: Name of the bridge.
      type: str
      returned: success
      sample: vzbr0
    state:
      description: V(present) or V(absent).
      type: str
      returned: success
      sample: present
    ipv4:
      description: IPv4 addresses of the bridge in CIDR form, sorted.
      type: list
      elements: str
      returned: success
      sample: [10.20.0.1/24]
    mtu:
      description: MTU of the bridge; V(null) when the bridge is absent.
      type: int
      returned: success
      sample: 1500
  sample:
    name: vzbr0
    state: present
    ipv4: [10.20.0.1/24]
    mtu: 1500
actions:
  description: What was done (or would be done in check mode), one readable line per step.
  returned: success
  type: list
  elements: str
  sample:
    - create bridge vzbr0
    - bring vzbr0 up
    - add 10.20.0.1/24 to vzbr0
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _net
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ipv4=dict(type="list", elements="str"),
            mtu=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    try:
        spec = _net.BridgeSpec.from_params(module.params)
    except VzError as exc:
        module.fail_json(msg=exc.message)
    if not _net.HAS_PYROUTE2:
        module.fail_json(msg=_net.PYROUTE2_MISSING_MSG, exception=_net.PYROUTE2_IMPORT_ERROR)
    try:
        result = _net.ensure_bridge(spec, check_mode=module.check_mode)
    except VzError as exc:
        module.fail_json(msg=exc.message)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
