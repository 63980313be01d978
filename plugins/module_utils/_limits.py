# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The resource vocabulary of a VE: parsing, validation, mapping to cgroup files, live changes.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

One ``limits`` dict (DESIGN.md section 5) is the same in osvirt.vz.ve and osvirt.vz.ve_limits::

    {cpu: {units, limit, burst, cpus, cpuset}, memory: {ram, high, guarantee, swap}, numproc,
     disk: {space, inodes, ioprio, read_bps, write_bps, read_iops, write_iops}, net: {rate, ceil}}

``parse_change`` turns what a task wrote (unit strings, vzctl aliases) into canonical numbers:
percent of one CPU for cpu.limit/burst, bytes for memory and disk space, bytes/s for disk
bandwidth, operations/s for IOPS, bits/s for network rates. ``merge`` applies a change to the
limits a VE has (None removes a key). ``check`` refuses what the host cannot honour, and
``cgroup_settings`` maps canonical limits to cgroup files for the layout of each controller
(v1 or v2, from ``CgroupTree``). ``apply_live`` writes them into a running VE's cgroups in a
safe order and rolls back what it wrote when a write fails. ``config_items`` are the same
settings as LXC config keys, so a restart and lxc-autostart apply them again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re

from ._errors import VzError

SCHEMA = {
    'cpu': ('units', 'limit', 'burst', 'cpus', 'cpuset'),
    'memory': ('ram', 'high', 'guarantee', 'swap'),
    'numproc': None,
    'disk': ('space', 'inodes', 'ioprio', 'read_bps', 'write_bps', 'read_iops', 'write_iops'),
    'net': ('rate', 'ceil'),
}

# vzctl's names, each standing for one or more keys of the vocabulary.
ALIASES = {
    'cpuunits': (('cpu', 'units'),),
    'cpulimit': (('cpu', 'limit'),),
    'ram': (('memory', 'ram'),),
    'swap': (('memory', 'swap'),),
    'diskspace': (('disk', 'space'),),
    'diskinodes': (('disk', 'inodes'),),
    'ioprio': (('disk', 'ioprio'),),
    'iolimit': (('disk', 'read_bps'), ('disk', 'write_bps')),
    'iopslimit': (('disk', 'read_iops'), ('disk', 'write_iops')),
    'rate': (('net', 'rate'),),
}

# Words that remove a limit (as does null).
UNLIMITED = ('unlimited', 'max', 'none')

CPU_PERIOD_US = 100000
_BINARY = {'': 1, 'B': 1, 'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40, 'P': 1 << 50}
_DECIMAL = {'': 1, 'K': 10 ** 3, 'M': 10 ** 6, 'G': 10 ** 9, 'T': 10 ** 12}
_SIZE_RE = re.compile(r'(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?', re.I)
_RATE_RE = re.compile(r'(\d+(?:\.\d+)?)\s*([KMGT]?)(BIT|BPS|B/S|/S|B)?', re.I)
_CPU_RE = re.compile(r'(\d+(?:\.\d+)?)\s*(%|CPUS?|CORES?)?', re.I)
_CPUSET_RE = re.compile(r'\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*')


def _fail(path, value, why):
    raise VzError('limits: %s = %r: %s' % (path, value, why))


# -- units -------------------------------------------------------------------------------------
def _number(text):
    value = float(text)
    return int(value) if value == int(value) else value


def parse_size(value, path='size'):
    """Bytes from 512M, 1.5G, 2GiB, 1048576 (binary multiples; a bare number is bytes)."""
    if isinstance(value, bool):
        _fail(path, value, 'expected a size such as 512M or 2G')
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    match = _SIZE_RE.fullmatch(text)
    if not match:
        _fail(path, value, 'unknown size unit: use a number of bytes or K, M, G, T (binary), e.g. 512M')
    return int(float(match.group(1)) * _BINARY[match.group(2).upper()])


def parse_count(value, path='count'):
    """A count: 100, 1.5K, 2M (decimal multiples)."""
    if isinstance(value, bool):
        _fail(path, value, 'expected a number')
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    match = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([KMG]?)(?:/S)?', text, re.I)
    if not match:
        _fail(path, value, 'expected a number, optionally with K, M or G (thousands, millions, billions)')
    return int(float(match.group(1)) * _DECIMAL[match.group(2).upper()])


def parse_bytes_rate(value, path='rate'):
    """Bytes per second from 20M/s, 20M, 1G/s (binary multiples; a bare number is bytes/s)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith('/s'):
            text = text[:-2]
        if re.search(r'bit|bps', text, re.I):
            _fail(path, value, 'disk bandwidth is in bytes per second, e.g. 20M/s')
        return parse_size(text, path)
    return parse_size(value, path)


def parse_bit_rate(value, path='rate'):
    """Bits per second from 100Mbit, 1Gbit, 100mbps, 20M/s (bytes/s, times 8); a bare number is bits/s."""
    if isinstance(value, bool):
        _fail(path, value, 'expected a rate such as 100Mbit')
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip()
    match = _RATE_RE.fullmatch(text)
    if not match:
        _fail(path, value, 'unknown rate unit: use kbit, Mbit, Gbit (bits/s) or K/s, M/s (bytes/s), e.g. 100Mbit')
    number, prefix, unit = float(match.group(1)), match.group(2).upper(), (match.group(3) or '').lower()
    if unit in ('bit', 'bps'):
        return int(number * _DECIMAL[prefix])
    if unit in ('b/s', '/s', 'b'):
        return int(number * _BINARY[prefix] * 8)
    if prefix:
        _fail(path, value, 'say bit (e.g. 100Mbit) or bytes per second (e.g. 12M/s)')
    return int(number)


def parse_cpu(value, path='cpu.limit'):
    """Percent of one CPU from 150%, 1.5cpus, 2cores; a bare number is percent (as in vzctl)."""
    if isinstance(value, bool):
        _fail(path, value, 'expected a share of CPU such as 150%')
    if isinstance(value, (int, float)):
        return _number(value)
    match = _CPU_RE.fullmatch(str(value).strip())
    if not match:
        _fail(path, value, 'unknown unit: use a percent of one CPU (150%) or cores (1.5cpus)')
    number = float(match.group(1))
    if (match.group(2) or '%').lower().startswith('c'):
        number *= 100
    return _number(round(number, 2))


def parse_cpuset(value, path='cpu.cpuset'):
    """Sorted CPU ids from '0-2,5' (or a list of ids)."""
    if isinstance(value, (list, tuple)):
        text = ','.join(str(v) for v in value)
    else:
        text = str(value).replace(' ', '')
    if not _CPUSET_RE.fullmatch(text):
        _fail(path, value, 'expected CPU ids such as 0-1,3')
    ids = set()
    for part in text.split(','):
        low, _sep, high = part.partition('-')
        low, high = int(low), int(high or low)
        if high < low:
            _fail(path, value, 'range %s goes backwards' % part)
        ids.update(range(low, high + 1))
    return sorted(ids)


def format_cpuset(ids):
    """'0-2,5' from [0, 1, 2, 5]."""
    parts, ids = [], sorted(ids)
    start = prev = None
    for cpu in ids + [None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else '%d-%d' % (start, prev))
        start = prev = cpu
    return ','.join(parts)


def human_size(value):
    """512M-style text for bytes (exact when possible)."""
    for unit in ('T', 'G', 'M', 'K'):
        if value and value % _BINARY[unit] == 0:
            return '%d%s' % (value // _BINARY[unit], unit)
    return str(value)


# per key: (parser, minimum, maximum, zero allowed)
_KEYS = {
    ('cpu', 'units'): (parse_count, 8, 500000),
    ('cpu', 'limit'): (parse_cpu, None, None),
    ('cpu', 'burst'): (parse_cpu, None, None),
    ('cpu', 'cpus'): (parse_count, 1, None),
    ('cpu', 'cpuset'): (parse_cpuset, None, None),
    ('memory', 'ram'): (parse_size, 1 << 20, None),
    ('memory', 'high'): (parse_size, 1 << 20, None),
    ('memory', 'guarantee'): (parse_size, 1, None),
    ('memory', 'swap'): (parse_size, 0, None),
    ('numproc', None): (parse_count, 1, None),
    ('disk', 'space'): (parse_size, 1 << 20, None),
    ('disk', 'inodes'): (parse_count, 1, None),
    ('disk', 'ioprio'): (parse_count, 0, 7),
    ('disk', 'read_bps'): (parse_bytes_rate, 1, None),
    ('disk', 'write_bps'): (parse_bytes_rate, 1, None),
    ('disk', 'read_iops'): (parse_count, 1, None),
    ('disk', 'write_iops'): (parse_count, 1, None),
    ('net', 'rate'): (parse_bit_rate, 1, None),
    ('net', 'ceil'): (parse_bit_rate, 1, None),
}


def _key_name(key):
    return key[0] if key[1] is None else '%s.%s' % key


def _parse_value(key, value):
    name = _key_name(key)
    if value is None or (isinstance(value, str) and value.strip().lower() in UNLIMITED):
        return None
    parser, low, high = _KEYS[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0 or \
            isinstance(value, str) and value.strip().startswith('-'):
        _fail(name, value, 'must not be negative')
    parsed = parser(value, name)
    if key == ('cpu', 'cpuset'):
        if not parsed:
            _fail(name, value, 'names no CPU')
        return parsed
    if parsed == 0 and low != 0:
        _fail(name, value, 'must be greater than zero (use "unlimited" or null to remove the limit)')
    if low is not None and parsed < low:
        _fail(name, value, 'must be at least %s' % (human_size(low) if parser is parse_size else low))
    if high is not None and parsed > high:
        _fail(name, value, 'must be at most %s' % high)
    if key in (('cpu', 'limit'), ('cpu', 'burst')) and parsed < 1:
        _fail(name, value, 'must be at least 1% of one CPU')
    return parsed


# -- canonical limits --------------------------------------------------------------------------
def parse_change(raw):
    """Canonical ``{(section, key): value or None}`` from a task's limits dict.

    Accepts the nested form and vzctl aliases at the top level; None (null) or 'unlimited' removes
    a limit. Unknown keys, unknown units, negative and zero values raise VzError.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise VzError('limits must be a dict such as {memory: {ram: 512M}}, got %r' % (raw,))
    change = {}

    def put(key, value, origin):
        if key in change and origin != 'alias':
            raise VzError('limits: %s is given twice (directly and through an alias)' % _key_name(key))
        change[key] = _parse_value(key, value)

    for section, value in raw.items():
        if section in SCHEMA and SCHEMA[section] is not None:
            if value is None:
                for sub in SCHEMA[section]:
                    put((section, sub), None, 'section')
                continue
            if not isinstance(value, dict):
                raise VzError('limits: %s must be a dict of %s' % (section, ', '.join(SCHEMA[section])))
            for sub, subvalue in value.items():
                if sub not in SCHEMA[section]:
                    raise VzError('limits: unknown key %s.%s (known: %s)' % (section, sub, ', '.join(SCHEMA[section])))
                put((section, sub), subvalue, 'key')
        elif section == 'numproc':
            put(('numproc', None), value, 'key')
    for section, value in raw.items():
        if section in SCHEMA:
            continue
        if section not in ALIASES:
            raise VzError('limits: unknown key %s (known: %s; vzctl aliases: %s)'
                          % (section, ', '.join(SCHEMA), ', '.join(sorted(ALIASES))))
        for key in ALIASES[section]:
            if key in change:
                raise VzError('limits: %s is given twice (as %s and as %s)' % (_key_name(key), _key_name(key), section))
            put(key, value, 'alias')
    return change


def merge(current, change):
    """New canonical limits dict: ``current`` (nested, as in ve.json) with ``change`` applied."""
    new = {}
    for section, value in (current or {}).items():
        new[section] = dict(value) if isinstance(value, dict) else value
    for (section, sub), value in change.items():
        if sub is None:
            if value is None:
                new.pop(section, None)
            else:
                new[section] = value
            continue
        part = new.setdefault(section, {})
        if value is None:
            part.pop(sub, None)
        else:
            part[sub] = value
        if not part:
            new.pop(section)
    return new


def get(limits, section, sub=None):
    """One canonical value (None when unset)."""
    value = (limits or {}).get(section)
    if sub is None:
        return value
    return (value or {}).get(sub)


def describe(limits):
    """The limits with unit strings, for results and --diff."""
    out = {}
    for section, value in sorted((limits or {}).items()):
        if not isinstance(value, dict):
            out[section] = value
            continue
        part = {}
        for sub, v in sorted(value.items()):
            if (section, sub) in (('memory', 'ram'), ('memory', 'high'), ('memory', 'guarantee'),
                                  ('memory', 'swap'), ('disk', 'space')):
                part[sub] = human_size(v) if v else '0'
            elif (section, sub) in (('disk', 'read_bps'), ('disk', 'write_bps')):
                part[sub] = human_size(v) + '/s'
            elif section == 'cpu' and sub in ('limit', 'burst'):
                part[sub] = '%s%%' % v
            elif section == 'cpu' and sub == 'cpuset':
                part[sub] = format_cpuset(v)
            elif section == 'net':
                part[sub] = '%sbit' % (('%gM' % (v / 1e6)) if v % 1000000 == 0 else ('%gk' % (v / 1e3)))
            else:
                part[sub] = v
        out[section] = part
    return out


# -- the host ----------------------------------------------------------------------------------
# What the VEs of a host may send together when host.json has no net_capacity; the same default as
# the shaping tree's root class in _shaping (which cannot import this file: the boot hook loads it alone).
DEFAULT_NET_CAPACITY_BPS = 10 ** 10


class HostFacts:
    """What the checks need to know about the host: CPUs, memory, overcommit, cgroup layout."""

    def __init__(self, tree, cpu_ids=None, mem_total=None, overcommit=1.0, swap_total=None, net_capacity=None):
        self.tree = tree
        self.net_capacity = int(net_capacity or DEFAULT_NET_CAPACITY_BPS)
        self.cpu_ids = sorted(cpu_ids if cpu_ids is not None else os.sched_getaffinity(0))
        meminfo = _meminfo() if mem_total is None or swap_total is None else {}
        self.mem_total = mem_total if mem_total is not None else meminfo.get('MemTotal', 0)
        self.swap_total = swap_total if swap_total is not None else meminfo.get('SwapTotal', 0)
        self.overcommit = float(overcommit)
        if self.overcommit <= 0:
            raise VzError('overcommit must be greater than zero, got %s' % overcommit)

    @property
    def cpus(self):
        return len(self.cpu_ids)


def _meminfo(path='/proc/meminfo'):
    facts = {}
    try:
        with open(path) as handle:
            for line in handle:
                key, _sep, rest = line.partition(':')
                fields = rest.split()
                if fields and fields[0].isdigit():
                    facts[key] = int(fields[0]) * (1024 if fields[1:2] == ['kB'] else 1)
    except OSError:
        pass
    return facts


def check(name, limits, facts, current=None):
    """Refuse limits that contradict each other or exceed what the host has (one VzError)."""
    prefix = 'VE %s: limits: ' % name
    ram, high = get(limits, 'memory', 'ram'), get(limits, 'memory', 'high')
    guarantee, swap = get(limits, 'memory', 'guarantee'), get(limits, 'memory', 'swap')
    over = facts.overcommit
    if high is not None and ram is not None and high > ram:
        raise VzError(prefix + 'memory.high %s is above memory.ram %s; the throttle point must be at or below '
                      'the hard limit' % (human_size(high), human_size(ram)))
    if guarantee is not None and ram is not None and guarantee > ram:
        raise VzError(prefix + 'memory.guarantee %s is above memory.ram %s' % (human_size(guarantee), human_size(ram)))
    if ram is not None and facts.mem_total and ram > facts.mem_total * over:
        raise VzError(prefix + 'memory.ram %s is above the host\'s memory %s%s; set overcommit (now %g) to allow it'
                      % (human_size(ram), human_size(facts.mem_total),
                         (' x overcommit %g' % over) if over != 1 else '', over))
    cpus, cpuset = get(limits, 'cpu', 'cpus'), get(limits, 'cpu', 'cpuset')
    if cpus is not None and cpus > facts.cpus:
        raise VzError(prefix + 'cpu.cpus %d is more than the %d CPUs this host has' % (cpus, facts.cpus))
    if cpuset is not None:
        missing = sorted(set(cpuset) - set(facts.cpu_ids))
        if missing:
            raise VzError(prefix + 'cpu.cpuset %s names CPUs the host does not have: %s (host CPUs: %s)'
                          % (format_cpuset(cpuset), format_cpuset(missing), format_cpuset(facts.cpu_ids)))
        if cpus is not None and cpus > len(cpuset):
            raise VzError(prefix + 'cpu.cpus %d is more than the %d CPUs of cpu.cpuset %s'
                          % (cpus, len(cpuset), format_cpuset(cpuset)))
    limit, burst = get(limits, 'cpu', 'limit'), get(limits, 'cpu', 'burst')
    if limit is not None and limit > facts.cpus * 100:
        raise VzError(prefix + 'cpu.limit %s%% is more than the %d CPUs (%d%%) of this host'
                      % (limit, facts.cpus, facts.cpus * 100))
    if burst is not None:
        if limit is None:
            raise VzError(prefix + 'cpu.burst needs cpu.limit: it is unused quota of the limit spent later')
        if burst > limit:
            raise VzError(prefix + 'cpu.burst %s%% is above cpu.limit %s%%; the kernel allows at most the quota '
                          'as burst' % (burst, limit))
    rate, ceil = get(limits, 'net', 'rate'), get(limits, 'net', 'ceil')
    if ceil is not None and rate is None:
        raise VzError(prefix + 'net.ceil needs net.rate (the guaranteed rate it may exceed)')
    if ceil is not None and ceil < rate:
        raise VzError(prefix + 'net.ceil %d bit/s is below net.rate %d bit/s' % (ceil, rate))
    version, _mount = facts.tree.controller('memory')
    if swap is not None and version == 'v1' and ram is None:
        raise VzError(prefix + 'memory.swap needs memory.ram on this host: cgroup v1 limits memory plus swap '
                      'together (memory.memsw.limit_in_bytes = ram + swap)')
    del current


def human_bits(value):
    """Bits per second as a short string (12.5Mbit)."""
    for unit, factor in (('Gbit', 10 ** 9), ('Mbit', 10 ** 6), ('kbit', 10 ** 3)):
        if value >= factor:
            return ('%.3f' % (value / factor)).rstrip('0').rstrip('.') + unit
    return '%dbit' % value


# Guarantees that admission control sums up: key -> (what it is checked against, how to show it).
GUARANTEES = {
    ('memory', 'guarantee'): ('memory', lambda facts: facts.mem_total, human_size),
    ('net', 'rate'): ('net_capacity', lambda facts: facts.net_capacity, human_bits),
}


def admit(name, limits, others, facts):
    """Admission control: the sum of each guarantee on the host must fit its capacity x overcommit.

    Guarantees are memory.guarantee (against the host's memory) and net.rate (against the host's
    net_capacity from host.json). ``others`` maps the other VEs of the host to their canonical limits.
    """
    for key, (what, capacity_of, show) in GUARANTEES.items():
        mine = get(limits, *key) or 0
        if not mine:
            continue
        holders = [lim for lim in others.values() if get(lim, *key)]
        total = sum(get(lim, *key) for lim in holders)
        base = capacity_of(facts)
        capacity = int(base * facts.overcommit)
        if total + mine > capacity:
            raise VzError('VE %s: admission refused: %s.%s %s plus the %s already guaranteed to %d other VE(s) is '
                          '%s, above the host capacity %s (%s %s x overcommit %g); lower the guarantee or raise '
                          'overcommit' % (name, key[0], key[1], show(mine), show(total), len(holders),
                                          show(total + mine), show(capacity), what, show(base), facts.overcommit))


# -- mapping to cgroup files -------------------------------------------------------------------
# Values that lift a limit, per file, used when a key is removed from a running VE.
RESET = {
    'cpu.shares': '1024', 'cpu.cfs_quota_us': '-1', 'cpu.cfs_period_us': str(CPU_PERIOD_US),
    'cpu.cfs_burst_us': '0', 'memory.limit_in_bytes': '-1', 'memory.soft_limit_in_bytes': '-1',
    'memory.memsw.limit_in_bytes': '-1', 'pids.max': 'max', 'blkio.weight': '500', 'blkio.bfq.weight': '100',
    'cpu.weight': '100', 'cpu.max': 'max %d' % CPU_PERIOD_US, 'cpu.max.burst': '0', 'memory.max': 'max',
    'memory.high': 'max', 'memory.low': '0', 'memory.swap.max': 'max', 'io.weight': 'default 100',
    'io.bfq.weight': 'default 100',
}
# Why a file may be missing, for the error that names it.
WHY_MISSING = {
    'cpu.cfs_burst_us': 'CPU burst needs Linux 5.14 or later with CFS bandwidth control',
    'cpu.max.burst': 'CPU burst needs Linux 5.14 or later with CFS bandwidth control',
    'cpu.cfs_quota_us': 'the kernel lacks CFS bandwidth control (CONFIG_CFS_BANDWIDTH)',
    'memory.memsw.limit_in_bytes': 'swap accounting is off (boot with swapaccount=1, CONFIG_MEMCG_SWAP)',
    'memory.swap.max': 'swap accounting is off (CONFIG_MEMCG_SWAP, or swapaccount=0 on the kernel command line)',
    'blkio.weight': 'proportional IO weight needs the BFQ (or CFQ) IO scheduler built with cgroup support',
    'io.weight': 'proportional IO weight needs the io controller with a weight-aware scheduler (BFQ or iocost)',
}
CONTROLLER_OF = {'cpu': 'cpu', 'cpuset': 'cpuset', 'memory': 'memory', 'pids': 'pids', 'blkio': 'blkio', 'io': 'io'}


class Setting:
    """One cgroup file of a VE and the value it gets."""

    __slots__ = ('controller', 'version', 'file', 'value', 'keys')

    def __init__(self, controller, version, name, value, keys):
        self.controller = controller
        self.version = version
        self.file = name
        self.value = str(value)
        self.keys = tuple(keys)

    @property
    def config_key(self):
        return ('lxc.cgroup.' if self.version == 'v1' else 'lxc.cgroup2.') + self.file

    def __repr__(self):
        return 'Setting(%s=%s)' % (self.file, self.value)


def spread_cpus(name, count, cpu_ids):
    """``count`` consecutive CPUs of the host, starting at a place derived from the VE name.

    Different VEs asking for the same number of CPUs land on different CPUs, and a VE keeps its CPUs.
    """
    ids = sorted(cpu_ids)
    start = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % len(ids)
    return sorted(ids[(start + i) % len(ids)] for i in range(count))


def block_device(path):
    """'major:minor' of the whole disk that holds ``path`` (a partition maps to its disk)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    if major == 0:
        raise VzError('disk IO limits need a block device, but %s is on a file system without one (%d:%d, e.g. '
                      'tmpfs, overlay or btrfs subvolume)' % (path, major, minor))
    sysdir = '/sys/dev/block/%d:%d' % (major, minor)
    if os.path.exists(os.path.join(sysdir, 'partition')):
        try:
            with open(os.path.join(os.path.realpath(sysdir), '..', 'dev')) as handle:
                return handle.read().strip()
        except OSError:
            pass
    return '%d:%d' % (major, minor)


def cgroup_settings(name, limits, facts, device=None):
    """Cgroup files and values for canonical ``limits``, each in the version of its controller.

    Keys whose controller is missing raise VzError naming the key. ``device`` ('major:minor')
    is needed for disk IO limits.
    """
    out = []

    def version_of(controller, key):
        version, _mount = facts.tree.controller(controller)
        if version is None:
            raise VzError('VE %s: limits: %s needs the %s cgroup controller, which this host does not offer '
                          '(neither a cgroup v1 hierarchy nor in cgroup2\'s cgroup.controllers)' % (name, key, controller))
        return version

    def add(controller, key, v1, v2):
        version = version_of(controller, key)
        for file_name, value in (v1 if version == 'v1' else v2):
            out.append(Setting(controller, version, file_name, value, [key]))

    cpu = limits.get('cpu') or {}
    if 'units' in cpu:
        units = cpu['units']
        # the kernel clamps cpu.shares to 2..262144 silently; clamp here so a re-read matches
        add('cpu', 'cpu.units', [('cpu.shares', min(262144, max(2, units * 1024 // 1000)))],
            [('cpu.weight', min(10000, max(1, int(round(units / 10.0)))))])
    if 'limit' in cpu:
        quota = int(round(cpu['limit'] * CPU_PERIOD_US / 100.0))
        add('cpu', 'cpu.limit', [('cpu.cfs_period_us', CPU_PERIOD_US), ('cpu.cfs_quota_us', quota)],
            [('cpu.max', '%d %d' % (quota, CPU_PERIOD_US))])
    if 'burst' in cpu:
        burst = int(round(cpu['burst'] * CPU_PERIOD_US / 100.0))
        add('cpu', 'cpu.burst', [('cpu.cfs_burst_us', burst)], [('cpu.max.burst', burst)])
    if 'cpuset' in cpu or 'cpus' in cpu:
        ids = cpu.get('cpuset') or facts.cpu_ids
        if 'cpus' in cpu and cpu['cpus'] < len(ids):
            ids = spread_cpus(name, cpu['cpus'], ids) if 'cpuset' not in cpu else sorted(ids)[:cpu['cpus']]
        text = format_cpuset(ids)
        add('cpuset', 'cpu.cpuset' if 'cpuset' in cpu else 'cpu.cpus', [('cpuset.cpus', text)], [('cpuset.cpus', text)])
    memory = limits.get('memory') or {}
    if 'ram' in memory:
        add('memory', 'memory.ram', [('memory.limit_in_bytes', memory['ram'])], [('memory.max', memory['ram'])])
    if 'high' in memory:
        add('memory', 'memory.high', [('memory.soft_limit_in_bytes', memory['high'])], [('memory.high', memory['high'])])
    if 'guarantee' in memory:
        version = version_of('memory', 'memory.guarantee')
        if version == 'v2':
            out.append(Setting('memory', 'v2', 'memory.low', memory['guarantee'], ['memory.guarantee']))
        # v1 has no protection file: the guarantee is enforced by admission control only
    if 'swap' in memory:
        add('memory', 'memory.swap', [('memory.memsw.limit_in_bytes', memory.get('ram', 0) + memory['swap'])],
            [('memory.swap.max', memory['swap'])])
    if limits.get('numproc') is not None:
        add('pids', 'numproc', [('pids.max', limits['numproc'])], [('pids.max', limits['numproc'])])
    disk = limits.get('disk') or {}
    io_keys = [k for k in ('read_bps', 'write_bps', 'read_iops', 'write_iops') if k in disk]
    if 'ioprio' in disk or io_keys:
        version = version_of('blkio' if 'blkio' in facts.tree.v1 else 'io', 'disk.' + (io_keys or ['ioprio'])[0])
        controller = 'blkio' if version == 'v1' else 'io'
        if 'ioprio' in disk:
            prio = disk['ioprio']
            if version == 'v1':
                weight_file = _present(facts.tree, 'blkio', ('blkio.weight', 'blkio.bfq.weight')) or 'blkio.weight'
                out.append(Setting(controller, version, weight_file, 100 + 100 * prio, ['disk.ioprio']))
            else:
                out.append(Setting(controller, version, 'io.weight', 'default %d' % (25 * 2 ** prio // 4),
                                   ['disk.ioprio']))
        if io_keys:
            if not device:
                raise VzError('VE %s: limits: disk IO limits need the block device of vz_root' % name)
            if version == 'v1':
                for key in io_keys:
                    kind, what = key.split('_')
                    out.append(Setting(controller, version, 'blkio.throttle.%s_%s_device' % (kind, what),
                                       '%s %d' % (device, disk[key]), ['disk.' + key]))
            else:
                words = {'read_bps': 'rbps', 'write_bps': 'wbps', 'read_iops': 'riops', 'write_iops': 'wiops'}
                value = ' '.join('%s=%s' % (words[k], disk[k] if k in disk else 'max') for k in words)
                out.append(Setting(controller, version, 'io.max', '%s %s' % (device, value),
                                   ['disk.' + k for k in io_keys]))
    return out


def _below_root(version, mount, file_name):
    """Whether the kernel offers ``file_name`` in every cgroup below the hierarchy's root.

    Such files (CFTYPE_NOT_ON_ROOT in the kernel) are missing from a root, so a root alone cannot
    show them; a cgroup made by an earlier run would, but that proves nothing on a new host. The
    answer comes from the controller and from what the root itself shows of the feature behind
    the file.
    """
    if version == 'v1':
        if file_name == 'pids.max':
            return True
        if file_name == 'blkio.bfq.weight':   # BFQ's statistics files are on the root too
            return _any_file(mount, 'blkio.bfq.')
        return False
    if file_name == 'io.weight':              # iocost: io.cost.qos/model exist only on the root
        return os.path.exists(os.path.join(mount, 'io.cost.qos'))
    if file_name == 'io.bfq.weight':
        return _scheduler_offered('bfq')
    if file_name in ('memory.swap.max', 'memory.swap.high'):
        return 'swapaccount=0' not in (read_file('/proc/cmdline') or '').split()
    if file_name == 'cpu.max.burst':
        return tuple(int(x) for x in re.findall(r'\d+', os.uname().release)[:2]) >= (5, 14)
    return file_name in V2_BELOW_ROOT


# cgroup v2 interface files every non-root cgroup has once its controller is enabled above it
V2_BELOW_ROOT = frozenset(('cpu.weight', 'cpu.max', 'cpuset.cpus', 'cpuset.mems', 'memory.max', 'memory.high',
                           'memory.low', 'memory.min', 'pids.max', 'io.max'))


def _delegated(directory, controller):
    """True when cgroup v2 ``directory`` passes ``controller`` on to the cgroups below it."""
    return controller in (read_file(os.path.join(directory, 'cgroup.subtree_control')) or '').split()


def _any_file(directory, prefix):
    try:
        return any(name.startswith(prefix) for name in os.listdir(directory))
    except OSError:
        return False


def _scheduler_offered(name):
    """True when some block device of the host offers the IO scheduler ``name``."""
    try:
        devices = os.listdir('/sys/block')
    except OSError:
        return False
    return any(name in (read_file(os.path.join('/sys/block', dev, 'queue', 'scheduler')) or '')
               .replace('[', ' ').replace(']', ' ').split() for dev in devices)


def _present(tree, controller, names, parent=None):
    """The first of ``names`` that the cgroup of a VE under ``parent`` will have, or None.

    Decided from the controller itself, never from cgroups that other runs left behind: in the
    parent cgroup when it exists (the VE manager makes it first, see CgroupTree.ensure_parent),
    else from the hierarchy's root and what the kernel offers below a root.
    """
    version, mount = tree.controller(controller)
    if not mount:
        return None
    where = os.path.join(mount, parent) if parent else None
    if where and os.path.isdir(where):
        if version == 'v2' and not _delegated(where, controller):
            return None
        return next((f for f in names if os.path.exists(os.path.join(where, f))), None)
    for file_name in names:
        if os.path.exists(os.path.join(mount, file_name)) or _below_root(version, mount, file_name):
            return file_name
    return None


def check_files(name, settings, tree, parent):
    """Refuse settings whose cgroup file this kernel lacks, naming the key, the file and why."""
    for setting in settings:
        if _present(tree, setting.controller, (setting.file,), parent) is not None:
            continue
        where = os.path.join(tree.controller(setting.controller)[1], parent)
        if setting.version == 'v2' and os.path.isdir(where) and not _delegated(where, setting.controller):
            raise VzError('VE %s: limits: %s cannot be applied on this host: the %s controller is not enabled for '
                          'the cgroups below %s (it is not in its cgroup.subtree_control); enable it with '
                          '"echo +%s > %s/cgroup.subtree_control" (and in every level above), or let the '
                          'osvirt.vz.host role make the VE parent cgroup'
                          % (name, ', '.join(setting.keys), setting.controller, where, setting.controller, where))
        why = WHY_MISSING.get(setting.file, 'this kernel does not offer it')
        raise VzError('VE %s: limits: %s cannot be applied on this host: it needs the cgroup file %s (%s '
                      'controller, cgroup %s), which is missing: %s'
                      % (name, ', '.join(setting.keys), setting.file, setting.controller, setting.version, why))


def config_items(settings):
    """LXC config entries (lxc.cgroup.* for v1 controllers, lxc.cgroup2.* for v2) for ``settings``."""
    return [(s.config_key, s.value) for s in settings]


# Config keys of limits, owned by the collection (added to the VE manager's owned keys).
OWNED_PREFIXES = tuple('lxc.cgroup.%s.' % c for c in ('cpu', 'cpuset', 'memory', 'pids', 'blkio')) + \
    tuple('lxc.cgroup2.%s.' % c for c in ('cpu', 'cpuset', 'memory', 'pids', 'io'))


def is_limit_key(key):
    """True for LXC config keys that hold limits (applied live, so they never need a restart)."""
    return key.startswith(OWNED_PREFIXES) and not key.startswith(('lxc.cgroup.devices.', 'lxc.cgroup2.devices.'))


# -- live changes ------------------------------------------------------------------------------
def read_file(path):
    """The stripped content of a cgroup file, None when it cannot be read."""
    return _read(path)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _as_int(text):
    try:
        value = int(text)
    except (TypeError, ValueError):
        return None
    return None if value < 0 or value >= (1 << 62) else value


def live_plan(old, new, tree, parent, name):
    """Writes ``[(path, value)]`` that take a running VE from settings ``old`` to ``new``.

    Files of ``old`` that ``new`` lacks get the value that lifts the limit. Ordered so that the
    kernel accepts every intermediate state (memory+swap never below memory on v1, burst never
    above quota).
    """
    by_file = {}
    for setting in new:
        by_file[(setting.controller, setting.file)] = setting
    writes = []
    for setting in old:
        key = (setting.controller, setting.file)
        if key in by_file:
            continue
        if setting.file.startswith('blkio.throttle.'):
            value = '%s 0' % setting.value.split()[0]
        elif setting.file == 'io.max':
            value = '%s rbps=max wbps=max riops=max wiops=max' % setting.value.split()[0]
        elif setting.file == 'cpuset.cpus':
            value = _read(os.path.join(tree.controller('cpuset')[1], parent, 'cpuset.cpus')) or ''
        else:
            value = RESET.get(setting.file)
        if value is not None:
            writes.append((setting.controller, setting.file, value))
    writes += [(s.controller, s.file, s.value) for s in new]
    paths = []
    for controller, file_name, value in writes:
        directory = tree.ve_path(controller, parent, name)
        paths.append((os.path.join(directory, file_name), value))
    return _order(paths)


def _order(writes):
    files = {os.path.basename(p): (p, v) for p, v in writes}
    order = [os.path.basename(p) for p, _v in writes]

    def before(first, second):
        if first in order and second in order and order.index(first) > order.index(second):
            order.remove(first)
            order.insert(order.index(second), first)

    if 'memory.limit_in_bytes' in files:
        path, value = files['memory.limit_in_bytes']
        current = _as_int(_read(os.path.join(os.path.dirname(path), 'memory.memsw.limit_in_bytes')))
        target = _as_int(value)
        if target is None or (current is not None and target > current):
            before('memory.memsw.limit_in_bytes', 'memory.limit_in_bytes')   # raise the ceiling first
        else:
            before('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes')
    if 'cpu.cfs_quota_us' in files:
        path, value = files['cpu.cfs_quota_us']
        burst = _as_int(_read(os.path.join(os.path.dirname(path), 'cpu.cfs_burst_us')))
        target = _as_int(value)
        before('cpu.cfs_period_us', 'cpu.cfs_quota_us')
        if target is not None and burst is not None and target < burst:
            before('cpu.cfs_burst_us', 'cpu.cfs_quota_us')    # lower the burst below the new quota first
        else:
            before('cpu.cfs_quota_us', 'cpu.cfs_burst_us')
    return [files[f] for f in order]


def same(path, current, wanted):
    """True when cgroup file ``path`` reading ``current`` already holds ``wanted`` (as written)."""
    if current is None:
        return False
    base = os.path.basename(path)
    if base.startswith('blkio.throttle.'):
        device, _sep, value = wanted.partition(' ')
        lines = dict(line.split(None, 1) for line in current.splitlines() if ' ' in line)
        return lines.get(device, '0') == value
    if base == 'io.max':
        device = wanted.split()[0]
        found = [line for line in current.splitlines() if line.split()[:1] == [device]]
        return sorted((found or ['%s rbps=max wbps=max riops=max wiops=max' % device])[0].split()) == sorted(wanted.split())
    if base in ('cpuset.cpus',):
        try:
            return parse_cpuset(current or 'x') == parse_cpuset(wanted)
        except VzError:
            return False
    have, want = _as_int(current), _as_int(wanted)
    if base.startswith('memory.') and current.strip().lstrip('-').isdigit() and wanted.strip().lstrip('-').isdigit():
        if have is None or want is None:
            return have is None and want is None
        return abs(have - want) < 4096     # the kernel keeps whole pages
    if base in ('blkio.bfq.weight', 'io.weight', 'io.bfq.weight'):
        return current.split()[-1:] == wanted.split()[-1:] and current.splitlines()[0].split()[-1:] == wanted.split()[-1:]
    return ' '.join(current.split()) == ' '.join(wanted.split())


def pending(writes):
    """The writes of ``live_plan`` that would change a file (the others are already in force)."""
    return [(p, v) for p, v in writes if not same(p, _read(p), v)]


def apply_live(writes):
    """Write ``[(path, value)]`` in order; on a failure restore what was written and raise VzError.

    Returns ``[(path, before, after)]`` of the files written.
    """
    done = []
    for path, value in writes:
        before = _read(path)
        try:
            _write(path, value)
        except OSError as exc:
            for done_path, done_before, after in reversed(done):
                try:
                    _write(done_path, restorable(done_path, done_before, after))
                except OSError:
                    pass
            reason = {errno.EBUSY: 'the kernel could not reclaim enough memory to get under the new limit',
                      errno.EINVAL: 'the kernel refused the value'}.get(exc.errno, exc.strerror)
            raise VzError('writing %s to %s failed: %s (%s); the earlier changes were undone'
                          % (value, path, exc.strerror, reason))
        done.append((path, before, value))
    return done


def restorable(path, value, written):
    """The value read from cgroup file ``path`` before ``written`` went in, in a form it accepts back."""
    base = os.path.basename(path)
    if base in ('memory.limit_in_bytes', 'memory.memsw.limit_in_bytes', 'memory.soft_limit_in_bytes') and \
            _as_int(value) is None:
        return '-1'
    if base.startswith('blkio.throttle.'):
        device = written.split()[0]
        lines = dict(line.split(None, 1) for line in (value or '').splitlines() if ' ' in line)
        return '%s %s' % (device, lines.get(device, '0'))
    if base == 'io.max':
        device = written.split()[0]
        found = [line for line in (value or '').splitlines() if line.split()[:1] == [device]]
        return found[0] if found else '%s rbps=max wbps=max riops=max wiops=max' % device
    if base == 'cpu.max' and value and len(value.split()) == 2:
        return value
    return value if value is not None else ''


def undo(done):
    """Put back the values ``apply_live`` replaced (its return value), last write first."""
    apply_live([(p, restorable(p, before, after)) for p, before, after in reversed(done)])


# -- accounting --------------------------------------------------------------------------------
def _keyed(text):
    out = {}
    for line in (text or '').splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip('-').isdigit():
            out[fields[0]] = int(fields[1])
    return out


def usage(tree, parent, name, limits):
    """Use against each limit and limit hits of a running VE, read from its cgroup files."""
    result = {}

    def path(controller, file_name):
        directory = tree.ve_path(controller, parent, name)
        return os.path.join(directory, file_name) if directory else None

    version, _m = tree.controller('memory')
    if version:
        if version == 'v1':
            used = _as_int(_read(path('memory', 'memory.usage_in_bytes')))
            oom = _keyed(_read(path('memory', 'memory.oom_control')))
            # with memory.swap set the memsw counter is the one that trips (memsw = ram + swap)
            failcnt = max(_as_int(_read(path('memory', 'memory.failcnt'))) or 0,
                          _as_int(_read(path('memory', 'memory.memsw.failcnt'))) or 0)
            mem = {'used': used, 'failcnt': failcnt, 'oom_kills': oom.get('oom_kill'),
                   'max_used': _as_int(_read(path('memory', 'memory.max_usage_in_bytes')))}
        else:
            events = _keyed(_read(path('memory', 'memory.events')))
            mem = {'used': _as_int(_read(path('memory', 'memory.current'))), 'failcnt': events.get('max'),
                   'oom_kills': events.get('oom_kill'), 'max_used': _as_int(_read(path('memory', 'memory.peak')))}
        mem['limit'] = get(limits, 'memory', 'ram')
        result['memory'] = mem
    if tree.controller('pids')[0]:
        events = _keyed(_read(path('pids', 'pids.events')))
        result['numproc'] = {'used': _as_int(_read(path('pids', 'pids.current'))), 'limit': get(limits, 'numproc'),
                             'hits': events.get('max')}
    version, _m = tree.controller('cpu')
    if version:
        stat = _keyed(_read(path('cpu', 'cpu.stat')))
        if version == 'v1':
            usage_ns = _as_int(_read(path('cpuacct', 'cpuacct.usage'))) if tree.controller('cpuacct')[0] else None
            throttled_ns = stat.get('throttled_time')
        else:
            usage_ns = stat['usage_usec'] * 1000 if 'usage_usec' in stat else None
            throttled_ns = stat['throttled_usec'] * 1000 if 'throttled_usec' in stat else None
        result['cpu'] = {'usage_ns': usage_ns, 'throttled_ns': throttled_ns,
                         'nr_throttled': stat.get('nr_throttled'), 'limit': get(limits, 'cpu', 'limit')}
    return result


def percent(used, limit):
    """Use in percent of the limit (None when either is unknown)."""
    if used is None or not limit:
        return None
    return round(100.0 * used / limit, 1)


def parse_thresholds(raw):
    """``{memory: 90, numproc: 80, disk: 90}`` from {memory: 90%, ...}."""
    known = ('memory', 'numproc', 'disk', 'inodes')
    out = {}
    for key, value in (raw or {}).items():
        if key not in known:
            raise VzError('thresholds: unknown key %s (known: %s)' % (key, ', '.join(known)))
        text = str(value).strip().rstrip('%')
        try:
            number = float(text)
        except ValueError:
            raise VzError('thresholds: %s = %r: expected a percent such as 90%%' % (key, value))
        if not 0 < number <= 100:
            raise VzError('thresholds: %s = %r: must be above 0%% and at most 100%%' % (key, value))
        out[key] = number
    return out


def over_thresholds(name, accounting, thresholds):
    """Entries ``{name, resource, used, limit, percent, threshold}`` for each threshold a VE is over."""
    out = []
    for resource, threshold in sorted(thresholds.items()):
        entry = accounting.get(resource) or {}
        if resource == 'inodes':
            entry = {'used': (accounting.get('disk') or {}).get('inodes_used'),
                     'limit': (accounting.get('disk') or {}).get('inodes_limit')}
        elif resource == 'disk':
            entry = {'used': entry.get('space_used'), 'limit': entry.get('space_limit')}
        value = percent(entry.get('used'), entry.get('limit'))
        if value is not None and value >= threshold:
            out.append({'name': name, 'resource': resource, 'used': entry.get('used'), 'limit': entry.get('limit'),
                        'percent': value, 'threshold': threshold})
    return out
