"""PullImage and friends against a real registry (CNCF distribution on 127.0.0.1)."""

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib import GRPCError, Status

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.client import CRIClient, container_config, pod_config
from cri_async.config import Config, HandlerConfig, ImagesConfig, RegistryConfig
from cri_async.registry.store import OCIImageStore
from cri_async.testing import CRIServer
from tests.support import images as im
from tests.support.registry import LocalRegistry, MirrorPair, TokenRegistry, free_port
from tests.unit.registry.layers import gzip_bomb

pytestmark = pytest.mark.registry


def config(**registry: Any) -> Config:
    return dataclasses.replace(
        Config(),
        runtimes={"": HandlerConfig(backend="fake")},
        images=ImagesConfig(backend="registry", stall_timeout=5.0),
        registry=RegistryConfig(**registry),
    )


@pytest_asyncio.fixture
async def psrv(tmp_path: Path) -> AsyncIterator[CRIServer]:
    async with CRIServer(tmp_path, config=config()) as s:
        yield s


def store(srv: CRIServer) -> OCIImageStore:
    assert srv.server is not None and isinstance(srv.server.images, OCIImageStore)
    return srv.server.images


async def status(cli: CRIClient, ref: str) -> pb.Image | None:
    r = await cli.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=ref)))
    return r.image if r.HasField("image") else None


def layered_image(compressions: tuple[str, ...] = ("gzip", "zstd", "none")) -> im.BuiltImage:
    base = im.layer(
        [
            im.File("etc/motd", b"hello\n"),
            im.File("etc/gone", b"x"),
            im.Dir("data"),
            im.File("data/old1", b"1"),
            im.File("data/old2", b"2"),
            im.File("usr/bin/tool", b"#!/bin/sh\n", mode=0o4755, uid=0),
            im.Symlink("usr/bin/link", "/usr/bin/tool"),
            im.Hardlink("usr/bin/hard", "usr/bin/tool"),
        ],
        compression=compressions[0],
    )
    mid = im.layer(
        [im.Whiteout("etc/gone"), im.Opaque("data"), im.File("data/new", b"n")],
        compression=compressions[1],
    )
    top = im.layer([im.File("app/run", b"run", uid=1000, gid=1000)], compression=compressions[2])
    return im.build_image(
        [base, mid, top], cmd=["/app/run"], env=["A=1"], user="1000:1000", stop_signal="SIGINT"
    )


def overlay_view(srv: CRIServer, image_id: str, mnt: Path) -> set[str]:
    """Mount the image's snapshots as overlayfs (read-only) and list what a container sees."""
    st = store(srv)
    rec = st.record(image_id)
    assert rec is not None
    lowers = ":".join(str(st.snapshots.path(c)) for c in reversed(rec.chain_ids))
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}", str(mnt)], check=True
    )
    try:
        return {str(p.relative_to(mnt)) for p in mnt.rglob("*")}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


async def test_pull_by_tag_and_digest_and_unpack(
    psrv: CRIServer, registry: LocalRegistry, tmp_path: Path
) -> None:
    img = layered_image()
    digest = im.push(registry, "team/app", img, tag="v1")
    ref = registry.ref("team/app", "v1")
    image_id = await psrv.client.pull(ref)
    assert image_id == img.image_id  # kubelet: image_ref is the Image.id
    got = await status(psrv.client, ref)
    assert got is not None
    assert got.id == image_id and list(got.repo_tags) == [ref]
    assert list(got.repo_digests) == [f"{registry.host}/team/app@{digest}"]
    assert got.size == img.size and got.uid.value == 1000
    # by digest, by id, by short id
    assert await psrv.client.pull(f"{registry.host}/team/app@{digest}") == image_id
    assert (await status(psrv.client, f"{registry.host}/team/app@{digest}")) == got
    assert (await status(psrv.client, image_id)) == got
    assert (await status(psrv.client, image_id[7:19])) == got
    verbose = await psrv.client.images.ImageStatus(
        pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
    )
    info = json.loads(verbose.info["info"])
    assert info["imageSpec"] == img.config  # the whole config, as containerd reports it
    assert len(info["chainIDs"]) == 3

    view = overlay_view(psrv, image_id, tmp_path / "mnt")
    assert {"etc/motd", "data/new", "app/run", "usr/bin/tool", "usr/bin/link"} <= view
    assert "etc/gone" not in view  # whiteout
    assert not {"data/old1", "data/old2"} & view  # opaque directory
    snaps = [store(psrv).snapshots.path(c) for c in store(psrv).record(image_id).chain_ids]  # type: ignore[union-attr]
    assert os.stat(snaps[0] / "usr/bin/tool").st_mode & 0o4000
    assert os.stat(snaps[0] / "usr/bin/hard").st_ino == os.stat(snaps[0] / "usr/bin/tool").st_ino
    assert os.readlink(snaps[0] / "usr/bin/link") == "/usr/bin/tool"
    assert os.stat(snaps[2] / "app/run").st_uid == 1000


async def test_docker_schema2_and_multi_platform_index(
    psrv: CRIServer, registry: LocalRegistry
) -> None:
    docker_img = im.build_image([im.layer([im.File("d", b"d")], docker=True)], docker=True)
    im.push(registry, "docker/img", docker_img)
    assert await psrv.client.pull(registry.ref("docker/img")) == docker_img.image_id

    idx = im.multiarch(("linux/arm64", "linux/amd64", "linux/arm/v7"))
    idx_digest = im.push(registry, "multi/img", idx)
    image_id = await psrv.client.pull(registry.ref("multi/img"))
    assert image_id == idx.for_platform("linux/amd64").image_id
    got = await status(psrv.client, registry.ref("multi/img"))
    assert got is not None and list(got.repo_digests) == [f"{registry.host}/multi/img@{idx_digest}"]


async def test_concurrent_pulls_share_downloads(psrv: CRIServer, registry: LocalRegistry) -> None:
    img = layered_image()
    im.push(registry, "shared/a", img)
    im.push(registry, "shared/b", img)  # same blobs under another name
    client = store(psrv).client
    fetched: list[str] = []
    real = client.fetch_blob

    async def counting(host: str, repo: str, desc: Any, *a: Any, **kw: Any) -> None:
        fetched.append(desc.digest)
        await real(host, repo, desc, *a, **kw)

    client.fetch_blob = counting  # type: ignore[method-assign]
    refs = [registry.ref("shared/a")] * 4 + [registry.ref("shared/b")] * 2
    ids = await asyncio.gather(*(psrv.client.pull(r) for r in refs))
    assert set(ids) == {img.image_id}
    assert sorted(fetched) == sorted({b.digest for b in img.blobs})  # each blob exactly once
    got = await status(psrv.client, img.image_id)
    assert got is not None and set(got.repo_tags) == {
        registry.ref("shared/a"),
        registry.ref("shared/b"),
    }


async def test_basic_auth(
    tmp_path: Path, basic_registry: LocalRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = basic_registry.credentials  # type: ignore[misc]
    img = im.build_image([im.layer([im.File("f", b"f")])])
    im.push(basic_registry, "private/app", img, auth=(user, password))
    ref = basic_registry.ref("private/app")
    caplog.set_level(logging.DEBUG)
    async with CRIServer(tmp_path, config=config()) as srv:
        with pytest.raises(GRPCError) as err:
            await srv.client.pull(ref)
        assert err.value.status is Status.PERMISSION_DENIED
        bad = pb.AuthConfig(username=user, password="wrong-password-xyz")
        with pytest.raises(GRPCError) as err:
            await srv.client.images.PullImage(
                pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=bad)
            )
        assert err.value.status is Status.PERMISSION_DENIED
        assert "wrong-password-xyz" not in str(err.value.message)
        good = pb.AuthConfig(username=user, password=password)
        r = await srv.client.images.PullImage(
            pb.PullImageRequest(image=pb.ImageSpec(image=ref), auth=good)
        )
        assert r.image_ref == img.image_id
    assert "wrong-password-xyz" not in caplog.text and password not in caplog.text


async def test_token_auth_and_token_reuse(tmp_path: Path, token_registry: TokenRegistry) -> None:
    reg, tokens = token_registry
    img = im.build_image([im.layer([im.File("f", b"f")])])
    img2 = im.build_image([im.layer([im.File("g", b"g")])])
    im.push(reg, "private/app", img, tag="one", auth=("alice", "secret"))
    im.push(reg, "private/app", img2, tag="two", auth=("alice", "secret"))
    tokens.clear()
    alice = pb.AuthConfig(username="alice", password="secret")
    async with CRIServer(tmp_path, config=config()) as srv:
        with pytest.raises(GRPCError) as err:
            await srv.client.pull(reg.ref("private/app", "one"))
        assert err.value.status is Status.PERMISSION_DENIED
        for tag, built in (("one", img), ("two", img2)):
            r = await srv.client.images.PullImage(
                pb.PullImageRequest(
                    image=pb.ImageSpec(image=reg.ref("private/app", tag)), auth=alice
                )
            )
            assert r.image_ref == built.image_id
    alice_tokens = [t for t in tokens.requests if t.user == "alice" and t.status == 200]
    assert len(alice_tokens) == 1  # one token served both pulls
    assert list(alice_tokens[0].scopes) == ["repository:private/app:pull"]


async def test_mirror_fallback_and_hosts_toml(tmp_path: Path, mirror_registry: MirrorPair) -> None:
    mirror, upstream = mirror_registry
    img = im.build_image([im.layer([im.File("m", b"m")])])
    im.push(upstream, "lib/app", img)
    ref = upstream.ref("lib/app")
    # A dead mirror first, then the real one; the upstream itself is last.
    cfg = config(mirrors={upstream.host: ["http://127.0.0.1:9", mirror.url]})
    async with CRIServer(tmp_path / "a", config=cfg) as srv:
        assert await srv.client.pull(ref) == img.image_id
    assert im.RegistryClient(mirror).blob_exists("lib/app", img.layers[0].digest)

    # The same through containerd's hosts.toml layout, with the upstream down.
    certs = tmp_path / "certs.d" / upstream.host
    certs.mkdir(parents=True)
    (certs / "hosts.toml").write_text(
        f'server = "{upstream.url}"\n[host."{mirror.url}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    upstream.stop()
    async with CRIServer(
        tmp_path / "b", config=config(config_path=str(tmp_path / "certs.d"))
    ) as srv:
        assert await srv.client.pull(ref) == img.image_id


async def test_bad_content_fails_cleanly(psrv: CRIServer, registry: LocalRegistry) -> None:
    cli = psrv.client

    async def fails(ref: str, code: Status, needle: str) -> None:
        with pytest.raises(GRPCError) as err:
            await cli.pull(ref)
        assert err.value.status is code, err.value.message
        assert needle in str(err.value.message), err.value.message

    await fails(registry.ref("no/such"), Status.NOT_FOUND, "not found")
    await fails("not a ref", Status.INVALID_ARGUMENT, "invalid reference")

    corrupt = im.build_image([im.layer([im.File("c", b"c" * 1000)])])
    im.push(registry, "bad/corrupt", corrupt)
    registry.corrupt_blob(corrupt.layers[0].digest)
    await fails(registry.ref("bad/corrupt"), Status.INTERNAL, "digest mismatch")

    lying = im.build_image(
        [im.layer([im.File("l", b"l")])],
        config_overrides={"rootfs": {"diff_ids": [im.sha256_digest(b"x")]}},
    )
    im.push(registry, "bad/diffid", lying)
    await fails(registry.ref("bad/diffid"), Status.INTERNAL, "does not match the image config")

    for kind in im.HOSTILE_KINDS:
        evil = im.build_image([im.hostile_layer(kind)])
        im.push(registry, f"bad/{kind}", evil)
        await fails(registry.ref(f"bad/{kind}"), Status.INTERNAL, "refused")

    st = store(psrv)
    assert cli is not None and not (await cli.images.ListImages(pb.ListImagesRequest())).images
    assert not list(st.content.ingest.iterdir())
    assert not [d for d in st.snapshots.root.iterdir() if d.name.startswith("tmp-")]
    # The blobs a failed pull verified may stay for a retry; a restart sweeps them.
    await psrv.restart()
    st = store(psrv)
    assert st.content.digests() == [] and list(st.snapshots.root.iterdir()) == []
    assert st.counters.bytes == 0 and st.counters.inodes == 0


async def test_schema1_refused(psrv: CRIServer, registry_factory: Any) -> None:
    reg = registry_factory(schema1=True)
    s1 = im.schema1_manifest("old/img", "v1", [im.layer([im.File("o", b"o")])])
    im.push(reg, "old/img", s1, tag="v1")
    with pytest.raises(GRPCError) as err:
        await psrv.client.pull(reg.ref("old/img", "v1"))
    assert err.value.status is Status.FAILED_PRECONDITION
    assert "schema 1" in str(err.value.message)


async def test_stalled_download_fails_and_leaves_nothing(tmp_path: Path) -> None:
    img = im.build_image([im.layer([im.File("s", b"s" * 100_000)], compression="none")])
    blobs = {b.digest: b.data for b in img.blobs}
    manifest = img.manifest_bytes

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1]
        if "/manifests/" in path:
            body, ctype = manifest, img.media_type
        elif path.rsplit("/", 1)[-1] in blobs:
            body, ctype = blobs[path.rsplit("/", 1)[-1]], "application/octet-stream"
            if body is img.layers[0].data:  # send half, then go silent
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
                writer.write(body[: len(body) // 2])
                await writer.drain()
                await asyncio.sleep(30)
                return
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = dataclasses.replace(config(), images=ImagesConfig(backend="registry", stall_timeout=1.0))
    try:
        async with CRIServer(tmp_path, config=cfg) as srv:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(GRPCError) as err:
                await srv.client.pull(f"127.0.0.1:{port}/slow/img:latest")
            assert err.value.status is Status.DEADLINE_EXCEEDED
            assert "stalled" in str(err.value.message)
            assert loop.time() - t0 < 15
            assert not list(store(srv).content.ingest.iterdir())
            assert not (await srv.client.images.ListImages(pb.ListImagesRequest())).images
    finally:
        server.close()


async def test_remove_takes_the_whole_image_gc_pinned_and_in_use(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    """As containerd: RemoveImage removes the image a name resolves to with every tag and
    digest reference; FAILED_PRECONDITION while pinned or used by a created or running
    container; an exited container only keeps the layers until it is removed."""
    shared = im.layer([im.File("shared", b"s" * 5000)])
    a = im.build_image([shared, im.layer([im.File("a", b"a")])])
    b = im.build_image([shared, im.layer([im.File("b", b"b")])])
    c = im.build_image([im.layer([im.File("c", b"c")])])
    digest_a = im.push(registry, "gc/a", a, tag="1")
    im.push(registry, "gc/a", a, tag="2")
    im.push(registry, "gc/alias", a)
    im.push(registry, "gc/b", b)
    im.push(registry, "gc/pinned", b)
    im.push(registry, "gc/c", c)
    cfg = dataclasses.replace(
        config(), images=ImagesConfig(backend="registry", pinned=[registry.ref("gc/pinned")])
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        cli = srv.client
        for r in ("gc/a:1", "gc/a:2", "gc/alias", "gc/b", "gc/pinned", "gc/c"):
            await cli.pull(registry.ref(*r.split(":")))
        st = store(srv)
        full = (st.counters.bytes, st.counters.inodes)
        rm = cli.images.RemoveImage
        got = await status(cli, a.image_id)
        assert got is not None and len(got.repo_tags) == 3 and len(got.repo_digests) == 2

        # One name of three: the whole image goes, with every tag and digest reference.
        await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=registry.ref("gc/a", "1"))))
        for name in (a.image_id, registry.ref("gc/a", "2"), registry.ref("gc/alias")):
            assert await status(cli, name) is None, name
        assert await status(cli, f"{registry.host}/gc/a@{digest_a}") is None
        assert not st.content.has(a.layers[1].digest)
        assert st.content.has(shared.digest)  # still used by b
        assert (st.counters.bytes, st.counters.inodes) < full
        # Pulled again under one name, it carries no reference of the removed ones.
        await cli.pull(registry.ref("gc/alias"))
        got = await status(cli, a.image_id)
        assert got is not None and list(got.repo_tags) == [registry.ref("gc/alias")]
        assert list(got.repo_digests) == [f"{registry.host}/gc/alias@{digest_a}"]

        with pytest.raises(GRPCError) as err:
            await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=registry.ref("gc/b"))))
        assert err.value.status is Status.FAILED_PRECONDITION
        assert "images.pinned" in str(err.value.message)
        pinned = await status(cli, b.image_id)
        assert pinned is not None and pinned.pinned and len(pinned.repo_tags) == 2

        # A created, then running container holds its image; an exited one only its layers.
        c_snaps = list(st.record(c.image_id).chain_ids)  # type: ignore[union-attr]
        pcfg = pod_config("p")
        pod = await cli.run_pod(pcfg)
        ccfg = container_config("c", registry.ref("gc/c"), command=["sleep", "60"])
        cid = await cli.create_container(pod, ccfg, pcfg)
        for step in ("created", "running"):
            with pytest.raises(GRPCError) as err:
                await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=c.image_id)))
            assert err.value.status is Status.FAILED_PRECONDITION, step
            assert "remove the container first" in str(err.value.message)
            got = await status(cli, registry.ref("gc/c"))
            assert got is not None and got.id == c.image_id
            if step == "created":
                await cli.start_container(cid)
        await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
        await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=registry.ref("gc/c"))))
        assert await status(cli, c.image_id) is None
        assert all(st.snapshots.has(s) for s in c_snaps)
        await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        await st.gc()
        assert not any(st.snapshots.has(s) for s in c_snaps)

        await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=a.image_id)))
        st._pinned.clear()  # the operator unpins b; the record still says pinned
        rec = st.record(b.image_id)
        assert rec is not None
        st._records[b.image_id] = dataclasses.replace(
            rec, image=dataclasses.replace(rec.image, pinned=False)
        )
        await rm(pb.RemoveImageRequest(image=pb.ImageSpec(image=registry.ref("gc/pinned"))))
        assert not (await cli.images.ListImages(pb.ListImagesRequest())).images
        assert st.content.digests() == [] and list(st.snapshots.root.iterdir()) == []
        assert (st.counters.bytes, st.counters.inodes) == (0, 0)


async def test_restart_keeps_images_and_counters_match_disk(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    img = layered_image()
    im.push(registry, "keep/me", img)
    async with CRIServer(tmp_path, config=config()) as srv:
        await srv.client.pull(registry.ref("keep/me"))
        before = await status(srv.client, registry.ref("keep/me"))
        counters = (store(srv).counters.bytes, store(srv).counters.inodes)
        fs1 = await srv.client.images.ImageFsInfo(pb.ImageFsInfoRequest())
        await srv.restart()
        assert await status(srv.client, registry.ref("keep/me")) == before
        assert (store(srv).counters.bytes, store(srv).counters.inodes) == counters
        fs2 = await srv.client.images.ImageFsInfo(pb.ImageFsInfoRequest())
        assert (
            fs2.image_filesystems[0].used_bytes.value == fs1.image_filesystems[0].used_bytes.value
        )
        st = store(srv)
        blob_bytes = sum(st.content.size(d) for d in st.content.digests())
        snap_bytes = sum(
            p.stat().st_size
            for p in st.snapshots.root.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
        assert counters[0] >= blob_bytes + snap_bytes - 10  # hard links count once in the walk
        streamed: list[str] = []
        async with srv.client.images.StreamImages.open() as stream:
            await stream.send_message(pb.StreamImagesRequest(), end=True)
            async for msg in stream:
                streamed += [i.id for i in msg.images]
        assert streamed == [img.image_id]


async def test_tag_moves_to_the_new_image(psrv: CRIServer, registry: LocalRegistry) -> None:
    old = im.build_image([im.layer([im.File("v", b"1")])])
    new = im.build_image([im.layer([im.File("v", b"2")])])
    im.push(registry, "mv/app", old)
    await psrv.client.pull(registry.ref("mv/app"))
    im.push(registry, "mv/app", new)
    assert await psrv.client.pull(registry.ref("mv/app")) == new.image_id
    images = (await psrv.client.images.ListImages(pb.ListImagesRequest())).images
    # The old image lost its tag but keeps its digest reference, as in containerd.
    by_id = {i.id: i for i in images}
    assert list(by_id[new.image_id].repo_tags) == [registry.ref("mv/app")]
    assert list(by_id[old.image_id].repo_tags) == []


def make_ca_and_cert(d: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cri-async test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (d / "ca.pem", d / "cert.pem", d / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_registry_with_configured_ca(tmp_path: Path, registry: LocalRegistry) -> None:
    img = im.build_image([im.layer([im.File("t", b"tls")])])
    im.push(registry, "secure/app", img)
    ca, cert, key = make_ca_and_cert(tmp_path)
    # A second registry serving the same storage over HTTPS.
    with LocalRegistry(
        tls=(cert, key),
        extra_config={"storage": {"filesystem": {"rootdirectory": str(registry.storage_root)}}},
    ) as tls_reg:
        ref = tls_reg.ref("secure/app")
        async with CRIServer(
            tmp_path / "untrusted", config=config(ca={"x": ["/nonexistent"]})
        ) as srv:
            with pytest.raises(GRPCError) as err:  # HTTP to an HTTPS port fails
                await srv.client.pull(ref)
            assert err.value.status is Status.UNAVAILABLE
        (tmp_path / "other").mkdir()
        other_ca = make_ca_and_cert(tmp_path / "other")[0]
        async with CRIServer(
            tmp_path / "wrong-ca", config=config(ca={tls_reg.host: [str(other_ca)]})
        ) as srv:
            with pytest.raises(GRPCError) as err:  # the host answers; its certificate fails
                await srv.client.pull(ref)
            assert err.value.status is Status.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in str(err.value.message)
            assert "images import" not in str(err.value.message)  # not an offline problem
        async with CRIServer(
            tmp_path / "trusted", config=config(ca={tls_reg.host: [str(ca)]})
        ) as srv:
            assert await srv.client.pull(ref) == img.image_id
        async with CRIServer(tmp_path / "skip", config=config(insecure=[tls_reg.host])) as srv:
            assert await srv.client.pull(ref) == img.image_id  # TLS, unverified


# -- limits: decompression bombs, huge images, a full disk ---------------------------------------


def bomb_layer(zeros: int, name: str = "zeros") -> im.Layer:
    """A gzip layer of one file of zeros (256 MiB is about 250 KiB of blob)."""
    blob, diff_id = gzip_bomb(zeros, name)
    return im.Layer(im.sha256_digest(blob), len(blob), im.OCI_LAYER_GZIP, blob, diff_id)


def assert_nothing_left(st: OCIImageStore, keep_images: int = 0) -> None:
    """No image record, blob, snapshot or temporary directory beyond the kept images'
    (a flattened snapshot included)."""
    assert len([r for r in st._records.values() if r.visible]) == keep_images
    want_blobs = {b for r in st._records.values() for b in r.blobs}
    want_snaps = {c[7:] for r in st._records.values() for c in r.snapshots}
    assert set(st.content.digests()) == want_blobs
    assert {p.name for p in st.snapshots.root.iterdir()} == want_snaps
    assert not list(st.content.ingest.iterdir())


async def test_unpack_limits_refuse_with_resource_exhausted_and_leave_nothing(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    shared = im.layer([im.File("shared", b"s" * 5000)])
    good = im.build_image([shared, im.layer([im.File("g", b"g")])])
    bomb = im.build_image([shared, bomb_layer(256 << 20)])
    wide = im.build_image([bomb_layer(6 << 20, "a"), bomb_layer(6 << 20, "b")])
    many = im.build_image([im.layer([im.File(f"f{i}") for i in range(30)])])
    for repo, img in (("lim/good", good), ("lim/bomb", bomb), ("lim/wide", wide)):
        im.push(registry, repo, img)
    im.push(registry, "lim/many", many)
    limits = ImagesConfig(
        backend="registry",
        max_layer_bytes=8 << 20,
        max_image_bytes=10 << 20,
        max_layer_entries=20,
    )
    async with CRIServer(tmp_path, config=dataclasses.replace(config(), images=limits)) as srv:
        st = store(srv)

        async def refused(repo: str, key: str) -> str:
            with pytest.raises(GRPCError) as err:
                await srv.client.pull(registry.ref(repo))
            msg = str(err.value.message)
            assert err.value.status is Status.RESOURCE_EXHAUSTED, msg
            assert msg.startswith(f"failed to pull {registry.ref(repo)}: ") and key in msg
            return msg

        msg = await refused("lim/bomb", "the limit images.max_layer_bytes = 8388608")
        assert bomb.layers[1].diff_id in msg
        assert_nothing_left(st)
        await refused("lim/wide", "the limit images.max_image_bytes = 10485760")
        assert_nothing_left(st)
        msg = await refused("lim/many", "the limit images.max_layer_entries = 20")
        assert many.layers[0].diff_id in msg
        assert_nothing_left(st)

        # A pull that fails keeps what a concurrent pull of another image needs.
        results = await asyncio.gather(
            srv.client.pull(registry.ref("lim/good")),
            srv.client.pull(registry.ref("lim/bomb")),
            return_exceptions=True,
        )
        assert results[0] == good.image_id
        assert isinstance(results[1], GRPCError)
        assert results[1].status is Status.RESOURCE_EXHAUSTED
        assert_nothing_left(st, keep_images=1)
        assert st.content.has(shared.digest) and not st.content.has(bomb.layers[1].digest)
        await srv.restart()
        assert_nothing_left(store(srv), keep_images=1)


async def test_free_space_floor_refuses_before_any_layer_downloads(
    tmp_path: Path, registry: LocalRegistry
) -> None:
    img = im.build_image([im.layer([im.File("big", os.urandom(100_000))], compression="none")])
    im.push(registry, "lim/space", img)
    cfg = dataclasses.replace(
        config(), images=ImagesConfig(backend="registry", min_free_bytes=1 << 62)
    )
    async with CRIServer(tmp_path, config=cfg) as srv:
        st = store(srv)
        fetched: list[str] = []
        real = st.client.fetch_blob

        async def counting(host: str, repo: str, desc: Any, *a: Any, **kw: Any) -> None:
            fetched.append(desc.digest)
            await real(host, repo, desc, *a, **kw)

        st.client.fetch_blob = counting  # type: ignore[method-assign]
        with pytest.raises(GRPCError) as err:
            await srv.client.pull(registry.ref("lim/space"))
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "images.min_free_bytes" in str(err.value.message)
        assert img.layers[0].digest not in fetched
        assert_nothing_left(st)


async def test_unreachable_registry_says_how_to_proceed_offline(psrv: CRIServer) -> None:
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(GRPCError) as err:
        await psrv.client.pull(f"{host}/team/app:1")
    msg = str(err.value.message)
    assert err.value.status is Status.UNAVAILABLE
    assert msg.startswith(f"failed to pull {host}/team/app:1: ") and "ConnectError" in msg
    assert f'registry.mirrors."{host}"' in msg and "registry.config_path" in msg
    assert "cri-async images import" in msg


# -- images taller than an overlay mount --------------------------------------------------------


def tall_image(n: int) -> im.BuiltImage:
    """busybox plus ``n - 1`` layers adding /data/f<i>, with deletions and an opaque directory
    below and above the layers a 500-layer mount has to merge."""
    layers = [im.busybox_layer()]
    for i in range(1, n):
        entries: list[im.Entry] = [im.File(f"data/f{i}", str(i).encode())]
        extra: dict[int, list[im.Entry]] = {
            30: [im.File("opq/a", b"a")],
            35: [im.File("opq/b", b"b")],
            50: [im.Whiteout("data/f20")],
            60: [im.Opaque("opq"), im.File("opq/c", b"c")],
            550: [im.Whiteout("data/f300")],
            560: [im.Whiteout("data/f90")],  # hides a file of the merged snapshot
            n - 1: [im.File("etc/motd", b"tall\n")],
        }
        layers.append(im.layer([*extra.get(i, []), *entries]))
    return im.build_image(layers, cmd=["sh"])


@pytest.mark.root
@pytest.mark.parametrize("rsrv", ["runc"], indirect=True)
async def test_600_layer_image_runs_on_runc(rsrv: CRIServer, registry: LocalRegistry) -> None:
    img = tall_image(600)
    im.push(registry, "tall/app", img)
    cli = rsrv.client
    image_id = await cli.pull(registry.ref("tall/app"))
    st = store(rsrv)
    rec = st.record(image_id)
    # 500 lowers at most, fewer when the paths would not fit in a mountinfo line for runc
    # (the test's state root is long).
    fit = st.snapshots.stack_limit(500)
    assert fit <= 500 and fit * (len(str(st.snapshots.path(image_id))) + 1) <= 48 * 1024
    assert rec is not None and rec.flat_depth == 600 - fit + 1 and st.snapshots.has(rec.flat_id)
    lowers = st.lower_dirs(image_id)
    assert lowers is not None and len(lowers) == fit
    assert lowers[-1] == str(st.snapshots.path(rec.flat_id))

    pcfg = pod_config("tall")
    pod = await cli.run_pod(pcfg)
    ccfg = container_config("app", registry.ref("tall/app"), command=["sleep", "1000"])
    cid = await cli.create_container(pod, ccfg, pcfg)
    await cli.start_container(cid)
    script = (
        "ls /data | wc -l; ls /opq; cat /etc/motd /data/f599 /data/f1;"
        " for f in f20 f90 f300; do test -e /data/$f && echo $f; done; true"
    )
    r = await cli.exec_sync(cid, ["sh", "-c", script], timeout=30)
    assert (r.exit_code, r.stderr) == (0, b"")
    assert r.stdout.split() == [b"596", b"c", b"tall", b"5991"]

    await cli.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=1))
    await cli.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    await cli.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    await cli.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    # The merged snapshot goes with the image.
    await cli.images.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id)))
    assert not st.snapshots.has(rec.flat_id)
    assert_nothing_left(st)
