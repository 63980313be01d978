# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the rebase, template_info, copy and patch-once tests (not a test module).

``Store``: one test's vz_root with its own cgroup parent and VE name prefix, and shortcuts to
run tasks, read a VE's files and look inside it. ``publish_variant`` makes a new version of a
template whose files differ from an existing one, as a package upgrade would: it copies the
published tree, applies the changes and writes a manifest with a freshly computed checksum,
exactly as the template store publishes (build in .tmp, then rename).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / ".build" / "collections"))

from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum  # noqa: E402


from vzlib import kill_all, play, remove_cgroups, sh  # noqa: E402,F401  pylint: disable=unused-import


def next_version(existing):
    """A version id later than every one in ``existing`` (and than now)."""
    stamp = time.time()
    while True:
        version = time.strftime("%Y%m%d-%H%M%S", time.gmtime(stamp))
        if all(version > v for v in existing):
            return version
        stamp += 1


def publish_variant(vz_root, name, base_version, write=None, remove=(), version=None):
    """Publish a new version of template ``name``: ``base_version``'s tree with ``write``
    ({relative path: text}) written and ``remove`` (relative paths) deleted. Returns the version."""
    templates = Path(vz_root) / "templates" / name
    version = version or next_version([p.name for p in templates.iterdir()])
    staging = Path(tempfile.mkdtemp(prefix="variant-", dir=str(Path(vz_root) / ".tmp")))
    os.chmod(staging, 0o711)
    sh("cp", "-a", templates / base_version / "rootfs", staging / "rootfs")
    for rel, text in (write or {}).items():
        path = staging / "rootfs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
    for rel in remove:
        target = staging / "rootfs" / rel
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    manifest = json.loads((templates / base_version / "manifest.json").read_text())
    manifest.update(version=version, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    checksum="sha256:" + tree_checksum(str(staging / "rootfs")))
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.rename(staging, templates / version)
    return version


@dataclass
class Store:
    """One test's VE store: vz_root, its own cgroup parent and a VE name prefix."""

    root: Path
    parent: str
    prefix: str
    run: object

    @property
    def ves(self) -> Path:
        return self.root / "ves"

    def name(self, short):
        return "%s-%s" % (self.prefix, short)

    def opts(self, **options):
        return dict({"vz_root": str(self.root), "cgroup_parent": self.parent}, **options)

    def ve_task(self, title, **options):
        return {"name": title, "osvirt.vz.ve": self.opts(**options)}

    def template_task(self, title, **options):
        return {"name": title, "osvirt.vz.template": dict({"vz_root": str(self.root)}, **options)}

    def build(self, name="busybox", rebuild=False):
        """Build (or rebuild) the busybox template here; returns the newest version."""
        res = self.run(play([self.template_task("build", name=name, rebuild=rebuild)])).task("build")
        return res["template"]["version"]

    def versions(self, name="busybox"):
        directory = self.root / "templates" / name
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def meta(self, ve):
        return json.loads((self.ves / ve / "ve.json").read_text())

    def config(self, ve):
        return (self.ves / ve / "config").read_text()

    def rootfs_line(self, ve):
        return [line for line in self.config(ve).splitlines() if line.startswith("lxc.rootfs.path")][0]

    def upper(self, ve) -> Path:
        return self.ves / ve / "private" / "upper"

    def lxc_state(self, ve):
        proc = sh("lxc-info", "-P", self.ves, "-n", ve, "-sH", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else "ABSENT"

    def pid(self, ve):
        out = sh("lxc-info", "-P", self.ves, "-n", ve, "-pH", check=False).stdout.strip()
        return int(out) if out.isdigit() else None

    def attach(self, ve, *argv, check=True):
        return sh("lxc-attach", "-P", self.ves, "-n", ve, "--", *argv, check=check)

    def tmp_entries(self):
        tmp = self.root / ".tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def make_store(vz_root, run_playbook):
    """A Store in the test's vz_root (made traversable for unprivileged VEs, as the host role does)."""
    os.chmod(vz_root, 0o711)
    return Store(root=Path(vz_root), parent="vzt-" + secrets.token_hex(3), prefix="r" + secrets.token_hex(2),
                 run=run_playbook)


def release_store(store):
    kill_all(store.ves)
    remove_cgroups(store.parent)


@pytest.fixture
def store(vz_root, run_playbook):
    """A throw-away template store for one test (import it into the test module to use it)."""
    s = make_store(vz_root, run_playbook)
    try:
        yield s
    finally:
        release_store(s)
