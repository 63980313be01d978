# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""A long-lived process that runs the VE manager in-process, round after round, and reports its
own open file descriptors after each round: what a module (or a caller that keeps the manager,
such as a daemon or a test) leaks per operation shows up here as a growing count.

Run with the host's Python (pyroute2, lxc): ``python3 ve_fds.py <collections path> <spec json>``.
The spec: {"vz_root", "cgroup_parent", "names", "network", "limits", "change"}. One line on stdin
starts one round (create + start with limits, attach, change limits, remove); each round answers
with one JSON line: {"fds": n, "targets": {...}, "errors": [...]}. EOF ends the process.
"""

import gc
import json
import os
import sys
from collections import Counter

sys.path.insert(0, sys.argv[1])

# pylint: disable=wrong-import-position
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._module import client_for  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager  # noqa: E402


def open_fds():
    """{kind of target: count} of this process's descriptors ('socket', 'pipe', a path, ...)."""
    kinds = Counter()
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/%s' % fd)
        except OSError:
            continue   # the descriptor listdir itself used
        kinds[target.split(':[')[0] if ':[' in target else target] += 1
    return dict(kinds)


def one_round(spec):
    errors = []

    def ensure(items, **kw):
        host = Host(vz_root=spec['vz_root'], cgroup_parent=spec['cgroup_parent'])
        manager = VeManager(host, client_for(host), **kw)
        try:
            results = manager.ensure(items)
        except VzError as exc:
            errors.append(exc.message)
            return manager
        errors.extend('%s: %s' % (r['ve']['name'], r['error']) for r in results if r['error'])
        return manager

    base = {'template': 'busybox', 'network': spec['network']}
    manager = ensure([dict(base, name=n, state='started', limits=spec['limits']) for n in spec['names']])
    for name in spec['names']:
        try:
            out = manager.client.attach(name, ['sh', '-c', 'echo abc'])
            if 'abc' not in str(out):
                errors.append('%s: attach said %r' % (name, out))
        except VzError as exc:
            errors.append('%s: attach: %s' % (name, exc.message))
    ensure([dict(base, name=n, state='started', limits=spec['change']) for n in spec['names']])
    ensure([{'name': n, 'state': 'absent'} for n in spec['names']])
    return errors


def main():
    spec = json.loads(sys.argv[2])
    for _line in sys.stdin:
        errors = one_round(spec)
        gc.collect()   # what is only garbage is no leak
        targets = open_fds()
        print(json.dumps({'fds': sum(targets.values()), 'targets': targets, 'errors': errors}), flush=True)


if __name__ == '__main__':
    main()
