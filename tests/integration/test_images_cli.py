"""`cri-async images pull|import` against a running server (air-gapped node workflows)."""

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status
from grpclib.client import Channel

from cri_async.api.admin.v1 import admin_grpc, admin_pb2
from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient
from tests.support import images as im
from tests.support.registry import LocalRegistry
from tests.unit.registry.layers import gzip_bomb

from .test_restart import Proc

pytestmark = [pytest.mark.subprocess, pytest.mark.registry]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cri_async.cli", *args], capture_output=True, text=True, timeout=60
    )


def oci_layout(root: Path, img: im.BuiltImage, name: str | None) -> Path:
    (root / "blobs/sha256").mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for blob in (*img.blobs, im.Blob.of(img.manifest_bytes)):
        (root / "blobs/sha256" / blob.digest[7:]).write_bytes(blob.data)
    desc = img.descriptor(platform=False)
    if name:
        desc["annotations"] = {"org.opencontainers.image.ref.name": name}
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return root


def docker_save(
    path: Path, img: im.BuiltImage, tags: list[str], *more: tuple[im.BuiltImage, list[str]]
) -> Path:
    """A `docker save` archive of ``img`` (and ``more`` images), gzipped if ``path`` ends
    in .gz."""
    work = path.with_suffix(".d")
    work.mkdir()
    items = []
    for n, (image, names) in enumerate([(img, tags), *more]):
        layer_paths = []
        for i, lay in enumerate(image.layers):
            (work / f"{n}-{i}").mkdir()
            (work / f"{n}-{i}/layer.tar").write_bytes(lay.tar)
            layer_paths.append(f"{n}-{i}/layer.tar")
        (work / f"config{n}.json").write_bytes(image.config_blob.data)
        items.append({"Config": f"config{n}.json", "RepoTags": names, "Layers": layer_paths})
    (work / "manifest.json").write_text(json.dumps(items))
    with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as tf:
        for p in sorted(work.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(work)), recursive=False)
    return path


async def test_import_layout_and_docker_save_then_pull_with_progress(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    p = Proc(tmp_path, images_backend="registry")
    client = await p.start()
    try:
        img = im.build_image(
            [
                im.layer([im.File("a", b"a" * 50_000)]),
                im.layer([im.File("b", b"b")], compression="zstd"),
            ]
        )
        layout = oci_layout(tmp_path / "layout", img, "example.com/offline/app:1.0")
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "import", str(layout)
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"example.com/offline/app:1.0: {img.image_id}"

        # An OCI layout archive whose entry is only a tag needs --name.
        bare = oci_layout(tmp_path / "bare", img, "latest")
        archive = tmp_path / "bare.tar"
        with tarfile.open(archive, "w") as tf:
            tf.add(bare, arcname=".")
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "import", str(archive)
        )
        assert out.returncode == 1 and "give one with --name" in out.stderr
        out = await asyncio.to_thread(
            run_cli,
            "images",
            "--socket",
            str(p.sock),
            "import",
            str(archive),
            "--name",
            "local/bare:v2",
        )
        assert out.returncode == 0, out.stderr

        other = im.build_image([im.layer([im.File("c", b"c")])])
        saved = docker_save(tmp_path / "saved.tar", other, ["legacy/tool:3", "legacy/tool:latest"])
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "import", str(saved)
        )
        assert out.returncode == 0, out.stderr
        assert f"docker.io/legacy/tool:3: {other.image_id}" in out.stdout

        images = (await client.images.ListImages(pb.ListImagesRequest())).images
        tags = {t: i.id for i in images for t in i.repo_tags}
        assert tags == {
            "example.com/offline/app:1.0": img.image_id,
            "docker.io/local/bare:v2": img.image_id,
            "docker.io/legacy/tool:3": other.image_id,
            "docker.io/legacy/tool:latest": other.image_id,
        }

        # A corrupted layout is refused with the digest named, and nothing is added.
        bad = oci_layout(
            tmp_path / "bad", im.build_image([im.layer([im.File("z", b"z")])]), "example.com/bad:1"
        )
        blob = next(f for f in (bad / "blobs/sha256").iterdir() if f.stat().st_size > 100)
        blob.write_bytes(blob.read_bytes()[:-1] + b"!")
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "import", str(bad)
        )
        assert out.returncode == 1 and "mismatch" in out.stderr
        after = (await client.images.ListImages(pb.ListImagesRequest())).images
        assert len(after) == len(images)

        pushed = im.build_image([im.layer([im.File("p", os.urandom(300_000))], compression="none")])
        im.push(registry, "cli/pull", pushed)
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "pull", registry.ref("cli/pull")
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{registry.ref('cli/pull')}: {pushed.image_id}")
        out = await asyncio.to_thread(
            run_cli, "images", "--socket", str(p.sock), "pull", registry.ref("cli/missing")
        )
        assert out.returncode == 1 and "not found" in out.stderr
    finally:
        client.close()
        p.terminate()
        p.sock.unlink(missing_ok=True)


def test_images_cli_without_a_server(tmp_path: Path) -> None:
    out = run_cli("images", "--socket", str(tmp_path / "none.sock"), "pull", "busybox")
    assert out.returncode == 1 and "cannot reach the server" in out.stderr


async def cli_images(p: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, "images", "--socket", str(p.sock), *args)


@pytest_asyncio.fixture
async def regproc(tmp_path: Path) -> AsyncIterator[tuple[Proc, CRIClient]]:
    """`cri-async serve` with the registry image store."""
    p = Proc(tmp_path, images_backend="registry")
    client = await p.start()
    try:
        yield p, client
    finally:
        client.close()
        p.terminate()
        p.sock.unlink(missing_ok=True)


async def tags(client: CRIClient) -> dict[str, str]:
    images = (await client.images.ListImages(pb.ListImagesRequest())).images
    return {t: i.id for i in images for t in i.repo_tags}


async def test_import_of_a_layer_already_unpacked(
    tmp_path: Path, regproc: tuple[Proc, CRIClient]
) -> None:
    """A docker save archive whose (uncompressed) layer is already unpacked from a gzip copy:
    its tar blob is never stored, and the record names only blobs that are."""
    p, client = regproc
    layer = im.layer([im.File("shared", b"s" * 20_000)])
    first = im.build_image([layer], cmd=["first"])
    out = await cli_images(p, "import", str(oci_layout(tmp_path / "a", first, "x.io/a:1")))
    assert out.returncode == 0, out.stderr
    second = im.build_image([layer], cmd=["second"])
    out = await cli_images(p, "import", str(docker_save(tmp_path / "b.tar", second, ["x.io/b:1"])))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"x.io/b:1: {second.image_id}"
    assert await tags(client) == {"x.io/a:1": first.image_id, "x.io/b:1": second.image_id}
    client.close()
    assert p.terminate() == 0
    client = await p.start()
    assert await tags(client) == {"x.io/a:1": first.image_id, "x.io/b:1": second.image_id}
    assert "is missing" not in (tmp_path / "server.log").read_text()
    client.close()


async def test_import_commits_every_image_of_an_archive_or_none(
    tmp_path: Path, regproc: tuple[Proc, CRIClient]
) -> None:
    p, client = regproc
    good = im.build_image([im.layer([im.File("g", b"g")])])
    liar = im.build_image(
        [im.layer([im.File("l", b"l")])],
        config_overrides={"rootfs": {"diff_ids": [im.sha256_digest(b"x")]}},
    )
    both = docker_save(tmp_path / "c.tar", good, ["x.io/good:1"], (liar, ["x.io/liar:1"]))
    out = await cli_images(p, "import", str(both))
    assert out.returncode == 1 and "does not match the image config" in out.stderr
    assert await tags(client) == {}
    state = tmp_path / "state"
    assert not [f for f in (state / "content/blobs").rglob("*") if f.is_file()]
    assert not list((state / "snapshots").iterdir())


async def test_import_name_is_normalised_like_a_pull(
    tmp_path: Path, regproc: tuple[Proc, CRIClient]
) -> None:
    p, client = regproc
    busy = im.build_image([im.layer([im.File("bb", b"bb")])])
    layout = oci_layout(tmp_path / "d", busy, None)
    out = await cli_images(p, "import", str(layout), "--name", "busybox")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"docker.io/library/busybox:latest: {busy.image_id}"
    assert await tags(client) == {"docker.io/library/busybox:latest": busy.image_id}
    st = await client.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="busybox")))
    assert st.image.id == busy.image_id
    out = await cli_images(p, "import", str(layout), "--name", "Not//A:Ref")
    assert out.returncode == 1 and "--name" in out.stderr


async def test_import_limits_refuse_with_resource_exhausted_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # where the server extracts archives
    p = Proc(tmp_path, images_backend="registry")
    p.config.write_text(
        p.config.read_text().replace(
            "[images]\n", "[images]\nmax_layer_bytes = 8388608\nmax_image_bytes = 16777216\n"
        )
    )
    client = await p.start()
    try:
        blob, diff_id = gzip_bomb(256 << 20)
        bomb = im.Layer(im.sha256_digest(blob), len(blob), im.OCI_LAYER_GZIP, blob, diff_id)
        layout = oci_layout(tmp_path / "bomb", im.build_image([bomb]), "x.io/bomb:1")
        channel = Channel(path=str(p.sock))
        try:
            with pytest.raises(GRPCError) as err:
                await admin_grpc.AdminStub(channel).ImportImages(
                    admin_pb2.ImportImagesRequest(path=str(layout))
                )
        finally:
            channel.close()
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert f"layer {diff_id} unpacks to more than 8.0 MiB" in str(err.value.message)
        assert "(the limit images.max_layer_bytes = 8388608)" in str(err.value.message)

        # A docker save archive (gzipped) larger than an image may be: refused while it is
        # extracted, before anything is stored.
        zeros = im.build_image([im.layer([im.File("z", bytes(20 << 20))])])
        saved = docker_save(tmp_path / "big.tar.gz", zeros, ["x.io/big:1"])
        assert saved.stat().st_size < 1 << 20
        out = await cli_images(p, "import", str(saved))
        assert out.returncode == 1
        assert "(the limit images.max_image_bytes = 16777216)" in out.stderr

        assert not (await client.images.ListImages(pb.ListImagesRequest())).images
        state = tmp_path / "state"
        assert not [f for f in (state / "content/blobs").rglob("*") if f.is_file()]
        assert not list((state / "snapshots").iterdir())
        assert not list(tmp.iterdir())
    finally:
        client.close()
        p.terminate()
        p.sock.unlink(missing_ok=True)
