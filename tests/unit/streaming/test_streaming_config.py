"""The [streaming] config section."""

from __future__ import annotations

import pytest

from cri_async.config import ConfigError, StreamingConfig, parse


def test_defaults_are_loopback_and_ephemeral() -> None:
    cfg = parse("").streaming
    assert (cfg.address, cfg.port, cfg.tls) == ("127.0.0.1", 0, False)
    assert cfg.idle_timeout == 4 * 3600


def test_keys_parse() -> None:
    cfg = parse(
        '[streaming]\naddress = "0.0.0.0"\nport = 10010\nadvertise_address = "10.0.0.5"\n'
        'idle_timeout = 60\ntls = true\ntls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\n'
    ).streaming
    assert cfg == StreamingConfig(
        "0.0.0.0", 10010, "10.0.0.5", 60.0, 30.0, True, "/c.pem", "/k.pem"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 70000", "streaming.port"),
        ("idle_timeout = 0", "streaming.idle_timeout"),
        ('tls_cert_file = "/c.pem"', "go together"),
        ('tls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"', "streaming.tls is false"),
        ("bogus = 1", "streaming.bogus"),
    ],
)
def test_bad_values_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(f"[streaming]\n{text}\n")
