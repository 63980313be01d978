# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time stamps of task starts, loop items and task ends, as JSON lines, for bench/ve_create.py."""

from __future__ import annotations

DOCUMENTATION = r'''
name: bench_timer
type: aggregate
short_description: Write time stamps of tasks and loop items to a file (osvirt.vz benchmarks)
description:
  - Appends one JSON object per event to the file named by the environment variable E(OSVIRT_BENCH_TIMES)
    - task start, each loop item done, task done - with C(time.time()) stamps taken on the controller.
  - Used by C(bench/ve_create.py) only; it is not part of the collection's plugins.
requirements:
  - enable with C(ANSIBLE_CALLBACKS_ENABLED=bench_timer) and C(ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins)
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'bench_timer'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get('OSVIRT_BENCH_TIMES')
        self._out = open(path, 'a', encoding='utf-8') if path else None  # pylint: disable=consider-using-with

    def _emit(self, event, **fields):
        if self._out is None:
            return
        fields.update(ev=event, t=time.time())
        self._out.write(json.dumps(fields) + '\n')
        self._out.flush()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._emit('task_start', task=task.get_name())

    def _item(self, result, status):
        res = result.result
        loop_var = res.get('ansible_loop_var') or 'item'
        item = res.get(loop_var)
        self._emit('item', task=result.task.get_name(), status=status,
                   item=item if isinstance(item, (str, int)) else json.dumps(item, default=str),
                   msg=res.get('msg') if status == 'failed' else None)

    def v2_runner_item_on_ok(self, result):
        self._item(result, 'ok')

    def v2_runner_item_on_failed(self, result):
        self._item(result, 'failed')

    def _end(self, result, status):
        res = result.result
        self._emit('task_end', task=result.task.get_name(), status=status,
                   msg=res.get('msg') if status != 'ok' else None,
                   stderr=(res.get('stderr') or '')[-2000:] if status != 'ok' else None)

    def v2_runner_on_ok(self, result):
        self._end(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._end(result, 'failed')

    def v2_runner_on_unreachable(self, result):
        self._end(result, 'unreachable')

    def v2_playbook_on_stats(self, stats):
        self._emit('playbook_end')
        if self._out is not None:
            self._out.close()
            self._out = None
