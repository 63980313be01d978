"""The state machine of a VE's lifecycle."""

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._ves import _final_state, plan_transitions

CURRENT = ('absent', 'stopped', 'running', 'frozen')
EXPECTED_STATE = {'present': None, 'started': 'running', 'stopped': 'stopped', 'restarted': 'running',
                  'frozen': 'frozen', 'absent': 'absent'}


@pytest.mark.parametrize('current', CURRENT)
@pytest.mark.parametrize('desired', list(EXPECTED_STATE))
def test_every_path_reaches_the_desired_state(current, desired):
    steps, restart_required = plan_transitions(current, desired)
    final = _final_state(current, steps)
    expected = EXPECTED_STATE[desired] or ('stopped' if current == 'absent' else current)
    assert final == expected
    assert not restart_required


@pytest.mark.parametrize('current,desired', [('stopped', 'stopped'), ('running', 'started'),
                                             ('frozen', 'frozen'), ('absent', 'absent'), ('running', 'present')])
def test_nothing_to_do_when_there(current, desired):
    assert plan_transitions(current, desired) == ([], False)


@pytest.mark.parametrize('current', ['stopped', 'running', 'frozen'])
def test_restarted_always_acts(current):
    steps = plan_transitions(current, 'restarted')[0]
    assert steps[-1] == 'start'


def test_frozen_ve_is_thawed_before_stop():
    assert plan_transitions('frozen', 'stopped')[0] == ['unfreeze', 'stop']
    # killed, not shut down, when it is removed anyway; thawed first, as frozen tasks ignore SIGKILL
    assert plan_transitions('frozen', 'absent')[0] == ['unfreeze', 'kill', 'destroy']


def test_config_change_on_running_ve_needs_restart():
    steps, needed = plan_transitions('running', 'started', config_changed=True)
    assert steps == ['configure'] and needed
    steps, needed = plan_transitions('running', 'started', config_changed=True, restart=True)
    assert steps == ['configure', 'stop', 'start'] and not needed


def test_config_change_on_frozen_ve_with_restart_ends_frozen():
    steps, needed = plan_transitions('frozen', 'frozen', config_changed=True, restart=True)
    assert steps == ['configure', 'unfreeze', 'stop', 'start', 'freeze'] and not needed


def test_config_change_on_stopped_ve_applies_at_next_start():
    assert plan_transitions('stopped', 'started', config_changed=True) == (['configure', 'start'], False)
    assert plan_transitions('running', 'restarted', config_changed=True) == (['configure', 'stop', 'start'], False)
    assert plan_transitions('running', 'stopped', config_changed=True) == (['configure', 'stop'], False)


def test_config_change_ignored_when_removing():
    assert plan_transitions('running', 'absent', config_changed=True) == (['kill', 'destroy'], False)


def test_bad_state():
    with pytest.raises(VzError):
        plan_transitions('running', 'paused')
    with pytest.raises(VzError):
        plan_transitions('exploded', 'started')


def test_change_written_earlier_still_needs_restart():
    # an earlier run wrote the change without restarting: the file matches, the VE does not
    assert plan_transitions('running', 'started', config_changed=False, stale=True) == ([], True)
    assert plan_transitions('running', 'started', config_changed=False, restart=True, stale=True) == \
        (['stop', 'start'], False)
    assert plan_transitions('stopped', 'started', config_changed=False, stale=True) == (['start'], False)


def test_present_keeps_frozen_ve_frozen_after_restart():
    steps, needed = plan_transitions('frozen', 'present', config_changed=True, restart=True)
    assert steps == ['configure', 'unfreeze', 'stop', 'start', 'freeze'] and not needed
