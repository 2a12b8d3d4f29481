"""The ``fake`` backend: containers are simulated processes (see script.py).

It keeps a tiny on-disk record per container under its root directory, the way conmon
keeps exit files, so containers "keep running" across a cri-async restart and their exits
are not lost. Logs are real CRI-format files at the kubelet-given path. Exec and attach
stream simulated output (see streams.py); there is no network to forward ports into.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from cri_async.backends.fake.process import FakeProcess
from cri_async.backends.fake.script import NotFound, Timeline, simulate
from cri_async.backends.fake.streams import FakeSession, refuse_stdin
from cri_async.core.errors import DeadlineExceeded, FailedPrecondition, Internal, Unimplemented
from cri_async.core.model import (
    Container,
    ContainerState,
    Image,
    NamespaceMode,
    NetworkStatus,
    Resources,
    Sandbox,
)
from cri_async.core.ports import (
    BackendStatus,
    ExecResult,
    ExitStatus,
    HandlerFeatures,
    ProcessStatus,
    StartError,
)
from cri_async.core.sandboxes import pod_hostname
from cri_async.core.streams import Session, Stdio, StreamStartError
from cri_async.logs.crilog import OutputCapture, Stream
from cri_async.logs.logfile import LogFile

ExecHook = Callable[[Container, Sequence[str]], Awaitable[ExecResult]]

_pids = itertools.count(1000)


def fake_pod_ip(sandbox_id: str) -> str:
    """A stable address in 198.18.0.0/15 (reserved for benchmarks, never routed)."""
    h = hashlib.sha256(sandbox_id.encode()).digest()
    n = int.from_bytes(h[:4], "big") % (2**17 - 2) + 1
    return f"198.{18 + (n >> 16)}.{(n >> 8) & 0xFF}.{n & 0xFF}"


class FakeBackend:
    def __init__(self, handler: str, root: Path) -> None:
        self.handler = handler
        self.root = root
        self.hooks: dict[str, ExecHook] = {}
        self._procs: dict[str, FakeProcess] = {}
        self._logs: dict[str, LogFile] = {}
        self._attached: dict[str, set[FakeSession]] = {}

    # -- readiness -------------------------------------------------------------------
    async def probe(self) -> BackendStatus:
        self.root.mkdir(parents=True, exist_ok=True)
        return BackendStatus(
            ready=True,
            features=HandlerFeatures(recursive_read_only_mounts=True, user_namespaces=True),
            info={"backend": "fake", "root": str(self.root)},
        )

    # -- sandboxes -------------------------------------------------------------------
    async def create_sandbox(self, sandbox: Sandbox) -> Sandbox:
        if sandbox.config.security.namespaces.network == NamespaceMode.NODE:
            return sandbox.evolve(network=NetworkStatus())
        return sandbox.evolve(network=NetworkStatus(ip=fake_pod_ip(sandbox.id)))

    async def stop_sandbox(self, sandbox: Sandbox) -> None:
        return None

    async def remove_sandbox(self, sandbox: Sandbox) -> None:
        return None

    async def update_sandbox_resources(self, sandbox: Sandbox, resources: Resources) -> None:
        raise Unimplemented(f"the fake handler {self.handler!r} has no pod-level resources")

    async def reconcile(self, sandboxes: set[str], containers: set[str]) -> list[str]:
        """Remove the state directories of containers no record knows."""
        done: list[str] = []
        entries = os.listdir(self.root) if self.root.is_dir() else []
        for name in sorted(set(entries) - containers):
            if (self.root / name).is_dir():
                shutil.rmtree(self.root / name, ignore_errors=True)
                done.append(f"removed the state of orphan container {name}")
        return done

    # -- containers ------------------------------------------------------------------
    def _dir(self, container: Container) -> Path:
        return self.root / container.id

    async def create_container(
        self,
        sandbox: Sandbox,
        container: Container,
        image: Image,
        *,
        pid_target: Container | None = None,
    ) -> Container:
        d = self._dir(container)
        d.mkdir(parents=True, exist_ok=True)
        argv = list(container.config.command or image.entrypoint) + list(
            container.config.args
            if container.config.command or container.config.args
            else image.cmd
        )
        env = dict(e.split("=", 1) for e in image.env if "=" in e)
        env.update(dict(container.config.envs))
        spec = {
            "argv": argv,
            "env": env,
            "hostname": pod_hostname(sandbox.config),
            "workdir": container.config.working_dir or image.working_dir or "/",
        }
        (d / "spec.json").write_text(json.dumps(spec))
        try:
            self._logs[container.id] = LogFile(container.log_path)
        except OSError as e:  # the host's state, not ours: as conmon's failure would be
            raise FailedPrecondition(
                f"cannot open log file {container.log_path}: {e.strerror}"
            ) from None
        return container.evolve(backend_info={"root": str(d)})

    def _spec(self, container: Container) -> dict[str, object]:
        try:
            data = json.loads((self._dir(container) / "spec.json").read_text())
        except FileNotFoundError:
            raise Internal(f"fake container {container.id} has no spec (was it created?)") from None
        assert isinstance(data, dict)
        return data

    def _timeline(self, spec: dict[str, object], argv: Sequence[str]) -> Timeline:
        env = spec["env"]
        assert isinstance(env, dict)
        return simulate(argv, env, hostname=str(spec["hostname"]), workdir=str(spec["workdir"]))

    def _spawn(self, container: Container, timeline: Timeline, started_at: int) -> FakeProcess:
        log = self._logs.get(container.id)
        if log is None:
            log = self._logs[container.id] = LogFile(container.log_path)
        pid = next(_pids)
        exit_file = self._dir(container) / "exit"

        def on_exit(status: ExitStatus) -> None:
            log.flush()
            tmp = exit_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"code": status.exit_code, "at": status.finished_at}))
            os.replace(tmp, exit_file)
            for session in self._attached.pop(container.id, set()):
                session.end()

        def write(stream: Stream, data: bytes) -> None:
            log.write(stream, data)
            for session in self._attached.get(container.id, ()):
                session.feed(stream, data)

        proc = FakeProcess(pid, timeline, write, on_exit)
        self._procs[container.id] = proc
        return proc

    async def start_container(self, container: Container) -> int:
        spec = self._spec(container)
        argv = spec["argv"]
        assert isinstance(argv, list)
        try:
            timeline = self._timeline(spec, argv)
        except NotFound as e:
            raise StartError(str(e)) from None
        started = time.time_ns()
        state = {"started_at": started}
        (self._dir(container) / "process.json").write_text(json.dumps(state))
        return self._spawn(container, timeline, started).pid

    def _read_exit(self, container: Container) -> ExitStatus | None:
        try:
            data = json.loads((self._dir(container) / "exit").read_text())
        except FileNotFoundError:
            return None
        return ExitStatus(exit_code=int(data["code"]), finished_at=int(data["at"]))

    async def wait(self, container: Container) -> ExitStatus:
        proc = self._procs.get(container.id)
        if proc is None:
            status = self._read_exit(container)
            if status is None:
                raise Internal(f"fake container {container.id} is not running")
            return status
        return await asyncio.shield(proc.exited)

    async def kill(self, container: Container, signal: int) -> None:
        proc = self._procs.get(container.id)
        if proc is not None:
            proc.kill(signal)

    async def recover(self, container: Container) -> ProcessStatus:
        done = self._read_exit(container)
        if done is not None:
            return ProcessStatus(pid=container.pid, exit=done)
        never_started = not (self._dir(container) / "process.json").exists()
        if container.state is ContainerState.CREATED and never_started:
            return ProcessStatus(pid=container.pid, exit=None, started=False)
        try:
            state = json.loads((self._dir(container) / "process.json").read_text())
            spec = self._spec(container)
        except (FileNotFoundError, Internal):
            lost = ExitStatus(255, time.time_ns(), message="process state lost (host reboot?)")
            return ProcessStatus(pid=container.pid, exit=lost)
        argv = spec["argv"]
        assert isinstance(argv, list)
        started = int(state["started_at"])
        elapsed = (time.time_ns() - started) / 1e9
        timeline = self._timeline(spec, argv)
        if elapsed >= timeline.exit_at:
            status = ExitStatus(timeline.exit_code, started + int(timeline.exit_at * 1e9))
            (self._dir(container) / "exit").write_text(
                json.dumps({"code": status.exit_code, "at": status.finished_at})
            )
            return ProcessStatus(pid=container.pid, exit=status)
        self._spawn(container, timeline.after(elapsed), started)
        return ProcessStatus(pid=container.pid, exit=None)

    async def delete_container(self, container: Container) -> None:
        proc = self._procs.pop(container.id, None)
        if proc is not None:
            proc.kill(9)
        log = self._logs.pop(container.id, None)
        if log is not None:
            log.close()
        shutil.rmtree(self._dir(container), ignore_errors=True)

    async def exec_sync(
        self, container: Container, cmd: Sequence[str], timeout: float | None, limit: int
    ) -> ExecResult:
        hook = self.hooks.get(os.path.basename(cmd[0])) if cmd else None
        if hook is not None:
            coro = hook(container, cmd)
            try:
                return await asyncio.wait_for(coro, timeout) if timeout else await coro
            except TimeoutError:
                why = f"command {list(cmd)!r} timed out after {timeout}s"
                raise DeadlineExceeded(why) from None
        try:
            timeline = self._timeline(self._spec(container), cmd)
        except NotFound as e:  # as the runtime's exec failure is on a real backend
            raise FailedPrecondition(f"failed to exec in container {container.id}: {e}") from None
        capture = OutputCapture(limit)
        proc = FakeProcess(next(_pids), timeline, capture.write, lambda _s: None)
        try:
            status = await asyncio.wait_for(asyncio.shield(proc.exited), timeout)
        except TimeoutError:
            proc.kill(9)
            raise DeadlineExceeded(f"command {list(cmd)!r} timed out after {timeout}s") from None
        finally:
            proc.cancel()
        return ExecResult(
            status.exit_code, capture.output(Stream.STDOUT), capture.output(Stream.STDERR)
        )

    # -- streaming (Exec/Attach/PortForward) ----------------------------------------------
    async def exec_session(self, container: Container, cmd: Sequence[str], stdio: Stdio) -> Session:
        refuse_stdin(stdio, self.handler)
        hook = self.hooks.get(os.path.basename(cmd[0])) if cmd else None
        if hook is not None:
            return self._hook_session(hook(container, cmd), stdio.tty)
        try:
            timeline = self._timeline(self._spec(container), cmd)
        except NotFound as e:
            raise StreamStartError(f"failed to exec in container {container.id}: {e}") from None
        proc: FakeProcess | None = None

        async def wait() -> ExitStatus:
            assert proc is not None
            return await asyncio.shield(proc.exited)

        def release(_: FakeSession) -> None:
            assert proc is not None
            proc.kill(9)
            proc.cancel()

        session = FakeSession(stdio.tty, wait, release)
        proc = FakeProcess(next(_pids), timeline, session.feed, lambda _status: session.end())
        return session

    @staticmethod
    def _hook_session(run: Awaitable[ExecResult], tty: bool) -> FakeSession:
        task = asyncio.ensure_future(run)

        async def wait() -> ExitStatus:
            result = await asyncio.shield(task)
            return ExitStatus(result.exit_code, time.time_ns())

        session = FakeSession(tty, wait, lambda _: task.cancel())

        def done(t: asyncio.Future[ExecResult]) -> None:
            if not t.cancelled() and t.exception() is None:
                session.feed(Stream.STDOUT, t.result().stdout)
                session.feed(Stream.STDERR, t.result().stderr)
            session.end()

        task.add_done_callback(done)
        return session

    async def attach_session(self, container: Container, stdio: Stdio) -> Session:
        refuse_stdin(stdio, self.handler)
        proc = self._procs.get(container.id)
        if proc is None or proc.exited.done():
            raise StreamStartError(f"container {container.id} is not running")
        running = proc
        attached = self._attached.setdefault(container.id, set())

        async def wait() -> ExitStatus:
            return await asyncio.shield(running.exited)

        session = FakeSession(container.config.tty, wait, attached.discard)
        attached.add(session)
        return session

    async def port_forward(
        self, sandbox: Sandbox, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise Unimplemented(
            f"handler {self.handler!r} simulates pods: there is no network namespace to "
            "forward a port into"
        )

    async def update_resources(self, container: Container, resources: Resources) -> None:
        return None

    async def reopen_log(self, container: Container) -> None:
        log = self._logs.get(container.id)
        if log is not None:
            log.reopen()

    async def close(self) -> None:
        """Server shutdown: stop playing back; on-disk state lets a restart resume."""
        for proc in self._procs.values():
            proc.cancel()
        for log in self._logs.values():
            log.close()
        self._procs.clear()
        self._logs.clear()
