"""Cgroup layout detection against fake mount tables and trees."""

from ansible_collections.osvirt.vz.plugins.module_utils._cgroups import CgroupTree

HYBRID = """\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def _tree(tmp_path, text, v2_controllers=None):
    mountinfo = tmp_path / 'mountinfo'
    mountinfo.write_text(text)
    tree = CgroupTree(str(mountinfo))
    if v2_controllers is not None:
        tree.v2_controllers = set(v2_controllers)
    return tree


def test_hybrid(tmp_path):
    tree = _tree(tmp_path, HYBRID)
    assert tree.layout == 'hybrid'
    assert tree.controller('memory') == ('v1', '/sys/fs/cgroup/memory')
    assert tree.controller('pids') == (None, None)
    assert 'systemd' not in tree.v1
    assert tree.ve_path('memory', 'vz', 'web1') == '/sys/fs/cgroup/memory/vz/web1'
    # LXC makes cgroups in the named hierarchy too: leftovers there must be found and removed
    assert tree.named == {'systemd': '/sys/fs/cgroup/systemd'}
    assert '/sys/fs/cgroup/systemd/vz.monitor/web1' in tree.ve_dirs('vz', 'web1')


def test_v2(tmp_path):
    root = tmp_path / 'cg'
    root.mkdir()
    (root / 'cgroup.controllers').write_text('cpuset cpu io memory pids\n')
    tree = _tree(tmp_path, '40 1 0:30 / %s rw - cgroup2 cgroup2 rw,nsdelegate\n' % root)
    assert tree.layout == 'v2'
    assert tree.controller('memory') == ('v2', str(root))
    assert tree.ve_dirs('vz', 'a') == [str(root / 'vz' / 'a'), str(root / 'vz.monitor' / 'a')]


def test_memory_usage_v2(tmp_path):
    root = tmp_path / 'cg'
    (root / 'vz' / 'web1').mkdir(parents=True)
    (root / 'cgroup.controllers').write_text('memory\n')
    (root / 'vz' / 'web1' / 'memory.current').write_text('123456\n')
    tree = _tree(tmp_path, '40 1 0:30 / %s rw - cgroup2 cgroup2 rw\n' % root)
    assert tree.memory_usage('vz', 'web1') == 123456
    assert tree.memory_usage('vz', 'nope') is None


def test_remove_stale_removes_empty_dirs_only(tmp_path):
    root = tmp_path / 'cg'
    (root / 'cgroup.controllers').parent.mkdir(parents=True)
    (root / 'cgroup.controllers').write_text('memory\n')
    (root / 'vz' / 'web1' / 'child').mkdir(parents=True)
    (root / 'vz.monitor' / 'web1').mkdir(parents=True)
    tree = _tree(tmp_path, '40 1 0:30 / %s rw - cgroup2 cgroup2 rw\n' % root)
    removed = tree.remove_stale('vz', 'web1')
    assert len(removed) == 3
    assert not (root / 'vz' / 'web1').exists() and (root / 'vz').exists()


def test_settle_waits_for_processes_to_leave(tmp_path):
    root = tmp_path / 'cg'
    (root / 'vz.monitor' / 'web1').mkdir(parents=True)
    (root / 'vz' / 'web1').mkdir(parents=True)
    (root / 'cgroup.controllers').write_text('memory\n')
    procs = root / 'vz.monitor' / 'web1' / 'cgroup.procs'
    procs.write_text('4242\n')
    (root / 'vz' / 'web1' / 'cgroup.procs').write_text('')
    tree = _tree(tmp_path, '40 1 0:30 / %s rw - cgroup2 cgroup2 rw\n' % root)
    assert tree.busy('vz', 'web1') == [str(root / 'vz.monitor' / 'web1')]
    assert tree.settle('vz', 'web1', timeout=0.3) == [str(root / 'vz.monitor' / 'web1')]
    procs.write_text('')
    assert tree.settle('vz', 'web1', timeout=0.3) == []
