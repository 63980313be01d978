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

import os
import shlex
import subprocess
import sys
import time

SCENARIOS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # extensions/molecule
REPO = os.path.dirname(os.path.dirname(SCENARIOS_DIR))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
from testlock import LOCK, MachineTestLock  # noqa: E402  pylint: disable=wrong-import-position


def scenarios():
    found = sorted(name for name in os.listdir(SCENARIOS_DIR)
                   if not name.startswith(('_', '.'))
                   and os.path.isfile(os.path.join(SCENARIOS_DIR, name, 'molecule.yml')))
    wanted = os.environ.get('MOLECULE_SCENARIOS', '').split()
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        sys.exit('no such scenario: %s (have: %s)' % (', '.join(unknown), ', '.join(found)))
    return [name for name in found if not wanted or name in wanted]


def main():
    names = scenarios()
    extra = shlex.split(os.environ.get('MOLECULE_ARGS', ''))
    results = []
    for name in names:
        print('molecule: scenario %s' % name, flush=True)
        with MachineTestLock(LOCK, who='molecule'):
            start = time.monotonic()
            rc = subprocess.call(['molecule', 'test', '-s', name] + extra, cwd=REPO)
            results.append((name, rc, time.monotonic() - start))
    print('\nmolecule scenarios:')
    for name, rc, seconds in results:
        print('  %-12s %-6s %6.0f s' % (name, 'passed' if rc == 0 else 'FAILED', seconds))
    return 1 if any(rc for _name, rc, _s in results) else 0


if __name__ == '__main__':
    sys.exit(main())
