"""Work directories in .tmp: held while their process lives, swept once it died (_staging.py)."""

import multiprocessing
import os
import time

from ansible_collections.osvirt.vz.plugins.module_utils import _staging


def _store(tmp_path):
    tmp = tmp_path / '.tmp'
    tmp.mkdir()
    (tmp_path / 'locks').mkdir()
    return str(tmp)


def _make_and_wait(tmp, ready, queue, seconds):
    path = _staging.make(tmp, 'build-busybox-')
    with open(os.path.join(path, 'half-built'), 'w') as handle:
        handle.write('x')
    queue.put(path)
    ready.set()
    time.sleep(seconds)


def test_a_live_work_directory_is_never_swept(tmp_path):
    tmp = _store(tmp_path)
    ready, queue = multiprocessing.Event(), multiprocessing.Queue()
    worker = multiprocessing.Process(target=_make_and_wait, args=(tmp, ready, queue, 30))
    worker.start()
    try:
        assert ready.wait(5)
        path = queue.get(timeout=5)
        assert _staging.sweep(tmp) == []
        assert os.path.isfile(os.path.join(path, 'half-built'))
    finally:
        worker.kill()
        worker.join()


def test_a_killed_runs_work_directory_is_swept(tmp_path):
    tmp = _store(tmp_path)
    ready, queue = multiprocessing.Event(), multiprocessing.Queue()
    worker = multiprocessing.Process(target=_make_and_wait, args=(tmp, ready, queue, 30))
    worker.start()
    assert ready.wait(5)
    path = queue.get(timeout=5)
    worker.kill()   # SIGKILL: no cleanup code runs
    worker.join()
    assert os.path.isdir(path)
    assert _staging.sweep(tmp) == [os.path.basename(path)]
    assert os.listdir(tmp) == []


def test_own_directories_release_and_discard(tmp_path):
    tmp = _store(tmp_path)
    kept = _staging.make(tmp, 've-web1-')
    gone = _staging.make(tmp, 'trash-ve-web2-')
    assert _staging.sweep(tmp) == []          # this process holds both
    _staging.discard(gone)
    assert not os.path.exists(gone)
    published = str(tmp_path / 'web1')
    os.rename(kept, published)                # published by rename, then released
    _staging.release(kept)
    assert os.listdir(tmp) == [] and os.path.isdir(published)
    assert _staging._held == {}


def test_entries_of_others_are_left_alone(tmp_path):
    tmp = _store(tmp_path)
    os.mkdir(os.path.join(tmp, 'variant-abc'))     # not a prefix of ours
    os.mkdir(os.path.join(tmp, 'build-x-dead'))    # ours, held by nobody
    assert _staging.sweep(tmp) == ['build-x-dead']
    assert os.listdir(tmp) == ['variant-abc']


def test_mountinfo_unescape():
    assert _staging._unescape(r'/var/tmp/a\040b/.tmp') == '/var/tmp/a b/.tmp'
    assert _staging._unescape('/plain') == '/plain'
