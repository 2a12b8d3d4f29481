from pathlib import Path

import pytest

from cri_async import config, configtoml
from cri_async.config import Config, ConfigError


def test_documented_defaults_are_the_defaults() -> None:
    assert config.parse(configtoml.default_toml()) == Config()
    assert config.load(None) == Config()


def test_every_key_is_documented_in_the_default_toml() -> None:
    import dataclasses
    import tomllib

    data = tomllib.loads(configtoml.default_toml())
    for section in ("server", "log", "state", "runtime", "images"):
        fields = {f.name for f in dataclasses.fields(getattr(Config(), section))}
        assert set(data[section]) == fields, section


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nsockt = '/x'", "server.sockt: unknown key"),
        ("bogus = 1", "bogus: unknown key"),
        ("[server]\nrpc_timeout = 'soon'", "server.rpc_timeout: expected float"),
        ("[server]\nrpc_timeout = -1", "server.rpc_timeout: must be positive"),
        ("[server]\nsocket = 'relative.sock'", "server.socket: "),
        ("[server]\nsocket_mode = '999'", "server.socket_mode"),
        ("[log]\nlevel = 'loud'", "log.level"),
        ("[state]\nsync = 'sometimes'", "state.sync"),
        ("[runtime]\ndefault_handler = 'gvisor'", "runtime.default_handler"),
        ('[runtimes.sim]\nbackend = "kata"', 'runtimes."sim".backend'),
        ("[runtimes.x]\nbinaryy = 'a'", 'runtimes."x".binaryy: unknown key'),
        ("[[fake.images]]\nsize = 1", "fake.images[0]"),
        ("[images]\npinned = 'pause'", "images.pinned: expected a list"),
        ("[server\n", "invalid TOML"),
        ("[runtime]\nevent_queue_size = true", "runtime.event_queue_size: expected int"),
        ('[runtimes.k]\nbackend = "shimv2"', 'runtimes."k".runtime_type: the shimv2 backend'),
        (
            '[runtimes.k]\nbackend = "shimv2"\nruntime_type = "kata"',
            "runtimes.\"k\".runtime_type: 'kata' is neither",
        ),
        (
            '[runtimes.k]\nbackend = "shimv2"\nruntime_type = "a/b.v2"',
            'runtimes."k".runtime_type',
        ),
        ('[runtimes.k]\nshim_namespace = "k8s..io"', 'runtimes."k".shim_namespace'),
        ('[runtimes.k]\nshim_options = "json"', 'runtimes."k".shim_options'),
        ("[runtimes.k]\nshim_timeout = 0", 'runtimes."k".shim_timeout: must be positive'),
    ],
)
def test_bad_config_names_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.parse(text)
    assert message in str(err.value)


def test_handlers_and_roots(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[state]\nrun_root = "/run/x"\n[runtimes.""]\nbackend = "fake"\n'
        '[runtimes.sim]\nbackend = "fake"\nroot = "/srv/sim"\n'
    )
    cfg = config.load(path)
    assert set(cfg.runtimes) == {"", "sim"}
    assert str(cfg.handler_root("")) == "/run/x/fake/default"
    assert str(cfg.handler_root("sim")) == "/srv/sim"


def test_unreadable_config() -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        config.load("/nonexistent/cri-async.toml")


def test_shimv2_handler() -> None:
    cfg = config.parse(
        '[state]\nrun_root = "/run/x"\n[runtimes.""]\nbackend = "runc"\n'
        '[runtimes.kata]\nbackend = "shimv2"\nruntime_type = "io.containerd.kata.v2"\n'
        "sandbox_task = true\nshim_stats = true\n"
        '[runtimes.own]\nbackend = "shimv2"\nruntime_type = "/opt/bin/containerd-shim-x-v1"\n'
    )
    kata = cfg.runtimes["kata"]
    assert (kata.runtime_type, kata.sandbox_task, kata.shim_stats) == (
        "io.containerd.kata.v2",
        True,
        True,
    )
    assert (kata.shim_namespace, kata.shim_options, kata.shim_timeout) == ("cri-async", "auto", 30)
    assert str(cfg.handler_root("kata")) == "/run/x/shimv2/kata"
    assert cfg.runtimes["own"].runtime_type == "/opt/bin/containerd-shim-x-v1"
