"""The RPC-facing half of streaming: validate an Exec/Attach/PortForward request against the
runtime's records and trade it for a one-time URL.

What a URL allows is decided here, once: the cached target carries the full container or
sandbox id, the command, the stdio set and (for attach) the container's ``stdin_once``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cri_async.core.errors import FailedPrecondition, InvalidArgument
from cri_async.core.model import Container, ContainerState, Sandbox, SandboxState
from cri_async.streaming.backend import Stdio


class Route(enum.Enum):
    """The URL path segment of each kind of session."""

    EXEC = "exec"
    ATTACH = "attach"
    PORT_FORWARD = "portforward"


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: tuple[str, ...]
    stdio: Stdio


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    stdio: Stdio


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    sandbox_id: str
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecTarget:
    container_id: str
    cmd: tuple[str, ...]
    stdio: Stdio


@dataclass(frozen=True, slots=True)
class AttachTarget:
    container_id: str
    stdio: Stdio
    stdin_once: bool


@dataclass(frozen=True, slots=True)
class PortForwardTarget:
    sandbox_id: str
    ports: tuple[int, ...]


Target = ExecTarget | AttachTarget | PortForwardTarget


def route_of(target: Target) -> Route:
    match target:
        case ExecTarget():
            return Route.EXEC
        case AttachTarget():
            return Route.ATTACH
        case PortForwardTarget():
            return Route.PORT_FORWARD


class ContainerLookup(Protocol):
    def status(self, container_id: str) -> Container:
        """The live container by id or unique prefix; NotFound otherwise."""
        ...


class SandboxLookup(Protocol):
    def status(self, sandbox_id: str) -> Sandbox: ...


class Issuer(Protocol):
    def issue(self, target: Target) -> str:
        """Cache ``target`` under a new token; the absolute URL that redeems it."""
        ...


def _check_stdio(stdio: Stdio) -> None:
    if stdio.tty and stdio.stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdio.stdin or stdio.stdout or stdio.stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


def _check_ports(ports: Sequence[int]) -> None:
    for p in ports:
        if not 1 <= p <= 65535:
            raise InvalidArgument(f"port {p} is out of range 1-65535")


class StreamingService:
    def __init__(
        self, containers: ContainerLookup, sandboxes: SandboxLookup, issuer: Issuer
    ) -> None:
        self._containers = containers
        self._sandboxes = sandboxes
        self._issuer = issuer

    def _running(self, container_id: str) -> Container:
        if not container_id:
            raise InvalidArgument("container_id must not be empty")
        c = self._containers.status(container_id)
        if c.state is not ContainerState.RUNNING:
            raise FailedPrecondition(f"container {c.id} is {c.state.value}, not running")
        return c

    def issue_exec(self, req: ExecRequest) -> str:
        if not req.container_id:
            raise InvalidArgument("container_id must not be empty")
        if not req.cmd:
            raise InvalidArgument("cmd must not be empty")
        _check_stdio(req.stdio)
        c = self._running(req.container_id)
        return self._issuer.issue(ExecTarget(c.id, tuple(req.cmd), req.stdio))

    def issue_attach(self, req: AttachRequest) -> str:
        if not req.container_id:
            raise InvalidArgument("container_id must not be empty")
        _check_stdio(req.stdio)
        c = self._running(req.container_id)
        return self._issuer.issue(AttachTarget(c.id, req.stdio, c.config.stdin_once))

    def issue_port_forward(self, req: PortForwardRequest) -> str:
        if not req.sandbox_id:
            raise InvalidArgument("pod_sandbox_id must not be empty")
        _check_ports(req.ports)
        sb = self._sandboxes.status(req.sandbox_id)
        if sb.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready")
        return self._issuer.issue(PortForwardTarget(sb.id, tuple(req.ports)))
