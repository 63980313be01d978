"""The integration harness checks itself: playbook runs and their parsing, with no LXC."""

import pytest


def test_results_per_task(run_playbook):
    run = run_playbook(
        """
- hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: hello
    - name: run a command
      ansible.builtin.command:
        argv: [/bin/echo, out]
      changed_when: false
    - name: changed command
      ansible.builtin.command:
        argv: [/bin/true]
    - name: skipped
      ansible.builtin.debug:
        msg: never
      when: false
"""
    )
    assert run.rc == 0
    assert list(run.hosts) == ["localhost"]
    hello = run.task("say hello")
    assert hello.msg == "hello" and hello.ok and hello.action == "ansible.builtin.debug"
    out = run.task("run a command")
    assert out["stdout"] == "out" and out.ok
    assert run.task("changed command").status == "changed"
    assert run.task("skipped").status == "skipped"
    assert run.stats["localhost"]["changed"] == 1


def test_failure_is_reported(run_playbook):
    run = run_playbook(
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: boom
      ansible.builtin.fail:
        msg: it broke
""",
        expect_fail=True,
    )
    assert run.rc == 2
    boom = run.task("boom")
    assert boom.failed and boom.msg == "it broke"
    assert "it broke" in run.report()


def test_unexpected_failure_raises(run_playbook):
    with pytest.raises(AssertionError, match="it broke"):
        run_playbook(
            [{"hosts": "localhost", "gather_facts": False,
              "tasks": [{"name": "x", "ansible.builtin.fail": {"msg": "it broke"}}]}]
        )


def test_check_mode_and_extra_vars(run_playbook, tmp_path):
    target = tmp_path / "file"
    run = run_playbook(
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: write
      ansible.builtin.copy:
        dest: "{{ target }}"
        content: "x\\n"
""",
        extra_vars={"target": str(target)},
        check=True,
        diff=True,
    )
    assert run.task("write").changed
    assert "diff" in run.task("write").result
    assert not target.exists()


def test_modules_run_with_debian_python(run_playbook):
    run = run_playbook(
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: setup
      ansible.builtin.setup:
        gather_subset: [min]
"""
    )
    assert run.task("setup")["ansible_facts"]["ansible_python"]["executable"] == "/usr/bin/python3"


def test_four_steps(four_steps, tmp_path):
    target = tmp_path / "four"
    result = four_steps(
        f"""
ansible.builtin.copy:
  dest: {target}
  content: "four\\n"
"""
    )
    assert target.read_text() == "four\n"
    steps = result.steps["localhost"]
    assert [s.status for s in steps] == ["changed", "changed", "ok", "ok"]


def test_four_steps_catches_non_idempotent_task(four_steps):
    with pytest.raises(AssertionError, match="expected"):
        four_steps("ansible.builtin.command: /bin/true")


def test_collection_is_found(run_playbook):
    run = run_playbook(
        """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: collection path
      ansible.builtin.command:
        argv: [ansible-galaxy, collection, list, osvirt.vz, --format, json]
      delegate_to: localhost
      changed_when: false
""",
        env={"ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3"},
    )
    assert "osvirt.vz" in run.task("collection path")["stdout"]
