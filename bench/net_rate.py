# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Accuracy of VE network rates (plugins/module_utils/_shaping.py), side by side with the issue's
anchor: "net rate measured within 15% between a VE and its host".

Run as root with Debian's python3 (it has pyroute2):

    /usr/bin/python3 bench/net_rate.py [--rates 8,32,100,400,1000] [--seconds 3]
                                       [--capacity 24 --pair 4,12]

A "VE" here is a network namespace behind a veth, as LXC makes them; its host side is shaped
exactly as a VE's. Everything lives in namespaces this script makes (a host namespace with its
own shaping tree, so the machine's tree is not touched) and is removed at the end. Addresses:
10.99.1.0/24 and 10.99.2.0/24, inside those namespaces only. Each rate sends for --seconds (at
1 Gbit/s and 3 s: about 375 MB through memory).

Printed per rate: goodput (TCP payload at the receiver, after 1/4 of the time to settle) and its
ratio to the rate, and the frame ratio: HTB charges whole Ethernet frames (1514 bytes for a
1448-byte segment), so the best goodput is 95.6% of the rate. Then two VEs competing for a
small capacity: each must get at least its rate.
"""

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "plugins", "module_utils"))

import _shaping  # noqa: E402  pylint: disable=wrong-import-position

ANCHOR = 0.15
FRAME = 1514 / 1448
RECEIVER = r"""
import json, socket, sys, time
srv = socket.socket()
srv.bind((sys.argv[1], 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(5)
end, total, samples = time.monotonic() + float(sys.argv[2]), 0, []
while time.monotonic() < end:
    try:
        data = conn.recv(1 << 20)
    except socket.timeout:
        break
    if not data:
        break
    total += len(data)
    samples.append((time.monotonic(), total))
print(json.dumps(samples), flush=True)
"""
SENDER = r"""
import socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block, end = bytes(1 << 16), time.monotonic() + float(sys.argv[3])
try:
    while time.monotonic() < end:
        conn.sendall(block)
except OSError:
    pass
"""


def sh(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True)


class Lab:
    """A host namespace and two VE namespaces, each VE behind a veth whose host side is shaped."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.host = "vzbench-h-" + tag
        self.ves = {"a": ("vzbench-a-" + tag, "vz%s0a0" % tag, "10.99.1"),
                    "b": ("vzbench-b-" + tag, "vz%s0b0" % tag, "10.99.2")}

    def __enter__(self):
        sh("ip", "netns", "add", self.host)
        self.in_host("ip", "link", "set", "lo", "up")
        for namespace, link, net in self.ves.values():
            sh("ip", "netns", "add", namespace)
            self.in_host("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self.in_host("ip", "addr", "add", net + ".1/24", "dev", link)
            self.in_host("ip", "link", "set", link, "up")
            sh("ip", "netns", "exec", namespace, "ip", "addr", "add", net + ".2/24", "dev", "eth0")
            sh("ip", "netns", "exec", namespace, "ip", "link", "set", "eth0", "up")
        return self

    def __exit__(self, *exc):
        for namespace in [self.host] + [v[0] for v in self.ves.values()]:
            subprocess.run(["ip", "netns", "del", namespace], check=False)

    def in_host(self, *argv):
        return sh("ip", "netns", "exec", self.host, *argv)

    def shaping(self, func, *args):
        """A function of _shaping.py run inside the host namespace (its IPRoute works there)."""
        code = ("import json, sys; sys.path.insert(0, %r); import _shaping; "
                "print(json.dumps(_shaping.%s(*json.loads(sys.argv[1]))))" % (os.path.dirname(_shaping.__file__), func))
        return json.loads(self.in_host(sys.executable, "-c", code, json.dumps(list(args))).stdout)

    def send(self, ves, seconds):
        """Goodput (bits/s) of each VE of ``ves`` sending at the same time for ``seconds``."""
        receivers, senders, result = {}, [], {}
        try:
            for ve in ves:
                net = self.ves[ve][2]
                receivers[ve] = subprocess.Popen(["ip", "netns", "exec", self.host, sys.executable, "-c", RECEIVER,
                                                  net + ".1", str(seconds + 3)], stdout=subprocess.PIPE, text=True)
            for ve in ves:
                namespace, _link, net = self.ves[ve]
                port = receivers[ve].stdout.readline().strip()
                senders.append(subprocess.Popen(["ip", "netns", "exec", namespace, sys.executable, "-c", SENDER,
                                                 net + ".1", port, str(seconds)]))
            start = time.monotonic()
            time.sleep(seconds)
            window = (start + seconds / 4, time.monotonic() - 0.2)
            for ve in ves:
                samples = json.loads(receivers[ve].communicate(timeout=30)[0].strip().splitlines()[-1])
                inside = [s for s in samples if window[0] <= s[0] <= window[1]]
                result[ve] = ((inside[-1][1] - inside[0][1]) * 8 / (inside[-1][0] - inside[0][0])
                              if len(inside) > 1 else 0.0)
        finally:
            for proc in senders + list(receivers.values()):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rates", default="8,32,100,400,1000", help="Mbit/s, comma separated")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--capacity", type=int, default=24, help="Mbit/s of the host in the pair test")
    parser.add_argument("--pair", default="4,12", help="rates of VE a and b in Mbit/s (ceil = capacity)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/net_rate.py needs root (namespaces, tc)")
    mbit = 10 ** 6
    worst = 0.0
    with Lab() as lab:
        link = lab.ves["a"][1]
        print("net rate, one VE -> its host (anchor: measured within %d%% of the rate)" % (ANCHOR * 100))
        print("  %-10s %14s %9s %9s" % ("requested", "goodput", "goodput/r", "frames/r"))
        for rate in [int(r) * mbit for r in args.rates.split(",")]:
            lab.shaping("apply_shaping", link, rate, None)
            got = lab.send(["a"], args.seconds)["a"]
            worst = max(worst, abs(got / rate - 1))
            print("  %-10s %14.0f %9.3f %9.3f" % (_shaping.format_bps(rate), got, got / rate, got * FRAME / rate))
        lab.shaping("clear_shaping", link)
        print("  %-10s %14.0f" % ("unshaped", lab.send(["a"], 1.0)["a"]))

        rate_a, rate_b = (int(r) * mbit for r in args.pair.split(","))
        capacity = args.capacity * mbit
        lab.shaping("apply_shaping", lab.ves["a"][1], rate_a, capacity, capacity)
        lab.shaping("apply_shaping", lab.ves["b"][1], rate_b, capacity)
        alone = lab.send(["a"], args.seconds)
        both = lab.send(["a", "b"], args.seconds)
        print("two VEs, host capacity %s, ceil = capacity (anchor: each gets at least its rate)" %
              _shaping.format_bps(capacity))
        print("  a alone: %.0f (%.3f of capacity)" % (alone["a"], alone["a"] / capacity))
        print("  together: a %.0f (rate %s, %.3f)  b %.0f (rate %s, %.3f)  sum %.0f (%.3f of capacity)" % (
            both["a"], _shaping.format_bps(rate_a), both["a"] / rate_a, both["b"], _shaping.format_bps(rate_b),
            both["b"] / rate_b, both["a"] + both["b"], (both["a"] + both["b"]) / capacity))
    verdict = "met" if worst <= ANCHOR else "NOT met"
    print("worst single-VE deviation %.1f%% (anchor %d%%): %s" % (worst * 100, ANCHOR * 100, verdict))


if __name__ == "__main__":
    main()
