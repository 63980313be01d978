# -*- coding: utf-8 -*-
# Copyright: osvirt developers
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the network settings of _host.Host: bridge settings files, routed pools."""

from __future__ import annotations

import json

import pytest

from ansible_collections.osvirt.vz.plugins.module_utils._errors import VzError
from ansible_collections.osvirt.vz.plugins.module_utils._host import Host, bridge_settings_path


def write_host_json(root, **settings):
    (root / "host.json").write_text(json.dumps(settings))


def test_no_settings_file_means_empty_dict_and_no_pools(tmp_path):
    host = Host(vz_root=str(tmp_path))
    assert host.bridge_settings("vzbr0") == {}
    assert host.routed_pool4 is None and host.routed_pool6 is None


def test_bridge_settings_read_back(tmp_path):
    settings = {"name": "vz-br.1", "ipv4": ["10.20.0.1/24"], "ipv6": [], "pool4": "10.20.0.0/24",
                "pool6": None, "nat": True, "uplink": None}
    path = tmp_path / "net" / "bridges" / "vz-br.1.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(settings))
    assert bridge_settings_path(str(tmp_path), "vz-br.1") == str(path)
    assert Host(vz_root=str(tmp_path)).bridge_settings("vz-br.1") == settings


@pytest.mark.parametrize("name", ["../x", "", "a/b", "x" * 16])
def test_bridge_settings_name_is_validated_before_any_path(tmp_path, name):
    with pytest.raises(VzError, match="invalid bridge name"):
        Host(vz_root=str(tmp_path)).bridge_settings(name)


def test_routed_pools_canonical(tmp_path):
    write_host_json(tmp_path, routed_pool4="10.30.0.0/24", routed_pool6="FD00:30::/64")
    host = Host(vz_root=str(tmp_path))
    assert (host.routed_pool4, host.routed_pool6) == ("10.30.0.0/24", "fd00:30::/64")


@pytest.mark.parametrize("key, value, words", [
    ("routed_pool4", "10.30.0.1/24", "routed_pool4 in .*/host.json '10.30.0.1/24' is not an IPv4 network"),
    ("routed_pool4", "fd00::/64", "is not an IPv4 network"),
    ("routed_pool6", "10.30.0.0/24", "routed_pool6 in .* is not an IPv6 network"),
    ("routed_pool6", 42, "is not an IPv6 network"),
])
def test_routed_pools_bad(tmp_path, key, value, words):
    write_host_json(tmp_path, **{key: value})
    with pytest.raises(VzError, match=words):
        Host(vz_root=str(tmp_path))
