# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of capacity-aware placement and the provision role: placement, placed_ves, provision_plan.

Each filter is documented in the YAML file of its name next to this one; the logic lives in
plugins/module_utils/_placement.py and _provision.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.osvirt.vz.plugins.module_utils import _placement, _provision
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


def _plain(value):
    """Ansible's lazy containers and tagged strings as plain dicts, lists and str."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def placement(host_facts, ves, strategy='spread'):
    """Where each VE goes: {placement, new, kept, per_host, plan}."""
    try:
        return _placement.place(_plain(host_facts), _plain(ves), _plain(strategy)).as_dict()
    except VzError as exc:
        raise AnsibleFilterError(exc.message)


def placed_ves(ves, result, host):
    """The items of ``ves`` that ``result`` (of placement) puts on ``host``, without placement's keys."""
    if not isinstance(result, Mapping) or not isinstance(result.get('placement'), Mapping):
        raise AnsibleFilterError('placed_ves needs the result of osvirt.vz.placement, got %r' % (type(result).__name__,))
    where = result['placement']
    items = []
    for item in _plain(ves) or []:
        if not isinstance(item, dict) or 'name' not in item:
            raise AnsibleFilterError('every VE must be a dict with at least name, got %r' % (item,))
        if where.get(item['name']) == str(host):
            items.append(dict((k, v) for k, v in item.items() if k not in _placement.PLACEMENT_KEYS))
    return sorted(items, key=lambda item: item['name'])


def provision_plan(host_facts, result, ves, owner, prune=False, templates=None):
    """Templates to build or copy and VEs to prune after a placement (the provision role's plan)."""
    definitions = {}
    for item in _plain(templates) or []:
        if not isinstance(item, dict) or not item.get('name'):
            raise AnsibleFilterError('every template definition must be a dict with name, got %r' % (item,))
        definitions[item['name']] = dict((k, v) for k, v in item.items() if k != 'name')
    try:
        return _provision.provision_plan(_plain(host_facts), _plain(result), _plain(ves), _plain(owner),
                                         bool(prune), definitions)
    except VzError as exc:
        raise AnsibleFilterError(exc.message)


class FilterModule:
    def filters(self):
        return {'placement': placement, 'placed_ves': placed_ves, 'provision_plan': provision_plan}
