"""The CNI adapter against fake plugins (scripts that record their calls): no root needed."""

import asyncio
import json
import os
from pathlib import Path

import pytest

from cri_async.network.cni import CNIError, PortMapping
from tests.support.poll import until
from tests.support.procs import processes_mentioning

from .fakeplugins import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


A = {"type": "fakea", "addr": "fd00::7/64", "ipam": {"type": "none"}}
B = {"type": "fakeb", "addr": "10.9.0.7/24", "capabilities": {"portMappings": True}}
LIVE = "/proc/self/ns/net"  # a real namespace path: fake plugins never touch it


async def test_setup_runs_loopback_then_chain_and_caches_before_returning(rig: Rig) -> None:
    rig.write([A, B])
    cni = rig.cni()
    res = await cni.setup(
        "sb1",
        LIVE,
        pod_name="web",
        pod_namespace="default",
        pod_uid="u-1",
        port_mappings=[PortMapping(8080, 80, "TCP"), PortMapping(0, 81, "TCP")],
    )
    assert res.ips == ("10.9.0.7", "fd00::7")  # IPv4 first although added second
    calls = rig.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"], c["env"]["CNI_IFNAME"]) for c in calls] == [
        ("loopback", "ADD", "lo"),
        ("fakea", "ADD", "eth0"),
        ("fakeb", "ADD", "eth0"),
    ]
    env = calls[1]["env"]
    assert env["CNI_CONTAINERID"] == "sb1" and env["CNI_NETNS"] == LIVE
    assert env["CNI_PATH"] == str(rig.bin)
    assert env["CNI_ARGS"] == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
        "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u-1"
    )
    assert calls[0]["conf"] == {"type": "loopback", "name": "cni-loopback", "cniVersion": "1.0.0"}
    a, b = calls[1]["conf"], calls[2]["conf"]
    assert "prevResult" not in a and "runtimeConfig" not in a
    assert b["prevResult"]["ips"] == [{"interface": 0, "address": "fd00::7/64"}]
    assert b["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert cni.cached() == ["sb1"]
    entry = json.loads((rig.cache / "sb1.json").read_text())
    assert entry["complete"] and entry["result"] == res.raw and entry["netns"] == LIVE


async def test_teardown_reverses_with_cached_result_and_is_idempotent(rig: Rig) -> None:
    rig.write([A, B])
    pm = [PortMapping(8080, 80, "udp", "127.0.0.1")]
    res = await rig.cni().setup(
        "sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u", port_mappings=pm
    )
    rig.calls()
    # A "restart": a new object, and the configuration is gone; only the cache is left.
    (rig.conf / "10-fake.conflist").unlink()
    cni = rig.cni()
    await cni.teardown("sb1", None)
    calls = rig.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls] == [
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
        ("loopback", "DEL"),
    ]
    assert calls[0]["conf"]["prevResult"] == res.raw == calls[1]["conf"]["prevResult"]
    # DEL gets the same capability arguments as ADD (portmap needs them).
    assert calls[0]["conf"]["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}
        ]
    }
    assert "runtimeConfig" not in calls[1]["conf"]
    assert all(c["env"]["CNI_NETNS"] == LIVE for c in calls)
    assert cni.cached() == []
    await cni.teardown("sb1", None)
    await cni.teardown("never-set-up", "/nonexistent")
    assert rig.calls() == []


async def test_teardown_of_a_vanished_namespace_passes_empty_netns(rig: Rig) -> None:
    rig.write([A])
    gone = str(rig.tmp / "netns-file")
    Path(gone).touch()  # a plain file: not (or no longer) a namespace
    cni = rig.cni()
    await cni.setup("sb1", gone, pod_name="p", pod_namespace="n", pod_uid="u")
    rig.calls()
    await cni.teardown("sb1", gone)
    calls = rig.calls()
    assert [c["env"]["CNI_NETNS"] for c in calls] == ["", ""]
    assert cni.cached() == []


async def test_failed_add_rolls_back_and_names_the_plugin(rig: Rig) -> None:
    rig.write([A, {**B, "fail": ["ADD"]}, {"type": "fakea"}])
    cni = rig.cni()
    with pytest.raises(CNIError) as ei:
        await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    e = ei.value
    assert str(e) == "CNI plugin fakeb failed (ADD): no luck: try later (code 11)"
    assert (e.plugin, e.command, e.code, e.msg, e.details) == (
        "fakeb",
        "ADD",
        11,
        "no luck",
        "try later",
    )
    calls = [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in rig.calls()]
    # The third plugin never ran, so it is not deleted; the failing one is (it may be half done).
    assert calls == [
        ("loopback", "ADD"),
        ("fakea", "ADD"),
        ("fakeb", "ADD"),
        ("fakeb", "DEL"),
        ("fakea", "DEL"),
        ("loopback", "DEL"),
    ]
    assert cni.cached() == []


async def test_failed_rollback_keeps_the_cache_for_a_later_teardown(rig: Rig) -> None:
    rig.write([A, {**B, "fail": ["ADD", "DEL"], "plain": True}])
    cni = rig.cni()
    with pytest.raises(CNIError, match=r"fakeb failed \(ADD\): something broke badly"):
        await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    # Best effort: the DELs after the failing one still ran.
    assert [c["env"]["CNI_COMMAND"] for c in rig.calls()][-3:] == ["DEL"] * 3
    assert cni.cached() == ["sb1"]
    with pytest.raises(CNIError, match="fakeb failed"):
        await cni.teardown("sb1", LIVE)
    # Teardown stops at the first failure (spec) and keeps the entry.
    assert [c["plugin"] for c in rig.calls()] == ["fakeb"]
    assert cni.cached() == ["sb1"]


async def test_missing_plugin_changes_nothing(rig: Rig) -> None:
    rig.write([A, {"type": "nosuchplugin"}])
    cni = rig.cni()
    await cni.reload()
    ready, reason, msg = cni.status()
    assert not ready and reason == "NetworkPluginNotReady" and "nosuchplugin" in msg
    with pytest.raises(CNIError, match=f"CNI plugin nosuchplugin not found in {rig.bin}"):
        await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    assert rig.calls() == [] and cni.cached() == []


async def test_plugin_timeout(rig: Rig) -> None:
    rig.write([{**A, "sleep": 30}])
    cni = rig.cni(timeout=0.5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(CNIError, match=r"fakea ADD timed out after 0\.5s"):
        await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    # the rollback DEL also sleeps and times out; still it is bounded
    assert loop.time() - t0 < 5
    assert cni.cached() == ["sb1"]  # kept: the DEL did not succeed


async def test_status_and_watch_pick_up_a_config_added_later(rig: Rig) -> None:
    cni = rig.cni()
    assert cni.status() == (False, "NetworkPluginNotReady", "CNI configuration not loaded")
    await cni.reload()
    assert cni.status() == (
        False,
        "NetworkPluginNotReady",
        f"no network config found in {rig.conf}",
    )
    (rig.conf / "00-bad.conflist").write_text("{")
    await cni.reload()
    assert "00-bad.conflist: invalid JSON" in cni.status()[2]
    task = asyncio.create_task(cni.watch(interval=0.05))
    try:
        rig.write([A])
        await until(lambda: cni.status()[0], what="the watcher to load the new file")
        assert cni.status() == (True, "", "")
        assert cni.network is not None and cni.network.name == "fakenet"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_setup_without_config_fails_clearly(rig: Rig) -> None:
    with pytest.raises(CNIError, match="no network config found"):
        await rig.cni().setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")


async def test_check_uses_the_cached_result_unless_disabled(rig: Rig) -> None:
    rig.write([A, B])
    cni = rig.cni()
    res = await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    rig.calls()
    await cni.check("sb1", LIVE)
    calls = rig.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls] == [
        ("loopback", "CHECK"),
        ("fakea", "CHECK"),
        ("fakeb", "CHECK"),
    ]
    assert calls[1]["conf"]["prevResult"] == calls[2]["conf"]["prevResult"] == res.raw
    with pytest.raises(CNIError, match="no CNI attachment"):
        await cni.check("other", LIVE)
    await cni.teardown("sb1", LIVE)
    rig.write([A], disableCheck=True)
    await cni.reload()
    await cni.setup("sb2", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    rig.calls()
    await cni.check("sb2", LIVE)
    assert rig.calls() == []


async def test_version_negotiation_with_cni_versions(rig: Rig) -> None:
    rig.write([A], cniVersion="0.4.0", cniVersions=["1.0.0", "1.1.0"])
    cni = rig.cni()
    await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    calls = rig.calls()
    adds = [c for c in calls if c["env"]["CNI_COMMAND"] == "ADD"]
    assert {c["conf"]["cniVersion"] for c in adds} == {"1.0.0"}  # fakes stop at 1.0.0
    assert sum(c["env"]["CNI_COMMAND"] == "VERSION" for c in calls) == 2
    # The cache records the version used, so DEL speaks it too.
    await cni.teardown("sb1", LIVE)
    assert {c["conf"]["cniVersion"] for c in rig.calls()} == {"1.0.0"}


async def test_stale_cache_entry_is_detached_before_a_new_setup(rig: Rig) -> None:
    rig.write([A])
    cni = rig.cni()
    await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    rig.calls()
    await cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in rig.calls()] == [
        ("fakea", "DEL"),
        ("loopback", "DEL"),
        ("loopback", "ADD"),
        ("fakea", "ADD"),
    ]


async def test_invalid_sandbox_id_is_refused(rig: Rig) -> None:
    rig.write([A])
    with pytest.raises(CNIError, match="invalid sandbox id"):
        await rig.cni().setup("../x", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    assert not os.path.exists(rig.tmp / "x.json")


async def test_setup_and_teardown_of_one_sandbox_are_serialized(rig: Rig) -> None:
    rig.write([{**A, "sleep": 0.3}])
    cni = rig.cni()
    setup = asyncio.create_task(
        cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    )
    await until(rig.calls_peek, what="the setup's first ADD")  # the setup holds the lock
    await cni.teardown("sb1", LIVE)  # waits for the setup, then detaches what it made
    await setup
    assert [c["env"]["CNI_COMMAND"] for c in rig.calls()] == ["ADD", "ADD", "DEL", "DEL"]
    assert cni.cached() == [] and cni._locks == {}


async def test_cancelled_setup_leaves_a_pending_entry_that_teardown_clears(rig: Rig) -> None:
    rig.write([{**A, "sleep": 30}])
    cni = rig.cni()
    setup = asyncio.create_task(
        cni.setup("sb1", LIVE, pod_name="p", pod_namespace="n", pod_uid="u")
    )
    await until(lambda: len(rig.calls_peek()) == 2, what="loopback done, fakea running")
    setup.cancel()
    with pytest.raises(asyncio.CancelledError):
        await setup
    assert cni.cached() == ["sb1"]
    entry = json.loads((rig.cache / "sb1.json").read_text())
    assert entry["complete"] is False and entry["result"] is None
    assert not processes_mentioning(str(rig.bin))  # the cancelled plugin was killed
    rig.calls()
    cached = json.loads((rig.cache / "sb1.json").read_text())
    cached["network"]["plugins"][0].pop("sleep")
    (rig.cache / "sb1.json").write_text(json.dumps(cached))
    await cni.teardown("sb1", None)
    calls = rig.calls()
    assert [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls] == [
        ("fakea", "DEL"),
        ("loopback", "DEL"),
    ]
    assert all("prevResult" not in c["conf"] for c in calls)  # no result was recorded
    assert cni.cached() == []
