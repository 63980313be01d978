# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration journal and the pure rules of a migration (round stop rule, what a rerun does).

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Each host keeps ``<vz_root>/migrations/<ve>.json`` while a migration of that VE is under way. It
is written atomically (temporary file, fsync, rename) *before* each step, so after a crash it
names the step that may be half done. The source's journal lists the steps done (their undo is
what a rollback unwinds); the target's journal says how far the target's copy got, and above
all whether the target committed (owns the VE). Nothing here touches a VE: the functions below
are plain data in, decision out, and unit-tested as such.
"""

from __future__ import annotations

import os
import time

from . import _validate
from ._fs import make_dirs, read_json, write_json

SCHEMA = 1

# The source's steps in order. Everything before 'commit' has an undo; from 'commit' on only completion.
SOURCE_STEPS = ('template', 'precopy', 'freeze', 'checkpoint', 'final_sync', 'stop', 'register', 'start',
                'restore', 'commit', 'fence', 'remove', 'keep', 'finish')
BEFORE_COMMIT = SOURCE_STEPS[:SOURCE_STEPS.index('commit')]

# The target's phases: what its copy is. Only 'committed' means the target owns the VE.
TARGET_PHASES = ('staging', 'registered', 'started', 'committed')

MODES = ('offline', 'warm', 'live')
# A pre-copy round that moves less than this is the last one while the VE runs.
ROUND_THRESHOLD = 1 << 20
MAX_ROUNDS = 5


def journal_path(vz_root, ve):
    return os.path.join(vz_root, 'migrations', _validate.ve_name(ve) + '.json')


class Journal:
    """One host's journal of one VE's migration (``data`` None when there is none)."""

    def __init__(self, vz_root, ve):
        self.path = journal_path(vz_root, ve)
        self.ve = ve
        self.data = read_json(self.path)
        if self.data is not None and not isinstance(self.data, dict):
            self.data = {'ve': ve, 'corrupt': True}

    @property
    def exists(self):
        return self.data is not None

    def start(self, **fields):
        self.data = dict(fields, ve=self.ve, schema=SCHEMA, done=[], doing=None,
                         started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
        self.save()

    def save(self):
        make_dirs(os.path.dirname(self.path), 0o700)
        self.data['updated'] = time.time()
        write_json(self.path, self.data, mode=0o600)

    def begin(self, step):
        """Record that ``step`` starts now (written before anything of it is done)."""
        self.data['doing'] = step
        self.save()

    def end(self, step, **fields):
        """Record ``step`` as done, with ``fields`` to remember (e.g. what it changed)."""
        if self.data is None:   # the last step removed the journal: nothing left to record
            return
        self.data.update(fields)
        if step not in self.data['done']:
            self.data['done'].append(step)
        self.data['doing'] = None
        self.save()

    def update(self, **fields):
        self.data.update(fields)
        self.save()

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.data = None


def next_round(rounds, threshold=ROUND_THRESHOLD, max_rounds=MAX_ROUNDS):
    """Whether another pre-copy round is worth it while the VE runs.

    ``rounds`` lists the bytes each round moved so far. Stop after a round that moved less than
    ``threshold`` (what is left is small enough to copy while frozen), after ``max_rounds`` rounds,
    or when a round moved no less than the one before (the VE writes as fast as we copy: more
    rounds would not shrink the final copy).
    """
    if not rounds:
        return True
    if len(rounds) >= max_rounds or rounds[-1] < threshold:
        return False
    if len(rounds) >= 2 and rounds[-1] >= rounds[-2]:
        return False
    return True


def resume_action(source, target):
    """What a rerun does with an unfinished migration.

    ``source``: the source's journal data (None: none); ``target``: the target's journal data, None
    when it has none, or the string 'unreachable'. Returns one of

    - ``'none'``: nothing is unfinished;
    - ``'complete'``: the target committed: finish the source side (fence, remove, finish);
    - ``'rollback'``: not committed: undo the source's done steps, remove the target's copy;
    - ``'unknown'``: the commit may have happened but the target cannot say: touch nothing (the
      source stays stopped; never two running copies).
    """
    if source is None and target is None:
        return 'none'
    if isinstance(target, dict) and target.get('phase') == 'committed':
        return 'complete'
    if source is not None and ('commit' in source.get('done', []) or source.get('committed')):
        return 'complete'
    if target == 'unreachable':
        if source is not None and source.get('doing') == 'commit':
            return 'unknown'
        return 'rollback'
    return 'rollback'


def resumable_copy(source, target):
    """True when the only thing left of an earlier migration is a copy the target kept for a resume
    (``keep_target``: rolled back with the copied files kept, nothing registered): a new run copies
    onto it instead of rolling it back, so only what changed since is sent again."""
    return (source is None and isinstance(target, dict) and target.get('phase') == 'staging'
            and bool(target.get('kept')))


def plan_steps(mode, running, template_missing, keep_source):
    """The source's steps for one migration (names of ``SOURCE_STEPS``), in order."""
    steps = ['template'] if template_missing else []
    if mode == 'warm' and running:
        steps += ['precopy', 'freeze', 'final_sync', 'stop']
    elif mode == 'live' and running:
        steps += ['precopy', 'checkpoint', 'final_sync', 'stop']
    else:
        steps += ['stop', 'final_sync'] if running else ['final_sync']
    steps += ['register']
    if running:
        steps.append('restore' if mode == 'live' else 'start')
    steps += ['commit', 'fence', 'keep' if keep_source else 'remove', 'finish']
    return steps


def downtime(timings, mode):
    """Seconds the VE did not run: from freeze (warm, live) or stop (offline) to running on the target."""
    start_key = {'warm': 'freeze', 'live': 'checkpoint'}.get(mode, 'stop')
    begin = timings.get(start_key + '_at')
    end = timings.get('running_at')
    if begin is None or end is None:
        return None
    return round(end - begin, 3)
