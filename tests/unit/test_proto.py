"""The generated code matches proto/, and every RPC of both CRI services is routed; the
containerd protos spoken over ttrpc declare the services and names shims expect."""

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib.const import Cardinality

from cri_async.api.containerd.cgroups.v1 import metrics_pb2 as cg1
from cri_async.api.containerd.cgroups.v2 import metrics_pb2 as cg2
from cri_async.api.containerd.events import task_pb2 as ev
from cri_async.api.containerd.events.ttrpc.v1 import events_pb2
from cri_async.api.containerd.runc.options import oci_pb2
from cri_async.api.containerd.task.v2 import shim_pb2 as task_v2
from cri_async.api.containerd.task.v3 import shim_pb2 as task_v3
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
    for expected in (
        "cri_async/api/runtime/v1/api_pb2.py",
        "cri_async/api/ttrpc/ttrpc_pb2.py",
        "cri_async/api/containerd/task/v2/shim_pb2.py",
        "cri_async/api/containerd/task/v3/shim_pb2.py",
        "cri_async/api/containerd/events/task_pb2.py",
        "cri_async/api/containerd/events/ttrpc/v1/events_pb2.py",
        "cri_async/api/containerd/runc/options/oci_pb2.py",
        "cri_async/api/containerd/runtimeoptions/v1/api_pb2.py",
        "cri_async/api/containerd/cgroups/v1/metrics_pb2.py",
        "cri_async/api/containerd/cgroups/v2/metrics_pb2.py",
    ):
        assert expected in files, expected
    # ttrpc services get no grpclib stubs: they are not gRPC.
    assert not [f for f in files if "containerd" in f and f.endswith("_grpc.py")]
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


TASK_METHODS = [
    "State", "Create", "Start", "Delete", "Pids", "Pause", "Resume", "Checkpoint", "Kill",
    "Exec", "ResizePty", "CloseIO", "Update", "Wait", "Stats", "Connect", "Shutdown",
]  # fmt: skip


def test_task_service_names_and_methods() -> None:
    v2 = task_v2.DESCRIPTOR.services_by_name["Task"]
    v3 = task_v3.DESCRIPTOR.services_by_name["Task"]
    assert v2.full_name == "containerd.task.v2.Task"
    assert v3.full_name == "containerd.task.v3.Task"
    assert [m.name for m in v2.methods] == TASK_METHODS
    # Version 3 is version 2 under another service name: the same messages both ways.
    for m2, m3 in zip(v2.methods, v3.methods, strict=True):
        assert (m2.name, m2.input_type, m2.output_type) == (m3.name, m3.input_type, m3.output_type)
        assert not m2.client_streaming and not m2.server_streaming


def test_events_service_and_wire_names() -> None:
    svc = events_pb2.DESCRIPTOR.services_by_name["Events"]
    assert svc.full_name == "containerd.services.events.ttrpc.v1.Events"
    assert [m.name for m in svc.methods] == ["Forward"]
    # Any type URLs name these messages; they must be containerd's full names.
    assert oci_pb2.Options.DESCRIPTOR.full_name == "containerd.runc.v1.Options"
    assert ev.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"
    assert cg1.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v1.Metrics"
    assert cg2.Metrics.DESCRIPTOR.full_name == "io.containerd.cgroups.v2.Metrics"
