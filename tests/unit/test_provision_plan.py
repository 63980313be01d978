"""The provision role's plan after placement (_provision): one build, host-to-host copies, prune."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._provision import prune_plan, provision_plan, template_plan

V1, V2 = '20261125-101500', '20261201-080000'


def facts(templates=None, ves=None):
    return {'templates': templates or {}, 'ves': ves or {}}


def test_nobody_has_it_one_build_then_copies():
    hosts = {'h1': facts(), 'h2': facts(), 'h3': facts()}
    desired = [{'name': 'a', 'template': 'busybox'}, {'name': 'b', 'template': 'busybox'},
               {'name': 'c', 'template': 'busybox'}]
    plan = template_plan(hosts, {'a': 'h2', 'b': 'h3', 'c': 'h1'}, desired)
    assert plan['builds'] == {'h1': [{'name': 'busybox'}]}
    assert plan['copies'] == {'h2': [{'name': 'busybox', 'version': None, 'from': 'h1'}],
                              'h3': [{'name': 'busybox', 'version': None, 'from': 'h1'}]}
    assert plan['ready'] == {'h1': False, 'h2': False, 'h3': False}


def test_fleet_newest_version_is_copied_where_missing():
    hosts = {'h1': facts({'busybox': [V1]}), 'h2': facts({'busybox': [V1, V2]}), 'h3': facts()}
    desired = [{'name': 'a', 'template': 'busybox'}, {'name': 'b', 'template': 'busybox'},
               {'name': 'c', 'template': 'busybox'}]
    plan = template_plan(hosts, {'a': 'h1', 'b': 'h2', 'c': 'h3'}, desired)
    assert plan['builds'] == {}
    assert plan['copies'] == {'h1': [{'name': 'busybox', 'version': V2, 'from': 'h2'}],
                              'h3': [{'name': 'busybox', 'version': V2, 'from': 'h2'}]}
    assert plan['ready'] == {'h1': False, 'h2': True, 'h3': False}


def test_pinned_version():
    hosts = {'h1': facts({'busybox': [V1, V2]}), 'h2': facts({'busybox': [V2]})}
    plan = template_plan(hosts, {'a': 'h2'}, [{'name': 'a', 'template': 'busybox@' + V1}])
    assert plan['copies'] == {'h2': [{'name': 'busybox', 'version': V1, 'from': 'h1'}]}


def test_pinned_version_nobody_has():
    hosts = {'h1': facts({'busybox': [V2]})}
    with pytest.raises(VzError, match='template busybox@%s is used by VEs placed on h1 but no host has that version' % V1):
        template_plan(hosts, {'a': 'h1'}, [{'name': 'a', 'template': 'busybox@' + V1}])


def test_template_without_definition():
    with pytest.raises(VzError, match='template debian-12 is used by VEs placed on h1 but no host has it and '
                                      'provision_templates does not say how to build it'):
        template_plan({'h1': facts()}, {'a': 'h1'}, [{'name': 'a', 'template': 'debian-12'}])


def test_template_with_definition_is_built_with_it():
    source = {'type': 'debootstrap', 'suite': 'bookworm'}
    plan = template_plan({'h1': facts(), 'h2': facts()}, {'a': 'h2'}, [{'name': 'a', 'template': 'debian-12'}],
                         {'debian-12': {'source': source}})
    assert plan['builds'] == {'h2': [{'name': 'debian-12', 'source': source}]} and plan['copies'] == {}


def test_all_present_nothing_to_do():
    hosts = {'h1': facts({'busybox': [V1]}), 'h2': facts({'busybox': [V1]})}
    desired = [{'name': 'a', 'template': 'busybox'}, {'name': 'b', 'template': 'busybox'}]
    plan = template_plan(hosts, {'a': 'h1', 'b': 'h2'}, desired)
    assert plan['builds'] == {} and plan['copies'] == {} and plan['ready'] == {'h1': True, 'h2': True}
    assert plan['plan'] == ['templates: every host has what its VEs use']


def test_ve_without_template_needs_none():
    assert template_plan({'h1': facts()}, {'a': 'h1'}, [{'name': 'a'}])['builds'] == {}


def test_prune_only_the_owners_unlisted_ves():
    hosts = {'h1': facts(ves={'a': {'owner': 'provision'}, 'old': {'owner': 'provision'}, 'theirs': {'owner': 'ci'},
                              'nobody': {'owner': None}}),
             'h2': facts(ves={'b': {'owner': 'provision'}})}
    assert prune_plan(hosts, {'a': 'h1', 'b': 'h2'}, 'provision') == {'h1': [{'name': 'old'}], 'h2': []}
    with pytest.raises(VzError, match='prune needs an owner'):
        prune_plan(hosts, {}, '')


def test_provision_plan_joins_the_lines():
    hosts = {'h1': facts(ves={'old': {'owner': 'provision'}}), 'h2': facts()}
    result = {'placement': {'a': 'h2'}, 'plan': ['placement ...']}
    plan = provision_plan(hosts, result, [{'name': 'a', 'template': 'busybox'}], 'provision', prune=True)
    assert plan['prune'] == {'h1': [{'name': 'old'}], 'h2': []}
    assert plan['plan'] == ['placement ...', 'template busybox: built on h2',
                            'prune on h1 (owner provision, no longer listed): old']
    assert provision_plan(hosts, result, [], 'provision')['prune'] == {'h1': [], 'h2': []}
