"""`cri-async images pull|import` against a running server (air-gapped node workflows)."""

import asyncio
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from cri_async.api.runtime.v1 import api_pb2 as pb
from tests.support import images as im
from tests.support.registry import LocalRegistry

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


def docker_save(path: Path, img: im.BuiltImage, tags: list[str]) -> Path:
    work = path.with_suffix(".d")
    work.mkdir()
    layer_paths = []
    for i, lay in enumerate(img.layers):
        (work / f"l{i}").mkdir()
        (work / f"l{i}/layer.tar").write_bytes(lay.tar)
        layer_paths.append(f"l{i}/layer.tar")
    (work / "config.json").write_bytes(img.config_blob.data)
    (work / "manifest.json").write_text(
        json.dumps([{"Config": "config.json", "RepoTags": tags, "Layers": layer_paths}])
    )
    with tarfile.open(path, "w") as tf:
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
