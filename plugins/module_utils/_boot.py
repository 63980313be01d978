# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Waiting until a started VE's init reports that the system is up.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

``lxc-start`` returns when the VE's init runs, long before its services do. ``wait_booted`` asks
the init, where it can tell: systemd answers ``systemctl is-system-running`` with
``initializing`` / ``starting`` while it boots and ``running`` or ``degraded`` (some unit failed)
when it is done. It is polled (one short ``lxc-attach`` a second) rather than asked with
``--wait``, so a VE that never finishes cannot hold the task longer than the timeout. An init
that cannot tell (busybox) counts as up when LXC reports the VE running.
"""

from __future__ import annotations

import time

WAIT_FOR = ('running', 'booted')
BOOTING = ('initializing', 'starting')
DONE = ('running', 'degraded')


def failed_units(client, name):
    """Names of the VE's failed systemd units (``systemctl --failed``); [] when it cannot tell."""
    rc, out, _err = client.attach(name, ['systemctl', '--failed', '--no-legend', '--plain', '--full'], check=False)
    if rc != 0:
        return []
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def wait_booted(client, name, init_system, timeout, poll=1.0, clock=time.monotonic, sleep=time.sleep):
    """Wait up to ``timeout`` seconds for the VE's init to finish booting.

    Returns ``{'state', 'failed_units', 'seconds', 'timed_out', 'method'}``: ``state`` is systemd's
    word (``running``, ``degraded``, ``starting``, ...) or ``running`` for an init that cannot tell.
    """
    started = clock()
    if init_system != 'systemd':
        return {'state': 'running', 'failed_units': [], 'seconds': 0.0, 'timed_out': False, 'method': 'lxc'}
    state = 'unknown'
    while True:
        rc, out, _err = client.attach(name, ['systemctl', 'is-system-running'], check=False)
        # rc is non-zero for every state but running; the word on stdout is what counts
        word = (out or '').strip().splitlines()[-1:] or ['']
        state = word[0] or ('unknown' if rc != 0 else state)
        if state not in BOOTING and state not in ('unknown', 'offline'):
            break
        if clock() - started >= timeout:
            break
        sleep(poll)
    timed_out = state in BOOTING or state in ('unknown', 'offline')
    return {'state': state, 'failed_units': failed_units(client, name) if state != 'running' else [],
            'seconds': round(clock() - started, 1), 'timed_out': timed_out, 'method': 'systemctl'}


def boot_error(name, boot, wait_for, timeout):
    """The message of a VE that did not come up as ``wait_for`` asks, or None."""
    units = ', '.join(boot['failed_units']) or 'none'
    if boot['timed_out']:
        return ('VE %s did not finish booting within %ss (systemd says %s; failed units: %s)'
                % (name, timeout, boot['state'], units))
    if boot['state'] == 'running' or (wait_for == 'booted' and boot['state'] == 'degraded'):
        return None
    return 'VE %s booted %s, not running (failed units: %s)' % (name, boot['state'], units)
