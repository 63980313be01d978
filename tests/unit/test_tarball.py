"""Safe extraction of template tarballs and the other pure helpers of the template builders.

Real tarballs made with Python's tarfile in a temporary directory; no root needed (owners are
kept only when extracting as root).
"""

import io
import os
import tarfile

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _template_build as tb
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


def _tar(path, members):
    """Write a tarball; members are (name, kind, extra) with kind file/dir/sym/hard/chr/blk/fifo."""
    with tarfile.open(path, 'w:gz') as archive:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == 'file':
                data = (extra or 'x').encode()
                info.size = len(data)
                info.mode = 0o644
            elif kind == 'dir':
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == 'sym':
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == 'hard':
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind in ('chr', 'blk'):
                info.type = tarfile.CHRTYPE if kind == 'chr' else tarfile.BLKTYPE
                info.devmajor, info.devminor = extra
            elif kind == 'fifo':
                info.type = tarfile.FIFOTYPE
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _extract(tmp_path, members):
    rootfs = tmp_path / 'rootfs'
    rootfs.mkdir()
    tb.safe_extract(str(_tar(tmp_path / 't.tar.gz', members)), str(rootfs))
    return rootfs


def test_good_tarball_keeps_links_and_modes(tmp_path):
    rootfs = _extract(tmp_path, [
        ('./etc', 'dir', None),
        ('./etc/os-release', 'file', 'ID=demo\nVERSION_ID="1.0"\n'),
        ('./usr/share/zoneinfo/UTC', 'file', 'tz'),
        ('./etc/localtime', 'sym', '/usr/share/zoneinfo/UTC'),     # absolute, inside the tree
        ('./etc/alias', 'sym', '../usr/share/zoneinfo/UTC'),
        ('./etc/hard', 'hard', './etc/os-release'),
        ('./run/fifo', 'fifo', None),
    ])
    assert (rootfs / 'etc/os-release').read_text().startswith('ID=demo')
    assert os.readlink(rootfs / 'etc/localtime') == '/usr/share/zoneinfo/UTC'
    assert os.stat(rootfs / 'etc/hard').st_ino == os.stat(rootfs / 'etc/os-release').st_ino
    assert tb.os_release(str(rootfs)) == ('demo', '1.0')


@pytest.mark.parametrize('members,words', [
    ([('../evil', 'file', None)], "'../evil' contains \"..\""),
    ([('./a/../../evil', 'file', None)], 'contains ".."'),
    ([('/etc/passwd', 'file', None)], 'absolute path'),
    ([('dev/sda', 'blk', (8, 0))], 'device node (block 8:0)'),
    ([('dev/null', 'chr', (1, 3))], 'device node (character 1:3)'),
    ([('link', 'sym', '../../../etc/shadow')], 'leads outside'),
    ([('a/b/link', 'sym', '../../../x')], 'leads outside'),
    ([('escape', 'sym', '/etc'), ('escape/cron.d/evil', 'file', None)], "under the symbolic link 'escape'"),
    ([('link', 'sym', '/etc/passwd'), ('link', 'file', 'pwned')], 'would replace the symbolic link'),
    ([('dir', 'sym', '/'), ('h', 'hard', 'dir/etc/passwd')], 'hard link through the symbolic link'),
])
def test_unsafe_members_are_refused_before_anything_is_extracted(tmp_path, members, words):
    rootfs = tmp_path / 'rootfs'
    rootfs.mkdir()
    tarball = _tar(tmp_path / 't.tar.gz', [('./ok', 'file', 'fine')] + members)
    with pytest.raises(tb.UnsafeTarball) as err:
        tb.safe_extract(str(tarball), str(rootfs))
    assert words in str(err.value)
    assert os.listdir(rootfs) == []   # checked first, extracted after: nothing was written


def test_not_a_tarball(tmp_path):
    bad = tmp_path / 'bad.tar'
    bad.write_bytes(b'no tar here' * 100)
    (tmp_path / 'rootfs').mkdir()
    with pytest.raises(VzError) as err:
        tb.safe_extract(str(bad), str(tmp_path / 'rootfs'))
    assert 'not a readable tarball' in str(err.value)


@pytest.mark.parametrize('member,target,inside', [
    ('etc/localtime', '/usr/share/zoneinfo/UTC', True),
    ('etc/x', '../usr/lib', True),
    ('etc/x', '../../usr/lib', False),
    ('x', '..', False),
    ('a/b/c', '../../d', True),
    ('a/b/c', '/../../etc', False),
])
def test_link_stays_inside(member, target, inside):
    assert tb.link_stays_inside(member, target) is inside


def test_tarball_options_need_a_checksum(tmp_path):
    tarball = tmp_path / 't.tar'
    tarball.write_bytes(b'')
    with pytest.raises(VzError, match='needs sha256'):
        tb.validate_source({'type': 'tarball', 'url': str(tarball)})
    with pytest.raises(VzError, match='does not exist'):
        tb.validate_source({'type': 'tarball', 'url': str(tmp_path / 'nope.tar'), 'sha256': 'a' * 64})
    with pytest.raises(VzError, match='use a local path'):
        tb.validate_source({'type': 'tarball', 'url': 'ftp://example/t.tar', 'sha256': 'a' * 64})


def test_mirror_from_host_sources():
    deb822 = ('Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n'
              'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n')
    assert tb.mirror_from_sources(deb822) == 'http://deb.debian.org/debian'
    assert tb.mirror_from_sources('deb [arch=amd64] http://mirror.example/debian/ bookworm main\n') == \
        'http://mirror.example/debian'
    assert tb.mirror_from_sources('') is None


def test_dpkg_list_keeps_installed_packages():
    text = 'ii \thello\t2.10-3\nrc \tgone\t1.0\nii \tbash\t5.2\n'
    assert tb.parse_dpkg_list(text) == [{'name': 'bash', 'version': '5.2'}, {'name': 'hello', 'version': '2.10-3'}]


@pytest.mark.parametrize('source,words', [
    ({'type': 'debootstrap', 'suite': 'Bookworm;rm'}, 'invalid debootstrap suite'),
    ({'type': 'debootstrap', 'mirror': 'ftp://x/debian'}, 'invalid mirror'),
    ({'type': 'debootstrap', 'packages': ['ok', 'bad name']}, 'invalid package name'),
    ({'type': 'layer'}, 'needs base'),
    ({'type': 'layer', 'base': 'debian-12@latest', 'packages': ['hello']}, 'invalid template version'),
    ({'type': 'layer', 'base': 'debian-12'}, 'at least one of'),
    ({'type': 'layer', 'base': 'debian-12', 'commands': ['echo hi']}, 'list of strings'),
    ({'type': 've', 've': 'Bad_Name'}, 'invalid VE name'),
])
def test_bad_sources(source, words):
    with pytest.raises(VzError) as err:
        tb.validate_source(source)
    assert words in str(err.value)
