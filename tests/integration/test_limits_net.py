# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of the network rate of a VE (plugins/module_utils/_shaping.py and the LXC
hook roles/host/files/osvirt-vz-net-hook) on this machine: a real busybox VE on vzbr0 sends to
the host with busybox ``nc``; a listener on 10.20.0.1 (Debian's python3, socket code bound to a
random port, bounded in seconds and bytes) counts what arrives.

The VE is started with ``lxc-start`` as ``lxc-autostart`` would at boot: the hook, named in the
VE's config, reads ``limits.net`` from ve.json and shapes the VE before its init runs. Live
changes go through ``_shaping`` with /usr/bin/python3 (the Python modules run with), while the
transfer keeps running. ``tc`` is used only to cross-check what netlink reports.

Addresses: 10.20.0.190-199 only. Transfers stay small: about 30 MB over some 15 seconds.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# The VE store fixtures and helpers of the VE tests (busybox template, vz_root, cgroup parent).
from test_ve import BRIDGE, GATEWAY, HOST_PYTHON, bridge, ctx  # noqa: F401 pylint: disable=unused-import
import features  # noqa: E402  pylint: disable=wrong-import-position
from vzlib import settle_cgroups, sh


REPO = Path(__file__).resolve().parents[2]
SHAPING_PY = REPO / "plugins" / "module_utils" / "_shaping.py"
HOOK = REPO / "roles" / "host" / "files" / "osvirt-vz-net-hook"
HOST_ADDR = "10.20.0.1"
SHAPER = "vzshape0"
MBIT = 10 ** 6
TOLERANCE = 0.15          # the bar: measured within 15% of the requested rate
# A full TCP segment (MSS 1448 with timestamps) travels in a 1514-byte Ethernet frame; HTB charges
# every frame of a GSO packet, so the best goodput through a shaper is 1448/1514 = 95.6% of its rate.
FRAME = (1514, 1448)

LISTENER = r"""
import json, socket, sys, time
max_seconds, max_bytes = float(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind((sys.argv[3] if len(sys.argv) > 3 else "%s", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(5)
start = time.monotonic()
total, samples, last = 0, [(start, 0)], start
while total < max_bytes and time.monotonic() - start < max_seconds:
    try:
        data = conn.recv(1 << 18)
    except socket.timeout:
        break
    if not data:
        break
    total += len(data)
    now = time.monotonic()
    if now - last >= 0.02:
        samples.append((now, total))
        last = now
samples.append((time.monotonic(), total))
conn.close()
print(json.dumps(samples), flush=True)
""" % HOST_ADDR


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True, scope="module")
def _kernel_features():
    """net.rate shaping (an nftables netdev redirect to an IFB device, classified by an eBPF program)
    needs ifb, ebpf and nft_netdev (features.py): a host without them cannot shape, so these tests
    do not apply there."""
    missing = [features.why_not(name) for name in ('ifb', 'ebpf', 'nft_netdev') if not features.have(name)]
    if missing:
        pytest.skip("net.rate shaping needs IFB, eBPF and nft netdev: " + "; ".join(missing))


def shaping(func, *args):
    """Call a function of _shaping.py with Debian's python3 (it has pyroute2); JSON result."""
    code = ("import json, sys; sys.path.insert(0, %r); import _shaping; "
            "print(json.dumps(_shaping.%s(*json.loads(sys.argv[1]))))" % (str(SHAPING_PY.parent), func))
    out = sh(HOST_PYTHON, "-c", code, json.dumps(list(args))).stdout
    return json.loads(out)


def tc_class_of(link):
    """(classid, rate, ceil) of ``link``'s class in the shaping tree, in tc's words (e.g. '8Mbit'),
    or None: a cross-check of what netlink reports, from ``tc filter/class show dev vzshape0``.
    Other VEs of this machine may be in the same tree."""
    filters = sh("tc", "filter", "show", "dev", SHAPER, check=False).stdout
    found = re.search(r"flowid (\S+) %s\b" % re.escape(link), filters)
    if not found:
        return None
    classes = sh("tc", "class", "show", "dev", SHAPER).stdout
    rates = re.search(r"^class htb %s .*?rate (\S+) ceil (\S+)" % re.escape(found.group(1)), classes, re.M)
    return (found.group(1), rates.group(1), rates.group(2)) if rates else (found.group(1), None, None)


def wire_bytes(link):
    """Bytes the VE has sent through its veth: rx counter of the host side."""
    return int(Path("/sys/class/net", link, "statistics", "rx_bytes").read_text())


def link_exists(name):
    return Path("/sys/class/net", name).exists()


class Transfer:
    """The VE sends zeros to a listener on the host; ``rate(t0, t1)`` is the goodput between
    two monotonic times, in bits per second."""

    def __init__(self, ctx, name, seconds, max_bytes):
        self.listener = subprocess.Popen([HOST_PYTHON, "-c", LISTENER, str(seconds), str(max_bytes)],
                                         stdout=subprocess.PIPE, text=True)
        port = int(self.listener.stdout.readline())
        self.sender = subprocess.Popen(
            ["lxc-attach", "-P", str(ctx.ves), "-n", name, "--", "sh", "-c",
             "head -c %d /dev/zero | nc %s %d" % (max_bytes, HOST_ADDR, port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.samples = None

    def finish(self, timeout=60):
        out, _err = self.listener.communicate(timeout=timeout)
        self.samples = json.loads(out.strip().splitlines()[-1])
        self.stop()
        return self.samples

    def stop(self):
        for proc in (self.sender, self.listener):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def bytes_at(self, moment):
        return bytes_at(self.samples, moment)

    def rate(self, start, end):
        return (self.bytes_at(end) - self.bytes_at(start)) * 8 / (end - start)


def bytes_at(samples, moment):
    """Bytes received by ``moment`` (linear between the listener's samples)."""
    previous = samples[0]
    for sample in samples:
        if sample[0] >= moment:
            span = sample[0] - previous[0]
            if span <= 0:
                return sample[1]
            return previous[1] + (sample[1] - previous[1]) * (moment - previous[0]) / span
        previous = sample
    return samples[-1][1]


@pytest.fixture
def shaped_ve(ctx, tmp_path):
    """A busybox VE at 10.20.0.190 whose config names the hook (installed as the host role
    lays it out, in a directory of this test) and whose ve.json asks for 8 Mbit/s.
    Returns (name, host_link, hook_dir); the VE is stopped."""
    hook_dir = tmp_path / "libexec"
    hook_dir.mkdir()
    shutil.copy2(HOOK, hook_dir / "net-hook")
    shutil.copy2(SHAPING_PY, hook_dir / "osvirt_vz_shaping.py")
    # the hook guards every VE interface first (docs/net-security.md)
    shutil.copy2(SHAPING_PY.parent / "_antispoof.py", hook_dir / "osvirt_vz_antispoof.py")
    shutil.copy2(SHAPING_PY.parent / "_nft.py", hook_dir / "osvirt_vz_nft.py")
    name = ctx.name("net")
    net = [{"name": "eth0", "bridge": BRIDGE, "ipv4": ["10.20.0.190/24"], "gateway4": GATEWAY}]
    ctx.run([{"hosts": "localhost", "gather_facts": False,
              "tasks": [ctx.task("create", name=name, template="busybox", state="present", network=net)]}])
    directory = ctx.ves / name
    meta = json.loads((directory / "ve.json").read_text())
    meta["limits"] = dict(meta.get("limits") or {}, net={"rate": 8 * MBIT})
    (directory / "ve.json").write_text(json.dumps(meta))
    config = (directory / "config").read_text()
    if "lxc.hook.start-host" not in config:
        config += ("lxc.hook.start-host = %s\nlxc.hook.post-stop = %s\n"
                   % (hook_dir / "net-hook", hook_dir / "net-hook"))
    else:   # the VE manager already names the installed hook: point it at this test's copy
        config = config.replace("/usr/libexec/osvirt-vz/net-hook", str(hook_dir / "net-hook"))
    (directory / "config").write_text(config)
    link = meta["network"][0]["host_link"]
    try:
        yield name, link, hook_dir
    finally:
        sh("lxc-stop", "-k", "-P", str(ctx.ves), "-n", name, check=False)
        shaping("clear_shaping", link)
        sh(HOST_PYTHON, "-c", "import sys; sys.path.insert(0, %r); import _antispoof; _antispoof.remove_filter(%r)"
           % (str(SHAPING_PY.parent), link))


def lxc_start(ctx, name):
    return sh("lxc-start", "-P", str(ctx.ves), "-n", name, check=False, timeout=60)


# ------------------------------------------------------------------------------ tests


def test_rate_live_changes_ceil_and_removal_measured_from_the_ve(ctx, shaped_ve):
    name, link, _hook_dir = shaped_ve
    started = lxc_start(ctx, name)
    assert started.returncode == 0, started.stderr + (ctx.ves / name / "lxc.log").read_text()

    # the hook shaped the VE before its init ran: 8 Mbit/s hard cap, seen by netlink and tc
    assert shaping("read_shaping", link) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    classid, rate, ceil = tc_class_of(link)
    assert (rate, ceil) == ("8Mbit", "8Mbit")
    redirect = sh("nft", "list", "chain", "netdev", "osvirt_vz_shaping", "ve_" + link).stdout
    assert 'fwd to "%s"' % SHAPER in redirect, redirect

    windows = []

    def measure(label, wanted, settle=1.0, length=2.5):
        """Let a new rate settle, then count for ``length`` seconds (the listener's samples; the
        host side's rx counter too, which counts a GSO packet's headers once)."""
        time.sleep(settle)
        first = (time.monotonic(), wire_bytes(link))
        time.sleep(length)
        last = (time.monotonic(), wire_bytes(link))
        windows.append((label, wanted, first, last))

    # bounded by bytes; the time bound is generous because each shaping call below starts a
    # Python with pyroute2, which takes seconds when the machine is busy
    transfer = Transfer(ctx, name, seconds=180, max_bytes=60 * 10 ** 6)
    try:
        measure("8Mbit hard cap (set at start by the hook)", 8 * MBIT)

        # root inside the VE tries to lift the limit: it sees and reaches only its own eth0
        inside = [ctx.attach(name, "tc", "qdisc", "del", "dev", "eth0", "root", check=False),
                  ctx.attach(name, "tc", "qdisc", "del", "dev", "eth0", "ingress", check=False),
                  ctx.attach(name, "ip", "link", "set", link, "down", check=False)]
        assert inside[2].returncode != 0, inside[2]
        # the same with the host's tc, as root of the VE's user namespace in its network namespace
        ns_tc = sh("nsenter", "-t", str(ctx.pid(name)), "-U", "-n", "--", "tc", "qdisc", "del", "dev", link,
                   "ingress", check=False)
        assert ns_tc.returncode != 0 and "Cannot find device" in ns_tc.stderr, ns_tc
        assert shaping("read_shaping", link) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
        measure("8Mbit after the VE's root tried tc", 8 * MBIT, settle=0.5)

        # live change of the rate while the transfer runs
        change = shaping("apply_shaping", link, 12 * MBIT, None)
        assert change["actions"] == ["change class %s of %s to rate 12Mbit ceil 12Mbit" % (classid, SHAPER)], change
        measure("12Mbit after a live change", 12 * MBIT)

        # rate 4 guaranteed, ceil 16 on an idle link: the VE takes its ceil
        shaping("apply_shaping", link, 4 * MBIT, 16 * MBIT)
        assert tc_class_of(link) == (classid, "4Mbit", "16Mbit")
        measure("ceil 16Mbit over rate 4Mbit, idle link", 16 * MBIT)

        # removal: unshaped, the VE's class is gone, the transfer goes on
        removed = shaping("clear_shaping", link)
        assert removed["before"] == {"rate_bps": 4 * MBIT, "ceil_bps": 16 * MBIT} and removed["after"] is None
        assert tc_class_of(link) is None and shaping("read_shaping", link) is None
        measure("unshaped", None, settle=0.2, length=1.0)
        transfer.finish()
    finally:
        transfer.stop()

    print("\nnet rate, VE -> host over vzbr0, bits/s. goodput: TCP payload at the listener; "
          "frames: goodput x %d/%d, the Ethernet frames that carried it (what HTB counts)" % FRAME)
    failures = []
    ended = transfer.samples[-1][0]
    for label, wanted, (t0, w0), (t1, w1) in windows:
        if wanted is not None and ended < t1:
            failures.append("%s: the transfer ended %.1f s before this window did" % (label, t1 - ended))
            continue
        goodput = transfer.rate(t0, t1)
        if wanted is None:
            unshaped = goodput
            print("  %-42s %19s  goodput %11.0f  (veth rx %11.0f)" % (label, "", goodput, (w1 - w0) * 8 / (t1 - t0)))
            continue
        frames = goodput * FRAME[0] / FRAME[1]
        print("  %-42s requested %9d  goodput %11.0f (%.3f)  frames %11.0f (%.3f)"
              % (label, wanted, goodput, goodput / wanted, frames, frames / wanted))
        if abs(goodput / wanted - 1) > TOLERANCE:
            failures.append("%s: requested %d bit/s, measured %.0f bit/s" % (label, wanted, goodput))
    assert not failures, failures
    # without shaping the VE sends faster than any rate it had (unless the byte cap ended it)
    assert unshaped > 2 * 16 * MBIT or transfer.samples[-1][1] >= 60 * 10 ** 6, unshaped


def test_restart_reapplies_and_stop_removes_the_class(ctx, shaped_ve):
    name, link, _hook_dir = shaped_ve
    assert lxc_start(ctx, name).returncode == 0
    assert shaping("read_shaping", link) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    # post-stop: the veth is gone and the hook removed the VE's class and classifier
    sh("lxc-stop", "-P", str(ctx.ves), "-n", name, "-k")
    assert not link_exists(link) and tc_class_of(link) is None
    # a changed ve.json (as ve_limits persists it) is what the next start applies
    meta_path = ctx.ves / name / "ve.json"
    meta = json.loads(meta_path.read_text())
    meta["limits"]["net"] = {"rate": 4 * MBIT, "ceil": 12 * MBIT}
    meta_path.write_text(json.dumps(meta))
    assert lxc_start(ctx, name).returncode == 0
    assert shaping("read_shaping", link) == {"rate_bps": 4 * MBIT, "ceil_bps": 12 * MBIT}
    assert tc_class_of(link)[1:] == ("4Mbit", "12Mbit")
    # no rate: the next start is unshaped
    meta["limits"].pop("net")
    meta_path.write_text(json.dumps(meta))
    sh("lxc-stop", "-P", str(ctx.ves), "-n", name, "-k")
    assert lxc_start(ctx, name).returncode == 0
    assert shaping("read_shaping", link) is None and tc_class_of(link) is None


def test_a_rate_that_cannot_be_shaped_keeps_the_ve_from_starting(ctx, shaped_ve):
    name, link, _hook_dir = shaped_ve
    meta_path = ctx.ves / name / "ve.json"
    meta = json.loads(meta_path.read_text())
    meta["limits"]["net"] = {"rate": 1000}          # below 8000 bit/s: HTB's smallest useful rate
    meta_path.write_text(json.dumps(meta))
    started = lxc_start(ctx, name)
    assert started.returncode != 0
    assert ctx.lxc_state(name) == "STOPPED"
    log = (ctx.ves / name / "lxc.log").read_text()
    assert "osvirt-vz-net-hook start-host %s: %s: net.rate 1000 bit/s is out of range" % (name, link) in log, log
    meta["limits"]["net"] = {"rate": 8 * MBIT}
    meta_path.write_text(json.dumps(meta))
    settle_cgroups(ctx.parent, name)                     # the aborted start's monitor may still be leaving
    assert lxc_start(ctx, name).returncode == 0          # with a valid rate it starts shaped
    assert shaping("read_shaping", link) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}


def test_host_role_installs_the_hook(run_playbook, localhost, tmp_path):
    installed = Path("/usr/libexec/osvirt-vz")
    # VEs of other jobs on this machine run whatever hook is installed: put the previous files back
    names = ("net-hook", "osvirt_vz_shaping.py", "osvirt_vz_nft.py", "osvirt_vz_antispoof.py", "autostart",
             "osvirt_vz_cgroups.py")
    before = {name: (installed / name).read_bytes() if (installed / name).exists() else None for name in names}
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "hook", "ansible.builtin.include_role": {"name": "osvirt.vz.host", "tasks_from": "net_hook"}}]}]
    try:
        run_playbook(play)
        again = run_playbook(play)
        assert not any(r.changed for r in again.results), again.report()
        assert (installed / "net-hook").read_bytes() == HOOK.read_bytes()
        assert (installed / "net-hook").stat().st_mode & 0o777 == 0o755
        sources = {"osvirt_vz_shaping.py": SHAPING_PY, "osvirt_vz_nft.py": SHAPING_PY.parent / "_nft.py",
                   "osvirt_vz_antispoof.py": SHAPING_PY.parent / "_antispoof.py",
                   "osvirt_vz_cgroups.py": SHAPING_PY.parent / "_cgroups.py",
                   "autostart": HOOK.parent / "osvirt-vz-autostart"}
        for name, source in sources.items():
            assert (installed / name).read_bytes() == source.read_bytes(), name
        # the installed copies load on their own, as the hook loads them
        code = "import sys; sys.path.insert(0, %r); import osvirt_vz_antispoof as a; print(a._nft.__name__)" \
            % str(installed)
        assert subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip() == "osvirt_vz_nft"
        # the installed hook finds its code: a start-host for a VE without ve.json does nothing
        proc = subprocess.run([str(installed / "net-hook"), "x", "lxc", "start-host"], capture_output=True,
                              text=True, env={"LXC_NAME": "x", "LXC_CONFIG_FILE": "/nonexistent/x/config"},
                              check=False)
        assert proc.returncode == 0, proc
        # the boot helper finds its code too: on a store without VEs it only runs lxc-autostart
        proc = subprocess.run([str(installed / "autostart"), str(tmp_path)], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0 and not proc.stderr, proc
        assert subprocess.run([str(installed / "autostart")], capture_output=True, check=False).returncode == 2
    finally:
        for name, data in before.items():
            # a file that was not there stays: later tests start VEs whose config names the hook
            if data is not None and (installed / name).read_bytes() != data:
                (installed / name).write_bytes(data)


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


def test_rate_is_guaranteed_and_ceil_borrowed_when_two_ves_compete():
    """Two VEs (network namespaces behind veths, as LXC makes them) share a host (a third
    namespace made here, so its shaping tree and capacity are this test's alone) whose capacity
    is 24 Mbit/s. VE a: rate 4, ceil 24; VE b: rate 12, ceil 24. Alone, a takes the capacity;
    together each gets at least its rate and the rest is shared."""
    tag = secrets.token_hex(3)
    host_ns, links = "vzshp-h-" + tag, {"a": "vz%s0" % tag + "a0", "b": "vz%s0" % tag + "b0"}
    ve_ns = {ve: "vzshp-%s-%s" % (ve, tag) for ve in links}
    addr = {"a": "10.99.1", "b": "10.99.2"}

    def in_host(*argv, **kwargs):
        return sh("ip", "netns", "exec", host_ns, *argv, **kwargs)

    def shaping_in_host(func, *args):
        code = ("import json, sys; sys.path.insert(0, %r); import _shaping; "
                "print(json.dumps(_shaping.%s(*json.loads(sys.argv[1]))))" % (str(SHAPING_PY.parent), func))
        return json.loads(in_host(HOST_PYTHON, "-c", code, json.dumps(list(args))).stdout)

    def run(ves, seconds):
        """Send from ``ves`` at once for ``seconds``; goodput of each after 1 s to settle."""
        listeners, senders = {}, []
        for ve in ves:
            listeners[ve] = subprocess.Popen(
                ["ip", "netns", "exec", host_ns, HOST_PYTHON, "-c", LISTENER, str(seconds + 3), str(40 * 10 ** 6),
                 addr[ve] + ".1"], stdout=subprocess.PIPE, text=True)
        try:
            for ve in ves:
                port = listeners[ve].stdout.readline().strip()
                senders.append(subprocess.Popen(["ip", "netns", "exec", ve_ns[ve], HOST_PYTHON, "-c", SENDER,
                                                 addr[ve] + ".1", port, str(seconds)]))
            start = time.monotonic()
            time.sleep(seconds)
            window = (start + 1, time.monotonic() - 0.2)
            result = {}
            for ve in ves:
                samples = json.loads(listeners[ve].communicate(timeout=30)[0].strip().splitlines()[-1])
                result[ve] = (bytes_at(samples, window[1]) - bytes_at(samples, window[0])) * 8 / (window[1] - window[0])
            return result
        finally:
            for proc in senders + list(listeners.values()):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    sh("ip", "netns", "add", host_ns)
    try:
        in_host("ip", "link", "set", "lo", "up")
        for ve, link in links.items():
            sh("ip", "netns", "add", ve_ns[ve])
            in_host("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ve_ns[ve])
            in_host("ip", "addr", "add", addr[ve] + ".1/24", "dev", link)
            in_host("ip", "link", "set", link, "up")
            sh("ip", "netns", "exec", ve_ns[ve], "ip", "addr", "add", addr[ve] + ".2/24", "dev", "eth0")
            sh("ip", "netns", "exec", ve_ns[ve], "ip", "link", "set", "eth0", "up")
        shaping_in_host("apply_shaping", links["a"], 4 * MBIT, 24 * MBIT, 24 * MBIT)
        shaping_in_host("apply_shaping", links["b"], 12 * MBIT, 24 * MBIT)
        assert shaping_in_host("read_shaping", links["b"]) == {"rate_bps": 12 * MBIT, "ceil_bps": 24 * MBIT}

        alone = run(["a"], 4)
        both = run(["a", "b"], 5)
        print("\ntwo VEs on a host of 24 Mbit/s, goodput bits/s: a alone %.0f; together a (rate 4M) %.0f, "
              "b (rate 12M) %.0f, sum %.0f" % (alone["a"], both["a"], both["b"], both["a"] + both["b"]))
        assert abs(alone["a"] / (24 * MBIT) - 1) <= TOLERANCE, alone
        assert both["a"] >= (1 - TOLERANCE) * 4 * MBIT and both["b"] >= (1 - TOLERANCE) * 12 * MBIT, both
        assert both["b"] > both["a"], both
        assert abs((both["a"] + both["b"]) / (24 * MBIT) - 1) <= TOLERANCE, both
        # the last VE out takes the shaping device with it
        shaping_in_host("clear_shaping", links["a"])
        shaping_in_host("clear_shaping", links["b"])
        assert in_host("ip", "link", "show", SHAPER, check=False).returncode != 0
    finally:
        for namespace in [host_ns] + list(ve_ns.values()):
            sh("ip", "netns", "del", namespace, check=False)


def test_modules_shape_a_running_ve_live_four_steps(ctx, four_steps):
    """The whole chain: osvirt.vz.ve creates a VE with a rate, osvirt.vz.ve_limits changes it live
    (four steps), a restart keeps it, osvirt.vz.ve_info reports it, removal unshapes."""
    name = ctx.name("mod")
    net = [{"name": "eth0", "bridge": BRIDGE, "ipv4": ["10.20.0.191/24"], "gateway4": GATEWAY}]
    created = ctx.run([{"hosts": "localhost", "gather_facts": False, "tasks": [ctx.task(
        "create", name=name, template="busybox", state="started", network=net, limits={"rate": "8Mbit"})]}])
    link = json.loads((ctx.ves / name / "ve.json").read_text())["network"][0]["host_link"]
    assert created.task("create")["changed"]
    assert shaping("read_shaping", link) == {"rate_bps": 8 * MBIT, "ceil_bps": 8 * MBIT}
    pid = ctx.pid(name)

    task = {"osvirt.vz.ve_limits": {"vz_root": str(ctx.root), "cgroup_parent": ctx.parent, "name": name,
                                    "limits": {"net": {"rate": "12Mbit", "ceil": "3M/s"}}}}
    result = four_steps(task)
    check, real, _again, _check_again = result.steps["localhost"]
    assert check["diff"]["before"]["limits"]["net"] == {"rate": "8Mbit"}
    after = real["diff"]["after"]["limits"]["net"]
    assert after["rate"] == "12Mbit" and "ceil" in after, after
    # live: the same init, the new class in the kernel (3M/s = 3 MiB/s = 25165824 bit/s)
    assert ctx.pid(name) == pid
    assert shaping("read_shaping", link) == {"rate_bps": 12 * MBIT, "ceil_bps": 25165824}
    # a restart keeps it (the hook, or the module after its start)
    ctx.run([{"hosts": "localhost", "gather_facts": False,
              "tasks": [ctx.task("restart", name=name, state="restarted")]}])
    assert ctx.pid(name) != pid
    assert shaping("read_shaping", link) == {"rate_bps": 12 * MBIT, "ceil_bps": 25165824}
    # ve_info: the rate and the VE's traffic
    ctx.attach(name, "ping", "-c", "2", "-W", "2", GATEWAY, check=False)
    info = ctx.run([{"hosts": "localhost", "gather_facts": False, "tasks": [{"name": "info", "osvirt.vz.ve_info": {
        "vz_root": str(ctx.root), "name": [name]}}]}]).task("info")
    usage = info["ves"][0]["usage"]["net"]
    assert usage["rate"] == 12 * MBIT and usage["ceil"] == 25165824, usage
    assert usage["tx_bytes"] and usage["tx_bytes"] > 0, usage
    # removal: unshaped, live
    ctx.run([{"hosts": "localhost", "gather_facts": False,
              "tasks": [{"name": "unshape", "osvirt.vz.ve_limits": dict(task["osvirt.vz.ve_limits"],
                                                                        limits={"net": None})}]}])
    assert shaping("read_shaping", link) is None and tc_class_of(link) is None
