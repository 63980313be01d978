"""Waiting for a VE's init: systemd's answers over time, timeouts, failed units."""

from ansible_collections.osvirt.vz.plugins.module_utils import _boot


class FakeClient:
    """Answers ``systemctl is-system-running`` with the next word of ``states`` (the last one stays)."""

    def __init__(self, states, failed=()):
        self.states, self.failed, self.calls = list(states), list(failed), []

    def attach(self, name, argv, check=True):
        self.calls.append(argv)
        if argv[:2] == ['systemctl', 'is-system-running']:
            word = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return (0 if word == 'running' else 1), word + '\n', ''
        return 0, ''.join('%s loaded failed failed Something\n' % u for u in self.failed), ''


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _wait(client, timeout=30, init='systemd'):
    clock = Clock()
    return _boot.wait_booted(client, 'web1', init, timeout, poll=1.0, clock=clock, sleep=clock.sleep)


def test_systemd_boot_until_running():
    boot = _wait(FakeClient(['initializing', 'starting', 'starting', 'running']))
    assert boot == {'state': 'running', 'failed_units': [], 'seconds': 3.0, 'timed_out': False,
                    'method': 'systemctl'}


def test_degraded_names_the_failed_units():
    client = FakeClient(['starting', 'degraded'], failed=['systemd-tmpfiles-setup.service', 'dev-mqueue.mount'])
    boot = _wait(client)
    assert boot['state'] == 'degraded' and not boot['timed_out']
    assert boot['failed_units'] == ['systemd-tmpfiles-setup.service', 'dev-mqueue.mount']
    assert _boot.boot_error('web1', boot, 'booted', 30) is None
    assert _boot.boot_error('web1', boot, 'running', 30) == (
        'VE web1 booted degraded, not running (failed units: systemd-tmpfiles-setup.service, dev-mqueue.mount)')


def test_timeout_while_starting():
    boot = _wait(FakeClient(['starting'], failed=['a.service']), timeout=5)
    assert boot['timed_out'] and boot['state'] == 'starting' and boot['seconds'] == 5.0
    assert _boot.boot_error('web1', boot, 'booted', 5) == (
        'VE web1 did not finish booting within 5s (systemd says starting; failed units: a.service)')


def test_systemd_not_up_yet_is_waited_for():
    # right after lxc-start, systemctl cannot reach pid 1 yet: 'offline' or nothing at all
    boot = _wait(FakeClient(['', 'offline', 'running']))
    assert boot['state'] == 'running' and boot['seconds'] == 2.0


def test_an_init_that_cannot_tell_is_up_when_lxc_says_running():
    client = FakeClient(['starting'])
    boot = _wait(client, init='busybox')
    assert boot['state'] == 'running' and boot['method'] == 'lxc' and client.calls == []
    assert _boot.boot_error('web1', boot, 'running', 30) is None
