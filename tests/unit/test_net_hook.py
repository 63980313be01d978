# -*- coding: utf-8 -*-
"""The LXC net hook (roles/host/files/osvirt-vz-net-hook) with stand-ins for the code it imports:
what it asks of the anti-spoofing filter and of the shaping, and when a start fails."""

import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parents[2] / "roles" / "host" / "files" / "osvirt-vz-net-hook"


class Failure(Exception):
    """Stand-in for the VzError of the hook's imports."""


def load_hook():
    loader = importlib.machinery.SourceFileLoader("osvirt_vz_net_hook", str(HOOK))
    spec = importlib.util.spec_from_loader("osvirt_vz_net_hook", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def calls(monkeypatch):
    """Fake osvirt_vz_antispoof and osvirt_vz_shaping; records every call. ``fail`` makes
    ensure_filter raise for that link."""
    record = {"filter": [], "shaping": [], "gateways": [], "fail": set()}
    monkeypatch.setattr(sys, "path", list(sys.path))    # the hook puts its own directory first

    def ensure_filter(link, hwaddr, ipv4, ipv6):
        if link in record["fail"]:
            raise Failure("anti-spoofing: hwaddr %r is not six hex pairs" % hwaddr)
        record["filter"].append((link, hwaddr, ipv4, ipv6))
        return True

    def shaping(name):
        def call(link, *args, **kwargs):
            record["shaping"].append((name, link))
            return {"changed": False, "actions": []}
        return call

    def answer_gateways(link, ipv4, ipv6):
        record["gateways"].append((link, ipv4, ipv6))

    antispoof = types.SimpleNamespace(ensure_filter=ensure_filter, answer_gateways=answer_gateways, VzError=Failure)
    shaper = types.SimpleNamespace(apply_shaping=shaping("apply"), clear_shaping=shaping("clear"), VzError=Failure)
    monkeypatch.setitem(sys.modules, "osvirt_vz_antispoof", antispoof)
    monkeypatch.setitem(sys.modules, "osvirt_vz_shaping", shaper)
    return record


def ve_dir(tmp_path, limits=None):
    path = tmp_path / "ves" / "web"
    path.mkdir(parents=True)
    network = [{"name": "eth0", "host_link": "vzaa0", "hwaddr": "02:00:00:00:00:01", "ipv4": ["10.20.0.5/24"],
                "ipv6": []},
               {"name": "eth1", "host_link": "vzaa1", "hwaddr": "02:00:00:00:00:02", "ipv4": [],
                "ipv6": ["fd00::5/64"]}]
    meta = {"network": network}
    if limits:
        meta["limits"] = limits
    (path / "ve.json").write_text(json.dumps(meta))
    return path


def run(path, hook_type):
    env = {"LXC_HOOK_TYPE": hook_type, "LXC_NAME": "web", "LXC_CONFIG_FILE": str(path / "config")}
    return load_hook().main(["net-hook", "web", "lxc", hook_type], env)


def test_start_guards_every_interface_then_shapes_only_with_a_rate(tmp_path, calls):
    path = ve_dir(tmp_path)
    assert run(path, "start-host") == 0
    assert calls["filter"] == [("vzaa0", "02:00:00:00:00:01", ["10.20.0.5/24"], []),
                               ("vzaa1", "02:00:00:00:00:02", [], ["fd00::5/64"])]
    assert calls["shaping"] == [("clear", "vzaa0"), ("clear", "vzaa1")]   # no rate: leftovers only


def test_start_with_a_rate_guards_first(tmp_path, calls):
    assert run(ve_dir(tmp_path, {"net": {"rate": 8000000}}), "start-host") == 0
    assert len(calls["filter"]) == 2 and calls["shaping"] == [("apply", "vzaa0"), ("apply", "vzaa1")]


def test_a_filter_that_fails_stops_the_start_before_any_shaping(tmp_path, calls):
    calls["fail"].add("vzaa1")
    path = ve_dir(tmp_path, {"net": {"rate": 8000000}})
    assert run(path, "start-host") == 1
    assert calls["shaping"] == []
    log = (path / "lxc.log").read_text()
    assert "osvirt-vz-net-hook start-host web: vzaa1: anti-spoofing: hwaddr '02:00:00:00:00:02'" in log, log


def test_stop_keeps_the_filter_and_clears_the_shaping_of_a_rate(tmp_path, calls):
    assert run(ve_dir(tmp_path, {"net": {"rate": 8000000}}), "post-stop") == 0
    assert calls["filter"] == []
    assert calls["shaping"] == [("clear", "vzaa0"), ("clear", "vzaa1")]


def test_stop_of_a_ve_without_a_rate_touches_no_shaping(tmp_path, calls, monkeypatch):
    """Every stop of every VE with an interface runs the hook: without a rate there is nothing
    to remove, so it must not even load the shaping code (pyroute2, netlink, the host's lock)."""
    monkeypatch.setitem(sys.modules, "osvirt_vz_shaping", None)    # an import would raise ImportError
    path = ve_dir(tmp_path)
    assert run(path, "post-stop") == 0
    assert calls["filter"] == [] and calls["shaping"] == []
    assert not (path / "lxc.log").exists()


def test_without_the_guard_code_the_start_fails(tmp_path, calls, monkeypatch):
    monkeypatch.setitem(sys.modules, "osvirt_vz_antispoof", None)    # import raises ImportError
    path = ve_dir(tmp_path)
    assert run(path, "start-host") == 1
    assert "cannot load osvirt_vz_antispoof.py next to this hook" in (path / "lxc.log").read_text()
    assert run(path, "post-stop") == 0


def test_start_answers_the_gateways_of_routed_links_only(tmp_path, calls):
    path = ve_dir(tmp_path)
    meta = json.loads((path / "ve.json").read_text())
    meta["network"][1]["mode"] = "routed"
    meta["network"][1]["ipv6"] = ["fd00::5/128"]
    (path / "ve.json").write_text(json.dumps(meta))
    assert run(path, "start-host") == 0
    assert calls["gateways"] == [("vzaa1", False, True)]
    assert run(path, "post-stop") == 0
    assert calls["gateways"] == [("vzaa1", False, True)]
