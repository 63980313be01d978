# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Ping-pong: one running busybox VE moved warm lab1 -> lab2 -> lab1, again and again.

VZ_PINGPONG_ROUNDS round trips (default 2 in `make test`; `make soak-migrate` runs 10, that is
20 migrations). After every move: exactly one running copy (on the target; the source has
neither the VE nor a journal nor an incoming copy), the files written into it before the first
move unchanged (checksums), its address leased on the host it runs on only.
"""

from __future__ import annotations

import os
import time

from test_migrate import VZ, _private_sums, _state
from test_migrate_faults import _journal, _make_ve, _one_copy, _task, _cleanup, lab_template  # noqa: F401  # pylint: disable=unused-import
from vzlib import play

ROUNDS = int(os.environ.get("VZ_PINGPONG_ROUNDS", "2"))
ADDRESS = "10.20.0.75"


def _data(lab, host, name):
    return {path: digest for path, digest in _private_sums(lab, host, name).items() if path.startswith("./data/")}


def test_ping_pong(lab, run_playbook, lab_template):  # pylint: disable=redefined-outer-name
    lab1, lab2 = lab.hosts[:2]
    names = []
    try:
        name = _make_ve(run_playbook, lab, lab1, lab_template, ADDRESS)
        names.append(name)
        lab.exec(lab1, "lxc-attach", "-P", VZ + "/ves", "-n", name, "--", "sh", "-c",
                 "mkdir -p /data/sub && for i in 1 2 3 4 5 6 7 8; do head -c 40000 /dev/urandom > /data/sub/f$i; done "
                 "&& ln /data/sub/f1 /data/hard && ln -s sub/f2 /data/link && chmod 0600 /data/sub/f3")
        sums = _data(lab, lab1, name)
        assert len(sums) >= 9, sums
        moves, started = [], time.monotonic()
        for trip in range(ROUNDS):
            for source, target in ((lab1, lab2), (lab2, lab1)):
                run = run_playbook(play([_task(name, target, mode="warm")], source), inventory=lab.inventory)
                result = run.task("migrate", host=source)
                assert result.changed and result["mode"] == "warm" and result["where"] == "target", result.result
                moves.append((result["stages"]["total"], result["downtime"]))
                _one_copy(lab, name, target, source)
                assert _journal(lab, source, name) is None and _journal(lab, target, name) is None
                assert _data(lab, target, name) == sums, (trip, source, target)
                assert lab.exec(target, "test", "-e", "%s/net/leases/%s" % (VZ, ADDRESS), check=False).returncode == 0
                assert lab.exec(source, "test", "-e", "%s/net/leases/%s" % (VZ, ADDRESS),
                                check=False).returncode != 0
        assert len(moves) == 2 * ROUNDS and _state(lab, lab1, name) == "RUNNING"
        print("ping-pong: %d migrations in %.1f s; module total / downtime per move: %s"
              % (len(moves), time.monotonic() - started, moves))
    finally:
        _cleanup(run_playbook, lab, names)
