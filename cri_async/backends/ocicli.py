"""One runc-compatible OCI runtime CLI (runc, crun, youki): its binary, ``--root`` and quirks.

Only the short-lived subcommands live here. ``create`` is never run from this class: conmon
runs it (``cri_async.monitor.conmon``), because a detached ``create`` hands the container the
command's stdio and a pipe we wait on would then stay open until the container exits
. ``start``/``kill``/``delete``/``state``/``update`` return once the runtime
is done, so capturing their output through pipes is safe.

Tested behaviour this module relies on (runc 1.1.5, crun 1.8.1):

* An unknown container makes ``state``, ``kill`` and ``delete`` exit 1 ("container does not
  exist" from runc, "error opening file `ROOT/CID/status`" from crun). Every runc-compatible
  runtime keeps a container's state in ``ROOT/CID``, so that directory is the language-neutral
  test for "unknown" rather than matching messages.
* ``runc features`` exists (1.1.x prints JSON); crun 1.8.1 answers "unknown command features"
  with exit 1.
* ``list --format json`` prints ``null`` (runc) or ``[ ]`` (crun) when empty.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from cri_async import proc
from cri_async.observe import NO_OBSERVER, Observer
from cri_async.oci.errors import runtime_message

__all__ = ["RuntimeCLI", "RuntimeCLIError", "runtime_message"]

log = logging.getLogger(__name__)

_STDERR_KEEP = 2000
"""Characters of a runtime's stderr kept in an error message (the end holds the reason)."""


def _trim(text: str) -> str:
    text = runtime_message(text)
    if len(text) > _STDERR_KEEP:
        text = "..." + text[-_STDERR_KEEP:]
    return text


class RuntimeCLIError(Exception):
    """A runtime command failed; the message holds the command and the runtime's stderr."""

    def __init__(
        self, command: Sequence[str], returncode: int | None, stderr: str, *, argv: Sequence[str]
    ) -> None:
        self.command = list(command)
        """The subcommand and its arguments (without the binary and global flags)."""
        self.argv = list(argv)
        self.returncode = returncode
        """None if the command timed out and was killed."""
        self.stderr = _trim(stderr)
        status = "timed out" if returncode is None else f"exit {returncode}"
        detail = f": {self.stderr}" if self.stderr else ""
        name = os.path.basename(self.argv[0]) if self.argv else "runtime"
        super().__init__(f"{name} {' '.join(self.command)} failed ({status}){detail}")


class RuntimeCLI:
    """Runs one runtime binary with a fixed ``--root`` (and global ``extra_args``)."""

    def __init__(
        self,
        binary: str,
        root: str,
        *,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.binary = binary
        self.root = root
        self.extra_args = tuple(extra_args)
        self.timeout = timeout
        self.observer = observer
        self.name = os.path.basename(binary)
        """Seconds any one command may take before it is killed and reported as failed."""

    def __repr__(self) -> str:
        return f"RuntimeCLI({self.binary!r}, root={self.root!r})"

    def global_args(self) -> list[str]:
        """The flags that go before every subcommand (what conmon gets as ``--runtime-arg``)."""
        return [*self.extra_args, f"--root={self.root}"]

    def argv(self, *args: str) -> list[str]:
        return [self.binary, *self.global_args(), *args]

    def state_dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    def _known(self, cid: str) -> bool:
        return os.path.isdir(self.state_dir(cid))

    async def _run(
        self, *args: str, stdin: bytes | None = None, check: bool = True
    ) -> tuple[int, bytes, str]:
        """Run a subcommand; return (returncode, stdout, stderr)."""
        argv = self.argv(*args)
        try:
            with self.observer.invocation("oci", self.name, args[0] if args else ""):
                done = await proc.run(argv, timeout=self.timeout, input=stdin)
                if check and done.returncode != 0:
                    raise RuntimeCLIError(
                        args, done.returncode, done.stderr.decode(errors="replace"), argv=argv
                    )
        except proc.CannotRun as e:  # the binary is missing or not executable
            raise RuntimeCLIError(args, 127, str(e), argv=argv) from None
        except proc.TimedOut:
            raise RuntimeCLIError(args, None, "", argv=argv) from None
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    async def version(self) -> str:
        """The version number from ``--version`` (e.g. ``1.1.5+ds1``), else its first line."""
        _, out, _ = await self._run("--version")
        first = out.decode(errors="replace").strip().splitlines()[:1]
        line = first[0] if first else ""
        words = line.split()
        if "version" in words and words.index("version") + 1 < len(words):
            return words[words.index("version") + 1]
        return line

    async def features(self) -> dict[str, Any] | None:
        """``features`` JSON (runc >= 1.1), or None when the runtime has no such command."""
        rc, out, err = await self._run("features", check=False)
        if rc != 0:
            log.debug("%s has no usable features command: %s", self.binary, _trim(err))
            return None
        try:
            data = json.loads(out)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def start(self, cid: str) -> None:
        await self._run("start", cid)

    async def kill(self, cid: str, signal: int, *, all: bool = False) -> None:
        """Send ``signal``; a container that is already stopped or gone is not an error."""
        args = ["kill", *(["--all"] if all else []), cid, str(int(signal))]
        rc, _, err = await self._run(*args, check=False)
        if rc == 0:
            return
        # Checked after the failure: the process may have exited between the two.
        state = await self.state(cid)
        if state is None or state.get("status") == "stopped":
            return
        raise RuntimeCLIError(args, rc, err, argv=self.argv(*args))

    async def delete(self, cid: str, *, force: bool = False) -> None:
        """Delete the container's runtime state; an unknown container is fine."""
        args = ["delete", *(["--force"] if force else []), cid]
        rc, _, err = await self._run(*args, check=False)
        if rc != 0 and self._known(cid):
            raise RuntimeCLIError(args, rc, err, argv=self.argv(*args))

    async def state(self, cid: str) -> dict[str, Any] | None:
        """``state`` JSON, or None if the runtime does not know the container."""
        rc, out, err = await self._run("state", cid, check=False)
        if rc != 0:
            if not self._known(cid):
                return None
            raise RuntimeCLIError(["state", cid], rc, err, argv=self.argv("state", cid))
        data = json.loads(out)
        if not isinstance(data, dict):
            raise RuntimeCLIError(
                ["state", cid], rc, f"unexpected output {out[:200]!r}", argv=self.argv("state", cid)
            )
        return data

    async def update(self, cid: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` JSON (``update --resources -``, on stdin)."""
        await self._run("update", "--resources", "-", cid, stdin=json.dumps(resources).encode())

    async def list(self) -> builtins.list[dict[str, Any]]:
        """``list --format json``: one dict per container the runtime knows."""
        _, out, _ = await self._run("list", "--format", "json")
        text = out.strip()
        data = json.loads(text) if text else None
        if data is None:
            return []
        if not isinstance(data, list):
            raise RuntimeCLIError(
                ["list"], 0, f"unexpected output {out[:200]!r}", argv=self.argv("list")
            )
        return [d for d in data if isinstance(d, dict)]
