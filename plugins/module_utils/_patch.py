# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the osvirt.vz.patch role: batches, health checks, the plan and the report.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The role's tasks call these through the filters of ``plugins/filter/patch.py``. Nothing here
touches a host: every function takes data and returns data, or raises VzError with one message
that names the bad value, so a bad input stops the playbook before anything changes.
"""

from __future__ import annotations

import re
import shlex

from . import _validate
from ._errors import VzError

STATUSES = ('patched', 'rolled_back', 'failed', 'skipped', 'not_reached')
HEALTH_KINDS = ('systemd', 'tcp', 'command')
MODES = ('image', 'in_place')

_PERCENT_RE = re.compile(r'(\d{1,3})%')
_COUNT_RE = re.compile(r'\d+')

# The tcp check runs inside the VE with what the VE has: Python (Debian templates) or nc
# (busybox). The script is a constant; host, port and timeout arrive as its arguments.
_TCP_SCRIPT = (
    'h=$1; p=$2; t=$3; '
    'if command -v python3 >/dev/null 2>&1; then exec python3 -c '
    '"import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()" '
    '"$h" "$p" "$t"; fi; '
    'if command -v nc >/dev/null 2>&1; then exec nc -w "$t" "$h" "$p" -e true </dev/null; fi; '
    'echo "no python3 and no nc in the VE to test $h:$p" >&2; exit 3'
)


# -- batches ----------------------------------------------------------------------------------
def parse_batches(value):
    """Check an Ansible ``serial`` value: a list of positive counts and percentages (1-100%).

    A single count or percentage is taken as a list of one. Returns the list with counts as
    int and percentages as ``'N%'`` strings, in the same order.
    """
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise VzError('patch_batches is empty: give batch sizes such as [1, "10%", "50%", "100%"]')
    batches = []
    for item in items:
        if isinstance(item, bool):
            bad = True
        elif isinstance(item, int):
            bad = item < 1
            parsed = item
        elif isinstance(item, str) and _COUNT_RE.fullmatch(item.strip()):
            parsed = int(item.strip())
            bad = parsed < 1
        elif isinstance(item, str) and _PERCENT_RE.fullmatch(item.strip()):
            parsed = item.strip()
            bad = not 1 <= int(parsed[:-1]) <= 100
        else:
            bad = True
        if bad:
            raise VzError('patch_batches: %r is not a batch size: use a count of VEs (1 or more) or a percentage '
                          'of them (1%% to 100%%), e.g. [1, "10%%", "50%%", "100%%"]' % (item,))
        batches.append(parsed)
    return batches


def batch_sizes(batches, total):
    """How Ansible's ``serial`` cuts ``total`` hosts with ``batches``: the list of batch sizes.

    A percentage is of all hosts, rounded down but at least 1; the last entry repeats until
    every host had its turn (ansible.executor.playbook_executor._get_serialized_batches).
    """
    batches = parse_batches(batches)
    sizes, left, index = [], total, 0
    while left > 0:
        item = batches[min(index, len(batches) - 1)]
        size = max(1, total * int(item[:-1]) // 100) if isinstance(item, str) else item
        size = min(size, left)
        sizes.append(size)
        left -= size
        index += 1
    return sizes


def fail_percentage(value):
    """Check ``patch_max_fail_percentage``: a number from 0 to 100."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise VzError('patch_max_fail_percentage: %r is not a percentage from 0 to 100' % (value,))
    return value


# -- health checks ----------------------------------------------------------------------------
_HEALTH_KEYS = {
    'systemd': {'kind', 'allow_degraded', 'timeout', 'retries', 'delay'},
    'tcp': {'kind', 'port', 'host', 'timeout', 'retries', 'delay'},
    'command': {'kind', 'command', 'timeout', 'retries', 'delay'},
}


def _int(value, what, low, high):
    if isinstance(value, bool):
        raise VzError('%s: %r is not a whole number' % (what, value))
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise VzError('%s: %r is not a whole number' % (what, value))
    if not low <= number <= high:
        raise VzError('%s: %d is not between %d and %d' % (what, number, low, high))
    return number


def health_check(spec):
    """Check a health check and return it complete, with the ``argv`` and ``line`` to run in the VE.

    ``kind`` is one of ``systemd`` (``systemctl is-system-running --wait`` says ``running``, or
    ``degraded`` with ``allow_degraded``), ``tcp`` (``port`` on ``host``, 127.0.0.1 by default,
    accepts a connection from inside the VE) or ``command`` (an argv list that exits 0).
    ``timeout`` bounds one attempt (seconds); ``retries`` more attempts follow, ``delay`` apart.
    """
    if not isinstance(spec, dict):
        raise VzError('patch_health must be a dict with kind systemd, tcp or command, got %r' % (spec,))
    kind = spec.get('kind')
    if kind not in HEALTH_KINDS:
        raise VzError('patch_health: kind %r is not a health check: use one of %s'
                      % (kind, ', '.join(HEALTH_KINDS)))
    unknown = sorted(set(spec) - _HEALTH_KEYS[kind])
    if unknown:
        raise VzError('patch_health: %s not known for kind %s (known: %s)'
                      % (', '.join(unknown), kind, ', '.join(sorted(_HEALTH_KEYS[kind]))))
    check = {
        'kind': kind,
        'timeout': _int(spec.get('timeout', 30 if kind == 'systemd' else 5), 'patch_health.timeout', 1, 3600),
        'retries': _int(spec.get('retries', 5), 'patch_health.retries', 0, 1000),
        'delay': _int(spec.get('delay', 2), 'patch_health.delay', 0, 3600),
    }
    timeout = str(check['timeout'])
    if kind == 'systemd':
        allow = spec.get('allow_degraded', False)
        if not isinstance(allow, bool):
            raise VzError('patch_health.allow_degraded: %r is not true or false' % (allow,))
        check['allow_degraded'] = allow
        check['accept'] = ['running', 'degraded'] if allow else ['running']
        argv = ['timeout', timeout, 'systemctl', 'is-system-running', '--wait']
    elif kind == 'tcp':
        if 'port' not in spec:
            raise VzError('patch_health: kind tcp needs port')
        check['port'] = _int(spec['port'], 'patch_health.port', 1, 65535)
        host = spec.get('host', '127.0.0.1')
        check['host'] = str(_validate.ip_address(host, 'patch_health.host'))
        argv = ['timeout', str(check['timeout'] + 1), 'sh', '-c', _TCP_SCRIPT, 'sh', str(check['host']),
                str(check['port']), timeout]
    else:
        command = spec.get('command')
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) and '\0' not in a for a in command)):
            raise VzError('patch_health: kind command needs command, a non-empty list of strings (argv), got %r'
                          % (command,))
        check['command'] = list(command)
        argv = ['timeout', timeout] + list(command)
    check['argv'] = argv
    check['line'] = ' '.join(shlex.quote(a) for a in argv)
    return check


def healthy(result, check):
    """Whether the result of running ``check['line']`` in the VE (rc, stdout) passes the check."""
    if not isinstance(result, dict) or result.get('unreachable'):
        return False
    if check['kind'] == 'systemd':
        return str(result.get('stdout') or '').strip() in check['accept']
    return result.get('rc') == 0


def argv_line(argv):
    """One argv list as a line for a POSIX shell (each argument quoted), for ``raw``."""
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise VzError('a command must be a non-empty list of strings (argv), got %r' % (argv,))
    return ' '.join(shlex.quote(a) for a in argv)


def commands(value, what):
    """Check a list of commands, each an argv list of strings; returns it."""
    if not isinstance(value, list) or not all(isinstance(c, list) and c and all(isinstance(a, str) for a in c)
                                              for c in value):
        raise VzError('%s must be a list of commands, each a non-empty list of strings (argv), got %r'
                      % (what, value))
    return value


# -- the plan -----------------------------------------------------------------------------------
def _ref(ref):
    if not isinstance(ref, str) or '@' not in ref:
        return None, None
    name, _sep, version = ref.partition('@')
    return name, version


def _matches(entry, names):
    return entry['ve'] in names or entry['name'] in names


def plan(listings, template=None, version=None, mode='image', include_stopped=True, only=None, exclude=None,
         name_format='{ve}.{host}'):
    """Decide, for every VE of every listed host, whether the rollout patches or skips it.

    ``listings`` has one dict per VE host: ``host`` (inventory name), ``reachable``, ``vz_root``,
    ``connection`` (connection variables of the host for its VEs) and ``ves`` (``osvirt.vz.ve_info``'s
    ``ves``). Returns the entries to patch first, interleaved host by host so every batch spans
    the hosts (the first one is the canary), then the skipped ones; each entry has ``name``
    (inventory name), ``host``, ``ve``, ``state``, ``from``, ``to``, ``action`` (``patch`` or
    ``skip``), ``reason`` (why skipped), ``vz_root`` and ``connection``.
    """
    if mode not in MODES:
        raise VzError('patch_mode: %r is not one of %s' % (mode, ', '.join(MODES)))
    if mode == 'image':
        if not template or not version:
            raise VzError('patch_mode image needs the template and the version to patch to')
        _validate.template_name(template)
        _validate.template_version(version)
    elif template:
        _validate.template_name(template)
    only = set(only or [])
    exclude = set(exclude or [])
    target = '%s@%s' % (template, version) if mode == 'image' else None
    per_host, skipped = [], []
    for listing in sorted(listings, key=lambda item: item['host']):
        host = listing['host']
        todo = []
        for ve in sorted(listing.get('ves') or [], key=lambda item: item['name']):
            entry = {'name': name_format.format(ve=ve['name'], host=host), 'host': host, 've': ve['name'],
                     'state': ve.get('state'), 'from': ve.get('template'), 'to': target or ve.get('template'),
                     'vz_root': listing.get('vz_root'), 'connection': listing.get('connection') or {},
                     'action': 'patch', 'reason': None}
            name, current = _ref(ve.get('template'))
            if only and not _matches(entry, only):
                entry['reason'] = 'not in patch_only_ves'
            elif _matches(entry, exclude):
                entry['reason'] = 'in patch_exclude_ves'
            elif template and name != template:
                entry['reason'] = 'not on template %s (on %s)' % (template, ve.get('template'))
            elif not listing.get('reachable', True):
                entry['reason'] = 'host %s unreachable' % host
            elif mode == 'image' and current == version:
                entry['reason'] = 'already on %s' % target
            elif mode == 'image' and current and current > version:
                entry['reason'] = 'on %s, newer than %s' % (ve.get('template'), target)
            elif ve.get('state') == 'frozen':
                entry['reason'] = 'frozen'
            elif ve.get('state') != 'running' and (mode == 'in_place' or not include_stopped):
                entry['reason'] = ('stopped: in-place patching needs a running VE' if mode == 'in_place'
                                   else 'stopped (patch_include_stopped is false)')
            if entry['reason']:
                entry['action'] = 'skip'
                skipped.append(entry)
            else:
                todo.append(entry)
        per_host.append(todo)
    ordered = []
    for index in range(max([len(t) for t in per_host] or [0])):
        ordered.extend(t[index] for t in per_host if index < len(t))
    return ordered + skipped


def source(listings, template, host=None, version=None):
    """Where the new version comes from: the build host and the template's newest version there.

    ``listings`` as for :func:`plan`, each with ``versions`` (the template's versions on that host,
    oldest first). Without ``host``, the first reachable host (by name) that has the template.
    ``version`` (a version that exists, to patch to without building) must be on that host.
    Returns ``{'host', 'newest', 'versions', 'address', 'vz_root'}`` (how the other hosts reach it); an unknown template or a host or version that
    cannot serve fails here, before anything changes.
    """
    _validate.template_name(template)
    having = [item for item in sorted(listings, key=lambda i: i['host'])
              if item.get('reachable', True) and item.get('versions')]
    if host:
        found = [item for item in listings if item['host'] == host]
        if not found:
            raise VzError('patch_build_host %s is not a host of the play (hosts: %s)'
                          % (host, ', '.join(sorted(i['host'] for i in listings))))
        if not found[0].get('reachable', True):
            raise VzError('patch_build_host %s is unreachable' % host)
        if not found[0].get('versions'):
            raise VzError('patch_build_host %s has no version of template %s' % (host, template))
        chosen = found[0]
    elif having:
        chosen = having[0]
    else:
        raise VzError('unknown template %s: no reachable host of the play has a version of it (hosts: %s)'
                      % (template, ', '.join(sorted(i['host'] for i in listings)) or 'none'))
    if version is not None:
        _validate.template_version(version)
        if version not in chosen['versions']:
            raise VzError('template %s has no version %s on %s (versions: %s)'
                          % (template, version, chosen['host'], ', '.join(chosen['versions'])))
    return {'host': chosen['host'], 'newest': chosen['versions'][-1], 'versions': list(chosen['versions']),
            'address': (chosen.get('connection') or {}).get('address') or chosen['host'],
            'vz_root': chosen.get('vz_root')}


def unreachable_hosts(listings):
    """Inventory names of the listed hosts that could not be reached."""
    return sorted(item['host'] for item in listings if not item.get('reachable', True))


# -- outcome and report -------------------------------------------------------------------------
def outcome(entry, status, message=None, rebase=None, hidden_files=None):
    """One VE's result as the rollout records it (``patch_outcome`` of the VE's inventory host)."""
    if status not in STATUSES:
        raise VzError('unknown patch status %r' % (status,))
    hidden = hidden_files
    if hidden is None and isinstance(rebase, dict):
        hidden = (rebase.get('hidden_files') or {}).get(entry['ve'])
    return {'name': entry['name'], 'host': entry['host'], 've': entry['ve'], 'status': status,
            'from': entry.get('from'), 'to': entry.get('to'), 'hidden_files': list(hidden or []),
            'message': message}


def report(entries, outcomes):
    """The rollout's report from the plan's ``entries`` and the VEs' ``outcomes`` (name -> outcome).

    Returns ``ves`` (one dict per VE, patched ones first), ``summary`` (count per status),
    ``hidden_files`` (VE -> entries, only VEs with some) and ``lines`` (a table for ``debug``).
    """
    ves = []
    for entry in entries or []:
        found = (outcomes or {}).get(entry['name'])
        if isinstance(found, dict) and found.get('status') in STATUSES:
            ve = dict(found)
        elif entry.get('action') == 'skip':
            ve = outcome(entry, 'skipped', entry.get('reason'))
        else:   # planned, but the rollout stopped before its batch
            ve = outcome(entry, 'not_reached', 'the rollout stopped before this VE')
        ves.append(ve)
    ves.sort(key=lambda v: (STATUSES.index(v['status']), v['name']))
    summary = {status: sum(1 for v in ves if v['status'] == status) for status in STATUSES}
    hidden = {v['name']: v['hidden_files'] for v in ves if v['hidden_files']}
    width = max([len(v['name']) for v in ves] + [2])
    lines = ['%s %-11s %-26s %s' % ('VE'.ljust(width), 'STATUS', 'TEMPLATE', 'NOTE')]
    for v in ves:
        ref = v['to'] if v['status'] == 'patched' else v['from']
        note = v['message'] or ''
        if v['hidden_files']:
            note = ('%s; ' % note if note else '') + '%d hidden file(s)' % len(v['hidden_files'])
        lines.append(('%s %-11s %-26s %s' % (v['name'].ljust(width), v['status'], ref or '-', note)).rstrip())
    lines.append('patched %(patched)d, rolled back %(rolled_back)d, failed %(failed)d, skipped %(skipped)d, '
                 'not reached %(not_reached)d' % summary)
    return {'ves': ves, 'summary': summary, 'hidden_files': hidden, 'lines': lines}
