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
