# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the live-network tests (test_vnet.py, test_vnet_ve.py).

``vnet(func, *args, netns_pid=None, **kwargs)``
    Calls ``_vnet.<func>`` with Debian's python3 (the Python modules run with; it has pyroute2),
    optionally from inside the network namespace of ``netns_pid`` (``nsenter --net``). Returns
    ``{"result": ...}`` or ``{"error": message, "type": class name}`` for a ``VzError``.
``netns_view(pid)``
    Addresses and routes of the namespace of ``pid``, read with pyroute2's ``NetNS`` (a proxy
    process inside the namespace): a cross-check by another mechanism than the one under test.
``Sleeper()``
    A process in a new, empty network namespace (``unshare --net``); ``.pid``, ``.ns(*argv)``
    runs argv inside, ``.kill()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from vzlib import sh

HOST_PYTHON = "/usr/bin/python3"
COLLECTIONS = str(Path(__file__).resolve().parents[2] / ".build" / "collections")

_CALL = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.osvirt.vz.plugins.module_utils import _vnet
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
args, kwargs = json.loads(sys.argv[3])
try:
    print(json.dumps({"result": getattr(_vnet, sys.argv[2])(*args, **kwargs)}))
except VzError as exc:
    print(json.dumps({"error": str(exc), "type": type(exc).__name__}))
"""

_VIEW = r"""
import json, socket, sys
from pyroute2 import NetNS
ns = NetNS(sys.argv[1], flags=0)
try:
    names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ns.get_links()}
    addrs = []
    for a in ns.get_addr():
        flags = a.get_attr("IFA_FLAGS")
        addrs.append({"dev": names.get(a["index"]), "cidr": "%s/%d" % (a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"), a["prefixlen"]),
                      "brd": a.get_attr("IFA_BROADCAST"), "scope": a["scope"],
                      "flags": a["flags"] if flags is None else flags})
    routes = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ns.get_routes(family=family, table=254):
            routes.append({"family": family, "dst": "%s/%d" % (r.get_attr("RTA_DST") or "default", r["dst_len"]),
                           "gateway": r.get_attr("RTA_GATEWAY"), "dev": names.get(r.get_attr("RTA_OIF")),
                           "flags": r["flags"]})
    print(json.dumps({"addrs": addrs, "routes": routes}))
finally:
    ns.close()
"""


def vnet(func, *args, netns_pid=None, **kwargs):
    """``_vnet.<func>(*args, **kwargs)`` under Debian's python3, in the netns of ``netns_pid``."""
    argv = ["nsenter", "--net=/proc/%d/ns/net" % netns_pid] if netns_pid else []
    argv += [HOST_PYTHON, "-c", _CALL, COLLECTIONS, func, json.dumps([args, kwargs])]
    return json.loads(sh(*argv, timeout=120).stdout)


def netns_view(pid):
    """{"addrs": [...], "routes": [...]} of the namespace of ``pid`` (pyroute2 NetNS)."""
    return json.loads(sh(HOST_PYTHON, "-c", _VIEW, "/proc/%d/ns/net" % pid, timeout=120).stdout)


def addresses(view, dev):
    """CIDRs on ``dev`` without the kernel's IPv6 link-local one."""
    return sorted(a["cidr"] for a in view["addrs"] if a["dev"] == dev and not a["cidr"].startswith("fe80:"))


def defaults(view, dev):
    """[(gateway, flags)] of the default routes through ``dev``."""
    return sorted((r["gateway"], r["flags"]) for r in view["routes"] if r["dev"] == dev and r["dst"].startswith("default/"))


class Sleeper:
    """A ``sleep`` in a new network namespace of its own (the "VE" or the "host" of a test)."""

    def __init__(self, seconds=600):
        self.proc = subprocess.Popen(["unshare", "--net", "sleep", str(seconds)], stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        own = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 20
        # unshare(2) runs after the fork: until then the pid is still in our namespace
        while os.readlink("/proc/%d/ns/net" % self.pid) == own:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError("unshare --net did not give pid %d a namespace of its own" % self.pid)
            time.sleep(0.01)

    def ns(self, *argv, check=True):
        """Run argv inside this namespace."""
        return sh("nsenter", "--net=/proc/%d/ns/net" % self.pid, *argv, check=check)

    def kill(self):
        """End the sleeper; its namespace and the links in it go with it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
