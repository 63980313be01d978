"""Names, paths and addresses are checked before any path is built."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


@pytest.mark.parametrize('name', ['a', 'web1', 'db-01', 'a' * 63, 'x-y-z'])
def test_good_ve_names(name):
    assert _validate.ve_name(name) == name


@pytest.mark.parametrize('name', ['../x', 'a/b', 'x;reboot', '$(id)', 'a\nb', '-x', 'x-', 'Upper', 'a' * 64,
                                  '', '1abc', 'a b', 'a.b', None, 5, '\u0430bc'])
def test_bad_ve_names(name):
    with pytest.raises(VzError) as err:
        _validate.ve_name(name)
    assert 'invalid VE name' in str(err.value)


def test_newline_stays_visible_in_message():
    with pytest.raises(VzError) as err:
        _validate.ve_name('a\nb')
    assert "'a\\nb'" in str(err.value)


@pytest.mark.parametrize('ref,expected', [
    ('busybox', ('busybox', None)),
    ('debian-12+nginx@20261125-101500', ('debian-12+nginx', '20261125-101500')),
])
def test_template_refs(ref, expected):
    assert _validate.template_ref(ref) == expected


@pytest.mark.parametrize('ref', ['', '../etc', 'busybox@', 'busybox@latest', 'busybox@2026-11-25', 'Busybox',
                                 'a/b', '.hidden', 'busybox@20261125-101500/..'])
def test_bad_template_refs(ref):
    with pytest.raises(VzError):
        _validate.template_ref(ref)


@pytest.mark.parametrize('path', ['relative/vz', '/', '//', '/var/../', '/var/lib/vz:x', '/var/lib/v z', '',
                                  None, '/var/lib/vz\n'])
def test_bad_vz_root(path):
    with pytest.raises(VzError) as err:
        _validate.vz_root(path)
    assert 'vz_root' in str(err.value)


def test_vz_root_normalized():
    assert _validate.vz_root('/var/lib/vz/') == '/var/lib/vz'


def test_host_path_inside_vz_root_refused(tmp_path):
    root = tmp_path / 'vz'
    (root / 'ves').mkdir(parents=True)
    with pytest.raises(VzError) as err:
        _validate.host_path(str(root / 'ves'), 'mount source', forbidden_root=str(root))
    assert 'inside or contains vz_root' in str(err.value)
    with pytest.raises(VzError):  # a parent of vz_root would expose it too
        _validate.host_path(str(tmp_path), 'mount source', forbidden_root=str(root))


def test_host_path_through_symlink_into_vz_root_refused(tmp_path):
    root = tmp_path / 'vz'
    root.mkdir()
    link = tmp_path / 'innocent'
    link.symlink_to(root)
    with pytest.raises(VzError):
        _validate.host_path(str(link), 'mount source', forbidden_root=str(root))


@pytest.mark.parametrize('path,error', [('rel/dir', 'absolute'), ('/does/not/exist/x', 'does not exist')])
def test_host_path_errors(path, error):
    with pytest.raises(VzError) as err:
        _validate.host_path(path, 'mount source', forbidden_root='/var/lib/vz')
    assert error in str(err.value)


@pytest.mark.parametrize('path,expected', [('/srv/www', 'srv/www'), ('/a//b/', 'a/b')])
def test_ve_paths(path, expected):
    assert _validate.ve_path(path, 'target') == expected


@pytest.mark.parametrize('path', ['srv', '/', '/a/../b', '/a/./b', '/a b'])
def test_bad_ve_paths(path):
    with pytest.raises(VzError):
        _validate.ve_path(path, 'target')


def test_ipv4_interface():
    assert str(_validate.ipv4_interface('10.20.0.5/24', 'addr')) == '10.20.0.5/24'
    for bad in ('10.20.0.5', '10.20.0.0/24', '10.20.0.255/24', '300.1.1.1/24', 'x/24'):
        with pytest.raises(VzError):
            _validate.ipv4_interface(bad, 'addr')


def test_hwaddr():
    assert _validate.hwaddr('02:AA:bb:00:11:22') == '02:aa:bb:00:11:22'
    for bad in ('01:00:5e:00:00:01', '02:aa:bb', 'zz:aa:bb:cc:dd:ee'):
        with pytest.raises(VzError):
            _validate.hwaddr(bad)


@pytest.mark.parametrize('value', ['vz', 'machine.slice/vz', 'vzlab-lab1'])
def test_cgroup_parent(value):
    assert _validate.cgroup_parent(value) == value


@pytest.mark.parametrize('value', ['/vz', '../vz', 'vz/..', 'a b', ''])
def test_bad_cgroup_parent(value):
    with pytest.raises(VzError):
        _validate.cgroup_parent(value)
