"""Quoting of commands run in a VE: lxc-attach argv from the LXC client, and the SSH command line."""

import shlex
import subprocess

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._engine.client import LxcClient
from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError

pytest.importorskip('ansible')
from ansible_collections.osvirt.vz.plugins.plugin_utils._hostrun import HostRunner, quote_command  # noqa: E402

AWKWARD = ['plain', 'with space', "it's", 'dq"x', '$(touch /tmp/pwned)', '`id`', 'a;b', 'new\nline', '-n',
           'non-ascii éü漢', '*', '', '\\back']


def test_attach_argv_keeps_every_word():
    client = LxcClient('/var/lib/vz/ves')
    argv = client.attach_argv('web1', ['/bin/sh', '-c', 'cat > "$1"', 'sh', '/tmp/x y'],
                              env={'PATH': '/usr/bin:/bin', 'HOME': '/root'})
    assert argv == ['lxc-attach', '-P', '/var/lib/vz/ves', '-n', 'web1', '--clear-env',
                    '--set-var', 'PATH=/usr/bin:/bin', '--set-var', 'HOME=/root', '--',
                    '/bin/sh', '-c', 'cat > "$1"', 'sh', '/tmp/x y']


def test_attach_refuses_bad_environment_names():
    with pytest.raises(VzError, match='environment variable'):
        LxcClient('/v/ves').attach_argv('web1', ['true'], env={'A=B': 'x'})


def test_quote_command_round_trips_through_a_shell():
    """What the remote shell of an SSH host does with the command line: exactly argv, nothing run."""
    line = quote_command(['printf', '%s\\0'] + AWKWARD)
    assert shlex.split(line) == ['printf', '%s\\0'] + AWKWARD
    out = subprocess.run(['/bin/sh', '-c', line], capture_output=True, check=True).stdout
    assert out.split(b'\0')[:-1] == [w.encode() for w in AWKWARD]


def test_local_runner_passes_argv_unchanged(tmp_path):
    runner = HostRunner('localhost', connection='local')
    rc, out, err = runner.run(['printf', '%s\\0'] + AWKWARD)
    assert rc == 0, err
    assert out.split(b'\0')[:-1] == [w.encode() for w in AWKWARD]
    rc, out, _err = runner.run(['cat'], data=b'\x00\xffbinary')
    assert (rc, out) == (0, b'\x00\xffbinary')
    source = tmp_path / 'in'
    source.write_bytes(bytes(range(256)) * 10)
    with open(source, 'rb') as handle:
        rc, out, _err = runner.send(['cat'], handle)
    assert rc == 0 and out == source.read_bytes()
    with open(tmp_path / 'out', 'wb') as sink:
        rc, _err = runner.receive(['cat', str(source)], sink)
    assert rc == 0 and (tmp_path / 'out').read_bytes() == source.read_bytes()
    assert runner.run(['no-such-command-osvirt'])[0] == 127
