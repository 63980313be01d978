"""Pure logic of the inventory plugin: the remote listing, its parsing, VE inventory names, groups."""

import json
import subprocess
import sys

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import LxcClient
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.plugin_utils import _fleet

LS = ('NAME   STATE   PID\n'
      'web1   RUNNING 4242\n'
      'db1    STOPPED -\n'
      'frz    FROZEN  77\n')


def listing(meta, ls=LS, rc=0, found=True, bad=None):
    return json.dumps({'found': found, 'ls': [rc, ls, ''], 'meta': meta, 'bad': bad or {}, 'host': None})


def test_parse_listing_merges_states_and_metadata():
    meta = {
        'web1': {'template': 'debian-12@20261125-101500', 'hostname': 'www',
                 'network': [{'name': 'eth0', 'ipv4': ['10.20.0.5/24', '10.20.0.6/24']}],
                 'limits': {'memory': {'ram': '512M'}}, 'autostart': True, 'owner': 'team-a'},
        'db1': {'template': 'busybox@20261125-101501'},
        'frz': {'template': 'busybox@20261125-101501'},
        'new1': {'template': 'busybox@20261125-101501'},   # created, not yet seen by lxc-ls
    }
    ves, warnings = _fleet.parse_listing(listing(meta))
    assert warnings == []
    by_name = {v['name']: v for v in ves}
    assert [v['name'] for v in ves] == ['db1', 'frz', 'new1', 'web1']
    web = by_name['web1']
    assert (web['state'], web['pid']) == ('running', 4242)
    assert (web['template'], web['template_name'], web['template_version']) == \
        ('debian-12@20261125-101500', 'debian-12', '20261125-101500')
    assert web['addresses'] == ['10.20.0.5', '10.20.0.6']
    assert web['limits'] == {'memory': {'ram': '512M'}}
    assert web['hostname'] == 'www' and web['autostart'] is True and web['owner'] == 'team-a'
    assert (by_name['db1']['state'], by_name['db1']['pid']) == ('stopped', None)
    assert by_name['frz']['state'] == 'frozen'
    assert by_name['new1']['state'] == 'stopped' and by_name['new1']['hostname'] == 'new1'


def test_parse_listing_skips_bad_names_and_reports_unreadable_metadata():
    meta = {'Bad Name': {'template': 'x@1'}, 'ok1': {'template': 'busybox@20261125-101501'},
            'weird': ['not', 'a', 'dict']}
    ves, warnings = _fleet.parse_listing(listing(meta, bad={'broken': 'Expecting value'}))
    assert [v['name'] for v in ves] == ['ok1']
    assert any('broken' in w and 'Expecting value' in w for w in warnings)
    assert any("'Bad Name'" in w for w in warnings)
    assert any("'weird'" in w for w in warnings)


def test_parse_listing_without_store_is_empty():
    assert _fleet.parse_listing(json.dumps({'found': False})) == ([], [])


@pytest.mark.parametrize('text,error', [
    ('Traceback (most recent call last)', 'not JSON'),
    ('[]', 'unexpected shape'),
    (listing({}, ls='', rc=1), 'lxc-ls failed (rc=1)'),
])
def test_parse_listing_errors(text, error):
    with pytest.raises(VzError, match=error.replace('(', r'\(').replace(')', r'\)')):
        _fleet.parse_listing(text)


def test_listing_script_runs_and_reads_a_store(tmp_path):
    """The remote script, run here with a fake lxc-ls, produces what parse_listing reads."""
    ves = tmp_path / 'ves'
    (ves / 'web1').mkdir(parents=True)
    (ves / 'web1' / 've.json').write_text(json.dumps({'template': 'busybox@20261125-101500'}))
    (ves / 'junk').mkdir()                      # no ve.json: not ours, ignored
    (ves / 'broken').mkdir()
    (ves / 'broken' / 've.json').write_text('{')
    fake_ls = [sys.executable, '-c', 'print("NAME STATE PID"); print("web1 RUNNING 12")']
    argv = _fleet.listing_argv(sys.executable, fake_ls, str(tmp_path))
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    found, warnings = _fleet.parse_listing(out)
    assert [(v['name'], v['state'], v['pid']) for v in found] == [('web1', 'running', 12)]
    assert len(warnings) == 1 and 'broken' in warnings[0]


def test_listing_uses_the_clients_listing_argv():
    argv = _fleet.listing_argv('/usr/bin/python3', LxcClient('/var/lib/vz/ves').list_argv(), '/var/lib/vz')
    assert argv[:2] == ['/usr/bin/python3', '-c']
    assert json.loads(argv[3]) == ['lxc-ls', '-P', '/var/lib/vz/ves', '--fancy', '--fancy-format', 'NAME,STATE,PID']
    assert argv[4] == '/var/lib/vz'


@pytest.mark.parametrize('fmt,ve,host,expected', [
    ('{ve}.{host}', 'web1', 'lab1', 'web1.lab1'),
    ('{host}-{ve}', 'web1', 'h1.example.com', 'h1.example.com-web1'),
    ('{ve}', 'web1', 'lab1', 'web1'),
])
def test_inventory_name(fmt, ve, host, expected):
    assert _fleet.inventory_name(_fleet.check_name_format(fmt), ve, host) == expected


def test_default_name_format_keeps_same_ve_on_two_hosts_apart():
    fmt = _fleet.DEFAULT_NAME_FORMAT
    assert _fleet.inventory_name(fmt, 'web1', 'lab1') != _fleet.inventory_name(fmt, 'web1', 'lab2')


@pytest.mark.parametrize('fmt,error', [
    ('{host}', 'must contain {ve}'),
    ('{ve.__class__}', 'only the fields'),
    ('{ve[0]}', 'only the fields'),
    ('{ve!r}', 'only the fields'),
    ('{ve:>10}', 'only the fields'),
    ('{name}', 'only the fields'),
    ('{ve', 'not a valid format'),
    ('', 'non-empty'),
])
def test_bad_name_formats(fmt, error):
    with pytest.raises(VzError, match=error.replace('{', r'\{').replace('}', r'\}')):
        _fleet.check_name_format(fmt)


def test_group_names_are_pattern_safe():
    assert _fleet.group_name('template_', 'debian-12+nginx') == 'template_debian_12_nginx'
    assert _fleet.group_name('vz_host_', 'h1.example.com') == 'vz_host_h1_example_com'
    ve = {'state': 'running', 'template_name': 'debian-12'}
    assert _fleet.default_groups('lab1', ve) == ['vz_host_lab1', 'state_running', 'template_debian_12']
    assert _fleet.default_groups('lab1', {'state': 'stopped', 'template_name': None}) == \
        ['vz_host_lab1', 'state_stopped']
