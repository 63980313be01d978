"""Migration's pure rules: the journal, the pre-copy stop rule, what a rerun does, the plan, the
agent's request loop and the package it ships to the target."""

import io
import json
import os
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _migrate_agent, _migrate_journal as mj
from ansible_collections.osvirt.vz.plugins.module_utils._rsync import Remote, rsync_stats

MIB = 1 << 20


# -- journal -----------------------------------------------------------------------------
def test_journal_records_each_step_before_and_after(tmp_path):
    journal = mj.Journal(str(tmp_path), 'web1')
    assert not journal.exists
    journal.start(role='source', target='vz2', state='running')
    journal.begin('precopy')
    again = mj.Journal(str(tmp_path), 'web1')   # what a rerun after a crash reads
    assert again.data['doing'] == 'precopy' and again.data['done'] == []
    journal.end('precopy')
    journal.begin('freeze')
    again = mj.Journal(str(tmp_path), 'web1')
    assert again.data['done'] == ['precopy'] and again.data['doing'] == 'freeze'
    assert oct(os.stat(journal.path).st_mode & 0o777) == '0o600'
    journal.remove()
    journal.end('finish')   # after the last step removed it: nothing to record, no error
    assert not os.path.exists(journal.path)
    assert os.listdir(os.path.dirname(journal.path)) == []


def test_journal_path_refuses_bad_names(tmp_path):
    with pytest.raises(Exception):
        mj.journal_path(str(tmp_path), '../etc')


def test_corrupt_journal_is_not_mistaken_for_none(tmp_path):
    path = mj.journal_path(str(tmp_path), 'web1')
    os.makedirs(os.path.dirname(path))
    with open(path, 'w') as handle:
        handle.write('[1, 2]')
    assert mj.Journal(str(tmp_path), 'web1').data == {'ve': 'web1', 'corrupt': True}


# -- pre-copy stop rule ------------------------------------------------------------------------
@pytest.mark.parametrize('rounds, more', [
    ([], True),
    ([200 * MIB], True),
    ([200 * MIB, 20 * MIB], True),
    ([200 * MIB, 512 * 1024], False),          # under the threshold: the rest is copied frozen
    ([200 * MIB, 20 * MIB, 30 * MIB], False),  # the VE writes faster than we copy
    ([50 * MIB, 40 * MIB, 30 * MIB, 20 * MIB, 10 * MIB], False),   # the round limit
])
def test_next_round(rounds, more):
    assert mj.next_round(rounds, threshold=MIB, max_rounds=5) is more


def test_one_round_limit():
    assert mj.next_round([], max_rounds=1) and not mj.next_round([100 * MIB], max_rounds=1)


# -- what a rerun does ----------------------------------------------------------------------
@pytest.mark.parametrize('source, target, action', [
    (None, None, 'none'),
    ({'done': ['precopy'], 'doing': 'freeze'}, None, 'rollback'),
    ({'done': ['precopy'], 'doing': 'start'}, {'phase': 'started'}, 'rollback'),
    ({'done': ['start'], 'doing': 'commit'}, {'phase': 'committed'}, 'complete'),
    ({'done': ['start'], 'doing': 'commit'}, {'phase': 'started'}, 'rollback'),
    ({'done': ['start'], 'doing': 'commit'}, 'unreachable', 'unknown'),
    ({'done': ['commit'], 'doing': 'fence'}, 'unreachable', 'complete'),
    ({'done': ['commit', 'fence'], 'doing': 'remove', 'committed': True}, None, 'complete'),
    ({'done': ['precopy'], 'doing': 'final_sync'}, 'unreachable', 'rollback'),
    (None, {'phase': 'staging'}, 'rollback'),           # the source's journal is gone: clean the target
    (None, {'phase': 'committed'}, 'complete'),
])
def test_resume_action(source, target, action):
    assert mj.resume_action(source, target) == action


@pytest.mark.parametrize('source, target, resumable', [
    (None, {'phase': 'staging', 'kept': True}, True),             # keep_target: a copy to resume onto
    (None, {'phase': 'staging'}, False),                          # an abandoned copy: rolled back
    (None, {'phase': 'registered', 'kept': True}, False),         # something registered: rolled back
    ({'done': ['precopy']}, {'phase': 'staging', 'kept': True}, False),   # the source is unfinished too
    (None, None, False), (None, 'unreachable', False),
])
def test_resumable_copy(source, target, resumable):
    assert mj.resumable_copy(source, target) is resumable


# -- plan and figures ---------------------------------------------------------------------------
def test_plans():
    assert mj.plan_steps('warm', True, True, False) == [
        'template', 'precopy', 'freeze', 'final_sync', 'stop', 'register', 'start', 'commit', 'fence', 'remove',
        'finish']
    assert mj.plan_steps('offline', True, False, True) == [
        'stop', 'final_sync', 'register', 'start', 'commit', 'fence', 'keep', 'finish']
    assert mj.plan_steps('offline', False, False, False) == [
        'final_sync', 'register', 'commit', 'fence', 'remove', 'finish']
    assert mj.plan_steps('live', True, False, False)[:4] == ['precopy', 'checkpoint', 'final_sync', 'stop']
    for plan in (mj.plan_steps(m, r, t, k) for m in mj.MODES for r in (True, False) for t in (True, False)
                 for k in (True, False)):
        commit = plan.index('commit')
        assert all(step in mj.SOURCE_STEPS for step in plan)
        # everything that changes the source for good comes after the commit
        assert all(plan.index(s) > commit for s in ('fence', 'remove', 'keep', 'finish') if s in plan)


def test_downtime():
    assert mj.downtime({'freeze_at': 10.0, 'running_at': 10.75}, 'warm') == 0.75
    assert mj.downtime({'stop_at': 3.0, 'running_at': 5.5}, 'offline') == 2.5
    assert mj.downtime({'stop_at': 3.0}, 'offline') is None   # a stopped VE is not started


def test_rsync_stats():
    text = ('Number of files: 12 (reg: 8, dir: 4)\nTotal file size: 3,001,234 bytes\n'
            'Total transferred file size: 1,048,577 bytes\nLiteral data: 1,048,577 bytes\n'
            'Total bytes sent: 1,050,112\nTotal bytes received: 201\n')
    assert rsync_stats(text) == {'files': 1048577, 'sent': 1050112}
    assert rsync_stats('') == {'files': 0, 'sent': 0}


def test_remote_command_quotes_every_word():
    remote = Remote('192.0.2.7', ssh_key=None, port=2222, alive_interval=2)
    argv = remote.command_argv(['python3', '-c', 'print("a b")', '/var/lib/vz'])
    assert argv[-5:] == ['192.0.2.7', 'python3', '-c', "'print(\"a b\")'", '/var/lib/vz']
    assert 'ServerAliveInterval=2' in argv and '-p' in argv


# -- the agent's loop and package ---------------------------------------------------------------
def _serve(requests, idle=5):
    out = io.StringIO()
    stdin = io.BytesIO(b''.join(json.dumps(r).encode() + b'\n' for r in requests))
    _migrate_agent.serve('/nonexistent-vz-root', idle=idle, stdin=stdin, stdout=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_agent_answers_each_request_and_errors_are_answers():
    answers = _serve([{'op': 'ping'}, {'op': 'state'}, {'op': 'rm -rf'}, {'op': 'ping'}, {'op': 'bye'}])
    assert answers[0] == {'ok': True, 'result': True}
    assert answers[1]['ok'] is False and 'hello names it first' in answers[1]['error']
    assert answers[2]['ok'] is False
    assert answers[3] == {'ok': True, 'result': True} and answers[4]['ok']


def test_package_zip_holds_the_agent_and_its_imports():
    names = zipfile.ZipFile(io.BytesIO(_migrate_agent.package_zip())).namelist()
    prefix = 'ansible_collections/osvirt/vz/plugins/module_utils/'
    for module in ('_migrate_agent.py', '_ve_ops.py', '_addrpool.py', '_antispoof.py', '_shaping.py', '_vnet.py',
                   '_locks.py', '_engine/client.py'):
        assert prefix + module in names, module
    assert 'ansible_collections/__init__.py' in names


def test_bootstrap_runs_the_agent_from_the_package(tmp_path):
    blob = _migrate_agent.package_zip()
    request = b'{"op": "ping"}\n{"op": "bye"}\n'
    proc = subprocess.run([sys.executable, '-c', _migrate_agent.BOOTSTRAP, str(tmp_path), '5'],
                          input=b'%d\n' % len(blob) + blob + request, capture_output=True, timeout=60,
                          cwd=str(tmp_path), env={'PATH': os.environ['PATH']}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(l) for l in proc.stdout.splitlines()] == [{'ok': True, 'result': True}] * 2


def test_push_names_a_full_target_disk(tmp_path, monkeypatch):
    """rsync's ENOSPC from the receiver becomes one message naming the target and the directory."""
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'rsync').write_text('#!/bin/sh\necho \'rsync: [receiver] write failed on "/x/f": No space left on device '
                                '(28)\' >&2\necho "rsync error: error in file IO (code 11)" >&2\nexit 11\n')
    (fake / 'rsync').chmod(0o755)
    monkeypatch.setenv('PATH', '%s:%s' % (fake, os.environ['PATH']))
    remote = Remote('198.18.0.12')
    with pytest.raises(Exception) as info:
        remote.push(str(tmp_path), '/var/lib/vz/migrations/web1.incoming', 'pre-copy of VE web1 to vz2')
    message = str(info.value)
    assert message.startswith('pre-copy of VE web1 to vz2 failed: the disk of root@198.18.0.12 is full'), message
    assert 'under /var/lib/vz/migrations/web1.incoming' in message and 'No space left on device' in message
    assert info.value.details['no_space'] is True
    (fake / 'rsync').write_text('#!/bin/sh\necho "rsync: some other error" >&2\nexit 23\n')
    with pytest.raises(Exception) as info:
        remote.push(str(tmp_path), '/d', 'copy')
    assert 'is full' not in str(info.value) and 'rsync rc=23' in str(info.value), str(info.value)


class _SlowTeardown:
    """A VE whose init was killed but whose LXC teardown outlasts the wait (states given in turn)."""

    def __init__(self, states, kill_error):
        self.states, self.kill_error, self.calls = list(states), kill_error, []

    def state(self, _name):
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {'state': state, 'pid': None}

    def wait(self, name, states, timeout=10):
        self.calls.append(('wait', timeout))
        raise _migrate_agent.VzError('waiting for VE %s to be STOPPED failed' % name)

    def unfreeze(self, _name):
        self.calls.append(('unfreeze',))

    def kill(self, name):
        self.calls.append(('kill',))
        if self.kill_error:
            raise _migrate_agent.VzError('killing VE %s failed (rc=2): %s is not running' % (name, name))


def _ops(fake, stop_timeout=30):
    ops = object.__new__(_migrate_agent.MigrationOps)
    ops.ve, ops.client, ops.stop_timeout = fake, fake, stop_timeout
    return ops


def test_kill_of_frozen_ve_takes_a_slow_teardown_as_stopped():
    fake = _SlowTeardown(['running', 'stopped'], kill_error=True)   # stopped by the time lxc-stop --kill ran
    _ops(fake).stop('web1', kill=True)
    assert fake.calls == [('wait', 30), ('kill',)]
    fake = _SlowTeardown(['running', 'running'], kill_error=True)   # still running: that is a failure
    with pytest.raises(_migrate_agent.VzError):
        _ops(fake, stop_timeout=5).stop('web1', kill=True)
    assert fake.calls[0] == ('wait', 10)
