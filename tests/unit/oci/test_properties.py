"""Properties of whole specs over generated configurations."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cri_async.core.model import (
    Capabilities,
    Mount,
    NamespaceMode,
    ProfileType,
    Propagation,
    Resources,
    SecurityProfile,
)
from cri_async.oci import SpecError
from cri_async.oci.defaults import ALL_CAPABILITIES
from cri_async.oci.mounts import clean

from .builders import HOST, HOST_NET_POD, IMAGE, POD, build, container, ns, sandbox

keys = st.sampled_from(["A", "B", "PATH", "HOME", "HOSTNAME", "LANG", "X_1"])
values = st.text(alphabet="abc=/: ", max_size=6)
env_pairs = st.lists(st.tuples(keys, values), max_size=8)


@given(image_env=env_pairs, config_env=env_pairs)
def test_env_keys_are_unique_and_the_config_wins(
    image_env: list[tuple[str, str]], config_env: list[tuple[str, str]]
) -> None:
    image = replace(IMAGE, env=tuple(f"{k}={v}" for k, v in image_env))
    env = build(container(envs=tuple(config_env)), image=image)["process"]["env"]
    names = [e.partition("=")[0] for e in env]
    assert len(names) == len(set(names))
    assert {"PATH", "HOME", "HOSTNAME"} <= set(names)
    expected = dict(image_env) | dict(config_env)
    got = dict(e.partition("=")[::2] for e in env)
    for k, v in expected.items():
        assert got[k] == v


cap = st.sampled_from(ALL_CAPABILITIES) | st.just("ALL")
mounts = st.lists(
    st.builds(
        Mount,
        container_path=st.lists(
            st.sampled_from(["a", "b", "dev", "etc", "hosts"]), min_size=1, max_size=3
        ).map(lambda p: "/" + "/".join(p)),
        host_path=st.just("/srv/vol"),
        readonly=st.booleans(),
        propagation=st.sampled_from(Propagation),
    ),
    max_size=5,
)


@settings(max_examples=150)
@given(
    add=st.lists(cap, max_size=4),
    drop=st.lists(cap, max_size=4),
    bounding=st.frozensets(st.sampled_from(ALL_CAPABILITIES)),
    privileged=st.booleans(),
    readonly_rootfs=st.booleans(),
    pid=st.sampled_from([NamespaceMode.POD, NamespaceMode.CONTAINER, NamespaceMode.NODE]),
    host_network=st.booleans(),
    seccomp=st.sampled_from([None, *ProfileType]),
    cri_mounts=mounts,
    oom=st.integers(-1000, 1000),
    min_oom=st.integers(-1000, 1000),
)
def test_any_accepted_config_gives_a_well_formed_spec(
    add: list[str],
    drop: list[str],
    bounding: frozenset[str],
    privileged: bool,
    readonly_rootfs: bool,
    pid: NamespaceMode,
    host_network: bool,
    seccomp: ProfileType | None,
    cri_mounts: list[Mount],
    oom: int,
    min_oom: int,
) -> None:
    profile = None if seccomp is None else SecurityProfile(seccomp)
    ctr = container(
        mounts=tuple(cri_mounts),
        resources=Resources(oom_score_adj=oom),
        security={
            "capabilities": Capabilities(add=tuple(add), drop=tuple(drop)),
            "privileged": privileged,
            "readonly_rootfs": readonly_rootfs,
            "namespaces": ns(pid=pid),
            "seccomp": profile,
        },
    )
    host = replace(HOST, bounding_caps=bounding, min_oom_score_adj=min_oom)
    kwargs: dict[str, Any] = {}
    if seccomp is ProfileType.LOCALHOST:
        kwargs["seccomp_localhost"] = {"defaultAction": "SCMP_ACT_ALLOW"}
    try:
        spec = build(
            ctr,
            sb=sandbox(privileged=privileged),
            host=host,
            pod=HOST_NET_POD if host_network else POD,
            **kwargs,
        )
    except SpecError:
        return
    back = json.loads(json.dumps(spec))
    assert back["ociVersion"] and back["process"]["args"] and back["root"]["path"]
    types = [n["type"] for n in back["linux"]["namespaces"]]
    assert "mount" in types and len(types) == len(set(types))
    for values_ in back["process"]["capabilities"].values():
        assert set(values_) <= bounding
    assert back["process"]["oomScoreAdj"] >= min_oom
    assert back["root"]["readonly"] is readonly_rootfs
    seen = [clean(m["destination"]) for m in back["mounts"]]
    for i, earlier in enumerate(seen):
        assert not any(earlier.startswith(later + "/") for later in seen[i + 1 :])
    if privileged:
        assert "seccomp" not in back["linux"] and back["linux"]["maskedPaths"] == []
