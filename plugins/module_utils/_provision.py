# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the provision role does after placement: templates to build or copy, VEs to prune.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

Pure logic, no I/O: from the host facts (osvirt.vz.host_info), the placement (_placement) and
the desired VEs it decides

- per template the VEs need, one host that builds it when no host of the fleet has it, and for
  every other host that lacks the version its VEs will use, a host to copy it from (one build,
  then host-to-host copies, instead of a build on every host);
- per host, the VEs of the role's owner that the inventory no longer lists (only with prune).
"""

from __future__ import annotations

from . import _validate
from ._errors import VzError


def _needed(desired, placement):
    """{host: {template name: set of versions or None (any: the fleet's newest)}}."""
    needs = {}
    for item in desired:
        name = item['name']
        ref = item.get('template')
        if ref is None or name not in placement:
            continue
        tname, version = _validate.template_ref(ref)
        slot = needs.setdefault(placement[name], {}).setdefault(tname, set())
        slot.add(version)
    return needs


def template_plan(host_facts, placement, desired, definitions=None):
    """Builds and copies that give every host the template versions its VEs use.

    ``definitions`` maps a template name to the osvirt.vz.template options that build it
    (``source`` and friends); a template no host has and no definition names is built with the
    module's default source only when it is ``busybox``, else refused. Returns
    ``{'builds': {host: [{name, ...options}]}, 'copies': {host: [{name, version or None, from}]},
    'ready': {host: bool}, 'plan': [lines]}`` (not ``copy``: Jinja would find dict.copy first); ``version`` None means the newest on ``from``
    (a version that host builds in this run).
    """
    definitions = definitions or {}
    have = {}
    for host, facts in host_facts.items():
        for tname, versions in ((facts or {}).get('templates') or {}).items():
            for version in versions or []:
                have.setdefault(tname, {}).setdefault(version, []).append(host)
    needs = _needed(desired, placement)
    builds, copies, lines = {}, {}, []
    builders = {}
    # decide builds first: the first host (by name) that needs a template nobody has
    for host in sorted(needs):
        for tname in sorted(needs[host]):
            if tname in have or tname in builders:
                continue
            pinned = sorted(v for v in needs[host][tname] if v)
            if pinned:
                raise VzError('template %s@%s is used by VEs placed on %s but no host has any version of %s; '
                              'build it first or drop the version' % (tname, pinned[0], host, tname))
            if tname not in definitions and tname != 'busybox':
                raise VzError('template %s is used by VEs placed on %s but no host has it and '
                              'provision_templates does not say how to build it' % (tname, host))
            builders[tname] = host
            spec = dict(definitions.get(tname) or {})
            spec['name'] = tname
            builds.setdefault(host, []).append(spec)
            lines.append('template %s: built on %s' % (tname, host))
    for host in sorted(needs):
        for tname in sorted(needs[host]):
            versions = have.get(tname, {})
            owned = [v for v, holders in versions.items() if host in holders]
            for version in sorted(needs[host][tname], key=lambda v: v or ''):
                if version is None:
                    if builders.get(tname) == host:
                        continue
                    if tname in builders:
                        copies.setdefault(host, []).append({'name': tname, 'version': None, 'from': builders[tname]})
                        lines.append('template %s: %s copies the new build from %s' % (tname, host, builders[tname]))
                        continue
                    newest = max(versions)
                    if newest in owned:
                        continue
                    source = sorted(versions[newest])[0]
                    copies.setdefault(host, []).append({'name': tname, 'version': newest, 'from': source})
                    lines.append('template %s@%s: %s copies it from %s' % (tname, newest, host, source))
                    continue
                if version in owned:
                    continue
                if version not in versions:
                    raise VzError('template %s@%s is used by VEs placed on %s but no host has that version (versions '
                                  'in the fleet: %s)' % (tname, version, host, ', '.join(sorted(versions)) or 'none'))
                source = sorted(versions[version])[0]
                copies.setdefault(host, []).append({'name': tname, 'version': version, 'from': source})
                lines.append('template %s@%s: %s copies it from %s' % (tname, version, host, source))
    ready = dict((host, host not in builds and host not in copies) for host in sorted(host_facts))
    if not lines:
        lines.append('templates: every host has what its VEs use')
    return {'builds': builds, 'copies': copies, 'ready': ready, 'plan': lines}


def prune_plan(host_facts, placement, owner):
    """{host: [{'name': ve}] of ``owner`` on it that the placement no longer lists}, every host present.

    Items, not names: the list goes to osvirt.vz.ve's ``ves`` as it is.
    """
    if not owner:
        raise VzError('prune needs an owner: only VEs of that owner are ever removed')
    prune = {}
    for host in sorted(host_facts):
        ves = (host_facts[host] or {}).get('ves') or {}
        prune[host] = [{'name': name} for name in sorted(ves)
                       if (ves[name] or {}).get('owner') == owner and placement.get(name) != host]
    return prune


def provision_plan(host_facts, placement_result, desired, owner, prune=False, definitions=None):
    """Everything the provision role acts on after placement, with readable plan lines."""
    placement = placement_result.get('placement') or {}
    templates = template_plan(host_facts, placement, desired, definitions)
    pruned = prune_plan(host_facts, placement, owner) if prune else dict((h, []) for h in sorted(host_facts))
    lines = list(placement_result.get('plan') or []) + templates['plan']
    for host in sorted(pruned):
        if pruned[host]:
            lines.append('prune on %s (owner %s, no longer listed): %s'
                         % (host, owner, ', '.join(item['name'] for item in pruned[host])))
    return {'templates': templates, 'prune': pruned, 'plan': lines}
