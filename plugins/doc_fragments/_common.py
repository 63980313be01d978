# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared option documentation of osvirt.vz modules.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations


class ModuleDocFragment:

    # Options that locate the host's VE store.
    DOCUMENTATION = r'''
options:
  vz_root:
    description:
      - The host's data root holding C(templates/), C(ves/) (the LXC lxcpath), C(.tmp/) and C(locks/).
      - Must be an absolute path other than C(/), without whitespace or C(:).
    type: str
    default: /var/lib/vz
  cgroup_parent:
    description:
      - Parent cgroup of every VE, relative to each cgroup hierarchy's root.
      - Defaults to C(cgroup_parent) in C(<vz_root>/host.json), written by the M(osvirt.vz.host) role, else C(vz).
    type: str
'''

    # Support of check mode and diff mode, for modules that change things.
    ACTIONS = r'''
attributes:
  check_mode:
    support: full
    description: Can run in check mode and return changed status prediction without modifying the host.
  diff_mode:
    support: full
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
  idempotent:
    support: full
    description: When run twice in a row with the same arguments, the second run reports no change.
'''

    # Read-only modules.
    INFO = r'''
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: N/A
    description: Changes nothing, so there is no diff.
  idempotent:
    support: full
    description: Changes nothing.
'''
