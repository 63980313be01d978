"""Facts of a host for placement (_host_facts): sums of guarantees, drain mark, a host with nothing yet."""

import json
import os

from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._host_facts import host_facts


class FakeClient:
    def __init__(self, states):
        self.states = states

    def list(self):
        return self.states


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        json.dump(data, handle)


def test_fresh_host_without_vz_root(tmp_path):
    root = tmp_path / 'never' / 'vz'
    facts = host_facts(Host(vz_root=str(root)), FakeClient({}), {})
    assert facts['ves'] == {} and facts['templates'] == {} and facts['draining'] is None
    assert facts['guaranteed'] == {'memory': 0, 'net': 0, 'disk': 0}
    assert facts['capacity']['memory'] > 0 and facts['capacity']['disk_free'] > 0 and facts['capacity']['cpus'] >= 1
    assert facts['capacity']['net'] == 10 ** 10 and facts['overcommit'] == 1.0
    assert not root.parent.exists()    # read-only: nothing made


def test_guarantees_ves_templates_and_drain_mark(tmp_path):
    root = tmp_path / 'vz'
    mark = {'since': '2026-12-07T23:00:00Z', 'reason': 'kernel update', 'by': 'evacuate'}
    _write(str(root / 'host.json'), {'cgroup_parent': 'vzlab-lab1', 'bridge': 'vzbr0', 'overcommit': 1.5,
                                     'net_capacity': 10 ** 9, 'draining': mark})
    _write(str(root / 'ves/web1/ve.json'), {'name': 'web1', 'owner': 'provision', 'template': 'busybox@20261125-101500',
                                            'limits': {'memory': {'guarantee': 64 << 20, 'ram': 128 << 20},
                                                       'net': {'rate': 10 ** 7}, 'disk': {'space': 1 << 30}}})
    _write(str(root / 'ves/web2/ve.json'), {'name': 'web2', 'owner': None, 'template': 'busybox@20261125-101500',
                                            'limits': {'memory': {'guarantee': 32 << 20}}})
    os.makedirs(str(root / 'ves/not-a-ve'))
    _write(str(root / 'templates/busybox/20261125-101500/manifest.json'), {'name': 'busybox'})
    _write(str(root / 'templates/busybox/20261201-080000/manifest.json'), {'name': 'busybox'})
    os.makedirs(str(root / 'templates/empty'))
    settings = json.loads((root / 'host.json').read_text())
    facts = host_facts(Host(vz_root=str(root)), FakeClient({'web1': {'state': 'running', 'pid': 42}}), settings)
    assert facts['cgroup_parent'] == 'vzlab-lab1' and facts['overcommit'] == 1.5
    assert facts['draining'] == mark
    assert facts['capacity']['net'] == 10 ** 9
    assert facts['guaranteed'] == {'memory': 96 << 20, 'net': 10 ** 7, 'disk': 1 << 30}
    assert facts['ves'] == {'web1': {'owner': 'provision', 'template': 'busybox@20261125-101500', 'state': 'running'},
                            'web2': {'owner': None, 'template': 'busybox@20261125-101500', 'state': 'stopped'}}
    assert facts['templates'] == {'busybox': ['20261125-101500', '20261201-080000']}


def test_broken_ve_is_listed_not_fatal(tmp_path):
    root = tmp_path / 'vz'
    os.makedirs(str(root / 'ves/bad'))
    (root / 'ves/bad/ve.json').write_text('{"name": "bad", ')
    facts = host_facts(Host(vz_root=str(root)), FakeClient({}), {})
    assert 'broken' in facts['ves']['bad'] and facts['guaranteed']['memory'] == 0
