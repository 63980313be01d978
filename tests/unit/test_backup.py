"""_backup: the pure parts (input checks, restic tags) and the restic runner's error messages."""

import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._backup import (
    Restic, backup_name, describe, repository, retention, tags_of)
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError


def test_repository_forms():
    assert repository('/srv/backups/vz') == '/srv/backups/vz'
    assert repository('sftp:backup@vault1:/srv/restic') == 'sftp:backup@vault1:/srv/restic'
    for bad in ('relative/path', 's3:bucket', '', None, '/x\n/y'):
        with pytest.raises(VzError, match='invalid repository'):
            repository(bad)


def test_retention_needs_a_rule_and_positive_counts():
    with pytest.raises(VzError, match='at least one keep rule'):
        retention({'keep_last': None})
    with pytest.raises(VzError, match='keep_daily must be a positive number'):
        retention({'keep_daily': 0})
    assert retention({'keep_last': 3, 'keep_weekly': None}) == {'keep_last': 3}


def test_backup_names():
    assert backup_name('daily-20261207') == 'daily-20261207'
    with pytest.raises(VzError, match='invalid backup name'):
        backup_name('../x')


def test_tags_and_description():
    snap = {'id': 'abcdef0123', 'time': 't', 'hostname': 'h',
            'tags': ['osvirt-ve', 've=web1', 'backup=b1', 'mode=suspend', 'template=busybox@1', 'protected']}
    assert tags_of(snap)['ve'] == 'web1' and tags_of(snap)['protected'] is True
    view = describe(snap)
    assert view == {'id': 'abcdef0123', 'short_id': 'abcdef01', 'time': 't', 've': 'web1', 'backup': 'b1',
                    'protected': True, 'template': 'busybox@1', 'mode': 'suspend', 'host': 'h'}


def test_password_goes_in_the_environment_and_errors_are_named(tmp_path):
    fake = tmp_path / 'restic'
    fake.write_text('#!/bin/sh\necho "$@" > %s/argv\nenv > %s/env\n'
                    'echo "Fatal: wrong password or no key found" >&2\nexit 1\n' % (tmp_path, tmp_path))
    os.chmod(fake, 0o755)
    restic = Restic('/srv/repo', 's3cret-pw', binary=str(fake))
    with pytest.raises(VzError, match='wrong password for repository /srv/repo'):
        restic.exists()
    assert 's3cret-pw' not in (tmp_path / 'argv').read_text()
    assert 'RESTIC_PASSWORD=s3cret-pw' in (tmp_path / 'env').read_text()
    with pytest.raises(VzError, match='password is required'):
        Restic('/srv/repo', '')
