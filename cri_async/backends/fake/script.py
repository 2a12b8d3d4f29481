"""What a fake container's process does, worked out ahead of time. Pure.

A command line is run through a tiny shell (``echo``, ``sleep``, ``exit``, ``trap``...) and
turned into a *timeline*: output at time offsets, then an exit (or running forever). The
simulator plays the timeline back; after a cri-async restart it resumes it at the elapsed
time, the way a real container keeps running while its runtime restarts.
"""

from __future__ import annotations

import math
import os.path
import shlex
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

SHELLS = frozenset({"sh", "bash", "ash", "dash"})
# Commands that run until they are signalled, as servers and idle shells do.
DAEMONS = frozenset({"top", "nginx", "pause", "cat", "tail", "httpd", "redis-server", "sh"})


class NotFound(Exception):
    """The program is not a command the fake knows (a real exec would fail with ENOENT)."""


@dataclass(frozen=True, slots=True)
class Output:
    at: float
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True, slots=True)
class Timeline:
    outputs: tuple[Output, ...] = ()
    exit_at: float = math.inf  # seconds after start; inf: runs until signalled
    exit_code: int = 0
    ignored_signals: frozenset[int] = field(default_factory=frozenset)

    @property
    def runs_forever(self) -> bool:
        return math.isinf(self.exit_at)

    def after(self, elapsed: float) -> Timeline:
        """The rest of the timeline once ``elapsed`` seconds have passed."""
        return Timeline(
            tuple(
                Output(o.at - elapsed, o.stream, o.data) for o in self.outputs if o.at >= elapsed
            ),
            max(0.0, self.exit_at - elapsed),
            self.exit_code,
            self.ignored_signals,
        )


@dataclass(slots=True)
class _Shell:
    env: Mapping[str, str]
    hostname: str
    workdir: str
    now: float = 0.0
    status: int = 0
    outputs: list[Output] = field(default_factory=list)
    ignored: set[int] = field(default_factory=set)
    exited: bool = False

    def emit(self, stream: str, data: bytes) -> None:
        if data:
            self.outputs.append(Output(self.now, stream, data))

    def run(self, argv: Sequence[str], *, top_level: bool) -> None:
        words, stream = _redirects(argv)
        if not words:
            return
        prog = os.path.basename(words[0])
        args = words[1:]
        if prog in SHELLS and args[:1] == ["-c"] and len(args) >= 2:
            self.script(args[1])
            return
        builtin = _BUILTINS.get(prog)
        if builtin is not None:
            builtin(self, args, stream)
        elif prog in DAEMONS:
            self.now = math.inf
        elif top_level:
            raise NotFound(f'exec: "{words[0]}": executable file not found in $PATH')
        else:
            self.emit("stderr", f"sh: {words[0]}: not found\n".encode())
            self.status = 127

    def script(self, text: str) -> None:
        for connector, argv in parse_script(text):
            if self.exited or math.isinf(self.now):
                return
            if connector == "&&" and self.status != 0:
                continue
            if connector == "||" and self.status == 0:
                continue
            self.run(argv, top_level=False)


def _redirects(argv: Sequence[str]) -> tuple[list[str], str]:
    """Strip ``>&2`` (in any of its tokenisations) and say which stream output goes to."""
    words = list(argv)
    stream = "stdout"
    for pattern in ([">", "&", "2"], ["1>", "&", "2"], [">&", "2"], [">&2"], ["1>&2"]):
        n = len(pattern)
        for i in range(len(words) - n + 1):
            if words[i : i + n] == pattern:
                del words[i : i + n]
                stream = "stderr"
                break
    return words, stream


def _echo(sh: _Shell, args: list[str], stream: str) -> None:
    newline = True
    if args[:1] == ["-n"]:
        newline, args = False, args[1:]
    sh.emit(stream, (" ".join(args) + ("\n" if newline else "")).encode())
    sh.status = 0


def _sleep(sh: _Shell, args: list[str], stream: str) -> None:
    arg = args[0] if args else "0"
    sh.now += math.inf if arg in ("infinity", "inf") else float(arg)
    sh.status = 0


def _exit(sh: _Shell, args: list[str], stream: str) -> None:
    sh.status = int(args[0]) & 0xFF if args else sh.status
    sh.exited = True


def _trap(sh: _Shell, args: list[str], stream: str) -> None:
    # Only `trap '' SIG...` (ignore) matters to a simulated process.
    if len(args) >= 2 and args[0] == "":
        for name in args[1:]:
            sh.ignored.add(signal_number(name))
    sh.status = 0


def _status(code: int) -> Callable[[_Shell, list[str], str], None]:
    def run(sh: _Shell, args: list[str], stream: str) -> None:
        sh.status = code

    return run


def _env(sh: _Shell, args: list[str], stream: str) -> None:
    sh.emit(stream, "".join(f"{k}={v}\n" for k, v in sh.env.items()).encode())
    sh.status = 0


def _hostname(sh: _Shell, args: list[str], stream: str) -> None:
    sh.emit(stream, f"{sh.hostname}\n".encode())
    sh.status = 0


def _pwd(sh: _Shell, args: list[str], stream: str) -> None:
    sh.emit(stream, f"{sh.workdir or '/'}\n".encode())
    sh.status = 0


_BUILTINS = {
    "echo": _echo,
    "sleep": _sleep,
    "exit": _exit,
    "trap": _trap,
    "true": _status(0),
    "false": _status(1),
    "env": _env,
    "hostname": _hostname,
    "pwd": _pwd,
}


def parse_script(text: str) -> list[tuple[str, list[str]]]:
    """Split a shell script into simple commands with the connector before each."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    commands: list[tuple[str, list[str]]] = []
    connector, words = ";", list[str]()
    for tok in lexer:
        if tok in (";", "\n", "&&", "||", ";\n", "\n\n"):
            if words:
                commands.append((connector, words))
            connector = "&&" if tok == "&&" else "||" if tok == "||" else ";"
            words = []
        else:
            words.append(tok)
    if words:
        commands.append((connector, words))
    return commands


def signal_number(name: str) -> int:
    name = name.upper().removeprefix("SIG")
    if name.isdigit():
        return int(name)
    return int(getattr(signal, "SIG" + name))


def simulate(
    argv: Sequence[str], env: Mapping[str, str], *, hostname: str = "", workdir: str = "/"
) -> Timeline:
    """The timeline of ``argv``; raises NotFound for an unknown program."""
    if not argv:
        raise NotFound("no command specified")
    sh = _Shell(env=env, hostname=hostname, workdir=workdir)
    try:
        sh.run(argv, top_level=True)
    except (ValueError, IndexError) as e:  # malformed script: sh reports and fails
        sh.emit("stderr", f"sh: syntax error: {e}\n".encode())
        sh.status = 2
    return Timeline(tuple(sh.outputs), sh.now, sh.status, frozenset(sh.ignored))


def exit_code_for_signal(sig: int) -> int:
    return 128 + sig


__all__ = ["NotFound", "Output", "Timeline", "exit_code_for_signal", "simulate"]
