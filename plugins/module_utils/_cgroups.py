# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cgroup tree of the host as VEs see it: layout per controller, a VE's cgroup paths.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Hosts come as cgroup v1 (one hierarchy per controller), v2 (one unified tree) or hybrid (v1
controllers plus a cgroup2 mount). ``CgroupTree`` reads /proc/self/mountinfo once and answers, per
controller, where its files are and which version applies.
"""

from __future__ import annotations

import errno
import os
import time

CGROUP_ROOT = '/sys/fs/cgroup'
# cgroup v2 controllers that VE limits use, enabled down to the VE parent
VE_CONTROLLERS = ('cpu', 'cpuset', 'io', 'memory', 'pids')


class CgroupTree:
    """Where each controller lives on this host."""

    def __init__(self, mountinfo='/proc/self/mountinfo'):
        self.v1 = {}         # controller -> mount point
        self.named = {}      # name of a v1 hierarchy without controllers (name=systemd) -> mount point
        self.v2 = None       # mount point of the unified tree
        self.v2_controllers = set()
        self._read(mountinfo)

    def _read(self, mountinfo):
        try:
            with open(mountinfo, 'r', encoding='utf-8') as handle:
                lines = handle.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            left, _sep, right = line.partition(' - ')
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3:
                continue
            mount_point, fstype, options = fields[4], rfields[0], rfields[2]
            if fstype == 'cgroup2':
                if self.v2 is None or mount_point == CGROUP_ROOT:
                    self.v2 = mount_point
            elif fstype == 'cgroup':
                for opt in options.split(','):
                    if opt.startswith('name='):
                        self.named.setdefault(opt[len('name='):], mount_point)
                    if opt in ('rw', 'ro') or opt.startswith('name=') or '=' in opt:
                        continue
                    self.v1.setdefault(opt, mount_point)
        if self.v2:
            try:
                with open(os.path.join(self.v2, 'cgroup.controllers')) as handle:
                    self.v2_controllers = set(handle.read().split())
            except OSError:
                self.v2_controllers = set()

    @property
    def layout(self):
        """'v1', 'v2' or 'hybrid'."""
        if self.v1 and self.v2:
            return 'hybrid'
        return 'v1' if self.v1 else 'v2'

    def controller(self, name):
        """(version, mount point) of a controller, v1 first because LXC uses it when both exist."""
        if name in self.v1:
            return 'v1', self.v1[name]
        if name in self.v2_controllers:
            return 'v2', self.v2
        return None, None

    def mounts(self, controllers_only=False):
        """Every hierarchy's mount point: v1 controllers, named v1 hierarchies, cgroup2.

        ``controllers_only`` leaves out hierarchies without a VE controller (name=systemd, the
        cgroup2 of a hybrid host, here with hugetlb only): LXC keeps a VE there too, but no limit.
        """
        mounts = set(self.v1.values())
        if not controllers_only:
            mounts |= set(self.named.values())
        if self.v2 and (not controllers_only or self.v2_controllers & set(VE_CONTROLLERS)):
            mounts.add(self.v2)
        return sorted(mounts)

    def parent_dirs(self, parent):
        """Directory of the VE parent cgroup in every hierarchy."""
        return [os.path.join(mount, parent) for mount in self.mounts()]

    def missing_parent(self, parent):
        """The directories of the VE parent cgroup that do not exist yet (what ensure_parent makes)."""
        return [path for path in self.parent_dirs(parent) if not os.path.isdir(path)]

    def ensure_parent(self, parent, check_mode=False):
        """Make the VE parent cgroup in every hierarchy, ready for VEs; return what was (or would be) changed.

        On a new host nothing has made it yet, and the files a limit needs (``pids.max``,
        ``blkio.bfq.weight``, every cgroup v2 interface file) exist only in cgroups below a root.
        cgroup v1 cpuset levels get the CPUs and memory nodes of the level above (a new cpuset
        is empty and could hold no task), also when an earlier run was killed between making the
        level and filling it; cgroup v2 levels get every VE controller the level above offers
        enabled in ``cgroup.subtree_control``, root first, so VEs below can use them.
        Owned by root like the rest of the tree: LXC, running as root, makes each VE's cgroup in it.
        With ``check_mode`` nothing is written; the list says what would be.
        """
        changed = []
        cpuset = self.v1.get('cpuset')
        for mount in sorted(set(self.v1.values()) | set(self.named.values())):
            current = mount
            for part in parent.split('/'):
                above, current = current, os.path.join(current, part)
                if not os.path.isdir(current):
                    changed.append(current)
                    if check_mode:
                        break
                    try:
                        os.mkdir(current, 0o755)
                    except FileExistsError:
                        changed.pop()
                if mount == cpuset:
                    for name in ('cpuset.cpus', 'cpuset.mems'):
                        if _copy_if_empty(os.path.join(above, name), os.path.join(current, name), check_mode):
                            changed.append('%s %s' % (current, name))
        if self.v2:
            current = self.v2
            for part in parent.split('/'):
                changed += _enable_controllers(current, check_mode)
                current = os.path.join(current, part)
                if not os.path.isdir(current):
                    changed.append(current)
                    if check_mode:
                        return changed
                    try:
                        os.mkdir(current, 0o755)
                    except FileExistsError:
                        changed.pop()
            changed += _enable_controllers(current, check_mode)
        return changed

    def ve_path(self, controller, parent, ve):
        """Directory of a VE's cgroup for ``controller`` (None when the host lacks the controller)."""
        _version, mount = self.controller(controller)
        return os.path.join(mount, parent, ve) if mount else None

    def ve_dirs(self, parent, ve, controllers_only=False):
        """Every directory that can hold the VE's cgroup or its monitor's, in every hierarchy.

        Named v1 hierarchies count: LXC makes the VE's cgroups in name=systemd too, and an empty
        leftover there alone makes the next start fail with "Failed to create monitor cgroup".
        """
        dirs = []
        for mount in self.mounts(controllers_only):
            dirs.append(os.path.join(mount, parent, ve))
            dirs.append(os.path.join(mount, parent + '.monitor', ve))
        return dirs

    def busy(self, parent, ve, controllers_only=False):
        """Cgroup directories of the VE or its monitor that still hold processes."""
        found = []
        for top in self.ve_dirs(parent, ve, controllers_only):
            for current, _dirnames, filenames in os.walk(top):
                if 'cgroup.procs' not in filenames:
                    continue
                try:
                    with open(os.path.join(current, 'cgroup.procs')) as handle:
                        if handle.read().strip():
                            found.append(current)
                except OSError:
                    continue
        return found

    def settle(self, parent, ve, timeout=20.0, controllers_only=False):
        """Wait until no process is left in the VE's or its monitor's cgroups; return those still busy.

        After an aborted start, LXC's monitor goes on tearing down for a moment after lxc-start has
        returned; a new start in that window fails with "Failed to create monitor cgroup".
        """
        deadline = time.monotonic() + timeout
        busy = self.busy(parent, ve, controllers_only)
        while busy and time.monotonic() < deadline:
            time.sleep(0.1)
            busy = self.busy(parent, ve, controllers_only)
        return busy

    def remove_stale(self, parent, ve):
        """Remove empty leftover cgroups of a stopped VE (LXC refuses to start into an existing one).

        Returns the directories removed. A cgroup that still holds processes is left alone and
        reported by the OSError of rmdir, which the caller turns into an error.
        """
        removed = []
        for top in self.ve_dirs(parent, ve):
            if not os.path.isdir(top):
                continue
            for current, dirnames, _files in os.walk(top, topdown=False):
                try:
                    os.rmdir(current)
                    removed.append(current)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
        return removed

    def memory_usage(self, parent, ve):
        """Bytes of memory the VE uses now (None when unknown)."""
        version, mount = self.controller('memory')
        if not mount:
            return None
        name = 'memory.usage_in_bytes' if version == 'v1' else 'memory.current'
        try:
            with open(os.path.join(mount, parent, ve, name)) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None


def _copy_if_empty(source, dest, check_mode=False):
    """Copy a cpuset list (cpus or mems) into a cgroup whose own list is still empty; True when it was empty."""
    with open(dest) as handle:
        if handle.read().strip():
            return False
    if not check_mode:
        with open(source) as handle:
            value = handle.read().strip()
        with open(dest, 'w') as handle:
            handle.write(value)
    return True


def _enable_controllers(directory, check_mode=False):
    """Enable in ``directory``'s subtree_control each VE controller it offers that is not yet enabled.

    Returns ['<dir>/cgroup.subtree_control +name', ...] for what it enabled (or would, in check mode).
    """
    try:
        with open(os.path.join(directory, 'cgroup.controllers')) as handle:
            offered = handle.read().split()
        with open(os.path.join(directory, 'cgroup.subtree_control')) as handle:
            enabled = set(handle.read().split())
    except OSError:
        return []
    done = []
    for name in offered:
        if name in enabled or name not in VE_CONTROLLERS:
            continue
        if not check_mode:
            with open(os.path.join(directory, 'cgroup.subtree_control'), 'w') as handle:
                handle.write('+' + name)
        done.append('%s +%s' % (os.path.join(directory, 'cgroup.subtree_control'), name))
    return done
