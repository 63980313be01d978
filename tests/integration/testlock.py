"""The machine's test lock: one user of LXC, the cgroups and the lab at a time.

Integration tests, molecule scenarios and benchmarks make VEs, cgroups, bridges and the lab
(one per machine: ``tests/lab/lab``) on this machine. Two such runs at once (two developers,
an editor's test run beside ``make test``) tear down each other's lab and count each other's
VEs as leftovers. Each takes an ``flock`` on ``/run/osvirt-test.lock`` (``VZ_TEST_LOCK``) for
its whole run, so they queue instead. A run whose parent process already holds it (``flock
/run/osvirt-test.lock make test``) does not take it again, which would wait forever.
"""

from __future__ import annotations

import fcntl
import os
import sys

LOCK = os.environ.get("VZ_TEST_LOCK", "/run/osvirt-test.lock")


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def held_by_ancestor(path=LOCK):
    """True when this process or one above it holds the flock on ``path`` (/proc/locks)."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    mine = _ancestors()
    with open("/proc/locks", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if "FLOCK" not in fields or "->" in fields:
                continue
            try:
                pid, node = int(fields[4]), fields[5]
            except (IndexError, ValueError):
                continue
            if node.rsplit(":", 1)[-1] == str(inode) and pid in mine:
                return True
    return False


class MachineTestLock:
    """``with MachineTestLock(): ...`` holds the machine's test lock (waits for it, saying so)."""

    def __init__(self, path=LOCK, who="tests"):
        self.path, self.who, self.fd = path, who, None

    def __enter__(self):
        if held_by_ancestor(self.path):
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("%s: waiting for the machine's test lock %s" % (self.who, self.path), file=sys.stderr, flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
