"""The per-VE steps that migration, snapshots and backups share with VeManager (_ve_ops.VeOps):
registration files, leases and removal on a VE store in tmp_path (no LXC, no cgroups touched)."""

import json
import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils import _ve_net
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._ve_ops import VeOps

NETWORK = [{'name': 'eth0', 'ipv4': ['10.20.0.5/24'], 'ipv6': ['fd00:20::5/64'], 'host_link': 'vzunit0'}]


@pytest.fixture
def ops(tmp_path, monkeypatch):
    monkeypatch.setattr(_ve_net, 'antispoof_module', lambda: None)   # no nft on the machine running the tests
    host = Host(vz_root=str(tmp_path), cgroup_parent='vz-unit-test-%d' % os.getpid())
    (tmp_path / '.tmp').mkdir()
    (tmp_path / 'ves').mkdir()
    return VeOps(host, client=None)


def _ve(ops, name, meta=None):
    directory = os.path.join(ops.host.ves_dir, name)
    os.makedirs(os.path.join(directory, 'private', 'upper', 'etc'))
    with open(os.path.join(directory, 'private', 'upper', 'etc', 'hostname'), 'w') as handle:
        handle.write(name + '\n')
    if meta is not None:
        with open(os.path.join(directory, 've.json'), 'w') as handle:
            json.dump(dict(meta, name=name), handle)
        with open(os.path.join(directory, 'config'), 'w') as handle:
            handle.write('lxc.uts.name = %s\nlxc.environment = KEEP=1\n' % name)
    return directory


def test_register_needs_the_private_area(ops):
    with pytest.raises(VzError, match='private area'):
        ops.register({'name': 'web1'}, {'name': 'busybox', 'version': '1'})
    assert not os.path.exists(os.path.join(ops.host.ves_dir, 'web1', 've.json'))


def test_write_registration_keeps_the_operators_keys(ops):
    directory = _ve(ops, 'web1', {'template': 'busybox@1'})
    ops.write_registration('web1', {'name': 'web1', 'template': 'busybox@2'}, [('lxc.uts.name', 'www')])
    assert ops.read_meta('web1')['template'] == 'busybox@2'
    config = open(os.path.join(directory, 'config')).read()
    assert 'lxc.uts.name = www' in config and 'lxc.environment = KEEP=1' in config
    assert ops.config_on_disk('web1') == [('lxc.uts.name', 'www')]


def test_claim_addresses_is_idempotent_and_undone_on_a_conflict(ops):
    _ve(ops, 'web1', {'network': NETWORK})
    assert ops.claim_addresses('web1', NETWORK) == ['10.20.0.5', 'fd00:20::5']
    assert ops.claim_addresses('web1', NETWORK) == []
    _ve(ops, 'web2', {})
    other = [{'name': 'eth0', 'ipv4': ['10.20.0.6/24'], 'ipv6': ['fd00:20::5/64']}]
    with pytest.raises(VzError, match='already used by VE web1'):
        ops.claim_addresses('web2', other)
    assert ops.net.leases.owner('10.20.0.6') is None      # the lease made before the conflict is gone
    assert ops.net.leases.owner('fd00:20::5')['ve'] == 'web1'


def test_unregister_keeping_the_private_area(ops):
    directory = _ve(ops, 'web1', {'network': NETWORK})
    ops.claim_addresses('web1', NETWORK)
    ops.unregister('web1', keep_private=True)
    assert sorted(os.listdir(directory)) == ['private']
    assert open(os.path.join(directory, 'private', 'upper', 'etc', 'hostname')).read() == 'web1\n'
    assert ops.names() == [] and ops.net.leases.owner('10.20.0.5') is None
    ops.unregister('web1', meta={}, keep_private=True)     # idempotent
    with pytest.raises(VzError, match='not managed by osvirt.vz'):
        ops.read_meta('web1')                              # nothing will overwrite what is left


def test_unregister_with_the_private_area(ops):
    _ve(ops, 'web1', {'network': NETWORK})
    ops.claim_addresses('web1', NETWORK)
    ops.unregister('web1')
    assert not os.path.lexists(os.path.join(ops.host.ves_dir, 'web1'))
    assert os.listdir(ops.host.tmp_dir) == [] and ops.net.leases.owner('10.20.0.5') is None
    ops.unregister('web1')                                 # idempotent
