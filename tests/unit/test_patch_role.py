"""Pure logic of the osvirt.vz.patch role: batches, health checks, the plan, the report, the filters."""

import shlex
import subprocess

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.osvirt.vz.plugins.filter import patch as patch_filter
from ansible_collections.osvirt.vz.plugins.module_utils import _patch
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

V1, V2 = '20261201-080000', '20261207-120000'


# -- batches --------------------------------------------------------------------------------------
@pytest.mark.parametrize('value, expected', [
    ([1, '10%', '50%', '100%'], [1, '10%', '50%', '100%']),
    (['2', ' 30% '], [2, '30%']),
    (3, [3]),
    ('25%', ['25%']),
])
def test_batches_accepted(value, expected):
    assert _patch.parse_batches(value) == expected


@pytest.mark.parametrize('value', [[], [0], [-1], ['0%'], ['101%'], ['ten'], [1.5], [True], [None], ['5 %'],
                                   [{'a': 1}], ['10%%']])
def test_batches_refused_with_the_bad_entry(value):
    with pytest.raises(VzError, match='patch_batches'):
        _patch.parse_batches(value)


@pytest.mark.parametrize('batches, total, sizes', [
    ([1, '10%', '50%', '100%'], 12, [1, 1, 6, 4]),   # 10% of 12 is 1; the last entry takes the rest
    ([1, '50%'], 6, [1, 3, 2]),                      # the last entry repeats
    ([2], 5, [2, 2, 1]),
    (['100%'], 7, [7]),
    ([1, '10%'], 0, []),
    (['1%'], 3, [1, 1, 1]),                          # a percentage is at least one VE
])
def test_batch_sizes_as_ansible_serial(batches, total, sizes):
    assert _patch.batch_sizes(batches, total) == sizes


def test_batch_sizes_match_ansible_itself():
    from ansible.utils.helpers import pct_to_int
    batches, total = [1, '10%', '50%', '100%'], 40
    expected, left, i = [], total, 0
    while left > 0:
        size = min(pct_to_int(batches[min(i, len(batches) - 1)], total), left)
        expected.append(size)
        left -= size
        i += 1
    assert _patch.batch_sizes(batches, total) == expected


@pytest.mark.parametrize('value', [-1, 101, 'x', True, None])
def test_fail_percentage_refused(value):
    with pytest.raises(VzError, match='patch_max_fail_percentage'):
        _patch.fail_percentage(value)


# -- health checks ----------------------------------------------------------------------------------
def test_health_systemd_defaults_and_degraded():
    check = _patch.health_check({'kind': 'systemd'})
    assert check['accept'] == ['running'] and check['timeout'] == 30 and check['retries'] == 5
    assert check['argv'] == ['timeout', '30', 'systemctl', 'is-system-running', '--wait']
    assert _patch.healthy({'rc': 0, 'stdout': 'running\r\n'}, check)
    assert not _patch.healthy({'rc': 1, 'stdout': 'degraded\n'}, check)
    degraded = _patch.health_check({'kind': 'systemd', 'allow_degraded': True})
    assert _patch.healthy({'rc': 1, 'stdout': 'degraded\n'}, degraded)
    assert not _patch.healthy({'rc': 1, 'stdout': 'starting\n'}, degraded)


def test_health_tcp_and_command():
    tcp = _patch.health_check({'kind': 'tcp', 'port': '8080', 'timeout': 3})
    assert tcp['port'] == 8080 and tcp['host'] == '127.0.0.1'
    assert tcp['argv'][-3:] == ['127.0.0.1', '8080', '3']
    assert shlex.split(tcp['line']) == tcp['argv']
    assert _patch.healthy({'rc': 0, 'stdout': ''}, tcp) and not _patch.healthy({'rc': 1}, tcp)
    assert not _patch.healthy({'rc': 0, 'unreachable': True}, tcp)
    cmd = _patch.health_check({'kind': 'command', 'command': ['test', '-e', "/etc/a b'c"]})
    assert shlex.split(cmd['line']) == ['timeout', '5', 'test', '-e', "/etc/a b'c"]


def test_health_tcp_script_really_probes(tmp_path):
    """The tcp check's script as a local shell runs it: a closed port fails, an open one passes."""
    import socket
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        ok = subprocess.run(_patch.health_check({'kind': 'tcp', 'port': port})['argv'], check=False)
        assert ok.returncode == 0
    finally:
        server.close()
    closed = subprocess.run(_patch.health_check({'kind': 'tcp', 'port': port, 'timeout': 1})['argv'], check=False)
    assert closed.returncode != 0


@pytest.mark.parametrize('spec, message', [
    ({'kind': 'http'}, "kind 'http' is not a health check: use one of systemd, tcp, command"),
    ({}, 'kind None is not a health check'),
    ('tcp', 'must be a dict'),
    ({'kind': 'tcp'}, 'kind tcp needs port'),
    ({'kind': 'tcp', 'port': 70000}, 'not between 1 and 65535'),
    ({'kind': 'tcp', 'port': 80, 'host': 'example.com'}, 'not a valid IP address'),
    ({'kind': 'command'}, 'needs command'),
    ({'kind': 'command', 'command': 'true'}, 'needs command'),
    ({'kind': 'command', 'command': []}, 'needs command'),
    ({'kind': 'systemd', 'port': 80}, 'port not known for kind systemd'),
    ({'kind': 'systemd', 'allow_degraded': 'yes'}, 'allow_degraded'),
    ({'kind': 'command', 'command': ['true'], 'retries': -1}, 'retries'),
])
def test_health_refused(spec, message):
    with pytest.raises(VzError) as exc:
        _patch.health_check(spec)
    assert message in str(exc.value)


def test_argv_line_quotes():
    assert _patch.argv_line(['echo', 'a b', "c'd"]) == "echo 'a b' 'c'\"'\"'d'"
    with pytest.raises(VzError):
        _patch.argv_line('echo hi')


# -- plan ---------------------------------------------------------------------------------------------
def _listing(host, ves, reachable=True):
    return {'host': host, 'reachable': reachable, 'vz_root': '/var/lib/vz', 'connection': {'address': host},
            'ves': [{'name': n, 'state': s, 'template': t} for n, s, t in ves]}


def _fleet():
    old, new = 'busybox@' + V1, 'busybox@' + V2
    return [
        _listing('lab2', [('b1', 'running', old), ('b2', 'running', old), ('b3', 'stopped', old)]),
        _listing('lab1', [('a1', 'running', old), ('a2', 'running', new), ('a3', 'running', old),
                          ('a4', 'running', 'debian-12@' + V1), ('a5', 'frozen', old)]),
    ]


def test_plan_interleaves_hosts_canary_first_and_says_why_it_skips():
    entries = _patch.plan(_fleet(), 'busybox', V2)
    todo = [e['name'] for e in entries if e['action'] == 'patch']
    assert todo == ['a1.lab1', 'b1.lab2', 'a3.lab1', 'b2.lab2', 'b3.lab2']
    skipped = {e['name']: e['reason'] for e in entries if e['action'] == 'skip'}
    assert skipped == {'a2.lab1': 'already on busybox@' + V2,
                       'a4.lab1': 'not on template busybox (on debian-12@%s)' % V1,
                       'a5.lab1': 'frozen'}
    first = entries[0]
    assert first['from'] == 'busybox@' + V1 and first['to'] == 'busybox@' + V2 and first['ve'] == 'a1'
    assert first['connection'] == {'address': 'lab1'} and first['vz_root'] == '/var/lib/vz'


def test_plan_rerun_after_everything_is_patched_patches_nothing():
    fleet = _fleet()
    for listing in fleet:
        for ve in listing['ves']:
            ve['template'] = ve['template'].replace(V1, V2) if ve['template'].startswith('busybox') else ve['template']
    assert [e for e in _patch.plan(fleet, 'busybox', V2) if e['action'] == 'patch'] == []


def test_plan_options():
    entries = _patch.plan(_fleet(), 'busybox', V2, include_stopped=False, only=['a1', 'b3.lab2', 'b3'],
                          exclude=['b3'])
    assert [e['name'] for e in entries if e['action'] == 'patch'] == ['a1.lab1']
    reasons = {e['name']: e['reason'] for e in entries}
    assert reasons['b3.lab2'] == 'in patch_exclude_ves' and reasons['b1.lab2'] == 'not in patch_only_ves'
    stopped = _patch.plan(_fleet(), 'busybox', V2, include_stopped=False)
    assert {e['name']: e['reason'] for e in stopped}['b3.lab2'] == 'stopped (patch_include_stopped is false)'


def test_plan_unreachable_host_and_newer_version():
    fleet = _fleet()
    fleet[0]['reachable'] = False
    fleet[1]['ves'][0]['template'] = 'busybox@20991231-000000'
    entries = _patch.plan(fleet, 'busybox', V2)
    reasons = {e['name']: e['reason'] for e in entries}
    assert reasons['b1.lab2'] == 'host lab2 unreachable'
    assert reasons['a1.lab1'].startswith('on busybox@20991231-000000, newer than')
    assert _patch.unreachable_hosts(fleet) == ['lab2']


def test_plan_in_place():
    entries = _patch.plan(_fleet(), mode='in_place')
    todo = [e['name'] for e in entries if e['action'] == 'patch']
    assert todo == ['a1.lab1', 'b1.lab2', 'a2.lab1', 'b2.lab2', 'a3.lab1', 'a4.lab1']
    assert {e['name']: e['reason'] for e in entries}['b3.lab2'] == 'stopped: in-place patching needs a running VE'
    assert all(e['from'] == e['to'] for e in entries)


@pytest.mark.parametrize('kwargs, message', [
    ({'template': 'busybox'}, 'needs the template and the version'),
    ({'template': 'Bad Name', 'version': V2}, 'template'),
    ({'template': 'busybox', 'version': 'latest'}, 'version'),
    ({'mode': 'sideways'}, 'patch_mode'),
])
def test_plan_bad_input(kwargs, message):
    with pytest.raises(VzError, match=message):
        _patch.plan(_fleet(), **kwargs)


# -- report ---------------------------------------------------------------------------------------------
def test_report_statuses_hidden_files_and_lines():
    entries = _patch.plan(_fleet(), 'busybox', V2)
    by_name = {e['name']: e for e in entries}
    hidden = [{'path': '/etc/motd', 'upper': 'file', 'change': 'modified'}]
    outcomes = {
        'a1.lab1': _patch.outcome(by_name['a1.lab1'], 'patched', rebase={'hidden_files': {'a1': hidden}}),
        'b1.lab2': _patch.outcome(by_name['b1.lab2'], 'rolled_back', 'health check failed'),
    }
    rep = _patch.report(entries, outcomes)
    status = {v['name']: v['status'] for v in rep['ves']}
    assert status == {'a1.lab1': 'patched', 'b1.lab2': 'rolled_back', 'a3.lab1': 'not_reached',
                      'b2.lab2': 'not_reached', 'b3.lab2': 'not_reached', 'a2.lab1': 'skipped',
                      'a4.lab1': 'skipped', 'a5.lab1': 'skipped'}
    assert rep['summary'] == {'patched': 1, 'rolled_back': 1, 'failed': 0, 'skipped': 3, 'not_reached': 3}
    assert rep['hidden_files'] == {'a1.lab1': hidden}
    assert rep['ves'][0]['name'] == 'a1.lab1'
    assert '1 hidden file(s)' in rep['lines'][1] and rep['lines'][-1].startswith('patched 1, rolled back 1')
    with pytest.raises(VzError):
        _patch.outcome(by_name['a1.lab1'], 'exploded')


# -- filters ------------------------------------------------------------------------------------------
def test_filters_raise_ansible_errors_and_read_hostvars():
    filters = patch_filter.FilterModule().filters()
    with pytest.raises(AnsibleFilterError, match="'ten' is not a batch size"):
        filters['patch_batches'](['ten'])
    with pytest.raises(AnsibleFilterError, match='not a health check'):
        filters['patch_health']({'kind': 'ping'})
    entries = filters['patch_plan'](_fleet(), 'busybox', V2)
    first = entries[0]
    hostvars = {first['name']: {'patch_outcome': filters['patch_outcome'](first, 'patched')}, 'other': {}}
    rep = filters['patch_report'](entries, hostvars)
    assert rep['summary']['patched'] == 1 and rep['summary']['not_reached'] == 4
    assert filters['patch_batch_sizes']([1, '50%'], 6) == [1, 3, 2]
    assert filters['patch_healthy']({'rc': 0}, filters['patch_health']({'kind': 'command', 'command': ['true']}))
    assert filters['patch_argv_line'](['a b']) == "'a b'"
    assert filters['patch_fail_percentage'](25) == 25


# -- source of the new version ---------------------------------------------------------------------------
def test_source_chooses_build_host_and_refuses_unknown():
    fleet = _fleet()
    fleet[0]['versions'] = [V1]
    fleet[1]['versions'] = []
    assert _patch.source(fleet, 'busybox') == {'host': 'lab2', 'newest': V1, 'versions': [V1], 'address': 'lab2',
                                               'vz_root': '/var/lib/vz'}
    fleet[1]['versions'] = [V1, V2]
    assert _patch.source(fleet, 'busybox')['host'] == 'lab1'
    assert _patch.source(fleet, 'busybox', host='lab2', version=V1)['newest'] == V1
    with pytest.raises(VzError, match='unknown template busybox: no reachable host'):
        _patch.source([dict(f, versions=[]) for f in fleet], 'busybox')
    with pytest.raises(VzError, match='has no version 20261201-080001 on lab1'):
        _patch.source(fleet, 'busybox', version='20261201-080001')
    with pytest.raises(VzError, match='not a host of the play'):
        _patch.source(fleet, 'busybox', host='lab7')
    fleet[1]['reachable'] = False
    with pytest.raises(VzError, match='lab1 is unreachable'):
        _patch.source(fleet, 'busybox', host='lab1')
