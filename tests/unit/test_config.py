"""The LXC config model keeps what it does not own."""

from ansible_collections.osvirt.vz.plugins.module_utils._engine.config import HEADER, LxcConfig
from ansible_collections.osvirt.vz.plugins.module_utils._ve_config import is_owned

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

TEXT = """# hand comment
lxc.uts.name = old
lxc.environment = FOO=bar
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536

lxc.net.0.type = veth
lxc.prlimit.nofile = 4096
"""


def test_parse_and_render_round_trip():
    cfg = LxcConfig.parse(TEXT)
    assert cfg.render() == TEXT
    assert cfg.get('lxc.idmap') == ['u 0 100000 65536', 'g 0 100000 65536']
    assert cfg.get_one('lxc.uts.name') == 'old'
    assert cfg.get_one('lxc.missing', 'x') == 'x'


def test_value_with_equals_sign():
    cfg = LxcConfig.parse('lxc.environment = A=b=c\n')
    assert cfg.get('lxc.environment') == ['A=b=c']


def test_set_replaces_in_place_and_appends():
    cfg = LxcConfig.parse(TEXT)
    cfg.set('lxc.idmap', ['u 0 200000 65536'])
    cfg.set('lxc.start.auto', '1')
    keys = [k for k, _v in cfg.items()]
    assert keys.index('lxc.idmap') == 2 and keys.count('lxc.idmap') == 1
    assert keys[-1] == 'lxc.start.auto'
    cfg.remove('lxc.environment')
    assert cfg.get('lxc.environment') == []


def test_replace_owned_keeps_foreign_keys_and_comments():
    cfg = LxcConfig.parse(TEXT)
    cfg.replace_owned(is_owned, [('lxc.uts.name', 'new'), ('lxc.net.0.type', 'empty')])
    text = cfg.render()
    assert text.startswith(HEADER)
    assert 'lxc.uts.name = new' in text and 'old' not in text
    assert 'lxc.environment = FOO=bar' in text and 'lxc.prlimit.nofile = 4096' in text
    assert '# hand comment' in text
    assert 'lxc.idmap' not in text
    # a second replace does not pile up headers or blank lines
    again = LxcConfig.parse(text)
    again.replace_owned(is_owned, [('lxc.uts.name', 'new'), ('lxc.net.0.type', 'empty')])
    assert again.render() == text


def test_owned_items():
    cfg = LxcConfig.parse(TEXT)
    assert ('lxc.environment', 'FOO=bar') not in cfg.owned_items(is_owned)
    assert ('lxc.uts.name', 'old') in cfg.owned_items(is_owned)


def test_bad_line():
    with pytest.raises(VzError) as err:
        LxcConfig.parse('lxc.uts.name\n')
    assert 'line 1' in str(err.value)


def test_save_is_atomic(tmp_path):
    path = tmp_path / 'config'
    path.write_text('lxc.uts.name = a\n')
    cfg = LxcConfig.load(str(path))
    cfg.set('lxc.uts.name', 'b')
    cfg.save(str(path))
    assert path.read_text() == 'lxc.uts.name = b\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['config']
