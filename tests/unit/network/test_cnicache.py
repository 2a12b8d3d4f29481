"""The CNI attachment cache: the typed record, its JSON, and files written before the
record existed (``fixtures/cache-v1-*.json`` were written by the dict-based adapter, the
complete one during a real bridge + portmap setup)."""

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cri_async.network.cni import CNIError
from cri_async.network.cnicache import (
    CACHE_KIND,
    Attachment,
    AttachmentCache,
    decode,
    encode,
)
from cri_async.network.cniconf import NetworkConfig, result_ips

from .fakeplugins import Rig

FIXTURES = Path(__file__).parent / "fixtures"
COMPLETE = FIXTURES / "cache-v1-complete.json"
PENDING = FIXTURES / "cache-v1-pending.json"
LIVE = "/proc/self/ns/net"


def test_a_complete_v1_file_loads_into_the_record() -> None:
    entry = decode(COMPLETE.read_bytes())
    assert entry.sandbox_id == "sb-fixture"
    assert entry.netns == "/run/cri-async/ns/sb-fixture/net"
    assert entry.if_name == "eth0"
    net = entry.network
    assert (net.name, net.cni_version, net.cni_versions) == ("crit-ff4d", "1.0.0", ("1.0.0",))
    assert [p["type"] for p in net.plugins] == ["bridge", "portmap"]
    assert net.source == "/etc/cni/net.d/10-test.conflist" and net.disable_check is False
    assert entry.cni_args.endswith("K8S_POD_INFRA_CONTAINER_ID=sb-fixture;K8S_POD_UID=uid-fx")
    assert entry.runtime_config["portMappings"] == [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}
    ]
    assert entry.runtime_config["dns"]["servers"] == ["10.96.0.10"]
    assert entry.loopback_result is not None
    assert result_ips(entry.loopback_result) == ("127.0.0.1", "::1")
    assert entry.result is not None and result_ips(entry.result) == ("10.99.238.2",)
    assert entry.complete is True


def test_a_pending_v1_file_loads_without_results() -> None:
    entry = decode(PENDING.read_bytes())
    assert (entry.sandbox_id, entry.complete) == ("sb-pending", False)
    assert entry.loopback_result is None and entry.result is None
    assert entry.network.plugins[0]["sleep"] == 30  # plugin configs are kept verbatim


@pytest.mark.parametrize("fixture", [COMPLETE, PENDING], ids=["complete", "pending"])
def test_the_record_writes_back_the_same_bytes(fixture: Path) -> None:
    # Same layout, key order and indentation: a file written now reads in older versions.
    data = fixture.read_bytes()
    assert encode(decode(data)) == data


async def test_a_v1_file_on_disk_drives_teardown(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for name in ("bridge", "portmap"):
        rig.add_plugin(name)
    rig.cache.mkdir()
    shutil.copy(COMPLETE, rig.cache / "sb-fixture.json")
    cni = rig.cni()  # no configuration at all: the cache is all teardown has
    assert cni.cached() == ["sb-fixture"]
    await cni.teardown("sb-fixture", LIVE)
    calls = rig.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"], c["env"]["CNI_IFNAME"]) for c in calls] == [
        ("portmap", "DEL", "eth0"),
        ("bridge", "DEL", "eth0"),
        ("loopback", "DEL", "lo"),
    ]
    fixture = json.loads(COMPLETE.read_text())
    portmap, bridge, loopback = (c["conf"] for c in calls)
    assert portmap["prevResult"] == bridge["prevResult"] == fixture["result"]
    assert portmap["runtimeConfig"] == {"portMappings": fixture["runtimeConfig"]["portMappings"]}
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.99.238.0/24"}]]
    assert loopback["prevResult"] == fixture["loopbackResult"]
    assert {c["env"]["CNI_ARGS"] for c in calls} == {fixture["cniArgs"]}
    assert cni.cached() == []


async def test_a_pending_v1_file_is_undone_without_prev_results(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.cache.mkdir()
    doc = json.loads(PENDING.read_text())
    doc["network"]["plugins"][0].pop("sleep")
    (rig.cache / "sb-pending.json").write_text(json.dumps(doc))
    cni = rig.cni()
    with pytest.raises(CNIError, match="no CNI attachment recorded"):
        await cni.check("sb-pending", LIVE)  # nothing to check until setup completed
    await cni.teardown("sb-pending", LIVE)
    calls = rig.calls()
    assert [c["plugin"] for c in calls] == ["fakeb", "fakea", "loopback"]
    assert all("prevResult" not in c["conf"] for c in calls)
    assert cni.cached() == []


async def test_cache_files_are_private_and_listed_by_sandbox(tmp_path: Path) -> None:
    cache = AttachmentCache(tmp_path / "cache")
    assert cache.ids() == [] and await cache.load("sb1") is None
    entry = Attachment.pending("sb1", LIVE, _net(), "IgnoreUnknown=1", {})
    await cache.save(entry)
    await cache.save(Attachment.pending("sb0", LIVE, _net(), "IgnoreUnknown=1", {}))
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "cache" / "sb1.json").st_mode) == 0o600
    assert cache.ids() == ["sb0", "sb1"]
    assert await cache.load("sb1") == entry
    await cache.drop("sb1")
    await cache.drop("sb1")  # idempotent
    assert cache.ids() == ["sb0"]


def test_pending_records_only_the_negotiated_version() -> None:
    net = NetworkConfig("n", "1.0.0", ({"type": "a"},), "", False, ("1.0.0", "0.4.0"))
    entry = Attachment.pending("sb", "", net, "", {"portMappings": []})
    assert entry.network.cni_versions == ("1.0.0",)
    assert decode(encode(entry)) == entry


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"kind": "cri-async/cni-attachment/v2"}, "unknown kind 'cri-async/cni-attachment/v2'"),
        ({"kind": None}, "unknown kind None"),
        ({"network": None}, "missing 'network'"),
        ({"cniArgs": 7}, "'cniArgs' is not a JSON string"),
        ({"runtimeConfig": []}, "'runtimeConfig' is not a JSON object"),
        ({"sandboxId": None}, "missing 'sandboxId'"),
        ({"result": "x"}, "'result' is not a JSON object"),
        ({"network": {"name": "n", "cniVersion": "1.0.0", "plugins": [1]}}, "not a list of obj"),
        ({"network": {"name": "n", "plugins": []}}, "missing 'cniVersion'"),
    ],
)
async def test_an_unusable_file_is_a_clear_error(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    doc = json.loads(COMPLETE.read_text()) | change
    (tmp_path / "sb1.json").write_text(json.dumps(doc))
    with pytest.raises(CNIError, match=f"unreadable CNI cache {tmp_path}/sb1.json: .*{why}"):
        await AttachmentCache(tmp_path).load("sb1")


async def test_garbage_and_bad_ids_are_refused(tmp_path: Path) -> None:
    cache = AttachmentCache(tmp_path)
    (tmp_path / "sb1.json").write_bytes(b"\xff{")
    with pytest.raises(CNIError, match="unreadable CNI cache"):
        await cache.load("sb1")
    for bad in ("../x", "", ".hidden", "a/b"):
        with pytest.raises(CNIError, match="invalid sandbox id"):
            cache.path(bad)


def _net(version: str = "1.0.0") -> NetworkConfig:
    return NetworkConfig("net", version, ({"type": "bridge"},), "/etc/cni/net.d/n.conf", False)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
OBJECTS = st.dictionaries(st.text(max_size=8), JSON, max_size=4)


@given(
    sandbox_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
    netns=st.text(max_size=20),
    plugins=st.lists(OBJECTS.map(lambda d: {**d, "type": "p"}), min_size=1, max_size=3),
    runtime_config=OBJECTS,
    loopback=st.none() | OBJECTS,
    result=st.none() | OBJECTS,
    complete=st.booleans(),
    disable_check=st.booleans(),
)
def test_encode_decode_round_trip(
    sandbox_id: str,
    netns: str,
    plugins: list[dict[str, Any]],
    runtime_config: dict[str, Any],
    loopback: dict[str, Any] | None,
    result: dict[str, Any] | None,
    complete: bool,
    disable_check: bool,
) -> None:
    net = NetworkConfig("n", "0.4.0", tuple(plugins), "src", disable_check, ("0.4.0",))
    entry = Attachment(
        sandbox_id,
        netns,
        net,
        "IgnoreUnknown=1",
        runtime_config,
        loopback_result=loopback,
        result=result,
        complete=complete,
    )
    data = encode(entry)
    assert json.loads(data)["kind"] == CACHE_KIND
    assert decode(data) == entry


@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()))
def test_decode_of_anything_is_a_record_or_a_value_error(data: bytes) -> None:
    try:
        entry = decode(data)
    except ValueError:
        return
    assert isinstance(entry, Attachment)
