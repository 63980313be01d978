# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers shared by the tests of the connection and inventory plugins (not a test module).

Python inside a busybox VE
--------------------------
Ansible modules need a Python inside the VE. The busybox template has none, so THESE TESTS
ONLY give a busybox VE the host's Python through read-only bind mounts (``PYTHON_MOUNTS``,
the ve module's ``mounts`` option): ``/usr`` on ``/usr``, plus ``/usr/lib`` on ``/lib`` and
``/usr/lib64`` on ``/lib64`` because on this merged-/usr Debian the dynamic loader is reached as
``/lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/...``. That is a test device, not how
VEs get Python in production (a debian-12 template has its own).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from vzlib import sh

PYTHON_MOUNTS = [
    {"source": "/usr", "target": "/usr", "readonly": True},
    {"source": "/usr/lib", "target": "/lib", "readonly": True},
    {"source": "/usr/lib64", "target": "/lib64", "readonly": True},
]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"


def inventory_hostvars(inventory):
    """hostvars of every host of an inventory file, as ansible-inventory sees them."""
    out = sh(REPO_ROOT / ".venv" / "bin" / "ansible-inventory", "-i", inventory, "--list",
             env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH))).stdout
    return json.loads(out)["_meta"]["hostvars"]


def lab_connection_vars(hostvars):
    """The connection plugin's variables for a VE on a lab host with these hostvars."""
    return {
        "ansible_vz_host": hostvars["ansible_host"],
        "ansible_vz_host_user": hostvars.get("ansible_user", "root"),
        "ansible_vz_host_private_key_file": hostvars["ansible_ssh_private_key_file"],
        "ansible_vz_host_ssh_common_args": hostvars.get("ansible_ssh_common_args", ""),
    }


# Runs the connection plugin through Ansible's real plugin loader, outside a playbook, so a test
# can call put_file / fetch_file / exec_command directly and see the exceptions they raise.
DRIVER = r'''
import base64, json, sys, traceback
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader, init_plugin_loader
init_plugin_loader([sys.argv[1]])
variables, ops = json.loads(sys.argv[2]), json.loads(sys.argv[3])
conn = connection_loader.get('osvirt.vz.ve', PlayContext(), task_uuid='t', ansible_playbook_pid='1')
conn.set_options(var_options=variables)
results = []
for op in ops:
    try:
        if op[0] == 'exec':
            rc, out, err = conn.exec_command(op[1], in_data=op[2].encode() if len(op) > 2 else None)
            results.append({'rc': rc, 'stdout': base64.b64encode(out).decode(), 'stderr': err.decode('utf-8', 'replace')})
        elif op[0] == 'put':
            conn._connect(); conn.put_file(op[1], op[2]); results.append({'ok': True})
        elif op[0] == 'fetch':
            conn._connect(); conn.fetch_file(op[1], op[2]); results.append({'ok': True})
    except Exception as exc:
        results.append({'error': type(exc).__name__, 'msg': str(exc)})
conn.close()
print(json.dumps(results))
'''


def drive(variables, ops, timeout=600):
    """Run connection-plugin operations (``['exec', cmd]``, ``['put', local, remote]``,
    ``['fetch', remote, local]``) for the VE that ``variables`` describe; one result dict each."""
    import base64
    proc = subprocess.run([str(VENV_PYTHON), "-c", DRIVER, str(COLLECTIONS_PATH), json.dumps(variables),
                           json.dumps(ops)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False,
                          env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_PATH)))
    assert proc.returncode == 0, "driver failed:\n%s\n%s" % (proc.stdout, proc.stderr)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for result in results:
        if "stdout" in result:
            result["stdout"] = base64.b64decode(result["stdout"])
    return results
