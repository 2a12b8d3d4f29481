from cri_async.core import model as m
from cri_async.core import serde


def _container() -> m.Container:
    cfg = m.ContainerConfig(
        metadata=m.ContainerMetadata("web", 2),
        image=m.ImageSpec("busybox", {"a": "b"}),
        command=("sh", "-c", "echo hi"),
        envs=(("A", "1"), ("B", "\udcff")),
        mounts=(
            m.Mount(
                "/data",
                "/host",
                readonly=True,
                propagation=m.Propagation.HOST_TO_CONTAINER,
                uid_mappings=(m.IDMapping(0, 1000, 1),),
                image=m.ImageSpec("img"),
            ),
        ),
        labels={"io.kubernetes.pod.name": "p"},
        resources=m.Resources(cpu_shares=2, hugepage_limits=(m.HugepageLimit("2MB", 4),)),
        security=m.ContainerSecurity(
            capabilities=m.Capabilities(add=("NET_ADMIN",)),
            run_as_user=0,
            namespaces=m.NamespaceOptions(pid=m.NamespaceMode.TARGET, target_id="x"),
            seccomp=m.SecurityProfile(m.ProfileType.LOCALHOST, "p.json"),
        ),
        stop_signal="SIGRTMIN+3",
    )
    return m.Container(
        id="c" * 64,
        sandbox_id="s" * 64,
        config=cfg,
        image_id="sha256:" + "1" * 64,
        image_ref="ref",
        created_at=123,
        state=m.ContainerState.EXITED,
        exit_code=137,
        user=m.ContainerUser(0, 0, (1, 2)),
    )


def test_container_round_trips() -> None:
    c = _container()
    assert serde.loads(m.Container, serde.dumps(c)) == c


def test_sandbox_round_trips() -> None:
    sb = m.Sandbox(
        id="s" * 64,
        config=m.SandboxConfig(
            metadata=m.PodMetadata("p", "uid", "ns", 1),
            dns=m.DNSConfig(("1.1.1.1",), ("svc",), ("ndots:5",)),
            port_mappings=(m.PortMapping(m.Protocol.UDP, 53, 5353, "127.0.0.1"),),
            security=m.SandboxSecurity(
                namespaces=m.NamespaceOptions(network=m.NamespaceMode.NODE),
                run_as_group=5,
            ),
            overhead=m.Resources(memory_limit_in_bytes=1 << 20),
        ),
        runtime_handler="runc",
        created_at=5,
        state=m.SandboxState.NOTREADY,
        network=m.NetworkStatus("10.0.0.2", ("fd00::2",)),
    )
    assert serde.loads(m.Sandbox, serde.dumps(sb)) == sb


def test_missing_keys_take_defaults_and_unknown_keys_are_ignored() -> None:
    text = '{"metadata": {"name": "n"}, "image": {"image": "i"}, "future_field": 1}'
    cfg = serde.loads(m.ContainerConfig, text)
    assert cfg == m.ContainerConfig(m.ContainerMetadata("n"), m.ImageSpec("i"))
