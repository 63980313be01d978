# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of rebasing VEs with osvirt.vz.ve: ``template: name@version`` and
``rebase: latest`` on real LXC and overlayfs, in a throw-away vz_root.

Covers: four steps of a rebase of a stopped VE (lower layers switched, private area kept,
hidden_files listing private files and whiteouts that hide changes of the new version), a
running VE (restart_required without restart, kept across runs; switched with restart: true and
the new files visible inside), rollback to an older version, refusal to move to another
template name or to combine a version with rebase: latest, and a failed start on the new version
that puts the VE back on the old one, running.
"""

from __future__ import annotations

import os
import stat


from template_helpers import play, publish_variant
from template_helpers import store  # noqa: F401  pylint: disable=unused-import


def _own(store, ve):
    """Give files made in a private area by hand to the VE's mapped root, as the VE's own writes are."""
    idmap = store.meta(ve)["idmap"]
    for current, dirs, files in os.walk(store.upper(ve)):
        for entry in dirs + files:
            os.lchown(os.path.join(current, entry), idmap["uid"], idmap["gid"])


def _hidden(result, ve):
    return sorted((e["path"], e["upper"], e["change"]) for e in result["hidden_files"].get(ve, []))


def test_rebase_stopped_ve_four_steps(store, four_steps):
    v1 = store.build()
    ve = store.name("a")
    store.run(play([store.ve_task("create", name=ve, template="busybox", state="stopped")]))
    upper = store.upper(ve)
    # the VE's own changes, as overlayfs stores them in the private area (etc/ holds its identity files already)
    (upper / "etc").mkdir(exist_ok=True)
    (upper / "etc/motd").write_text("the VE's own motd\n")          # the new version adds one
    (upper / "etc/hosts").write_text("127.0.0.1 mine\n")            # the new version keeps it
    (upper / "root").mkdir()
    (upper / "root/notes").write_text("mine only\n")                 # no template file there
    os.mknod(upper / "etc/resolv.conf", stat.S_IFCHR, os.makedev(0, 0))   # the VE deleted it
    _own(store, ve)
    v2 = publish_variant(store.root, "busybox", v1,
                         write={"etc/motd": "patched motd\n", "etc/resolv.conf": "nameserver 10.20.0.1\n",
                                "etc/issue": "new in v2\n"})

    result = four_steps({"osvirt.vz.ve": store.opts(name=ve, rebase="latest", state="stopped")})
    check, real, again, check_again = result.steps["localhost"]
    action = "rebase %s from busybox@%s to busybox@%s" % (ve, v1, v2)
    assert check["actions"] == [action] and real["actions"] == [action], real.result
    assert again["actions"] == [] and check_again["actions"] == []
    assert real["rebased"] == [{"name": ve, "from": "busybox@" + v1, "to": "busybox@" + v2, "rollback": False}]
    expected = [("/etc/motd", "file", "added"), ("/etc/resolv.conf", "whiteout", "modified")]
    assert _hidden(check, ve) == expected and _hidden(real, ve) == expected, real["hidden_files"]
    assert again["rebased"] == [] and again["hidden_files"] == {}
    assert check["diff"]["before"]["template"] == "busybox@" + v1
    assert check["diff"]["after"]["template"] == "busybox@" + v2
    assert real["ve"]["template"] == "busybox@" + v2 and real["ve"]["state"] == "stopped"
    # the lower layers are v2's, the private area is the same directory with the same files
    assert "/busybox/%s/" % v2 in store.rootfs_line(ve) and "/busybox/%s/" % v1 not in store.rootfs_line(ve)
    assert store.meta(ve)["template"] == "busybox@" + v2
    assert store.meta(ve)["layers"] == ["busybox@" + v2]
    assert (upper / "root/notes").read_text() == "mine only\n"
    assert (upper / "etc/motd").read_text() == "the VE's own motd\n"

    # it starts on v2: the new file shows, the private motd still wins
    store.run(play([store.ve_task("start", name=ve, state="started")]))
    assert store.attach(ve, "cat", "/etc/issue").stdout == "new in v2\n"
    assert store.attach(ve, "cat", "/etc/motd").stdout == "the VE's own motd\n"
    assert store.tmp_entries() == []


def test_rebase_running_ve_restart_required_then_restart(store):
    v1 = store.build()
    ves = [store.name("r1"), store.name("r2")]
    store.run(play([store.ve_task("create", template="busybox", ves=[{"name": n} for n in ves])]))
    pids = {n: store.pid(n) for n in ves}
    assert all(pids.values()), pids
    v2 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "v2\n"})

    run = store.run(play([store.ve_task("rebase", rebase="latest", ves=[{"name": n} for n in ves]),
                          store.ve_task("again", rebase="latest", ves=[{"name": n} for n in ves])]))
    first, again = run.task("rebase"), run.task("again")
    assert first.changed and first["restart_required"] is True
    assert sorted(first["actions"]) == sorted("rebase %s from busybox@%s to busybox@%s" % (n, v1, v2) for n in ves)
    # the config is written, the VEs keep running what they were started with
    assert {n: store.pid(n) for n in ves} == pids
    assert all(store.attach(n, "cat", "/etc/issue", check=False).returncode != 0 for n in ves)
    assert not again.changed and again["restart_required"] is True, again.result
    info = store.run(play([{"name": "info", "osvirt.vz.ve_info": {"vz_root": str(store.root)}}])).task("info")
    assert all(v["restart_required"] for v in info["ves"]), info["ves"]

    run = store.run(play([store.ve_task("restart", rebase="latest", restart=True, ves=[{"name": n} for n in ves])]))
    res = run.task("restart")
    assert res.changed and res["restart_required"] is False
    assert sorted(res["actions"]) == sorted(a for n in ves for a in ("stop %s" % n, "start %s" % n))
    for n in ves:
        assert store.pid(n) and store.pid(n) != pids[n]
        assert store.attach(n, "cat", "/etc/issue").stdout == "v2\n"
    res = store.run(play([store.ve_task("quiet", rebase="latest", restart=True,
                                        ves=[{"name": n} for n in ves])])).task("quiet")
    assert not res.changed and res["restart_required"] is False


def test_rollback_to_an_older_version_is_allowed_and_said(store):
    v1 = store.build()
    ve = store.name("b")
    v2 = publish_variant(store.root, "busybox", v1, write={"etc/issue": "v2\n"})
    store.run(play([store.ve_task("create", name=ve, template="busybox", state="stopped")]))
    assert store.meta(ve)["template"] == "busybox@" + v2
    (store.upper(ve) / "etc").mkdir(exist_ok=True)   # it holds the VE's /etc/hostname and /etc/hosts
    (store.upper(ve) / "etc/issue").write_text("mine\n")
    _own(store, ve)
    run = store.run(play([store.ve_task("back", name=ve, template="busybox@" + v1, state="stopped")]))
    res = run.task("back")
    assert res["actions"] == ["rebase %s from busybox@%s to busybox@%s (rollback to an older version)"
                              % (ve, v2, v1)]
    assert res["rebased"][0]["rollback"] is True
    assert _hidden(res, ve) == [("/etc/issue", "file", "removed")]
    assert any("rollback" in w for w in res.get("warnings", [])), res.result
    assert store.meta(ve)["template"] == "busybox@" + v1
    # template: name alone keeps the version, rebase: latest goes forward again
    res = store.run(play([store.ve_task("keep", name=ve, template="busybox", state="stopped")])).task("keep")
    assert not res.changed
    res = store.run(play([store.ve_task("fwd", name=ve, rebase="latest", state="stopped")])).task("fwd")
    assert res["rebased"][0] == {"name": ve, "from": "busybox@" + v1, "to": "busybox@" + v2, "rollback": False}


def test_bad_rebases_are_refused_and_change_nothing(store):
    v1 = store.build()
    store.build(name="other")
    ve = store.name("c")
    store.run(play([store.ve_task("create", name=ve, template="busybox", state="stopped")]))
    config, meta = store.config(ve), store.meta(ve)
    tasks = [
        dict(store.ve_task("other name", name=ve, template="other", state="stopped"), ignore_errors=True),
        dict(store.ve_task("other latest", name=ve, template="other", rebase="latest", state="stopped"),
             ignore_errors=True),
        dict(store.ve_task("both", name=ve, template="busybox@" + v1, rebase="latest", state="stopped"),
             ignore_errors=True),
        dict(store.ve_task("missing", name=ve, template="busybox@20990101-000000", state="stopped"),
             ignore_errors=True),
        dict(store.ve_task("bad", name=ve, rebase="newest", state="stopped"), ignore_errors=True),
    ]
    run = store.run(play(tasks))
    msg = run.task("other name").msg
    assert run.task("other name").failed and "cannot move to template other" in msg, msg
    assert "cannot move to template other" in run.task("other latest").msg
    assert "use one of them" in run.task("both").msg, run.task("both").msg
    assert "has no version 20990101-000000" in run.task("missing").msg, run.task("missing").msg
    assert run.task("bad").failed and "latest" in run.task("bad").msg
    for title in ("other name", "other latest", "both", "missing", "bad"):
        assert "unexpected error" not in run.task(title).msg
    assert store.config(ve) == config and store.meta(ve) == meta


def test_failed_start_on_the_new_version_puts_the_ve_back(store):
    v1 = store.build()
    ve = store.name("d")
    store.run(play([store.ve_task("create", name=ve, template="busybox")]))
    pid = store.pid(ve)
    config = store.config(ve)
    # a broken new version: no init to start
    publish_variant(store.root, "busybox", v1, remove=["sbin/init"])
    run = store.run(play([store.ve_task("rebase", name=ve, rebase="latest", restart=True)]), expect_fail=True)
    res = run.task("rebase")
    assert res.failed and ("is back on busybox@%s" % v1) in res.msg, res.msg
    assert store.lxc_state(ve) == "RUNNING" and store.pid(ve) != pid
    assert store.config(ve) == config
    assert store.meta(ve)["template"] == "busybox@" + v1
    # nothing is pending: the VE runs what its config says
    res = store.run(play([store.ve_task("again", name=ve, template="busybox")])).task("again")
    assert not res.changed and res["restart_required"] is False, res.result


def test_hidden_files_from_what_the_running_ve_did(store):
    """Whiteouts and opaque directories as overlayfs itself writes them in an unprivileged VE."""
    v1 = store.build()
    ve = store.name("e")
    store.run(play([store.ve_task("create", name=ve, template="busybox")]))
    store.attach(ve, "sh", "-c", "rm /etc/hosts && rm -rf /usr/share/udhcpc && mkdir /usr/share/udhcpc && "
                 "echo mine > /usr/share/udhcpc/mine && echo changed > /etc/passwd.local && rm /etc/os-release")
    v2 = publish_variant(store.root, "busybox", v1, write={
        "etc/hosts": "127.0.0.1 localhost v2\n",                          # the VE deleted it: whiteout
        "usr/share/udhcpc/default.script": "#!/bin/sh\n# v2\nexit 0\n",    # under the VE's opaque dir
    })
    run = store.run(play([store.ve_task("check", name=ve, rebase="latest", restart=True)]), check=True)
    res = run.task("check")
    assert store.meta(ve)["template"] == "busybox@" + v1      # check mode changed nothing
    assert _hidden(res, ve) == [("/etc/hosts", "whiteout", "modified"),
                                ("/usr/share/udhcpc", "opaque directory", "modified")], res["hidden_files"]
    entry = [e for e in res["hidden_files"][ve] if e["path"] == "/usr/share/udhcpc"][0]
    assert entry["changed_below"] == 1
    res = store.run(play([store.ve_task("rebase", name=ve, rebase="latest", restart=True)])).task("rebase")
    assert res["rebased"][0]["to"] == "busybox@" + v2 and _hidden(res, ve) == _hidden(run.task("check"), ve)
    # what the VE sees: its own deletions and directory win over the new version
    assert store.attach(ve, "cat", "/etc/hosts", check=False).returncode != 0
    assert store.attach(ve, "ls", "/usr/share/udhcpc").stdout.split() == ["mine"]
