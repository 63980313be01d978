# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""What optional kernel features this host offers, probed from the kernel itself.

Machines of one kind differ in kernel build (one has the BFQ IO scheduler, the next none), so a
test that depends on an optional feature asks here first and asserts the behaviour for what it
found: applied and enforced when the host offers the feature, refused with the reason when not.
Each probe looks at the kernel directly (sysfs, /proc, a throw-away network or mount namespace),
never at state an earlier test or run left behind (cgroups, devices, tables), and never through
the code under test. Answers are cached per session; ``describe()`` lists them all
(``python3 tests/integration/features.py`` prints them).

``have(name)`` -> bool, ``why_not(name)`` -> str (the reason a feature is missing, '' when
present), ``NAMES`` the probed features:

bfq             proportional IO weight (BFQ scheduler with cgroup support): disk.ioprio
btrfs_quota     btrfs in the kernel and btrfs-progs: disk.space on a btrfs vz_root
ifb             IFB devices (net.rate redirects VE egress to one)
ebpf            the bpf() system call (net.rate classifies with a cls_bpf program)
nft_netdev      nftables netdev ingress chains (anti-spoofing, the net.rate redirect)
idmapped_mounts mount_setattr() with an id map (bind mounts shifted to a VE's ids)
criu            `criu check` passes (live migration)
"""

import functools
import os
import shutil
import subprocess
import tempfile

NAMES = ("bfq", "btrfs_quota", "ifb", "ebpf", "nft_netdev", "idmapped_mounts", "criu")


def _run(*argv, timeout=30):
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _bfq():
    schedulers = set()
    for dev in sorted(os.listdir("/sys/block")) if os.path.isdir("/sys/block") else ():
        schedulers.update(_read("/sys/block/%s/queue/scheduler" % dev).replace("[", " ").replace("]", " ").split())
    if "bfq" in schedulers:
        return ""
    return ("no block device offers the bfq IO scheduler (schedulers here: %s); the kernel is built "
            "without CONFIG_IOSCHED_BFQ or lacks the module" % (", ".join(sorted(schedulers)) or "none"))


def _btrfs_quota():
    if not any(line.split()[-1:] == ["btrfs"] for line in _read("/proc/filesystems").splitlines()):
        return "the kernel offers no btrfs file system (not in /proc/filesystems)"
    missing = [tool for tool in ("mkfs.btrfs", "btrfs") if shutil.which(tool) is None]
    if missing:
        return "btrfs-progs is missing (%s)" % ", ".join(missing)
    return ""


def _in_netns(script):
    """Run ``script`` (sh) in a new network namespace: nothing it makes outlives the probe."""
    return _run("unshare", "--net", "sh", "-ec", script)


def _ifb():
    proc = _in_netns("ip link add probe0 type ifb")
    return "" if proc.returncode == 0 else "cannot make an IFB device: %s" % proc.stderr.strip()


def _ebpf():
    if os.path.exists("/proc/sys/kernel/unprivileged_bpf_disabled"):
        return ""
    return "the kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"


def _nft_netdev():
    if shutil.which("nft") is None:
        return "nft is not installed"
    proc = _in_netns("ip link add probe0 type veth peer name probe1; nft add table netdev probe; "
                     "nft add chain netdev probe c '{ type filter hook ingress device \"probe0\" priority 0; }'")
    return "" if proc.returncode == 0 else "no nftables netdev ingress chain: %s" % proc.stderr.strip()


def _idmapped_mounts():
    base = tempfile.mkdtemp(prefix="vz-probe-idmap-", dir="/var/tmp")
    try:
        src, dst = os.path.join(base, "src"), os.path.join(base, "dst")
        os.mkdir(src)
        os.mkdir(dst)
        proc = _run("unshare", "--mount", "mount", "--bind", "-o", "X-mount.idmap=b:0:100000:65536", src, dst)
        return "" if proc.returncode == 0 else "no idmapped bind mount: %s" % proc.stderr.strip()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _criu():
    if shutil.which("criu") is None:
        return "criu is not installed"
    proc = _run("criu", "check", timeout=60)
    return "" if proc.returncode == 0 else "criu check fails: %s" % (proc.stderr or proc.stdout).strip()[-300:]


_PROBES = {"bfq": _bfq, "btrfs_quota": _btrfs_quota, "ifb": _ifb, "ebpf": _ebpf, "nft_netdev": _nft_netdev,
           "idmapped_mounts": _idmapped_mounts, "criu": _criu}


@functools.lru_cache(maxsize=None)
def why_not(name):
    """Why this host lacks feature ``name`` ('' when it has it)."""
    return _PROBES[name]()


def have(name):
    """True when this host offers feature ``name``."""
    return not why_not(name)


def describe(names=NAMES):
    """One line per feature: 'name: yes' or 'name: no (reason)'."""
    return ["%s: %s" % (name, "yes" if have(name) else "no (%s)" % why_not(name)) for name in names]


if __name__ == "__main__":
    print("\n".join(describe()))
