# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VE's identity inside: /etc/hostname, its line in /etc/hosts, and what a clone must not share
(SSH host keys, machine-id).

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

LXC sets only the UTS name (``lxc.uts.name``). Programs that resolve their own name (``hostname
-f``, ``sudo``) read /etc/hosts, and boot scripts read /etc/hostname; like vzctl's
``set_hostname``, the VE manager writes both at create, at a hostname change and when a clone or a
restore gets its new name. The VE's own lines of /etc/hosts are kept: only the ``127.0.1.1`` line
is ours.

Files are read and written below a trusted root without following a link the VE made
(``_fs.write_inside``): a running VE's ``/proc/<pid>/root``, or a stopped VE's private upper
directory, where a file the VE never changed is read from the template layers below it.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile

from ._errors import VzError
from ._fs import write_inside

LOOPBACK_NAME_ADDRESS = '127.0.1.1'
DEFAULT_HOSTS = '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
# what ssh-keygen -A makes; a clone gets new keys of the types its source had
SSH_KEY_RE = re.compile(r'^ssh_host_([a-z0-9]+)_key(\.pub)?$')
_MAX_FILE = 1 << 20


# -- pure (unit-tested) ----------------------------------------------------------------------------
def hostname_text(hostname):
    """Content of /etc/hostname."""
    return hostname + '\n'


def hosts_text(existing, hostname):
    """/etc/hosts with one ``127.0.1.1 <hostname> [<short name>]`` line; every other line is kept.

    ``existing`` is the file's current text (None: the VE has none, it gets the usual loopback
    lines). The line goes after the last 127.0.0.1 line (where Debian puts it), else first.
    """
    names = [hostname]
    short = hostname.split('.', 1)[0]
    if short != hostname:
        names.append(short)
    ours = '%s\t%s' % (LOOPBACK_NAME_ADDRESS, ' '.join(names))
    text = DEFAULT_HOSTS if existing is None else existing
    lines = [line for line in text.splitlines() if _address(line) != LOOPBACK_NAME_ADDRESS]
    at = 0
    for index, line in enumerate(lines):
        if _address(line) == '127.0.0.1':
            at = index + 1
    lines.insert(at, ours)
    return '\n'.join(lines) + '\n'


def _address(line):
    fields = line.split('#', 1)[0].split()
    return fields[0] if fields else None


def new_machine_id():
    """A random machine id as systemd writes it (32 lowercase hex digits)."""
    return secrets.token_hex(16)


# -- reading a VE's file ---------------------------------------------------------------------------
def open_subdir(root, subdir):
    """An O_PATH descriptor of ``root/subdir``, opened one component at a time without following any
    link (an absolute link of the VE would otherwise lead into the host). OSError when it cannot."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in subdir.split('/'):
            if part in ('', '.', '..'):
                raise OSError(errno.EINVAL, 'invalid path component in %r' % subdir)
            inner = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_inside(root, subdir, filename):
    """Text of ``root/subdir/filename`` without following links below ``root``; None when it is
    missing, not a regular file, or larger than 1 MB."""
    try:
        dir_fd = open_subdir(root, subdir)
    except OSError:
        return None
    try:
        fd = os.open(filename, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FILE:
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b''.join(chunks).decode('utf-8', 'replace')
    finally:
        os.close(fd)


def _entry(root, subdir, filename):
    """lstat of ``root/subdir/filename`` (no link followed), or None."""
    try:
        dir_fd = open_subdir(root, subdir)
    except OSError:
        return None
    try:
        return os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(dir_fd)


class VeTree:
    """The files of one VE as its root sees them: through ``/proc/<pid>/root`` while it runs, else
    its private upper directory over the template layers (top first) of a stopped VE."""

    def __init__(self, root, lowers=(), idmap=None):
        self.root = root
        self.lowers = list(lowers)
        idmap = idmap or {}
        self.uid, self.gid = idmap.get('uid', 0), idmap.get('gid', 0)

    @classmethod
    def of(cls, ve_dir, pid, lowers, idmap):
        if pid:
            return cls('/proc/%d/root' % pid, (), idmap)
        return cls(os.path.join(ve_dir, 'private', 'upper'), lowers, idmap)

    def read(self, subdir, filename):
        """The file's text as the VE sees it, or None (missing, deleted by the VE, not a file)."""
        for layer in [self.root] + self.lowers:
            st = _entry(layer, subdir, filename)
            if st is None:
                if self._opaque(layer, subdir):
                    return None
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:   # an overlayfs whiteout: the VE deleted it
                return None
            return read_inside(layer, subdir, filename)
        return None

    def names(self, subdir):
        """Names in ``subdir`` of every layer (whiteouts left out)."""
        found, gone = set(), set()
        for layer in [self.root] + self.lowers:
            try:
                path_fd = open_subdir(layer, subdir)
                try:
                    fd = os.open('.', os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_fd)
                finally:
                    os.close(path_fd)
            except OSError:
                continue
            try:
                for entry in os.listdir(fd):
                    st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        gone.add(entry)
                    elif entry not in gone:
                        found.add(entry)
            finally:
                os.close(fd)
            if self._opaque(layer, subdir):
                break
        return sorted(found)

    def _opaque(self, layer, subdir):
        if layer != self.root or not self.lowers:
            return False
        for attr in ('trusted.overlay.opaque', 'user.overlay.opaque'):
            try:
                if os.getxattr(os.path.join(layer, subdir), attr, follow_symlinks=False) == b'y':
                    return True
            except OSError:
                continue
        return False

    def write(self, subdir, filename, text, mode=0o644):
        """Write a file as the VE's root user (atomic; a link there is replaced, never followed; no link
        is followed on the way to ``subdir`` either)."""
        head, _sep, last = subdir.rpartition('/')
        if not head:
            write_inside(self.root, subdir, filename, text, self.uid, self.gid, mode)
            return
        fd = open_subdir(self.root, head)
        try:
            write_inside('/proc/self/fd/%d' % fd, last, filename, text, self.uid, self.gid, mode)
        finally:
            os.close(fd)

    def remove(self, subdir, filename):
        """Remove a file: unlink it where it lives in the VE's own layer, and hide a template's file with
        a whiteout (stopped VE)."""
        dir_fd = open_subdir(self.root, subdir)
        try:
            try:
                os.unlink(filename, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            if any(_entry(layer, subdir, filename) is not None for layer in self.lowers):
                os.mknod(filename, stat.S_IFCHR | 0o600, 0, dir_fd=dir_fd)
                os.chown(filename, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)


# -- what the VE manager, clones and restores call -------------------------------------------------
def write_identity(tree, hostname):
    """/etc/hostname and the 127.0.1.1 line of /etc/hosts of a VE; returns the files changed."""
    changed = []
    if tree.read('etc', 'hostname') != hostname_text(hostname):
        tree.write('etc', 'hostname', hostname_text(hostname))
        changed.append('/etc/hostname')
    existing = tree.read('etc', 'hosts')
    wanted = hosts_text(existing, hostname)
    if existing != wanted:
        tree.write('etc', 'hosts', wanted)
        changed.append('/etc/hosts')
    return changed


def strip_identity(rootfs):
    """Remove a VE's identity from a tree made from it (a template built from a VE, host ids): its
    /etc/hostname and the 127.0.1.1 line of /etc/hosts. Each VE made from the tree writes its own."""
    tree = VeTree(rootfs)
    if tree.read('etc', 'hostname') is not None:
        tree.remove('etc', 'hostname')
    hosts = tree.read('etc', 'hosts')
    if hosts is not None:
        kept = [line for line in hosts.splitlines() if _address(line) != LOOPBACK_NAME_ADDRESS]
        tree.write('etc', 'hosts', '\n'.join(kept) + '\n' if kept else DEFAULT_HOSTS)


def reset_machine_identity(tree):
    """What a clone must not share with its source (like virt-sysprep): a new machine-id where the
    source had one (an empty one stays empty: systemd makes one at the first boot) and new SSH host
    keys of the types the source had. Returns the files changed. The VE is stopped."""
    changed = []
    current = tree.read('etc', 'machine-id')
    if current is not None and current.strip():
        machine_id = new_machine_id() + '\n'
        tree.write('etc', 'machine-id', machine_id, 0o444)
        changed.append('/etc/machine-id')
        dbus = tree.read('var/lib/dbus', 'machine-id')
        if dbus is not None and dbus.strip():
            tree.write('var/lib/dbus', 'machine-id', machine_id, 0o444)
            changed.append('/var/lib/dbus/machine-id')
    keys = [n for n in tree.names('etc/ssh') if SSH_KEY_RE.match(n)]
    if not keys:
        return changed
    kinds = sorted({SSH_KEY_RE.match(n).group(1) for n in keys})
    for name in keys:
        tree.remove('etc/ssh', name)
    work = tempfile.mkdtemp(prefix='osvirt-sshkeys-')
    try:
        for kind in kinds:
            path = os.path.join(work, 'ssh_host_%s_key' % kind)
            proc = subprocess.run(['ssh-keygen', '-q', '-t', kind, '-N', '', '-C', 'root@clone', '-f', path],
                                  capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise VzError('cannot make a new SSH host key of type %s: %s' % (kind, proc.stderr.strip()),
                              cmd=proc.args, rc=proc.returncode, stderr=proc.stderr)
            for suffix, mode in (('', 0o600), ('.pub', 0o644)):
                with open(path + suffix, 'rb') as handle:
                    tree.write('etc/ssh', 'ssh_host_%s_key%s' % (kind, suffix), handle.read(), mode)
                changed.append('/etc/ssh/ssh_host_%s_key%s' % (kind, suffix))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return changed
