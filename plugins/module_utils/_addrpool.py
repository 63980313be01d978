# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Address leases and pool allocation: which VE uses which IP address on this host.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Every address a VE uses (static or taken from a pool) is leased by one file
``<vz_root>/net/leases/<address>`` holding ``{"ve": name, "interface": ifname}``. A lease is
written complete into a temporary file and then hard-linked to its name: ``link`` fails when the
name exists, so two processes (Ansible forks, parallel tasks, threads) never get the same address,
and a crash never leaves a half-written lease behind.

A lease is *stale* when its VE has no directory and nobody holds the VE's lock: the VE was removed
without releasing its leases (a crash). A VE being created holds its lock while its directory is
still in ``.tmp``, so callers must claim or allocate addresses while holding the VE's lock, and
keep it until the VE's directory exists. A stale lease counts as free; taking it over happens under
the old owner's lock, so two processes never take over the same lease.

A VE moved to another host of the same L2 segment keeps its addresses, so the host it left must
not hand them out again: the move leaves a *reservation* ``<vz_root>/net/moved/<address>``
(``{"ve": name, "interface": ifname, "moved_to": host, "since": time}``) where its lease was. A
reserved address is never allocated from a pool and never leased to another VE; the VE of that
name may lease it again (it moves back), and its arrival on a host removes that host's
reservations of it. A VE removed on the host it moved to leaves its reservations on the hosts it
came from: ``release_moved`` (or removing the file) frees them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import secrets
import socket
import tempfile
import time

from . import _validate
from ._errors import VzError
from ._fs import make_dirs, read_json, write_json
from ._locks import Lock

# crash leftovers (".new-*" temporary leases, ".old-*" leases set aside) older than this are removed
_LEFTOVER_AGE = 3600.0
# where an unnamed (O_TMPFILE) lease is found until it is linked under its address
_PROC_FD = '/proc/self/fd/'
# a lease file is tiny; anything larger is not ours
_MAX_LEASE_BYTES = 4096
# how often one address is looked at again when other processes keep changing its lease
_RETRIES = 8


def canonical(value, what='address'):
    """Return the canonical text of an IP address (as ``ipaddress`` prints it), without prefix length.

    Accepts ``10.20.0.5``, ``10.20.0.5/24``, ``FD00:20::5/64`` and ``ipaddress`` objects.
    """
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        address = value
    elif isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        address = value.ip
    elif isinstance(value, str) and value.strip() == value and value:
        text = value.split('/', 1)[0]
        if '%' in text:
            raise VzError('%s %r has a scope (%%...); give the address without it' % (what, value))
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise VzError('%s %r is not a valid IPv4 or IPv6 address' % (what, value)) from None
        if '/' in value:
            try:
                ipaddress.ip_interface(value)
            except ValueError:
                raise VzError('%s %r has an invalid prefix length' % (what, value)) from None
    else:
        raise VzError('%s %r is not a valid IPv4 or IPv6 address' % (what, value))
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise VzError('%s %s has a scope (%%...); give the address without it' % (what, address))
    return str(address)


def parse_pool(pool):
    """Return ``pool`` (``10.20.0.0/24``, ``fd00:20::/64``) as an ``ipaddress`` network.

    Refuses host bits, missing prefix lengths and pools too small to hold a VE address next to
    the network's own addresses (IPv4 smaller than /30, IPv6 smaller than /126).
    """
    if isinstance(pool, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network = pool
    else:
        if not isinstance(pool, str) or '/' not in pool:
            raise VzError('address pool %r must be a network with a prefix length, like 10.20.0.0/24' % (pool,))
        try:
            network = ipaddress.ip_network(pool, strict=False)
        except ValueError:
            raise VzError('address pool %r is not a valid IPv4 or IPv6 network' % (pool,)) from None
        if str(network.network_address) != canonical(pool.split('/', 1)[0], 'address pool'):
            raise VzError('address pool %s has host bits set; the network is %s' % (pool, network))
    limit = 30 if network.version == 4 else 126
    if network.prefixlen > limit:
        raise VzError('address pool %s is too small: a pool must be a /%d or larger' % (network, limit))
    return network


def pool_size(network):
    """Number of addresses of a pool that VEs can get.

    IPv4: all but the network and broadcast addresses. IPv6: all but the subnet-router anycast
    address (the prefix itself, RFC 4291).
    """
    return network.num_addresses - (2 if network.version == 4 else 1)


class Leases:
    """The address leases of one host (``host``: a ``_host.Host``).

    Methods that change leases must be called while holding the per-VE lock of ``ve``
    (``_locks.Lock``) until the VE's directory exists; see the module docstring.
    """

    def __init__(self, host):
        self.host = host
        self.directory = os.path.join(host.vz_root, 'net', 'leases')
        self.moved_directory = os.path.join(host.vz_root, 'net', 'moved')

    # -- reading ----------------------------------------------------------------------------
    def owner(self, address):
        """Who uses ``address``: ``{"ve": name, "interface": ifname}``, or None when it is free.

        A stale lease (VE gone, its lock free) counts as free. An unreadable lease raises VzError
        naming the file, so an operator can look at it.
        """
        text = canonical(address)
        lease = self._read(text)
        if lease is None or self._is_stale(lease):
            return self.moved(text)
        return self._check_readable(lease)

    def moved(self, address):
        """The reservation of ``address`` for a VE that moved away (``{"ve", "interface",
        "moved_to", "since"}``), or None."""
        found = read_json(os.path.join(self.moved_directory, canonical(address)))
        if not isinstance(found, dict):
            return None
        try:
            _validate.ve_name(found.get('ve'))
        except VzError:
            return None
        return {'ve': found['ve'], 'interface': found.get('interface'), 'moved_to': found.get('moved_to'),
                'since': found.get('since')}

    def reservations(self, ve=None):
        """Reservations of VEs that moved away: ``{address: reservation}``, of ``ve`` only when given."""
        try:
            names = os.listdir(self.moved_directory)
        except FileNotFoundError:
            return {}
        found = {}
        for name in names:
            try:
                if canonical(name) != name:
                    continue
            except VzError:
                continue   # not an address: a temporary file of a write
            try:
                reservation = self.moved(name)
            except VzError as exc:
                # not JSON: the address stays reserved (never handed out) until someone looks
                reservation = {'ve': None, 'unreadable': str(exc)}
            if reservation and (ve is None or reservation['ve'] == ve):
                found[name] = reservation
        return found

    def of(self, ve):
        """The addresses leased to ``ve``: ``{address: ifname}``."""
        _validate.ve_name(ve)
        found = {}
        for address in _ordered(self._names()):
            lease = self._read(str(address))
            if lease and lease.get('ve') == ve:
                found[str(address)] = lease.get('interface')
        return found

    def predict(self, pool, exclude=()):
        """The address ``allocate`` would give now, without claiming it (for check mode)."""
        network = parse_pool(pool)
        skip = _exclusions(exclude, network) | self._reserved_in(network)
        leased = self._names_in(network)
        live = self._live_ves()
        for address in _candidates(network, skip):
            if int(address) not in leased:
                return str(address)
            lease = self._read(str(address))
            if lease is None or self._is_stale(lease, live):
                return str(address)
        raise _exhausted(network, skip, None, None)

    # -- changing ---------------------------------------------------------------------------
    def claim(self, ve, ifname, address):
        """Lease ``address`` to ``ve`` (interface ``ifname``).

        Idempotent for the same VE (the lease then records ``ifname``). Another live VE's lease
        raises VzError naming that VE. Returns True when a lease was made or changed.
        """
        _validate.ve_name(ve)
        _validate.ifname(ifname)
        text = canonical(address)
        reserved = self.moved(text)
        if reserved and reserved['ve'] != ve:
            raise VzError(_reserved_message(text, reserved, self.moved_directory), address=text, owner=reserved['ve'])
        self._ensure_directory()
        with self._prepared(ve, ifname) as tmp:
            outcome, lease = self._acquire(text, ve, tmp)
            if outcome == 'made':
                return True
            if outcome == 'mine':
                if lease.get('interface') == ifname:
                    return False
                # the same VE now has the address on another interface: the lease follows
                self._replace(tmp, text)
                return True
        self._check_readable(lease)
        raise VzError('address %s is already used by VE %s (interface %s) on this host'
                      % (text, lease['ve'], lease.get('interface')), address=text, owner=lease['ve'])

    def allocate(self, ve, ifname, pool, exclude=()):
        """Lease the lowest free address of ``pool`` to ``ve`` and return it (``10.20.0.7``).

        ``exclude`` lists addresses never to give (the bridge's own, gateways); with or without
        prefix length, either family. An exhausted pool raises VzError naming the pool, its size
        and the VE that asked.
        """
        _validate.ve_name(ve)
        _validate.ifname(ifname)
        network = parse_pool(pool)
        skip = _exclusions(exclude, network) | self._reserved_in(network)
        self._ensure_directory()
        leased = self._names_in(network, clean=True)
        live = self._live_ves()
        with self._prepared(ve, ifname) as tmp:
            for address in _candidates(network, skip):
                if int(address) in leased:
                    # a live VE's lease is passed over at the cost of one read; the rest is left to
                    # _acquire, which decides from what is on disk at that moment
                    lease = self._read(str(address))
                    if lease is not None and not self._is_stale(lease, live):
                        continue
                if self._acquire(str(address), ve, tmp)[0] == 'made':
                    return str(address)
        raise _exhausted(network, skip, ve, ifname)

    def release(self, ve, addresses=None):
        """Remove the leases of ``ve`` (all, or those in ``addresses``); return the removed addresses.

        Leases of other VEs are never touched, even when listed.
        """
        _validate.ve_name(ve)
        wanted = None if addresses is None else {canonical(a) for a in addresses}
        removed = []
        names = _ordered(self._names() if wanted is None else {ipaddress.ip_address(a) for a in wanted})
        for address in names:
            text = str(address)
            lease = self._read(text)
            if not lease or lease.get('ve') != ve:
                continue
            try:
                os.unlink(self._path(text))
            except FileNotFoundError:
                continue
            removed.append(text)
        if removed:
            self._sync_directory()
        return removed

    def reserve_moved(self, ve, moved_to, since):
        """Keep the addresses leased to ``ve`` from other VEs of this host: it moved to host
        ``moved_to`` with them. Call before the leases are released. Returns the addresses."""
        _validate.ve_name(ve)
        leased = self.of(ve)
        if leased:
            make_dirs(os.path.dirname(self.moved_directory), 0o755)
            make_dirs(self.moved_directory, 0o700)
        for address, ifname in leased.items():
            write_json(os.path.join(self.moved_directory, address),
                       {'ve': ve, 'interface': ifname, 'moved_to': moved_to, 'since': since}, mode=0o600)
        return sorted(leased)

    def release_moved(self, ve, addresses=None):
        """Remove the reservations of ``ve`` (all, or those in ``addresses``); return the addresses."""
        _validate.ve_name(ve)
        wanted = None if addresses is None else {canonical(a) for a in addresses}
        removed = []
        for address in sorted(self.reservations(ve)):
            if wanted is not None and address not in wanted:
                continue
            try:
                os.unlink(os.path.join(self.moved_directory, address))
            except FileNotFoundError:
                continue
            removed.append(address)
        return removed

    # -- internals --------------------------------------------------------------------------
    def _reserved_in(self, network):
        """Addresses of ``network`` reserved for VEs that moved away (never handed out here)."""
        skip = set()
        for address in self.reservations():
            value = ipaddress.ip_address(address)
            if value.version == network.version and value in network:
                skip.add(value)
        return skip

    def _path(self, text):
        return os.path.join(self.directory, text)

    def _ensure_directory(self):
        make_dirs(os.path.dirname(self.directory), 0o755)
        make_dirs(self.directory, 0o700)

    def _entries(self, clean=False):
        """Names in the lease directory (one listdir), without our temporary files.

        ``clean``: remove temporary files a crash left behind.
        """
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        if clean:
            for name in entries:
                if name.startswith('.'):
                    self._remove_leftover(name)
        return [name for name in entries if not name.startswith('.')]

    def _names(self):
        """The set of addresses that have a lease file. Names that are no address are ignored.

        A name that is an address but not in canonical form is not ours either; it only costs a
        look at the canonical name, which does not exist.
        """
        found = set()
        for name in self._entries():
            if '%' in name:
                continue
            try:
                found.add(ipaddress.ip_address(name))
            except ValueError:
                continue
        return found

    def _names_in(self, network, clean=False):
        """The addresses of ``network`` that have a lease file, as integers.

        ``inet_pton`` parses a name ten times faster than ``ipaddress``; it counts with a
        thousand leases.
        """
        family = socket.AF_INET6 if network.version == 6 else socket.AF_INET
        low, high = int(network.network_address), int(network.broadcast_address)
        found = set()
        for name in self._entries(clean):
            if (':' in name) != (network.version == 6) or '%' in name:
                continue
            try:
                value = int.from_bytes(socket.inet_pton(family, name), 'big')
            except OSError:
                continue
            if low <= value <= high:
                found.add(value)
        return found

    def _live_ves(self):
        """Names of the VEs that have a directory now (one listdir, to pass over live leases quickly)."""
        try:
            return set(os.listdir(self.host.ves_dir))
        except FileNotFoundError:
            return set()

    def _remove_leftover(self, name):
        path = os.path.join(self.directory, name)
        try:
            if time.time() - os.lstat(path).st_mtime > _LEFTOVER_AGE:
                os.unlink(path)
        except OSError:
            pass

    def _read(self, text):
        """The lease of address ``text`` as a dict, None when there is none.

        A lease that is not a JSON object with a valid VE name comes back as
        ``{"unreadable": reason}``: it is never taken as free.
        """
        path = self._path(text)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return {'unreadable': exc.strerror, 'path': path}
        try:
            data = os.read(fd, _MAX_LEASE_BYTES + 1)
        except OSError as exc:
            return {'unreadable': exc.strerror, 'path': path}
        finally:
            os.close(fd)
        try:
            lease = json.loads(data.decode('utf-8'))
            _validate.ve_name(lease['ve'])
        except (ValueError, TypeError, KeyError, VzError):
            return {'unreadable': 'not a lease written by osvirt.vz', 'path': path}
        lease['path'] = path
        return lease

    @staticmethod
    def _check_readable(lease):
        if 'unreadable' in lease:
            raise VzError('address lease %s is unreadable (%s); remove it if no VE uses that address'
                          % (lease['path'], lease['unreadable']), path=lease['path'])
        return {'ve': lease['ve'], 'interface': lease.get('interface')}

    def _is_stale(self, lease, live=()):
        """True when the lease's VE has no directory and its lock is free.

        ``live``: VE names known to have a directory (a snapshot; only ever answers "not stale").
        """
        if 'unreadable' in lease or lease['ve'] in live:
            return False
        if os.path.isdir(self.host.ve_dir(lease['ve'])):
            return False
        return not _lock_held(os.path.join(self.host.locks_dir, 've-%s.lock' % lease['ve']))

    def _acquire(self, text, ve, tmp):
        """Try to lease ``text`` to ``ve`` (whose lease is prepared in ``tmp``).

        Returns ('made', None), ('mine', lease) or ('taken', lease).
        """
        for _attempt in range(_RETRIES):
            if self._link(tmp, text):
                return 'made', None
            lease = self._read(text)
            if lease is None:
                continue  # released between our link and our read: try again
            if lease.get('ve') == ve:
                return 'mine', lease
            if not self._is_stale(lease):
                return 'taken', lease
            if self._take_over(text, lease, ve, tmp):
                return 'made', None
        # other processes keep changing this lease: leave the address to them
        return 'taken', {'unreadable': 'its lease changed %d times while we looked' % _RETRIES,
                         'path': self._path(text)}

    @contextlib.contextmanager
    def _prepared(self, ve, ifname):
        """A complete, fsynced lease of ``ve`` in a temporary file of the lease directory.

        Its content does not depend on the address, so one file (and one fsync) serves every
        name tried: under contention a lost race costs one ``link`` call. The file has no name of
        its own (O_TMPFILE, linked through /proc/self/fd): a run killed at any moment leaves no
        temporary lease behind. File systems without O_TMPFILE get a ``.new-*`` file instead.
        """
        try:
            fd = os.open(self.directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            try:
                os.write(fd, _content(ve, ifname))
                os.fsync(fd)
                yield '%s%d' % (_PROC_FD, fd)
            finally:
                os.close(fd)
            return
        fd, tmp = tempfile.mkstemp(prefix='.new-', dir=self.directory)
        try:
            with os.fdopen(fd, 'wb') as handle:
                handle.write(_content(ve, ifname))
                handle.flush()
                os.fsync(handle.fileno())
            yield tmp
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _replace(self, tmp, text):
        """Put the prepared lease ``tmp`` in place of the lease of ``text`` (one rename)."""
        if tmp.startswith(_PROC_FD):   # an unnamed file needs a name to be renamed from
            named = os.path.join(self.directory, '.new-%s' % secrets.token_hex(6))
            self._link_to(tmp, named)
            tmp = named
        os.rename(tmp, self._path(text))
        self._sync_directory()

    def _link_to(self, tmp, path):
        if tmp.startswith(_PROC_FD):   # an O_TMPFILE: linkat(..., AT_SYMLINK_FOLLOW) gives it the name
            fds = os.open(_PROC_FD, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(tmp[len(_PROC_FD):], path, src_dir_fd=fds)
            finally:
                os.close(fds)
        else:
            os.link(tmp, path)

    def _link(self, tmp, text):
        """Give the prepared lease ``tmp`` the name ``text`` unless a lease has it; True when it did."""
        try:
            self._link_to(tmp, self._path(text))
        except FileExistsError:
            return False
        self._sync_directory()
        return True

    def _take_over(self, text, stale, ve, tmp):
        """Replace the stale lease ``stale`` of ``text`` with one for ``ve``; False if it changed meanwhile.

        The old owner's lock serialises takeovers of its leases and keeps a VE of that name from
        being created halfway through.
        """
        old = stale['ve']
        make_dirs(self.host.locks_dir, 0o700)
        try:
            lock = Lock(self.host.locks_dir, 've', old, 'osvirt.vz address lease takeover for %s' % ve,
                        timeout=0).acquire()
        except VzError:
            return False  # the old VE is busy, so it is alive: the caller looks again
        try:
            current = self._read(text)
            if not current or current.get('ve') != old or os.path.isdir(self.host.ve_dir(old)):
                return False
            aside = os.path.join(self.directory, '.old-%s-%d' % (text, os.getpid()))
            try:
                os.rename(self._path(text), aside)
            except FileNotFoundError:
                pass
            else:
                os.unlink(aside)
            return self._link(tmp, text)
        finally:
            # the old VE is gone: its lock file, made by this takeover, goes too
            lock.release(remove=not os.path.lexists(self.host.ve_dir(old)))

    def _sync_directory(self):
        """Make a new or removed lease name durable: a crash must not forget a lease a VE relies on."""
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _ordered(addresses):
    return sorted(addresses, key=lambda a: (a.version, a))


def _content(ve, ifname):
    return (json.dumps({'ve': ve, 'interface': ifname}, sort_keys=True) + '\n').encode('utf-8')


def _lock_held(path):
    """True when someone holds the flock on ``path`` (read-only probe; never creates the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: keep the lease
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)  # closing drops the probe's lock at once
    return False


def _exclusions(exclude, network):
    """The addresses of ``exclude`` that lie in ``network`` (other families and networks ignored)."""
    if isinstance(exclude, str):
        exclude = [exclude]
    skip = set()
    for value in exclude or ():
        address = ipaddress.ip_address(canonical(value, 'excluded address'))
        if address.version == network.version and address in network:
            skip.add(address)
    # the addresses no VE gets anyway are no exclusions
    skip.discard(network.network_address)
    if network.version == 4:
        skip.discard(network.broadcast_address)
    return skip


def _candidates(network, skip):
    """Host addresses of ``network`` from the lowest up, without ``skip``.

    The caller stops at the first address it gets, and the first address without a lease is free,
    so a walk costs about one step per lease or exclusion below it, even in a /64.
    """
    address = network.network_address + 1
    last = network.broadcast_address - (1 if network.version == 4 else 0)
    while address <= last:
        if address not in skip:
            yield address
        if address == last:
            return
        address += 1


def _reserved_message(address, reserved, directory):
    return ('address %s is reserved for VE %s, which moved from this host to %s (%s) and keeps it; remove '
            '%s/%s once no VE of that name uses it any more'
            % (address, reserved['ve'], reserved.get('moved_to'), reserved.get('since'), directory, address))


def _exhausted(network, skip, ve, ifname):
    size = pool_size(network)
    message = 'address pool %s is exhausted: all %d addresses are in use' % (network, size)
    if skip:
        message += ' (%d of them excluded: addresses of the bridge or gateways, or reserved for VEs that moved away)' % len(skip)
    if ve:
        message += '; VE %s asked for one for interface %s' % (ve, ifname)
    return VzError(message, pool=str(network), size=size)
