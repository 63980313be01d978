"""The binary formats a shifted template copy rewrites: POSIX ACL and file capability xattrs."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _idshift as ids
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

# What the kernel returned for `setfacl -m u:1000:rw,g:4:r f` (access ACL) and
# `setfacl -d -m g:4:rx d` (default ACL), and for `setcap cap_net_raw+ep` / `setcap -n 100000 ...`.
ACCESS = bytes.fromhex('0200000001000600ffffffff02000600e803000004000400ffffffff080004000400000010000600ffffffff'
                       '20000400ffffffff')
DEFAULT = bytes.fromhex('0200000001000700ffffffff04000500ffffffff080005000400000010000500ffffffff20000500ffffffff')
CAP_V2 = bytes.fromhex('0100000200200000000000000000000000000000')
CAP_V3 = bytes.fromhex('0100000300200000000000000000000000000000a0860100')
BASE = 100000


def test_acl_entries_of_a_kernel_value():
    assert ids.acl_entries(ACCESS) == [(0x01, 6, 0xffffffff), (0x02, 6, 1000), (0x04, 4, 0xffffffff),
                                       (0x08, 4, 4), (0x10, 6, 0xffffffff), (0x20, 4, 0xffffffff)]
    assert ids.acl_bytes(ids.acl_entries(DEFAULT)) == DEFAULT


def test_acl_shift_moves_named_users_and_groups_only():
    up = ids.shift_acl(ACCESS, ids.id_mover(BASE, 65536), ids.id_mover(BASE + 1, 65536))
    entries = ids.acl_entries(up)
    assert entries[1] == (0x02, 6, BASE + 1000)            # ACL_USER via the uid range
    assert entries[3] == (0x08, 4, BASE + 1 + 4)           # ACL_GROUP via the gid range
    # owner, owning group, mask and other keep their undefined id and permissions
    assert [e for i, e in enumerate(entries) if i not in (1, 3)] == \
        [e for i, e in enumerate(ids.acl_entries(ACCESS)) if i not in (1, 3)]
    back = ids.shift_acl(up, ids.id_mover(BASE, 65536, back=True), ids.id_mover(BASE + 1, 65536, back=True))
    assert back == ACCESS


def test_default_acl_shift():
    up = ids.shift_acl(DEFAULT, ids.id_mover(BASE, 65536), ids.id_mover(BASE, 65536))
    assert (0x08, 5, BASE + 4) in ids.acl_entries(up)
    assert ids.shift_acl(up, ids.id_mover(BASE, 65536, True), ids.id_mover(BASE, 65536, True)) == DEFAULT


def test_ids_outside_the_range_stay():
    mover = ids.id_mover(BASE, 65536)
    assert mover(65535) == BASE + 65535 and mover(65536) == 65536 and mover(BASE + 3) == BASE + 3
    back = ids.id_mover(BASE, 65536, back=True)
    assert back(BASE) == 0 and back(BASE - 1) == BASE - 1 and back(BASE + 65536) == BASE + 65536 and back(4) == 4


@pytest.mark.parametrize('raw, message', [
    (b'\x02\x00\x00', 'not a POSIX ACL'),
    (ACCESS[:-1], 'not a POSIX ACL'),
    (b'\x01\x00\x00\x00' + ACCESS[4:], 'version 1'),
])
def test_bad_acl_values_are_refused(raw, message):
    with pytest.raises(VzError, match=message):
        ids.shift_acl(raw, int, int)


def test_capability_versions():
    assert ids.capability_rootid(CAP_V2) == 0
    assert ids.capability_rootid(CAP_V3) == BASE
    assert ids.capability_rootid(b'\x00' * 8) is None
    assert ids.capability_rootid(bytes.fromhex('01000001') + bytes(8)) is None   # v1: 12 bytes
    assert ids.shift_capability(CAP_V2, BASE) == CAP_V3
    assert ids.shift_capability(CAP_V3, 0) == CAP_V2
    # a v3 capability for a namespace nested in the VE (root = VE uid 1000) moves like any uid
    nested = ids.shift_capability(CAP_V2, 1000)
    assert ids.capability_rootid(ids.shift_capability(nested, ids.id_mover(BASE, 65536)(1000))) == BASE + 1000
    junk = b'\x00\x00\x00\x07' + bytes(16)
    assert ids.shift_capability(junk, BASE) == junk


def test_capability_effective_flag_kept():
    flagless = bytes.fromhex('00000002') + CAP_V2[4:]
    assert ids.shift_capability(flagless, BASE)[:4] == bytes.fromhex('00000003')
    assert ids.shift_capability(CAP_V2, BASE)[:4] == bytes.fromhex('01000003')
