# Copyright: osvirt.vz contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-harness callback: every task result of a playbook run as one JSON file.

ansible-core no longer ships a json stdout callback (it lives in ansible.posix, which we do
not depend on), so tests/integration/conftest.py enables this aggregate callback and reads
the file named by VZ_RESULTS_FILE, while stdout keeps the default, human-readable output
for failure reports. The shape follows ansible.posix.json:
{"plays": [{"play": {...}, "tasks": [{"task": {...}, "hosts": {host: result}}]}], "stats": {...}}
"""

from __future__ import annotations

import json
import os

from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: vz_results
type: aggregate
short_description: write all task results to the JSON file named by VZ_RESULTS_FILE
description:
  - Test harness of osvirt.vz, not part of the collection.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vz_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.plays = []
        self.path = os.environ.get("VZ_RESULTS_FILE")

    def v2_playbook_on_play_start(self, play):
        self.plays.append({"play": {"name": play.get_name(), "id": str(play._uuid)}, "tasks": []})

    def _task_start(self, task, handler=False):
        if not self.plays:
            return
        self.plays[-1]["tasks"].append(
            {"task": {"name": task.get_name(), "id": str(task._uuid), "handler": handler}, "hosts": {}}
        )

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task, handler=True)

    def _record(self, result, **status):
        if not self.plays or not self.plays[-1]["tasks"]:
            return
        data = dict(result.result)
        data.update(status)
        data.setdefault("action", result.task.action)
        tasks = self.plays[-1]["tasks"]
        # Results arrive after their task's start; match by task id in case of interleaving.
        for entry in reversed(tasks):
            if entry["task"]["id"] == str(result.task._uuid):
                entry["hosts"][result.host.get_name()] = data
                return
        tasks[-1]["hosts"][result.host.get_name()] = data

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, failed=True, ignore_errors=ignore_errors)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_runner_on_unreachable(self, result):
        self._record(result, unreachable=True)

    def v2_playbook_on_stats(self, stats):
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        if self.path:
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump({"plays": self.plays, "stats": summary}, f, cls=AnsibleJSONEncoder, indent=1)
