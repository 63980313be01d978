# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""A test client on the machine's side of the lab LAN (tests/lab/lab: bridge vzlan0 in the
network namespace vzlab-lan, 10.20.0.254/24 and fd00:20::fe/64), "in a third place" from the
lab hosts, for tests that move VEs between hosts.

- ``Pinger(address)``: ICMP echo (IPv4 or IPv6) every 100 ms; counts replies and lost ones,
  the longest run of lost replies and the longest time without a reply.
- ``TcpProbe(address, port)``: keeps one TCP connection to an echo server in the VE
  (``echo_server_argv(port)`` runs one), sends a numbered 8-byte message every 100 ms and
  reads it back; counts echoes, breaks (the connection failed or closed), reconnects, and the
  longest gap between two echoes.
- ``neighbour(address)``, ``fdb_port(mac)``, ``lan_exec(*argv)``: the LAN's view (its
  neighbour entry of an address, the vzlan0 port a MAC was learned on), and a command run in
  the LAN's namespace.

Both probes run in a thread of their own that enters the LAN's network namespace (``setns``
changes that thread only) and stops by itself after ``duration`` seconds or ``count`` probes,
whichever comes first (both bounded: at most ``MAX_DURATION`` s and ``MAX_COUNT`` probes);
``stop()`` ends them earlier. Use them as context managers::

    with Pinger("10.20.0.21", duration=30) as ping, TcpProbe("10.20.0.21", 7007, duration=30) as tcp:
        ...   # move the VE
    assert ping.result()["lost"] <= 3, ping.result()
    tcp.result()   # {"echoed", "breaks", "reconnects", "max_gap_s", ...}

They talk only to addresses of the lab LAN (10.20.0.0/24, fd00:20::/64); anything else is
refused before a packet is sent.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import threading
import time

LAN_NETNS = "vzlab-lan"
LAN_NETNS_PATH = "/run/netns/" + LAN_NETNS
LAN_BRIDGE = "vzlan0"
LAN_NETWORKS = (ipaddress.ip_network("10.20.0.0/24"), ipaddress.ip_network("fd00:20::/64"))
CLIENT4 = "10.20.0.254"
CLIENT6 = "fd00:20::fe"
MAX_DURATION = 300.0
MAX_COUNT = 3000
CLONE_NEWNET = 0x40000000

_LIBC = ctypes.CDLL(None, use_errno=True)


def lan_address(address):
    """``address`` as an ``ipaddress`` object if it lies on the lab LAN; ValueError otherwise."""
    ip = ipaddress.ip_address(str(address))
    if not any(ip in net for net in LAN_NETWORKS) or str(ip) in (CLIENT4, CLIENT6):
        raise ValueError("%s is not a VE address of the lab LAN (%s)" % (ip, ", ".join(map(str, LAN_NETWORKS))))
    return ip


def enter_lan():
    """Move the calling thread into the LAN's network namespace (for a thread of its own)."""
    fd = os.open(LAN_NETNS_PATH, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _LIBC.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "setns into %s: %s" % (LAN_NETNS_PATH, os.strerror(err)))
    finally:
        os.close(fd)


def lan_exec(*argv, check=True, timeout=30):
    """Run ``argv`` in the LAN's network namespace (nsenter); CompletedProcess with text output."""
    return subprocess.run(["nsenter", "--net=" + LAN_NETNS_PATH, "--"] + [str(a) for a in argv],
                          capture_output=True, text=True, check=check, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def neighbour(address):
    """The LAN side's neighbour entry of ``address`` on vzlan0: {"lladdr", "state"} or None."""
    ip = lan_address(address)
    out = lan_exec("ip", "-j", "-%d" % ip.version, "neigh", "show", "to", str(ip), "dev", LAN_BRIDGE).stdout
    for entry in json.loads(out or "[]"):
        if entry.get("dst") == str(ip):
            return {"lladdr": entry.get("lladdr"), "state": entry.get("state") or []}
    return None


def fdb_port(mac):
    """The port of vzlan0 (``labN``: the uplink of host labN) that learned ``mac``, or None."""
    out = lan_exec("bridge", "-j", "fdb", "show", "br", LAN_BRIDGE).stdout
    for entry in json.loads(out or "[]"):
        if entry.get("mac") == mac.lower() and "permanent" not in (entry.get("state") or ""):
            return entry.get("ifname")
    return None


def echo_server_argv(port):
    """Command (argv) that runs a persistent TCP echo server on ``port`` inside a busybox VE,
    e.g. after ``lxc-attach -P <ves> -n <ve> --``."""
    return ["busybox", "nc", "-ll", "-p", str(int(port)), "-e", "cat"]


class _Probe:
    """A bounded probe loop in a thread of its own inside the LAN's namespace."""

    def __init__(self, address, interval, count, duration):
        self.address = lan_address(address)
        if not 0.01 <= interval <= 10:
            raise ValueError("interval %r must be 0.01..10 s" % (interval,))
        self.interval = float(interval)
        self.count = min(int(count) if count else MAX_COUNT, MAX_COUNT)
        self.duration = min(float(duration), MAX_DURATION)
        self._stop = threading.Event()
        self._thread = None
        self._error = None
        self._lock = threading.Lock()
        self._started = self._ended = None
        self.timeout = 1.0

    def start(self):
        if not os.path.exists(LAN_NETNS_PATH):
            raise RuntimeError("the lab LAN (%s) does not exist: run `lab up`" % LAN_NETNS_PATH)
        self._thread = threading.Thread(target=self._main, name="lan-%s" % type(self).__name__, daemon=True)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self, timeout=None):
        """Ask the loop to end and wait for it (at most ``timeout`` s; by default long enough for
        the last probe's reply timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + self.timeout + 3.0 if timeout is None else timeout)
        return self.result()

    def wait(self):
        """Wait until the loop ends by itself (duration or count reached)."""
        if self._thread is not None:
            self._thread.join(self.duration + self.interval + self.timeout + 5.0)
        return self.result()

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _main(self):
        try:
            enter_lan()
            self._loop()
        except Exception as exc:  # pylint: disable=broad-except   # reported by result()
            self._error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            self._ended = time.monotonic()

    def _ticks(self, idle=None):
        """Yield probe numbers on the interval grid until count, duration or stop. Between
        probes ``idle(until)`` runs (default: sleep); slots missed by a slow probe are skipped."""
        start = time.monotonic()
        seq = 0
        while seq < self.count:
            due = start + seq * self.interval
            if due - start > self.duration or self._stop.is_set():
                return
            if due > time.monotonic():
                if idle is not None:
                    idle(due)
                elif self._stop.wait(due - time.monotonic()):
                    return
            if self._stop.is_set():
                return
            yield seq
            seq = max(seq + 1, int((time.monotonic() - start) / self.interval))

    def _elapsed(self):
        end = self._ended if self._ended is not None else time.monotonic()
        return round(end - self._started, 3) if self._started else 0.0


def _icmp_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff


class Pinger(_Probe):
    """ICMP echo to ``address`` every ``interval`` s; a reply later than ``timeout`` s is lost.

    ``result()``: {"address", "sent", "received", "lost", "max_lost_in_row", "max_silence_s"
    (longest time without a reply while probing), "rtt_max_ms", "elapsed_s", "error"}.
    """

    def __init__(self, address, interval=0.1, count=None, duration=30.0, timeout=1.0):
        super().__init__(address, interval, count, duration)
        self.timeout = float(timeout)
        self.ident = os.getpid() & 0xffff ^ (id(self) & 0xffff)
        self._sent = {}       # seq -> send time
        self._replies = {}    # seq -> rtt

    def _packet(self, seq):
        payload = struct.pack("!d", time.monotonic()) + b"osvirt-lan"
        if self.address.version == 4:
            header = struct.pack("!BBHHH", 8, 0, 0, self.ident, seq & 0xffff)
            checksum = _icmp_checksum(header + payload)
            return struct.pack("!BBHHH", 8, 0, checksum, self.ident, seq & 0xffff) + payload
        # ICMPv6: the kernel fills in the checksum of a raw ICMPv6 socket
        return struct.pack("!BBHHH", 128, 0, 0, self.ident, seq & 0xffff) + payload

    def _reply_seq(self, data):
        if self.address.version == 4:
            data = data[(data[0] & 0x0f) * 4:]     # a raw IPv4 socket hands us the IP header
            want = 0
        else:
            want = 129
        if len(data) < 8:
            return None
        kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", data[:8])
        return seq if kind == want and ident == self.ident else None

    def _loop(self):
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        proto = socket.IPPROTO_ICMP if self.address.version == 4 else socket.IPPROTO_ICMPV6
        with socket.socket(family, socket.SOCK_RAW, proto) as sock:
            sock.setblocking(False)
            target = (str(self.address), 0)
            last = -1
            for seq in self._ticks(idle=lambda until: self._drain(sock, until)):
                try:
                    sock.sendto(self._packet(seq), target)
                except OSError:
                    pass          # e.g. no neighbour yet: counted as lost
                with self._lock:
                    self._sent[seq] = time.monotonic()
                last = seq
            # replies to the last probes may still come
            if last >= 0:
                self._drain(sock, time.monotonic() + self.timeout)

    def _drain(self, sock, until):
        while True:
            wait = max(0.0, until - time.monotonic())
            ready, _w, _x = select.select([sock], [], [], wait)
            if not ready:
                if time.monotonic() >= until:
                    return
                continue
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                continue
            now = time.monotonic()
            seq = self._reply_seq(data)
            with self._lock:
                if seq is not None and seq in self._sent and seq not in self._replies:
                    rtt = now - self._sent[seq]
                    if rtt <= self.timeout:
                        self._replies[seq] = rtt

    def result(self):
        with self._lock:
            sent = sorted(self._sent)
            replies = dict(self._replies)
        in_row = max_in_row = 0
        silence, last_ok = 0.0, self._started
        for seq in sent:
            if seq in replies:
                in_row = 0
                got = self._sent[seq] + replies[seq]
                silence = max(silence, got - last_ok)
                last_ok = got
            else:
                in_row += 1
                max_in_row = max(max_in_row, in_row)
        if sent and sent[-1] not in replies:
            silence = max(silence, self._sent[sent[-1]] - last_ok)
        return {"address": str(self.address), "sent": len(sent), "received": len(replies),
                "lost": len(sent) - len(replies), "max_lost_in_row": max_in_row,
                "max_silence_s": round(silence, 3),
                "rtt_max_ms": round(max(replies.values()) * 1000, 3) if replies else None,
                "elapsed_s": self._elapsed(), "error": self._error}


class TcpProbe(_Probe):
    """One TCP connection to an echo server at ``address``:``port``, probed every ``interval``.

    Each probe sends an 8-byte sequence number and waits up to ``timeout`` s for it to come
    back. A connection that fails, closes or echoes something else counts as a break; the probe
    then reconnects (a new connection per later probe until one works).

    ``result()``: {"address", "port", "probes", "echoed", "breaks", "reconnects",
    "max_gap_s" (longest time between two echoes, or from the start to the first), "gaps"
    (probes after which more than ``gap`` s had passed without an echo), "connected",
    "elapsed_s", "error"}.
    """

    def __init__(self, address, port, interval=0.1, count=None, duration=30.0, timeout=1.0, gap=0.5):
        super().__init__(address, interval, count, duration)
        self.port = int(port)
        if not 1 <= self.port <= 65535:
            raise ValueError("port %r" % (port,))
        self.timeout = float(timeout)
        self.gap = float(gap)
        self._stats = {"probes": 0, "echoed": 0, "breaks": 0, "reconnects": 0, "gaps": 0}
        self._max_gap = 0.0
        self._connected = False

    def _connect(self):
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(min(self.timeout, 1.0))
        try:
            sock.connect((str(self.address), self.port))
        except OSError:
            sock.close()
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        return sock

    def _roundtrip(self, sock, seq):
        message = struct.pack("!Q", seq)
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            chunk = sock.recv(len(message) - len(got))
            if not chunk:
                raise ConnectionError("closed by the peer")
            got += chunk
        if got != message:
            raise ConnectionError("echo %r, expected %r" % (got, message))

    def _loop(self):
        sock, ever = None, False
        last_echo = time.monotonic()
        try:
            for seq in self._ticks():
                with self._lock:
                    self._stats["probes"] += 1
                if sock is None:
                    sock = self._connect()
                    if sock is not None:
                        if ever:
                            with self._lock:
                                self._stats["reconnects"] += 1
                        ever = True
                ok = False
                if sock is not None:
                    try:
                        self._roundtrip(sock, seq)
                        ok = True
                    except OSError:
                        sock.close()
                        sock = None
                        with self._lock:
                            self._stats["breaks"] += 1
                now = time.monotonic()
                with self._lock:
                    self._connected = sock is not None
                    if ok:
                        self._stats["echoed"] += 1
                        self._max_gap = max(self._max_gap, now - last_echo)
                        last_echo = now
                    elif now - last_echo > self.gap:
                        self._stats["gaps"] += 1
                        self._max_gap = max(self._max_gap, now - last_echo)
        finally:
            if sock is not None:
                sock.close()
            with self._lock:
                self._connected = False

    def result(self):
        with self._lock:
            stats = dict(self._stats)
            max_gap, connected = self._max_gap, self._connected
        return dict(stats, address=str(self.address), port=self.port, max_gap_s=round(max_gap, 3),
                    connected=connected, elapsed_s=self._elapsed(), error=self._error)
