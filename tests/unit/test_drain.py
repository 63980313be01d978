"""The drain mark and evacuation record (module_utils/_drain.py): rules and files."""

import json

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._drain import HostDrain, apply, check_entry
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

NOW = '2026-12-07T23:30:00Z'
LATER = '2026-12-07T23:45:00Z'
WEB1 = {'target': 'lab2', 'mode': 'warm', 'state_before': 'running', 'status': 'moved'}


def test_mark_set_once_keeps_its_time():
    mark, ves = apply(None, {}, 'present', reason='kernel', by='ops', now=NOW)
    assert mark == {'since': NOW, 'reason': 'kernel', 'by': 'ops'} and ves == {}
    again = apply(mark, {}, 'present', now=LATER)[0]
    assert again == mark
    changed = apply(mark, {}, 'present', reason='disk swap', now=LATER)[0]
    assert changed == {'since': NOW, 'reason': 'disk swap', 'by': 'ops'}
    assert mark['reason'] == 'kernel'   # inputs are not changed


def test_record_added_and_unchanged_entry_keeps_its_stamp():
    ves = apply(None, {}, 'present', record={'web1': dict(WEB1, status='moving')}, now=NOW)[1]
    assert ves == {'web1': dict(WEB1, status='moving', updated=NOW)}
    same = apply({'since': NOW}, ves, 'present', record={'web1': dict(WEB1, status='moving')}, now=LATER)[1]
    assert same == ves
    moved = apply({'since': NOW}, ves, 'present', record={'web1': WEB1}, now=LATER)[1]
    assert moved == {'web1': dict(WEB1, updated=LATER)}


def test_status_defaults_to_moved():
    entry = dict(WEB1)
    del entry['status']
    assert check_entry('web1', entry)['status'] == 'moved'


@pytest.mark.parametrize('name, entry, words', [
    ('Web1', WEB1, 'invalid VE name'),
    ('web1', dict(WEB1, target=''), 'target must be'),
    ('web1', dict(WEB1, target='a b'), 'target must be'),
    ('web1', dict(WEB1, mode='fast'), 'mode must be one of offline, warm, live'),
    ('web1', dict(WEB1, state_before='gone'), 'state_before'),
    ('web1', dict(WEB1, status='lost'), 'status'),
    ('web1', dict(WEB1, colour='red'), 'unknown keys colour'),
    ('web1', 'lab2', 'must be a dict'),
])
def test_bad_entries(name, entry, words):
    with pytest.raises(VzError, match=words):
        apply(None, {}, 'present', record={name: entry}, now=NOW)


def test_clear_refused_while_ves_are_away_unless_forced():
    ves = {'web1': dict(WEB1, updated=NOW)}
    with pytest.raises(VzError, match='web1 on lab2'):
        apply({'since': NOW}, ves, 'absent')
    assert apply({'since': NOW}, ves, 'absent', forget=['web1']) == (None, {})
    assert apply({'since': NOW}, ves, 'absent', force=True) == (None, {})
    assert apply(None, {}, 'absent') == (None, {})


def test_bad_combinations():
    with pytest.raises(VzError, match='state=absent'):
        apply({'since': NOW}, {}, 'absent', record={'web1': WEB1})
    with pytest.raises(VzError, match='both in record and in forget: web1'):
        apply(None, {}, 'present', record={'web1': WEB1}, forget=['web1'])
    with pytest.raises(VzError, match='state=query changes nothing'):
        apply(None, {}, 'query', reason='x')
    with pytest.raises(VzError, match='one line'):
        apply(None, {}, 'present', reason='two\nlines')
    with pytest.raises(VzError, match='invalid VE name'):
        apply(None, {}, 'present', forget=['../x'])


def test_files_keep_other_keys_and_are_idempotent(tmp_path):
    (tmp_path / 'host.json').write_text(json.dumps({'cgroup_parent': 'vz', 'bridge': 'vzbr0', 'overcommit': 1.5}))
    drain = HostDrain(str(tmp_path))

    changed, before, after = drain.change(check_mode=True, state='present', reason='kernel', by='ops')
    assert changed and before['draining'] is None and after['draining']['reason'] == 'kernel'
    assert 'draining' not in json.loads((tmp_path / 'host.json').read_text())   # check mode wrote nothing

    changed, after = drain.change(state='present', reason='kernel', by='ops',
                                  record={'web1': dict(WEB1, status='moving')})[::2]
    settings = json.loads((tmp_path / 'host.json').read_text())
    assert changed and settings['overcommit'] == 1.5 and settings['bridge'] == 'vzbr0'
    assert settings['draining'] == after['draining']
    record = json.loads((tmp_path / 'evacuated.json').read_text())
    assert record['schema'] == 1 and record['ves']['web1']['status'] == 'moving'

    changed = drain.change(state='present', reason='kernel', by='ops', record={'web1': dict(WEB1, status='moving')})[0]
    assert not changed
    changed, after = drain.change(state='query')[::2]
    assert not changed and after['evacuated']['web1']['target'] == 'lab2'

    with pytest.raises(VzError, match='restore them first'):
        drain.change(state='absent')
    changed, after = drain.change(state='absent', forget=['web1'])[::2]
    assert changed and after == {'draining': None, 'evacuated': {}}
    assert not (tmp_path / 'evacuated.json').exists()
    assert json.loads((tmp_path / 'host.json').read_text()) == {'cgroup_parent': 'vz', 'bridge': 'vzbr0',
                                                                'overcommit': 1.5}
    assert not drain.change(state='absent')[0]


def test_host_json_written_like_the_host_role(tmp_path):
    """The host role writes host.json with to_nice_json: the same text comes back after a clear."""
    text = json.dumps({'bridge': 'vzbr0', 'cgroup_parent': 'vz'}, indent=4, sort_keys=True,
                      separators=(',', ': ')) + '\n'
    (tmp_path / 'host.json').write_text(text)
    drain = HostDrain(str(tmp_path))
    drain.change(state='present')
    drain.change(state='absent')
    assert (tmp_path / 'host.json').read_text() == text


def test_missing_store_and_broken_files(tmp_path):
    with pytest.raises(VzError, match='not a VE host yet'):
        HostDrain(str(tmp_path / 'nowhere')).change(state='query')
    (tmp_path / 'host.json').write_text('[]')
    with pytest.raises(VzError, match='must hold a JSON object'):
        HostDrain(str(tmp_path)).change(state='query')
    (tmp_path / 'host.json').write_text('{"draining": "yes"}')
    with pytest.raises(VzError, match='"draining" must be null or an object'):
        HostDrain(str(tmp_path)).change(state='query')
    (tmp_path / 'host.json').write_text('{}')
    (tmp_path / 'evacuated.json').write_text('{"schema": 9, "ves": {}}')
    with pytest.raises(VzError, match='schema 9'):
        HostDrain(str(tmp_path)).change(state='query')
    with pytest.raises(VzError, match='absolute path'):
        HostDrain('relative/path')


def test_no_state_changes_only_the_record():
    mark = {'since': NOW, 'reason': 'kernel', 'by': 'ops'}
    ves = {'web1': dict(WEB1, updated=NOW), 'db1': dict(WEB1, updated=NOW)}
    assert apply(mark, ves, None, forget=['web1']) == (mark, {'db1': ves['db1']})
    assert apply(None, {}, None, record={'web1': WEB1}, now=LATER) == (None, {'web1': dict(WEB1, updated=LATER)})
    assert apply(mark, ves, None) == (mark, ves)
    with pytest.raises(VzError, match='give state=present'):
        apply(mark, ves, None, reason='x')
