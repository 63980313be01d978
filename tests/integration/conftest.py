"""Fixtures for osvirt.vz integration tests: real ansible-playbook runs, real LXC, the lab.

Fixtures
--------
``run_playbook(playbook, inventory=None, extra_vars=None, check=False, diff=False,
expect_fail=False, limit=None, timeout=900, env=None)``
    Runs ``ansible-playbook`` from the venv (results collected by the harness callback
    helpers/callback_plugins/vz_results.py, stdout stays human-readable) and returns a
    :class:`PlaybookRun`: ``rc``, ``stdout``, ``stderr``, ``hosts`` (host -> list of
    :class:`TaskResult` in play order), ``task(name, host=None)``, ``stats``.
    ``playbook`` is YAML text, a path to a playbook file, or a list of plays (Python data).
    ``inventory`` defaults to the ``localhost`` fixture's file. A run with rc != 0 fails the
    test with the failed tasks' messages unless ``expect_fail=True``; with ``expect_fail=True``
    an rc of 0 fails the test.

``localhost``
    Path of an INI inventory: localhost, connection local, /usr/bin/python3 (Debian's, which
    has pyroute2 and lxc bindings).

``lab``  (session scope)
    ``tests/lab/lab up 2`` once per session; a :class:`Lab` with ``inventory`` (path of the
    ``lab inventory`` output), ``hosts`` (``['lab1', 'lab2']``) and ``exec(host, *argv)``.
    ``lab down`` at the end unless VZ_KEEP_LAB is set. Tests using it are marked ``lab``.

``vz_root``
    A throw-away vz_root directory under /var/tmp, removed afterwards (VEs in it are stopped
    and mounts under it released first).

``four_steps(task, hosts='localhost', inventory=None, extra_vars=None, changes=True)``
    The idempotence check every module test uses; see :func:`four_steps`.

``harness``  (session scope)
    This conftest module, for fixtures of a wider scope than ``run_playbook`` (e.g.
    ``harness.PlaybookRunner(tmp_dir, localhost)``) and for tests that run ansible-playbook
    themselves (``harness._ansible_bin``, ``harness._playbook_env``, ``harness._task_results``).

``cgroup_parent``
    A cgroup parent name of this test only (``vzt-<random>``); its empty cgroup dirs are
    removed afterwards (stop the test's VEs first: fixtures that use it tear down before it).

``built_template``  (module scope)
    The busybox template, built once per test module in a throw-away vz_root under /var/tmp:
    ``(templates_dir, version)``; copy ``templates_dir`` into a test's vz_root to use it.

Plain helpers (``play``, ``sh``, ``ping``, ``remove_cgroups``, ``kill_all``,
``new_cgroup_parent`` and the ``VeStore`` base of the VE tests' contexts) are in vzlib.py,
next to this file: ``from vzlib import play, sh``.

Every test in this directory needs root and LXC (``lxc-start``), except those in
test_harness.py. Without them the tests are skipped with the reason, except under CI
(env CI set), where a missing precondition fails the test instead: CI must never go
green by skipping.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from testlock import MachineTestLock
from vzlib import new_cgroup_parent, play, remove_cgroups

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS_PATH = REPO_ROOT / ".build" / "collections"
ANSIBLE_CFG = REPO_ROOT / "tests" / "ansible.cfg"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
LAB_SCRIPT = REPO_ROOT / "tests" / "lab" / "lab"
CALLBACK_PLUGINS = Path(__file__).resolve().parent / "helpers" / "callback_plugins"
HOST_PYTHON = "/usr/bin/python3"

# Test modules that need neither root nor LXC (they check the harness itself).
NO_LXC_MODULES = {"test_harness.py"}


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _missing_preconditions() -> Optional[str]:
    if os.geteuid() != 0:
        return "integration tests need root (LXC, cgroups, namespaces)"
    if shutil.which("lxc-start") is None:
        return "integration tests need LXC: lxc-start not found (run `make deps`)"
    return None


def _ansible_bin(name: str) -> str:
    path = VENV_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run `make deps` to build .venv")
    return found


# --------------------------------------------------------------------------- markers/skips


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if here not in path.parents:
            continue
        if path.name not in NO_LXC_MODULES:
            item.add_marker(pytest.mark.integration)
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


def pytest_runtest_setup(item):
    if item.get_closest_marker("integration") is None:
        return
    reason = _missing_preconditions()
    if reason is None:
        return
    if _in_ci():
        pytest.fail(f"{reason} (CI is set: refusing to skip)", pytrace=False)
    pytest.skip(reason)


# ------------------------------------------------------------------------ playbook runs


@dataclass
class TaskResult:
    """One task's result on one host, from the vz_results callback."""

    host: str
    name: str
    action: str
    changed: bool
    failed: bool
    skipped: bool
    unreachable: bool
    msg: str
    result: Dict[str, Any]

    @property
    def ok(self) -> bool:
        """Ran without failing and without changing anything."""
        return not (self.failed or self.unreachable or self.changed or self.skipped)

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        if self.skipped:
            return "skipped"
        return "changed" if self.changed else "ok"

    def __getitem__(self, key):
        return self.result[key]

    def get(self, key, default=None):
        return self.result.get(key, default)


@dataclass
class PlaybookRun:
    """Outcome of one ansible-playbook run."""

    cmd: List[str] = field(repr=False)
    rc: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)
    data: Optional[Dict[str, Any]] = field(default=None, repr=False)
    hosts: Dict[str, List[TaskResult]] = field(default_factory=dict, repr=False)

    @property
    def stats(self) -> Dict[str, Dict[str, int]]:
        return (self.data or {}).get("stats", {})

    @property
    def results(self) -> List[TaskResult]:
        """All task results of all hosts, host by host."""
        return [r for host in self.hosts for r in self.hosts[host]]

    def task(self, name: str, host: Optional[str] = None) -> TaskResult:
        """The last result of the task called ``name`` (on ``host``, or the only host)."""
        hosts = [host] if host else list(self.hosts)
        found = [r for h in hosts for r in self.hosts.get(h, []) if r.name == name]
        if not found:
            raise KeyError(f"no result for task {name!r} on {hosts}\n{self.report()}")
        if host is None and len({r.host for r in found}) > 1:
            raise KeyError(f"task {name!r} ran on several hosts; pass host=")
        return found[-1]

    def failures(self) -> List[TaskResult]:
        return [r for r in self.results if r.failed or r.unreachable]

    def report(self) -> str:
        """Human-readable summary for assertion messages."""
        lines = [f"$ {' '.join(self.cmd)}", f"rc={self.rc}"]
        for r in self.results:
            line = f"  [{r.host}] {r.status:11} {r.name}"
            if r.msg and (r.failed or r.unreachable):
                line += f": {r.msg}"
            lines.append(line)
        if self.data is None or self.failures() or self.rc != 0:
            lines += ["--- stdout ---", self.stdout[-8000:], "--- stderr ---", self.stderr[-8000:]]
        return "\n".join(lines)


def _read_results(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _task_results(data: Dict[str, Any]) -> Dict[str, List[TaskResult]]:
    hosts: Dict[str, List[TaskResult]] = {}
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            name = task.get("task", {}).get("name", "")
            for host, res in task.get("hosts", {}).items():
                loop = res.get("results") if isinstance(res.get("results"), list) else None
                failed = bool(res.get("failed")) or any(
                    isinstance(r, dict) and r.get("failed") for r in (loop or [])
                )
                msg = res.get("msg", "")
                if not msg and failed and loop:
                    msg = "; ".join(str(r.get("msg", "")) for r in loop if r.get("failed"))
                hosts.setdefault(host, []).append(
                    TaskResult(
                        host=host,
                        name=name,
                        action=res.get("action", ""),
                        changed=bool(res.get("changed")),
                        failed=failed,
                        skipped=bool(res.get("skipped")),
                        unreachable=bool(res.get("unreachable")),
                        msg=str(msg),
                        result=res,
                    )
                )
    return hosts


def _playbook_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
            "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
            # ansible-core ships no json stdout callback (ansible.posix has it): our
            # aggregate callback writes the results to VZ_RESULTS_FILE instead, and stdout
            # stays human-readable for failure reports.
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_PLUGINS),
            "ANSIBLE_CALLBACKS_ENABLED": "vz_results",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_LOCAL_TEMP": str(REPO_ROOT / ".build" / "ansible-tmp"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    if extra:
        env.update(extra)
    return env


class PlaybookRunner:
    """Callable behind the ``run_playbook`` fixture (kept as a class for reuse in fixtures)."""

    def __init__(self, workdir: Path, default_inventory: Path):
        self.workdir = workdir
        self.default_inventory = default_inventory
        self.count = 0

    def _playbook_path(self, playbook) -> Path:
        if isinstance(playbook, Path):
            return playbook
        if isinstance(playbook, (list, dict)):
            text = json.dumps(playbook if isinstance(playbook, list) else [playbook], indent=2)
        elif "\n" not in playbook and Path(playbook).is_file():
            return Path(playbook)
        else:
            text = playbook
        self.count += 1
        path = self.workdir / f"playbook-{self.count}.yml"
        path.write_text(text)
        return path

    def __call__(
        self,
        playbook,
        inventory=None,
        extra_vars: Optional[Dict[str, Any]] = None,
        check: bool = False,
        diff: bool = False,
        expect_fail: bool = False,
        limit: Optional[str] = None,
        timeout: int = 900,
        env: Optional[Dict[str, str]] = None,
    ) -> PlaybookRun:
        path = self._playbook_path(playbook)
        cmd = [_ansible_bin("ansible-playbook"), "-i", str(inventory or self.default_inventory)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if limit:
            cmd += ["--limit", limit]
        cmd.append(str(path))
        self.count += 1
        results_file = self.workdir / f"results-{self.count}.json"
        results_file.unlink(missing_ok=True)
        env = dict(env or {}, VZ_RESULTS_FILE=str(results_file))
        proc = subprocess.run(
            cmd,
            cwd=str(self.workdir),
            env=_playbook_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,  # rc is judged below, with the results in the message
        )
        data = _read_results(results_file)
        run = PlaybookRun(
            cmd=cmd,
            rc=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            data=data,
            hosts=_task_results(data) if data else {},
        )
        if expect_fail:
            assert run.rc != 0, f"playbook was expected to fail but succeeded\n{run.report()}"
        else:
            assert run.rc == 0, f"playbook failed\n{run.report()}"
            assert data is not None, f"no results from the vz_results callback\n{run.report()}"
        return run


@pytest.fixture(scope="session", autouse=True)
def machine_test_lock():
    """Hold the machine's test lock for the whole session (see testlock.py): another run of
    integration tests, molecule or a benchmark on this machine waits until this one is done."""
    if os.geteuid() != 0:
        yield None
        return
    with MachineTestLock(who="integration tests") as lock:
        yield lock


# What the osvirt.vz.host role gives root on a VE host (host_subid_start / host_subid_count).
SUBID_LINE = "root:100000:65536"


@pytest.fixture(scope="session", autouse=True)
def ve_host_subids():
    """This machine is the VE host of every test that runs on localhost: give root the
    subordinate id range of unprivileged VEs, as the host role does, before the first test.

    A new machine has no such line, and without it every VE made on localhost is refused ("no
    subordinate id range"). Before this fixture, the tests that ran first failed on a new machine
    and those after the first host-role run (which writes the line into the machine's /etc, shared
    by the lab hosts) passed: a run on a machine that ran everything before could not see it.
    test_ve_bad_input hides the files to test the refusal itself.
    """
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        text = path.read_text() if path.exists() else ""
        if SUBID_LINE not in text.splitlines():
            path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + SUBID_LINE + "\n")
            path.chmod(0o644)


@pytest.fixture(scope="session")
def localhost(tmp_path_factory) -> Path:
    """INI inventory with localhost only (connection local, Debian's python3)."""
    path = tmp_path_factory.mktemp("inventory") / "localhost.ini"
    path.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n"
    )
    return path


@pytest.fixture
def run_playbook(tmp_path, localhost) -> PlaybookRunner:
    return PlaybookRunner(tmp_path, localhost)


# ----------------------------------------------------------------------------- four steps


@dataclass
class FourSteps:
    """Results of a four-step check, per host: [check, real, real again, check again]."""

    run: PlaybookRun
    steps: Dict[str, List[TaskResult]]


STEP_NAMES = ("1 check mode", "2 real run", "3 real run again", "4 check mode again")


@pytest.fixture
def four_steps(run_playbook, localhost):
    """Run one task four times and assert that it is idempotent and honest in check mode.

    Usage::

        def test_template_busybox(four_steps, vz_root):
            four_steps(f'''
                osvirt.vz.template:
                  name: busybox
                  source: {{type: busybox}}
                  vz_root: {vz_root}
            ''')

        def test_on_the_lab(four_steps, lab):
            four_steps(task_yaml, hosts="vz_hosts", inventory=lab.inventory)

    ``task`` is the YAML text of ONE task (a mapping, no leading ``-``) or a dict. It runs,
    in one playbook with ``--diff``, as:

    1. check mode        -> must report changed (and change nothing)
    2. real run          -> must report changed (proves step 1 changed nothing)
    3. real run again    -> must report ok, changed=false (idempotent)
    4. check mode again  -> must report ok, changed=false (check mode agrees with reality)

    This is the pattern of community.crypto's luks_device tests. With ``changes=False`` all
    four steps must report ok (for a task that should already be satisfied).
    Returns a :class:`FourSteps`; ``steps[host]`` holds the four :class:`TaskResult` for
    further asserts (e.g. that step 1's ``diff`` matches step 2's).
    """

    def _four_steps(task, hosts="localhost", inventory=None, extra_vars=None, changes=True):
        body = yaml.safe_load(task) if isinstance(task, str) else dict(task)
        if not isinstance(body, dict):
            raise ValueError("four_steps: task must be one task mapping (no leading '-')")
        if "check_mode" in body or "name" in body and body["name"] in STEP_NAMES:
            raise ValueError("four_steps sets check_mode and name itself")
        title = body.pop("name", None)
        tasks = []
        for step, check in zip(STEP_NAMES, (True, False, False, True)):
            t = {"name": step, "check_mode": check}
            t.update(body)
            tasks.append(t)
        run = run_playbook(play(tasks, hosts), inventory=inventory or localhost, extra_vars=extra_vars,
                           diff=True)
        want = ("changed", "changed", "ok", "ok") if changes else ("ok",) * 4
        steps = {}
        for host, results in run.hosts.items():
            by_step = {r.name: r for r in results}
            got = [by_step[s] for s in STEP_NAMES if s in by_step]
            statuses = tuple(r.status for r in got)
            assert statuses == want, (
                f"four steps on {host}{' (' + title + ')' if title else ''}: "
                f"expected {want}, got {statuses}\n{run.report()}"
            )
            steps[host] = got
        assert steps, f"four steps ran on no host (hosts={hosts!r})\n{run.report()}"
        return FourSteps(run=run, steps=steps)

    return _four_steps


# ---------------------------------------------------------------------------------- vz_root


def _release_vz_root(root: Path) -> None:
    """Stop VEs under root and unmount everything below it, so removal cannot cross into
    a template's lower layer through a still-mounted overlay."""
    lxcpath = root / "ves"
    if lxcpath.is_dir() and shutil.which("lxc-ls"):
        names = subprocess.run(
            ["lxc-ls", "-1", "-P", str(lxcpath), "--running"],
            capture_output=True, text=True, check=False,
        ).stdout.split()
        for name in names:
            subprocess.run(["lxc-stop", "-k", "-P", str(lxcpath), "-n", name], check=False,
                           capture_output=True)
    # VEs that go with the store, not through state=absent, leave their anti-spoofing chains
    # (a netdev chain outlives its link): remove them too
    for meta in lxcpath.glob("*/ve.json"):
        try:
            network = json.loads(meta.read_text()).get("network") or []
        except (OSError, ValueError):
            continue
        for iface in network:
            if isinstance(iface, dict) and iface.get("host_link"):
                subprocess.run(["nft", "delete", "chain", "netdev", "osvirt_vz_guard", "ve_" + iface["host_link"]],
                               check=False, capture_output=True)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == str(root) or mnt.startswith(str(root) + "/"):
                mounts.append(mnt)
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)


@pytest.fixture
def vz_root():
    """A throw-away vz_root under /var/tmp (not /tmp: it may be a small tmpfs, and overlayfs
    upper dirs cannot live on some of them), removed after the test."""
    root = Path(tempfile.mkdtemp(prefix="vz-test-", dir="/var/tmp"))
    try:
        yield root
    finally:
        _release_vz_root(root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


# ---------------------------------------------------- shared by the VE and template tests

# This module as imported by pytest (its name is not unique: tests/conftest.py is a
# "conftest" too, so look it up now, while it is the one being executed).
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture(scope="session")
def harness():
    """This conftest module (PlaybookRunner, _playbook_env, ...) for wider-scoped fixtures."""
    return _THIS_MODULE


@pytest.fixture
def cgroup_parent():
    """A cgroup parent of this test only; its (empty) cgroup dirs are removed afterwards."""
    parent = new_cgroup_parent()
    yield parent
    remove_cgroups(parent)


@pytest.fixture(scope="module")
def built_template(tmp_path_factory, localhost):
    """The busybox template, built once for this module: (templates dir, version)."""
    root = Path(tempfile.mkdtemp(prefix="vz-test-tpl-", dir="/var/tmp"))
    try:
        runner = PlaybookRunner(tmp_path_factory.mktemp("tpl"), localhost)
        template = {"name": "busybox", "vz_root": str(root)}
        run = runner(play([{"name": "template", "osvirt.vz.template": template}]))
        yield root / "templates", run.task("template")["template"]["version"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -------------------------------------------------------------------------------------- lab


@dataclass
class Lab:
    inventory: Path
    hosts: List[str]

    def exec(self, host: str, *argv: str, check: bool = True, timeout: int = 300):
        """Run argv inside lab host ``host`` (``lab exec host -- argv``)."""
        return subprocess.run(
            [str(LAB_SCRIPT), "exec", host, "--", *argv],
            capture_output=True, text=True, check=check, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _lab(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(LAB_SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`lab {' '.join(args)}` failed with rc={proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def _inventory_hosts(ini: str, group: str = "vz_hosts") -> List[str]:
    hosts, current = [], None
    for line in ini.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == group:
            hosts.append(line.split()[0])
    return hosts


LAB_SIZE = 2


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """Two simulated hosts (lab1, lab2) for the whole session; see tests/lab/lab."""
    reason = _missing_preconditions() or (
        None if os.access(LAB_SCRIPT, os.X_OK) else f"{LAB_SCRIPT} is missing or not executable"
    )
    if reason:
        if _in_ci():
            pytest.fail(f"lab: {reason} (CI is set: refusing to skip)", pytrace=False)
        pytest.skip(f"lab: {reason}")
    _lab("up", str(LAB_SIZE))
    try:
        ini = _lab("inventory").stdout
        path = tmp_path_factory.mktemp("lab") / "inventory.ini"
        path.write_text(ini)
        hosts = _inventory_hosts(ini)
        assert hosts, f"`lab inventory` lists no host in group vz_hosts:\n{ini}"
        yield Lab(inventory=path, hosts=hosts)
    finally:
        if not os.environ.get("VZ_KEEP_LAB"):
            _lab("down")
