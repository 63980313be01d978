# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testinfra checks of the osvirt.vz.patch role on lab hosts (molecule scenario ``patch``)."""

from __future__ import annotations

import json

testinfra_hosts = ['ansible://vz_hosts']

VZ_ROOT = '/var/lib/vz'
VES = ('patch-web1', 'patch-web2')


def _versions(host):
    listing = host.check_output('ls %s/templates/busybox' % VZ_ROOT).split()
    return sorted(v for v in listing if v[:1].isdigit())


def _record(host):
    return json.loads(host.file(VZ_ROOT + '/patches/busybox/molecule-1.json').content_string)


def _attach(host, ve, *argv):
    return host.run('lxc-attach -P %s/ves -n %s -- %s' % (VZ_ROOT, ve, ' '.join(argv)))


def test_one_new_version_on_every_host(host):
    versions = _versions(host)
    assert len(versions) == 2, versions


def test_version_built_once_and_recorded_on_the_build_host(host):
    if host.backend.get_hostname() != 'lab1':
        assert not host.file(VZ_ROOT + '/patches/busybox/molecule-1.json').exists
        return
    record = _record(host)
    assert record['version'] == _versions(host)[-1] and record['base'] == _versions(host)[0]


def test_new_version_is_a_layer_on_the_old_one(host):
    old, new = _versions(host)
    manifest = json.loads(host.file('%s/templates/busybox/%s/manifest.json' % (VZ_ROOT, new)).content_string)
    assert manifest['parent'] == 'busybox@' + old


def test_every_ve_runs_on_the_new_version(host):
    new = _versions(host)[-1]
    for ve in VES:
        meta = json.loads(host.file('%s/ves/%s/ve.json' % (VZ_ROOT, ve)).content_string)
        assert meta['template'] == 'busybox@' + new, ve
        assert host.run('lxc-info -P %s/ves -n %s -sH' % (VZ_ROOT, ve)).stdout.strip() == 'RUNNING'


def test_the_upgrade_runs_inside_every_ve(host):
    for ve in VES:
        assert _attach(host, ve, 'cat', '/www/index.html').stdout.strip() == 'molecule-1'
        answer = _attach(host, ve, 'wget', '-q', '-O', '-', 'http://127.0.0.1:8080/')
        assert answer.rc == 0 and answer.stdout.strip() == 'molecule-1', answer.stderr
