"""The pure parts of _criu: versions, probe() on recorded output, dump blockers, host compatibility,
CRIU's statistics images, the restore config, and the VE config keys behind the ttys/console options."""

import os
import struct

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _criu
from ansible_collections.osvirt.vz.plugins.module_utils._engine.config import LxcConfig
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._ve_config import render_config

CHECKPOINTABLE = """\
lxc.uts.name = web1
lxc.rootfs.path = overlay:/var/lib/vz/templates/busybox/1/rootfs:/var/lib/vz/ves/web1/private/upper
lxc.rootfs.options = userxattr
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.tty.max = 0
lxc.pty.max = 1024
lxc.console.path = none
lxc.net.0.type = veth
lxc.net.0.link = vzbr0
lxc.net.0.veth.pair = vzab12cd340
"""
NO_APPARMOR = {'apparmor': False}


class Runner:
    """A run() that answers from recorded output: {argv tuple: (rc, out, err)}."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return self.answers.get(tuple(argv), (1, '', 'unexpected command'))


def test_versions():
    assert _criu.parse_version('Version: 4.2.1\n') == (4, 2, 1)
    assert _criu.parse_version('Version: 3.17.1\nGitID: v3.17.1\n') == (3, 17, 1)
    assert _criu.parse_version('criu: command not found') is None
    assert _criu.kernel_version('6.18.44-fc-v1252') == (6, 18)
    assert _criu.version_problem((4, 2, 1), '6.18.44') is None
    assert 'cannot dump TCP sockets' in _criu.version_problem((4, 1, 1), '6.16.0')
    assert _criu.version_problem((4, 1, 1), '6.15.9') is None
    assert _criu.version_problem(None, '6.1.0') == 'cannot read the CRIU version'


def test_probe_usable_and_unusable(tmp_path):
    criu = str(tmp_path / 'criu')
    good = Runner({(criu, '--version'): (0, 'Version: 4.2.1\n', ''),
                   (criu, 'check'): (0, '', 'Warn  (criu/kerndat.c:1290): ...\nLooks good.\n'),
                   (criu, 'check', '--feature', 'mem_dirty_track'): (1, '', 'Dirty tracking is OFF.')})
    probe = _criu.probe(good, criu=criu, kernel_release='6.18.44', arch='x86_64')
    assert probe == {'path': criu, 'version': '4.2.1', 'check_ok': True, 'reason': None, 'dirty_tracking': False,
                     'kernel': '6.18.44', 'arch': 'x86_64'}
    failed_check = ('Error (criu/vdso.c:363): vdso: Unexpected rt vDSO area bounds\n'
                    'Error (criu/cr-check.c:1614): CRIU needs ... FAILED.\n')
    vdso = Runner({(criu, '--version'): (0, 'Version: 3.17.1\n', ''), (criu, 'check'): (1, '', failed_check)})
    probe = _criu.probe(vdso, criu=criu, kernel_release='6.18.44', arch='x86_64')
    assert probe['check_ok'] is False and probe['version'] == '3.17.1'
    assert probe['reason'] == 'criu check fails: Error (criu/vdso.c:363): vdso: Unexpected rt vDSO area bounds'
    old = Runner({(criu, '--version'): (0, 'Version: 4.1.1\n', ''), (criu, 'check'): (0, 'Looks good.\n', '')})
    probe = _criu.probe(old, criu=criu, kernel_release='6.18.44', arch='x86_64')
    assert probe['check_ok'] is False and 'cannot dump TCP sockets' in probe['reason']


def test_probe_without_criu(monkeypatch, tmp_path):
    status = tmp_path / 'status'
    status.write_text('state=failed\nversion=\npath=\nreason=cannot fetch a CRIU >= 4.2 source tarball\n')
    monkeypatch.setattr(_criu, 'find_criu', lambda: None)
    monkeypatch.setattr(_criu, 'BUILD_STATUS', str(status))
    monkeypatch.setattr(_criu.build_status, '__defaults__', (str(status),))
    probe = _criu.probe(Runner({}))
    assert probe['path'] is None and probe['check_ok'] is False
    assert probe['reason'].startswith('criu not found') and 'cannot fetch a CRIU >= 4.2' in probe['reason']


def test_find_criu(tmp_path):
    fixed, on_path = tmp_path / 'sbin' / 'criu', tmp_path / 'bin' / 'criu'
    for path in (fixed, on_path):
        path.parent.mkdir()
        path.write_text('#!/bin/sh\n')
        path.chmod(0o755)
    assert _criu.find_criu((str(fixed),), str(tmp_path / 'bin')) == str(fixed)
    assert _criu.find_criu((str(tmp_path / 'none'),), str(tmp_path / 'bin')) == str(on_path)
    assert _criu.find_criu((), str(tmp_path / 'nowhere')) is None


def test_checkpointable_config_has_no_blockers():
    assert _criu.dump_blockers(CHECKPOINTABLE, NO_APPARMOR) == []
    assert _criu.dump_blockers(LxcConfig.parse(CHECKPOINTABLE), NO_APPARMOR) == []


@pytest.mark.parametrize('change, found', [
    ('lxc.tty.max = 4', 'lxc.tty.max = 4'),
    ('lxc.console.path = /dev/console', 'has a console'),
    ('lxc.apparmor.profile = generated', 'the kernel has no AppArmor'),
    ('lxc.apparmor.allow_nesting = 1', 'nesting is enabled'),
    ('lxc.include = /usr/share/lxc/config/nesting.conf', 'nesting is enabled'),
    ('lxc.mount.auto = proc:rw sys:rw cgroup:rw', 'writable cgroup tree'),
    ('lxc.net.0.type = phys', 'lxc.net.0.type = phys'),
    ('lxc.net.0.veth.mode = router', 'lxc.net.0.veth.mode = router'),
])
def test_each_blocker(change, found):
    key = change.split(' = ')[0]
    config = LxcConfig.parse(CHECKPOINTABLE)
    config.set(key, change.split(' = ', 1)[1])
    reasons = _criu.dump_blockers(config, NO_APPARMOR)
    assert len(reasons) == 1 and found in reasons[0], reasons


def test_console_missing_means_console():
    config = LxcConfig.parse(CHECKPOINTABLE)
    config.remove('lxc.console.path')
    assert any('has a console' in r for r in _criu.dump_blockers(config, NO_APPARMOR))


def test_apparmor_profile_is_fine_where_apparmor_is():
    config = LxcConfig.parse(CHECKPOINTABLE + 'lxc.apparmor.profile = generated\n')
    assert _criu.dump_blockers(config, {'apparmor': True}) == []


def test_bind_mount_blockers(tmp_path):
    real = tmp_path / 'usr' / 'lib'
    real.mkdir(parents=True)
    link = tmp_path / 'lib'
    link.symlink_to(real)
    data = tmp_path / 'data'
    data.mkdir()
    config = CHECKPOINTABLE + 'lxc.mount.entry = %s srv/data none bind,create=dir 0 0\n' % data
    assert _criu.dump_blockers(config, NO_APPARMOR) == []
    config = CHECKPOINTABLE + 'lxc.mount.entry = %s lib none bind,ro,create=dir 0 0\n' % link
    reasons = _criu.dump_blockers(config, NO_APPARMOR)
    assert len(reasons) == 1 and 'is a symlink to %s' % real in reasons[0]
    # an unprivileged VE is restored at lxc.rootfs.mount: it must not be inside a bind source
    config = CHECKPOINTABLE + 'lxc.mount.entry = %s usr/lib none bind,ro,create=dir 0 0\n' % real
    host = dict(NO_APPARMOR, rootfs_mount=str(real / 'x86_64-linux-gnu' / 'lxc' / 'rootfs'))
    reasons = _criu.dump_blockers(config, host)
    assert len(reasons) == 1 and 'contains lxc.rootfs.mount' in reasons[0]
    privileged = config.replace('lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n', '')
    assert _criu.dump_blockers(privileged, host) == []


def _probe(version, arch='x86_64', ok=True):
    return {'path': '/usr/local/sbin/criu', 'version': version, 'check_ok': ok, 'reason': None if ok else 'vdso',
            'dirty_tracking': False, 'kernel': '6.18.44', 'arch': arch}


def test_compatible():
    assert _criu.compatible(_probe('4.2.1'), _probe('4.2.1')) == (True, [])
    assert _criu.compatible(_probe('4.2.1'), _probe('4.3')) == (True, [])
    ok, reasons = _criu.compatible(_probe('4.3'), _probe('4.2.1'))
    assert not ok and "target's CRIU 4.2.1 is older than the source's 4.3" in reasons[0]
    ok, reasons = _criu.compatible(_probe('4.2.1'), _probe('5.0'))
    assert not ok and 'major versions differ' in reasons[0]
    ok, reasons = _criu.compatible(_probe('4.2.1'), _probe('4.2.1', arch='aarch64'))
    assert not ok and 'architectures' in reasons[0]
    ok, reasons = _criu.compatible(_probe('4.2.1'), _probe('3.17.1', ok=False))
    assert not ok and reasons == ['target host: CRIU is not usable: vdso']


def _varint(value):
    out = b''
    while True:
        byte, value = value & 0x7f, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def _field(number, value):
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def test_parse_stats():
    dump = _field(1, 1200) + _field(2, 149000) + _field(3, 5000) + _field(4, 800) + _field(5, 300) + \
        _field(6, 0) + _field(7, 35) + _field(9, 0)
    entry = _field(1, dump)
    image = struct.pack('<III', 0x55105940, 0x57093306, len(entry)) + entry
    assert _criu.parse_stats(image) == {'freezing_time_us': 1200, 'frozen_time_us': 149000, 'memdump_time_us': 5000,
                                        'memwrite_time_us': 800, 'pages_scanned': 300, 'pages_skipped_parent': 0,
                                        'pages_written': 35}
    restore = _field(1, 0) + _field(2, 0) + _field(3, 4000) + _field(4, 260000) + _field(5, 35)
    entry = _field(2, restore)
    image = struct.pack('<III', 0x55105940, 0x57093306, len(entry)) + entry
    assert _criu.parse_stats(image)['restore_time_us'] == 260000


def test_read_stats_missing(tmp_path):
    assert _criu.read_stats(str(tmp_path), 'dump') == {}
    (tmp_path / 'stats-dump').write_bytes(b'\x01\x02')
    assert _criu.read_stats(str(tmp_path), 'dump') == {}


def test_log_tail_puts_errors_first(tmp_path):
    lines = ['(00.%06d) line %d' % (i, i) for i in range(40)]
    lines[5] = '(00.000005) Error (criu/net.c:1737): net: couldn\'t restore veth interface eth0'
    (tmp_path / 'restore.log').write_text('\n'.join(lines) + '\n')
    tail = _criu.log_tail(str(tmp_path), 'restore').splitlines()
    assert tail[0] == lines[5] and tail[-1] == lines[-1]
    assert _criu.log_tail(str(tmp_path), 'dump') == ''


def test_last_error_skips_the_summary():
    text = ('Error (criu/util.c:1534): rlimit: Can\'t setup RLIMIT_NOFILE\n'
            'Error (criu/cr-dump.c:1528): A session leader of 19029(6) is outside of its pid namespace\n'
            'Error (criu/cr-dump.c:1975): Dumping FAILED.\n')
    assert 'session leader' in _criu._last_error(text, '')


def test_overlay_mount_and_restore_config():
    argv = _criu.overlay_mount_argv('overlay:/t/b/1/rootfs:/t/d/1/rootfs:/v/ves/web1/private/upper', 'userxattr',
                                    '/v/ves/web1/.criu-rootfs')
    assert argv == ['mount', '-t', 'overlay', '-o',
                    'lowerdir=/t/b/1/rootfs:/t/d/1/rootfs,upperdir=/v/ves/web1/private/upper,'
                    'workdir=/v/ves/web1/private/work,userxattr', '/t/b/1/rootfs', '/v/ves/web1/.criu-rootfs']
    with pytest.raises(VzError):
        _criu.overlay_mount_argv('overlay:relative', None, '/x')
    text = _criu.restore_config(CHECKPOINTABLE, '/v/ves/web1/.criu-rootfs')
    config = LxcConfig.parse(text)
    assert config.get('lxc.rootfs.path') == ['/v/ves/web1/.criu-rootfs'] and config.get('lxc.rootfs.options') == []
    assert config.get('lxc.idmap') == LxcConfig.parse(CHECKPOINTABLE).get('lxc.idmap')


def test_checkpoint_argv_and_errors(tmp_path):
    images = tmp_path / 'images'
    runner = Runner({})
    with pytest.raises(VzError) as failure:
        _criu.checkpoint(runner, '/v/ves', 'web1', str(images), criu='/usr/local/sbin/criu')
    assert runner.calls == [['env', 'PATH=/usr/local/sbin:' + _criu.STD_PATH, 'lxc-checkpoint', '-P', '/v/ves',
                             '-n', 'web1', '-D', str(images), '-s']]
    assert failure.value.message.startswith('checkpoint of VE web1 failed (lxc-checkpoint rc=1)')
    with pytest.raises(VzError):
        _criu.checkpoint(runner, '/v/ves', '../etc', str(images))
    with pytest.raises(VzError):
        _criu.checkpoint(runner, 'relative', 'web1', str(images))
    images.mkdir()
    (images / 'inventory.img').write_bytes(b'')
    with pytest.raises(VzError) as failure:
        _criu.checkpoint(runner, '/v/ves', 'web1', str(images))
    assert 'already holds a dump' in failure.value.message
    with pytest.raises(VzError) as failure:
        _criu.restore(runner, '/v/ves', 'web1', str(tmp_path))
    assert 'holds no dump' in failure.value.message


class FakeHost:
    def ve_dir(self, name):
        return '/var/lib/vz/ves/' + name


def _config(**meta):
    base = {'name': 'web1', 'cgroup_parent': 'vz', 'network': [], 'mounts': []}
    return dict(render_config(FakeHost(), dict(base, **meta), ['/var/lib/vz/templates/busybox/1/rootfs'], {}))


def test_ve_config_tty_and_console_keys():
    assert _config()['lxc.tty.max'] == '0' and 'lxc.console.path' not in _config()
    assert _config(ttys=4)['lxc.tty.max'] == '4'
    assert _config(console=False)['lxc.console.path'] == 'none'


def test_process_blockers_on_a_fake_proc(tmp_path):
    proc = tmp_path / 'proc'

    def task(pid, ns, pgrp, sid, comm):
        (proc / str(pid) / 'ns').mkdir(parents=True)
        os.symlink('pid:[%s]' % ns, proc / str(pid) / 'ns' / 'pid')
        (proc / str(pid) / 'stat').write_text('%d (%s) S 1 %d %d 0 -1\n' % (pid, comm, pgrp, sid))

    task(100, 've', 100, 100, 'init')
    task(101, 've', 101, 101, 'nc')
    task(7, 'host', 7, 7, 'bash')
    assert _criu.process_blockers(100, str(proc)) == []
    task(102, 've', 102, 7, 'sleep')
    reasons = _criu.process_blockers(100, str(proc))
    assert reasons == ['process 102 (sleep) is in a session led from outside the VE (pid 7): started by '
                       'lxc-attach without setsid?']
    # a runner in a pid namespace of its own sees a session led from above it as 0
    task(103, 've', 103, 0, 'tail')
    assert _criu.process_blockers(100, str(proc))[1] == (
        'process 103 (tail) is in a session led from outside the VE (not visible from this host\'s '
        'pid namespace): started by lxc-attach without setsid?')
    assert _criu.process_blockers(999, str(proc)) == ["the VE's init (pid 999) is not running"]


def test_mount_blockers_name_ramfs_credentials(tmp_path):
    (tmp_path / '42').mkdir()
    (tmp_path / '42' / 'mountinfo').write_text(
        '600 500 0:31 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c\n'
        '601 600 0:5 / /dev rw - tmpfs none rw,size=492k\n'
        '672 601 0:58 / /run/credentials/systemd-tmpfiles-setup.service ro,nosuid - ramfs ramfs rw,mode=700\n')
    assert _criu.mount_blockers(42, str(tmp_path)) == [
        'mount /run/credentials/systemd-tmpfiles-setup.service inside the VE is ramfs, which CRIU cannot dump '
        "(systemd's service credentials)"]
    assert _criu.mount_blockers(43, str(tmp_path)) == []
