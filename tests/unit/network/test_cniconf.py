"""CNI configuration logic: loading, choosing, request building, result reading (pure)."""

import json
from typing import Any

import pytest

from cri_async.network.cniconf import (
    DEFAULT_CONFLIST,
    CNIConfigError,
    NetworkConfig,
    cni_args,
    load_config,
    pick_config,
    plugin_stdin,
    port_mappings_arg,
    result_ips,
)

BRIDGE = {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}
PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def conflist(**over: Any) -> str:
    doc: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net", "plugins": [BRIDGE, PORTMAP]}
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not None})


def test_conflist_loads() -> None:
    net = load_config(conflist(disableCheck=True), "/etc/cni/net.d/10-net.conflist")
    assert net.name == "net" and net.cni_version == "1.0.0"
    assert [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    assert net.source == "/etc/cni/net.d/10-net.conflist" and net.disable_check is True


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "not a JSON object"),
        (conflist(name=None), "missing network name"),
        (conflist(name=""), "missing network name"),
        (conflist(name="-bad"), "invalid network name"),
        (conflist(name="a/b"), "invalid network name"),
        (conflist(plugins=[]), "no plugins"),
        (conflist(plugins={"type": "bridge"}), "no plugins"),
        (json.dumps({"cniVersion": "1.0.0", "name": "n"}), "no plugins"),
        (conflist(plugins=[{"bridge": "x"}]), "plugin without a type"),
        (conflist(plugins=["bridge"]), "not a JSON object"),
        (conflist(plugins=[{"type": "../../bin/sh"}]), "not a file name"),
        (conflist(plugins=[{"type": "b", "capabilities": ["portMappings"]}]), "capabilities"),
        (conflist(disableCheck=1), "disableCheck"),
    ],
)
def test_invalid_configs_say_why(text: str, why: str) -> None:
    with pytest.raises(CNIConfigError, match=why):
        load_config(text, "f.conflist")


def test_single_plugin_conf_is_wrapped() -> None:
    doc = {"cniVersion": "0.4.0", "name": "old", **BRIDGE}
    net = load_config(json.dumps(doc), "10-old.conf")
    assert net.name == "old" and net.cni_version == "0.4.0" and not net.disable_check
    assert net.plugins == (BRIDGE,)  # name/cniVersion left out: they are injected per call


@pytest.mark.parametrize(
    ("over", "version", "versions"),
    [
        ({"cniVersion": "1.0.0"}, "1.0.0", ("1.0.0",)),
        ({"cniVersion": "0.3.1"}, "0.3.1", ("0.3.1",)),
        ({"cniVersion": "1.1.0"}, "1.1.0", ("1.1.0",)),
        ({"cniVersion": "1.3.0"}, "1.3.0", ("1.3.0",)),  # compatible within major 1
        # cniVersions: the highest supported one wins; unsupported ones are dropped.
        (
            {"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0", "2.0.0"]},
            "1.1.0",
            ("1.1.0", "1.0.0", "0.4.0"),
        ),
        ({"cniVersion": None, "cniVersions": ["0.3.1", "1.0.0"]}, "1.0.0", ("1.0.0", "0.3.1")),
    ],
)
def test_cni_version_selection(
    over: dict[str, Any], version: str, versions: tuple[str, ...]
) -> None:
    net = load_config(conflist(**over), "x.conflist")
    assert net.cni_version == version and net.cni_versions == versions


@pytest.mark.parametrize(
    ("over", "why"),
    [
        ({"cniVersion": None}, "missing cniVersion"),
        ({"cniVersion": "2.0.0"}, "unsupported cniVersion 2.0.0"),
        ({"cniVersion": "0.2.5"}, "unsupported cniVersion"),
        ({"cniVersion": "1.0"}, "not a version"),
        ({"cniVersion": 1}, "must be a string"),
        ({"cniVersions": "1.0.0"}, "list of strings"),
    ],
)
def test_bad_cni_versions(over: dict[str, Any], why: str) -> None:
    with pytest.raises(CNIConfigError, match=why):
        load_config(conflist(**over), "x.conflist")


def test_disable_check_accepts_string_booleans() -> None:
    assert load_config(conflist(disableCheck="true"), "x").disable_check is True
    assert load_config(conflist(disableCheck="false"), "x").disable_check is False


def test_pick_first_valid_by_file_name() -> None:
    other = conflist(name="other")
    files = {
        "/etc/cni/net.d/20-b.conflist": other,
        "/etc/cni/net.d/10-a.conf": json.dumps({"cniVersion": "1.0.0", "name": "a", **BRIDGE}),
        "/etc/cni/net.d/05-readme.txt": conflist(name="notaconfig"),
    }
    net = pick_config(files)
    assert net is not None and net.name == "a" and net.source.endswith("10-a.conf")


def test_pick_skips_invalid_files_and_records_why() -> None:
    errors: list[str] = []
    files = {
        "00-broken.conflist": "{",
        "01-noname.json": conflist(name=None),
        "02-good.json": conflist(name="good"),
        "03-later.conflist": conflist(name="later"),
    }
    net = pick_config(files, errors)
    assert net is not None and net.name == "good"
    assert len(errors) == 2
    assert errors[0].startswith("00-broken.conflist: invalid JSON")
    assert "01-noname.json: missing network name" in errors[1]


def test_pick_orders_by_name_not_by_directory_path() -> None:
    files = {"/z/01-z.conflist": conflist(name="z"), "/a/02-a.conflist": conflist(name="a")}
    net = pick_config(files)
    assert net is not None and net.name == "z"


def test_pick_none() -> None:
    errors: list[str] = []
    assert pick_config({}, errors) is None and errors == []
    assert pick_config({"x.conf": "nope"}, errors) is None and len(errors) == 1


def _net(**kw: Any) -> NetworkConfig:
    base: dict[str, Any] = {
        "name": "net",
        "cni_version": "1.0.0",
        "plugins": (BRIDGE, PORTMAP),
        "source": "x",
        "disable_check": False,
    }
    base.update(kw)
    return NetworkConfig(**base)


def test_stdin_injects_name_and_version_first_plugin_has_no_prev_result() -> None:
    plugin = {**BRIDGE, "cniVersion": "0.3.1", "name": "ignored"}
    got = json.loads(plugin_stdin(_net(), plugin, None, {"portMappings": [{"hostPort": 1}]}))
    assert got["name"] == "net" and got["cniVersion"] == "1.0.0"
    assert "prevResult" not in got
    assert "runtimeConfig" not in got  # bridge declares no capabilities
    assert got["ipam"] == {"type": "host-local"} and got["bridge"] == "cni0"


def test_stdin_chains_prev_result_and_runtime_config_only_for_declared_capabilities() -> None:
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    plugin = {
        "type": "portmap",
        "capabilities": {"portMappings": True, "dns": False, "bandwidth": True},
        "runtimeConfig": {"stale": 1},
        "cni.dev/reserved": "x",
        "snat": True,
    }
    rc = {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "dns": {"servers": ["10.96.0.10"]},
        "ips": ["10.0.0.9"],
    }
    got = json.loads(plugin_stdin(_net(), plugin, prev, rc))
    assert got["prevResult"] == prev
    # dns is declared false, ips not declared, bandwidth declared but not supplied.
    assert got["runtimeConfig"] == {"portMappings": rc["portMappings"]}
    assert "capabilities" not in got and "cni.dev/reserved" not in got
    assert got["snat"] is True and got["type"] == "portmap"


def test_stdin_passes_every_declared_capability() -> None:
    plugin = {"type": "x", "capabilities": {k: True for k in ("portMappings", "dns", "ips")}}
    rc = {"portMappings": [], "dns": {"servers": ["1.1.1.1"]}, "ips": ["10.0.0.5/24"]}
    got = json.loads(plugin_stdin(_net(), plugin, None, rc))
    assert got["runtimeConfig"] == rc


def test_result_ips_ipv4_first_and_only_sandbox_interfaces() -> None:
    raw = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/x"},
        ],
        "ips": [
            {"interface": 2, "address": "fd00::5/64"},
            {"interface": 0, "address": "10.0.0.1/24"},  # the bridge's own address
            {"interface": 2, "address": "10.0.0.5/24", "gateway": "10.0.0.1"},
            {"interface": 2, "address": "10.0.1.5/24"},
            {"interface": 2, "address": "10.0.0.5/24"},
        ],
    }
    assert result_ips(raw) == ("10.0.0.5", "10.0.1.5", "fd00::5")


def test_result_ips_without_interfaces_and_old_format() -> None:
    assert result_ips({"ips": [{"address": "fd00::1/64"}, {"address": "192.0.2.3/24"}]}) == (
        "192.0.2.3",
        "fd00::1",
    )
    old = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/16"}, "ip6": {"ip": "fd00::3/64"}}
    assert result_ips(old) == ("10.1.2.3", "fd00::3")
    assert result_ips({}) == ()
    assert result_ips({"ips": [{"address": "garbage"}, "x"]}) == ()


def test_default_conflist() -> None:
    net = load_config(DEFAULT_CONFLIST, "default")
    assert net.cni_version == "1.0.0" and net.disable_check
    bridge, portmap = net.plugins
    assert bridge["type"] == "bridge" and bridge["bridge"] == "cri0"
    assert bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"]
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local" and ipam["ranges"] == [[{"subnet": "10.88.0.0/16"}]]
    assert ipam["dataDir"].startswith("/run/cri-async/cni")
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}


def test_port_mappings_arg() -> None:
    got = port_mappings_arg([(8080, 80, "TCP", ""), (0, 53, "UDP", ""), (53, 53, "UDP", "1.2.3.4")])
    assert got == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "1.2.3.4"},
    ]


def test_cni_args() -> None:
    assert cni_args({"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"}) == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"
    )
    with pytest.raises(CNIConfigError):
        cni_args({"K8S_POD_NAME": "a;b"})
