"""VE metadata normalisation and the LXC config a VE gets."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._ves import (
    derived_hwaddr, host_link_name, normalize_mounts, normalize_network, render_config)


class FakeHost:
    vz_root = '/var/lib/vz'
    bridge = 'vzbr0'
    cgroup_parent = 'vz'

    def ve_dir(self, name):
        return '/var/lib/vz/ves/' + name


def test_network_defaults():
    net = normalize_network('web1', [{'ipv4': ['10.20.0.5/24'], 'gateway4': '10.20.0.1'}], FakeHost())
    assert net == [{'name': 'eth0', 'mode': 'bridged', 'bridge': 'vzbr0', 'ipv4': ['10.20.0.5/24'],
                    'gateway4': '10.20.0.1', 'hwaddr': derived_hwaddr('web1', 'eth0'), 'mtu': None,
                    'host_link': host_link_name('web1', 0)}]


def test_hwaddr_is_stable_local_unicast_and_distinct():
    mac = derived_hwaddr('web1', 'eth0')
    assert mac == derived_hwaddr('web1', 'eth0')
    assert mac != derived_hwaddr('web2', 'eth0')
    first = int(mac.split(':', 1)[0], 16)
    assert first & 2 and not first & 1


def test_host_link_name_fits_ifnamsiz():
    assert len(host_link_name('a' * 63, 9)) <= 15


@pytest.mark.parametrize('network,error', [
    ([{'name': 'eth0'}, {'name': 'eth0'}], 'used twice'),
    ([{'mode': 'routed'}], 'not supported'),
    ([{'ipv4': ['10.20.0.5/24'], 'gateway4': '10.30.0.1'}], 'not in the subnet'),
    ([{'ipv4': ['10.20.0.5']}], 'prefix length'),
    ([{'mtu': 100}], 'out of range'),
    ([{'name': 'a-very-long-interface-name'}], 'invalid interface name'),
    (['eth0'], 'must be a dict'),
])
def test_network_errors(network, error):
    with pytest.raises(VzError) as err:
        normalize_network('web1', network, FakeHost())
    assert error in str(err.value)


def test_mounts(tmp_path):
    src = tmp_path / 'www'
    src.mkdir()
    mounts = normalize_mounts('web1', [{'source': str(src), 'target': '/var/www', 'readonly': True}], FakeHost())
    assert mounts == [{'source': str(src), 'target': '/var/www', 'readonly': True}]
    with pytest.raises(VzError) as err:
        normalize_mounts('web1', [{'source': str(src), 'target': '/a'}, {'source': str(src), 'target': '/a/'}],
                         FakeHost())
    assert 'used twice' in str(err.value)


def _meta(**extra):
    meta = {'name': 'web1', 'hostname': None, 'autostart': False, 'mounts': [], 'network': [],
            'privileged': False, 'idmap': {'uid': 100000, 'gid': 100000, 'count': 65536},
            'cgroup_parent': 'vz', 'apparmor': False}
    meta.update(extra)
    return meta


def test_config_security_defaults():
    items = render_config(FakeHost(), _meta(), ['/t/busybox/v/idmap/x/rootfs'], {'halt_signal': 'SIGUSR1'})
    config = dict(items)
    assert config['lxc.rootfs.path'] == 'overlay:/t/busybox/v/idmap/x/rootfs:/var/lib/vz/ves/web1/private/upper'
    assert ('lxc.idmap', 'u 0 100000 65536') in items and ('lxc.idmap', 'g 0 100000 65536') in items
    assert config['lxc.mount.auto'] == 'proc:mixed sys:mixed cgroup:mixed'
    assert set('sys_module sys_time sys_rawio mac_admin mac_override'.split()) <= set(config['lxc.cap.drop'].split())
    assert config['lxc.seccomp.profile'].endswith('common.seccomp')
    assert config['lxc.cgroup.dir.container'] == 'vz/web1'
    assert config['lxc.cgroup.dir.monitor'] == 'vz.monitor/web1'
    assert config['lxc.signal.halt'] == 'SIGUSR1'
    assert config['lxc.net.0.type'] == 'empty'
    assert 'lxc.apparmor.profile' not in config


def test_config_privileged_has_no_idmap_and_apparmor_when_host_has_it():
    items = render_config(FakeHost(), _meta(idmap=None, privileged=True, apparmor=True), ['/l'], {})
    keys = [k for k, _v in items]
    assert 'lxc.idmap' not in keys
    assert ('lxc.apparmor.profile', 'generated') in items


def test_config_network_and_mounts(tmp_path):
    net = normalize_network('web1', [{'ipv4': ['10.20.0.5/24', '10.20.0.6/24'], 'gateway4': '10.20.0.1',
                                      'mtu': 1400}], FakeHost())
    items = render_config(FakeHost(), _meta(network=net, autostart=True, hostname='www',
                                            mounts=[{'source': str(tmp_path), 'target': '/data',
                                                     'readonly': True}]), ['/l'], {})
    config = dict(items)
    assert config['lxc.uts.name'] == 'www'
    assert config['lxc.start.auto'] == '1'
    assert config['lxc.net.0.link'] == 'vzbr0' and config['lxc.net.0.mtu'] == '1400'
    assert [v for k, v in items if k == 'lxc.net.0.ipv4.address'] == ['10.20.0.5/24', '10.20.0.6/24']
    assert config['lxc.mount.entry'] == '%s data none bind,create=dir,ro 0 0' % tmp_path
