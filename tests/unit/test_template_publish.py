"""Publishing a template version: nothing of a failed or dead build stays (_templates.publish)."""

import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._templates import TemplateStore


@pytest.fixture
def store(tmp_path):
    host = Host(vz_root=str(tmp_path / 'vz'))
    host.ensure_layout()
    return TemplateStore(host)


def _fill(rootfs):
    with open(os.path.join(rootfs, 'hello'), 'w') as handle:
        handle.write('hi\n')
    return {'os': 'test'}


def test_a_failed_first_build_leaves_no_template_name_and_nothing_in_tmp(store):
    def broken(rootfs):
        _fill(rootfs)
        raise RuntimeError('builder died')
    with pytest.raises(RuntimeError):
        store.publish('app', {'type': 'test'}, broken)
    assert not os.path.exists(os.path.join(store.root, 'app'))
    assert os.listdir(store.host.tmp_dir) == []


def test_the_next_build_sweeps_a_dead_build_and_an_empty_name(store):
    # what a SIGKILLed first build leaves: its staging directory (held by nobody) and, from
    # earlier releases, the template's empty directory
    os.makedirs(os.path.join(store.host.tmp_dir, 'build-app-deadbeef', 'rootfs'))
    os.mkdir(os.path.join(store.root, 'app'))
    assert store.names() == ['app'] and store.versions('app') == []
    manifest = store.publish('app', {'type': 'test'}, _fill)
    assert store.versions('app') == [manifest['version']]
    assert os.listdir(store.host.tmp_dir) == []
