import json

import pytest

from cri_async.registry import manifest as mf

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def manifest(layers: list[dict[str, object]], mt: str | None = mf.OCI_MANIFEST) -> bytes:
    obj: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": layers,
    }
    if mt:
        obj["mediaType"] = mt
    return json.dumps(obj).encode()


def layer(digest: str = D2, mt: str = "application/vnd.oci.image.layer.v1.tar+gzip") -> dict:
    return {"mediaType": mt, "digest": digest, "size": 5}


def test_parse_manifest_and_layer_compressions() -> None:
    data = manifest(
        [
            layer(D2),
            layer(D3, "application/vnd.oci.image.layer.v1.tar+zstd"),
            layer(D3, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            layer(D2, "application/vnd.oci.image.layer.v1.tar"),
        ]
    )
    m = mf.parse(data, mf.detect_media_type(data, ""))
    assert isinstance(m, mf.Manifest)
    assert [mf.LAYER_TYPES[d.media_type] for d in m.layers] == ["gzip", "zstd", "gzip", "none"]
    assert m.config.digest == D1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (manifest([layer("sha256:short")]), "invalid digest"),
        (manifest([{**layer(), "size": -1}]), "invalid size"),
        (manifest([layer(D2, "application/x-tar-bzip2")]), "unsupported layer media type"),
        (json.dumps({"schemaVersion": 3}).encode(), "unsupported schemaVersion"),
        (b" " * (mf.MAX_MANIFEST_BYTES + 1), "larger than"),
    ],
)
def test_bad_manifests(data: bytes, problem: str) -> None:
    with pytest.raises(mf.ManifestError, match=problem):
        mf.parse(data, mf.OCI_MANIFEST)


def test_schema1_is_refused_clearly() -> None:
    data = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    assert mf.detect_media_type(data, "application/json") == mf.DOCKER_SCHEMA1
    with pytest.raises(mf.UnsupportedManifest, match="schema 1 is not supported"):
        mf.parse(data, mf.DOCKER_SCHEMA1_SIGNED)


def test_media_type_detection_order() -> None:
    no_type = manifest([layer()], mt=None)
    assert mf.detect_media_type(no_type, mf.DOCKER_MANIFEST) == mf.DOCKER_MANIFEST
    assert mf.detect_media_type(no_type, "application/json") == mf.OCI_MANIFEST
    idx = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert mf.detect_media_type(idx, "") == mf.OCI_INDEX


def index(*plats: tuple[str, str, str]) -> mf.Index:
    data = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mf.OCI_INDEX,
            "manifests": [
                {
                    "mediaType": mf.OCI_MANIFEST,
                    "digest": f"sha256:{i:064x}",
                    "size": 1,
                    "platform": {"os": o, "architecture": a, **({"variant": v} if v else {})},
                }
                for i, (o, a, v) in enumerate(plats)
            ],
        }
    ).encode()
    parsed = mf.parse(data, mf.OCI_INDEX)
    assert isinstance(parsed, mf.Index)
    return parsed


def test_platform_choice() -> None:
    idx = index(
        ("linux", "arm", "v6"),
        ("linux", "arm", "v7"),
        ("linux", "amd64", ""),
        ("windows", "amd64", ""),
    )
    assert mf.choose(idx, mf.Platform("linux", "amd64")).digest.endswith("2")
    assert mf.choose(idx, mf.Platform("linux", "arm", "v7")).digest.endswith("1")
    with pytest.raises(mf.ManifestError, match=r"no image for platform linux/s390x.*offered"):
        mf.choose(idx, mf.Platform("linux", "s390x"))
    assert mf.Platform.parse("linux/arm64/v8") == mf.Platform("linux", "arm64", "v8")


def test_config_and_chain_ids() -> None:
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "x"],
            "User": "1000:1000",
            "Env": ["A=1"],
            "StopSignal": "SIGQUIT",
            "Labels": {"k": "v"},
        },
        "rootfs": {"type": "layers", "diff_ids": [D1, D2, D3]},
    }
    c = mf.parse_config(json.dumps(cfg).encode())
    assert c.entrypoint == ("/bin/sh",) and c.user == "1000:1000" and c.labels == {"k": "v"}
    chain = mf.chain_ids(c.diff_ids)
    assert chain[0] == D1
    assert chain[1] == mf.digest_of(f"{D1} {D2}".encode())
    assert chain[2] == mf.digest_of(f"{chain[1]} {D3}".encode())
    with pytest.raises(mf.ManifestError, match="rootfs"):
        mf.parse_config(b'{"rootfs": {"type": "x"}}')


def test_verify() -> None:
    mf.verify(b"abc", mf.digest_of(b"abc"), "blob")
    with pytest.raises(mf.ManifestError, match="digest mismatch"):
        mf.verify(b"abd", mf.digest_of(b"abc"), "blob")
