# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the osvirt.vz.evacuate role on lab hosts (molecule scenario ``evacuate``).

Run after the drain (converge) and again after the restore (side_effect): lab1 is either drained,
every VE of the scenario on lab2 in the state it had and recorded there, or restored, every VE
back on lab1 in that state with its files and no mark or record left. Never both, never neither.
"""

from __future__ import annotations

import json

import pytest
import testinfra

VZ_ROOT = '/var/lib/vz'
STATES = {'evac-web1': 'RUNNING', 'evac-web2': 'RUNNING', 'evac-db1': 'STOPPED'}


@pytest.fixture(scope='module')
def lab(request):
    inventory = request.config.option.ansible_inventory
    return {name: testinfra.get_host('ansible://%s' % name, ansible_inventory=inventory)
            for name in ('lab1', 'lab2')}


def _state(host, name):
    cmd = host.run('lxc-info -P %s/ves -n %s -sH', VZ_ROOT, name)
    return cmd.stdout.strip() if cmd.rc == 0 else 'ABSENT'


def _json(host, path):
    entry = host.file(path)
    return json.loads(entry.content_string) if entry.exists else None


def _mark(host):
    return (_json(host, VZ_ROOT + '/host.json') or {}).get('draining')


def test_drained_or_restored(lab):
    lab1, lab2 = lab['lab1'], lab['lab2']
    mark = _mark(lab1)
    if mark is not None:
        assert mark['reason'] == 'molecule' and mark['since'].endswith('Z')
        assert {name: _state(lab2, name) for name in STATES} == STATES
        assert {name: _state(lab1, name) for name in STATES} == dict.fromkeys(STATES, 'ABSENT')
        record = _json(lab1, VZ_ROOT + '/evacuated.json')['ves']
        assert {name: (entry['target'], entry['status']) for name, entry in record.items()} == \
            dict.fromkeys(STATES, ('lab2', 'moved'))
        assert record['evac-db1']['mode'] == 'offline' and record['evac-web1']['mode'] == 'warm'
        here = lab2
    else:
        assert {name: _state(lab1, name) for name in STATES} == STATES
        assert {name: _state(lab2, name) for name in STATES} == dict.fromkeys(STATES, 'ABSENT')
        assert not lab1.file(VZ_ROOT + '/evacuated.json').exists
        here = lab1
    note = here.run('lxc-attach -P %s/ves -n evac-web1 -- cat /data/note', VZ_ROOT)
    assert note.rc == 0 and note.stdout == 'kept\n', note.stderr


def test_host_settings_kept(lab):
    for name, host in lab.items():
        settings = _json(host, VZ_ROOT + '/host.json')
        assert settings['cgroup_parent'] == 'vzlab-' + name and settings['bridge'] == 'vzbr0'


def test_lab2_never_marked(lab):
    assert _mark(lab['lab2']) is None


def test_moved_ves_run_in_their_hosts_cgroup(lab):
    for name, host in lab.items():
        for ve, state in STATES.items():
            if state == 'RUNNING' and _state(host, ve) == 'RUNNING':
                assert host.file('/sys/fs/cgroup/memory/vzlab-%s/%s' % (name, ve)).is_directory
