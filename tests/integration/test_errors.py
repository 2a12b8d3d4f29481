"""Malformed input gets a clear status, unknown ids NOT_FOUND, and nothing is half-created."""

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config

from .conftest import new_pod

pytestmark = pytest.mark.socket
UNKNOWN = "0" * 64


async def status_of(coro: object) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as err:
        await coro  # type: ignore[misc]
    return err.value.status, str(err.value.message)


async def assert_nothing_created(cli: CRIClient) -> None:
    assert not (await cli.runtime.ListPodSandbox(pb.ListPodSandboxRequest())).items
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


def _pod_with_group_only() -> pb.PodSandboxConfig:
    cfg = pod_config("x")
    cfg.linux.security_context.run_as_group.value = 1002
    return cfg


def _container_with_group_only() -> pb.ContainerConfig:
    cfg = container_config("c", "busybox")
    cfg.linux.security_context.run_as_group.value = 1002
    return cfg


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (pb.PodSandboxConfig(), "metadata is required"),
        (pod_config(""), "metadata.name must not be empty"),
        (pod_config("x", namespace=""), "metadata.namespace must not be empty"),
        (pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="x", namespace="d")), "uid"),
        (pod_config("n" * 254), "at most 253"),
        (pod_config("a/b"), "must not contain"),
        (pod_config("x", labels={"": "v"}), "empty key"),
        (pod_config("x", annotations={"k": "v" * 300_000}), "at most"),
        (pod_config("x", hostname="h" * 65), "hostname 'hhh"),
        (pod_config("x", hostname="a_b"), "not a valid host name"),
        (pod_config("x", hostname="-a"), "not a valid host name"),
        (pod_config("x", hostname="a..b"), "not a valid host name"),
        (_pod_with_group_only(), "run_as_group 1002 is set without run_as_user"),
    ],
)
async def test_bad_pod_configs(cli: CRIClient, config: pb.PodSandboxConfig, needle: str) -> None:
    code, msg = await status_of(cli.run_pod(config))
    assert code is Status.INVALID_ARGUMENT and needle in msg
    await assert_nothing_created(cli)


async def test_bad_container_configs(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)
    cases = [
        (pb.ContainerConfig(image=pb.ImageSpec(image="busybox")), "metadata is required"),
        (container_config("", "busybox"), "metadata.name must not be empty"),
        (container_config("c", ""), "image must not be empty"),
        (container_config("c" * 300, "busybox"), "at most 253"),
        (_container_with_group_only(), "run_as_group 1002 is set without run_as_user"),
    ]
    for cfg, needle in cases:
        code, msg = await status_of(cli.create_container(pod, cfg, pcfg))
        assert code is Status.INVALID_ARGUMENT and needle in msg, (cfg, msg)
    code, msg = await status_of(cli.create_container("", container_config("c", "busybox"), pcfg))
    assert code is Status.INVALID_ARGUMENT and "pod_sandbox_id" in msg
    code, msg = await status_of(
        cli.create_container(UNKNOWN, container_config("c", "busybox"), pcfg)
    )
    assert code is Status.NOT_FOUND
    code, msg = await status_of(
        cli.create_container(pod, container_config("c", "never-pulled:1"), pcfg)
    )
    assert code is Status.NOT_FOUND and "pull it first" in msg
    bad_signal = container_config("c", "busybox")
    bad_signal.stop_signal = 9999  # type: ignore[assignment]
    code, _ = await status_of(cli.create_container(pod, bad_signal, pcfg))
    assert code is Status.INVALID_ARGUMENT
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


async def test_unknown_ids(cli: CRIClient) -> None:
    r = cli.runtime
    for call in (
        r.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=UNKNOWN)),
        r.StartContainer(pb.StartContainerRequest(container_id=UNKNOWN)),
        r.ContainerStatus(pb.ContainerStatusRequest(container_id=UNKNOWN)),
        r.ExecSync(pb.ExecSyncRequest(container_id=UNKNOWN, cmd=["true"])),
        r.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=UNKNOWN)),
        r.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=UNKNOWN)),
    ):
        code, msg = await status_of(call)
        assert code is Status.NOT_FOUND and "not found" in msg
    # Stop and remove of unknown ids succeed (idempotent): kubelet retries them.
    await r.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=UNKNOWN))
    await r.StopContainer(pb.StopContainerRequest(container_id=UNKNOWN))
    await r.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=UNKNOWN))
    await r.RemoveContainer(pb.RemoveContainerRequest(container_id=UNKNOWN))


async def test_empty_ids_are_invalid(cli: CRIClient) -> None:
    r = cli.runtime
    for call in (
        r.StopPodSandbox(pb.StopPodSandboxRequest()),
        r.RemovePodSandbox(pb.RemovePodSandboxRequest()),
        r.PodSandboxStatus(pb.PodSandboxStatusRequest()),
        r.StartContainer(pb.StartContainerRequest()),
        r.RemoveContainer(pb.RemoveContainerRequest()),
        r.ContainerStatus(pb.ContainerStatusRequest()),
        r.ExecSync(pb.ExecSyncRequest(cmd=["true"])),
    ):
        code, msg = await status_of(call)
        assert code is Status.INVALID_ARGUMENT and "must not be empty" in msg


async def test_ambiguous_prefix(cli: CRIClient) -> None:
    ids = [(await new_pod(cli, f"p{i}"))[0] for i in range(40)]
    firsts = [i[0] for i in ids]
    common = next(c for c in firsts if firsts.count(c) > 1)
    code, msg = await status_of(
        cli.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=common))
    )
    assert code is Status.INVALID_ARGUMENT and "ambiguous" in msg
    r = await cli.runtime.ListPodSandbox(
        pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(id=common))
    )
    assert not r.items  # as containerd: an ambiguous id filter matches nothing


async def test_unknown_runtime_handler(cli: CRIClient) -> None:
    code, msg = await status_of(
        cli.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=pod_config("x"), runtime_handler="kata")
        )
    )
    assert code is Status.INVALID_ARGUMENT and "'kata' is not configured" in msg
    await assert_nothing_created(cli)


async def test_wrong_state_transitions(cli: CRIClient) -> None:
    pod, pcfg = await new_pod(cli)
    cid = await cli.create_container(
        pod, container_config("c", "busybox", command=["sleep", "infinity"]), pcfg
    )
    await cli.start_container(cid)
    code, _ = await status_of(cli.start_container(cid))
    assert code is Status.FAILED_PRECONDITION
    code, msg = await status_of(cli.exec_sync(cid, []))
    assert code is Status.INVALID_ARGUMENT and "cmd must not be empty" in msg


@pytest.mark.parametrize(
    "rpc",
    ["CheckpointContainer", "CheckpointPod", "RestorePod"],
)
async def test_not_yet_implemented_rpcs_say_so(cli: CRIClient, rpc: str) -> None:
    method = getattr(cli.runtime, rpc)
    request = getattr(pb, f"{rpc}Request")()
    if rpc.startswith("Stream"):

        async def drain() -> None:
            async with method.open() as stream:
                await stream.send_message(request, end=True)
                async for _ in stream:
                    pass

        with pytest.raises(GRPCError) as err:
            await drain()
    else:
        with pytest.raises(GRPCError) as err:
            await method(request)
    assert err.value.status is Status.UNIMPLEMENTED
    # Checkpoint/restore say why CRIU cannot work here (from `criu check`).
    assert "needs CRIU: " in str(err.value.message)


async def test_pod_resources_on_the_fake_backend_are_unimplemented(cli: CRIClient) -> None:
    pod, _ = await new_pod(cli)
    code, msg = await status_of(
        cli.runtime.UpdatePodSandboxResources(
            pb.UpdatePodSandboxResourcesRequest(
                pod_sandbox_id=pod, resources=pb.LinuxContainerResources(cpu_shares=2)
            )
        )
    )
    assert code is Status.UNIMPLEMENTED and "no pod-level resources" in msg
