# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the osvirt.vz.host role on lab hosts (molecule scenario ``host``)."""

from __future__ import annotations

import json

testinfra_hosts = ['ansible://vz_hosts']

VZ_ROOT = '/var/lib/vz'


def _vars(host):
    return host.ansible.get_variables()


def test_host_json_names_parent_and_bridge(host):
    settings = json.loads(host.file(VZ_ROOT + '/host.json').content_string)
    assert settings['cgroup_parent'] == _vars(host)['host_cgroup_parent']
    assert settings['bridge'] == 'vzbr0'


def test_data_root_layout(host):
    root = host.file(VZ_ROOT)
    assert root.is_directory and root.mode == 0o711
    for sub, mode in (('templates', 0o711), ('ves', 0o711), ('.tmp', 0o700), ('locks', 0o700)):
        entry = host.file('%s/%s' % (VZ_ROOT, sub))
        assert entry.is_directory and entry.mode == mode, sub


def test_cgroup_parent_in_every_hierarchy(host):
    parent = _vars(host)['host_cgroup_parent']
    mounts = host.check_output("awk '$3 ~ /^cgroup/ {print $2}' /proc/self/mounts").split()
    controllers = [m for m in mounts if any(c in m for c in ('memory', 'pids', 'cpu,', 'cpuset'))]
    assert controllers, mounts
    for mount in controllers:
        assert host.file('%s/%s' % (mount, parent)).is_directory, mount


def test_bridge_with_gateway_and_pool(host):
    bridge = host.interface('vzbr0')
    assert bridge.exists
    assert '10.20.0.1' in bridge.addresses
    recorded = json.loads(host.file(VZ_ROOT + '/net/bridges/vzbr0.json').content_string)
    assert recorded['pool4'] == _vars(host)['lab_pool4']


def test_subordinate_ids_of_root(host):
    for path in ('/etc/subuid', '/etc/subgid'):
        assert 'root:100000:65536' in host.file(path).content_string.split()


def test_hook_and_boot_helper(host):
    for name in ('net-hook', 'autostart'):
        tool = host.file('/usr/libexec/osvirt-vz/' + name)
        assert tool.is_file and tool.mode == 0o755, name
    for module in ('osvirt_vz_shaping.py', 'osvirt_vz_antispoof.py', 'osvirt_vz_nft.py', 'osvirt_vz_cgroups.py'):
        assert host.file('/usr/libexec/osvirt-vz/' + module).is_file, module


def test_autostart_unit_where_systemd_runs(host):
    unit = host.file('/etc/systemd/system/osvirt-vz-autostart.service')
    if host.file('/run/systemd/system').is_directory:
        assert unit.is_file and host.service('osvirt-vz-autostart').is_enabled
    else:
        # a host without systemd gets no unit; the boot helper is run by whatever inits it
        assert host.file('/usr/libexec/osvirt-vz/autostart').is_file
