# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
name: ve_table
short_description: Format VEs from osvirt.vz.ve_info or osvirt.vz.ve as table rows
version_added: 0.1.0
author: osvirt developers (!UNKNOWN)
description:
  - Turns a list of VE dicts into a list of aligned text lines, a header first, for M(ansible.builtin.debug).
options:
  _input:
    description: VEs, as in the C(ves) result of M(osvirt.vz.ve_info) or M(osvirt.vz.ve).
    type: list
    elements: dict
    required: true
'''

EXAMPLES = r'''
- name: Show the VEs of a host
  ansible.builtin.debug:
    msg: "{{ info.ves | osvirt.vz.ve_table }}"
'''

RETURN = r'''
_value:
  description: One header line, then one line per VE.
  type: list
  elements: str
'''

COLUMNS = (
    ('VE', 'name', 16),
    ('STATE', 'state', 8),
    ('TEMPLATE', 'template', 26),
    ('IPS', 'ips', 15),
    ('PID', 'pid', 7),
    ('MEM KiB', 'memory_bytes', 8),
    ('DISK KiB', 'private_bytes', 8),
)


def _cell(key, value):
    if value is None:
        return '-'
    if key == 'ips':
        return ','.join(value) or '-'
    if key.endswith('_bytes'):
        return str(int(value) // 1024)
    return str(value)


def ve_table(ves):
    """Header plus one aligned line per VE."""
    rows = [[title for title, _key, _width in COLUMNS]]
    for ve in ves or []:
        rows.append([_cell(key, ve.get(key)) for _title, key, _width in COLUMNS])
    widths = [max([width] + [len(row[i]) for row in rows]) for i, (_t, _k, width) in enumerate(COLUMNS)]
    return [' '.join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


class FilterModule:
    def filters(self):
        return {'ve_table': ve_table}
