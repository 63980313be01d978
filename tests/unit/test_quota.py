"""Pure logic of the disk quota (module_utils/_quota.py): ioctl structures, mountinfo, decisions.

What touches a real btrfs file system is tested in tests/integration/test_limits_disk.py.
"""

import struct

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _quota
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

MIB = 1 << 20


def test_ioctl_numbers_match_the_kernel_headers():
    # values computed by the _IOW/_IOR/_IOWR macros of <linux/btrfs.h> on x86_64
    assert _quota.IOC_SUBVOL_CREATE == 0x5000940e
    assert _quota.IOC_SNAP_DESTROY == 0x5000940f
    assert _quota.IOC_INO_LOOKUP == 0xd0009412
    assert _quota.IOC_FS_INFO == 0x8400941f
    assert _quota.IOC_QGROUP_CREATE == 0x4010942a
    assert _quota.IOC_QGROUP_LIMIT == 0x8030942b
    assert _quota.IOC_SYNC == 0x9408


def test_vol_args_holds_the_name_nul_padded():
    raw = _quota.vol_args('private')
    assert len(raw) == 4096
    assert struct.unpack_from('=q', raw)[0] == 0
    assert raw[8:15] == b'private' and raw[15:] == bytes(4096 - 15)


@pytest.mark.parametrize('name', ['', '.', '..', 'a/b', 'x' * 4088])
def test_vol_args_refuses_what_is_not_one_name(name):
    with pytest.raises(VzError, match='invalid subvolume name'):
        _quota.vol_args(name)


def test_limit_args_set_and_clear():
    qgroup = _quota.qgroup_id(0, 258)
    assert qgroup == 258
    assert struct.unpack('=6Q', _quota.limit_args(qgroup, 20 * MIB)) == (258, 1, 20 * MIB, 0, 0, 0)
    assert struct.unpack('=6Q', _quota.limit_args(qgroup, None)) == (258, 1, (1 << 64) - 1, 0, 0, 0)
    assert _quota.qgroup_id(1, 100) == (1 << 48) | 100


MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 22 0:26 / /sys rw,nosuid shared:2 - sysfs sysfs rw
41 22 7:0 / /var/lib/vz rw,relatime shared:20 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
42 22 7:1 / /var/tmp/my\\040root rw,relatime shared:21 - btrfs /dev/loop1 rw,subvolid=5,subvol=/
43 41 0:50 / /var/lib/vz/ves/web1/mnt rw shared:22 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize('path, point, fstype', [
    ('/var/lib/vz/ves', '/var/lib/vz', 'btrfs'),
    ('/var/lib/vz', '/var/lib/vz', 'btrfs'),
    ('/var/lib/vzz', '/', 'ext4'),
    ('/var/tmp/my root/ves', '/var/tmp/my root', 'btrfs'),
    ('/var/lib/vz/ves/web1/mnt/x', '/var/lib/vz/ves/web1/mnt', 'tmpfs'),
    ('/etc', '/', 'ext4'),
])
def test_find_mount_longest_parent(path, point, fstype):
    mount = _quota.find_mount(path, MOUNTINFO)
    assert (mount['mount_point'], mount['fstype']) == (point, fstype)


def test_find_mount_source_and_a_later_mount_on_the_same_point_wins():
    text = MOUNTINFO + '50 22 7:2 / /var/lib/vz rw - xfs /dev/loop2 rw\n'
    mount = _quota.find_mount('/var/lib/vz/ves', text)
    assert (mount['fstype'], mount['source']) == ('xfs', '/dev/loop2')
    assert _quota.find_mount('/x', 'garbage line\n') is None


def test_check_limits_change_and_no_change():
    assert _quota.check_limits('web1', 20 * MIB, None, used=MIB, current_limit=None) is True
    assert _quota.check_limits('web1', 20 * MIB, None, used=MIB, current_limit=20 * MIB) is False
    assert _quota.check_limits('web1', None, None, used=MIB, current_limit=20 * MIB) is True
    assert _quota.check_limits('web1', None, None, used=None, current_limit=None) is False
    # raising is always allowed, even above the file system's size
    assert _quota.check_limits('web1', 1 << 50, None, used=30 * MIB, current_limit=20 * MIB) is True


@pytest.mark.parametrize('value', [0, -1, -20 * MIB, 1.5, '20M', True])
def test_check_limits_refuses_values_that_are_not_positive_bytes(value):
    with pytest.raises(VzError, match='VE web1: disk.space must be a positive number of bytes'):
        _quota.check_limits('web1', value, None, used=0, current_limit=None)


def test_lowering_below_use_needs_force_and_says_why():
    with pytest.raises(VzError) as caught:
        _quota.check_limits('web1', 10 * MIB, None, used=30 * MIB, current_limit=50 * MIB)
    message = str(caught.value)
    assert 'VE web1 uses 30M' in message and 'limit of 10M' in message
    assert 'Disk quota exceeded' in message and 'force: true' in message
    assert _quota.check_limits('web1', 10 * MIB, None, used=30 * MIB, current_limit=50 * MIB, force=True)
    # a limit already set below the use (earlier with force) is no change and no error
    assert _quota.check_limits('web1', 10 * MIB, None, used=30 * MIB, current_limit=10 * MIB) is False


def test_inodes_are_refused_with_the_reason():
    with pytest.raises(VzError, match='disk.inodes cannot be limited: .*count bytes, not files'):
        _quota.check_limits('web1', None, 1000, used=None, current_limit=None)


@pytest.mark.parametrize('size, text', [(0, '0'), (512, '512'), (1024, '1K'), (20 * MIB, '20M'),
                                        (1536 * MIB, '1.5G'), (3 << 40, '3T')])
def test_human(size, text):
    assert _quota.human(size) == text


class FakeHost:
    def __init__(self, root):
        self.vz_root = str(root)
        self.ves_dir = str(root / 'ves')

    def ve_dir(self, name):
        return self.ves_dir + '/' + name


def test_a_host_without_btrfs_says_why_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(_quota, 'filesystem_uuid', _not_btrfs)
    monkeypatch.setattr(_quota, '_mount_of', lambda path: {'mount_point': '/', 'fstype': 'ext4',
                                                           'source': '/dev/vda', 'options': ''})
    ok, reason = _quota.quota_supported(FakeHost(tmp_path))
    assert not ok
    assert 'is on ext4 (/dev/vda on /)' in reason
    assert 'run the osvirt.vz.host role with host_vz_filesystem' in reason
    meta = {'name': 'web1'}
    (tmp_path / 'ves' / 'web1' / 'private').mkdir(parents=True)
    with pytest.raises(VzError, match='VE web1: disk.space cannot be applied: vz_root .* is on ext4'):
        _quota.plan_quota(FakeHost(tmp_path), meta, 20 * MIB)
    # no quota asked for: nothing to do, on any file system
    assert _quota.plan_quota(FakeHost(tmp_path), meta, None) is False


def test_btrfs_without_quotas_enabled(tmp_path, monkeypatch):
    monkeypatch.setattr(_quota, 'filesystem_uuid', lambda path: '0123')
    monkeypatch.setattr(_quota, 'SYSFS_BTRFS', str(tmp_path / 'sys'))
    monkeypatch.setattr(_quota, '_mount_of', lambda path: {'mount_point': '/srv/vz', 'fstype': 'btrfs',
                                                           'source': '/dev/sdb', 'options': ''})
    ok, reason = _quota.quota_supported(FakeHost(tmp_path))
    assert not ok and 'quotas are not enabled' in reason and 'btrfs quota enable /srv/vz' in reason
    (tmp_path / 'sys' / '0123' / 'qgroups').mkdir(parents=True)
    assert _quota.quota_supported(FakeHost(tmp_path))[0] is True


def _not_btrfs(path):
    raise OSError(25, 'Inappropriate ioctl for device')
