"""Which version a VE moves to (template: name@version, rebase: latest), the prune plan, and the
SSH command of template copies: pure logic on fake stores in tmp_path."""

import json
import shlex

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._rsync import Remote
from ansible_collections.osvirt.vz.plugins.module_utils._templates import TemplateStore
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager

V1, V2, V3 = '20261101-000000', '20261102-000000', '20261103-000000'


def _publish(root, name, version, parent=None):
    directory = root / 'templates' / name / version
    (directory / 'rootfs').mkdir(parents=True)
    (directory / 'manifest.json').write_text(json.dumps({'name': name, 'version': version, 'parent': parent}))


def _ve(root, name, template, layers=None):
    directory = root / 'ves' / name
    directory.mkdir(parents=True)
    (directory / 've.json').write_text(json.dumps({'name': name, 'template': template,
                                                   'layers': layers or [template]}))


@pytest.fixture
def root(tmp_path):
    for version in (V1, V2, V3):
        _publish(tmp_path, 'busybox', version)
    _publish(tmp_path, 'other', V1)
    return tmp_path


@pytest.fixture
def manager(root):
    return VeManager(Host(vz_root=str(root)), client=None)


CURRENT = {'name': 'web1', 'template': 'busybox@' + V2}


@pytest.mark.parametrize('spec,expected', [
    ({}, V2),                                        # nothing asked: keep
    ({'template': 'busybox'}, V2),                   # name alone keeps the version
    ({'template': 'busybox@' + V1}, V1),             # rollback
    ({'template': 'busybox@' + V3}, V3),
    ({'rebase': 'latest'}, V3),
    ({'template': 'busybox', 'rebase': 'latest'}, V3),
])
def test_version_an_existing_ve_gets(manager, spec, expected):
    assert manager._wanted_template('web1', spec, CURRENT)['version'] == expected


def test_a_new_ve_gets_what_it_asks_for(manager):
    assert manager._wanted_template('web1', {'template': 'busybox'}, None)['version'] == V3
    assert manager._wanted_template('web1', {'template': 'busybox@' + V1, 'rebase': None}, None)['version'] == V1


@pytest.mark.parametrize('spec,message', [
    ({'template': 'other'}, 'cannot move to template other'),
    ({'template': 'other', 'rebase': 'latest'}, 'cannot move to template other'),
    ({'template': 'busybox@' + V1, 'rebase': 'latest'}, 'use one of them'),
    ({'rebase': 'newest'}, "invalid rebase 'newest'"),
    ({'template': 'busybox@20990101-000000'}, 'has no version 20990101-000000'),
])
def test_refused_rebases(manager, spec, message):
    with pytest.raises(VzError, match=message):
        manager._wanted_template('web1', spec, CURRENT)


def test_prune_plan_keeps_newest_and_used(root):
    _ve(root, 'web1', 'busybox@' + V1)
    _publish(root, 'app', V1, parent='busybox@' + V2)
    store = TemplateStore(Host(vz_root=str(root)))
    assert store.prune_plan('busybox', 1) == ([], {V1: ['VE web1'], V2: ['template app@%s' % V1]})
    assert store.prune_plan('busybox', 3) == ([], {})
    # a build predicted by check mode counts as the newest
    assert store.prune_plan('busybox', 1, planned=['20261104-000000']) == (
        [V3], {V1: ['VE web1'], V2: ['template app@%s' % V1]})
    with pytest.raises(VzError, match='at least 1'):
        store.prune_plan('busybox', 0)


def test_users_count_every_layer(root):
    _ve(root, 'web1', 'app@' + V1, layers=['app@' + V1, 'busybox@' + V2])
    store = TemplateStore(Host(vz_root=str(root)))
    assert store.users() == {'app@' + V1: ['web1'], 'busybox@' + V2: ['web1']}
    assert store.in_use('busybox', [V1, V2, V3]) == {V2: ['VE web1']}


def test_ssh_command_is_validated_and_quoted(tmp_path):
    key = tmp_path / 'id_ed25519'
    key.write_text('key')
    remote = Remote('198.18.0.11', ssh_key=str(key), port=2222, known_hosts='/dev/null', host_key_checking='off')
    argv = shlex.split(remote.ssh_command())
    assert argv == remote.ssh_argv()
    assert argv[0] == 'ssh' and 'BatchMode=yes' in argv and 'StrictHostKeyChecking=no' in argv
    assert argv[argv.index('-i') + 1] == str(key) and argv[argv.index('-p') + 1] == '2222'
    assert remote.spec('/var/lib/vz/templates/x/') == 'root@198.18.0.11:/var/lib/vz/templates/x/'
    assert Remote('::1').spec('/p') == 'root@[::1]:/p'
    assert 'StrictHostKeyChecking=accept-new' in Remote('build01.example.net').ssh_argv()


@pytest.mark.parametrize('options,message', [
    ({'host': '-oProxyCommand=touch'}, 'invalid source host'),
    ({'host': 'a b'}, 'invalid source host'),
    ({'host': ''}, 'source host is required'),
    ({'host': 'h', 'user': 'root x'}, 'invalid remote user'),
    ({'host': 'h', 'user': "r'oot"}, 'invalid remote user'),
    ({'host': 'h', 'ssh_key': '/no/such/key'}, 'ssh_key /no/such/key does not exist'),
    ({'host': 'h', 'ssh_key': '/tmp/a key'}, 'whitespace'),
    ({'host': 'h', 'port': 0}, 'invalid SSH port'),
    ({'host': 'h', 'vz_root': 'relative'}, 'vz_root must be an absolute path'),
    ({'host': 'h', 'host_key_checking': 'maybe'}, 'invalid host_key_checking'),
])
def test_bad_remote_options(options, message):
    with pytest.raises(VzError, match=message):
        Remote(**options)
