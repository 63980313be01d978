# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests of the template builders of osvirt.vz.template: debootstrap, tarball,
ve and layer sources, on real debootstrap from the Debian mirror this machine reaches, real
LXC and real overlayfs, in throw-away vz_roots.

debian-12 is built once per module (into its own vz_root). Downloaded packages are kept in
/var/cache/osvirt-vz/debootstrap/bookworm-<arch> (debootstrap --cache-dir), outside the repo, so a
machine that ran the tests before builds without downloading; a clean machine downloads them.
VE addresses: 10.20.0.120-159 only. Every VE name carries a random prefix and every store its
own cgroup parent.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import platform
import secrets
import stat
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from template_helpers import kill_all, remove_cgroups, sh

DEB_CACHE = "/var/cache/osvirt-vz/debootstrap/bookworm-%s" % {"x86_64": "amd64", "aarch64": "arm64"}.get(
    platform.machine(), platform.machine())
DEBIAN = {"type": "debootstrap", "suite": "bookworm", "cache_dir": DEB_CACHE, "packages": ["openssh-server"]}
GATEWAY = "10.20.0.1"


from vzlib import play as _play  # noqa: E402  pylint: disable=wrong-import-position


class Store:
    """A vz_root with its own cgroup parent (host.json) and VE name prefix."""

    def __init__(self, root: Path):
        self.root = root
        self.parent = "vzt-" + secrets.token_hex(3)
        self.prefix = "b" + secrets.token_hex(2)
        os.chmod(root, 0o711)
        (root / "host.json").write_text(json.dumps({"cgroup_parent": self.parent, "bridge": "vzbr0"}))

    @property
    def ves(self) -> Path:
        return self.root / "ves"

    def name(self, short):
        return "%s-%s" % (self.prefix, short)

    def template(self, name, source, **options):
        return {"osvirt.vz.template": dict({"name": name, "vz_root": str(self.root), "source": source}, **options)}

    def ve(self, name, template, address=None, state="started"):
        options = {"name": name, "template": template, "state": state, "vz_root": str(self.root)}
        if address:
            options["network"] = [{"name": "eth0", "ipv4": ["%s/24" % address], "gateway4": GATEWAY}]
        return {"osvirt.vz.ve": options}

    def versions(self, name):
        directory = self.root / "templates" / name
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def manifest(self, name, version):
        return json.loads((self.root / "templates" / name / version / "manifest.json").read_text())

    def rootfs(self, name, version):
        return self.root / "templates" / name / version / "rootfs"

    def tmp_entries(self):
        tmp = self.root / ".tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []

    def lxc_names(self):
        if not self.ves.is_dir():
            return []
        return sh("lxc-ls", "-1", "-P", str(self.ves), check=False).stdout.split()

    def attach(self, name, *argv, check=True):
        return sh("lxc-attach", "-P", str(self.ves), "-n", name, "--clear-env", "--", *argv, check=check)

    def release(self):
        kill_all(self.ves)
        remove_cgroups(self.parent)


def _new_store(prefix="vz-test-build-"):
    return Store(Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")))


def _drop_store(store):
    store.release()
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle if line.split()[4].startswith(str(store.root))]
    for mount in sorted(mounts, key=len, reverse=True):
        sh("umount", "-l", mount, check=False)
    sh("rm", "-rf", "--one-file-system", str(store.root), check=False)


@pytest.fixture
def store():
    s = _new_store()
    try:
        yield s
    finally:
        _drop_store(s)


@pytest.fixture(scope="module")
def deb_store():
    """The module's store for everything on debian-12 (built once, by whichever test asks first)."""
    s = _new_store("vz-test-deb-")
    try:
        yield s
    finally:
        _drop_store(s)


@pytest.fixture
def debian12(deb_store, run_playbook):
    """debian-12 in deb_store: its version (built here when no earlier test built it)."""
    if not deb_store.versions("debian-12"):
        run_playbook(_play([dict(deb_store.template("debian-12", DEBIAN), name="debian-12")]), timeout=1800)
    return deb_store.versions("debian-12")[-1]


@pytest.fixture
def busybox(store, run_playbook):
    run_playbook(_play([dict(store.template("busybox", {"type": "busybox"}), name="busybox")]))
    return store.versions("busybox")[-1]


def _wait_running(store, name, timeout=60):
    """Poll systemctl is-system-running until it settles (running/degraded) or ``timeout`` passes."""
    deadline, state = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        state = store.attach(name, "systemctl", "is-system-running", check=False).stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(1)
    return state


def _assert_nothing_published(store, name):
    assert store.versions(name) == [], store.versions(name)
    assert store.tmp_entries() == [], store.tmp_entries()
    assert [n for n in store.lxc_names() if n.startswith("tbuild-")] == []


# ------------------------------------------------------------------------------- debootstrap


def test_debootstrap_debian12_four_steps(deb_store, four_steps):
    """debian-12 from the mirror: check mode predicts the build, it happens once, then nothing."""
    if deb_store.versions("debian-12"):
        pytest.skip("debian-12 was already built in this module by another test")
    result = four_steps(deb_store.template("debian-12", DEBIAN))
    check, real, again, check_again = result.steps["localhost"]
    version = real["template"]["version"]
    assert real["actions"] == ["build debian-12@%s" % version]
    assert check["actions"][0].startswith("build debian-12@")
    assert again["actions"] == [] and check_again["actions"] == []
    assert deb_store.versions("debian-12") == [version]
    manifest = deb_store.manifest("debian-12", version)
    assert manifest == real["template"]["manifest"]
    assert manifest["os"] == "debian" and manifest["release"] == "12" and manifest["parent"] is None
    assert manifest["init"]["halt_signal"] == "SIGRTMIN+3"
    names = {p["name"]: p["version"] for p in manifest["packages"]}
    for package in ("systemd", "systemd-sysv", "iproute2", "ifupdown", "python3", "ca-certificates"):
        assert names.get(package), "%s missing from %s" % (package, sorted(names))
    rootfs = deb_store.rootfs("debian-12", version)
    assert not (rootfs / "etc/hostname").exists()          # the VE's name, not the build host's
    assert (rootfs / "etc/machine-id").read_text() == ""   # each VE makes its own
    assert not list((rootfs / "var/cache/apt/archives").glob("*.deb"))
    assert os.listdir(rootfs / "dev") == []
    assert "openssh-server" in names and not list((rootfs / "etc/ssh").glob("ssh_host_*"))  # keys are per VE
    assert deb_store.tmp_entries() == []
    assert any(Path(DEB_CACHE).glob("*.deb")), "debootstrap kept no packages in %s" % DEB_CACHE


def test_debian12_ve_boots_to_running(deb_store, debian12, run_playbook):
    """An unprivileged VE on debian-12: systemd reaches 'running' with no failed unit; python3 works."""
    name = deb_store.name("sys")
    task = deb_store.ve(name, "debian-12", "10.20.0.120")
    task["osvirt.vz.ve"].update(wait_for="running", wait_timeout=120)
    run = run_playbook(_play([dict(task, name="ve")]))     # fails unless systemd says running in time
    try:
        boot = run.task("ve")["ve"]["boot"]
        assert boot["method"] == "systemctl" and boot["state"] == "running" and boot["failed_units"] == [], boot
        state = _wait_running(deb_store, name)
        failed = deb_store.attach(name, "systemctl", "--failed", "--no-legend", "--plain", check=False).stdout
        assert state == "running", "is-system-running: %s; failed units:\n%s" % (state, failed)
        assert failed.strip() == ""
        assert deb_store.attach(name, "python3", "-c", "print(6 * 7)").stdout.strip() == "42"
        assert deb_store.attach(name, "hostname").stdout.strip() == name
        assert len(deb_store.attach(name, "cat", "/etc/machine-id").stdout.strip()) == 32
        assert "10.20.0.120/24" in deb_store.attach(name, "ip", "-4", "addr", "show", "eth0").stdout
        assert deb_store.attach(name, "systemctl", "is-active", "ssh").stdout.strip() == "active"
        assert deb_store.attach(name, "test", "-s", "/etc/ssh/ssh_host_ed25519_key").returncode == 0
        # the journal directory's ACL (group adm) names the VE's gid 4, so tmpfiles can set it again
        journal = deb_store.attach(name, "journalctl", "-b", "-o", "cat", "--no-pager", check=False).stdout
        assert "Setting access ACL" not in journal and "Setting default ACL" not in journal, \
            [line for line in journal.splitlines() if "ACL" in line]
        base = int(sh("awk", "-F:", '$1 == "root" {print $2; exit}', "/etc/subuid").stdout)
        copy = deb_store.root / "templates" / "debian-12" / debian12 / "idmap" / ("%d-%d-65536-f2" % (base, base))
        acl = _acl(copy / "rootfs" / "var/log/journal")
        assert "group:4:" not in " ".join(acl) and "group:%d:r-x" % (base + 4) in acl, acl
        # a clean stop through systemd (SIGRTMIN+3) works: --nokill fails instead of killing
        sh("lxc-stop", "-P", str(deb_store.ves), "-n", name, "--nokill", "--timeout", "120")
    finally:
        run_playbook(_play([dict(deb_store.ve(name, "debian-12", state="absent"), name="rm")]))


@pytest.mark.parametrize("source,words", [
    (dict(DEBIAN, mirror="http://127.0.0.1:9/debian"), "debootstrap of suite bookworm from http://127.0.0.1:9/debian"),
    (dict(DEBIAN, suite="nosuchsuite"), "debootstrap of suite nosuchsuite"),
])
def test_debootstrap_errors_publish_nothing(store, run_playbook, source, words):
    run = run_playbook(_play([dict(store.template("deb", source), name="build")]), expect_fail=True)
    res = run.task("build")
    assert res.failed and words in res.msg, res.msg
    _assert_nothing_published(store, "deb")


# ------------------------------------------------------------------------------------ layer


def test_layer_with_package_file_and_command(deb_store, debian12, four_steps, run_playbook, tmp_path):
    """hello from Debian + a file + commands, as a layer on debian-12; a VE stacks both."""
    motd = tmp_path / "motd"
    motd.write_text("from the layer\n")
    source = {"type": "layer", "base": "debian-12", "packages": ["hello"],
              "files": [{"src": str(motd), "dest": "/etc/layer-motd", "mode": "0600"}],
              "commands": [["sh", "-c", "echo built > /etc/built-by-command"],
                           ["rm", "-rf", "/usr/share/doc/apt"]]}
    result = four_steps(deb_store.template("debian-12+hello", source))
    real = result.steps["localhost"][1]
    version = real["template"]["version"]
    manifest = deb_store.manifest("debian-12+hello", version)
    assert manifest["parent"] == "debian-12@%s" % debian12
    assert manifest["parents"] == ["debian-12@%s" % debian12]          # the whole chain, nearest first
    assert manifest["os"] == "debian" and manifest["init"]["halt_signal"] == "SIGRTMIN+3"
    assert {"name": "hello", "version": next(p["version"] for p in manifest["packages"] if p["name"] == "hello")} \
        in manifest["packages"]
    base_size = deb_store.manifest("debian-12", debian12)["size"]
    assert manifest["size"] < base_size / 20, (manifest["size"], base_size)   # only the difference
    layer = deb_store.rootfs("debian-12+hello", version)
    assert (layer / "usr/bin/hello").is_file() and not (layer / "usr/bin/bash").exists()
    whiteout = os.lstat(layer / "usr/share/doc/apt")       # an overlay whiteout, owned by host root
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0 and whiteout.st_uid == 0
    assert not list(deb_store.ves.glob("tbuild-*")) and deb_store.tmp_entries() == []
    # a VE on the app template sees base + layer, without the removed file
    name = deb_store.name("app")
    run_playbook(_play([dict(deb_store.ve(name, "debian-12+hello", "10.20.0.121"), name="ve")]))
    try:
        assert deb_store.attach(name, "hello").stdout.strip() == "Hello, world!"
        assert deb_store.attach(name, "cat", "/etc/layer-motd").stdout == "from the layer\n"
        assert deb_store.attach(name, "stat", "-c", "%a %U", "/etc/layer-motd").stdout.split() == ["600", "root"]
        assert deb_store.attach(name, "cat", "/etc/built-by-command").stdout.strip() == "built"
        assert deb_store.attach(name, "test", "-e", "/usr/share/doc/apt", check=False).returncode == 1
        assert deb_store.attach(name, "test", "-d", "/usr/share/doc/bash").returncode == 0
        assert _wait_running(deb_store, name) == "running"
    finally:
        run_playbook(_play([dict(deb_store.ve(name, "debian-12+hello", state="absent"), name="rm")]))


def test_layer_failing_command_publishes_nothing(store, busybox, run_playbook):
    commands = [["touch", "/made"], ["sh", "-c", "echo doomed-step >&2; exit 3"]]
    source = {"type": "layer", "base": "busybox", "commands": commands}
    run = run_playbook(_play([dict(store.template("bb-app", source), name="build")]), expect_fail=True)
    msg = run.task("build").msg
    assert "command ['sh', '-c', 'echo doomed-step >&2; exit 3'] failed with rc=3" in msg, msg
    assert "doomed-step" in msg
    _assert_nothing_published(store, "bb-app")
    assert [p.name for p in store.ves.iterdir()] == []   # the build VE is gone


def test_layer_on_busybox_stacks(store, busybox, run_playbook):
    """A layer needs no apt: a busybox base with a command; a VE on it sees the change."""
    commands = [["sh", "-c", "echo hi > /etc/app"], ["rm", "/etc/os-release"]]
    source = {"type": "layer", "base": "busybox@%s" % busybox, "commands": commands}
    run_playbook(_play([dict(store.template("bb-app", source), name="build")]))
    version = store.versions("bb-app")[-1]
    assert store.manifest("bb-app", version)["parent"] == "busybox@%s" % busybox
    name = store.name("app")
    run_playbook(_play([dict(store.ve(name, "bb-app"), name="ve")]))
    assert store.attach(name, "cat", "/etc/app").stdout.strip() == "hi"
    assert store.attach(name, "test", "-e", "/etc/os-release", check=False).returncode == 1


def test_layer_with_an_invalid_base_version(store, busybox, run_playbook):
    source = {"type": "layer", "base": "busybox@2026-11-25", "commands": [["true"]]}
    run = run_playbook(_play([dict(store.template("bb-app", source), name="build")]), expect_fail=True)
    assert "invalid template version '2026-11-25'" in run.task("build").msg
    _assert_nothing_published(store, "bb-app")
    # a base that does not exist is found in check mode already
    source = {"type": "layer", "base": "nosuch", "commands": [["true"]]}
    run = run_playbook(_play([dict(store.template("bb-app", source), name="check", check_mode=True)]),
                       expect_fail=True)
    assert "template nosuch does not exist on this host" in run.task("check").msg
    _assert_nothing_published(store, "bb-app")


# --------------------------------------------------------------------------------------- ve


def test_template_from_a_ve(store, busybox, four_steps, run_playbook):
    """A VE with a file written, a file deleted and a directory replaced becomes a flat template."""
    name = store.name("src")
    run_playbook(_play([dict(store.ve(name, "busybox"), name="ve")]))
    store.attach(name, "sh", "-c", "echo mine > /root/written; rm /etc/os-release; rm -rf /home; "
                 "mkdir -p /home/new && touch /home/new/file")
    # running: refused, nothing published
    run = run_playbook(_play([dict(store.template("golden", {"type": "ve", "ve": name}), name="t")]),
                       expect_fail=True)
    assert "VE %s is running: stop it" % name in run.task("t").msg
    _assert_nothing_published(store, "golden")
    run_playbook(_play([dict(store.ve(name, "busybox", state="stopped"), name="stop")]))
    result = four_steps(store.template("golden", {"type": "ve", "ve": name}))
    version = result.steps["localhost"][1]["template"]["version"]
    manifest = store.manifest("golden", version)
    assert manifest["parent"] is None and manifest["derived_from"]["ve"] == name
    rootfs = store.rootfs("golden", version)
    assert (rootfs / "root/written").read_text() == "mine\n"
    assert not os.path.lexists(rootfs / "etc/os-release")
    assert (rootfs / "home/new/file").is_file() and (rootfs / "bin/busybox").is_file()
    owners = {(os.lstat(os.path.join(d, f)).st_uid, os.lstat(os.path.join(d, f)).st_gid)
              for d, dirs, files in os.walk(rootfs) for f in dirs + files}
    assert owners == {(0, 0)}, owners                      # host ids, no mapped ones
    devices = [os.path.join(d, f) for d, _dirs, files in os.walk(rootfs) for f in files
               if stat.S_ISCHR(os.lstat(os.path.join(d, f)).st_mode)]
    assert devices == []                                   # whiteouts applied, not copied
    copy = store.name("copy")
    run_playbook(_play([dict(store.ve(copy, "golden"), name="copy")]))
    assert store.attach(copy, "cat", "/root/written").stdout == "mine\n"
    # the source's identity stays behind: the copy says its own name (issue 13)
    assert not os.path.lexists(rootfs / "etc/hostname") and name not in (rootfs / "etc/hosts").read_text()
    assert store.attach(copy, "cat", "/etc/hostname").stdout == copy + "\n"
    assert store.attach(copy, "ls", "/home").stdout.split() == ["new"]


def _acl(path):
    """getfacl -n of ``path`` without the comment lines: its access and default entries."""
    return [line for line in sh("getfacl", "-n", "-p", path).stdout.splitlines() if line and not line.startswith("#")]


def _idmap_key(store, template, version):
    copies = sorted(p.name for p in (store.root / "templates" / template / version / "idmap").iterdir())
    assert len(copies) == 1, copies
    return copies[0]


def test_every_id_moves_between_host_and_ve_ids(store, busybox, run_playbook):
    """Owners, named users and groups of access and default ACLs, v3 capability root ids and
    setuid/setgid bits cross both ways: out of a VE into a template, into the next VE's copy."""
    base = int(sh("awk", "-F:", '$1 == "root" {print $2; exit}', "/etc/subuid").stdout)
    src = store.name("ids")
    run_playbook(_play([dict(store.ve(src, "busybox", state="stopped"), name="ve")]))
    srv = store.ves / src / "private" / "upper" / "srv"
    srv.mkdir()
    (srv / "acl").write_text("acl\n")
    os.link(srv / "acl", srv / "acl-link")          # one inode, two names: shifted once
    (srv / "dir").mkdir()
    sh("cp", "/bin/busybox", srv / "cap")
    (srv / "suid").write_text("#!/bin/sh\n")
    (srv / "sgid").write_text("#!/bin/sh\n")
    for path in srv.iterdir():
        os.lchown(path, base, base)
    os.lchown(srv, base, base)
    os.lchown(srv / "sgid", base + 1000, base + 4)
    os.chmod(srv / "suid", 0o4755)
    os.chmod(srv / "sgid", 0o2755)
    sh("setfacl", "-m", "u:%d:rw,g:%d:r" % (base + 1000, base + 4), srv / "acl")
    sh("setfacl", "-m", "u:%d:rwx" % (base + 1000), "-d", "-m", "g:%d:rx" % (base + 4), srv / "dir")
    sh("setcap", "-n", str(base), "cap_net_raw+ep", srv / "cap")
    assert "[rootid=%d]" % base in sh("getcap", "-n", srv / "cap").stdout

    run_playbook(_play([dict(store.template("golden", {"type": "ve", "ve": src}), name="t")]))
    version = store.versions("golden")[-1]
    out = store.rootfs("golden", version) / "srv"
    assert "user:1000:rw-" in _acl(out / "acl") and "group:4:r--" in _acl(out / "acl")
    assert _acl(out / "acl-link") == _acl(out / "acl")
    assert {"user:1000:rwx", "default:group:4:r-x"} <= set(_acl(out / "dir"))
    caps = sh("getcap", "-n", out / "cap").stdout
    assert "cap_net_raw=ep" in caps and "rootid" not in caps        # v2, as a host tree keeps it
    assert stat.S_IMODE(os.lstat(out / "suid").st_mode) == 0o4755
    assert (os.lstat(out / "sgid").st_uid, os.lstat(out / "sgid").st_gid) == (1000, 4)
    assert stat.S_IMODE(os.lstat(out / "sgid").st_mode) == 0o2755

    copy = store.name("copy")
    run_playbook(_play([dict(store.ve(copy, "golden", state="stopped"), name="copy")]))
    key = _idmap_key(store, "golden", version)
    assert key == "%d-%d-65536-f2" % (base, base)
    shifted = store.root / "templates" / "golden" / version / "idmap" / key / "rootfs" / "srv"
    acl = _acl(shifted / "acl")
    assert "user:%d:rw-" % (base + 1000) in acl and "group:%d:r--" % (base + 4) in acl, acl
    assert _acl(shifted / "acl-link") == acl
    assert {"user:%d:rwx" % (base + 1000), "default:group:%d:r-x" % (base + 4)} <= set(_acl(shifted / "dir"))
    assert "[rootid=%d]" % base in sh("getcap", "-n", shifted / "cap").stdout
    assert stat.S_IMODE(os.lstat(shifted / "suid").st_mode) == 0o4755
    assert (os.lstat(shifted / "sgid").st_uid, os.lstat(shifted / "sgid").st_gid) == (base + 1000, base + 4)
    assert stat.S_IMODE(os.lstat(shifted / "sgid").st_mode) == 0o2755
    # inside the VE the ACL names its own ids, not unmapped ones (busybox has no getfacl: read the
    # xattr through the VE's user namespace, where the kernel maps the ids)
    run_playbook(_play([dict(store.ve(copy, "golden"), name="start")]))
    inside = store.attach(copy, "busybox", "stat", "-c", "%u:%g", "/srv/sgid").stdout.strip()
    assert inside == "1000:4"


def test_a_copy_of_an_older_shift_format_is_made_again(store, busybox, run_playbook):
    """A VE configured on a copy an older release shifted (no format in its path) moves to a new
    copy: its next run reports a change and points the VE at the new path."""
    name = store.name("old")
    run_playbook(_play([dict(store.ve(name, "busybox", state="stopped"), name="ve")]))
    idmap = store.root / "templates" / "busybox" / busybox / "idmap"
    key = _idmap_key(store, "busybox", busybox)
    legacy = key.rsplit("-f", 1)[0]
    os.rename(idmap / key, idmap / legacy)
    config = store.ves / name / "config"
    config.write_text(config.read_text().replace("/%s/rootfs" % key, "/%s/rootfs" % legacy))
    run = run_playbook(_play([dict(store.ve(name, "busybox", state="stopped"), name="again")]))
    assert run.task("again").changed
    assert "/%s/rootfs:" % key in config.read_text()
    assert (idmap / key / "rootfs" / "bin" / "busybox").is_file()
    again = run_playbook(_play([dict(store.ve(name, "busybox", state="stopped"), name="third")]))
    assert not again.task("third").changed


# ---------------------------------------------------------------------------------- tarball


def _make_tarball(path, busybox_rootfs, extra=()):
    """A tarball of the busybox tree plus ``extra`` TarInfo members; returns its sha256."""
    with tarfile.open(path, "w:gz") as archive:
        archive.add(str(busybox_rootfs), arcname=".")
        for info, data in extra:
            archive.addfile(info, data)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_tarball_four_steps_and_boot(store, busybox, four_steps, run_playbook, tmp_path):
    tarball = tmp_path / "rootfs.tar.gz"
    sha = _make_tarball(tarball, store.rootfs("busybox", busybox))
    result = four_steps(store.template("fromtar", {"type": "tarball", "url": "file://%s" % tarball, "sha256": sha}))
    version = result.steps["localhost"][1]["template"]["version"]
    manifest = store.manifest("fromtar", version)
    assert manifest["sha256"] == sha and manifest["os"] == "busybox"
    assert manifest["init"]["halt_signal"] == "SIGUSR1"
    name = store.name("tar")
    run_playbook(_play([dict(store.ve(name, "fromtar"), name="ve")]))
    assert store.attach(name, "cat", "/etc/os-release").stdout.startswith("NAME=")


def _member(name, kind, target=None):
    info = tarfile.TarInfo(name)
    if kind == "sym":
        info.type, info.linkname = tarfile.SYMTYPE, target
    elif kind == "chr":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "file":
        info.size = 5
        return info, io.BytesIO(b"pwned")
    return info, None


@pytest.mark.parametrize("extra,words", [
    ([_member("../escape", "file")], "member '../escape' contains \"..\""),
    ([_member("etc2", "sym", "/etc"), _member("etc2/cron.d/evil", "file")],
     "member 'etc2/cron.d/evil' lies under the symbolic link 'etc2'"),
    ([_member("bin/evil", "sym", "../../../../etc/shadow")], "leads outside the root file system"),
    ([_member("dev/null", "chr")], "member 'dev/null' is a device node (character 1:3)"),
    (None, "has sha256"),
])
def test_bad_tarballs_publish_nothing(store, busybox, run_playbook, tmp_path, extra, words):
    tarball = tmp_path / "bad.tar.gz"
    sha = _make_tarball(tarball, store.rootfs("busybox", busybox), extra or ())
    if extra is None:
        sha = "0" * 64                                    # checksum mismatch
    run = run_playbook(_play([dict(store.template("badtar", {"type": "tarball", "url": str(tarball),
                                                             "sha256": sha}), name="t")]), expect_fail=True)
    assert words in run.task("t").msg, run.task("t").msg
    _assert_nothing_published(store, "badtar")


# ------------------------------------------------------------------------ full disk, locking


def test_disk_full_during_a_build(run_playbook, tmp_path):
    """A 1 MB vz_root: the busybox binary does not fit; no version, .tmp cleaned, one clear error."""
    root = tmp_path / "small"
    root.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m,mode=0711", "vzsmall", str(root))
    try:
        small = Store(root)
        run = run_playbook(_play([dict(small.template("busybox", {"type": "busybox"}), name="t")]),
                           expect_fail=True)
        assert "No space left on device" in run.task("t").msg, run.task("t").msg
        _assert_nothing_published(small, "busybox")
    finally:
        sh("umount", "-l", str(root), check=False)


def test_two_builds_at_once_are_serialized(store, harness_runner):
    """Two tasks build the same template at the same moment: the lock lets one build, the other
    waits and then finds the version (no second version)."""
    lock = store.root / "locks" / "template-busybox.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    results = []

    def build(tag):
        results.append(harness_runner(tag)(_play([dict(store.template("busybox", {"type": "busybox"}), name="t")])))

    threads = [threading.Thread(target=build, args=(t,)) for t in ("one", "two")]
    for thread in threads:
        thread.start()
    time.sleep(3)                      # both are now waiting for the template lock
    assert store.versions("busybox") == []
    os.close(held)
    for thread in threads:
        thread.join(300)
    changed = sorted(r.task("t").changed for r in results)
    assert changed == [False, True], [r.report() for r in results]
    assert len(store.versions("busybox")) == 1 and store.tmp_entries() == []


@pytest.fixture
def harness_runner(harness, localhost, tmp_path):

    def make(tag):
        directory = tmp_path / tag
        directory.mkdir()
        return harness.PlaybookRunner(directory, localhost)
    return make


def test_unknown_source_type_is_one_clear_error(store, run_playbook):
    run = run_playbook(_play([dict(store.template("x", {"type": "docker"}), name="t")]), expect_fail=True)
    assert "value of type must be one of" in run.task("t").msg
    _assert_nothing_published(store, "x")
