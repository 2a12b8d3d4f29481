import base64
import json
from pathlib import Path

import pytest

from cri_async.core.images import AuthConfig
from cri_async.registry import auth
from cri_async.registry.hosts import HostResolver, HostsConfigError, is_loopback


def test_default_endpoints() -> None:
    r = HostResolver()
    assert [e.base for e in r.endpoints("docker.io")] == ["https://registry-1.docker.io/v2"]
    assert [e.base for e in r.endpoints("quay.io")] == ["https://quay.io/v2"]
    assert [e.base for e in r.endpoints("127.0.0.1:5000")] == ["http://127.0.0.1:5000/v2"]
    assert [e.base for e in r.endpoints("localhost:5000")] == ["http://localhost:5000/v2"]
    assert [e.base for e in r.endpoints("[::1]:5000")] == ["http://[::1]:5000/v2"]
    assert is_loopback("127.1.2.3:80") and not is_loopback("10.0.0.1:5000")


def test_mirrors_and_insecure() -> None:
    r = HostResolver(
        mirrors={"docker.io": ("http://127.0.0.1:5001", "https://m.example/prefix/")},
        insecure=frozenset({"reg.internal:5000"}),
    )
    eps = r.endpoints("docker.io")
    assert [(e.base, e.mirror) for e in eps] == [
        ("http://127.0.0.1:5001/v2", True),
        ("https://m.example/prefix/v2", True),
        ("https://registry-1.docker.io/v2", False),
    ]
    tls, plain = r.endpoints("reg.internal:5000")
    assert (tls.base, tls.skip_verify) == ("https://reg.internal:5000/v2", True)
    assert plain.base == "http://reg.internal:5000/v2"


def test_containerd_hosts_toml(tmp_path: Path) -> None:
    d = tmp_path / "docker.io"
    d.mkdir()
    (d / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n'
        '[host."http://127.0.0.1:5001"]\n  capabilities = ["pull", "resolve"]\n'
        '[host."https://m2.example"]\n  capabilities = ["pull"]\n  skip_verify = true\n'
        '  ca = "/etc/ca.pem"\n  [host."https://m2.example".header]\n    x-token = "t"\n'
    )
    (tmp_path / "_default").mkdir()
    (tmp_path / "_default" / "hosts.toml").write_text('[host."https://catchall.example"]\n')
    r = HostResolver(config_path=str(tmp_path))
    eps = r.endpoints("docker.io")
    assert [e.base for e in eps] == [
        "http://127.0.0.1:5001/v2",
        "https://m2.example/v2",
        "https://registry-1.docker.io/v2",
    ]
    assert eps[1].skip_verify and eps[1].ca == ("/etc/ca.pem",)
    assert eps[1].headers == {"x-token": "t"} and eps[1].capabilities == {"pull"}
    other = r.endpoints("quay.io")
    assert [e.base for e in other] == ["https://catchall.example/v2", "https://quay.io/v2"]
    (d / "hosts.toml").write_text("server = [")
    with pytest.raises(HostsConfigError):
        r.endpoints("docker.io")


def test_challenges() -> None:
    (c,) = auth.parse_challenges(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"'
    )
    assert c.scheme == "bearer" and c.params["scope"] == "repository:a/b:pull"
    both = auth.parse_challenges('Basic realm="r", Bearer realm="x\\"y",service=s')
    assert [(c.scheme, c.params) for c in both] == [
        ("basic", {"realm": "r"}),
        ("bearer", {"realm": 'x"y', "service": "s"}),
    ]
    assert auth.parse_challenges("") == []


def test_credentials_sources(tmp_path: Path) -> None:
    b64 = base64.b64encode(b"bob:pa:ss").decode()
    c = auth.from_auth_config(AuthConfig(auth=b64))
    assert (c.username, c.password) == ("bob", "pa:ss")
    assert "pa:ss" not in repr(c)
    with pytest.raises(auth.AuthError):
        auth.from_auth_config(AuthConfig(auth="!!!not-base64"))
    f = tmp_path / "config.json"
    f.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64},
                    "127.0.0.1:5000": {"username": "u", "password": "p"},
                    "ghcr.io": {"identitytoken": "refresh"},
                }
            }
        )
    )
    creds = auth.load_credentials_file(str(f))
    assert creds["docker.io"].username == "bob"
    assert creds["127.0.0.1:5000"].password == "p"
    assert creds["ghcr.io"].identity == "<identity-token>"
    assert auth.load_credentials_file(str(tmp_path / "missing.json")) == {}


def test_token_cache_expiry() -> None:
    cache = auth.TokenCache()
    key = ("realm", "svc", "scope", "user")
    cache.put(key, "tok", 300)
    assert cache.get(key) == "tok"
    cache.put(key, "short", 5)  # expires within the 10 s safety margin -> kept >= 1 s
    assert cache.get(key) == "short"
    assert cache.get(("other", "", "", "")) is None
    assert auth.token_from_response({"access_token": "a", "expires_in": 30}) == ("a", 30.0)
    with pytest.raises(auth.AuthError):
        auth.token_from_response({"nothing": 1})
