# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What can be done to one VE on one host, step by step: read it, start, stop, freeze and thaw it,
write its registration (config and ve.json), register a private area that came from elsewhere,
claim its addresses, and remove it again.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

``VeOps`` is the vocabulary; callers hold the VE's lock (``_locks.Lock(host.locks_dir, 've', name,
...)``) around every call that changes a VE. ``VeManager`` (``_ves.py``) builds the tasks of
``osvirt.vz.ve`` from these steps; migration, snapshots and backups use the same ones.
"""

from __future__ import annotations

import os

from . import _limits, _quota, _staging, _validate
from ._cgroups import CgroupTree
from ._engine.config import LxcConfig
from ._errors import VzError
from ._fs import read_json, write_json
from ._templates import TemplateStore
from ._ve_config import NET_HOOK, config_digest, is_owned, render_config
from ._ve_net import VeNetwork, addresses_of


class VeOps:
    """The steps that act on one VE of a host; the caller holds the VE's lock."""

    def __init__(self, host, client, stop_timeout=30, overcommit=None):
        self.host = host
        self.client = client
        self.stop_timeout = stop_timeout
        self.overcommit = overcommit if overcommit is not None else host.overcommit
        self._facts = None
        self._device = None
        self.templates = TemplateStore(host)
        self.net = VeNetwork(host)
        self.cgroups = CgroupTree()

    # -- reading --------------------------------------------------------------------------
    def read_meta(self, name, broken_ok=False):
        """ve.json of a VE, None when the VE does not exist; refuses directories that are not ours.

        A ve.json that is not JSON (cut short) makes the VE broken: an error naming it, or with
        ``broken_ok`` (removal, listing) ``{'name': name, 'broken': why}``.
        """
        directory = self.host.ve_dir(name)
        if not os.path.lexists(directory):
            return None
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise VzError('%s is not a directory made by osvirt.vz; refusing to manage VE %s' % (directory, name))
        try:
            meta = read_json(os.path.join(directory, 've.json'))
        except VzError as exc:
            why = 'VE %s is broken: %s (state: absent still removes it)' % (name, exc.message)
            if broken_ok:
                return {'name': name, 'broken': why}
            raise VzError(why)
        if not isinstance(meta, dict):
            raise VzError('VE %s exists in %s but is not managed by osvirt.vz (no ve.json)' % (name, directory))
        return meta

    def names(self):
        """Names of every VE directory with a ve.json, sorted."""
        try:
            entries = os.listdir(self.host.ves_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if _validate.VE_NAME_RE.fullmatch(n)
                      and os.path.isfile(os.path.join(self.host.ves_dir, n, 've.json')))

    def running_digest(self, name, pid, on_disk_items):
        """Digest of the config a running VE was started with.

        ``running.json`` records it with the init pid when this collection starts a VE or writes a
        change without restarting it. A record with another pid is stale (the VE was restarted by
        other means, e.g. lxc-autostart at boot): then the VE runs what is on disk.
        """
        try:
            record = read_json(os.path.join(self.host.ve_dir(name), 'running.json')) or {}
        except VzError:   # a record cut short by a crash: the VE runs what is on disk
            record = {}
        if pid is not None and record.get('pid') == pid and record.get('config'):
            return record['config']
        return config_digest(on_disk_items)

    def record_running(self, name, pid, digest):
        """Remember in running.json that the VE with init ``pid`` runs the config of ``digest``
        (``config_digest`` of its owned entries); nothing when ``pid`` is None."""
        if pid is not None:
            write_json(os.path.join(self.host.ve_dir(name), 'running.json'), {'pid': pid, 'config': digest})

    def states(self):
        """State and pid of every VE in one lxc-ls call; {} when the lxcpath does not exist yet."""
        if not os.path.isdir(self.host.ves_dir):
            return {}
        return self.client.list()

    def state(self, name):
        """State (stopped, running, frozen, ...) and init pid of one VE: ``{'state', 'pid'}``."""
        return self.client.state(name)

    def config_on_disk(self, name):
        """The owned entries of a VE's LXC config file, as (key, value) pairs."""
        return LxcConfig.load(os.path.join(self.host.ve_dir(name), 'config')).owned_items(is_owned)

    def desired_config(self, meta, manifest, create=False):
        """The owned LXC config entries a VE with ``meta`` on template ``manifest`` gets (``create``:
        make the shifted template copy of its id range when this host lacks it)."""
        idmap = self.host.idmap() if meta.get('idmap') else None
        if idmap is not None and (idmap.uid, idmap.gid) != (meta['idmap']['uid'], meta['idmap']['gid']):
            raise VzError('VE %s was made for ids %d/%d but the host now maps %d/%d'
                          % (meta['name'], meta['idmap']['uid'], meta['idmap']['gid'], idmap.uid, idmap.gid))
        lowers = self.templates.lower_dirs(manifest, idmap, create=create)
        limit_items = _limits.config_items(self.limit_settings(meta))
        if meta.get('network') and os.path.exists(NET_HOOK):
            # shaping and anti-spoofing live as long as the VE's link: the hook sets them at every start
            limit_items += [('lxc.hook.start-host', NET_HOOK), ('lxc.hook.post-stop', NET_HOOK)]
        return render_config(self.host, meta, lowers, manifest.get('init') or {}, limit_items)

    # -- limits ---------------------------------------------------------------------------
    @property
    def facts(self):
        """CPUs, memory, overcommit and cgroup layout of the host (read once)."""
        if self._facts is None:
            try:
                overcommit = float(self.overcommit)
            except (TypeError, ValueError):
                raise VzError('overcommit must be a number such as 1.5, got %r' % (self.overcommit,))
            self._facts = _limits.HostFacts(self.cgroups, overcommit=overcommit,
                                            net_capacity=self.host.net_capacity)
        return self._facts

    def limit_settings(self, meta):
        """The cgroup settings of a VE's limits (``_limits.Setting`` list)."""
        limits = meta.get('limits') or {}
        device = None
        disk = limits.get('disk') or {}
        if any(k in disk for k in ('read_bps', 'write_bps', 'read_iops', 'write_iops')):
            if self._device is None:
                self._device = _limits.block_device(self.host.ves_dir if os.path.isdir(self.host.ves_dir)
                                                    else self.host.vz_root)
            device = self._device
        return _limits.cgroup_settings(meta['name'], limits, self.facts, device)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, name, meta, manifest=None):
        """Start a stopped VE, then give its links their shaping and guard (``after_start``).

        With ``manifest`` (the VE's template version) the shifted template copy of its id range is
        made first when this host lacks it. Stale cgroups of an earlier start are removed; a failed
        start raises VzError with the tail of the VE's LXC log.
        """
        if manifest is not None:   # the shifted template copy may not exist yet on this host
            self.desired_config(meta, manifest, create=True)
        parent = meta.get('cgroup_parent') or self.host.cgroup_parent
        try:
            self.cgroups.settle(parent, name)   # a monitor of an earlier, aborted start may still be leaving
            self.cgroups.remove_stale(parent, name)
        except OSError as exc:
            raise VzError('VE %s is stopped but its cgroup still holds processes: %s' % (name, exc))
        log = os.path.join(self.host.ve_dir(name), 'lxc.log')
        try:
            self.client.start(name, logfile=log)
        except VzError as exc:
            tail = log_tail(log)
            # let the aborted start's monitor finish, so that the caller (or a retry) can start again
            self.cgroups.settle(parent, name)
            raise VzError('%s%s' % (exc, ('; LXC log: ' + tail) if tail else ''), **exc.details)
        self.after_start(meta)

    def after_start(self, meta):
        """What a started VE gets besides its config: network shaping and the anti-spoofing guard of
        its links (idempotent). Its cgroup limits are in its config, which LXC applies at start."""
        self.net.after_start(meta)

    def stop(self, name, timeout=None):
        """Shut a running VE down cleanly (its init gets the halt signal); killed after ``timeout`` s."""
        self.client.stop(name, self.stop_timeout if timeout is None else timeout)

    def kill(self, name):
        """Stop a VE at once, without a clean shutdown."""
        self.client.kill(name)

    def freeze(self, name):
        """Freeze every process of a running VE (cgroup freezer)."""
        self.client.freeze(name)

    def unfreeze(self, name):
        """Thaw a frozen VE."""
        self.client.unfreeze(name)

    # -- registration ---------------------------------------------------------------------
    def write_registration(self, name, meta, config):
        """Write a VE's LXC config (the owned entries ``config``; other keys are kept) and ve.json.

        Each file is replaced atomically (temporary file, fsync, rename), config first: a VE is
        listed (``names``) by its ve.json, and a kill between the two leaves the old ve.json beside
        a config that the next run rewrites.
        """
        directory = self.host.ve_dir(name)
        path = os.path.join(directory, 'config')
        cfg = LxcConfig.load(path) if os.path.exists(path) else LxcConfig()
        cfg.replace_owned(is_owned, config)
        cfg.save(path)
        write_json(os.path.join(directory, 've.json'), meta)

    def register(self, meta, manifest):
        """Register a VE whose private area was put in place from elsewhere (a migration's copy, a
        restored backup): write its config from ``meta`` and ``manifest`` (its template version,
        published on this host) and its ve.json. The private area is not touched.

        ``<vz_root>/ves/<name>/private`` must exist. Neither the address leases
        (``claim_addresses``) nor the disk quota (``_quota.apply_quota``) are set here. Returns the
        owned config entries written.
        """
        name = _validate.ve_name(meta.get('name'))
        private = os.path.join(self.host.ve_dir(name), 'private')
        if os.path.islink(private) or not os.path.isdir(private):
            raise VzError('VE %s: %s is missing; register needs the private area in place' % (name, private))
        config = self.desired_config(meta, manifest, create=True)
        self.write_registration(name, meta, config)
        return config

    def claim_addresses(self, name, network):
        """Lease every address of ``network`` (a VE's interfaces as ve.json keeps them) to VE ``name``.

        Idempotent for addresses the VE holds already. An address leased to another VE raises
        VzError naming that VE, after the leases this call made are released again. Returns the
        addresses newly leased.
        """
        made = []
        try:
            for iface in network or []:
                for address in addresses_of(iface):
                    if self.net.leases.claim(name, iface['name'], address):
                        made.append(address)
        except Exception:
            if made:
                self.net.release(name, made)
            raise
        return made

    def _make_sure_stopped(self, name, meta):
        """Refuse to take away the directory of a VE whose processes still run.

        After a run was killed in the middle of ``lxc-stop``, LXC may report a VE stopped while its
        monitor and init live on: removing its directory then would leave a copy that nothing manages
        (and that a VE of the same name would run next to). Its cgroups tell: the VE is killed again
        and, if processes remain, nothing is removed.

        Only hierarchies with controllers count: after a live migration CRIU restores the VE's
        membership of a hierarchy LXC does not map (the controller-less cgroup2 of a hybrid host)
        under the path it had on the source, so on hosts that share one cgroup tree (the lab) the
        moved VE shows there under the source's parent.
        """
        parent = meta.get('cgroup_parent') or self.host.cgroup_parent
        if not self.cgroups.settle(parent, name, timeout=5.0, controllers_only=True):
            return
        try:
            self.client.kill(name)
        except VzError:
            pass   # LXC does not answer for it: the cgroups decide below
        busy = self.cgroups.settle(parent, name, timeout=10.0, controllers_only=True)
        if busy:
            raise VzError('VE %s: LXC reports it stopped, but processes of it still run (%s); nothing is removed'
                          % (name, ', '.join(busy)))

    def unregister(self, name, meta=None, keep_private=False):
        """Remove a stopped VE from this host: config, ve.json, LXC's lock file, address leases, the
        guard and shaping of its links and its stale cgroups; its private area too unless ``keep_private``.

        What the host keeps for the VE's network goes first, while the VE's directory still names it;
        without ``keep_private`` the directory is then renamed away (atomic: the VE is gone at once)
        and deleted without following links, disk quota included. A run killed before the rename
        leaves the VE for the next removal; one killed after it, only a work directory in ``.tmp``
        that the next run sweeps (``_staging``). With it, only the
        registration goes (config first, so that LXC cannot start the VE any more, then ve.json and
        running.json) and ``<name>/private`` stays for the caller; a VE directory without ve.json is
        never managed nor overwritten by osvirt.vz. ``meta``: the VE's ve.json (read when None).
        Idempotent. The caller stops the VE first.
        """
        directory = self.host.ve_dir(name)
        if meta is None:
            meta = (self.read_meta(name, broken_ok=True)
                    if os.path.isfile(os.path.join(directory, 've.json')) else None) or {}
        if keep_private:
            for filename in ('config', 've.json', 'running.json'):
                try:
                    os.unlink(os.path.join(directory, filename))
                except FileNotFoundError:
                    pass
        self._make_sure_stopped(name, meta)
        # what the VE holds on the host goes while its directory still names it: a run killed after the
        # rename below leaves nothing that nothing names any more (the work directory is swept)
        self.net.teardown(name, meta)
        if not keep_private and os.path.lexists(directory):
            trash = _staging.make(self.host.tmp_dir, 'trash-ve-%s-' % name)
            try:
                os.rename(directory, os.path.join(trash, name))
                _quota.remove_quota(self.host, dict(meta, name=name), os.path.join(trash, name, 'private'))
            finally:
                _staging.discard(trash)
        if self.client is not None:   # LXC's own lock file of the name; nothing else removes it
            self.client.forget(name)
        try:
            self.cgroups.remove_stale(meta.get('cgroup_parent') or self.host.cgroup_parent, name)
        except OSError:
            pass  # a cgroup LXC still tears down is no reason to report the removal as failed


def log_tail(path, lines=5):
    """The last ``lines`` non-empty lines of a log file in one line ('' when it cannot be read)."""
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            text = handle.read()[-4000:]
    except OSError:
        return ''
    return ' | '.join(line.strip() for line in text.splitlines()[-lines:] if line.strip())
