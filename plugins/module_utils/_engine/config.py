# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A model of the LXC configuration file.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

The model keeps every line it reads (comments, blank lines, keys it does not own) and changes only
the keys it is told to. ``replace_owned`` swaps the collection's keys for a new set in one step, so
hand-made or future keys survive every run of a module.
"""

from __future__ import annotations

from .._errors import VzError
from .._fs import atomic_write

HEADER = '# Managed by osvirt.vz. Keys it does not own are kept as they are.\n'


class LxcConfig:
    """Ordered entries of an LXC config: ('kv', key, value) or ('raw', line)."""

    def __init__(self, entries=None):
        self.entries = list(entries or [])

    # -- reading --------------------------------------------------------------------------
    @classmethod
    def parse(cls, text):
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith('#'):
                entries.append(('raw', line))
                continue
            key, sep, value = line.partition('=')
            if not sep or not key.strip():
                raise VzError('LXC config line %d is not "key = value": %r' % (number, line))
            entries.append(('kv', key.strip(), value.strip()))
        return cls(entries)

    @classmethod
    def load(cls, path):
        with open(path, 'r', encoding='utf-8') as handle:
            return cls.parse(handle.read())

    def items(self):
        """All (key, value) pairs in file order."""
        return [(e[1], e[2]) for e in self.entries if e[0] == 'kv']

    def get(self, key):
        """Every value of ``key`` in file order (a key may repeat, e.g. lxc.idmap)."""
        return [v for k, v in self.items() if k == key]

    def get_one(self, key, default=None):
        values = self.get(key)
        return values[-1] if values else default

    # -- changing -------------------------------------------------------------------------
    def set(self, key, values):
        """Give ``key`` exactly ``values`` (str or list), at the place of its first occurrence."""
        if isinstance(values, str):
            values = [values]
        new, placed = [], False
        for entry in self.entries:
            if entry[0] == 'kv' and entry[1] == key:
                if not placed:
                    new.extend(('kv', key, v) for v in values)
                    placed = True
                continue
            new.append(entry)
        if not placed:
            new.extend(('kv', key, v) for v in values)
        self.entries = new

    def remove(self, key):
        self.set(key, [])

    def owned_items(self, is_owned):
        """The (key, value) pairs for which ``is_owned(key)`` is true, in file order."""
        return [(k, v) for k, v in self.items() if is_owned(k)]

    def replace_owned(self, is_owned, items):
        """Drop every owned key and put ``items`` first, keeping all other lines after them."""
        kept = [e for e in self.entries if not (e[0] == 'kv' and is_owned(e[1]))]
        while kept and kept[0][0] == 'raw' and kept[0][1].strip() in ('', HEADER.strip()):
            kept.pop(0)
        self.entries = [('raw', HEADER.rstrip('\n'))] + [('kv', k, v) for k, v in items]
        if kept:
            self.entries += [('raw', '')] + kept

    # -- writing --------------------------------------------------------------------------
    def render(self):
        lines = []
        for entry in self.entries:
            lines.append(entry[1] if entry[0] == 'raw' else '%s = %s' % (entry[1], entry[2]))
        return '\n'.join(lines) + '\n'

    def save(self, path):
        atomic_write(path, self.render(), 0o644)
