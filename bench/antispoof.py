# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the anti-spoofing filter (plugins/module_utils/_antispoof.py) costs a VE's traffic.

Run as root with Debian's python3:

    /usr/bin/python3 bench/antispoof.py [--seconds 3] [--rounds 3]

A "VE" is a network namespace behind a veth whose host side sits on a bridge in a "host"
namespace, both made here (random names, 10.99.250.0/24 inside them only) and removed at the
end. From the VE to the host, three measures, each without and with the filter on the VE's
link (alternating, --rounds times, best of each kept): small UDP datagrams per second (18-byte
payload: the per-packet cost shows here), TCP goodput (64 KiB writes), and the echo round trip
of a UDP ping-pong (median of 2000). The filter is the one a VE with one IPv4 and one IPv6
address gets, then one with 64 addresses of each (sets are hashed: should cost the same).
"""

import argparse
import json
import os
import secrets
import subprocess
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "plugins", "module_utils"))

import _antispoof  # noqa: E402  pylint: disable=wrong-import-position

HOST_PYTHON = "/usr/bin/python3"
NET = "10.99.250"
SERVER = r"""
import socket, sys, time
kind, seconds = sys.argv[1], float(sys.argv[2])
if kind == "tcp":
    srv = socket.socket(); srv.bind(("%s.1", 5201)); srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept(); conn.settimeout(seconds + 5)
    total = 0
    while True:
        data = conn.recv(1 << 18)
        if not data:
            break
        total += len(data)
    print(total)
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.bind(("%s.1", 5201))
    sock.settimeout(2)
    print("ready", flush=True)
    count = 0
    try:
        while True:
            data, peer = sock.recvfrom(2048)
            if kind == "echo":
                sock.sendto(data, peer)
            count += 1
    except socket.timeout:
        pass
    print(count)
""" % (NET, NET)
CLIENT = r"""
import socket, statistics, sys, time
kind, seconds = sys.argv[1], float(sys.argv[2])
if kind == "tcp":
    conn = socket.create_connection(("%s.1", 5201))
    block, end, sent = bytes(1 << 16), time.monotonic() + seconds, 0
    start = time.monotonic()
    while time.monotonic() < end:
        conn.sendall(block); sent += len(block)
    conn.close()
    print(sent * 8 / (time.monotonic() - start))
elif kind == "udp":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("%s.1", 5201))
    end, sent, start = time.monotonic() + seconds, 0, time.monotonic()
    while time.monotonic() < end:
        for _ in range(100):
            try:
                sock.send(b"x" * 18); sent += 1
            except OSError:
                pass
    print(sent / (time.monotonic() - start))
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("%s.1", 5201)); sock.settimeout(1)
    rtts = []
    for _ in range(2000):
        t = time.perf_counter(); sock.send(b"ping")
        try:
            sock.recv(64); rtts.append(time.perf_counter() - t)
        except socket.timeout:
            pass
    print(statistics.median(rtts) * 1e6)
""" % (NET, NET, NET)


def sh(*argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, check=kwargs.pop("check", True), **kwargs)


class Bench:
    def __init__(self):
        tag = secrets.token_hex(3)
        self.host, self.ve = "vzasb-h-" + tag, "vzasb-v-" + tag
        self.link, self.bridge = "vz%sb0" % tag, "vzasbbr" + tag
        self.mac = "02:98:%s:%s:%s:01" % (tag[0:2], tag[2:4], tag[4:6])

    def ns(self, ns, *argv):
        return sh("ip", "netns", "exec", ns, *argv)

    def up(self):
        sh("ip", "netns", "add", self.host)
        sh("ip", "netns", "add", self.ve)
        self.ns(self.host, "ip", "link", "set", "lo", "up")
        self.ns(self.host, "ip", "link", "add", self.bridge, "type", "bridge")
        self.ns(self.host, "ip", "addr", "add", NET + ".1/24", "dev", self.bridge)
        self.ns(self.host, "ip", "link", "set", self.bridge, "up")
        self.ns(self.host, "ip", "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.ve)
        self.ns(self.host, "ip", "link", "set", self.link, "master", self.bridge, "up")
        self.ns(self.ve, "ip", "link", "set", "eth0", "address", self.mac)
        self.ns(self.ve, "ip", "addr", "add", NET + ".2/24", "dev", "eth0")
        self.ns(self.ve, "ip", "link", "set", "eth0", "up")
        self.ns(self.ve, "ip", "link", "set", "lo", "up")

    def down(self):
        sh("ip", "netns", "del", self.ve, check=False)
        sh("ip", "netns", "del", self.host, check=False)

    def guard(self, addresses):
        """Apply the filter (1 or many addresses of each family) in the host namespace, or remove it."""
        code = ("import json, sys; sys.path.insert(0, %r); import _antispoof as a; args = json.loads(sys.argv[1]); "
                "print(a.remove_filter(args[0]) if len(args) == 1 else a.ensure_filter(*args))"
                % os.path.dirname(_antispoof.__file__))
        if addresses:
            ipv4 = [NET + ".2/24"] + ["10.99.251.%d/24" % i for i in range(1, addresses)]
            ipv6 = ["fd00:98::%x/64" % i for i in range(2, addresses + 2)]
            args = [self.link, self.mac, ipv4, ipv6]
        else:
            args = [self.link]
        self.ns(self.host, HOST_PYTHON, "-c", code, json.dumps(args))

    def measure(self, kind, seconds):
        server = subprocess.Popen(["ip", "netns", "exec", self.host, HOST_PYTHON, "-c", SERVER, kind, str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            server.stdout.readline()
            out = self.ns(self.ve, HOST_PYTHON, "-c", CLIENT, kind, str(seconds)).stdout
            server.communicate(timeout=seconds + 30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        return float(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    bench = Bench()
    variants = [("no filter", 0), ("filter, 1+1 addresses", 1), ("filter, 64+64 addresses", 64)]
    results = {name: {"udp": [], "tcp": [], "echo": []} for name, _n in variants}
    try:
        bench.up()
        for _round in range(args.rounds):
            for name, addresses in variants:
                bench.guard(addresses)
                for kind in ("udp", "tcp", "echo"):
                    results[name][kind].append(bench.measure(kind, args.seconds))
        bench.guard(0)
    finally:
        bench.down()
    print("kernel %s, %d CPUs (shared), %d rounds of %.0f s; each cell: best / worst round"
          % (os.uname().release, os.cpu_count(), args.rounds, args.seconds))
    print("%-26s %20s %18s %22s" % ("", "UDP 18 B pkt/s", "TCP Mbit/s", "UDP echo RTT us (med)"))
    for name, _n in variants:
        res = results[name]
        print("%-26s %10.0f /%8.0f %9.0f /%7.0f %12.1f /%8.1f" % (
            name, max(res["udp"]), min(res["udp"]), max(res["tcp"]) / 1e6, min(res["tcp"]) / 1e6,
            min(res["echo"]), max(res["echo"])))
    base = min(results["no filter"]["echo"])
    print("round trip added by the filter (best rounds): %s; issue anchor: none for cost (the filter "
          "must only stop spoofing: tests/integration/test_antispoof.py)"
          % ", ".join("%s %+.1f us" % (name, min(results[name]["echo"]) - base) for name, _n in variants[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
