"""The test infrastructure against the real registry: what it pushes can be fetched back with
a plain HTTP client, auth modes really refuse and allow, the mirror really proxies, and no
registry process outlives its test."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import images as im
from tests.support import registry as support_registry
from tests.support.procs import processes_mentioning
from tests.support.registry import (
    LocalRegistry,
    MirrorPair,
    TokenRegistry,
    live_processes,
)
from tests.support.tokenserver import decode_jwt, libtrust_key_id

# The fixtures (a conftest would import them: from tests.support.registry import registry, ...).
registry = support_registry.registry
basic_registry = support_registry.basic_registry
token_registry = support_registry.token_registry
mirror_registry = support_registry.mirror_registry
registry_factory = support_registry.registry_factory

# Config paths of every registry a test here used, checked by the last test.
_seen: list[Path] = []


def _remember(*regs: LocalRegistry) -> None:
    _seen.extend(r.config_path for r in regs)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as c:
        yield c


def challenge(resp: httpx.Response) -> dict[str, str]:
    value = resp.headers["WWW-Authenticate"]
    return {"scheme": value.split(" ", 1)[0], **dict(re.findall(r'(\w+)="([^"]*)"', value))}


def bearer_get(
    http: httpx.Client, url: str, accept: str = "", auth: tuple[str, str] | None = None
) -> httpx.Response:
    """The Docker token flow by hand: 401 -> token from the realm -> retry with it."""
    headers = {"Accept": accept} if accept else {}
    r = http.get(url, headers=headers)
    if r.status_code != 401:
        return r
    ch = challenge(r)
    assert ch["scheme"] == "Bearer"
    params = {"service": ch["service"], "scope": ch["scope"]}
    tok = http.get(ch["realm"], params=params, auth=auth)
    assert tok.status_code == 200, tok.text
    return http.get(url, headers={**headers, "Authorization": f"Bearer {tok.json()['token']}"})


# -- building (no registry) ----------------------------------------------------------------


def test_layer_entries_compression_and_media_types(tmp_path: Path) -> None:
    host = tmp_path / "tool"
    host.write_bytes(b"#!/bin/sh\n")
    host.chmod(0o750)
    entries: list[im.Entry] = [
        im.Dir("etc", 0o755),
        im.File("etc/app/conf", b"x=1\n", mode=0o600, uid=1000, gid=1000, mtime=1_700_000_000),
        im.Symlink("etc/link", "app/conf"),
        im.Hardlink("etc/hard", "etc/app/conf"),
        im.Whiteout("var/gone"),
        im.Opaque("opt"),
        im.HostFile("usr/bin/tool", host),
        im.Device("dev/null", "chr", 1, 3),
    ]
    tar = im.build_tar(entries)
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        names = {ti.name: ti for ti in tf.getmembers()}
    assert names["etc/app/conf"].mode == 0o600 and names["etc/app/conf"].uid == 1000
    assert names["etc/app"].isdir()  # implied parent added
    assert names["etc/link"].issym() and names["etc/link"].linkname == "app/conf"
    assert names["etc/hard"].islnk() and names["etc/hard"].linkname == "etc/app/conf"
    assert "var/.wh.gone" in names and "opt/.wh..wh..opq" in names
    assert names["usr/bin/tool"].mode == 0o750
    assert names["dev/null"].ischr() and names["dev/null"].devminor == 3

    by = {c: im.layer(entries, compression=c) for c in ("gzip", "zstd", "none")}
    assert by["gzip"].media_type == im.OCI_LAYER_GZIP
    assert by["zstd"].media_type == im.OCI_LAYER_ZSTD
    assert by["none"].media_type == im.OCI_LAYER
    assert im.layer(entries, docker=True).media_type == im.DOCKER_LAYER_GZIP
    for lay in by.values():
        assert lay.diff_id == sha(tar)  # same tar inside, whatever the compression
        assert lay.digest == sha(lay.data) and lay.size == len(lay.data)
        assert im.decompress(lay.data, lay.media_type) == tar
    assert by["none"].digest == by["none"].diff_id
    assert gzip.decompress(by["gzip"].data) == tar

    img = im.build_image(
        [by["gzip"], by["zstd"]],
        platform="linux/arm/v7",
        entrypoint=["/bin/app"],
        cmd=["--serve"],
        env=["A=1"],
        working_dir="/srv",
        user="1000:1000",
        stop_signal="SIGINT",
        labels={"k": "v"},
        annotations={"org.opencontainers.image.title": "t"},
    )
    cfg = json.loads(img.config_blob.data)
    assert cfg["architecture"] == "arm" and cfg["variant"] == "v7" and cfg["os"] == "linux"
    assert cfg["config"]["Entrypoint"] == ["/bin/app"] and cfg["config"]["StopSignal"] == "SIGINT"
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [by["gzip"].diff_id] * 2}
    assert len(cfg["history"]) == 2
    manifest = json.loads(img.manifest_bytes)
    assert manifest["config"]["digest"] == img.image_id == sha(img.config_blob.data)
    assert [lay["mediaType"] for lay in manifest["layers"]] == [
        im.OCI_LAYER_GZIP,
        im.OCI_LAYER_ZSTD,
    ]
    docker = im.build_image([by["gzip"]], docker=True)
    dm = json.loads(docker.manifest_bytes)
    assert dm["mediaType"] == im.DOCKER_MANIFEST
    assert dm["config"]["mediaType"] == im.DOCKER_CONFIG
    assert dm["layers"][0]["mediaType"] == im.DOCKER_LAYER_GZIP

    hostile = {ti.name: ti for ti in im.hostile_layer().members()}
    assert {"../cri-async-evil", "/tmp/cri-async-evil", "esc/cri-async-evil"} <= set(hostile)
    assert hostile["esc"].issym() and hostile["hl"].islnk()
    with pytest.raises(ValueError, match="hostile"):
        im.build_tar([im.File("../x")])


# -- anonymous -----------------------------------------------------------------------------


def test_push_then_fetch_back_with_plain_http(registry: LocalRegistry, http: httpx.Client) -> None:
    _remember(registry)
    img = im.busybox_image(cmd=["echo", "hi"])
    assert im.push(registry, "lib/busybox", img, tag="1.0") == img.manifest_digest
    # Pushing again uploads nothing new.
    client = im.RegistryClient(registry)
    client.push("lib/busybox", img, tag="1.0")
    assert not [e for e in client.log if e[0] in ("POST", "PUT") and "/blobs/" in e[1]]

    base = f"{registry.url}/v2/lib/busybox"
    r = http.get(f"{base}/manifests/1.0", headers={"Accept": im.OCI_MANIFEST})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == im.OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == img.manifest_digest == sha(r.content)
    assert r.content == img.manifest_bytes
    manifest = r.json()

    cfg = http.get(f"{base}/blobs/{manifest['config']['digest']}")
    assert sha(cfg.content) == img.image_id
    assert cfg.json()["config"]["Cmd"] == ["echo", "hi"]
    blob = http.get(f"{base}/blobs/{manifest['layers'][0]['digest']}")
    assert sha(blob.content) == img.layers[0].digest
    assert len(blob.content) == manifest["layers"][0]["size"]
    with tarfile.open(fileobj=io.BytesIO(blob.content)) as tf:
        names = {ti.name for ti in tf.getmembers()}
    assert {"bin/busybox", "bin/sh", "bin/echo", "etc/passwd"} <= names
    assert cfg.json()["rootfs"]["diff_ids"] == [sha(gzip.decompress(blob.content))]

    # (distribution 2.8 answers 404 MANIFEST_UNKNOWN for an OCI manifest unless Accept has it.)
    by_digest = http.get(
        f"{base}/manifests/{img.manifest_digest}", headers={"Accept": im.OCI_MANIFEST}
    )
    assert by_digest.content == img.manifest_bytes
    assert http.get(f"{base}/tags/list").json() == {"name": "lib/busybox", "tags": ["1.0"]}
    assert registry.ref("lib/busybox", "1.0") == f"{registry.host}/lib/busybox:1.0"


def test_multiplatform_index_round_trip(registry: LocalRegistry, http: httpx.Client) -> None:
    _remember(registry)
    for docker in (False, True):
        index = im.multiarch(docker=docker)
        tag = "docker" if docker else "oci"
        assert im.push(registry, "multi", index, tag=tag) == index.manifest_digest
        r = http.get(
            f"{registry.url}/v2/multi/manifests/{tag}", headers={"Accept": index.media_type}
        )
        assert r.headers["Content-Type"] == index.media_type
        assert r.content == index.manifest_bytes
        platforms = [m["platform"] for m in r.json()["manifests"]]
        assert platforms == [
            {"architecture": "amd64", "os": "linux"},
            {"architecture": "arm64", "os": "linux"},
            {"architecture": "arm", "os": "linux", "variant": "v7"},
        ]
        for entry in r.json()["manifests"]:
            child = http.get(
                f"{registry.url}/v2/multi/manifests/{entry['digest']}",
                headers={"Accept": entry["mediaType"]},
            )
            assert sha(child.content) == entry["digest"] and len(child.content) == entry["size"]
            cfg = http.get(f"{registry.url}/v2/multi/blobs/{child.json()['config']['digest']}")
            assert cfg.json()["architecture"] == entry["platform"]["architecture"]
        assert index.for_platform("linux/arm/v7").config["variant"] == "v7"


async def test_async_context_manager_and_cleanup() -> None:
    reg = LocalRegistry()
    async with reg:
        proc, config = reg.process, reg.config_path
        assert proc is not None and list(processes_mentioning(str(config))) == [proc.pid]
        async with httpx.AsyncClient(trust_env=False) as c:
            assert (await c.get(f"{reg.url}/v2/")).status_code == 200
    assert proc.poll() is not None
    assert list(processes_mentioning(str(config))) == []
    assert not config.parent.exists()
    assert proc not in live_processes()


def test_registry_stops_even_when_the_body_raises() -> None:
    reg = LocalRegistry()
    seen: list[Path] = []

    def body() -> None:
        with reg:
            seen.append(reg.config_path)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    (config,) = seen
    assert list(processes_mentioning(str(config))) == []
    assert not config.parent.exists()


# -- broken content ------------------------------------------------------------------------


def test_broken_content(registry_factory, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    reg = registry_factory(schema1=True)
    _remember(reg)
    img = im.busybox_image()
    im.push(reg, "bad/blob", img)
    lay = img.layers[0]
    reg.corrupt_blob(lay.digest)
    r = http.get(f"{reg.url}/v2/bad/blob/blobs/{lay.digest}")
    assert r.status_code == 200 and len(r.content) == lay.size and sha(r.content) != lay.digest

    # A manifest lying about a layer's size is stored as is.
    liar = im.tamper_manifest(img, lambda m: m["layers"][0].update(size=7))
    assert im.push(reg, "bad/size", liar) == liar.manifest_digest
    got = http.get(f"{reg.url}/v2/bad/size/manifests/latest", headers={"Accept": im.OCI_MANIFEST})
    assert got.json()["layers"][0]["size"] == 7

    # Signed schema 1 is accepted with schema1=True (and served re-signed, same digest).
    s1 = im.schema1_manifest("old/app", "v1", [im.layer([im.File("a", b"a")])])
    assert im.push(reg, "old/app", s1, tag="v1") == s1.manifest_digest
    r = http.get(f"{reg.url}/v2/old/app/manifests/v1", headers={"Accept": im.DOCKER_SCHEMA1_SIGNED})
    assert r.headers["Content-Type"] == im.DOCKER_SCHEMA1_SIGNED
    assert r.headers["Docker-Content-Digest"] == s1.manifest_digest
    assert r.json()["schemaVersion"] == 1 and r.json()["signatures"]

    # ...and refused by a default registry.
    plain = registry_factory()
    _remember(plain)
    with pytest.raises(im.RegistryError) as err:
        im.push(plain, "old/app", s1, tag="v1")
    assert err.value.status >= 400


# -- basic auth ----------------------------------------------------------------------------


def test_basic_auth(basic_registry: LocalRegistry, http: httpx.Client) -> None:
    _remember(basic_registry)
    creds = basic_registry.credentials
    assert creds is not None
    r = http.get(f"{basic_registry.url}/v2/")
    assert r.status_code == 401 and challenge(r)["scheme"] == "Basic"
    assert http.get(f"{basic_registry.url}/v2/", auth=creds).status_code == 200
    assert http.get(f"{basic_registry.url}/v2/", auth=(creds[0], "wrong")).status_code == 401

    img = im.build_image([im.layer([im.File("hello", b"world")])])
    with pytest.raises(im.RegistryError) as err:
        im.push(basic_registry, "app", img)
    assert err.value.status == 401
    assert im.push(basic_registry, "app", img, auth=creds) == img.manifest_digest
    url = f"{basic_registry.url}/v2/app/manifests/latest"
    assert http.get(url, headers={"Accept": im.OCI_MANIFEST}).status_code == 401
    ok = http.get(url, headers={"Accept": im.OCI_MANIFEST}, auth=creds)
    assert ok.status_code == 200 and ok.content == img.manifest_bytes


# -- token auth ----------------------------------------------------------------------------


def test_token_auth(token_registry: TokenRegistry, http: httpx.Client) -> None:
    reg, tokens = token_registry
    _remember(reg)
    img = im.build_image([im.layer([im.File("secret", b"data")])])

    # Anonymous: a token is issued, but it grants nothing on private/*.
    url = f"{reg.url}/v2/private/app/manifests/latest"
    first = http.get(url)
    ch = challenge(first)
    assert first.status_code == 401 and ch["scheme"] == "Bearer"
    assert ch["realm"] == tokens.realm and ch["service"] == tokens.service
    assert ch["scope"] == "repository:private/app:pull"
    denied = bearer_get(http, url)
    assert denied.status_code in (401, 403)
    assert challenge(denied).get("error") == "insufficient_scope"
    anon = tokens.token_requests(user=None)
    assert anon and anon[-1].granted == ()
    assert decode_jwt(anon[-1].token or "")[1]["access"] == []

    # Nor may anonymous push public/*; alice may push private/*.
    with pytest.raises(im.RegistryError):
        im.push(reg, "public/app", img)
    tokens.clear()
    alice = im.RegistryClient(reg, token_registry.credentials)
    assert alice.push("private/app", img) == img.manifest_digest
    assert "repository:private/app:pull,push" in tokens.scopes_seen()
    pushes = tokens.token_requests(user="alice")
    assert pushes and all(r.status == 200 for r in pushes)
    header, claims = decode_jwt(pushes[-1].token or "")
    assert header["kid"] == libtrust_key_id(tokens.key.public_key())
    assert claims["aud"] == tokens.service and claims["iss"] == tokens.issuer
    assert claims["access"] == [
        {"type": "repository", "name": "private/app", "actions": ["pull", "push"]}
    ]

    # The client reuses its token: more pulls, no more token requests.
    n = len(tokens.requests)
    for _ in range(3):
        assert alice.get_manifest("private/app", "latest").body == img.manifest_bytes
    assert len(tokens.requests) == n  # the "pull" token from the push's HEADs is reused

    # alice pulls with a plain client; bob (pull-only) too; a wrong password gets no token.
    accept = im.OCI_MANIFEST
    assert bearer_get(http, url, accept, ("alice", "secret")).content == img.manifest_bytes
    assert bearer_get(http, url, accept, ("bob", "hunter2")).status_code == 200
    bad = http.get(tokens.realm, params={"service": tokens.service}, auth=("alice", "nope"))
    assert bad.status_code == 401
    with pytest.raises(im.RegistryError):
        im.push(reg, "private/other", img, auth=("bob", "hunter2"))

    # Anonymous may pull public/* once alice has pushed there.
    im.push(reg, "public/app", img, auth=token_registry.credentials)
    assert bearer_get(http, f"{reg.url}/v2/public/app/manifests/latest", accept).status_code == 200


def test_token_variants_x5c_oauth_and_injected_failures(registry_factory) -> None:  # type: ignore[no-untyped-def]
    reg = registry_factory(token_options={"key_hint": "x5c", "expires_in": 120})
    _remember(reg)
    tokens = reg.token_server
    img = im.build_image([im.layer([im.File("f", b"1")])])
    assert im.push(reg, "private/x", img, auth=("alice", "secret")) == img.manifest_digest
    header, _ = decode_jwt(tokens.requests[-1].token)
    assert "x5c" in header and "kid" not in header

    # OAuth2 POST (containerd's first try with credentials) with a refresh token.
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": "secret",
        "service": tokens.service,
        "scope": "repository:private/x:pull",
        "client_id": "cri-async",
    }
    with httpx.Client(trust_env=False) as c:
        body = c.post(tokens.realm, data=form).json()
        assert body["expires_in"] == 120 and body["refresh_token"]
        refreshed = c.post(
            tokens.realm,
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "service": tokens.service,
                "scope": "repository:private/x:pull",
            },
        )
        token = refreshed.json()["access_token"]
        r = c.get(
            f"{reg.url}/v2/private/x/manifests/latest",
            headers={"Authorization": f"Bearer {token}", "Accept": im.OCI_MANIFEST},
        )
        assert r.status_code == 200
        tokens.fail_next.append(503)
        assert c.get(tokens.realm, params={"service": tokens.service}).status_code == 503
        assert c.get(tokens.realm, params={"service": tokens.service}).status_code == 200
    assert [r.grant_type for r in tokens.requests[-4:-2]] == ["password", "refresh_token"]


# -- mirror --------------------------------------------------------------------------------


def test_mirror_serves_what_only_upstream_has(
    mirror_registry: MirrorPair, http: httpx.Client
) -> None:
    mirror, upstream = mirror_registry
    _remember(mirror, upstream)
    img = im.busybox_image()
    im.push(upstream, "lib/app", img, tag="v1")
    assert not (mirror.storage_root / "docker/registry/v2/repositories/lib").exists()

    r = http.get(f"{mirror.url}/v2/lib/app/manifests/v1", headers={"Accept": im.OCI_MANIFEST})
    assert r.status_code == 200 and r.content == img.manifest_bytes
    blob = http.get(f"{mirror.url}/v2/lib/app/blobs/{img.layers[0].digest}")
    assert sha(blob.content) == img.layers[0].digest

    # A proxy registry refuses pushes.
    with pytest.raises(im.RegistryError) as err:
        im.push(mirror, "lib/other", img)
    assert err.value.status in (401, 405)


# -- leftovers -----------------------------------------------------------------------------


def test_zz_no_registry_outlived_its_test() -> None:
    """Runs last in this file: every fixture registry above is gone, with its files."""
    for config in _seen:
        assert list(processes_mentioning(str(config))) == [], config
        assert not config.parent.exists(), config
