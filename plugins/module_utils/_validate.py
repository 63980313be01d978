# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of names, paths and addresses, done before any path is built.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ._errors import VzError

# 1-63 lowercase letters, digits and dashes, starting with a letter, not ending with a dash.
VE_NAME_RE = re.compile(r'[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?')
# Template names also allow '.', '_' and '+' (e.g. debian-12+nginx).
TEMPLATE_NAME_RE = re.compile(r'[a-z0-9][a-z0-9._+-]{0,62}')
# A template version is a UTC time stamp: it sorts by build time.
TEMPLATE_VERSION_RE = re.compile(r'\d{8}-\d{6}')
IFNAME_RE = re.compile(r'[A-Za-z0-9_.-]{1,15}')
CGROUP_PARENT_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(?:/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}){0,7}')
HWADDR_RE = re.compile(r'[0-9a-f]{2}(?::[0-9a-f]{2}){5}')
DOMAIN_LABEL_RE = re.compile(r'[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?')
# Characters that the LXC config format or the overlay option string cannot carry.
_PATH_FORBIDDEN = re.compile(r'[\s:,\\]|[\x00-\x1f\x7f]')


def _show(value):
    """Render a bad value so that newlines and other control characters stay visible."""
    return repr(value)


def ve_name(name):
    """Return ``name`` if it is a valid VE name, else raise VzError."""
    if not isinstance(name, str) or not VE_NAME_RE.fullmatch(name):
        raise VzError(
            'invalid VE name %s: use 1-63 lowercase letters, digits and dashes, starting with a '
            'letter and not ending with a dash' % _show(name))
    return name


def owner(ve, meta, require_owner):
    """The ``require_owner`` rule of every module that changes a VE: VzError when VE ``ve`` (its
    ve.json ``meta``) belongs to another owner than ``require_owner`` (None: anyone may)."""
    if require_owner is not None and meta.get('owner') != require_owner:
        raise VzError('VE %s belongs to %s, not to %s (require_owner); nothing changed'
                      % (ve, meta.get('owner') or 'nobody', require_owner))


def template_name(name):
    """Return ``name`` if it is a valid template name, else raise VzError."""
    if not isinstance(name, str) or not TEMPLATE_NAME_RE.fullmatch(name):
        raise VzError(
            'invalid template name %s: use 1-63 lowercase letters, digits, ".", "_", "+" and "-", '
            'starting with a letter or digit' % _show(name))
    return name


def template_version(version):
    """Return ``version`` if it is a valid template version (YYYYMMDD-HHMMSS), else raise."""
    if not isinstance(version, str) or not TEMPLATE_VERSION_RE.fullmatch(version):
        raise VzError('invalid template version %s: versions look like 20261125-101500' % _show(version))
    return version


def template_ref(ref):
    """Split ``name`` or ``name@version`` into (name, version or None), validating both."""
    if not isinstance(ref, str) or not ref:
        raise VzError('invalid template %s: use "name" or "name@version"' % _show(ref))
    name, sep, version = ref.partition('@')
    template_name(name)
    if sep:
        template_version(version)
        return name, version
    return name, None


def vz_root(path):
    """Return the normalized vz_root, refusing relative paths, '/' and unusable characters."""
    if not isinstance(path, str) or not path.startswith('/'):
        raise VzError('vz_root must be an absolute path, got %s' % _show(path))
    if _PATH_FORBIDDEN.search(path):
        raise VzError('vz_root %s contains whitespace, ":", ",", "\\" or control characters' % _show(path))
    parts = [p for p in path.split('/') if p and p != '.']
    norm = '/' + '/'.join(parts)
    if norm == '/' or '..' in parts:
        raise VzError('vz_root must be a dedicated directory, not %s' % _show(path))
    return norm


def cgroup_parent(value):
    """Return a valid relative cgroup path such as ``vz`` or ``machine/vz``."""
    if not isinstance(value, str) or not CGROUP_PARENT_RE.fullmatch(value) or \
            any(part in ('.', '..') for part in value.split('/')):
        raise VzError('invalid cgroup_parent %s: use a relative cgroup path like "vz"' % _show(value))
    return value


def host_path(path, what, forbidden_root=None, must_exist=True):
    """Validate an absolute host path; refuse paths inside ``forbidden_root`` (after resolving links)."""
    if not isinstance(path, str) or not path.startswith('/'):
        raise VzError('%s must be an absolute path, got %s' % (what, _show(path)))
    if _PATH_FORBIDDEN.search(path):
        raise VzError('%s %s contains whitespace, ":", ",", "\\" or control characters' % (what, _show(path)))
    if must_exist and not os.path.exists(path):
        raise VzError('%s %s does not exist' % (what, path))
    if forbidden_root:
        real = os.path.realpath(path)
        root = os.path.realpath(forbidden_root)
        if real == root or real.startswith(root.rstrip('/') + '/') or root.startswith(real.rstrip('/') + '/'):
            raise VzError('%s %s is inside or contains vz_root %s; VEs may not mount the host\'s VE store'
                          % (what, path, forbidden_root))
    return os.path.normpath(path)


def ve_path(path, what):
    """Validate an absolute path inside a VE and return it without the leading slash."""
    if not isinstance(path, str) or not path.startswith('/'):
        raise VzError('%s must be an absolute path inside the VE, got %s' % (what, _show(path)))
    if _PATH_FORBIDDEN.search(path):
        raise VzError('%s %s contains whitespace, ":", ",", "\\" or control characters' % (what, _show(path)))
    parts = [p for p in path.split('/') if p]
    if not parts or any(p in ('.', '..') for p in parts):
        raise VzError('%s %s must name a directory below / without "." or ".."' % (what, _show(path)))
    return '/'.join(parts)


def ifname(name, what='interface name'):
    """Return a valid network interface name (1-15 characters)."""
    if not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in ('.', '..'):
        raise VzError('invalid %s %s: use 1-15 letters, digits, "_", "." or "-"' % (what, _show(name)))
    return name


def ipv4_interface(value, what):
    """Parse an IPv4 address with prefix length (10.20.0.5/24)."""
    if not isinstance(value, str) or '/' not in value:
        raise VzError('%s %s must be an IPv4 address with a prefix length, like 10.20.0.5/24' % (what, _show(value)))
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError as exc:
        raise VzError('%s %s is not a valid IPv4 address: %s' % (what, _show(value), exc))
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise VzError('%s %s is the network or broadcast address of %s' % (what, value, net))
    return iface


def ipv6_interface(value, what):
    """Parse an IPv6 address with prefix length (fd00:20::5/64)."""
    if not isinstance(value, str) or '/' not in value:
        raise VzError('%s %s must be an IPv6 address with a prefix length, like fd00:20::5/64' % (what, _show(value)))
    try:
        return ipaddress.IPv6Interface(value)
    except ValueError as exc:
        raise VzError('%s %s is not a valid IPv6 address: %s' % (what, _show(value), exc))


def ip_address(value, what):
    """Parse a plain IPv4 or IPv6 address."""
    try:
        return ipaddress.ip_address(value)
    except (ValueError, TypeError) as exc:
        raise VzError('%s %s is not a valid IP address: %s' % (what, _show(value), exc))


def domain_name(value, what):
    """Return a DNS domain name (letters, digits, dashes in dot-separated labels of 1-63)."""
    name = value[:-1] if isinstance(value, str) and value.endswith('.') else value
    if not isinstance(name, str) or not 0 < len(name) <= 253 or \
            not all(DOMAIN_LABEL_RE.fullmatch(label) for label in name.split('.')):
        raise VzError('invalid %s %s: use a domain name like example.com' % (what, _show(value)))
    return name.lower()


def ipv4_address(value, what):
    """Parse a plain IPv4 address."""
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError) as exc:
        raise VzError('%s %s is not a valid IPv4 address: %s' % (what, _show(value), exc))


def hwaddr(value, what='hwaddr'):
    """Return a lowercase unicast MAC address."""
    mac = value.lower() if isinstance(value, str) else value
    if not isinstance(mac, str) or not HWADDR_RE.fullmatch(mac):
        raise VzError('invalid %s %s: use six hex pairs like 02:16:3e:12:34:56' % (what, _show(value)))
    if int(mac[:2], 16) & 1:
        raise VzError('invalid %s %s: a multicast address cannot name an interface' % (what, value))
    return mac
