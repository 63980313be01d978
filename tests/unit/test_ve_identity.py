"""_ve_identity: /etc/hostname and /etc/hosts of a VE, read through its layers, never through its links."""

import os
import stat

from ansible_collections.osvirt.vz.plugins.module_utils._ve_identity import (
    DEFAULT_HOSTS, VeTree, hosts_text, new_machine_id, read_inside, write_identity)


def test_hosts_line_goes_after_localhost_and_other_lines_stay():
    existing = '127.0.0.1\tlocalhost\n::1\tlocalhost\n10.0.0.9 db  # mine\n'
    text = hosts_text(existing, 'web1')
    assert text == '127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n::1\tlocalhost\n10.0.0.9 db  # mine\n'
    # a second run changes nothing; a new name replaces the old line only
    assert hosts_text(text, 'web1') == text
    renamed = hosts_text(text, 'web2.example.test')
    assert '127.0.1.1\tweb2.example.test web2\n' in renamed and 'web1' not in renamed
    assert '10.0.0.9 db  # mine' in renamed


def test_hosts_without_a_file_or_localhost():
    assert hosts_text(None, 'a').startswith(DEFAULT_HOSTS.splitlines()[0] + '\n127.0.1.1\ta\n')
    assert hosts_text('', 'a') == '127.0.1.1\ta\n'
    assert hosts_text('# only a comment\n127.0.1.1 old\n', 'a') == '127.0.1.1\ta\n# only a comment\n'


def test_machine_id_shape():
    one, two = new_machine_id(), new_machine_id()
    assert len(one) == 32 and int(one, 16) >= 0 and one != two


def test_stopped_ve_reads_through_its_layers(tmp_path):
    upper, lower = tmp_path / 'upper', tmp_path / 'lower'
    (lower / 'etc').mkdir(parents=True)
    (lower / 'etc' / 'hosts').write_text('127.0.0.1 localhost\n')
    (lower / 'etc' / 'motd').write_text('hi\n')
    upper.mkdir()
    tree = VeTree(str(upper), [str(lower)])
    assert tree.read('etc', 'hosts') == '127.0.0.1 localhost\n'
    assert write_identity(tree, 'web1') == ['/etc/hostname', '/etc/hosts']
    assert (upper / 'etc' / 'hostname').read_text() == 'web1\n'
    assert (upper / 'etc' / 'hosts').read_text() == '127.0.0.1 localhost\n127.0.1.1\tweb1\n'
    assert (lower / 'etc' / 'hosts').read_text() == '127.0.0.1 localhost\n'
    assert write_identity(tree, 'web1') == []
    # a file the VE deleted (whiteout in its layer) is gone, not the template's
    if os.geteuid() == 0:
        os.mknod(str(upper / 'etc' / 'motd'), stat.S_IFCHR | 0o600, 0)
        assert tree.read('etc', 'motd') is None
        assert 'motd' not in tree.names('etc')


def test_links_the_ve_made_are_not_followed(tmp_path):
    outside = tmp_path / 'secret'
    outside.write_text('host secret\n')
    root = tmp_path / 've'
    (root / 'etc').mkdir(parents=True)
    os.symlink(str(outside), str(root / 'etc' / 'hosts'))
    assert read_inside(str(root), 'etc', 'hosts') is None
    write_identity(VeTree(str(root)), 'web1')
    assert outside.read_text() == 'host secret\n'
    assert not (root / 'etc' / 'hosts').is_symlink()
    assert (root / 'etc' / 'hosts').read_text() == hosts_text(None, 'web1')


def test_no_link_is_followed_on_the_way_to_a_subdir(tmp_path):
    """An absolute link of the VE (/var -> /somewhere on the host) must not lead writes or reads out."""
    host_dir = tmp_path / 'host'
    (host_dir / 'lib' / 'dbus').mkdir(parents=True)
    (host_dir / 'lib' / 'dbus' / 'machine-id').write_text('host id\n')
    root = tmp_path / 've'
    root.mkdir()
    os.symlink(str(host_dir), str(root / 'var'))
    tree = VeTree(str(root))
    assert tree.read('var/lib/dbus', 'machine-id') is None
    import pytest
    with pytest.raises(OSError):
        tree.write('var/lib/dbus', 'machine-id', 'new\n')
    assert (host_dir / 'lib' / 'dbus' / 'machine-id').read_text() == 'host id\n'


def test_a_template_made_from_a_ve_loses_its_identity(tmp_path):
    from ansible_collections.osvirt.vz.plugins.module_utils._ve_identity import strip_identity
    (tmp_path / 'etc').mkdir()
    (tmp_path / 'etc' / 'hostname').write_text('web1\n')
    (tmp_path / 'etc' / 'hosts').write_text('127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n10.0.0.9 db\n')
    strip_identity(str(tmp_path))
    assert not (tmp_path / 'etc' / 'hostname').exists()
    assert (tmp_path / 'etc' / 'hosts').read_text() == '127.0.0.1\tlocalhost\n10.0.0.9 db\n'
    strip_identity(str(tmp_path))   # nothing left to strip
    assert (tmp_path / 'etc' / 'hosts').read_text() == '127.0.0.1\tlocalhost\n10.0.0.9 db\n'
