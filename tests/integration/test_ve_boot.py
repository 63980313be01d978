# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The bulk form's start concurrency and ``wait_for`` of osvirt.vz.ve, with busybox VEs (an init
that cannot report its boot: up when LXC says running). The systemd side (``systemctl
is-system-running``) is checked on debian-12 in test_template_build.py.
"""

from __future__ import annotations

import os
import secrets

import pytest

from vzlib import VeStore, kill_all, play, sh


@pytest.fixture
def store(vz_root, cgroup_parent, built_template, run_playbook):
    templates, version = built_template
    os.chmod(vz_root, 0o711)
    sh("cp", "-a", "--reflink=auto", str(templates), str(vz_root / "templates"))
    s = VeStore(root=vz_root, parent=cgroup_parent, version=version, prefix="w" + secrets.token_hex(2),
                run=run_playbook)
    try:
        yield s
    finally:
        kill_all(vz_root / "ves")


def test_bulk_start_with_concurrency_and_wait_for(store):
    names = [store.name("w%d" % i) for i in range(5)]
    task = store.task("bulk", template="busybox", ves=[{"name": n, "network": []} for n in names],
                      start_concurrency=2, wait_for="running", wait_timeout=60)
    first = store.run(play([task])).task("bulk")
    assert first.changed
    assert [v["name"] for v in first["ves"]] == names
    for ve in first["ves"]:
        assert ve["state"] == "running" and ve["boot"]["state"] == "running", ve
        assert ve["boot"]["method"] == "lxc" and ve["boot"]["failed_units"] == []
    assert all(store.lxc_state(n) == "RUNNING" for n in names)
    again = store.run(play([task])).task("bulk")
    assert not again.changed and [v["boot"]["state"] for v in again["ves"]] == ["running"] * 5


@pytest.mark.parametrize("options, words", [
    ({"start_concurrency": 0}, "start_concurrency must be at least 1"),
    ({"wait_timeout": 0, "wait_for": "running"}, "wait_timeout must be at least 1"),
])
def test_bad_wait_options_change_nothing(store, options, words):
    task = store.task("bad", template="busybox", ves=[{"name": store.name("x"), "network": []}], **options)
    res = store.run(play([task]), expect_fail=True).task("bad")
    assert words in res.msg, res.msg
    assert not (store.ves / store.name("x")).exists()
