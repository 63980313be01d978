# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Copying a template version between the two lab hosts with ``source: {type: copy}``: rsync
over real SSH from lab1 (198.18.0.11) to lab2, with the lab's key (lab hosts share this
machine's files except /var/lib/vz).

Covers: four steps of copying an app template whose parent is missing on lab2 (the parent comes
first, same version ids, same checksums, recomputed on lab2), a VE on lab2 running on the copy,
a tampered source tree refused with nothing published and .tmp clean, a template missing on the
source host, and bad addresses. Template names are random; everything made is removed.
"""

from __future__ import annotations

import json
import secrets
import textwrap

from template_helpers import REPO_ROOT, play

KEY = "/var/lib/vzlab/id_ed25519"
SOURCE_ADDRESS = "198.18.0.11"


def _copy_source(**extra):
    return dict({"type": "copy", "host": SOURCE_ADDRESS, "ssh_key": KEY, "host_key_checking": "off",
                 "known_hosts": "/dev/null"}, **extra)


def _py(lab, host, code):
    """Run Python on a lab host with the collection importable; returns stdout."""
    prelude = "import sys, json, os\nsys.path.insert(0, %r)\n" % str(REPO_ROOT / ".build" / "collections")
    return lab.exec(host, str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", prelude + textwrap.dedent(code)).stdout


def _checksum_on(lab, host, name, version):
    """The manifest checksum and a fresh tree checksum of name@version on a lab host."""
    out = _py(lab, host, """
        from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum
        base = '/var/lib/vz/templates/%s/%s'
        manifest = json.load(open(base + '/manifest.json'))
        print(json.dumps([manifest['checksum'], 'sha256:' + tree_checksum(base + '/rootfs')]))
    """ % (name, version))
    return json.loads(out)


def _versions_on(lab, host, name):
    out = _py(lab, host, """
        d = '/var/lib/vz/templates/%s'
        print(json.dumps(sorted(os.listdir(d)) if os.path.isdir(d) else []))
    """ % name)
    return json.loads(out)


def _tmp_copies_on(lab, host):
    out = _py(lab, host, """
        print(json.dumps([e for e in os.listdir('/var/lib/vz/.tmp') if e.startswith('copy-')]))
    """)
    return json.loads(out)


def _publish_child(lab, host, name, parent_ref):
    """A one-file layer template on ``parent_ref``, published on ``host`` like the store does."""
    return _py(lab, host, """
        import time
        from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum
        version = time.strftime('%%Y%%m%%d-%%H%%M%%S', time.gmtime())
        top = '/var/lib/vz/templates/%s'
        os.makedirs(top + '/' + version + '/rootfs/etc')
        os.chmod(top, 0o711)
        with open(top + '/' + version + '/rootfs/etc/app.conf', 'w') as f:
            f.write('app\\n')
        manifest = {'name': %r, 'version': version, 'parent': %r, 'os': 'busybox', 'packages': [],
                    'created': '2026-11-25T00:00:00Z', 'size': 4096,
                    'checksum': 'sha256:' + tree_checksum(top + '/' + version + '/rootfs')}
        json.dump(manifest, open(top + '/' + version + '/manifest.json', 'w'))
        print(version)
    """ % (name, name, parent_ref)).strip()


def test_copy_between_lab_hosts(lab, four_steps, run_playbook):
    base = "cpy-" + secrets.token_hex(3)
    app = base + "+app"
    ve = "c" + secrets.token_hex(3)
    lab1, lab2 = lab.hosts[:2]
    try:
        run = run_playbook(play([{"name": "build", "osvirt.vz.template": {"name": base}}], hosts=lab1),
                           inventory=lab.inventory)
        v1 = run.task("build")["template"]["version"]
        child = _publish_child(lab, lab1, app, "%s@%s" % (base, v1))

        # copying the app template brings its parent along, parent first, same version ids
        result = four_steps({"osvirt.vz.template": {"name": app, "source": _copy_source()}},
                            hosts=lab2, inventory=lab.inventory)
        check, real, again, check_again = result.steps[lab2]
        expected = ["copy %s@%s from %s" % (base, v1, SOURCE_ADDRESS), "copy %s@%s from %s" % (app, child, SOURCE_ADDRESS)]
        assert check["actions"] == expected and real["actions"] == expected, real.result
        assert again["actions"] == [] and check_again["actions"] == []
        assert real["template"]["version"] == child
        assert real["template"]["manifest"]["parent"] == "%s@%s" % (base, v1)
        assert _versions_on(lab, lab2, base) == [v1] and _versions_on(lab, lab2, app) == [child]
        for name, version in ((base, v1), (app, child)):
            source_sums, copy_sums = _checksum_on(lab, lab1, name, version), _checksum_on(lab, lab2, name, version)
            assert source_sums[0] == source_sums[1] == copy_sums[0] == copy_sums[1], (source_sums, copy_sums)
        assert _tmp_copies_on(lab, lab2) == []

        # a VE on lab2 runs on the copy (the app layer over the copied base)
        run = run_playbook(play([{"name": "ve", "osvirt.vz.ve": {"name": ve, "template": app}}], hosts=lab2),
                           inventory=lab.inventory)
        assert run.task("ve")["ve"]["state"] == "running"
        out = lab.exec(lab2, "lxc-attach", "-P", "/var/lib/vz/ves", "-n", ve, "--", "cat", "/etc/app.conf").stdout
        assert out == "app\n"

        # a tampered tree on the source host: refused, nothing published, .tmp clean
        run = run_playbook(play([{"name": "v2", "osvirt.vz.template": {"name": base, "rebuild": True}}], hosts=lab1),
                           inventory=lab.inventory)
        v2 = run.task("v2")["template"]["version"]
        lab.exec(lab1, "sh", "-c", "echo tampered >> /var/lib/vz/templates/%s/%s/rootfs/etc/hosts" % (base, v2))
        run = run_playbook(play([{"name": "copy v2", "osvirt.vz.template": {
            "name": base, "source": _copy_source(version=v2)}}], hosts=lab2), inventory=lab.inventory,
            expect_fail=True)
        msg = run.task("copy v2").msg
        assert "does not match its manifest checksum" in msg and "nothing published" in msg, msg
        assert _versions_on(lab, lab2, base) == [v1]
        assert _tmp_copies_on(lab, lab2) == []

        # the newest on the source is v2 (tampered): without a version the copy is refused as well
        run = run_playbook(play([{"name": "copy newest", "osvirt.vz.template": {
            "name": base, "source": _copy_source()}}], hosts=lab2), inventory=lab.inventory, expect_fail=True)
        assert "does not match its manifest checksum" in run.task("copy newest").msg

        # a version here already needs no connection: an unreachable source does not matter
        run = run_playbook(play([{"name": "have it", "osvirt.vz.template": {
            "name": base, "source": _copy_source(version=v1, host="127.0.0.1", port=1)}}], hosts=lab2),
            inventory=lab.inventory)
        assert not run.task("have it").changed

        # one clear error each: a template the source does not have, bad addresses and users
        tasks = [
            {"name": "missing", "ignore_errors": True, "osvirt.vz.template": {
                "name": base + "-none", "source": _copy_source()}},
            {"name": "bad host", "ignore_errors": True, "osvirt.vz.template": {
                "name": base, "source": _copy_source(host="-oProxyCommand=x", version=None)}},
            {"name": "bad user", "ignore_errors": True, "osvirt.vz.template": {
                "name": base, "source": _copy_source(user="root x", version=None)}},
            {"name": "no host", "ignore_errors": True, "osvirt.vz.template": {
                "name": base, "source": {"type": "copy"}}},
        ]
        run = run_playbook(play(tasks, hosts=lab2), inventory=lab.inventory)
        assert "does not exist on %s" % SOURCE_ADDRESS in run.task("missing").msg, run.task("missing").msg
        assert "invalid source host" in run.task("bad host").msg, run.task("bad host").msg
        assert "invalid remote user" in run.task("bad user").msg, run.task("bad user").msg
        assert "source host is required" in run.task("no host").msg, run.task("no host").msg
        assert _versions_on(lab, lab2, base) == [v1] and _versions_on(lab, lab2, base + "-none") == []
    finally:
        run_playbook(play([
            {"name": "rm ve", "osvirt.vz.ve": {"name": ve, "state": "absent"}},
            {"name": "rm app", "osvirt.vz.template": {"name": app, "state": "absent"}},
            {"name": "rm base", "osvirt.vz.template": {"name": base, "state": "absent"}},
        ], hosts="vz_hosts"), inventory=lab.inventory)
