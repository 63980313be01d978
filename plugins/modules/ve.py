#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: ve
short_description: Manage Virtual Environments (system containers) on an LXC host
version_added: 0.1.0
description:
  - Creates, starts, stops, restarts, freezes and removes Virtual Environments (VEs) on the target host.
  - A VE's root file system is an overlay of a shared, immutable template version (lower) and the VE's
    own private area (upper); creating a VE copies no template file.
  - VEs are unprivileged by default, with an id map from C(/etc/subuid) and C(/etc/subgid), LXC's default
    seccomp policy, dropped capabilities and mixed C(proc), C(sys) and C(cgroup) mounts.
  - One task can ensure many VEs with O(ves); the task's other options are the defaults of each item.
    That costs one module run for all of them.
  - Options left out keep what an existing VE has; for a new VE they take the defaults named below.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description:
      - Name of the VE, 1-63 lowercase letters, digits and dashes, starting with a letter, not ending with a dash.
      - Exactly one of O(name) and O(ves) is required.
    type: str
  ves:
    description:
      - Many VEs in one task. Each item takes the same options as the task; options an item leaves out
        come from the task.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the VE.
        type: str
        required: true
      state:
        description: Like O(state).
        type: str
        choices: [present, started, stopped, restarted, frozen, absent]
      template:
        description: Like O(template).
        type: str
      rebase:
        description: Like O(rebase).
        type: str
        choices: [latest]
      hostname:
        description: Like O(hostname).
        type: str
      autostart:
        description: Like O(autostart).
        type: bool
      mounts:
        description: Like O(mounts).
        type: list
        elements: dict
        suboptions: &mount_options
          source:
            description: Absolute path on the host; must exist and must not be inside O(vz_root).
            type: str
            required: true
          target:
            description: Absolute path inside the VE; created when missing.
            type: str
            required: true
          readonly:
            description: Mount read-only.
            type: bool
            default: false
      network:
        description: Like O(network).
        type: list
        elements: dict
        suboptions: &network_options
          name:
            description: Interface name inside the VE, unique per VE; defaults to C(eth<index>).
            type: str
          mode:
            description:
              - V(bridged) plugs a veth pair into a host bridge (layer 2, the VE shares the bridge's network).
              - V(routed) gives the VE a veth pair on no bridge (LXC's veth router mode, venet-like, layer 3). The
                host routes each of the VE's addresses (/32, /128) to the host side of the pair and answers the VE's
                gateway there (proxy ARP/NDP); the VE's default routes go via V(169.254.0.1) and V(fe80::1). VEs in
                routed mode have no layer 2 contact with each other. The host needs a route to V(169.254.0.1) (any
                default route), and for IPv6 C(net.ipv6.conf.all.forwarding=1) (LXC refuses to start the VE
                otherwise); both are checked before the VE starts.
            type: str
            choices: [bridged, routed]
            default: bridged
          bridge:
            description:
              - Host bridge of a V(bridged) interface; defaults to C(bridge) of C(<vz_root>/host.json), else C(vzbr0).
                It must exist. Not allowed in V(routed) mode.
            type: str
          ipv4:
            description:
              - IPv4 addresses of the interface, several allowed. Bridged mode needs a prefix length
                (V(10.20.0.5/24)); routed mode takes single addresses (V(10.30.0.5) or V(10.30.0.5/32)).
              - V(auto) (alone or as one item) takes the lowest free address of the pool, C(pool4) of the bridge
                (see M(osvirt.vz.bridge)) or, in routed mode, C(routed_pool4) of the host. The VE keeps that address
                on later runs; it is released when the VE is removed or stops asking for it.
              - Every address is leased on the host, so no two VEs get the same one.
              - On a running VE, addresses are added and removed live, without a restart.
            type: list
            elements: str
          ipv6:
            description:
              - IPv6 addresses of the interface, like O(network[].ipv4) (V(fd00:20::5/64); routed V(fd00:30::5)), or
                V(auto) from C(pool6) of the bridge or C(routed_pool6) of the host.
            type: list
            elements: str
          gateway4:
            description:
              - IPv4 default gateway; must lie in the subnet of one of the interface's addresses.
              - Defaults to the bridge's own address in the pool's subnet for an V(auto) address, else none.
              - Routed mode always uses V(169.254.0.1); another value is refused.
            type: str
          gateway6:
            description:
              - IPv6 default gateway, like O(network[].gateway4). Routed mode always uses V(fe80::1).
            type: str
          hwaddr:
            description:
              - MAC address. By default derived from the VE and interface names, so it stays the same when
                the VE moves to another host.
            type: str
          mtu:
            description: MTU of the interface (68-65535). A change waits for a restart.
            type: int
          nameservers:
            description:
              - DNS servers (IPv4 or IPv6 addresses) written into the VE's C(/etc/resolv.conf), at most 3 per VE
                (the nameservers of all interfaces together). Changed live on a running VE.
            type: list
            elements: str
          searchdomains:
            description: Search domains written into the VE's C(/etc/resolv.conf).
            type: list
            elements: str
      privileged:
        description: Like O(privileged).
        type: bool
      ttys:
        description: Like O(ttys).
        type: int
      console:
        description: Like O(console).
        type: bool
      owner:
        description: Like O(owner).
        type: str
      limits:
        description: Like O(limits).
        type: dict
      clone_from:
        description: Like O(clone_from).
        type: str
  state:
    description:
      - V(present) makes sure the VE exists (a new one is left stopped) and does not change whether it runs.
      - V(started), V(stopped) and V(frozen) bring it to that run state, creating it when missing.
      - V(restarted) stops and starts it (always a change).
      - V(absent) stops and removes it with its private area; only files under C(<vz_root>/ves/<name>)
        are removed and symbolic links are never followed.
    type: str
    choices: [present, started, stopped, restarted, frozen, absent]
    default: started
  template:
    description:
      - Template of a new VE, C(name) (the newest version) or C(name@version).
      - For an existing VE, C(name) keeps the version it has; C(name@version) moves it to that version
        (a rebase, see O(rebase)); an older version is allowed (a rollback, reported as such).
      - A VE never moves to another template name; that is refused.
      - Required to create a VE.
    type: str
  rebase:
    description:
      - V(latest) moves an existing VE to the newest version of its template (a rebase). A new VE gets the
        newest version anyway.
      - A rebase switches the VE's lower layers and keeps its private area. A stopped VE uses the new version at
        its next start; a running VE is restarted with O(restart=true), otherwise the result says
        RV(restart_required).
      - The result lists in RV(hidden_files) the files of the private area that hide a file the new version
        changed, so the VE does not see that change.
      - Cannot be combined with a O(template) that names a version.
    type: str
    choices: [latest]
  hostname:
    description: Host name inside the VE; defaults to the VE name.
    type: str
  autostart:
    description:
      - Start the VE when the host boots (through C(lxc-autostart -P <vz_root>/ves)). New VEs default to V(false).
    type: bool
  mounts:
    description:
      - Bind mounts from the host into the VE. The list replaces the VE's mounts; V([]) removes them all.
      - In an unprivileged VE, host files appear owned by C(nobody) unless they belong to the VE's id range.
    type: list
    elements: dict
    suboptions: *mount_options
  network:
    description:
      - Network interfaces of the VE. The list replaces the VE's interfaces. A new VE without this option
        has only a loopback interface.
      - On a running VE, a change of addresses, gateways, nameservers or search domains of an existing interface
        is applied live (inside the VE's network namespace, on the host's routes and anti-spoofing filter). Any
        other change (bridge, mode, name, hwaddr, mtu, adding or removing an interface) is written and applied at
        the next start, reported as RV(restart_required), or applied now with O(restart=true).
      - Each interface gets an anti-spoofing filter on the host side of its link, so the VE can send only
        with its own MAC and addresses.
    type: list
    elements: dict
    suboptions: *network_options
  privileged:
    description:
      - Run the VE without a user namespace, so root inside is root on the host. Opt-in only; the result
        carries a warning. Cannot change on an existing VE. New VEs default to V(false).
    type: bool
  ttys:
    description:
      - How many virtual terminals (C(/dev/tty1) and up, C(lxc.tty.max)) the VE gets, for gettys that
        C(lxc-console -t N) reaches. The VE's console (C(/dev/console), C(lxc-console -t 0)) is there either way.
      - VEs default to V(0) because CRIU cannot checkpoint a VE with terminals, so V(0) keeps the VE ready for
        live migration; any other value rules live migration out (see docs/criu.md). 0 to 16.
      - A change takes effect at the next start of the VE.
    type: int
  console:
    description:
      - Give the VE a console (C(/dev/console), reached with C(lxc-console -t 0)). New VEs default to V(true).
      - V(false) sets C(lxc.console.path = none). LXC 5.0 cannot restore a checkpoint of a VE that has a console,
        so live migration (CRIU) needs V(false) together with O(ttys=0) (see docs/criu.md).
      - A change takes effect at the next start of the VE.
    type: bool
  owner:
    description: Free-form owner recorded in the VE's metadata (team, ticket, pipeline).
    type: str
  limits:
    description:
      - Resource limits of the VE, the same dict as in M(osvirt.vz.ve_limits), which documents every key and unit.
      - 'Sections C(cpu) (C(units), C(limit), C(burst), C(cpus), C(cpuset)), C(memory) (C(ram), C(high), C(guarantee),
        C(swap)), C(numproc), C(disk) (C(space), C(inodes), C(ioprio), C(read_bps), C(write_bps), C(read_iops),
        C(write_iops)) and C(net) (C(rate), C(ceil)); vzctl names are accepted as aliases.'
      - Keys left out keep what the VE has; V(null) or V(unlimited) removes a limit.
      - A running VE is changed live (no restart) and the change is written to its LXC config and C(ve.json).
    type: dict
  clone_from:
    description:
      - Make a new VE as a copy of another VE of the host, C(<ve>), or of one of its snapshots, C(<ve>@<snapshot>)
        (see M(osvirt.vz.ve_snapshot)). Only for a VE that does not exist yet; an existing VE ignores it.
      - The clone gets a copy of the source's private area (a writable btrfs snapshot where the private area is a
        subvolume, else a C(cp --reflink=auto) copy; a running source is frozen for the instant of the copy), on
        the same template version.
      - Like virt-sysprep it gets its own identity - a MAC derived from its own name, its own hostname (its name
        unless O(hostname) is given) in C(/etc/hostname) and C(/etc/hosts), a new C(/etc/machine-id) where the
        source has one, and new SSH host keys of the types the source had.
      - Its addresses are those of O(network); without it, the source's interfaces with V(auto) addresses from the
        pools. Options left out (limits, autostart, mounts, ttys, console, owner) are the source's.
    type: str
  force:
    description:
      - Apply a O(limits) change even when it is below what the VE uses now (memory.ram, disk.space).
    type: bool
    default: false
  overcommit:
    description:
      - How far the sum of the memory guarantees of the host's VEs may exceed the host's memory, and
        memory.ram the host's memory, as a factor.
      - Defaults to C(overcommit) in C(<vz_root>/host.json), else V(1.0).
    type: float
  restart:
    description:
      - When a change of configuration needs a restart of a running VE, restart it now. Otherwise the change
        is written, applied at the next start, and the result says RV(restart_required).
    type: bool
    default: false
  stop_timeout:
    description: Seconds a VE's init gets to shut down cleanly before it is killed.
    type: int
    default: 30
  lock_timeout:
    description: Seconds to wait for another operation on the same VE before failing with "VE x is busy".
    type: int
    default: 60
  start_concurrency:
    description:
      - How many VEs of the task are worked on at the same time (bulk form O(ves)).
      - With O(wait_for), a VE counts until its boot has finished, so this is also how many VEs boot at
        once. Hundreds of systemd VEs started together compete for CPU and the shared kernel limits; a few
        at a time finish sooner and cleaner.
    type: int
    default: 4
  wait_for:
    description:
      - After a VE is started (or found running), wait until its init says the boot has finished.
      - Where the template's init is systemd, C(systemctl is-system-running) is asked once a second inside
        the VE. V(running) needs the state C(running); V(booted) also accepts C(degraded) (some unit
        failed). The failed units are named in the result (C(boot) of each VE) and in the error.
      - An init that cannot report its boot (busybox) counts as booted when LXC reports the VE running.
      - A VE that does not boot as asked within O(wait_timeout) fails the task for that VE; it is left
        running, so its journal can be read.
      - Unset, the task returns as soon as LXC has started each VE's init.
    type: str
    choices: [running, booted]
  wait_timeout:
    description: Seconds each VE may take to boot with O(wait_for).
    type: int
    default: 300
notes:
  - Every VE's cgroup is C(<cgroup_parent>/<name>), its LXC monitor's C(<cgroup_parent>.monitor/<name>).
  - The LXC config is C(<vz_root>/ves/<name>/config); keys the module does not own are kept.
seealso:
  - module: osvirt.vz.ve_info
  - module: osvirt.vz.template
'''

EXAMPLES = r'''
- name: Build the tiny template once
  osvirt.vz.template:
    name: busybox

- name: One VE on the default bridge with a static address
  osvirt.vz.ve:
    name: web1
    template: busybox
    network:
      - name: eth0
        bridge: vzbr0
        ipv4: [10.20.0.5/24]
        gateway4: 10.20.0.1

- name: Two interfaces, IPv4 and IPv6, an address from the bridge's pool and a resolver
  osvirt.vz.ve:
    name: web2
    template: busybox
    network:
      - name: eth0
        bridge: vzbr0
        ipv4: [auto]
        ipv6: [fd00:20::5/64]
        gateway6: fd00:20::1
        nameservers: [10.20.0.1]
        searchdomains: [example.test]
      - name: eth1
        mode: routed
        ipv4: [192.0.2.10]

- name: Add a second address to a running VE (live, no restart)
  osvirt.vz.ve:
    name: web1
    network:
      - name: eth0
        bridge: vzbr0
        ipv4: [10.20.0.5/24, 10.20.0.6/24]
        gateway4: 10.20.0.1

- name: Bulk form with per-VE options
  osvirt.vz.ve:
    template: busybox
    autostart: true
    ves:
      - name: app1
        network: [{ipv4: [10.20.0.11/24]}]
      - name: app2
        network: [{ipv4: [10.20.0.12/24]}]
      - name: app3
        state: stopped

- name: Boot systemd VEs two at a time, each until systemd says it is running
  osvirt.vz.ve:
    template: debian-12
    ves: [{name: app1}, {name: app2}, {name: app3}, {name: app4}, {name: app5}, {name: app6}]
    start_concurrency: 2
    wait_for: running
    wait_timeout: 180

- name: Share a host directory read-only
  osvirt.vz.ve:
    name: web1
    mounts:
      - source: /srv/www
        target: /var/www
        readonly: true
    restart: true

- name: A VE with limits (changed live when it runs)
  osvirt.vz.ve:
    name: web1
    template: busybox
    limits:
      cpu: {units: 2000, limit: 150%}
      memory: {ram: 512M, swap: 256M}
      numproc: 200

- name: Move VEs to the newest version of their template, restarting those that run
  osvirt.vz.ve:
    rebase: latest
    restart: true
    ves: [{name: app1}, {name: app2}, {name: app3}]
  register: rebase

- name: Private files that hide an update of the template
  ansible.builtin.debug:
    var: rebase.hidden_files

- name: Roll a VE back to an older version
  osvirt.vz.ve:
    name: web1
    template: busybox@20261125-101500
    state: stopped

- name: A copy of web1 as it was at its snapshot, with an address from the bridge's pool
  osvirt.vz.ve:
    name: web3
    clone_from: web1@before-upgrade
    network:
      - name: eth0
        ipv4: [auto]

- name: Freeze a VE, then remove it
  osvirt.vz.ve:
    name: web1
    state: "{{ item }}"
  loop: [frozen, absent]
'''

RETURN = r'''
ve:
  description: The VE, when the task used O(name).
  returned: when O(name) is used
  type: dict
  contains:
    name:
      description: VE name.
      type: str
    state:
      description: One of V(running), V(stopped), V(frozen), V(absent).
      type: str
    template:
      description: Template version the VE runs on, C(name@version).
      type: str
    ips:
      description: Configured addresses of all interfaces, IPv4 first, without prefix length.
      type: list
      elements: str
    pid:
      description: PID of the VE's init on the host, when running.
      type: int
    boot:
      description:
        - With O(wait_for), how the VE's boot ended, C(state) (systemd's word, for example C(running),
          C(degraded), C(starting)), C(failed_units) (names), C(seconds) (waited), C(timed_out) and
          C(method) (C(systemctl), or C(lxc) for an init that cannot tell).
      returned: with O(wait_for), for running VEs
      type: dict
      sample: {state: degraded, failed_units: [dev-mqueue.mount], seconds: 7.0, timed_out: false, method: systemctl}
    limits:
      description: The VE's limits with unit strings.
      type: dict
  sample: {name: web1, state: running, template: busybox@20261125-101500, ips: [10.20.0.5], pid: 4242,
           hostname: web1, autostart: false, privileged: false, owner: null, created: "2026-11-25T10:15:00Z"}
ves:
  description: Every VE of the task, in task order, shaped like RV(ve).
  returned: always
  type: list
  elements: dict
actions:
  description: What was done (or would be done in check mode), one string per step, for example C(start web1).
  returned: always
  type: list
  elements: str
  sample: [create web1, start web1]
restart_required:
  description: True when a running VE's new configuration waits for a restart.
  returned: always
  type: bool
rebased:
  description:
    - VEs this task moved (or would move, in check mode) to another template version.
    - C(rollback) is true when the new version is older than the old one.
  returned: always
  type: list
  elements: dict
  sample: [{name: web1, from: busybox@20261125-101500, to: busybox@20261201-080000, rollback: false}]
hidden_files:
  description:
    - Per rebased VE, the entries of its private area that hide a file the new template version changed
      (added, removed or modified since the old version), so the VE will not see that change.
    - Each entry has C(path) (inside the VE), C(upper) (what the private area holds there, V(file), V(whiteout)
      for a file the VE deleted, V(directory) or V(opaque directory)) and C(change) (V(added), V(removed) or
      V(modified) by the new version); an opaque directory also has C(changed_below).
    - At most 1000 entries per VE; a warning gives the count of the rest.
  returned: always
  type: dict
  sample: {web1: [{path: /etc/passwd, upper: file, change: modified}]}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, client_for, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._ves import STATES, VeManager

MOUNT_OPTIONS = {
    'source': {'type': 'str', 'required': True},
    'target': {'type': 'str', 'required': True},
    'readonly': {'type': 'bool', 'default': False},
}
NETWORK_OPTIONS = {
    'name': {'type': 'str'},
    'mode': {'type': 'str', 'choices': ['bridged', 'routed'], 'default': 'bridged'},
    'bridge': {'type': 'str'},
    'ipv4': {'type': 'list', 'elements': 'str'},
    'ipv6': {'type': 'list', 'elements': 'str'},
    'gateway4': {'type': 'str'},
    'gateway6': {'type': 'str'},
    'hwaddr': {'type': 'str'},
    'mtu': {'type': 'int'},
    'nameservers': {'type': 'list', 'elements': 'str'},
    'searchdomains': {'type': 'list', 'elements': 'str'},
}
VE_OPTIONS = {
    'template': {'type': 'str'},
    'rebase': {'type': 'str', 'choices': ['latest']},
    'hostname': {'type': 'str'},
    'autostart': {'type': 'bool'},
    'mounts': {'type': 'list', 'elements': 'dict', 'options': MOUNT_OPTIONS},
    'network': {'type': 'list', 'elements': 'dict', 'options': NETWORK_OPTIONS},
    'privileged': {'type': 'bool'},
    'ttys': {'type': 'int'},
    'console': {'type': 'bool'},
    'owner': {'type': 'str'},
    'limits': {'type': 'dict'},
    'clone_from': {'type': 'str'},
}


def argument_spec():
    item = dict(VE_OPTIONS, name={'type': 'str', 'required': True},
                state={'type': 'str', 'choices': list(STATES)})
    spec = dict(VE_OPTIONS, **HOST_ARGS,
                name={'type': 'str'},
                ves={'type': 'list', 'elements': 'dict', 'options': item},
                state={'type': 'str', 'choices': list(STATES), 'default': 'started'},
                restart={'type': 'bool', 'default': False},
                force={'type': 'bool', 'default': False},
                overcommit={'type': 'float'},
                stop_timeout={'type': 'int', 'default': 30},
                lock_timeout={'type': 'int', 'default': 60},
                start_concurrency={'type': 'int', 'default': 4},
                wait_for={'type': 'str', 'choices': ['running', 'booted']},
                wait_timeout={'type': 'int', 'default': 300})
    return spec


def specs_from(params):
    """One spec per VE: the item's options, else the task's."""
    keys = list(VE_OPTIONS) + ['state']
    if params['ves'] is None:
        return [dict({k: params[k] for k in keys}, name=params['name'], force=params['force'])]
    return [dict({k: item.get(k) if item.get(k) is not None else params[k] for k in keys}, name=item['name'],
                 force=params['force'])
            for item in params['ves']]


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_one_of=[('name', 'ves')], mutually_exclusive=[('name', 'ves')])

    def job():
        host = host_from(module)
        manager = VeManager(host, client_for(host), check_mode=module.check_mode,
                            lock_timeout=module.params['lock_timeout'], stop_timeout=module.params['stop_timeout'],
                            overcommit=module.params['overcommit'], workers=module.params['start_concurrency'],
                            wait_for=module.params['wait_for'], wait_timeout=module.params['wait_timeout'])
        results = manager.ensure(specs_from(module.params), restart=module.params['restart'])
        bulk = module.params['ves'] is not None
        out = {
            'changed': any(r['changed'] for r in results),
            'ves': [r['ve'] for r in results],
            'actions': [a for r in results for a in r['actions']],
            'restart_required': any(r['restart_required'] for r in results),
            'rebased': [dict(name=r['ve']['name'], **{k: r['rebase'][k] for k in ('from', 'to', 'rollback')})
                        for r in results if r['rebase']],
            'hidden_files': {r['ve']['name']: r['rebase']['hidden_files'] for r in results
                             if r['rebase'] and r['rebase']['hidden_files'] is not None},
        }
        if not bulk:
            out['ve'] = results[0]['ve']
        if module._diff:
            if bulk:
                out['diff'] = {'before': {r['ve']['name']: r['diff']['before'] for r in results},
                               'after': {r['ve']['name']: r['diff']['after'] for r in results}}
            else:
                out['diff'] = results[0]['diff']
        for warning in sorted({w for r in results for w in r['warnings']}):
            module.warn(warning)
        failed = [r for r in results if r['error']]
        if failed:
            msg = '; '.join('VE %s: %s' % (r['ve']['name'], r['error']) for r in failed)
            details = failed[0].get('error_details') or {}
            module.fail_json(msg=msg, **dict(out, **details))
        module.exit_json(**out)

    run(module, job)


if __name__ == '__main__':
    main()
