# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What placement needs to know about a host: size, guarantees in use, drain mark, VEs, templates.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Read-only: nothing is created, not even the data root, so the facts of a host that never ran a VE
(no ``<vz_root>`` yet) are its capacity with empty lists. The shape is the ``host`` return of
osvirt.vz.host_info and the input of _placement (through the ``osvirt.vz.placement`` filter).
"""

from __future__ import annotations

import os
import socket

from . import _limits
from ._ve_ops import VeOps

# summed over the host's VEs: facts key -> limits key
GUARANTEED = (('memory', ('memory', 'guarantee')), ('net', ('net', 'rate')), ('disk', ('disk', 'space')))


def _existing_parent(path):
    while not os.path.exists(path) and path not in ('/', ''):
        path = os.path.dirname(path)
    return path or '/'


def disk_space(path):
    """(total, free) bytes of the file system that holds ``path`` (or would: its nearest parent)."""
    stat = os.statvfs(_existing_parent(path))
    return stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize


def draining_mark(settings):
    """The drain mark of host.json (``{since, reason, by}``) or None when the host takes VEs."""
    mark = settings.get('draining') if isinstance(settings, dict) else None
    return mark or None


def host_facts(host, client, settings):
    """The facts of ``host`` (a _host.Host) as osvirt.vz.host_info returns them.

    ``client`` lists VE states (one lxc-ls), ``settings`` is the content of host.json ({} when none).
    """
    ops = VeOps(host, client)
    states = ops.states() if os.path.isdir(host.ves_dir) else {}
    ves, guaranteed = {}, dict((key, 0) for key, _limit in GUARANTEED)
    for name in ops.names():
        meta = ops.read_meta(name, broken_ok=True) or {}
        limits = meta.get('limits') or {}
        for key, (section, sub) in GUARANTEED:
            value = _limits.get(limits, section, sub)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                guaranteed[key] += int(value)
        state = (states.get(name) or {}).get('state') or 'stopped'
        ves[name] = {'owner': meta.get('owner'), 'template': meta.get('template'), 'state': state.lower()}
        if meta.get('broken'):
            ves[name]['broken'] = meta['broken']
    templates = dict((name, ops.templates.versions(name)) for name in ops.templates.names())
    total, free = disk_space(host.vz_root)
    try:
        overcommit = float(host.overcommit)
    except (TypeError, ValueError):
        overcommit = 1.0
    return {
        'name': socket.gethostname(),
        'vz_root': host.vz_root,
        'cgroup_parent': host.cgroup_parent,
        'bridge': host.bridge,
        'draining': draining_mark(settings),
        'overcommit': overcommit,
        'capacity': {
            'cpus': len(os.sched_getaffinity(0)),
            'memory': _limits._meminfo().get('MemTotal', 0),
            'net': int(host.net_capacity or _limits.DEFAULT_NET_CAPACITY_BPS),
            'disk_total': total,
            'disk_free': free,
        },
        'guaranteed': guaranteed,
        'ves': ves,
        'templates': dict((name, versions) for name, versions in templates.items() if versions),
    }
