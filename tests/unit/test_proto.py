"""The generated code matches proto/, and every RPC of both services is routed."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.const import Cardinality

from cri_async.api.runtime.v1 import api_pb2 as pb
from cri_async.core.events import EventBus
from cri_async.services.image import ImageService
from cri_async.services.runtime import RuntimeService

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_proto.py"), str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    files = out.stdout.split()
    assert any(f.endswith("api_pb2.py") for f in files)
    stale = [f for f in files if not filecmp.cmp(tmp_path / f, ROOT / f, shallow=False)]
    assert not stale, f"run `make proto`: committed generated files differ: {stale}"


def _methods(service: str) -> list[tuple[str, bool]]:
    desc = pb.DESCRIPTOR.services_by_name[service]
    return [(m.name, m.server_streaming) for m in desc.methods]


def test_contract_size() -> None:
    assert len(_methods("RuntimeService")) == 37
    assert len(_methods("ImageService")) == 6


class _Tracker:
    rpc_timeout = 1.0

    def begin(self) -> None: ...
    def end(self) -> None: ...


@pytest.mark.parametrize("service", ["RuntimeService", "ImageService"])
def test_every_rpc_is_routed(service: str) -> None:
    class _Runtime:
        events = EventBus()

    impl = (
        RuntimeService(_Runtime(), _Tracker(), "cgroupfs")  # type: ignore[arg-type]
        if service == "RuntimeService"
        else ImageService(None, _Tracker())  # type: ignore[arg-type]
    )
    mapping = impl.__mapping__()
    for name, streaming in _methods(service):
        handler = mapping[f"/runtime.v1.{service}/{name}"]
        want = Cardinality.UNARY_STREAM if streaming else Cardinality.UNARY_UNARY
        assert handler.cardinality is want, name
        assert getattr(type(impl), name) is not getattr(type(impl).__mro__[-2], name, None)
    assert len(mapping) == len(_methods(service))
