"""An image's symlinks never make cri-async or the runtime touch the host's files.

Each case is an image whose paths lead out of its root filesystem through an absolute
symlink or a run of "..": the user database, WORKDIR, a mount target, and the /etc/hosts
and /etc/resolv.conf bind targets. Inside the container they must resolve as if the root
filesystem were "/", on runc and crun.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import container_config, pod_config
from cri_async.testing import CRIServer
from tests.support import images as im
from tests.support.registry import LocalRegistry

from .test_real_features import run, sh

pytestmark = [pytest.mark.root, pytest.mark.registry]


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("host-side")
    (d / "passwd").write_text("root:x:0:0::/root:/bin/sh\nhostonly:x:4242:4242::/:/bin/sh\n")
    (d / "group").write_text("root:x:0:\nhostonly:x:4242:\n")
    (d / "hosts").write_text("10.0.0.1 host-only\n")
    (d / "resolv.conf").write_text("nameserver 10.0.0.53\n")
    (d / "target").mkdir()
    return d


def _dotdot(path: Path) -> str:
    return "../" * 12 + str(path).lstrip("/")


@pytest.fixture(scope="module")
def escape_images(host_dir: Path) -> Iterator[dict[str, str]]:
    bases = {
        "abs-users": [
            im.Symlink("etc/passwd", str(host_dir / "passwd")),
            im.Symlink("etc/group", str(host_dir / "group")),
        ],
        "dotdot-users": [
            im.Symlink("etc/passwd", _dotdot(host_dir / "passwd")),
            im.Symlink("etc/group", _dotdot(host_dir / "group")),
        ],
        "paths": [
            im.Dir("data"),
            im.File("data/passwd", b"root:x:0:0::/root:/bin/sh\nimageuser:x:7:7::/:/bin/sh\n"),
            im.Symlink("etc/passwd", "/data/passwd"),
            im.Symlink("work", str(host_dir / "target")),
            im.Dir("mnt"),
            im.Symlink("mnt/abs", str(host_dir / "target")),
            im.Symlink("mnt/rel", _dotdot(host_dir / "target")),
            im.Symlink("etc/hosts", str(host_dir / "hosts")),
            im.Symlink("etc/resolv.conf", _dotdot(host_dir / "resolv.conf")),
        ],
    }
    users = {"abs-users": "hostonly", "dotdot-users": "hostonly", "paths": "imageuser"}
    with LocalRegistry() as reg:
        refs = {}
        for name, entries in bases.items():
            layer = im.layer(entries, parents=False)
            image = im.busybox_image(
                layer,
                cmd=("sleep", "1000"),
                user=users[name],
                working_dir="/work/sub" if name == "paths" else None,
            )
            im.push(reg, f"escape/{name}", image)
            refs[name] = reg.ref(f"escape/{name}")
        yield refs


@pytest.mark.parametrize("image", ["abs-users", "dotdot-users"])
async def test_user_database_is_read_inside_the_image(
    rsrv: CRIServer, escape_images: dict[str, str], image: str
) -> None:
    cli = rsrv.client
    ref = escape_images[image]
    await cli.pull(ref)
    pcfg = pod_config("users")
    pod = await cli.run_pod(pcfg)
    with pytest.raises(GRPCError) as err:
        await cli.create_container(pod, container_config("c", ref), pcfg)
    assert err.value.status is Status.INVALID_ARGUMENT
    assert "unable to find user 'hostonly'" in str(err.value.message)
    assert not (await cli.runtime.ListContainers(pb.ListContainersRequest())).containers


async def test_paths_resolve_inside_the_image(
    rsrv: CRIServer, escape_images: dict[str, str], host_dir: Path, tmp_path: Path
) -> None:
    cli = rsrv.client
    ref = escape_images["paths"]
    await cli.pull(ref)
    pcfg = pod_config("paths")
    pod = await cli.run_pod(pcfg)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "marker").write_text("volume\n")
    cfg = container_config("c", ref)
    cfg.mounts.extend(
        [
            pb.Mount(container_path="/mnt/abs/x", host_path=str(vol)),
            pb.Mount(container_path="/mnt/rel/y", host_path=str(vol)),
        ]
    )
    before = sorted(os.listdir(host_dir / "target"))
    cid = await run(cli, pod, pcfg, cfg)
    r = await sh(cli, cid, "id -u; pwd -P; cat /mnt/abs/x/marker /mnt/rel/y/marker")
    # /work links to that path *inside* the image, where the runtime made WORKDIR.
    inside = str(host_dir / "target" / "sub").encode()
    assert r.stdout.split() == [b"7", inside, b"volume", b"volume"]
    r = await sh(cli, cid, "cat /etc/hosts /etc/resolv.conf")
    assert b"host-only" not in r.stdout and b"10.0.0.53" not in r.stdout
    assert b"127.0.0.1\tlocalhost" in r.stdout  # the pod's own /etc/hosts
    # Nothing was created, mounted or written on the host side of those links.
    assert sorted(os.listdir(host_dir / "target")) == before
    assert (host_dir / "hosts").read_text() == "10.0.0.1 host-only\n"
    assert (host_dir / "resolv.conf").read_text() == "nameserver 10.0.0.53\n"
    mounts = Path("/proc/self/mountinfo").read_text()
    for name in ("target", "hosts", "resolv.conf"):
        assert str(host_dir / name) not in mounts
