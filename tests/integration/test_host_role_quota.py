# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""The osvirt.vz.host role's host_vz_filesystem (loop-mounted btrfs with quotas for vz_root).

Runs the role against a vz_root under /var/tmp with a small image, never /var/lib/vz. The role
also does its usual work on the machine (subordinate ids, the bridge vzbr0 with 10.20.0.1/24),
which test_host_role.py covers and which is left as is. The test's line in /etc/fstab and its
mount are removed afterwards, whatever the outcome.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

FSTAB = Path("/etc/fstab")


from vzlib import sh  # noqa: E402


def role_play(vz_root, filesystem):
    return [{"hosts": "localhost", "gather_facts": False, "roles": [{
        "role": "osvirt.vz.host",
        "vars": {"host_vz_root": str(vz_root), "host_vz_filesystem": filesystem,
                 "host_install_packages": False, "host_cgroup_parent": "vzrq",
                 "host_sysctl": False}}]}]   # machine-wide: test_host_role_sysctl.py


def changed_tasks(run):
    return [r.name.split(" : ", 1)[-1] for r in run.results if r.changed]


def fstab_lines(vz_root):
    return [line for line in FSTAB.read_text().splitlines()
            if len(line.split()) > 1 and line.split()[1] == str(vz_root)]


@pytest.fixture
def place():
    """A directory under /var/tmp for vz_root and its image; unmounted, unlisted and removed afterwards."""
    if shutil.which("mkfs.btrfs") is None:
        reason = "needs btrfs-progs: apt-get install btrfs-progs"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="vz-rolequota-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        vz_root = base / "vz"
        if sh("findmnt", "--mountpoint", vz_root, check=False).returncode == 0:
            if sh("umount", vz_root, check=False).returncode != 0:
                sh("umount", "-l", vz_root, check=False)
        text = FSTAB.read_text()
        kept = [line for line in text.splitlines() if not line.startswith(str(base) + "/")]
        if len(kept) != len(text.splitlines()):
            tmp = FSTAB.with_name(".fstab.vz-test")
            tmp.write_text("\n".join(kept) + "\n")
            os.chmod(tmp, 0o644)
            os.rename(tmp, FSTAB)
        shutil.rmtree(base, ignore_errors=True)


def test_loop_filesystem_twice_then_torn_down(place, run_playbook):
    vz_root, image = place / "vz", place / "vz.img"
    filesystem = {"type": "loop", "size": "256M", "image": str(image)}

    # check mode on a fresh place: reports the changes, makes none
    run = run_playbook(role_play(vz_root, filesystem), check=True)
    assert "Create the image (sparse)" in changed_tasks(run)
    assert not image.exists() and fstab_lines(vz_root) == []

    run = run_playbook(role_play(vz_root, filesystem))
    for name in ("Create the image (sparse)", "Format the new image", "Mount the image on vz_root at boot",
                 "Mount the image now", "Enable btrfs quotas on vz_root"):
        assert name in changed_tasks(run), run.report()
    mount = json.loads(sh("findmnt", "-J", "-o", "FSTYPE,SOURCE,UUID", "--mountpoint", vz_root).stdout)
    fs = mount["filesystems"][0]
    assert fs["fstype"] == "btrfs" and fs["source"].startswith("/dev/loop")
    assert Path("/sys/fs/btrfs/%s/qgroups" % fs["uuid"]).is_dir()
    assert fstab_lines(vz_root) == ["%s %s btrfs loop,noatime 0 0" % (image, vz_root)]
    assert image.stat().st_size == 256 << 20 and image.stat().st_mode & 0o777 == 0o600
    # the data root is on the new file system, with the usual layout
    assert (vz_root / "ves").is_dir() and (vz_root / "templates").is_dir()
    assert json.loads((vz_root / "host.json").read_text())["cgroup_parent"] == "vzrq"
    assert sh("findmnt", "-n", "-o", "TARGET", "-T", vz_root / "ves").stdout.strip() == str(vz_root)

    # second run and a check-mode run change nothing
    run = run_playbook(role_play(vz_root, filesystem))
    assert changed_tasks(run) == [], run.report()
    run = run_playbook(role_play(vz_root, filesystem), check=True)
    assert changed_tasks(run) == [], run.report()

    # torn down by hand (umount, fstab line): the next run mounts the same image again, unformatted
    (vz_root / "ves" / "marker").write_text("kept")
    sh("umount", vz_root)
    FSTAB.write_text("\n".join(line for line in FSTAB.read_text().splitlines()
                               if line not in fstab_lines(vz_root)) + "\n")
    run = run_playbook(role_play(vz_root, filesystem))
    assert "Format the new image" not in changed_tasks(run)
    assert (vz_root / "ves" / "marker").read_text() == "kept"


def test_refuses_to_format_or_hide_data(place, run_playbook):
    vz_root, image = place / "vz", place / "vz.img"
    filesystem = {"type": "loop", "size": "256M", "image": str(image)}

    # an image that holds another file system is never formatted
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    sh("mkfs.ext4", "-q", "-F", image)
    run = run_playbook(role_play(vz_root, filesystem), expect_fail=True)
    assert "is not a btrfs image (file system: ext4)" in run.report(), run.report()
    assert "refusing to format it" in run.report()
    assert sh("blkid", "-p", "-o", "value", "-s", "TYPE", image).stdout.strip() == "ext4"
    assert fstab_lines(vz_root) == []
    image.unlink()

    # a vz_root that holds data is not hidden under a mount
    (vz_root / "ves" / "web1").mkdir(parents=True)
    (vz_root / "ves" / "web1" / "ve.json").write_text("{}")
    run = run_playbook(role_play(vz_root, filesystem), expect_fail=True)
    assert "holds data that mounting the image would hide" in run.report(), run.report()
    assert "%s/ves/web1" % vz_root in run.report()
    assert not image.exists() and fstab_lines(vz_root) == []
    assert sh("findmnt", "--mountpoint", vz_root, check=False).returncode != 0


@pytest.mark.parametrize("filesystem, message", [
    ({"type": "loop", "size": "lots"}, "size must be a number"),
    ({"type": "loop", "fstype": "ext4"}, "fstype"),
    ({"type": "tmpfs"}, "host_vz_filesystem"),
])
def test_bad_settings_change_nothing(place, run_playbook, filesystem, message):
    vz_root = place / "vz"
    filesystem = dict(filesystem, image=str(place / "vz.img"))
    run = run_playbook(role_play(vz_root, filesystem), expect_fail=True)
    assert message in run.report(), run.report()
    assert not (place / "vz.img").exists() and not vz_root.exists() and fstab_lines(vz_root) == []
