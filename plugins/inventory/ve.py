# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory plugin osvirt.vz.ve: every VE of the VE hosts as an inventory host."""

from __future__ import annotations

DOCUMENTATION = r"""
name: ve
author: osvirt developers (!UNKNOWN)
short_description: Every osvirt.vz VE of the VE hosts as an inventory host
description:
  - Lists the VEs of the hosts in group C(vz_hosts) (option O(host_group)) of the inventory
    sources loaded before this one, or of the hosts in O(hosts), and adds each VE as a host
    reached through the connection plugin C(osvirt.vz.ve).
  - Reaches every host with its own connection variables from those sources (C(ansible_host),
    C(ansible_user), C(ansible_port), C(ansible_ssh_private_key_file),
    C(ansible_ssh_common_args), C(ansible_ssh_extra_args); C(ansible_connection=local) or an
    implicit C(localhost) means the controller itself) over C(ansible.builtin.ssh), in parallel,
    with ONE command per host (its Python lists the VEs with C(lxc-ls) and reads their
    C(ve.json)).
  - A host that cannot be listed is reported with a warning naming it and the error, and
    skipped; with O(fail_on_unreachable=true) the whole source fails instead.
  - VE names are unique per host, not per fleet, so a VE's inventory name contains its host's
    name; see O(name_format).
  - "Every VE gets these variables: C(ansible_connection=osvirt.vz.ve), the connection variables
    C(ansible_vz_ve), C(ansible_vz_root), C(ansible_vz_host) (the host's address) and
    C(ansible_vz_host_connection), C(ansible_vz_host_user), C(ansible_vz_host_port),
    C(ansible_vz_host_private_key_file), C(ansible_vz_host_ssh_common_args),
    C(ansible_vz_host_ssh_extra_args) where the host has them, and C(vz_host) (the host's
    inventory name), C(vz_ve), C(vz_state), C(vz_pid), C(vz_template) (name@version),
    C(vz_template_name), C(vz_template_version), C(vz_addresses), C(vz_network), C(vz_limits),
    C(vz_hostname), C(vz_autostart), C(vz_privileged), C(vz_owner), C(vz_created)."
  - "Every VE joins the groups C(vz_ves), C(vz_host_<host>), C(template_<template name>) and
    C(state_<state>) (characters other than letters, digits and C(_) become C(_), so
    C(debian-12) gives C(template_debian_12))."
  - Remote data is marked unsafe (never templated).
  - The configuration file name must end in C(ve.yml) or C(ve.yaml).
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; makes the file an C(osvirt.vz.ve) source.
    type: str
    required: true
    choices: [osvirt.vz.ve]
  host_group:
    description: The group of the earlier inventory sources whose hosts are VE hosts.
    type: str
    default: vz_hosts
  hosts:
    description:
      - VE hosts to list, instead of O(host_group). A name that no earlier source defines is
        reached by that name over SSH with the ssh plugin's defaults (C(localhost) locally).
    type: list
    elements: str
  vz_root:
    description:
      - Data root of the VE hosts. A host variable C(host_vz_root) (the C(osvirt.vz.host) role's)
        or C(vz_root) of a host overrides it.
    type: str
    default: /var/lib/vz
  name_format:
    description:
      - Inventory name of a VE, a format string with the fields C({ve}) (the VE name) and
        C({host}) (the inventory name of its host). Must contain C({ve}).
      - With C({ve}) alone, two VEs of one name on two hosts collide and the source fails.
    type: str
    default: '{ve}.{host}'
  workers:
    description: How many hosts are listed at the same time.
    type: int
    default: 16
  fail_on_unreachable:
    description:
      - V(false) reports a host that cannot be listed with a warning and skips it.
      - V(true) fails the whole source instead (Ansible then warns and loads no host of it, or
        stops when C(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED) is true).
    type: bool
    default: false
"""

EXAMPLES = r"""
# fleet.ve.yml -- used as: ansible-playbook -i hosts.ini -i fleet.ve.yml patch.yml
plugin: osvirt.vz.ve

# another group of VE hosts, names like lab1-web1, extra groups and variables
# plugin: osvirt.vz.ve
# host_group: dc1
# name_format: '{host}-{ve}'
# keyed_groups:
#   - key: vz_template_version
#     prefix: version
# groups:
#   webservers: "'web' in vz_ve"
# compose:
#   ansible_python_interpreter: "'/usr/bin/python3'"
# cache: true
# cache_plugin: ansible.builtin.jsonfile
# cache_connection: ~/.cache/osvirt-ve-inventory
# cache_timeout: 300
"""

from concurrent.futures import ThreadPoolExecutor

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.helpers import get_group_vars
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.display import Display
from ansible.utils.unsafe_proxy import wrap_var
from ansible.utils.vars import combine_vars

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import LxcClient
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.plugin_utils import _fleet
from ansible_collections.osvirt.vz.plugins.plugin_utils._hostrun import LOCAL_NAMES, HostRunner

display = Display()

DEFAULT_PYTHON = '/usr/bin/python3'
ALL_GROUP = 'vz_ves'
# host variable -> the connection plugin's variable, copied to each VE of the host
_SSH_VARS = (
    (('ansible_user', 'ansible_ssh_user'), 'ansible_vz_host_user'),
    (('ansible_port', 'ansible_ssh_port'), 'ansible_vz_host_port'),
    (('ansible_ssh_private_key_file', 'ansible_private_key_file'), 'ansible_vz_host_private_key_file'),
    (('ansible_ssh_common_args',), 'ansible_vz_host_ssh_common_args'),
    (('ansible_ssh_extra_args',), 'ansible_vz_host_ssh_extra_args'),
)


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """VEs of the VE hosts as inventory hosts."""

    NAME = 'osvirt.vz.ve'

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(('ve.yml', 've.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            fmt = _fleet.check_name_format(self.get_option('name_format'))
            default_root = _validate.vz_root(self.get_option('vz_root'))
        except VzError as exc:
            raise AnsibleParserError('%s: %s' % (path, exc))
        targets = [self._target(name, default_root) for name in self._host_names(path)]

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option('cache') and cache
        update_cache = self.get_option('cache') and not cache
        cached = {}
        if use_cache:
            try:
                cached = self._cache[cache_key] or {}
            except KeyError:
                update_cache = True
        listings, todo = {}, []
        for target in targets:
            entry = cached.get(target['name']) if isinstance(cached, dict) else None
            if isinstance(entry, dict) and entry.get('key') == target['key']:
                listings[target['name']] = entry
            else:
                todo.append(target)
        if todo:
            fresh, failures = self._query(todo)
            if failures:
                report = '; '.join('host %s (%s): %s' % (t['name'], t['address'], err) for t, err in failures)
                if self.get_option('fail_on_unreachable'):
                    raise AnsibleParserError('osvirt.vz.ve: cannot list the VEs of %s' % report)
                for target, error in failures:
                    display.warning('osvirt.vz.ve: host %s (%s) cannot be reached, its VEs are not listed: %s'
                                    % (target['name'], target['address'], error))
            listings.update(fresh)
            update_cache = update_cache or (self.get_option('cache') and bool(fresh))
        if update_cache:
            keep = dict(cached) if isinstance(cached, dict) else {}
            keep.update(listings)
            self._cache[cache_key] = keep
        self._populate(targets, listings, fmt)

    # -- which hosts, reached how -----------------------------------------------------------
    def _host_names(self, path):
        names = self.get_option('hosts')
        if names:
            return list(dict.fromkeys(names))
        group = self.inventory.groups.get(self.get_option('host_group'))
        if group is None:
            display.warning('osvirt.vz.ve: %s: no group %s in the inventory sources loaded before it, so there is no '
                            'VE host to list (list an inventory of the hosts first: -i hosts.ini -i %s)'
                            % (path, self.get_option('host_group'), path))
            return []
        return sorted(h.name for h in group.get_hosts())

    def _host_vars(self, name):
        host = self.inventory.get_host(name)
        if host is None:
            return {}
        variables = combine_vars(get_group_vars(host.get_groups()), host.get_vars())
        self.templar.available_variables = variables
        result = {}
        for key, value in variables.items():
            if key.startswith(('ansible_', 'host_vz_root', 'vz_root')):
                try:
                    result[key] = self.templar.template(value)
                except AnsibleError:
                    result[key] = value
        return result

    def _target(self, name, default_root):
        hvars = self._host_vars(name)
        connection = hvars.get('ansible_connection')
        address = hvars.get('ansible_host') or hvars.get('ansible_ssh_host') or name
        if connection == 'local' or (connection is None and address in LOCAL_NAMES):
            kind = 'local'
        else:
            kind = 'ssh'
        ssh = {}
        for sources, target_var in _SSH_VARS:
            value = next((hvars[s] for s in sources if hvars.get(s) not in (None, '')), None)
            if value is not None and kind == 'ssh':
                ssh[target_var] = value
        try:
            vz_root = _validate.vz_root(hvars.get('host_vz_root') or hvars.get('vz_root') or default_root)
        except VzError as exc:
            raise AnsibleParserError('osvirt.vz.ve: host %s: %s' % (name, exc))
        python = hvars.get('ansible_python_interpreter')
        if not isinstance(python, str) or not python.startswith('/') or '{{' in python:
            python = DEFAULT_PYTHON
        return {
            'name': name, 'kind': kind, 'address': address, 'ssh': ssh, 'vz_root': vz_root, 'python': python,
            # a cached listing is reused only for the same place
            'key': '%s|%s|%s' % (kind, address, vz_root),
        }

    # -- listing ----------------------------------------------------------------------------
    def _list_one(self, target):
        ssh = target['ssh']
        runner = HostRunner(target['name'], connection=target['kind'], address=target['address'],
                            user=ssh.get('ansible_vz_host_user'), port=ssh.get('ansible_vz_host_port'),
                            private_key_file=ssh.get('ansible_vz_host_private_key_file'),
                            ssh_common_args=ssh.get('ansible_vz_host_ssh_common_args'),
                            ssh_extra_args=ssh.get('ansible_vz_host_ssh_extra_args'))
        client = LxcClient(target['vz_root'] + '/ves', runner=runner.runner)
        rc, out, err = runner.run(_fleet.listing_argv(target['python'], client.list_argv(), target['vz_root']))
        if rc != 0:
            lines = to_text(err, errors='surrogate_or_replace').strip().splitlines()
            raise VzError('listing the VEs failed (rc=%d)%s' % (rc, ': ' + lines[-1] if lines else ''))
        ves, warnings = _fleet.parse_listing(to_text(out, errors='surrogate_or_replace'))
        return {'key': target['key'], 'ves': ves, 'warnings': warnings}

    def _query(self, targets):
        """List every target on a thread pool; returns ({name: listing}, [(target, error)])."""
        def job(target):
            try:
                return target, self._list_one(target), None
            except (AnsibleError, VzError, OSError) as exc:
                return target, None, to_text(exc).strip().splitlines()[0] if to_text(exc).strip() else repr(exc)

        workers = max(1, min(int(self.get_option('workers') or 1), len(targets)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(job, targets))
        listings = {t['name']: listing for t, listing, error in results if error is None}
        failures = [(t, error) for t, listing, error in results if error is not None]
        return listings, failures

    # -- inventory --------------------------------------------------------------------------
    def _populate(self, targets, listings, fmt):
        strict = self.get_option('strict')
        seen = {}
        for target in targets:
            listing = listings.get(target['name'])
            if listing is None:
                continue
            for warning in listing.get('warnings') or []:
                display.warning('osvirt.vz.ve: host %s: %s' % (target['name'], warning))
            for ve in listing['ves']:
                name = _fleet.inventory_name(fmt, ve['name'], target['name'])
                if name in seen:
                    raise AnsibleParserError('osvirt.vz.ve: VE %s on %s and VE %s on %s both get the inventory name '
                                             '%s; use a name_format with {host}' % (seen[name][1], seen[name][0],
                                                                                    ve['name'], target['name'], name))
                seen[name] = (target['name'], ve['name'])
                self._add_ve(name, target, ve, strict)

    def _add_ve(self, name, target, ve, strict):
        self.inventory.add_host(name, group=self.inventory.add_group(ALL_GROUP))
        for group in _fleet.default_groups(target['name'], ve):
            self.inventory.add_child(self.inventory.add_group(group), name)
        variables = {
            'ansible_connection': 'osvirt.vz.ve',
            'ansible_vz_ve': ve['name'],
            'ansible_vz_root': target['vz_root'],
            'ansible_vz_host': target['address'],
            'ansible_vz_host_connection': target['kind'],
            'vz_host': target['name'],
            'vz_ve': ve['name'],
        }
        variables.update(target['ssh'])
        # what the host said about its VE is data, never a template
        variables.update(wrap_var({'vz_' + key: ve.get(key) for key in (
            'state', 'pid', 'template', 'template_name', 'template_version', 'addresses', 'network',
            'limits', 'hostname', 'autostart', 'privileged', 'owner', 'created')}))
        for key, value in variables.items():
            self.inventory.set_variable(name, key, value)
        self._set_composite_vars(self.get_option('compose'), variables, name, strict=strict)
        self._add_host_to_composed_groups(self.get_option('groups'), variables, name, strict=strict)
        self._add_host_to_keyed_groups(self.get_option('keyed_groups'), variables, name, strict=strict)
