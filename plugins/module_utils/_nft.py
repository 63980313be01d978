# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nftables for osvirt.vz: whole chains replaced in one transaction, recognised by a digest.

PRIVATE: this file is internal to the osvirt.vz collection. Its functions may change or
disappear in any release; do not import them from outside the collection.

Every chain the collection owns is written by ``replace_chain``: one ``nft -f -`` transaction
that creates the table and the chain if needed, flushes the chain and adds its rules. The first
rule carries the comment ``osvirt.vz <digest>``, the digest of the chain's header and rules, so
``chain_digest`` tells whether a chain already is what we want without comparing nft's JSON
rendering of expressions (which changes between nft versions). A transaction either applies as
a whole or not at all, so a chain is never half-written.

nft is run with argv lists (the script goes to stdin), never through a shell. This file imports
nothing else of the collection, so the host role can install a copy next to the LXC hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

try:
    from ._errors import VzError  # noqa: F401  pylint: disable=unused-import
except ImportError:  # a plain module: the LXC hook's copy (osvirt_vz_nft.py), bench/
    class VzError(Exception):  # type: ignore[no-redef]
        """Stand-in for the collection's error class (same constructor); _shaping and _antispoof
        loaded next to this copy use it too."""

        def __init__(self, message, **details):
            super().__init__(message)
            self.message = message
            self.details = details

NFT_PATHS = ('/usr/sbin/nft', '/sbin/nft', '/usr/bin/nft')
COMMENT_PREFIX = 'osvirt.vz '
_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]{0,63}$')
_FAMILIES = ('ip', 'ip6', 'inet', 'arp', 'bridge', 'netdev')


class NftError(Exception):
    """nft is missing or refused a script; ``message`` says which and why."""

    def __init__(self, message, script=None, stderr=None):
        super().__init__(message)
        self.message = message
        self.script = script
        self.stderr = stderr


def nft_binary():
    """Path of the nft command, or None when nftables is not installed."""
    return next((p for p in NFT_PATHS if os.access(p, os.X_OK)), None)


def _run(args, data=None):
    binary = nft_binary()
    if binary is None:
        raise NftError('nft is not installed on this host (Debian/Ubuntu: apt-get install nftables)')
    proc = subprocess.run([binary] + list(args), input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def check_name(name, what='nft name'):
    """Return ``name`` if it can be a table or chain name unquoted; raise ``NftError`` otherwise."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise NftError('%s %r must be a letter then up to 63 letters, digits or _' % (what, name))
    return name


def _check_family(family):
    if family not in _FAMILIES:
        raise NftError('nft family %r is not one of %s' % (family, ', '.join(_FAMILIES)))
    return family


def digest(header, rules):
    """Short digest of a chain's header and rules (what ``chain_digest`` reads back)."""
    text = '\n'.join([header or ''] + list(rules))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply(script, check_only=False):
    """Run ``script`` as one nft transaction (``nft -c`` only checks it); raise ``NftError``."""
    rc, _out, err = _run(['-c', '-f', '-'] if check_only else ['-f', '-'], data=script)
    if rc != 0:
        raise NftError('nft refused the change: %s' % (err.strip() or 'exit status %d' % rc),
                       script=script, stderr=err)


def replace_chain_script(family, table, chain, header, rules):
    """The nft script that makes ``chain`` of ``table`` hold exactly ``rules`` (pure).

    ``header`` is the base chain declaration without braces (e.g. ``type filter hook ingress
    device "vz1" priority -500; policy accept;``) or None/'' for a regular chain. ``rules`` are
    rule texts; the first one written is a no-op ``counter`` carrying the digest comment.
    """
    _check_family(family)
    check_name(table, 'nft table')
    check_name(chain, 'nft chain')
    mark = digest(header, rules)
    lines = ['add table %s %s' % (family, table)]
    lines.append('add chain %s %s %s%s' % (family, table, chain, ' { %s }' % header if header else ''))
    lines.append('flush chain %s %s %s' % (family, table, chain))
    lines.append('add rule %s %s %s counter comment "%s%s"' % (family, table, chain, COMMENT_PREFIX, mark))
    lines += ['add rule %s %s %s %s' % (family, table, chain, rule) for rule in rules]
    return '\n'.join(lines) + '\n'


def replace_chain(family, table, chain, header, rules, check_only=False):
    """Make ``chain`` hold exactly ``rules`` unless it already does; return True if it changed."""
    if chain_digest(family, table, chain) == digest(header, rules):
        return False
    if not check_only:
        apply(replace_chain_script(family, table, chain, header, rules))
    return True


def list_table(family, table):
    """The JSON objects of ``table`` (``nft -j list table``), or None when there is no such table."""
    _check_family(family)
    check_name(table, 'nft table')
    rc, out, err = _run(['-j', 'list', 'table', family, table])
    if rc != 0:
        if 'No such file or directory' in err or 'does not exist' in err:
            return None
        raise NftError('nft could not list table %s %s: %s' % (family, table, err.strip()), stderr=err)
    return json.loads(out).get('nftables', [])


def chains(family, table):
    """``{chain name: {'digest': str or None, 'rules': int}}`` of a table (nft 1.0.6's JSON does
    not name the device of a netdev chain, so the digest covers the header that does)."""
    objects = list_table(family, table)
    if objects is None:
        return {}
    found = {}
    for obj in objects:
        if 'chain' in obj:
            found[obj['chain']['name']] = {'digest': None, 'rules': 0}
    for obj in objects:
        rule = obj.get('rule')
        if rule and rule.get('chain') in found:
            entry = found[rule['chain']]
            entry['rules'] += 1
            comment = rule.get('comment') or ''
            if entry['digest'] is None and comment.startswith(COMMENT_PREFIX):
                entry['digest'] = comment[len(COMMENT_PREFIX):]
    return found


def chain_digest(family, table, chain):
    """The digest comment of ``chain`` (None when the chain or the comment is missing)."""
    return (chains(family, table).get(chain) or {}).get('digest')


def delete_chain(family, table, chain, check_only=False):
    """Delete ``chain`` if it exists; return True if it did.

    The table stays, even when empty: deleting it would race with another process adding a
    chain to it between our listing and the delete, and an empty table costs nothing.
    """
    if chain not in chains(family, table):
        return False
    if not check_only:
        apply('delete chain %s %s %s\n' % (family, table, chain))
    return True
