# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every osvirt.vz module shares: host options, the host object, error reporting.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations

import traceback

from ._engine.client import LxcClient
from ._errors import VzError
from ._host import DEFAULT_VZ_ROOT, Host

HOST_ARGS = {
    'vz_root': {'type': 'str', 'default': DEFAULT_VZ_ROOT},
    'cgroup_parent': {'type': 'str'},
}


def host_from(module):
    """The Host that the module's vz_root / cgroup_parent options describe."""
    return Host(vz_root=module.params['vz_root'], cgroup_parent=module.params.get('cgroup_parent'))


def client_for(host):
    return LxcClient(host.ves_dir)


def run(module, job):
    """Run ``job()`` and turn a VzError into one clear failure; anything else keeps its traceback."""
    try:
        job()
    except VzError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    except OSError as exc:  # the host's file system said no (full disk, read-only, permissions)
        module.fail_json(msg='host file system error: %s%s' % (exc.strerror or exc,
                                                               (' (%s)' % exc.filename) if exc.filename else ''))
    except Exception as exc:  # an unexpected bug: say what happened, keep the trace for the report
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
