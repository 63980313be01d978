# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Cost of live network changes inside a VE (plugins/module_utils/_vnet.py), side by side with
the raw commands an operator would type (``nsenter --net=/proc/<pid>/ns/net ip addr add ...``).

Run as root with Debian's python3 (it has pyroute2):

    /usr/bin/python3 bench/vnet_cost.py [--n 200]

A "VE" is a network namespace behind a veth (``unshare --net sleep``), as LXC makes them; the
script runs in a namespace of its own as the "host" (it re-executes itself under
``unshare --net``), so the machine's namespace is not touched. Addresses: 10.99.7.0/24 and fd99:7::/64, inside that
namespace only. Printed: milliseconds per operation (median of --n, IPv6 DAD of --n/20).
"""

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

T0 = time.perf_counter()
from ansible_collections.osvirt.vz.plugins.module_utils import _vnet  # noqa: E402  pylint: disable=wrong-import-position
IMPORT_MS = (time.perf_counter() - T0) * 1000

from pyroute2 import NetNS  # noqa: E402  pylint: disable=wrong-import-position


def timed(func, n):
    """Median milliseconds of ``func()`` over ``n`` runs."""
    samples = []
    for _run in range(n):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main():
    if os.environ.get("VNET_BENCH_INNER") != "1":
        # Run in a network namespace of our own: the "host" side of the veth never shows up in
        # the machine's namespace.
        os.environ["VNET_BENCH_INNER"] = "1"
        os.execvp("unshare", ["unshare", "--net", sys.executable] + sys.argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    sleeper = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    pid = sleeper.pid
    own = os.readlink("/proc/self/ns/net")
    while os.readlink("/proc/%d/ns/net" % pid) == own:
        time.sleep(0.01)
    host_link = "vzb" + secrets.token_hex(4)
    ns = ["nsenter", "--net=/proc/%d/ns/net" % pid]
    try:
        subprocess.run(["ip", "link", "add", "name", host_link, "type", "veth", "peer", "name", "eth0",
                        "netns", str(pid)], check=True)
        subprocess.run(["ip", "link", "set", host_link, "up"], check=True)
        subprocess.run(ns + ["ip", "link", "set", "eth0", "up"], check=True)
        rows = []

        def raw_pair():
            subprocess.run(ns + ["ip", "addr", "add", "10.99.7.9/24", "brd", "+", "dev", "eth0"], check=True)
            subprocess.run(ns + ["ip", "addr", "del", "10.99.7.9/24", "dev", "eth0"], check=True)

        def ours_pair():
            _vnet.apply_addresses(pid, "eth0", add=["10.99.7.9/24"])
            _vnet.apply_addresses(pid, "eth0", remove=["10.99.7.9/24"])

        def socket_only():
            _vnet._ve_socket(pid).close()  # pylint: disable=protected-access

        def netns_only():
            sock = NetNS("/proc/%d/ns/net" % pid, flags=0)
            sock.get_links()
            sock.close()

        def v6_add_remove(wait):
            def run():
                _vnet.apply_addresses(pid, "eth0", add=["fd99:7::9/64"], dad_wait=wait)
                _vnet.apply_addresses(pid, "eth0", remove=["fd99:7::9/64"])
            return run

        n = args.n
        rows.append(("import _vnet (loads pyroute2)", IMPORT_MS, "once per module run"))
        rows.append(("socket in the VE (setns, IPRoute, setns back)", timed(socket_only, n), "_vnet"))
        rows.append(("pyroute2 NetNS: open, link dump, close", timed(netns_only, max(n // 10, 5)),
                     "fork of a proxy process"))
        rows.append(("ve_interfaces(pid)", timed(lambda: _vnet.ve_interfaces(pid), n), "one socket"))
        rows.append(("link_stats(host_link)", timed(lambda: _vnet.link_stats(host_link), n), "one socket"))
        rows.append(("apply_addresses no-op (address present)",
                     timed(lambda: _vnet.apply_addresses(pid, "eth0", add=["10.99.7.2/24"]), 1) and
                     timed(lambda: _vnet.apply_addresses(pid, "eth0", add=["10.99.7.2/24"]), n), "read only"))
        rows.append(("IPv4 add + remove, _vnet", timed(ours_pair, n), "2 calls"))
        rows.append(("IPv4 add + remove, nsenter ip addr (anchor)", timed(raw_pair, max(n // 4, 5)),
                     "2 fork+exec"))
        rows.append(("IPv6 add (waits for DAD) + remove", timed(v6_add_remove(_vnet.DAD_WAIT_SECONDS),
                                                                max(n // 20, 3)), "kernel DAD"))
        rows.append(("IPv6 add (dad_wait=0) + remove", timed(v6_add_remove(0), n), "returns tentative"))
        width = max(len(r[0]) for r in rows)
        print("%-*s  %9s  %s" % (width, "operation", "ms", "note"))
        for what, ms, note in rows:
            print("%-*s  %9.3f  %s" % (width, what, ms, note))
        fds = len(os.listdir("/proc/self/fd"))
        print("open file descriptors of this process after all runs: %d (no socket leaks)" % fds)
    finally:
        subprocess.run(["ip", "link", "del", host_link], check=False)
        sleeper.kill()
        sleeper.wait()


if __name__ == "__main__":
    main()
