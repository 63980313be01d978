#!/usr/bin/python
# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: template
short_description: Build, publish and remove VE templates
version_added: 0.1.0
description:
  - Templates are root file systems stored once per host in C(<vz_root>/templates/<name>/<version>) and
    shared copy-on-write by every VE built on them.
  - Every build is a new, immutable version named by its UTC build time (C(YYYYMMDD-HHMMSS)), built in
    C(<vz_root>/.tmp) and published by one rename, with a C(manifest.json) (parent, os, arch, packages,
    created, checksum, size).
  - V(present) builds the template when the host has no version of it; O(rebuild) builds a new version anyway.
author: osvirt developers (!UNKNOWN)
extends_documentation_fragment:
  - osvirt.vz._common
  - osvirt.vz._common.actions
options:
  name:
    description: Template name, 1-63 lowercase letters, digits, C(.), C(_), C(+) and C(-).
    type: str
    required: true
  state:
    description:
      - V(present) makes sure a version exists. V(absent) removes O(version), or every version; it refuses
        while a VE uses a version it would remove (as its template or a layer of it), or another template
        version is built on it, and names them; nothing is removed then.
    type: str
    choices: [present, absent]
    default: present
  version:
    description: With O(state=absent), the one version to remove.
    type: str
  source:
    description:
      - How to build the template. Only the suboptions of the chosen O(source.type) are used.
      - Every build is recorded in the manifest (C(source), C(parent), C(packages) with versions from dpkg,
        C(size), C(checksum)).
    type: dict
    default: {type: busybox}
    suboptions:
      type:
        description:
          - V(busybox) is the tiny built-in template from Debian's static busybox (init, sh, ip, udhcpc).
          - V(copy) copies a published version from another host that has it (rsync over SSH, pulled
            into C(.tmp)), verifies its manifest checksum by recomputing it, and publishes it under
            the same version id, with every missing parent. See O(source.host).
          - V(debootstrap) builds a Debian tree from a mirror (O(source.suite), O(source.mirror),
            O(source.variant), O(source.components), O(source.packages)); it always includes systemd,
            systemd-sysv, iproute2, ifupdown, python3 and ca-certificates, and boots with systemd in an
            unprivileged VE (LXC configures the VE's addresses; ifupdown brings up the loopback only).
          - V(tarball) extracts a root file system tarball from O(source.url) after checking
            O(source.sha256); absolute or C(..) member names, device nodes, members under a symbolic
            link and links that lead outside the tree are refused, naming the member.
          - V(ve) copies a stopped VE (its template layers with its private area on top, deleted
            files applied) into a flat template owned by host ids.
          - V(layer) is an application template on O(source.base); O(source.packages), O(source.files)
            and O(source.commands) run in a throw-away VE on the base (sharing the host's network, so apt
            reaches the mirror); only the difference is stored, as an overlay layer whose parent is the base.
        type: str
        choices: [busybox, debootstrap, tarball, ve, layer, copy]
        default: busybox
      suite:
        description: V(debootstrap) suite or code name; V(bookworm) when not given.
        type: str
      mirror:
        description:
          - V(debootstrap) archive URL. When not given, the Debian mirror of this host's apt sources
            (C(/etc/apt/sources.list.d/debian.sources)), else C(http://deb.debian.org/debian).
        type: str
      variant:
        description: V(debootstrap) variant; V(minbase) when not given.
        type: str
        choices: [minbase, buildd, '-']
      components:
        description: V(debootstrap) archive components; V(main) when not given.
        type: list
        elements: str
      packages:
        description:
          - V(debootstrap) extra packages (for example V(openssh-server)).
          - V(layer) packages to install with apt in the build VE.
        type: list
        elements: str
      cache_dir:
        description:
          - V(debootstrap) directory on the host that keeps the downloaded packages between builds
            (C(debootstrap --cache-dir)), for example C(/var/cache/osvirt-vz/debootstrap/bookworm-amd64).
            Without it every build downloads from the mirror.
        type: path
      url:
        description:
          - V(tarball) source, a local path or an C(http://), C(https://) or C(file://) URL. Only this
            address is fetched.
        type: str
      sha256:
        description: V(tarball) required sha256 of the tarball (64 hex digits), checked before extraction.
        type: str
      ve:
        description: V(ve) name of the stopped VE to copy.
        type: str
      base:
        description: V(layer) base template, C(name) (newest version) or C(name@version).
        type: str
      files:
        description: V(layer) files copied from the host into the template, after the packages.
        type: list
        elements: dict
        suboptions:
          src:
            description: Path of a regular file on the host.
            type: path
            required: true
          dest:
            description: Absolute path in the template.
            type: str
            required: true
          mode:
            description: Octal mode of the file in the template.
            type: str
            default: '0644'
      commands:
        description:
          - V(layer) commands run as root in the build VE after packages and files, each an argv list
            (no shell). The first that fails stops the build; nothing is published and the error names
            the command, its return code and the end of its output.
        type: list
        elements: list
      host:
        description: V(copy) address or name of the host to copy from, reached with SSH from this host.
        type: str
      user:
        description: V(copy) SSH user on O(source.host); V(root) when not given.
        type: str
      ssh_key:
        description: V(copy) private key on this (the destination) host that logs in to O(source.host).
        type: path
      port:
        description: V(copy) SSH port of O(source.host).
        type: int
      version:
        description: V(copy) version to copy; the newest on O(source.host) when not given.
        type: str
      vz_root:
        description: V(copy) data root on O(source.host); C(/var/lib/vz) when not given.
        type: str
      known_hosts:
        description: V(copy) known-hosts file for O(source.host)'s key; SSH's default when not given.
        type: path
      host_key_checking:
        description:
          - V(copy) how SSH checks O(source.host)'s key. V(accept-new) records a key it has never seen and refuses
            a changed one, V(strict) needs it in the known-hosts file, V(off) checks nothing (test labs only).
          - V(accept-new) when not given.
        type: str
        choices: [strict, accept-new, 'off']
  rebuild:
    description: Build a new version even when one exists.
    type: bool
    default: false
  prune:
    description:
      - With O(state=present), remove old versions beyond the newest O(prune.keep) after any build or copy.
      - Never the newest version, and never a version that a VE uses (as its template or a layer of it) or that
        another template version is built on; those are listed in RV(kept_in_use).
    type: dict
    suboptions:
      keep:
        description: How many of the newest versions stay, at least 1.
        type: int
        required: true
seealso:
  - module: osvirt.vz.ve
'''

EXAMPLES = r'''
- name: The tiny template (a second run changes nothing)
  osvirt.vz.template:
    name: busybox
    state: present

- name: Build a new version anyway
  osvirt.vz.template:
    name: busybox
    rebuild: true

- name: The default Debian 12 OS template (downloaded packages kept for the next build)
  osvirt.vz.template:
    name: debian-12
    source:
      type: debootstrap
      suite: bookworm
      packages: [openssh-server]
      cache_dir: /var/cache/osvirt-vz/debootstrap/bookworm-amd64

- name: An application template on top of it
  osvirt.vz.template:
    name: debian-12+web
    source:
      type: layer
      base: debian-12
      packages: [nginx-light]
      files:
        - {src: /srv/files/index.html, dest: /var/www/html/index.html, mode: "0644"}
      commands:
        - [systemctl, enable, nginx]

- name: A template from a vendor's root file system tarball
  osvirt.vz.template:
    name: vendor-os
    source:
      type: tarball
      url: /srv/images/vendor-rootfs.tar.xz
      sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef

- name: A template from a stopped VE
  osvirt.vz.template:
    name: golden-web
    source:
      type: ve
      ve: web1

- name: Copy the newest busybox version from a host that has it
  osvirt.vz.template:
    name: busybox
    source:
      type: copy
      host: 198.18.0.11
      ssh_key: /root/.ssh/id_ed25519

- name: Keep the two newest versions, remove older unused ones
  osvirt.vz.template:
    name: busybox
    prune:
      keep: 2

- name: Remove an old version no VE uses any more
  osvirt.vz.template:
    name: busybox
    version: "20261125-101500"
    state: absent
'''

RETURN = r'''
template:
  description: The template after the task.
  returned: always
  type: dict
  contains:
    name:
      description: Template name.
      type: str
    version:
      description: Newest version (null when none is left).
      type: str
    versions:
      description: Every version on the host, oldest first.
      type: list
      elements: str
    manifest:
      description: Manifest of the newest version.
      type: dict
pruned:
  description: Versions O(prune) removed (or would remove in check mode).
  returned: always
  type: list
  elements: str
kept_in_use:
  description: Old versions O(prune) keeps because something uses them, with the users (C(VE x) or C(template y@v)).
  returned: always
  type: dict
  sample: {"20261125-101500": [VE web1, VE web2]}
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._module import HOST_ARGS, host_from, run
from ansible_collections.osvirt.vz.plugins.module_utils._rsync import Remote
from ansible_collections.osvirt.vz.plugins.module_utils._template_build import build
from ansible_collections.osvirt.vz.plugins.module_utils._templates import TemplateStore


SOURCE_OPTIONS = {
    'type': {'type': 'str', 'choices': ['busybox', 'debootstrap', 'tarball', 've', 'layer', 'copy'], 'default': 'busybox'},
    'suite': {'type': 'str'},
    'mirror': {'type': 'str'},
    'variant': {'type': 'str', 'choices': ['minbase', 'buildd', '-']},
    'components': {'type': 'list', 'elements': 'str'},
    'packages': {'type': 'list', 'elements': 'str'},
    'cache_dir': {'type': 'path'},
    'url': {'type': 'str'},
    'sha256': {'type': 'str'},
    've': {'type': 'str'},
    'base': {'type': 'str'},
    'files': {'type': 'list', 'elements': 'dict', 'options': {
        'src': {'type': 'path', 'required': True},
        'dest': {'type': 'str', 'required': True},
        'mode': {'type': 'str', 'default': '0644'}}},
    'commands': {'type': 'list', 'elements': 'list'},
}

# source type copy: a published version from another host
COPY_OPTIONS = {
    'host': {'type': 'str'},
    'user': {'type': 'str'},
    'ssh_key': {'type': 'path'},
    'port': {'type': 'int'},
    'version': {'type': 'str'},
    'vz_root': {'type': 'str'},
    'known_hosts': {'type': 'path'},
    'host_key_checking': {'type': 'str', 'choices': ['strict', 'accept-new', 'off']},
}
SOURCE_OPTIONS.update(COPY_OPTIONS)


def main():
    module = AnsibleModule(
        argument_spec=dict(HOST_ARGS,
                           name={'type': 'str', 'required': True},
                           state={'type': 'str', 'choices': ['present', 'absent'], 'default': 'present'},
                           version={'type': 'str'},
                           source={'type': 'dict', 'default': {'type': 'busybox'}, 'options': SOURCE_OPTIONS},
                           rebuild={'type': 'bool', 'default': False},
                           prune={'type': 'dict', 'options': {'keep': {'type': 'int', 'required': True}}}),
        supports_check_mode=True)

    def job():
        params = module.params
        name = _validate.template_name(params['name'])
        if params['version'] is not None:
            _validate.template_version(params['version'])
            if params['state'] != 'absent':
                raise VzError('version is only used with state=absent; a build always makes a new version')
        host = host_from(module)
        store = TemplateStore(host)
        before = store.versions(name)
        actions = []
        if params['state'] == 'present' and params['source'].get('type') == 'copy':
            actions += copy_template(store, name, params['source'], module.check_mode)
        elif params['state'] == 'present':
            if not before or params['rebuild']:
                if not module.check_mode:
                    host.ensure_layout()
                source = {k: v for k, v in params['source'].items() if v is not None}
                built = build(store, name, source, check_mode=module.check_mode, if_absent=not params['rebuild'])
                if built is not None:  # None: a concurrent build published one while we waited
                    actions.append('build %s@%s' % (name, built['version']))
        else:
            doomed = [params['version']] if params['version'] else before
            doomed = [v for v in doomed if v in before]
            if doomed:
                actions += ['remove %s@%s' % (name, v)
                            for v in store.remove_unused(name, doomed, check_mode=module.check_mode)]
        pruned, kept = [], {}
        if params['prune'] is not None and params['state'] == 'present':
            planned = _predicted([], actions, name) if module.check_mode else []
            pruned, kept = store.prune(name, params['prune']['keep'], check_mode=module.check_mode, planned=planned)
            actions += ['remove %s@%s' % (name, v) for v in pruned]
        after = store.versions(name) if not module.check_mode else _predicted(before, actions, name)
        latest = after[-1] if after else None
        manifest = store.manifest(name, latest) if latest and latest in store.versions(name) else None
        result = {'changed': bool(actions), 'actions': actions, 'pruned': pruned, 'kept_in_use': kept,
                  'template': {'name': name, 'version': latest, 'versions': after, 'manifest': manifest}}
        if module._diff:
            result['diff'] = {'before': {'versions': before}, 'after': {'versions': after}}
        module.exit_json(**result)

    run(module, job)


def copy_template(store, name, source, check_mode):
    """Copy ``name`` (``source.version`` or the newest) from ``source.host``; returns the actions."""
    remote = Remote(source.get('host'), user=source.get('user') or 'root', ssh_key=source.get('ssh_key'),
                    port=source.get('port'), vz_root=source.get('vz_root'), known_hosts=source.get('known_hosts'),
                    host_key_checking=source.get('host_key_checking') or 'accept-new')
    copied = store.copy_from(name, remote, source.get('version'), check_mode=check_mode)
    return ['copy %s@%s from %s' % (cname, cversion, remote.host) for cname, cversion in copied]


def _predicted(before, actions, name):
    versions = list(before)
    for action in actions:
        verb, _sep, ref = action.partition(' ')
        ref_name, _sep, version = ref.split(' ')[0].partition('@')
        if ref_name != name:
            continue
        if verb in ('build', 'copy'):
            versions.append(version)
        elif version in versions:
            versions.remove(version)
    return sorted(versions)


if __name__ == '__main__':
    main()
