"""VE metadata normalisation and the LXC config a VE gets."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._ve_net import (
    derived_hwaddr, host_link_name, normalize_network, resolv_conf)
from ansible_collections.osvirt.vz.plugins.module_utils._ve_config import config_digest, render_config
from ansible_collections.osvirt.vz.plugins.module_utils._ves import normalize_mounts


class FakeHost:
    vz_root = '/var/lib/vz'
    bridge = 'vzbr0'
    cgroup_parent = 'vz'
    routed_pool4 = '10.30.0.0/28'
    routed_pool6 = None
    bridges = {
        'vzbr0': {'name': 'vzbr0', 'ipv4': ['10.20.0.1/24'], 'ipv6': ['fd00:20::1/64'],
                  'pool4': '10.20.0.128/25', 'pool6': 'fd00:20::/112'},
        'nopool0': {'name': 'nopool0', 'ipv4': ['10.40.0.1/24']},
    }

    def ve_dir(self, name):
        return '/var/lib/vz/ves/' + name

    def bridge_exists(self, name):
        return name in self.bridges

    def bridge_settings(self, name):
        return self.bridges.get(name, {})


def test_network_defaults():
    net = normalize_network('web1', [{'ipv4': ['10.20.0.5/24'], 'gateway4': '10.20.0.1'}], FakeHost())
    assert net == [{'name': 'eth0', 'mode': 'bridged', 'bridge': 'vzbr0', 'ipv4': ['10.20.0.5/24'], 'ipv6': [],
                    'auto4': False, 'auto6': False, 'gateway4': '10.20.0.1', 'gateway6': None,
                    'hwaddr': derived_hwaddr('web1', 'eth0'), 'mtu': None, 'host_link': host_link_name('web1', 0),
                    'nameservers': [], 'searchdomains': []}]


def test_network_auto_is_pending_then_kept():
    net = normalize_network('web1', [{'ipv4': 'auto', 'ipv6': ['auto', 'fd00:20::5/64']}], FakeHost())
    iface = net[0]
    assert iface['ipv4'] == [] and iface['auto4'] and iface['auto6']
    assert iface['ipv6'] == ['fd00:20::5/64']
    # the bridge's own address in the pool's subnet is the default gateway and never handed out
    assert iface['gateway4'] == '10.20.0.1' and iface['gateway6'] == 'fd00:20::1'
    assert iface['pending'] == [
        {'key': 'ipv4', 'pool': '10.20.0.128/25', 'prefixlen': 24, 'exclude': ['10.20.0.1']},
        {'key': 'ipv6', 'pool': 'fd00:20::/112', 'prefixlen': 64, 'exclude': ['fd00:20::1']}]
    current = [dict(iface, ipv4=["10.20.0.129/24"], ipv6=["fd00:20::5/64", "fd00:20::9/64"])]
    current[0].pop('pending')
    again = normalize_network('web1', [{'ipv4': ['auto'], 'ipv6': ['auto', 'fd00:20::5/64']}], FakeHost(),
                              current=current)
    assert again[0]['ipv4'] == ['10.20.0.129/24'] and 'pending' not in again[0]
    assert again[0]['ipv6'] == ['fd00:20::5/64', 'fd00:20::9/64']
    # stored metadata normalizes to itself (a task without network keeps the VE's interfaces)
    assert normalize_network('web1', again, FakeHost(), current=again) == again


def test_network_routed():
    net = normalize_network('web1', [{'mode': 'routed', 'ipv4': ['10.30.0.5', '10.30.0.6/32']},
                                     {'mode': 'routed', 'ipv4': ['auto'], 'ipv6': ['fd00:30::7']}], FakeHost())
    assert net[0]['ipv4'] == ['10.30.0.5/32', '10.30.0.6/32'] and net[0]['bridge'] is None
    assert net[0]['gateway4'] == '169.254.0.1' and net[0]['gateway6'] is None
    assert net[1]['ipv6'] == ['fd00:30::7/128'] and net[1]['gateway6'] == 'fe80::1'
    assert net[1]['pending'] == [{'key': 'ipv4', 'pool': '10.30.0.0/28', 'prefixlen': 32, 'exclude': []}]
    items = dict(render_config(FakeHost(), _meta(network=net), ['/l'], {}))
    assert items['lxc.net.0.veth.mode'] == 'router' and 'lxc.net.0.link' not in items
    assert items['lxc.net.1.ipv6.gateway'] == 'fe80::1'


def test_resolver():
    net = normalize_network('web1', [{'ipv4': ['10.20.0.5/24'], 'nameservers': ['10.20.0.1', 'fd00:20::1'],
                                      'searchdomains': ['Example.test.']}], FakeHost())
    assert resolv_conf(net).splitlines()[1:] == ['nameserver 10.20.0.1', 'nameserver fd00:20::1',
                                                 'search example.test']
    assert resolv_conf(normalize_network('web1', [{}], FakeHost())) is None


def test_address_and_gateway_keys_are_live_except_routed_gateways():
    base = [('lxc.net.0.type', 'veth'), ('lxc.net.0.link', 'vzbr0')]
    assert config_digest(base + [('lxc.net.0.ipv4.address', '10.20.0.5/24'), ('lxc.net.0.ipv4.gateway', 'x')]) == \
        config_digest(base + [('lxc.net.0.ipv4.address', '10.20.0.6/24')])
    assert config_digest(base) != config_digest(base[:1] + [('lxc.net.0.link', 'other')])
    routed = [('lxc.net.0.type', 'veth'), ('lxc.net.0.veth.mode', 'router')]
    assert config_digest(routed + [('lxc.net.0.ipv4.address', '10.30.0.5/32')]) == config_digest(routed)
    assert config_digest(routed + [('lxc.net.0.ipv4.gateway', '169.254.0.1')]) != config_digest(routed)


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
    ([{'mode': 'venet'}], 'not supported'),
    ([{'ipv4': ['10.20.0.5/24'], 'gateway4': '10.30.0.1'}], 'not in the subnet'),
    ([{'ipv4': ['10.20.0.5']}], 'prefix length'),
    ([{'ipv4': ['10.20.0.300/24']}], 'not a valid IPv4 address'),
    ([{'ipv6': ['fd00:20::g/64']}], 'not a valid IPv6 address'),
    ([{'ipv4': ['10.20.0.5/24']}, {'name': 'eth1', 'ipv4': ['10.20.0.5/16']}], 'listed twice'),
    ([{'ipv4': ['10.20.0.1/24']}], 'own address of bridge'),
    ([{'ipv4': ['auto', 'auto']}], 'more than once'),
    ([{'bridge': 'nopool0', 'ipv4': ['auto']}], 'bridge nopool0 has none'),
    ([{'mode': 'routed', 'ipv6': ['auto']}], 'routed pool'),
    ([{'bridge': 'nosuch0'}], 'bridge nosuch0 does not exist on this host'),
    ([{'mode': 'routed', 'bridge': 'vzbr0'}], 'only for mode bridged'),
    ([{'mode': 'routed', 'ipv4': ['10.30.0.5/24']}], 'single addresses'),
    ([{'mode': 'routed', 'ipv4': ['10.30.0.5'], 'gateway4': '10.30.0.1'}], 'cannot be set in routed mode'),
    ([{'gateway6': 'fd00:20::1'}], 'needs an ipv6 address'),
    ([{'ipv4': ['127.0.0.2/8']}], 'cannot be given to a VE'),
    ([{'mtu': 67}], 'out of range'),
    ([{'mtu': 65536}], 'out of range'),
    ([{'nameservers': ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.0.4']}], 'at most 3'),
    ([{'nameservers': ['dns.example']}], 'not a valid IP address'),
    ([{'searchdomains': ['bad_domain!']}], 'invalid VE web1 interface eth0 search domain'),
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
    assert [v for k, v in items if k == 'lxc.net.0.ipv4.address'] == ['10.20.0.5/24 10.20.0.255',
                                                                      '10.20.0.6/24 10.20.0.255']
    assert config['lxc.mount.entry'] == '%s data none bind,create=dir,ro 0 0' % tmp_path


def test_json_cut_short_is_an_error_naming_the_file(tmp_path):
    from ansible_collections.osvirt.vz.plugins.module_utils._fs import read_json
    from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
    from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager
    (tmp_path / 'host.json').write_text('{"bridge": ')
    with pytest.raises(VzError, match=r'host.json is not valid JSON .*cut short'):
        Host(vz_root=str(tmp_path))
    (tmp_path / 'host.json').write_text('{}')
    assert read_json(str(tmp_path / 'missing.json'), {}) == {}
    (tmp_path / 'ves' / 'web1').mkdir(parents=True)
    (tmp_path / 'ves' / 'web1' / 've.json').write_bytes(b'')
    manager = VeManager(Host(vz_root=str(tmp_path)), client=None)
    with pytest.raises(VzError, match=r'VE web1 is broken: .*ve.json is not valid JSON \(an empty file\)'):
        manager.read_meta('web1')
    assert manager.read_meta('web1', broken_ok=True)['broken'].startswith('VE web1 is broken')
    (tmp_path / 'ves' / 'web1' / 'running.json').write_text('{"pid": 1')
    assert manager.running_digest('web1', 1, []) == manager.running_digest('web1', None, [])
