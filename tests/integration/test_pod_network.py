"""Real pods on a real CNI network: pod IPs, pod-to-pod, host-to-pod, hostPort, no leaks."""

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, NetworkSection, StateConfig
from cri_async.testing import CRIServer
from tests.support.poll import until

from . import test_cni
from .conftest import require
from .test_cni import PLUGIN_DIR, PodNet, free_port, wait_http

tnet = test_cni.tnet  # the fixture: its own bridge and subnet, torn down afterwards

pytestmark = [pytest.mark.root, pytest.mark.registry]

HTTPD = (
    "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html"
    " && exec httpd -f -p 8080 -h /www"
)


async def test_pods_on_a_bridge_network(tnet: PodNet, busybox_ref: str, tmp_path: Path) -> None:
    require("runc")
    tnet.write(tnet.conflist())
    run_root = Path(f"/run/crt{os.getpid() % 10000}n")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runc")},
        images=ImagesConfig(backend="registry"),
        network=NetworkSection(conf_dirs=[str(tnet.conf_dir)], bin_dirs=[PLUGIN_DIR]),
    )
    srv = CRIServer(tmp_path, config=cfg)
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    host_port = free_port()
    async with srv:
        cli = srv.client
        st = await cli.runtime.Status(pb.StatusRequest())
        assert {c.type: c.status for c in st.status.conditions}["NetworkReady"]
        await cli.pull(busybox_ref)
        web_cfg = pod_config("web")
        web_cfg.port_mappings.append(
            pb.PortMapping(
                protocol=pb.TCP, container_port=8080, host_port=host_port, host_ip="127.0.0.1"
            )
        )
        web = await cli.run_pod(web_cfg)
        cid = await cli.create_container(
            web, container_config("httpd", busybox_ref, command=["sh", "-c", HTTPD]), web_cfg
        )
        await cli.start_container(cid)
        status = await cli.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=web))
        ip = status.status.network.ip
        assert ip.startswith(f"10.99.{tnet.n}.")
        assert await wait_http(f"http://{ip}:8080/") == "hello-from-web\n"  # host -> pod
        assert await wait_http(f"http://127.0.0.1:{host_port}/") == "hello-from-web\n"  # hostPort

        client_cfg = pod_config("client")
        client = await cli.run_pod(client_cfg)
        c2 = await cli.create_container(
            client, container_config("c", busybox_ref, command=["sleep", "1000"]), client_cfg
        )
        await cli.start_container(c2)
        r = await cli.exec_sync(
            c2, ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc {ip} 8080"], timeout=10
        )
        assert b"hello-from-web" in r.stdout  # pod -> pod
        r = await cli.exec_sync(c2, ["cat", "/etc/hosts"], timeout=10)
        assert b"\tclient" in r.stdout

        for pod in (web, client):
            await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
            await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    tnet.assert_clean()  # no leases, veths, NAT rules or cache entries left
    shutil.rmtree(run_root, ignore_errors=True)


async def test_no_cni_config_means_network_not_ready_and_loopback_pods(
    tnet: PodNet, busybox_ref: str, tmp_path: Path
) -> None:
    require("runc")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runc")},
        images=ImagesConfig(backend="registry"),
        network=NetworkSection(conf_dirs=[str(tnet.conf_dir)], bin_dirs=[PLUGIN_DIR]),
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        st = await srv.client.runtime.Status(pb.StatusRequest())
        net = next(c for c in st.status.conditions if c.type == "NetworkReady")
        assert not net.status and net.reason == "NetworkPluginNotReady"
        tnet.write(tnet.conflist())  # an operator adds a config: ready without a restart

        async def network_ready() -> bool:
            st = await srv.client.runtime.Status(pb.StatusRequest())
            return {c.type: c.status for c in st.status.conditions}["NetworkReady"]

        await until(network_ready, timeout=10, interval=0.2, what="NetworkReady")


def host_counts(tnet: PodNet, run_root: Path) -> dict[str, int]:
    """What a leaking pod would leave behind: counted only for this test's network and run
    root, so other work on the machine cannot blur the comparison."""
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return {
        "veths_on_bridge": len(tnet.veths()),
        "nat_rules": len(tnet.nat_leftovers()),
        "leases": len(tnet.leases()),
        "mounts": sum(1 for line in mounts if f" {run_root}/" in line),
        "pod_dirs": len(list(run_root.glob("runc/default/pods/*"))),
        "bundles": len(list(run_root.glob("runc/default/containers/*"))),
    }


async def test_hundred_pod_cycles_leak_nothing(
    tnet: PodNet, busybox_ref: str, tmp_path: Path
) -> None:
    require("runc")
    tnet.write(tnet.conflist())
    run_root = Path(f"/run/crt{os.getpid() % 10000}c")
    cfg = dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="runc")},
        images=ImagesConfig(backend="registry"),
        network=NetworkSection(conf_dirs=[str(tnet.conf_dir)], bin_dirs=[PLUGIN_DIR]),
    )
    srv = CRIServer(tmp_path, config=cfg)
    srv.config = dataclasses.replace(
        srv.config,
        state=StateConfig(root=str(tmp_path / "state"), run_root=str(run_root), sync="normal"),
    )
    async with srv:
        cli = srv.client
        # One warm-up cycle creates what stays for the node's lifetime (the bridge, the
        # pin directory's own mount), so the count compares like with like.
        warm = await cli.run_pod(pod_config("warm"))
        await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=warm))
        before = host_counts(tnet, run_root)
        for i in range(100):
            pod = await cli.run_pod(pod_config(f"p{i}"))
            if i % 2:  # half of them stopped first, half removed straight away
                await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
            await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
        after = host_counts(tnet, run_root)
        assert after == before
        pinner = srv.server.pinner if srv.server else None
        assert pinner is not None and pinner.pinned() == set()
    tnet.assert_clean()
    shutil.rmtree(run_root, ignore_errors=True)
