# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain mark of a host and the record of where its VEs went.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The mark is the key ``draining`` of ``<vz_root>/host.json``::

    "draining": {"since": "2026-12-07T23:30:00Z", "reason": "kernel update", "by": "ops"}

Placement (``osvirt.vz.placement``) and provisioning give a host with the mark nothing. Every other
key of host.json is kept as it is. The record is ``<vz_root>/evacuated.json``::

    {"schema": 1, "ves": {"web1": {"target": "vz2", "mode": "warm", "state_before": "running",
                                   "status": "moved", "updated": "2026-12-07T23:31:02Z"}}}

``status`` is ``moving`` from just before a migration starts until it has finished, then
``moved``: a run killed in between leaves ``moving``, and the next run finishes that migration
(ve_migrate is idempotent) before it moves anything else. Restore moves every recorded VE back and
forgets it; the mark goes last, once the record is empty.

The pure part (:func:`apply`) decides; :class:`HostDrain` reads and writes under a host lock.
"""

from __future__ import annotations

import datetime
import json
import os
import re

from . import _validate
from ._errors import VzError
from ._fs import atomic_write, make_dirs, read_json
from ._locks import Lock

RECORD_FILE = 'evacuated.json'
RECORD_SCHEMA = 1
MODES = ('offline', 'warm', 'live')
STATES = ('running', 'stopped', 'frozen')
STATUSES = ('moving', 'moved')
ENTRY_KEYS = ('target', 'mode', 'state_before', 'status')
# an inventory hostname: what Ansible accepts in an INI inventory, without whitespace or control characters
_HOSTNAME_RE = re.compile(r'[A-Za-z0-9_.:\[\]-]{1,255}')
_TEXT_MAX = 500


def utc_now():
    """The current time, UTC, ISO 8601 to the second (``2026-12-07T23:30:00Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def _text(value, what):
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _TEXT_MAX or re.search(r'[\x00-\x1f\x7f]', value):
        raise VzError('%s must be one line of text of at most %d characters, got %r' % (what, _TEXT_MAX, value))
    return value


def check_entry(name, entry):
    """Return the record entry of VE ``name`` in canonical form, or raise VzError naming what is wrong."""
    _validate.ve_name(name)
    if not isinstance(entry, dict):
        raise VzError('record of VE %s must be a dict with %s, got %r' % (name, ', '.join(ENTRY_KEYS), entry))
    unknown = sorted(set(entry) - set(ENTRY_KEYS) - {'updated'})
    if unknown:
        raise VzError('record of VE %s: unknown keys %s; use %s' % (name, ', '.join(unknown), ', '.join(ENTRY_KEYS)))
    target = entry.get('target')
    if not isinstance(target, str) or not _HOSTNAME_RE.fullmatch(target):
        raise VzError('record of VE %s: target must be the inventory hostname the VE went to, got %r' % (name, target))
    result = {'target': target}
    for key, allowed, default in (('mode', MODES, None), ('state_before', STATES, None),
                                  ('status', STATUSES, 'moved')):
        value = entry.get(key, default)
        if value not in allowed:
            raise VzError('record of VE %s: %s must be one of %s, got %r' % (name, key, ', '.join(allowed), value))
        result[key] = value
    return result


def check_mark(mark, where):
    """A mark read from host.json: a dict with since, reason, by (or None); raise VzError otherwise."""
    if mark is None:
        return None
    if not isinstance(mark, dict) or not isinstance(mark.get('since'), str):
        raise VzError('%s: "draining" must be null or an object with since, reason and by, got %r' % (where, mark))
    return mark


def apply(mark, ves, state, reason=None, by=None, record=None, forget=None, force=False, now=None):
    """The mark and record that the module's options ask for, from the current ones.

    ``mark``: the current mark (dict or None); ``ves``: the current record (VE -> entry);
    ``state``: ``present`` (set the mark), ``absent`` (clear it), ``query`` (change nothing) or None
    (leave the mark as it is, change only the record);
    ``record``: VE -> entry to add or replace; ``forget``: VEs to drop from the record.
    Returns ``(mark, ves)``, new objects; the inputs are not changed. Raises VzError for bad input,
    for a record given with ``state=absent`` and for clearing the mark while VEs are still recorded
    as elsewhere (unless ``force``: then the record goes too).
    """
    now = now or utc_now()
    record = record or {}
    forget = list(forget or [])
    if not isinstance(record, dict):
        raise VzError('record must be a dict of VE name -> {target, mode, state_before, status}, got %r' % (record,))
    for name in forget:
        _validate.ve_name(name)
    both = sorted(set(record) & set(forget))
    if both:
        raise VzError('VEs both in record and in forget: %s; give each VE in one of them' % ', '.join(both))
    if state == 'query':
        if record or forget or reason is not None or by is not None:
            raise VzError('state=query changes nothing: leave out reason, by, record and forget')
        return mark, dict(ves)
    if state is None and (reason is not None or by is not None):
        raise VzError('reason and by belong to the mark: give state=present with them')
    if state == 'absent' and record:
        raise VzError('record with state=absent: a host that is no longer draining keeps no evacuation record; '
                      'use state=present to record where VEs went')
    reason, by = _text(reason, 'reason'), _text(by, 'by')
    entries = dict(ves)
    for name in forget:
        entries.pop(name, None)
    for name, entry in sorted(record.items()):
        entry = check_entry(name, entry)
        old = entries.get(name)
        if old is not None and {k: old.get(k) for k in ENTRY_KEYS} == entry:
            continue
        entry['updated'] = now
        entries[name] = entry
    if state is None:
        return mark, entries
    if state == 'present':
        if mark is None:
            mark = {'since': now, 'reason': reason or '', 'by': by or ''}
        else:   # the mark keeps the time it was set; reason and by change only when given
            mark = dict(mark)
            if reason is not None:
                mark['reason'] = reason
            if by is not None:
                mark['by'] = by
        return mark, entries
    # absent
    if entries and not force:
        raise VzError('cannot clear the drain mark: %d VE(s) recorded as evacuated are not back (%s); restore '
                      'them first, or give force=true to drop the record' % (
                          len(entries), ', '.join('%s on %s' % (n, e['target']) for n, e in sorted(entries.items()))))
    return None, {}


def _dump_settings(settings):
    # the same text as the host role's to_nice_json, so a rerun of the role sees no change of its own
    return json.dumps(settings, indent=4, sort_keys=True, separators=(',', ': '), ensure_ascii=False) + '\n'


class HostDrain:
    """The drain mark and the evacuation record of the host with data root ``vz_root``."""

    def __init__(self, vz_root):
        self.vz_root = _validate.vz_root(vz_root)
        self.settings_path = os.path.join(self.vz_root, 'host.json')
        self.record_path = os.path.join(self.vz_root, RECORD_FILE)

    def _require_store(self):
        if not os.path.isdir(self.vz_root):
            raise VzError('%s does not exist: this is not a VE host yet (run the osvirt.vz.host role first)'
                          % self.vz_root)

    def read(self):
        """``(settings, mark, ves)``: host.json's object, its mark (or None) and the record (VE -> entry)."""
        self._require_store()
        settings = read_json(self.settings_path, {})
        if not isinstance(settings, dict):
            raise VzError('%s must hold a JSON object' % self.settings_path)
        mark = check_mark(settings.get('draining'), self.settings_path)
        data = read_json(self.record_path, None) or {'schema': RECORD_SCHEMA, 'ves': {}}
        if not isinstance(data, dict) or not isinstance(data.get('ves'), dict):
            raise VzError('%s must hold an object with "ves"; put it right or remove it' % self.record_path)
        if data.get('schema', RECORD_SCHEMA) != RECORD_SCHEMA:
            raise VzError('%s has schema %r; this collection reads schema %d' % (
                self.record_path, data.get('schema'), RECORD_SCHEMA))
        return settings, mark, data['ves']

    def change(self, check_mode=False, **options):
        """Apply :func:`apply` with ``options``; returns ``(changed, before, after)``.

        ``before``/``after`` are ``{'draining': mark, 'evacuated': record}``. Writes only what
        changed (the record first, so a mark is never cleared before its record), atomically, under
        the host's drain lock; nothing in check mode.
        """
        self._require_store()
        if check_mode or options.get('state') == 'query':
            return self._decide(options)
        locks = os.path.join(self.vz_root, 'locks')
        make_dirs(locks, 0o700)
        with Lock(locks, 'host', 'drain', 'host_drain', timeout=30):
            changed, before, after = self._decide(options)
            if changed:
                settings = self._settings_now()
                if after['evacuated'] != before['evacuated']:
                    if after['evacuated']:
                        atomic_write(self.record_path, json.dumps(
                            {'schema': RECORD_SCHEMA, 'ves': after['evacuated']}, indent=2, sort_keys=True) + '\n')
                    elif os.path.exists(self.record_path):
                        os.unlink(self.record_path)
                if after['draining'] != before['draining']:
                    if after['draining'] is None:
                        settings.pop('draining', None)
                    else:
                        settings['draining'] = after['draining']
                    atomic_write(self.settings_path, _dump_settings(settings))
            return changed, before, after

    def _settings_now(self):
        return self.read()[0]

    def _decide(self, options):
        _settings, mark, ves = self.read()
        new_mark, new_ves = apply(mark, ves, **options)
        before = {'draining': mark, 'evacuated': ves}
        after = {'draining': new_mark, 'evacuated': new_ves}
        return before != after, before, after
