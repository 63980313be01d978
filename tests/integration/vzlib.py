# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Plain helpers shared by the integration tests (fixtures live in conftest.py).

Importable as ``vzlib`` from the test modules and from conftest.py: pytest puts
tests/integration on sys.path (no ``__init__.py`` here, default ``prepend`` import mode).

``play(tasks, hosts="localhost")``
    One play (as Python data for ``run_playbook``) running ``tasks`` on ``hosts``.
``sh(*argv, check=True, timeout=120)``
    Runs argv (never a shell string) with no stdin; returns the CompletedProcess, text output.
``ping(address, attempts=5)``
    True when ``address`` answers one echo request (busybox ping, 2 s per attempt).
``remove_cgroups(parent)``
    rmdir the empty cgroup dirs of a test's cgroup parent (and ``<parent>.monitor``).
``kill_all(lxcpath)``
    lxc-stop -k every active container under ``lxcpath``.
``new_cgroup_parent()``
    A fresh random cgroup parent name (``vzt-<hex>``) for one test.
``host_role_sysctls()`` / ``restore_sysctls(saved)``
    The current values of every sysctl the host role may raise (those this host has), and
    putting them back: they are machine-wide, so a test that runs the role restores them.
``VeStore(root, parent, version, prefix, run)``
    One test's VE store (vz_root, cgroup parent, template version, VE name prefix, playbook
    runner) with the task builders and lxc queries the VE tests share; they subclass it.
"""

import os
import secrets
import subprocess
import time
from pathlib import Path


def play(tasks, hosts="localhost"):
    """One play without fact gathering that runs ``tasks`` on ``hosts``."""
    return [{"hosts": hosts, "gather_facts": False, "tasks": tasks}]


def sh(*argv, check=True, timeout=120, **kwargs):
    """Run ``argv`` with captured text output and no stdin; raise on rc != 0 when ``check``."""
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def ping(address, attempts=5):
    """One echo request answered within 2 s, trying up to ``attempts`` times (a VE that has
    just started may still be announcing itself on the bridge)."""
    for _attempt in range(attempts):
        if sh("busybox", "ping", "-c1", "-W2", address, check=False).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def new_cgroup_parent():
    """A cgroup parent name of one test, so tests never share cgroups."""
    return "vzt-" + secrets.token_hex(3)


def remove_cgroups(parent):
    """rmdir the (empty) cgroup dirs of ``parent`` and ``parent.monitor`` in every hierarchy."""
    for mount in Path("/sys/fs/cgroup").iterdir():
        for top in (mount / parent, mount / (parent + ".monitor")):
            if top.is_dir():
                for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    try:
                        os.rmdir(current)
                    except OSError:
                        pass


def kill_all(lxcpath):
    """Stop (kill) every active container under ``lxcpath``; nothing when it does not exist."""
    if not Path(lxcpath).is_dir():
        return
    names = sh("lxc-ls", "-1", "-P", str(lxcpath), "--active", check=False).stdout.split()
    for name in names:
        sh("lxc-stop", "-k", "-P", str(lxcpath), "-n", name, check=False)


class VeStore:
    """One test's VE store: a vz_root with the template, its own cgroup parent and name prefix,
    and ``run`` (the ``run_playbook`` fixture or a PlaybookRunner)."""

    def __init__(self, root, parent, version, prefix, run):
        self.root, self.parent, self.version, self.prefix, self.run = root, parent, version, prefix, run

    @property
    def ves(self) -> Path:
        return self.root / "ves"

    def name(self, short):
        """A VE name of this test (the random prefix keeps veth names apart)."""
        return "%s-%s" % (self.prefix, short)

    def ve(self, **options):
        """The options of one osvirt.vz.ve task in this store."""
        return dict({"vz_root": str(self.root), "cgroup_parent": self.parent}, **options)

    def task(self, title, **options):
        """One osvirt.vz.ve task called ``title`` in this store."""
        return {"name": title, "osvirt.vz.ve": self.ve(**options)}

    def lxc_state(self, name):
        """lxc-info's state word of VE ``name`` (RUNNING, STOPPED, FROZEN), or ABSENT."""
        proc = sh("lxc-info", "-P", str(self.ves), "-n", name, "-sH", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"


def settle_cgroups(parent, name, timeout=20):
    """Wait until an aborted start's LXC monitor has left the VE's cgroups, then remove them (empty).

    lxc-start returns as soon as a start aborts, while the monitor still tears down; starting the VE
    again in that window fails with "Failed to create monitor cgroup". The VE manager waits the same
    way; tests that call lxc-start themselves use this.
    """
    tops = [mount / top / name for mount in Path("/sys/fs/cgroup").iterdir()
            for top in (parent, parent + ".monitor")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for top in tops:
            for current, _dirs, files in os.walk(top):
                if "cgroup.procs" in files and (Path(current) / "cgroup.procs").read_text().strip():
                    busy = True
        if not busy:
            break
        time.sleep(0.1)
    for top in tops:
        for current, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(current)
            except OSError:
                pass


def _sysctl_path(key):
    return Path("/proc/sys") / key.replace(".", "/")


def host_role_sysctls():
    """{key: value text} of the sysctls in roles/host/vars/main.yml that this host has."""
    import yaml  # pylint: disable=import-outside-toplevel
    spec = Path(__file__).resolve().parents[2] / "roles" / "host" / "vars" / "main.yml"
    keys = yaml.safe_load(spec.read_text())["host_sysctl_wanted"]
    return {key: _sysctl_path(key).read_text().strip() for key in keys if _sysctl_path(key).exists()}


def restore_sysctls(saved):
    """Write back what ``host_role_sysctls`` returned."""
    for key, value in saved.items():
        _sysctl_path(key).write_text(value + "\n")
