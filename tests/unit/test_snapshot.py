"""_snapshot on a stopped VE made by hand (no LXC): copy snapshots, rollback, removal, clone sources."""

import json
import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host
from ansible_collections.osvirt.vz.plugins.module_utils._snapshot import (
    SnapshotTask, list_snapshots, parse_ref, snapshot_name)

VERSION = '20260101-000000'


class StoppedClient:
    """An LXC client for which every VE is stopped."""

    def state(self, name):
        return {'state': 'stopped', 'pid': None}

    def list(self):
        return {}


def make_ve(root, name='v1'):
    tpl = root / 'templates' / 'busybox' / VERSION
    (tpl / 'rootfs' / 'etc').mkdir(parents=True)
    (tpl / 'rootfs' / 'etc' / 'hosts').write_text('127.0.0.1 localhost\n')
    (tpl / 'manifest.json').write_text(json.dumps({'name': 'busybox', 'version': VERSION, 'checksum': 'sha256:x'}))
    ve = root / 'ves' / name
    (ve / 'private' / 'upper' / 'root').mkdir(parents=True)
    (ve / 'private' / 'work').mkdir()
    (ve / 'private' / 'upper' / 'root' / 'data').write_text('one\n')
    meta = {'name': name, 'template': 'busybox@' + VERSION, 'layers': ['busybox@' + VERSION], 'cgroup_parent': 'vz',
            'network': [], 'mounts': [], 'privileged': True, 'idmap': None, 'limits': {}, 'owner': 'team-a'}
    (ve / 've.json').write_text(json.dumps(meta))
    (ve / 'config').write_text('lxc.uts.name = %s\n' % name)
    return ve


def test_names_and_refs():
    assert snapshot_name('before-upgrade.1') == 'before-upgrade.1'
    for bad in ('', '.hidden', '../x', 'a/b', 'x' * 64, None):
        with pytest.raises(VzError, match='invalid snapshot name'):
            snapshot_name(bad)
    assert parse_ref('web1') == ('web1', None)
    assert parse_ref('web1@s1') == ('web1', 's1')
    with pytest.raises(VzError):
        parse_ref('Web1@s1')


def test_copy_snapshot_rollback_remove(tmp_path):
    if os.geteuid() != 0:
        pytest.skip('writes files as other owners')
    ve = make_ve(tmp_path)
    host = Host(vz_root=str(tmp_path), cgroup_parent='vz')
    task = SnapshotTask(host, StoppedClient())
    check = SnapshotTask(host, StoppedClient(), check_mode=True).run('v1', 's1', 'present')
    assert check['changed'] and not (ve / 'snapshots').exists()
    first = task.run('v1', 's1', 'present')
    assert first['changed'] and first['actions'] == ['snapshot v1 as s1']
    assert first['snapshot']['method'] == 'copy' and first['snapshot']['running'] is False
    assert task.run('v1', 's1', 'present')['changed'] is False
    assert (ve / 'snapshots' / 's1' / 'private' / 'upper' / 'root' / 'data').read_text() == 'one\n'

    (ve / 'private' / 'upper' / 'root' / 'data').write_text('two\n')
    (ve / 'private' / 'upper' / 'root' / 'new').write_text('x\n')
    done = task.run('v1', 's1', 'rollback')
    assert done['changed'] and done['actions'] == ['roll back v1 to s1']
    assert (ve / 'private' / 'upper' / 'root' / 'data').read_text() == 'one\n'
    assert not (ve / 'private' / 'upper' / 'root' / 'new').exists()
    assert (ve / 'private' / 'work').is_dir()
    assert [s['name'] for s in list_snapshots(host, 'v1')] == ['s1']
    assert list_snapshots(host, 'v1')[0]['size_bytes'] > 0

    with pytest.raises(VzError, match='VE v1 has no snapshot s9'):
        task.run('v1', 's9', 'rollback')
    with pytest.raises(VzError, match='does not exist'):
        task.run('v2', 's1', 'present')
    with pytest.raises(VzError, match='require_owner'):
        task.run('v1', 's2', 'present', require_owner='team-b')
    assert task.run('v1', 's1', 'absent')['changed'] is True
    assert task.run('v1', 's1', 'absent')['changed'] is False
    assert list_snapshots(host, 'v1') == []
    assert os.listdir(str(tmp_path / '.tmp')) == []


def test_backup_restore_roundtrip_of_a_stopped_ve(tmp_path):
    """restic for real on a VE made by hand: template stored once, restore on a host without the template."""
    import shutil
    from ansible_collections.osvirt.vz.plugins.module_utils._backup import BackupTask, Restic
    from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager
    if os.geteuid() != 0 or shutil.which('restic') is None:
        pytest.skip('needs root (bind mount) and restic')
    src_root, dst_root = tmp_path / 'a', tmp_path / 'b'
    make_ve(src_root)
    (src_root / 'templates' / 'busybox' / VERSION / 'manifest.json').write_text(json.dumps(
        {'name': 'busybox', 'version': VERSION,
         'checksum': 'sha256:' + __import__('ansible_collections.osvirt.vz.plugins.module_utils._templates',
                                            fromlist=['tree_checksum']).tree_checksum(
             str(src_root / 'templates' / 'busybox' / VERSION / 'rootfs'))}))
    restic = Restic(str(tmp_path / 'repo'), 'pw')
    src = Host(vz_root=str(src_root), cgroup_parent='vz')
    task = BackupTask(src, StoppedClient(), restic)
    with pytest.raises(VzError, match='does not exist or is not a restic repository'):
        task.backup('v1', 'b1')
    made = task.backup('v1', 'b1', init=True)
    assert made['changed'] and 'store template busybox@%s in the repository' % VERSION in made['actions']
    assert made['backup']['template'] == 'busybox@' + VERSION and made['backup']['backup'] == 'b1'
    assert task.backup('v1', 'b1')['changed'] is False
    again = task.backup('v1', 'b2')
    assert again['changed'] and not any('store template' in a for a in again['actions'])
    assert [b['backup'] for b in task.backups('v1')] == ['b1', 'b2']

    dst = Host(vz_root=str(dst_root), cgroup_parent='vz')
    other = BackupTask(dst, StoppedClient(), restic)
    done = other.restore('v1', 'v9', 'b1', manager=VeManager(dst, StoppedClient()))
    assert done['actions'][0] == 'restore template busybox@%s from the repository' % VERSION
    assert (dst_root / 'ves' / 'v9' / 'private' / 'upper' / 'root' / 'data').read_text() == 'one\n'
    assert json.loads((dst_root / 'ves' / 'v9' / 've.json').read_text())['name'] == 'v9'
    assert (dst_root / 'ves' / 'v9' / 'private' / 'upper' / 'etc' / 'hostname').read_text() == 'v9\n'
    assert (dst_root / 'templates' / 'busybox' / VERSION / 'rootfs' / 'etc' / 'hosts').is_file()
    with pytest.raises(VzError, match='VE v9 exists'):
        other.restore('v1', 'v9', 'b1', manager=VeManager(dst, StoppedClient()))
    assert other.prune('v1', {'keep_last': 1})['removed'][0]['backup'] == 'b1'
    assert other.verify()['verified'] is True
    assert os.listdir(str(dst_root / '.tmp')) == []


def test_backup_role_job_backs_up_every_ve_then_prunes(tmp_path):
    """roles/backup/files/osvirt-vz-backup with a settings file: every VE, then retention (templates kept)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    if os.geteuid() != 0 or shutil.which('restic') is None:
        pytest.skip('needs root (bind mount) and restic')
    make_ve(tmp_path / 'vz')
    (tmp_path / 'pw').write_text('pw')
    repo = Path(__file__).resolve().parents[2]
    settings = {'vz_root': str(tmp_path / 'vz'), 'repository': str(tmp_path / 'repo'),
                'password_file': str(tmp_path / 'pw'), 'ves': [], 'mode': None, 'init': True,
                'lib_dir': str(repo / '.build' / 'collections'), 'keep': {'keep_last': 1, 'keep_daily': None}}
    (tmp_path / 'settings.json').write_text(json.dumps(settings))
    job = [sys.executable, str(repo / 'roles' / 'backup' / 'files' / 'osvirt-vz-backup'), str(tmp_path / 'settings.json')]
    for removed in (0, 1):
        proc = subprocess.run(job, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith('v1: backed up as ') and 'removed %d backups' % removed in proc.stdout
    listing = subprocess.run(['restic', '-r', str(tmp_path / 'repo'), 'snapshots', '--json'], capture_output=True,
                             text=True, check=True, env=dict(os.environ, RESTIC_PASSWORD='pw')).stdout
    tags = sorted(t for s in json.loads(listing) for t in s['tags'] if t in ('osvirt-ve', 'osvirt-template'))
    assert tags == ['osvirt-template', 'osvirt-ve']


def test_a_restore_that_fails_midway_leaves_the_existing_ve_untouched(tmp_path):
    """A restore that dies while restic writes (here: fails) leaves the VE it would replace as it was,
    registers nothing and leaves nothing in .tmp once swept."""
    import shutil
    from ansible_collections.osvirt.vz.plugins.module_utils._backup import BackupTask, Restic
    from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager
    if os.geteuid() != 0 or shutil.which('restic') is None:
        pytest.skip('needs root (bind mount) and restic')
    ve = make_ve(tmp_path)
    host = Host(vz_root=str(tmp_path), cgroup_parent='vz')

    class Dying(Restic):
        def run(self, args, what, check=True, cwd=None):
            if args and args[0] == 'restore':
                super().run(args, what, check, cwd)   # the files land in .tmp, then the run "dies"
                raise VzError('killed while restoring')
            return super().run(args, what, check, cwd)

    BackupTask(host, StoppedClient(), Restic(str(tmp_path / 'repo'), 'pw')).backup('v1', 'b1', init=True)
    (ve / 'private' / 'upper' / 'root' / 'data').write_text('newer\n')
    before = sorted(str(p.relative_to(ve)) for p in ve.rglob('*'))
    task = BackupTask(host, StoppedClient(), Dying(str(tmp_path / 'repo'), 'pw'))
    with pytest.raises(VzError, match='killed while restoring'):
        task.restore('v1', 'v1', 'b1', force=True, manager=VeManager(host, StoppedClient()))
    assert (ve / 'private' / 'upper' / 'root' / 'data').read_text() == 'newer\n'
    assert sorted(str(p.relative_to(ve)) for p in ve.rglob('*')) == before
    assert sorted(os.listdir(str(tmp_path / 'ves'))) == ['v1']
    assert os.listdir(str(tmp_path / '.tmp')) == []


def test_archive_export_and_restore_on_a_host_without_the_template(tmp_path):
    """format archive: a zstd tar with meta/backup.json, the private area and the template layers."""
    import shutil
    from ansible_collections.osvirt.vz.plugins.module_utils._backup import ArchiveTask
    from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum
    from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager
    if os.geteuid() != 0 or shutil.which('zstd') is None:
        pytest.skip('needs root and zstd')
    src_root, dst_root = tmp_path / 'a', tmp_path / 'b'
    make_ve(src_root)
    tpl = src_root / 'templates' / 'busybox' / VERSION
    (tpl / 'manifest.json').write_text(json.dumps({'name': 'busybox', 'version': VERSION,
                                                   'checksum': 'sha256:' + tree_checksum(str(tpl / 'rootfs'))}))
    src = ArchiveTask(Host(vz_root=str(src_root), cgroup_parent='vz'), StoppedClient())
    out = tmp_path / 'out'
    check = ArchiveTask(Host(vz_root=str(src_root), cgroup_parent='vz'), StoppedClient(), check_mode=True)
    assert check.export('v1', str(out), 'b1')['changed'] and not out.exists()
    made = src.export('v1', str(out), 'b1')
    assert made['changed'] and made['archive'] == str(out / 'v1-b1.tar.zst')
    assert src.export('v1', str(out), 'b1')['changed'] is False
    with pytest.raises(VzError, match='does not exist'):
        src.export('nosuch', str(out), 'b1')
    dst = Host(vz_root=str(dst_root), cgroup_parent='vz')
    task = ArchiveTask(dst, StoppedClient())
    done = task.restore_archive(made['archive'], manager=VeManager(dst, StoppedClient()))
    assert done['actions'][0].startswith('restore template busybox@%s' % VERSION)
    assert (dst_root / 'ves' / 'v1' / 'private' / 'upper' / 'root' / 'data').read_text() == 'one\n'
    assert json.loads((dst_root / 'ves' / 'v1' / 've.json').read_text())['template'] == 'busybox@' + VERSION
    with pytest.raises(VzError, match='VE v1 exists'):
        task.restore_archive(made['archive'], manager=VeManager(dst, StoppedClient()))
    (tmp_path / 'junk.tar.zst').write_bytes(b'not an archive')
    with pytest.raises(VzError, match='is not a VE archive'):
        task.restore_archive(str(tmp_path / 'junk.tar.zst'), target='v2')
    assert os.listdir(str(dst_root / '.tmp')) == []
