"""_fs.write_inside: a file in a tree someone else controls, never through their links."""

import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._fs import write_inside


def test_writes_and_replaces_atomically(tmp_path):
    write_inside(str(tmp_path), 'etc', 'resolv.conf', 'nameserver 10.0.0.1\n')
    write_inside(str(tmp_path), 'etc', 'resolv.conf', 'nameserver 10.0.0.2\n')
    assert (tmp_path / 'etc' / 'resolv.conf').read_text() == 'nameserver 10.0.0.2\n'
    assert sorted(p.name for p in (tmp_path / 'etc').iterdir()) == ['resolv.conf']


def test_a_link_in_place_of_the_file_is_replaced_not_followed(tmp_path):
    outside = tmp_path / 'outside'
    outside.write_text('host file\n')
    root = tmp_path / 've'
    (root / 'etc').mkdir(parents=True)
    os.symlink(str(outside), str(root / 'etc' / 'resolv.conf'))
    write_inside(str(root), 'etc', 'resolv.conf', 'nameserver 10.0.0.1\n')
    assert outside.read_text() == 'host file\n'
    assert not (root / 'etc' / 'resolv.conf').is_symlink()


def test_a_link_in_place_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    root = tmp_path / 've'
    root.mkdir()
    os.symlink(str(outside), str(root / 'etc'))
    with pytest.raises(OSError):
        write_inside(str(root), 'etc', 'resolv.conf', 'nameserver 10.0.0.1\n')
    assert list(outside.iterdir()) == []
