#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve_info
short_description: List the Virtual Environments of a host with state, template, addresses and usage
version_added: 0.1.0
description:
  - Reports every VE of the host, or those named or in the given states.
  - One C(lxc-ls) call serves all VEs; the rest is read from files, so the module stays fast with hundreds of VEs.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.info
options:
  name:
    description: Only these VEs. Names that do not exist are listed in RV(missing).
    type: list
    elements: str
  state:
    description: Only VEs in one of these states.
    type: list
    elements: str
    choices: [running, stopped, frozen]
  usage:
    description:
      - Include memory in use, the size of each private area (walks the private area) and RV(ves[].usage),
        the use against each limit with limit hits.
    type: bool
    default: true
  thresholds:
    description:
      - 'Percent of a limit above which a VE is listed in RV(over_threshold), for example
        C({memory: 90%, numproc: 80%, disk: 90%}).'
      - Keys C(memory) (use of C(memory.ram)), C(numproc) (processes of C(numproc)), C(disk) (space of
        C(disk.space)) and C(inodes). VEs without that limit are never over it. Needs O(usage).
    type: dict
seealso:
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: All VEs of the host
  osvirt.vz.ve_info:
  register: info

- name: Show a table
  ansible.builtin.debug:
    msg: "{{ info.ves | map(attribute='name') | zip(info.ves | map(attribute='state')) | list }}"

- name: Running VEs on an outdated busybox version
  osvirt.vz.ve_info:
    state: [running]
  register: running
'''

RETURN = r'''
ves:
  description: The VEs, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VE name.
      type: str
    state:
      description: V(running), V(stopped) or V(frozen).
      type: str
    template:
      description: C(name@version) of the template version the VE runs on.
      type: str
    template_name:
      description: Template name.
      type: str
    template_version:
      description: Template version.
      type: str
    ips:
      description: Configured addresses of all interfaces, IPv4 first, without prefix length.
      type: list
      elements: str
    network:
      description:
        - The VE's interfaces as its metadata records them, each with C(name), C(mode) (V(bridged) or V(routed)),
          C(bridge), C(ipv4) and C(ipv6) (addresses with prefix length), C(auto4) and C(auto6) (true when the
          address came from a pool), C(gateway4), C(gateway6), C(mtu), C(hwaddr), C(host_link) (the host side
          of its veth), C(nameservers) and C(searchdomains).
      type: list
      elements: dict
    pid:
      description: PID of the VE's init on the host, when running.
      type: int
    memory_bytes:
      description: Memory the VE's cgroup uses now, in bytes (0 when stopped).
      type: int
    private_bytes:
      description: Disk space of the VE's private area, in bytes.
      type: int
    snapshots:
      description:
        - Snapshots of the VE (M(osvirt.vz.ve_snapshot)), oldest first, with C(name), C(created), C(method)
          (C(btrfs) or C(copy)), C(running) (whether the VE ran when it was taken), C(template) and, with
          O(usage), C(size_bytes) (the space only the snapshot holds on btrfs with quotas, else its disk use).
      type: list
      elements: dict
      sample: [{name: before-upgrade, created: '2026-12-07T23:00:00Z', method: btrfs, running: true,
                template: busybox@20261125-101500, size_bytes: 16384}]
    created:
      description: Creation time, UTC, ISO 8601.
      type: str
    interfaces:
      description:
        - One entry per configured network interface, in the order of the VE's O(osvirt.vz.ve#module:network).
        - The configuration C(name) (inside the VE), C(mode), C(bridge), C(hwaddr), C(host_link) (the host side
          of the veth), C(mtu), C(ipv4), C(ipv6), C(gateway4), C(gateway6).
        - C(live) is what the running VE has now, read with netlink inside its network namespace
          (V(null) when the VE is stopped or the interface is missing) - C(hwaddr), C(mtu), C(state) (V(up),
          V(down), V(lowerlayerdown), V(unknown)), C(ipv4), C(ipv6) (addresses present, IPv6 without the
          kernel's link-local one), C(ipv6_tentative) (still in duplicate address detection),
          C(ipv6_dadfailed) (another node on the link has them).
        - C(counters) are read on the host side of the link but given as the VE counts them -
          C(tx_bytes) and C(tx_packets) are what the VE sent, C(rx_bytes) and C(rx_packets) what it received
          (the host side's rx is the VE's tx); C(state) is the host side's state.
          V(null) when the VE is stopped. They start at zero at every start of the VE.
      type: list
      elements: dict
      sample: [{name: eth0, mode: bridged, bridge: vzbr0, hwaddr: '02:3f:a1:07:5c:9e', host_link: vz1a2b3c4d0,
                mtu: null, ipv4: [10.20.0.5/24], ipv6: [], gateway4: 10.20.0.1, gateway6: null,
                live: {hwaddr: '02:3f:a1:07:5c:9e', mtu: 1500, state: up, ipv4: [10.20.0.5/24],
                       ipv6: [], ipv6_tentative: [], ipv6_dadfailed: []},
                counters: {rx_bytes: 5230, tx_bytes: 1804, rx_packets: 41, tx_packets: 19, state: up}}]
    limits:
      description: The VE's limits with unit strings.
      type: dict
    usage:
      description:
        - Use against each limit and limit hits, when O(usage) is true.
        - C(memory) (running VEs) C(used), C(limit), C(max_used) bytes, C(failcnt) (times the limit was hit),
          C(oom_kills) (processes the kernel killed at the limit).
        - C(numproc) (running VEs) C(used), C(limit), C(hits) (forks refused at the limit).
        - C(cpu) (running VEs) C(usage_ns) CPU time used, C(throttled_ns) time held back by C(cpu.limit),
          C(nr_throttled) periods throttled, C(limit) percent of one CPU.
        - C(disk) C(space_used), C(space_limit) bytes, C(inodes_used), C(inodes_limit).
        - C(net) C(rx_bytes), C(tx_bytes) as the VE counts them (running VEs), C(rate), C(ceil) bit/s.
        - A figure the host does not provide is V(null).
      type: dict
      sample: {memory: {used: 73400320, limit: 268435456, failcnt: 0, oom_kills: 1, max_used: 268435456},
               numproc: {used: 3, limit: 64, hits: 12}, cpu: {usage_ns: 12000000000, throttled_ns: 2000000000,
               nr_throttled: 40, limit: 50}}
broken:
  description:
    - VEs that cannot be read (a C(ve.json) that is not JSON, an LXC config that is empty or missing, e.g. cut short
      by a full disk or a crash), each with C(name), C(state) and C(error). They are listed in RV(ves) too, with
      C(broken) set to the same message and nothing else known; every other VE is reported as usual, and a
      warning names each. M(osvirt.vz.ve) with O(osvirt.vz.ve#module:state=absent) still removes them.
  returned: always
  type: list
  elements: dict
  sample: [{name: web3, state: stopped, error: "VE web3 is broken: /var/lib/vz/ves/web3/ve.json is not valid JSON ..."}]
missing:
  description: Names asked for with O(name) that do not exist on the host.
  returned: always
  type: list
  elements: str
over_threshold:
  description: One entry per VE and resource over its threshold in O(thresholds), sorted by VE.
  returned: always
  type: list
  elements: dict
  sample: [{name: web1, resource: memory, used: 250000000, limit: 268435456, percent: 93.1, threshold: 90.0}]
host:
  description:
    - Facts about the host's VE store.
    - C(moved_addresses) lists the addresses this host keeps from its pools and other VEs because the VE that
      had them moved to another host with them (C(ve), C(interface), C(moved_to), C(since)); remove
      C(<vz_root>/net/moved/<address>) once that VE is gone for good.
  returned: always
  type: dict
  sample: {vz_root: /var/lib/vz, cgroup_parent: vz, cgroup_layout: hybrid,
           moved_addresses: {10.20.0.20: {ve: web1, interface: eth0, moved_to: vz2, since: '2026-12-07T23:00:00Z'}}}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _addrpool, _limits, _validate
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'list', 'elements': 'str'},
                           state={'type': 'list', 'elements': 'str', 'choices': ['running', 'stopped', 'frozen']},
                           usage={'type': 'bool', 'default': True},
                           thresholds={'type': 'dict'}),
        supports_check_mode=True)

    def job():
        names = [_validate.ve_name(n) for n in module.params['name'] or []]
        thresholds = _limits.parse_thresholds(module.params['thresholds'])
        if thresholds and not module.params['usage']:
            module.fail_json(msg='thresholds need usage: true (they compare use with limits)')
        host = host_from(module)
        manager = VeManager(host, client_for(host))
        ves = manager.info(names or None, module.params['state'], module.params['usage'])
        found = {v['name'] for v in ves}
        missing = [n for n in names if n not in found and n not in manager.names()]
        over = [o for v in ves for o in _limits.over_thresholds(v['name'], v.get('usage') or {}, thresholds)]
        broken = [{'name': v['name'], 'state': v['state'], 'error': v['broken']} for v in ves if v.get('broken')]
        for entry in broken:
            module.warn(entry['error'])
        module.exit_json(changed=False, ves=ves, missing=missing, over_threshold=over, broken=broken,
                         host={'vz_root': host.vz_root, 'cgroup_parent': host.cgroup_parent,
                               'cgroup_layout': manager.cgroups.layout,
                               'moved_addresses': _addrpool.Leases(host).reservations()})

    run(module, job)


if __name__ == '__main__':
    main()
