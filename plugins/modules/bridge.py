#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bridge
short_description: Manage a Linux bridge on a VE host, with its addresses, NAT, forwarding and pools
version_added: 0.1.0
description:
  - Ensures that a Linux bridge exists, is up and carries exactly the given IPv4 and IPv6
    addresses, or that it does not exist.
  - Optionally masquerades (source NAT) IPv4 traffic from the bridge's subnets that leaves the
    host, turns on IP forwarding, and records address pools for VEs that ask for C(auto)
    addresses.
  - VEs with a C(bridged) network interface are attached to such a bridge; the host role
    M(osvirt.vz.host) creates the default one (C(vzbr0)).
  - Records the bridge's addresses, pools and NAT settings in
    C(<vz_root>/net/bridges/<name>.json), which M(osvirt.vz.ve) reads to allocate addresses.
  - Talks to the kernel over netlink with pyroute2; it never parses the output of C(ip). NAT
    rules are written with nftables, one transaction per chain.
  - The bridge, its NAT chain and the forwarding sysctls are not persisted across reboots by this
    module; run it (or the host role) at boot, or configure them in the host's network
    configuration as well.
author:
  - osvirt developers (!UNKNOWN)
requirements:
  - python3-pyroute2 (pyroute2 0.7 or newer) on the managed host.
  - nftables (the C(nft) command) on the managed host when O(nat=true).
  - Root privileges (CAP_NET_ADMIN) on the managed host.
extends_documentation_fragment:
  - osvirt.vz._common.actions
options:
  name:
    description:
      - Name of the bridge interface.
      - 1 to 15 characters of letters, digits, C(_), C(.) and C(-); not C(.) or C(..).
    type: str
    required: true
  state:
    description:
      - C(present) creates the bridge if needed, brings it up and sets the other options.
      - C(absent) deletes the bridge (ports attached to it are detached by the kernel), its NAT
        chain and its settings file. Forwarding sysctls are left as they are.
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
    type: list
    elements: str
  ipv6:
    description:
      - IPv6 addresses of the bridge in CIDR form, for example V(fd00:20::1/64).
      - The exact set is ensured like for O(ipv4); the link-local address the kernel gives
        the bridge is never touched, and link-local, multicast, loopback and IPv4-mapped
        addresses are refused.
      - When omitted, the IPv6 addresses of the bridge are left as they are.
    type: list
    elements: str
  mtu:
    description:
      - MTU of the bridge, 68 to 65535.
      - When omitted, the kernel's value is kept (1500 for a new bridge).
    type: int
  nat:
    description:
      - Masquerade IPv4 traffic from the subnets of the bridge's IPv4 addresses to other
        destinations when it leaves the host through O(uplink), or through any interface
        but the bridge when O(uplink) is not given.
      - The rules live in the nftables chain C(nat_<name>) of table C(ip osvirt_vz_nat)
        (C(.) and C(-) in the bridge name are written C(_d) and C(_h), C(_) is doubled);
        V(false) removes that chain.
      - Needs at least one IPv4 address on the bridge. IPv6 is never translated.
    type: bool
    default: false
  uplink:
    description:
      - Interface towards the outside (for example V(eth0)) that NAT applies to; it must exist.
      - Only with O(nat=true). When omitted, NAT applies to every interface but the bridge.
    type: str
  forwarding:
    description:
      - V(true) turns on C(net.ipv4.ip_forward) and, when the bridge has IPv6 addresses,
        C(net.ipv6.conf.all.forwarding), so that VEs reach networks beyond the host.
      - V(false) leaves both as they are. The module never turns forwarding off, because the
        sysctls are host-wide and other bridges or routed VEs may rely on them.
      - When omitted, forwarding is turned on when O(nat=true) and left as it is otherwise.
      - With IPv6 forwarding on, Linux ignores router advertisements on interfaces whose
        C(accept_ra) is 1; hosts that configure their own IPv6 address by SLAAC need
        C(accept_ra=2) on the uplink.
    type: bool
  pool4:
    description:
      - IPv4 network (for example V(10.20.0.0/24)) from which VEs on this bridge that ask for
        C(ipv4=auto) get the lowest free address. It must lie inside the subnet of one of the
        bridge's IPv4 addresses.
      - Recorded in the settings file only; addresses in use (static or automatic) and the
        bridge's own addresses are skipped when allocating.
    type: str
  pool6:
    description:
      - IPv6 network (for example V(fd00:20::/64)) for C(ipv6=auto), like O(pool4). It must lie
        inside the subnet of one of the bridge's IPv6 addresses.
    type: str
  vz_root:
    description:
      - The host's data root. The bridge's settings file is C(<vz_root>/net/bridges/<name>.json).
      - Must be an absolute path other than C(/), without whitespace or C(:).
    type: str
    default: /var/lib/vz
notes:
  - Check mode and diff mode cover the link, the forwarding sysctls, the NAT chain and the
    settings file.
seealso:
  - name: Linux bridge
    description: The kernel documentation of the bridge device.
    link: https://docs.kernel.org/networking/bridge.html
  - name: nftables NAT
    description: Masquerading with nftables.
    link: https://wiki.nftables.org/wiki-nftables/index.php/Performing_Network_Address_Translation_(NAT)
"""

EXAMPLES = r"""
- name: Default VE bridge with one address and a pool for VEs with ipv4 auto
  osvirt.vz.bridge:
    name: vzbr0
    ipv4:
      - 10.20.0.1/24
    pool4: 10.20.0.0/24

- name: Dual-stack bridge whose VEs reach the outside through eth0 (NAT for IPv4)
  osvirt.vz.bridge:
    name: vzbr0
    ipv4:
      - 10.20.0.1/24
    ipv6:
      - fd00:20::1/64
    nat: true
    uplink: eth0
    pool4: 10.20.0.128/25
    pool6: fd00:20::/64

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

- name: Remove a bridge, its NAT chain and its settings file
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
    ipv6:
      description: IPv6 addresses of the bridge in CIDR form, sorted, without link-local ones.
      type: list
      elements: str
      returned: success
      sample: [fd00:20::1/64]
    mtu:
      description: MTU of the bridge; V(null) when the bridge is absent.
      type: int
      returned: success
      sample: 1500
    nat:
      description: Whether the bridge's NAT chain exists.
      type: bool
      returned: success
      sample: true
    nat_rules:
      description: The rules of the NAT chain (after the digest-carrying counter rule).
      type: list
      elements: str
      returned: success
      sample: ['ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname "eth0" masquerade']
    uplink:
      description: The uplink NAT applies to, as recorded; V(null) for every interface.
      type: str
      returned: success
      sample: eth0
    pool4:
      description: The recorded IPv4 pool, or V(null).
      type: str
      returned: success
      sample: 10.20.0.0/24
    pool6:
      description: The recorded IPv6 pool, or V(null).
      type: str
      returned: success
      sample: null
    forwarding:
      description: The host's forwarding sysctls (host-wide, not per bridge).
      type: dict
      returned: success
      contains:
        ipv4:
          description: C(net.ipv4.ip_forward) is 1.
          type: bool
          returned: success
        ipv6:
          description: C(net.ipv6.conf.all.forwarding) is 1.
          type: bool
          returned: success
      sample: {ipv4: true, ipv6: false}
  sample:
    name: vzbr0
    state: present
    ipv4: [10.20.0.1/24]
    ipv6: []
    mtu: 1500
    nat: true
    nat_rules: ['ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname != "vzbr0" masquerade']
    uplink: null
    pool4: 10.20.0.0/24
    pool6: null
    forwarding: {ipv4: true, ipv6: false}
actions:
  description: What was done (or would be done in check mode), one readable line per step.
  returned: success
  type: list
  elements: str
  sample:
    - create bridge vzbr0
    - bring vzbr0 up
    - add 10.20.0.1/24 to vzbr0
    - set net.ipv4.ip_forward to 1
    - 'set NAT chain ip osvirt_vz_nat nat_vzbr0 of vzbr0: ip saddr 10.20.0.0/24 ip daddr != 10.20.0.0/24 oifname != "vzbr0" masquerade'
    - write /var/lib/vz/net/bridges/vzbr0.json
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
            ipv6=dict(type="list", elements="str"),
            nat=dict(type="bool", default=False),
            uplink=dict(type="str"),
            forwarding=dict(type="bool"),
            pool4=dict(type="str"),
            pool6=dict(type="str"),
            vz_root=dict(type="str", default="/var/lib/vz"),
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
