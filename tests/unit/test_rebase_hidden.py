"""hidden_files: which entries of a private area hide a change of the new template version.

Fake template layers and upper dirs in tmp_path; whiteouts need mknod (root) and are skipped
without it.
"""

import os
import stat

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._rebase import (
    LayerStack, entries_differ, hidden_files, is_whiteout)


def _write(root, rel, text='x', mtime=None, mode=0o644):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _whiteout(root, rel):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip('mknod of a whiteout needs CAP_MKNOD')
    return path


def _opaque(path):
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.setxattr(path, 'user.overlay.opaque', b'y')
    except OSError as exc:
        pytest.skip('user xattrs unsupported here: %s' % exc)


@pytest.fixture
def trees(tmp_path):
    """old/new template versions (one layer each) with the same base files, and an upper dir."""
    old, new, upper = tmp_path / 'old', tmp_path / 'new', tmp_path / 'upper'
    for root in (old, new):
        _write(root, 'etc/passwd', 'root:x:0:0\n', mtime=1000)
        _write(root, 'etc/motd', 'hello\n', mtime=1000)
        _write(root, 'bin/tool', 'v1', mtime=1000, mode=0o755)
        (root / 'bin/link').symlink_to('tool')
    upper.mkdir()
    return old, new, upper


def _entries(upper, old_layers, new_layers):
    found, more = hidden_files(upper, old_layers, new_layers)
    assert more == 0
    return found


def _paths(entries):
    return [(e['path'], e['upper'], e['change']) for e in entries]


def test_nothing_changed_nothing_hidden(trees):
    old, new, upper = trees
    _write(upper, 'etc/passwd', 'root:x:0:0\nweb:x:1:1\n')
    assert hidden_files(str(upper), [str(old)], [str(new)]) == ([], 0)


def test_identical_rebuild_with_new_mtimes_hides_nothing(trees):
    old, new, upper = trees
    _write(new, 'etc/passwd', 'root:x:0:0\n', mtime=2000)   # same content, later build
    _write(upper, 'etc/passwd', 'mine\n')
    assert hidden_files(str(upper), [str(old)], [str(new)]) == ([], 0)


def test_modified_added_removed_files_under_private_copies(trees):
    old, new, upper = trees
    _write(new, 'etc/passwd', 'root:x:0:0\nnew:x:2:2\n', mtime=2000)   # modified (size)
    _write(new, 'etc/motd', 'HELLO\n', mtime=2000)                     # modified (same size, content)
    _write(new, 'etc/added', 'new file\n')                             # added
    os.unlink(new / 'bin/tool')                                        # removed
    _write(upper, 'etc/passwd', 'mine\n')
    _write(upper, 'etc/motd', 'mine\n')
    _write(upper, 'etc/added', 'made by the VE\n')
    _write(upper, 'bin/tool', 'patched by hand')
    _write(upper, 'etc/only-mine', 'no template file here')            # hides nothing
    entries, more = hidden_files(str(upper), [str(old)], [str(new)])
    assert more == 0
    assert _paths(entries) == [('/bin/tool', 'file', 'removed'), ('/etc/added', 'file', 'added'),
                               ('/etc/motd', 'file', 'modified'), ('/etc/passwd', 'file', 'modified')]


def test_mode_owner_and_symlink_changes_count(trees):
    old, new, upper = trees
    os.chmod(new / 'bin/tool', 0o700)
    (new / 'bin/link').unlink()
    (new / 'bin/link').symlink_to('other')
    _write(upper, 'bin/tool', 'v1')
    (upper / 'bin/link').symlink_to('tool')
    entries = _entries(str(upper), [str(old)], [str(new)])
    assert _paths(entries) == [('/bin/link', 'file', 'modified'), ('/bin/tool', 'file', 'modified')]


def test_whiteout_hides_a_changed_file(trees):
    old, new, upper = trees
    _write(new, 'etc/motd', 'changed\n', mtime=2000)
    _whiteout(upper, 'etc/motd')       # the VE deleted /etc/motd
    _whiteout(upper, 'etc/passwd')     # deleted, but the template did not change it
    entries = _entries(str(upper), [str(old)], [str(new)])
    assert _paths(entries) == [('/etc/motd', 'whiteout', 'modified')]


def test_opaque_directory_hides_changes_below(trees):
    old, new, upper = trees
    _write(new, 'etc/motd', 'changed\n', mtime=2000)
    _write(new, 'etc/new.d/a', 'a')
    _opaque(upper / 'etc')
    _write(upper, 'etc/mine', 'x')
    entries = _entries(str(upper), [str(old)], [str(new)])
    assert len(entries) == 1
    assert entries[0]['path'] == '/etc' and entries[0]['upper'] == 'opaque directory'
    assert entries[0]['changed_below'] == 3    # motd, new.d, new.d/a


def test_opaque_directory_over_unchanged_template_dir_hides_nothing(trees):
    old, new, upper = trees
    _opaque(upper / 'etc')
    assert hidden_files(str(upper), [str(old)], [str(new)]) == ([], 0)


def test_directory_over_a_template_file(trees):
    old, new, upper = trees
    _write(new, 'etc/motd', 'changed\n', mtime=2000)
    _write(upper, 'etc/motd/inside', 'the VE made a directory where the template has a file')
    entries = _entries(str(upper), [str(old)], [str(new)])
    assert _paths(entries) == [('/etc/motd', 'directory', 'modified')]


def test_several_layers_and_lower_whiteouts(tmp_path):
    """An app layer on an OS layer: the top layer decides, its whiteouts hide the OS file."""
    os_layer, app_old, app_new, upper = (tmp_path / n for n in ('os', 'app1', 'app2', 'upper'))
    _write(os_layer, 'etc/app.conf', 'os default', mtime=1000)
    _write(os_layer, 'etc/keep', 'k', mtime=1000)
    _write(app_old, 'etc/app.conf', 'app v1', mtime=1000)
    app_new.mkdir()
    _whiteout(app_new, 'etc/app.conf')          # the new app version removes the file
    stack = LayerStack([str(app_new), str(os_layer)])
    assert stack.lookup('etc/app.conf') is None
    assert stack.lookup('etc/keep') is not None
    assert stack.listdir('etc') == ['keep']
    _write(upper, 'etc/app.conf', 'mine')
    _write(upper, 'etc/keep', 'mine')
    entries = _entries(str(upper), [str(app_old), str(os_layer)], [str(app_new), str(os_layer)])
    assert _paths(entries) == [('/etc/app.conf', 'file', 'removed')]


def test_lookup_rules(tmp_path):
    top, bottom = tmp_path / 'top', tmp_path / 'bottom'
    _write(bottom, 'd/a', 'a')
    _write(bottom, 'd/b', 'b')
    _write(top, 'd/c', 'c')
    _write(top, 'f', 'file in top')
    _write(bottom, 'f/x', 'below a file: hidden')
    stack = LayerStack([str(top), str(bottom)])
    assert stack.listdir('d') == ['a', 'b', 'c']
    assert stack.lookup('f/x') is None
    _opaque(top / 'd')
    assert stack.listdir('d') == ['c']
    assert stack.lookup('d/a') is None


def test_entries_differ_basics(tmp_path):
    a = _write(tmp_path, 'a', 'same', mtime=1)
    b = _write(tmp_path, 'b', 'same', mtime=2)
    c = _write(tmp_path, 'c', 'diff', mtime=2)

    def entry(path):
        return (str(path), os.lstat(path))

    assert not entries_differ(None, None)
    assert entries_differ(entry(a), None) and entries_differ(None, entry(a))
    assert not entries_differ(entry(a), entry(b))
    assert entries_differ(entry(a), entry(c))


def test_limit_counts_the_rest(trees):
    old, new, upper = trees
    for i in range(5):
        _write(new, 'etc/f%d' % i, 'new')
        _write(upper, 'etc/f%d' % i, 'mine')
    entries, more = hidden_files(str(upper), [str(old)], [str(new)], limit=3)
    assert len(entries) == 3 and more == 2


def test_is_whiteout_only_for_0_0_char_devices(tmp_path):
    assert not is_whiteout(os.lstat(_write(tmp_path, 'f', 'x')))
    assert is_whiteout(os.lstat(_whiteout(tmp_path, 'w')))
