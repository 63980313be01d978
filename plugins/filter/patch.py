# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the osvirt.vz.patch role: batches, health checks, the plan and the report.

Each filter is documented in the YAML file of its name next to this one; the logic lives in
plugins/module_utils/_patch.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.osvirt.vz.plugins.module_utils import _patch
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


def _plain(value):
    """Ansible's lazy containers as plain dicts and lists (for the pure logic)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _call(func, *args, **kwargs):
    try:
        return func(*[_plain(a) for a in args], **{k: _plain(v) for k, v in kwargs.items()})
    except VzError as exc:
        raise AnsibleFilterError(str(exc))


def patch_batches(value):
    """The checked batch list (counts and percentages)."""
    return _call(_patch.parse_batches, value)


def patch_batch_sizes(value, total):
    """The sizes of the batches Ansible's serial makes of ``total`` VEs."""
    return _call(_patch.batch_sizes, value, total)


def patch_fail_percentage(value):
    """The checked maximum fail percentage."""
    return _call(_patch.fail_percentage, value)


def patch_health(value):
    """The checked health check with the command line to run in the VE."""
    return _call(_patch.health_check, value)


def patch_healthy(result, check):
    """Whether a health check's result passes."""
    return _call(_patch.healthy, result, check)


def patch_argv_line(argv):
    """An argv list as one quoted line for a POSIX shell."""
    return _call(_patch.argv_line, argv)


def patch_commands(value, what='commands'):
    """The checked list of argv commands."""
    return _call(_patch.commands, value, what)


def patch_unreachable_hosts(listings):
    """The hosts of the listings that could not be reached."""
    return _call(_patch.unreachable_hosts, listings)


def patch_plan(listings, template=None, version=None, mode='image', include_stopped=True, only=None,
               exclude=None):
    """Which VEs the rollout patches, canary first, and which it skips and why."""
    return _call(_patch.plan, listings, template=template, version=version, mode=mode,
                 include_stopped=include_stopped, only=only, exclude=exclude)


def patch_source(listings, template, host=None, version=None):
    """The build host of the new version and the template's newest version there."""
    return _call(_patch.source, listings, template, host=host, version=version)


def patch_outcome(entry, status, message=None, rebase=None):
    """One VE's outcome as the rollout records it."""
    return _call(_patch.outcome, entry, status, message=message, rebase=rebase)


def patch_report(entries, hostvars, key='patch_outcome'):
    """The report of a rollout from its plan and the outcomes in the VEs' host variables."""
    outcomes = {}
    for entry in entries or []:
        name = entry.get('name') if isinstance(entry, Mapping) else None
        if name is None:
            continue
        try:
            host = hostvars[name]
        except KeyError:
            continue
        if isinstance(host, Mapping) and key in host:
            outcomes[name] = _plain(host[key])
    return _call(_patch.report, entries, outcomes)


class FilterModule:
    def filters(self):
        return {
            'patch_batches': patch_batches,
            'patch_batch_sizes': patch_batch_sizes,
            'patch_fail_percentage': patch_fail_percentage,
            'patch_health': patch_health,
            'patch_healthy': patch_healthy,
            'patch_argv_line': patch_argv_line,
            'patch_commands': patch_commands,
            'patch_unreachable_hosts': patch_unreachable_hosts,
            'patch_plan': patch_plan,
            'patch_source': patch_source,
            'patch_outcome': patch_outcome,
            'patch_report': patch_report,
        }
