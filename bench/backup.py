# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What backups (plugins/module_utils/_backup.py, restic) and snapshots (_snapshot.py) cost, side by
side with a full tar.zst of the same VE each time (vzdump's "always full").

Run as root with Debian's python3 and restic installed:

    /usr/bin/python3 bench/backup.py [--sizes 200,1024] [--ves 20] [--json out.json]

No LXC: every VE here is a stopped VE made by hand (config, ve.json, private/upper) on a template
made of a copy of /usr/lib/python3.11 (a real tree of many small files), in throw-away vz_roots
under /var/tmp (a plain one on the machine's ext4, and a btrfs loop image for snapshots). Private
areas are random bytes (no compression helps either side). For each size: the first backup, an
incremental backup of the unchanged VE, one after changing a 1 MB file (and how much the
repository grew), a restore under a new name; each time a full tar.zst (zstd -3, all cores).
Then snapshot create time on btrfs (read-only subvolume snapshot) against a copy (ext4, cp -a),
and 20 VEs of one template (each with 2 MB of its own files and 5 MB of template files it changed
copied up) in one repository against the sum of their private areas plus one template.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".build", "collections"))

# pylint: disable=wrong-import-position
from ansible_collections.osvirt.vz.plugins.module_utils import _quota  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._backup import BackupTask, Restic  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._snapshot import Snapshots  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._templates import tree_checksum  # noqa: E402
from ansible_collections.osvirt.vz.plugins.module_utils._ves import VeManager  # noqa: E402

VERSION = "20260101-000000"
MIB = 1024 * 1024
TEMPLATE_SOURCE = "/usr/lib/python3.11"


class StoppedClient:
    """The LXC client seen by the code under test: every VE is stopped (none is started here)."""

    def state(self, name):
        return {"state": "stopped", "pid": None}

    def list(self):
        return {}


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def make_template(root):
    tpl = os.path.join(root, "templates", "pytpl", VERSION)
    os.makedirs(tpl)
    shutil.copytree(TEMPLATE_SOURCE, os.path.join(tpl, "rootfs", "usr", "lib", "python3.11"), symlinks=True)
    os.makedirs(os.path.join(tpl, "rootfs", "etc"))
    with open(os.path.join(tpl, "rootfs", "etc", "hosts"), "w", encoding="ascii") as handle:
        handle.write("127.0.0.1\tlocalhost\n")
    manifest = {"name": "pytpl", "version": VERSION, "checksum": "sha256:" + tree_checksum(os.path.join(tpl, "rootfs"))}
    with open(os.path.join(tpl, "manifest.json"), "w", encoding="ascii") as handle:
        json.dump(manifest, handle)
    return os.path.join(tpl, "rootfs")


def make_ve(root, name, mib, copy_up_mib=0, rootfs=None):
    ve = os.path.join(root, "ves", name)
    upper = os.path.join(ve, "private", "upper")
    os.makedirs(os.path.join(upper, "srv"))
    os.makedirs(os.path.join(ve, "private", "work"))
    for index in range(mib):
        with open(os.path.join(upper, "srv", "f%04d" % index), "wb") as handle:
            handle.write(os.urandom(MIB))
    if copy_up_mib:   # template files the VE changed the metadata of: copied up unchanged
        done = 0
        for current, _dirs, files in os.walk(rootfs):
            for filename in sorted(files):
                source = os.path.join(current, filename)
                if done >= copy_up_mib * MIB or os.path.islink(source):
                    continue
                dest = os.path.join(upper, os.path.relpath(source, rootfs))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(source, dest)
                done += os.path.getsize(source)
    meta = {"name": name, "template": "pytpl@" + VERSION, "layers": ["pytpl@" + VERSION], "cgroup_parent": "vzbench",
            "network": [], "mounts": [], "privileged": True, "idmap": None, "limits": {}, "hostname": name}
    with open(os.path.join(ve, "ve.json"), "w", encoding="ascii") as handle:
        json.dump(meta, handle)
    with open(os.path.join(ve, "config"), "w", encoding="ascii") as handle:
        handle.write("lxc.uts.name = %s\n" % name)
    return upper


def tar_zst(root, name, out):
    began = time.monotonic()
    tar = subprocess.Popen(["tar", "-C", os.path.join(root, "ves", name), "-cf", "-", "config", "ve.json",
                            "private/upper"], stdout=subprocess.PIPE)
    subprocess.run(["zstd", "-q", "-3", "-T0", "-f", "-o", out], stdin=tar.stdout, check=True)
    tar.stdout.close()
    tar.wait()
    return time.monotonic() - began, os.path.getsize(out)


def timed(func, *args, **kwargs):
    """Seconds ``func(*args, **kwargs)`` took."""
    began = time.monotonic()
    func(*args, **kwargs)
    return time.monotonic() - began


def bench_sizes(base, sizes):
    rows = []
    for mib in sizes:
        root = tempfile.mkdtemp(prefix="vzb-%d-" % mib, dir=base)
        make_template(root)
        make_ve(root, "ve1", mib)
        host = Host(vz_root=root, cgroup_parent="vzbench")
        restic = Restic(os.path.join(root, "repo"), "bench-password")
        task = BackupTask(host, StoppedClient(), restic)
        row = {"private_mib": mib}
        row["first_s"] = timed(task.backup, "ve1", "b1", mode="stop", init=True)
        row["repo_after_first"] = du(restic.repo)
        row["incr_unchanged_s"] = timed(task.backup, "ve1", "b2", mode="stop")
        before = du(restic.repo)
        with open(os.path.join(root, "ves", "ve1", "private", "upper", "srv", "f0000"), "wb") as handle:
            handle.write(os.urandom(MIB))
        row["incr_1mb_s"] = timed(task.backup, "ve1", "b3", mode="stop")
        row["repo_growth_1mb"] = du(restic.repo) - before
        row["restore_s"] = timed(task.restore, "ve1", "ve2", "b3", manager=VeManager(host, StoppedClient()))
        row["repo_after_3"] = du(restic.repo)
        tars = []
        for index in range(3):
            tars.append(tar_zst(root, "ve1", os.path.join(root, "dump-%d.tar.zst" % index)))
        row["tar_s"] = round(sum(t for t, _s in tars) / len(tars), 2)
        row["tar_3_bytes"] = sum(s for _t, s in tars)
        began = time.monotonic()
        restore_dir = os.path.join(root, "untar")
        os.mkdir(restore_dir)
        tar = subprocess.Popen(["zstd", "-q", "-d", "-c", os.path.join(root, "dump-2.tar.zst")], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-C", restore_dir, "-xf", "-"], stdin=tar.stdout, check=True)
        tar.wait()
        row["untar_s"] = time.monotonic() - began
        rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
        shutil.rmtree(root, ignore_errors=True)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_snapshots(base, mib):
    result = {}
    plain = tempfile.mkdtemp(prefix="vzb-snap-", dir=base)
    make_template(plain)
    make_ve(plain, "ve1", mib)
    snaps = Snapshots(Host(vz_root=plain, cgroup_parent="vzbench"), StoppedClient())
    result["copy_ext4_s"] = timed(snaps.create, "ve1", "s1")
    shutil.rmtree(plain, ignore_errors=True)
    image_dir = tempfile.mkdtemp(prefix="vzb-btrfs-", dir=base)
    image, root = os.path.join(image_dir, "img"), os.path.join(image_dir, "vz")
    os.mkdir(root)
    with open(image, "wb") as handle:
        handle.truncate((mib + 600) * MIB)
    subprocess.run(["mkfs.btrfs", "-q", "-f", image], check=True)
    subprocess.run(["mount", "-o", "loop", image, root], check=True)
    try:
        subprocess.run(["btrfs", "quota", "enable", root], check=True)
        make_template(root)
        host = Host(vz_root=root, cgroup_parent="vzbench")
        # the private area a VE gets on btrfs: a subvolume
        os.makedirs(os.path.join(root, "ves", "ve1"))
        _quota.make_private_area(host, os.path.join(root, "ves", "ve1", "private"))
        make_ve(root, "ve1", mib)
        subprocess.run(["sync"], check=True)
        host.ensure_layout()
        snaps = Snapshots(host, StoppedClient())
        times = []
        for index in range(5):
            times.append(timed(snaps.take, "ve1", "s%d" % index,
                               os.path.join(root, "ves", "ve1", "snapshots", "s%d" % index)))
        result["btrfs_s_median_of_5"] = sorted(times)[2]
    finally:
        subprocess.run(["umount", root], check=False)
        shutil.rmtree(image_dir, ignore_errors=True)
    result["private_mib"] = mib
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}


def bench_many(base, count):
    root = tempfile.mkdtemp(prefix="vzb-many-", dir=base)
    rootfs = make_template(root)
    for index in range(count):
        make_ve(root, "ve%02d" % index, 2, copy_up_mib=5, rootfs=rootfs)
    host = Host(vz_root=root, cgroup_parent="vzbench")
    restic = Restic(os.path.join(root, "repo"), "bench-password")
    task = BackupTask(host, StoppedClient(), restic)
    began = time.monotonic()
    for index in range(count):
        task.backup("ve%02d" % index, "b1", mode="stop", init=index == 0)
    seconds = time.monotonic() - began
    template = du(os.path.dirname(rootfs))
    one = du(os.path.join(root, "ves", "ve00"))
    privates = sum(du(os.path.join(root, "ves", "ve%02d" % i)) for i in range(count))
    repo = du(restic.repo)
    tars = 0
    for index in range(count):
        tars += tar_zst(root, "ve%02d" % index, os.path.join(root, "dump.tar.zst"))[1]
    result = {"ves": count, "template_bytes": template, "one_ve_bytes": one, "sum_private_bytes": privates,
              "repo_bytes": repo, "repo_vs_one_ve_plus_template": round(repo / (one + template), 2),
              "repo_vs_sum_plus_template": round(repo / (privates + template), 3),
              "tar_zst_of_each_ve_bytes": tars, "backup_all_s": round(seconds, 1)}
    shutil.rmtree(root, ignore_errors=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="200,1024", help="private area sizes in MiB")
    parser.add_argument("--ves", type=int, default=20)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="vz-bench-backup-", dir="/var/tmp")
    try:
        figures = {"restic": subprocess.run(["restic", "version"], capture_output=True, text=True,
                                            check=True).stdout.strip(),
                   "kernel": os.uname().release, "cpus": os.cpu_count()}
        figures["sizes"] = bench_sizes(base, [int(s) for s in args.sizes.split(",")])
        figures["snapshot"] = bench_snapshots(base, 200)
        print(json.dumps(figures["snapshot"]), flush=True)
        figures["many"] = bench_many(base, args.ves)
        print(json.dumps(figures["many"]), flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
