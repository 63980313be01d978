# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run `molecule test` for every scenario of extensions/molecule/ (what `make molecule` does).

A scenario is a directory with a molecule.yml whose name does not start with `_`, so scenarios
that others add are picked up without a change here. Each scenario runs alone under the
machine's test lock (flock on /run/osvirt-test.lock, env VZ_TEST_LOCK): the lab, LXC and the
cgroups are shared with integration tests and with other people's runs on this machine. When a
process that started this one already holds that lock (someone ran `flock <lock> make molecule`)
it is not taken again, which would wait forever.

Env: MOLECULE_SCENARIOS="host provision" runs only those; MOLECULE_ARGS adds arguments to
`molecule test`. Prints each scenario's result and wall time; exits 1 when any failed.
"""

import fcntl
import os
import shlex
import subprocess
import sys
import time

SCENARIOS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # extensions/molecule
REPO = os.path.dirname(os.path.dirname(SCENARIOS_DIR))
LOCK = os.environ.get('VZ_TEST_LOCK', '/run/osvirt-test.lock')


def scenarios():
    found = sorted(name for name in os.listdir(SCENARIOS_DIR)
                   if not name.startswith(('_', '.'))
                   and os.path.isfile(os.path.join(SCENARIOS_DIR, name, 'molecule.yml')))
    wanted = os.environ.get('MOLECULE_SCENARIOS', '').split()
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        sys.exit('no such scenario: %s (have: %s)' % (', '.join(unknown), ', '.join(found)))
    return [name for name in found if not wanted or name in wanted]


def ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open('/proc/%d/stat' % pid) as handle:
                pid = int(handle.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def held_by_ancestor(path):
    """True when a process above this one holds the flock on ``path`` (from /proc/locks)."""
    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        return False
    mine = ancestors()
    with open('/proc/locks') as handle:
        for line in handle:
            fields = line.split()
            if 'FLOCK' not in fields or '->' in fields:
                continue
            try:
                pid, node = int(fields[4]), fields[5]
            except (IndexError, ValueError):
                continue
            if node.rsplit(':', 1)[-1] == str(inode) and pid in mine:
                return True
    return False


class TestLock:
    def __init__(self, path):
        self.path, self.fd = path, None

    def __enter__(self):
        if held_by_ancestor(self.path):
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print('molecule: waiting for the test lock %s' % self.path, flush=True)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def main():
    names = scenarios()
    extra = shlex.split(os.environ.get('MOLECULE_ARGS', ''))
    results = []
    for name in names:
        print('molecule: scenario %s' % name, flush=True)
        with TestLock(LOCK):
            start = time.monotonic()
            rc = subprocess.call(['molecule', 'test', '-s', name] + extra, cwd=REPO)
            results.append((name, rc, time.monotonic() - start))
    print('\nmolecule scenarios:')
    for name, rc, seconds in results:
        print('  %-12s %-6s %6.0f s' % (name, 'passed' if rc == 0 else 'FAILED', seconds))
    return 1 if any(rc for _name, rc, _s in results) else 0


if __name__ == '__main__':
    sys.exit(main())
