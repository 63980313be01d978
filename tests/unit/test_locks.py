"""Per-VE locks: a second operation waits, then fails saying what holds the VE."""

import multiprocessing
import time

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._locks import Lock


def _hold(locks_dir, ready, seconds):
    with Lock(locks_dir, 've', 'web1', 'osvirt.vz.ve web1 (state=started)'):
        ready.set()
        time.sleep(seconds)


def test_busy_message_names_the_operation(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 2))
    holder.start()
    try:
        assert ready.wait(5)
        start = time.monotonic()
        with pytest.raises(VzError) as err:
            Lock(str(tmp_path), 've', 'web1', 'other', timeout=0.3).acquire()
        assert time.monotonic() - start >= 0.3
        assert str(err.value).startswith('VE web1 is busy: osvirt.vz.ve web1 (state=started)')
    finally:
        holder.join()


def test_waiter_gets_the_lock_after_release(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 0.3))
    holder.start()
    try:
        assert ready.wait(5)
        with Lock(str(tmp_path), 've', 'web1', 'second', timeout=5):
            pass
    finally:
        holder.join()


def test_lock_of_dead_holder_is_free(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 30))
    holder.start()
    assert ready.wait(5)
    holder.kill()
    holder.join()
    with Lock(str(tmp_path), 've', 'web1', 'after crash', timeout=1):
        pass


def test_other_ves_are_independent(tmp_path):
    with Lock(str(tmp_path), 've', 'a', 'one', timeout=0):
        with Lock(str(tmp_path), 've', 'b', 'two', timeout=0):
            pass


def test_busy_message_says_how_long_and_how_to_wait_longer(tmp_path):
    ready = multiprocessing.Event()
    holder = multiprocessing.Process(target=_hold, args=(str(tmp_path), ready, 2))
    holder.start()
    try:
        assert ready.wait(5)
        with pytest.raises(VzError) as err:
            Lock(str(tmp_path), 've', 'web1', 'other', timeout=0.5, hint='lock_timeout sets how long to wait').acquire()
        assert str(err.value) == ('VE web1 is busy: osvirt.vz.ve web1 (state=started) (pid %d) holds it; gave up '
                                  'waiting after 0.5 s (lock_timeout sets how long to wait)' % holder.pid)
        assert err.value.details.get('busy') is True
    finally:
        holder.join()


def test_release_remove_takes_the_file_away(tmp_path):
    lock = Lock(str(tmp_path), 've', 'gone', 'destroy', timeout=0).acquire()
    lock.release(remove=True)
    assert not (tmp_path / 've-gone.lock').exists()
    with Lock(str(tmp_path), 've', 'kept', 'start', timeout=0):
        pass
    assert (tmp_path / 've-kept.lock').exists()
    with Lock(str(tmp_path), 'bridge', 'br0', 'absent', timeout=0) as held:
        held.remove_on_exit = True
    assert not (tmp_path / 'bridge-br0.lock').exists()


def _remove_while_waited_for(locks_dir, ready, go):
    lock = Lock(locks_dir, 've', 'web1', 'removing web1').acquire()
    ready.set()
    go.wait(5)
    time.sleep(0.3)   # the waiter is blocked on this file by now
    lock.release(remove=True)


def test_waiter_on_a_removed_file_locks_the_new_one(tmp_path):
    """A waiter that was blocked on the file its holder removed must not hold a lock on a file no
    one else can see: it starts again on the path, so a third process cannot get the lock too."""
    ready, go = multiprocessing.Event(), multiprocessing.Event()
    holder = multiprocessing.Process(target=_remove_while_waited_for, args=(str(tmp_path), ready, go))
    holder.start()
    try:
        assert ready.wait(5)
        go.set()
        with Lock(str(tmp_path), 've', 'web1', 'creating web1', timeout=5):
            path = tmp_path / 've-web1.lock'
            assert path.exists(), 'the waiter holds a lock on a removed file'
            with pytest.raises(VzError):
                Lock(str(tmp_path), 've', 'web1', 'third', timeout=0).acquire()
    finally:
        holder.join()


def _hold_and_spawn(locks_dir, ready, pid_file):
    """Hold the lock, start a long-lived command (as lxc-start leaves a VE's monitor), then wait."""
    import subprocess  # pylint: disable=import-outside-toplevel
    with Lock(locks_dir, 've', 'web1', 'starting web1'):
        child = subprocess.Popen(['sleep', '30'], start_new_session=True)
        with open(pid_file, 'w') as handle:
            handle.write(str(child.pid))
        ready.set()
        time.sleep(30)


def test_lock_of_a_killed_holder_is_free_while_its_children_live(tmp_path):
    # a VE's LXC monitor outlives the module that started it: it must not keep the VE's lock
    import os  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    ready, pid_file = multiprocessing.Event(), tmp_path / 'child.pid'
    holder = multiprocessing.Process(target=_hold_and_spawn, args=(str(tmp_path), ready, str(pid_file)))
    holder.start()
    assert ready.wait(5)
    child = int(pid_file.read_text())
    try:
        holder.kill()
        holder.join()
        os.kill(child, 0)   # still running
        with Lock(str(tmp_path), 've', 'web1', 'after crash', timeout=1):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
