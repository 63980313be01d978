"""Limits: unit strings, aliases, validation and the cgroup v1 / v2 mapping against fake trees."""

import os

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils import _limits as L
from ansible_collections.osvirt.vz.plugins.module_utils._cgroups import CgroupTree
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

G = 1 << 30
M = 1 << 20


# -- fake trees --------------------------------------------------------------------------------
def v1_tree(tmp_path, burst=True, memsw=True, weight='blkio.bfq.weight'):
    """A hybrid host like this machine: v1 controllers, an empty cgroup2 mount."""
    root = tmp_path / 'cg'
    lines = []
    files = {
        'cpu': ['cpu.shares', 'cpu.cfs_quota_us', 'cpu.cfs_period_us', 'cpu.stat'] + (['cpu.cfs_burst_us'] if burst else []),
        'cpuacct': ['cpuacct.usage'],
        'cpuset': ['cpuset.cpus'],
        'memory': ['memory.limit_in_bytes', 'memory.soft_limit_in_bytes', 'memory.usage_in_bytes']
        + (['memory.memsw.limit_in_bytes'] if memsw else []),
        'pids': [],
        'blkio': ['blkio.throttle.read_bps_device', 'blkio.throttle.write_bps_device',
                  'blkio.throttle.read_iops_device', 'blkio.throttle.write_iops_device'],
    }
    for number, (ctrl, names) in enumerate(files.items()):
        mount = root / ctrl
        (mount / 'vz' / 'web1').mkdir(parents=True)
        for name in names + (['blkio.bfq.io_service_bytes'] if ctrl == 'blkio' and weight == 'blkio.bfq.weight'
                             else []):
            (mount / name).write_text('0\n')
        for child in ('vz', 'vz/web1'):
            for name in names + (['pids.max', 'pids.current', 'pids.events'] if ctrl == 'pids' else []) + \
                    ([weight] if ctrl == 'blkio' and weight else []):
                (mount / child / name).write_text('0\n')
        lines.append('%d 1 0:%d / %s rw - cgroup cgroup rw,%s' % (30 + number, 40 + number, mount, ctrl))
    (root / 'unified').mkdir()
    (root / 'unified' / 'cgroup.controllers').write_text('\n')
    lines.append('99 1 0:99 / %s rw - cgroup2 cgroup2 rw' % (root / 'unified'))
    (tmp_path / 'mountinfo').write_text('\n'.join(lines) + '\n')
    return CgroupTree(str(tmp_path / 'mountinfo'))


def v2_tree(tmp_path, swap=True):
    root = tmp_path / 'cg2'
    (root / 'vz' / 'web1').mkdir(parents=True)
    (root / 'cgroup.controllers').write_text('cpuset cpu io memory pids\n')
    names = ['cpu.weight', 'cpu.max', 'cpu.max.burst', 'cpuset.cpus', 'memory.max', 'memory.high', 'memory.low',
             'pids.max', 'io.max', 'io.weight', 'memory.current', 'memory.events', 'pids.current', 'pids.events',
             'cpu.stat'] + (['memory.swap.max'] if swap else [])
    for child in ('vz', 'vz/web1'):
        for name in names:
            (root / child / name).write_text('0\n')
    (root / 'vz' / 'cgroup.subtree_control').write_text('cpuset cpu io memory pids\n')
    (tmp_path / 'mountinfo2').write_text('40 1 0:30 / %s rw - cgroup2 cgroup2 rw\n' % root)
    return CgroupTree(str(tmp_path / 'mountinfo2'))


def facts(tree, cpus=2, mem=24 * G, overcommit=1.0):
    return L.HostFacts(tree, cpu_ids=range(cpus), mem_total=mem, overcommit=overcommit, swap_total=0)


def canon(raw, current=None):
    return L.merge(current or {}, L.parse_change(raw))


# -- units -------------------------------------------------------------------------------------
@pytest.mark.parametrize('text,value', [('512M', 512 * M), ('1.5G', 3 * G // 2), ('2GiB', 2 * G), (1048576, M),
                                        ('64K', 65536), ('1T', 1 << 40), ('100', 100)])
def test_sizes(text, value):
    assert L.parse_size(text) == value


@pytest.mark.parametrize('text,value', [('100Mbit', 100 * 10 ** 6), ('1Gbit', 10 ** 9), ('512kbit', 512000),
                                        ('20M/s', 20 * M * 8), ('100mbps', 10 ** 8), (8000, 8000)])
def test_bit_rates(text, value):
    assert L.parse_bit_rate(text) == value


@pytest.mark.parametrize('text,value', [('150%', 150), ('1.5cpus', 150), ('2cores', 200), (50, 50), ('12.5%', 12.5)])
def test_cpu(text, value):
    assert L.parse_cpu(text) == value


def test_bytes_rate_and_cpuset():
    assert L.parse_bytes_rate('20M/s') == 20 * M
    assert L.parse_cpuset('0-2,5') == [0, 1, 2, 5]
    assert L.format_cpuset([0, 1, 2, 5, 7, 8]) == '0-2,5,7-8'
    with pytest.raises(VzError, match='bytes per second'):
        L.parse_bytes_rate('100Mbit')


# -- parsing the dict --------------------------------------------------------------------------
def test_nested_and_aliases():
    limits = canon({'cpu': {'units': 2000, 'limit': '150%'}, 'ram': '512M', 'swap': '256M', 'numproc': 100,
                    'iolimit': '20M/s', 'iopslimit': 500, 'rate': '100Mbit', 'diskspace': '2G', 'ioprio': 6})
    assert limits == {
        'cpu': {'units': 2000, 'limit': 150},
        'memory': {'ram': 512 * M, 'swap': 256 * M},
        'numproc': 100,
        'disk': {'read_bps': 20 * M, 'write_bps': 20 * M, 'read_iops': 500, 'write_iops': 500, 'space': 2 * G,
                 'ioprio': 6},
        'net': {'rate': 10 ** 8},
    }
    assert L.describe(limits)['memory'] == {'ram': '512M', 'swap': '256M'}
    assert L.describe(limits)['net'] == {'rate': '100Mbit'}


def test_merge_keeps_and_removes():
    current = canon({'memory': {'ram': '1G', 'high': '512M'}, 'numproc': 50})
    new = canon({'memory': {'high': None}, 'numproc': 'unlimited', 'cpu': {'units': 500}}, current)
    assert new == {'memory': {'ram': G}, 'cpu': {'units': 500}}
    assert canon({'memory': None}, current) == {'numproc': 50}


@pytest.mark.parametrize('raw,message', [
    ({'memory': {'ram': '-5M'}}, 'must not be negative'),
    ({'memory': {'ram': -5}}, 'must not be negative'),
    ({'numproc': 0}, 'greater than zero'),
    ({'memory': {'ram': '512X'}}, 'unknown size unit'),
    ({'memory': {'rom': '1G'}}, 'unknown key memory.rom'),
    ({'cpuunit': 5}, 'unknown key cpuunit'),
    ({'cpu': {'units': 5}}, 'at least 8'),
    ({'disk': {'ioprio': 8}}, 'at most 7'),
    ({'ram': '1G', 'memory': {'ram': '2G'}}, 'given twice'),
    ({'cpu': {'limit': '150 apples'}}, 'unknown unit'),
    ({'net': {'rate': '100 parsecs'}}, 'unknown rate unit'),
    ({'cpu': 5}, 'must be a dict'),
    ({'memory': {'ram': True}}, 'expected a size'),
])
def test_bad_input(raw, message):
    with pytest.raises(VzError, match=message):
        L.parse_change(raw)


def test_zero_allowed_for_swap_and_ioprio():
    assert canon({'memory': {'ram': '1G', 'swap': 0}, 'disk': {'ioprio': 0}}) == \
        {'memory': {'ram': G, 'swap': 0}, 'disk': {'ioprio': 0}}


# -- checks against the host -------------------------------------------------------------------
@pytest.mark.parametrize('raw,message', [
    ({'memory': {'ram': '512M', 'high': '1G'}}, 'memory.high 1G is above memory.ram 512M'),
    ({'memory': {'ram': '512M', 'guarantee': '1G'}}, 'guarantee 1G is above'),
    ({'memory': {'ram': '64G'}}, r"above the host's memory 24G; set overcommit"),
    ({'cpu': {'cpus': 3}}, 'cpu.cpus 3 is more than the 2 CPUs'),
    ({'cpu': {'cpuset': '0-3'}}, 'names CPUs the host does not have: 2-3'),
    ({'cpu': {'limit': '300%'}}, 'more than the 2 CPUs'),
    ({'cpu': {'burst': '50%'}}, 'cpu.burst needs cpu.limit'),
    ({'cpu': {'limit': '50%', 'burst': '80%'}}, 'above cpu.limit'),
    ({'net': {'ceil': '10Mbit'}}, 'net.ceil needs net.rate'),
    ({'net': {'rate': '10Mbit', 'ceil': '5Mbit'}}, 'below net.rate'),
    ({'memory': {'swap': '1G'}}, 'memory.swap needs memory.ram on this host'),
])
def test_check_refuses(tmp_path, raw, message):
    with pytest.raises(VzError, match=message):
        L.check('web1', canon(raw), facts(v1_tree(tmp_path)))


def test_overcommit_allows_ram_above_memory(tmp_path):
    L.check('web1', canon({'memory': {'ram': '40G'}}), facts(v1_tree(tmp_path), overcommit=2))


def test_swap_alone_is_fine_on_v2(tmp_path):
    L.check('web1', canon({'memory': {'swap': '1G'}}), facts(v2_tree(tmp_path)))


def test_admission(tmp_path):
    hf = facts(v1_tree(tmp_path), mem=8 * G)
    others = {'a': canon({'memory': {'guarantee': '3G'}}), 'b': canon({'memory': {'guarantee': '3G'}}), 'c': {}}
    L.admit('web1', canon({'memory': {'guarantee': '2G'}}), others, hf)
    with pytest.raises(VzError, match=r'VE web1: admission refused: memory.guarantee 3G plus the 6G already '
                                      r'guaranteed to 2 other VE\(s\) is 9G, above the host capacity 8G'):
        L.admit('web1', canon({'memory': {'guarantee': '3G'}}), others, hf)
    roomy = facts(v1_tree(tmp_path / 'x'), mem=8 * G, overcommit=1.5)
    L.admit('web1', canon({'memory': {'guarantee': '3G'}}), others, roomy)


# -- mapping -----------------------------------------------------------------------------------
FULL = {'cpu': {'units': 2000, 'limit': '150%', 'burst': '50%', 'cpuset': '1'},
        'memory': {'ram': '512M', 'high': '384M', 'guarantee': '128M', 'swap': '256M'}, 'numproc': 100,
        'disk': {'ioprio': 6, 'read_bps': '20M/s', 'write_iops': 300}}


def test_mapping_v1(tmp_path):
    tree = v1_tree(tmp_path)
    settings = L.cgroup_settings('web1', canon(FULL), facts(tree), device='254:0')
    got = [(s.file, s.value) for s in settings]
    assert got == [
        ('cpu.shares', '2048'), ('cpu.cfs_period_us', '100000'), ('cpu.cfs_quota_us', '150000'),
        ('cpu.cfs_burst_us', '50000'), ('cpuset.cpus', '1'),
        ('memory.limit_in_bytes', str(512 * M)), ('memory.soft_limit_in_bytes', str(384 * M)),
        ('memory.memsw.limit_in_bytes', str(768 * M)), ('pids.max', '100'),
        ('blkio.bfq.weight', '700'), ('blkio.throttle.read_bps_device', '254:0 %d' % (20 * M)),
        ('blkio.throttle.write_iops_device', '254:0 300'),
    ]
    assert L.config_items(settings)[0] == ('lxc.cgroup.cpu.shares', '2048')
    L.check_files('web1', settings, tree, 'vz')
    assert all(L.is_limit_key(k) for k, _v in L.config_items(settings))
    assert not L.is_limit_key('lxc.cgroup.devices.allow') and not L.is_limit_key('lxc.cgroup.dir.container')


def test_mapping_v2(tmp_path):
    tree = v2_tree(tmp_path)
    settings = L.cgroup_settings('web1', canon(FULL), facts(tree), device='254:0')
    got = [(s.file, s.value) for s in settings]
    assert got == [
        ('cpu.weight', '200'), ('cpu.max', '150000 100000'), ('cpu.max.burst', '50000'), ('cpuset.cpus', '1'),
        ('memory.max', str(512 * M)), ('memory.high', str(384 * M)), ('memory.low', str(128 * M)),
        ('memory.swap.max', str(256 * M)), ('pids.max', '100'), ('io.weight', 'default 400'),
        ('io.max', '254:0 rbps=%d wbps=max riops=max wiops=300' % (20 * M)),
    ]
    assert L.config_items(settings)[1] == ('lxc.cgroup2.cpu.max', '150000 100000')
    L.check_files('web1', settings, tree, 'vz')


def test_ioprio_scale_v2():
    # each step doubles the weight; 4 is the kernel's default weight 100
    assert [25 * 2 ** p // 4 for p in range(8)] == [6, 12, 25, 50, 100, 200, 400, 800]


def test_missing_files_are_named(tmp_path):
    tree = v1_tree(tmp_path, burst=False, memsw=False)
    settings = L.cgroup_settings('web1', canon({'cpu': {'limit': '50%', 'burst': '10%'}}), facts(tree))
    with pytest.raises(VzError, match=r'cpu.burst cannot be applied on this host: it needs the cgroup file '
                                      r'cpu.cfs_burst_us .* Linux 5.14'):
        L.check_files('web1', settings, tree, 'vz')
    settings = L.cgroup_settings('web1', canon({'memory': {'ram': '1G', 'swap': '1G'}}), facts(tree))
    with pytest.raises(VzError, match='memory.swap cannot .* swap accounting is off'):
        L.check_files('web1', settings, tree, 'vz')
    tree2 = v2_tree(tmp_path, swap=False)
    settings = L.cgroup_settings('web1', canon({'memory': {'swap': '1G'}}), facts(tree2))
    with pytest.raises(VzError, match='memory.swap.max'):
        L.check_files('web1', settings, tree2, 'vz')


def test_missing_controller(tmp_path):
    tree = v2_tree(tmp_path)
    tree.v2_controllers.discard('pids')
    with pytest.raises(VzError, match='numproc needs the pids cgroup controller'):
        L.cgroup_settings('web1', {'numproc': 5}, facts(tree))


def test_cpus_spread_and_stable():
    first = L.spread_cpus('web1', 2, range(8))
    assert len(first) == 2 and first == L.spread_cpus('web1', 2, range(8))
    starts = {L.spread_cpus('ve%d' % i, 1, range(8))[0] for i in range(40)}
    assert len(starts) > 4


def test_io_needs_device(tmp_path):
    with pytest.raises(VzError, match='block device'):
        L.cgroup_settings('web1', canon({'disk': {'read_bps': '1M/s'}}), facts(v1_tree(tmp_path)))


# -- live changes ------------------------------------------------------------------------------
def _files(tree, ctrl):
    return tree.ve_path(ctrl, 'vz', 'web1')


def test_live_plan_orders_memsw_when_raising(tmp_path):
    tree = v1_tree(tmp_path)
    mem = _files(tree, 'memory')
    open(os.path.join(mem, 'memory.memsw.limit_in_bytes'), 'w').write('%d\n' % (768 * M))
    hf = facts(tree)
    old = L.cgroup_settings('web1', canon({'memory': {'ram': '512M', 'swap': '256M'}}), hf)
    new = L.cgroup_settings('web1', canon({'memory': {'ram': '1G', 'swap': '256M'}}), hf)
    writes = L.live_plan(old, new, tree, 'vz', 'web1')
    assert [os.path.basename(p) for p, _v in writes] == ['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']
    smaller = L.cgroup_settings('web1', canon({'memory': {'ram': '256M', 'swap': '256M'}}), hf)
    writes = L.live_plan(old, smaller, tree, 'vz', 'web1')
    assert [os.path.basename(p) for p, _v in writes] == ['memory.limit_in_bytes', 'memory.memsw.limit_in_bytes']


def test_live_plan_resets_removed_keys(tmp_path):
    tree = v1_tree(tmp_path)
    hf = facts(tree)
    old = L.cgroup_settings('web1', canon({'numproc': 10, 'cpu': {'limit': '50%'}}), hf)
    writes = dict((os.path.basename(p), v) for p, v in L.live_plan(old, [], tree, 'vz', 'web1'))
    assert writes == {'pids.max': 'max', 'cpu.cfs_quota_us': '-1', 'cpu.cfs_period_us': '100000'}


def test_apply_live_rolls_back(tmp_path):
    good = tmp_path / 'a'
    good.write_text('1\n')
    writes = [(str(good), '2'), (str(tmp_path / 'missing' / 'b'), '3')]
    with pytest.raises(VzError, match='the earlier changes were undone'):
        L.apply_live(writes)
    assert good.read_text().strip() == '1'
    assert L.apply_live([(str(good), '5')]) == [(str(good), '1', '5')]


# -- accounting --------------------------------------------------------------------------------
def test_usage_v2(tmp_path):
    tree = v2_tree(tmp_path)
    d = tmp_path / 'cg2' / 'vz' / 'web1'
    (d / 'memory.current').write_text('%d\n' % (450 * M))
    (d / 'memory.events').write_text('low 0\nhigh 3\nmax 7\noom 1\noom_kill 1\n')
    (d / 'pids.current').write_text('9\n')
    (d / 'pids.events').write_text('max 4\n')
    (d / 'cpu.stat').write_text('usage_usec 1000\nnr_throttled 2\nthrottled_usec 500\n')
    limits = canon({'memory': {'ram': '500M'}, 'numproc': 10})
    use = L.usage(tree, 'vz', 'web1', limits)
    assert use['memory'] == {'used': 450 * M, 'failcnt': 7, 'oom_kills': 1, 'max_used': None, 'limit': 500 * M}
    assert use['numproc'] == {'used': 9, 'limit': 10, 'hits': 4}
    assert use['cpu']['throttled_ns'] == 500000 and use['cpu']['usage_ns'] == 1000000
    over = L.over_thresholds('web1', use, L.parse_thresholds({'memory': '90%', 'numproc': 95}))
    assert over == [{'name': 'web1', 'resource': 'memory', 'used': 450 * M, 'limit': 500 * M, 'percent': 90.0,
                     'threshold': 90.0}]


def test_usage_v1(tmp_path):
    tree = v1_tree(tmp_path)
    mem = tree.ve_path('memory', 'vz', 'web1')
    open(os.path.join(mem, 'memory.usage_in_bytes'), 'w').write('100\n')
    open(os.path.join(mem, 'memory.oom_control'), 'w').write('oom_kill_disable 0\nunder_oom 0\noom_kill 2\n')
    open(os.path.join(tree.ve_path('cpu', 'vz', 'web1'), 'cpu.stat'), 'w').write('nr_throttled 3\nthrottled_time 99\n')
    use = L.usage(tree, 'vz', 'web1', {})
    assert use['memory']['oom_kills'] == 2 and use['memory']['used'] == 100
    assert use['cpu']['throttled_ns'] == 99 and use['cpu']['nr_throttled'] == 3


def test_thresholds_bad():
    with pytest.raises(VzError, match='unknown key'):
        L.parse_thresholds({'ram': 90})
    with pytest.raises(VzError, match='at most 100'):
        L.parse_thresholds({'memory': '150%'})


def test_admission_of_net_rate_guarantees(tmp_path):
    hf = L.HostFacts(v1_tree(tmp_path), cpu_ids=[0, 1], mem_total=8 * G, swap_total=0, net_capacity=100 * 10 ** 6)
    others = {'a': canon({'net': {'rate': '40Mbit'}}), 'b': canon({'net': {'rate': '40Mbit', 'ceil': '90Mbit'}})}
    L.admit('web1', canon({'net': {'rate': '20Mbit'}}), others, hf)   # 100 of 100: fits
    with pytest.raises(VzError, match=r'VE web1: admission refused: net.rate 30Mbit plus the 80Mbit already '
                                      r'guaranteed to 2 other VE\(s\) is 110Mbit, above the host capacity 100Mbit'):
        L.admit('web1', canon({'net': {'rate': '30Mbit'}}), others, hf)
    roomy = L.HostFacts(v1_tree(tmp_path / 'x'), cpu_ids=[0], mem_total=G, swap_total=0, net_capacity=10 ** 8,
                        overcommit=1.2)
    L.admit('web1', canon({'net': {'rate': '30Mbit'}}), others, roomy)


def test_default_net_capacity_is_the_shaping_default(tmp_path):
    from ansible_collections.osvirt.vz.plugins.module_utils import _shaping
    assert L.DEFAULT_NET_CAPACITY_BPS == _shaping.DEFAULT_CAPACITY_BPS
    assert L.HostFacts(v1_tree(tmp_path), cpu_ids=[0], mem_total=G, swap_total=0).net_capacity == 10 ** 10


# -- a new host: no VE parent cgroup, nothing left by earlier runs ------------------------------
def fresh_v1_tree(tmp_path, bfq=False):
    """A v1 host where no cgroup below any root exists yet (a machine that never ran a VE)."""
    root = tmp_path / 'fresh'
    lines = []
    files = {'pids': ['pids.current'], 'memory': ['memory.limit_in_bytes'],
             'blkio': ['blkio.throttle.read_bps_device'] + (['blkio.bfq.io_service_bytes'] if bfq else []),
             'cpuset': ['cpuset.cpus', 'cpuset.mems']}
    for number, (ctrl, names) in enumerate(files.items()):
        (root / ctrl).mkdir(parents=True)
        for name in names:
            (root / ctrl / name).write_text('0-1\n' if ctrl == 'cpuset' else '0\n')
        lines.append('%d 1 0:%d / %s rw - cgroup cgroup rw,%s' % (30 + number, 40 + number, root / ctrl, ctrl))
    (tmp_path / 'mountinfo-fresh').write_text('\n'.join(lines) + '\n')
    return CgroupTree(str(tmp_path / 'mountinfo-fresh'))


@pytest.fixture
def kernel_mkdir(monkeypatch):
    """mkdir in a fake tree as the kernel does it: a new cpuset shows empty cpus and mems lists."""
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777):
        real_mkdir(path, mode)
        if os.path.basename(os.path.dirname(str(path))) == 'cpuset' or '/cpuset/' in str(path):
            for name in ('cpuset.cpus', 'cpuset.mems'):
                with open(os.path.join(path, name), 'w') as handle:
                    handle.write('\n')
    monkeypatch.setattr(os, 'mkdir', mkdir)


def test_numproc_on_a_new_v1_host(tmp_path, kernel_mkdir):
    """pids.max is never in a v1 root: the pids controller alone says a VE cgroup will have it."""
    tree = fresh_v1_tree(tmp_path)
    settings = L.cgroup_settings('web1', canon({'numproc': 128, 'memory': {'ram': '64M'}}), facts(tree))
    L.check_files('web1', settings, tree, 'vz')        # no parent yet: decided from the controller
    tree.ensure_parent('vz')
    assert (tmp_path / 'fresh' / 'pids' / 'vz').is_dir()
    (tmp_path / 'fresh' / 'pids' / 'vz' / 'pids.max').write_text('max\n')   # what the kernel shows there
    (tmp_path / 'fresh' / 'memory' / 'vz' / 'memory.limit_in_bytes').write_text('-1\n')
    L.check_files('web1', settings, tree, 'vz')


@pytest.mark.parametrize('bfq', [False, True])
def test_ioprio_from_the_scheduler_not_from_leftovers(tmp_path, bfq):
    tree = fresh_v1_tree(tmp_path, bfq=bfq)
    settings = L.cgroup_settings('web1', canon({'disk': {'ioprio': 3}}), facts(tree))
    if bfq:
        assert [s.file for s in settings] == ['blkio.bfq.weight']
        L.check_files('web1', settings, tree, 'vz')
    else:
        with pytest.raises(VzError, match='disk.ioprio .* blkio.weight .* BFQ'):
            L.check_files('web1', settings, tree, 'vz')


def test_ensure_parent_gives_new_cpusets_the_cpus_above(tmp_path, kernel_mkdir):
    tree = fresh_v1_tree(tmp_path)
    cpuset = tmp_path / 'fresh' / 'cpuset'
    made = tree.ensure_parent('vz/inner')
    assert str(cpuset / 'vz') in made and str(cpuset / 'vz' / 'inner') in made
    assert (cpuset / 'vz' / 'inner' / 'cpuset.cpus').read_text() == '0-1'
    assert tree.ensure_parent('vz/inner') == []                  # second run: nothing to do


def test_ensure_parent_check_mode_writes_nothing(tmp_path, kernel_mkdir):
    tree = fresh_v1_tree(tmp_path)
    would = tree.ensure_parent('vz/inner', check_mode=True)
    assert str(tmp_path / 'fresh' / 'pids' / 'vz') in would
    assert not (tmp_path / 'fresh' / 'pids' / 'vz').exists()
    assert set(would) <= set(tree.ensure_parent('vz/inner'))


def test_ensure_parent_fills_a_cpuset_an_earlier_killed_run_left_empty(tmp_path, kernel_mkdir):
    tree = fresh_v1_tree(tmp_path)
    cpuset = tmp_path / 'fresh' / 'cpuset'
    os.mkdir(str(cpuset / 'vz'))                                 # killed right after the mkdir
    made = tree.ensure_parent('vz')
    assert '%s cpuset.cpus' % (cpuset / 'vz') in made and str(cpuset / 'vz') not in made
    assert (cpuset / 'vz' / 'cpuset.mems').read_text() == '0-1'
    assert tree.ensure_parent('vz', check_mode=True) == []


def test_v2_controller_not_delegated_names_the_fix(tmp_path):
    tree = v2_tree(tmp_path)
    (tmp_path / 'cg2' / 'vz' / 'cgroup.subtree_control').write_text('cpu memory\n')
    settings = L.cgroup_settings('web1', canon({'numproc': 50}), facts(tree))
    with pytest.raises(VzError, match=r'numproc .* the pids controller is not enabled .*echo \+pids >'):
        L.check_files('web1', settings, tree, 'vz')


def test_ensure_parent_enables_v2_controllers_root_first(tmp_path):
    root = tmp_path / 'u'
    root.mkdir()
    (root / 'cgroup.controllers').write_text('cpuset cpu io memory hugetlb pids\n')
    (root / 'cgroup.subtree_control').write_text('memory\n')
    (tmp_path / 'mi').write_text('40 1 0:30 / %s rw - cgroup2 cgroup2 rw\n' % root)
    tree = CgroupTree(str(tmp_path / 'mi'))
    made = tree.ensure_parent('vz')
    enabled = [m.rsplit(' ', 1)[1] for m in made if m.startswith(str(root / 'cgroup.subtree_control'))]
    assert enabled == ['+cpuset', '+cpu', '+io', '+pids']        # hugetlb is none of ours
    assert str(root / 'vz') in made
