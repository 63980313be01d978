# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inventory plugin's pure logic: the one-round-trip listing of a host, its parsing, names.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.

A host is listed with ONE command: its Python runs ``LISTING_SCRIPT``, which runs the LXC
client's listing argv (``LxcClient.list_argv``) and reads every ``ves/*/ve.json`` and
``host.json``, and prints all of it as one JSON document. The controller parses the lxc-ls
text with the client's own ``parse_ls``, so the listing format lives in one place.
"""

from __future__ import annotations

import json
import re
import string

from ansible_collections.osvirt.vz.plugins.module_utils import _validate
from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import parse_ls
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

DEFAULT_NAME_FORMAT = '{ve}.{host}'
NAME_FIELDS = ('ve', 'host')

# Runs on the VE host as ``python3 -c LISTING_SCRIPT <lxc-ls argv as JSON> <vz_root>``.
# It takes no data from the controller other than those two arguments.
LISTING_SCRIPT = r'''
import json, os, subprocess, sys
argv, root = json.loads(sys.argv[1]), sys.argv[2]
ves = os.path.join(root, 'ves')
out = {'found': os.path.isdir(ves), 'ls': None, 'meta': {}, 'bad': {}, 'host': None}
if out['found']:
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, LC_ALL='C', LANG='C'))
        o, e = p.communicate()
        out['ls'] = [p.returncode, o.decode('utf-8', 'replace'), e.decode('utf-8', 'replace')]
    except OSError as exc:
        out['ls'] = [127, '', str(exc)]
    for name in sorted(os.listdir(ves)):
        try:
            with open(os.path.join(ves, name, 've.json')) as f:
                out['meta'][name] = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except (OSError, ValueError) as exc:
            out['bad'][name] = str(exc)
try:
    with open(os.path.join(root, 'host.json')) as f:
        out['host'] = json.load(f)
except (OSError, ValueError):
    pass
sys.stdout.write(json.dumps(out))
'''


def listing_argv(python, client_list_argv, vz_root):
    """The argv that lists one host's VEs in one round trip."""
    return [python, '-c', LISTING_SCRIPT, json.dumps(list(client_list_argv)), vz_root]


def parse_listing(text):
    """Parse the output of LISTING_SCRIPT into ``(ves, warnings)``.

    ``ves`` is a list of dicts (name, state, pid, template, template_name, template_version,
    addresses, network, limits, hostname, autostart, privileged, owner, created), sorted by name.
    Entries whose directory name is not a valid VE name are skipped with a warning.
    Raises VzError when the text is not a listing or lxc-ls failed.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise VzError('the VE listing is not JSON (%s): %s' % (exc, _snippet(text)))
    if not isinstance(data, dict) or 'found' not in data:
        raise VzError('the VE listing has an unexpected shape: %s' % _snippet(text))
    if not data['found']:
        return [], []
    ls = data.get('ls') or [1, '', 'no lxc-ls result']
    if ls[0] != 0:
        detail = (ls[2] or ls[1] or '').strip().splitlines()
        raise VzError('lxc-ls failed (rc=%s)%s' % (ls[0], ': ' + detail[-1] if detail else ''))
    states = parse_ls(ls[1])
    warnings = ['VE directory %s: unreadable ve.json (%s)' % (name, error)
                for name, error in sorted((data.get('bad') or {}).items())]
    ves = []
    for name, meta in sorted((data.get('meta') or {}).items()):
        if not _validate.VE_NAME_RE.fullmatch(name) or not isinstance(meta, dict):
            warnings.append('skipping %r: not a valid VE name or metadata' % (name,))
            continue
        listed = states.get(name) or {'state': 'stopped', 'pid': None}
        template = meta.get('template') if isinstance(meta.get('template'), str) else ''
        tname, _sep, tversion = template.partition('@')
        network = meta.get('network') if isinstance(meta.get('network'), list) else []
        addresses = [str(a).split('/', 1)[0] for iface in network if isinstance(iface, dict)
                     for a in (iface.get('ipv4') or [])]
        ves.append({
            'name': name,
            'state': listed['state'],
            'pid': listed['pid'],
            'template': template or None,
            'template_name': tname or None,
            'template_version': tversion or None,
            'addresses': addresses,
            'network': network,
            'limits': meta.get('limits') if isinstance(meta.get('limits'), dict) else {},
            'hostname': meta.get('hostname') or name,
            'autostart': bool(meta.get('autostart')),
            'privileged': bool(meta.get('privileged')),
            'owner': meta.get('owner'),
            'created': meta.get('created'),
        })
    return ves, warnings


def check_name_format(fmt):
    """Refuse a name format with fields other than {ve} and {host} (or with attribute/index access)."""
    if not isinstance(fmt, str) or not fmt:
        raise VzError('name_format must be a non-empty string such as %r' % DEFAULT_NAME_FORMAT)
    fields = []
    try:
        for _text, field, spec, conversion in string.Formatter().parse(fmt):
            if field is None:
                continue
            if field not in NAME_FIELDS or spec or conversion:
                raise VzError('name_format %r: use only the fields {ve} and {host}, got {%s}' % (fmt, field))
            fields.append(field)
    except ValueError as exc:
        raise VzError('name_format %r is not a valid format string: %s' % (fmt, exc))
    if 've' not in fields:
        raise VzError('name_format %r must contain {ve}' % fmt)
    return fmt


def inventory_name(fmt, ve, host):
    """The inventory host name of VE ``ve`` on host ``host``."""
    return fmt.format(ve=ve, host=host)


def group_name(prefix, value):
    """A group name usable in host patterns: every character but letters, digits and _ becomes _."""
    return prefix + re.sub(r'[^A-Za-z0-9_]', '_', str(value))


def default_groups(host, ve):
    """The groups every listed VE joins: by host, template name and state."""
    groups = [group_name('vz_host_', host), group_name('state_', ve['state'])]
    if ve.get('template_name'):
        groups.append(group_name('template_', ve['template_name']))
    return groups


def _snippet(text, size=200):
    text = text if isinstance(text, str) else repr(text)
    return text[:size] + ('...' if len(text) > size else '')
