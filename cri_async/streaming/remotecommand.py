"""The remotecommand protocol family (exec/attach), pure: versions and their negotiation,
stream roles, the status written on the error stream, and terminal resize messages.

The status is byte-identical to what Go's ``json.Marshal`` makes of a ``metav1.Status``
(field order, compact separators, HTML-safe escapes), because clients match on it.
"""

from __future__ import annotations

import codecs
import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cri_async.streaming.backend import Stdio, TerminalSize

PORT_FORWARD_PROTOCOL = "portforward.k8s.io"
STREAM_TYPE_HEADER = "streamtype"
PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"
# A resize message that does not close within this many bytes is nonsense.
MAX_RESIZE_MESSAGE = 4096


class StreamProtocol(enum.Enum):
    V1 = "channel.k8s.io"
    V2 = "v2.channel.k8s.io"
    V3 = "v3.channel.k8s.io"
    V4 = "v4.channel.k8s.io"
    V5 = "v5.channel.k8s.io"

    @property
    def supports_resize(self) -> bool:
        return self in (StreamProtocol.V3, StreamProtocol.V4, StreamProtocol.V5)

    @property
    def json_status(self) -> bool:
        return self in (StreamProtocol.V4, StreamProtocol.V5)


# What the SPDY server offers, as kubelet: v5 only changes WebSocket behaviour, and a v5
# client over SPDY behaves exactly as v4, so v5 is never chosen there.
SPDY_EXEC_PROTOCOLS = (StreamProtocol.V4, StreamProtocol.V3, StreamProtocol.V2, StreamProtocol.V1)
# What our SPDY client offers, newest first (as current client-go).
CLIENT_EXEC_PROTOCOLS = (
    StreamProtocol.V5,
    StreamProtocol.V4,
    StreamProtocol.V3,
    StreamProtocol.V2,
    StreamProtocol.V1,
)


class NegotiationError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def offered_protocols(header_values: Iterable[str]) -> list[str]:
    """All ``X-Stream-Protocol-Version`` lines joined and split on commas, in order."""
    return [p.strip() for v in header_values for p in v.split(",") if p.strip()]


def negotiate(header_values: Iterable[str], supported: Sequence[str]) -> str:
    """The first protocol in the *client's* order that the server supports.
    No header: 400. No match: 403 (with the supported list)."""
    offered = offered_protocols(header_values)
    if not offered:
        raise NegotiationError(400, f"missing {PROTOCOL_HEADER} header")
    for p in offered:
        if p in supported:
            return p
    raise NegotiationError(
        403, f"none of the requested protocols {offered} is supported (have {list(supported)})"
    )


class StreamType(enum.Enum):
    ERROR = "error"
    STDIN = "stdin"
    STDOUT = "stdout"
    STDERR = "stderr"
    RESIZE = "resize"
    DATA = "data"  # port-forward

    @classmethod
    def parse(cls, value: str | None) -> StreamType | None:
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None


def expected_streams(stdio: Stdio, protocol: StreamProtocol) -> frozenset[StreamType]:
    """The streams a client opens for this request, counted from the cached CRI request."""
    kinds = {StreamType.ERROR}
    if stdio.stdin:
        kinds.add(StreamType.STDIN)
    if stdio.stdout:
        kinds.add(StreamType.STDOUT)
    if stdio.stderr and not stdio.tty:
        kinds.add(StreamType.STDERR)
    if stdio.tty and protocol.supports_resize:
        kinds.add(StreamType.RESIZE)
    return frozenset(kinds)


# -- status -------------------------------------------------------------------------------


class OutcomeKind(enum.Enum):
    SUCCESS = "success"
    EXIT_CODE = "exit-code"  # the command ran and exited non-zero
    INTERNAL = "internal"  # exec/attach could not run (or the client got a plain error)


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    exit_code: int = 0
    message: str = ""

    @classmethod
    def from_exit_code(cls, code: int) -> Outcome:
        return cls(OutcomeKind.SUCCESS) if code == 0 else cls(OutcomeKind.EXIT_CODE, code)


def go_json(value: object) -> bytes:
    """``json.Marshal`` output: compact, UTF-8, with Go's HTML-safe escapes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, esc)
    return text.encode()


def status_object(outcome: Outcome) -> dict[str, object]:
    if outcome.kind is OutcomeKind.SUCCESS:
        return {"metadata": {}, "status": "Success"}
    if outcome.kind is OutcomeKind.EXIT_CODE:
        return {
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: "
            f"exit status {outcome.exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(outcome.exit_code)}]},
        }
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {outcome.message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": outcome.message}]},
        "code": 500,
    }


def encode_status(outcome: Outcome, json_status: bool) -> bytes:
    """The error-stream payload: v4+ a JSON Status; older protocols the message text on
    failure and nothing on success."""
    obj = status_object(outcome)
    if json_status:
        return go_json(obj)
    return b"" if outcome.kind is OutcomeKind.SUCCESS else str(obj["message"]).encode()


class StatusError(Exception):
    """An error-stream payload the client cannot make sense of."""


def parse_status(raw: bytes, json_status: bool) -> Outcome:
    """Client side: what the server's error stream says."""
    if not json_status:
        text = raw.decode(errors="replace")
        return Outcome(OutcomeKind.SUCCESS) if not text else Outcome(OutcomeKind.INTERNAL, 0, text)
    if not raw:
        # The stream ended without a status (the server went away).
        raise StatusError("error stream closed without a status")
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise StatusError(f"error stream is not a JSON Status: {e}") from None
    if not isinstance(obj, dict):
        raise StatusError("error stream is not a JSON object")
    status = obj.get("status")
    if status == "Success":
        return Outcome(OutcomeKind.SUCCESS)
    if status != "Failure":
        raise StatusError(f"unknown status {status!r}")
    message = str(obj.get("message", ""))
    if obj.get("reason") == "NonZeroExitCode":
        causes = (obj.get("details") or {}).get("causes") or []
        for cause in causes:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    code = int(str(cause.get("message")))
                except ValueError:
                    break
                if 0 <= code <= 255:
                    return Outcome(OutcomeKind.EXIT_CODE, code, message)
        raise StatusError(f"NonZeroExitCode without a valid ExitCode cause: {message}")
    return Outcome(OutcomeKind.INTERNAL, 0, message)


# -- resize -------------------------------------------------------------------------------


def encode_resize(size: TerminalSize) -> bytes:
    return go_json({"Width": size.width, "Height": size.height}) + b"\n"


class ResizeError(Exception):
    pass


class ResizeDecoder:
    """Terminal sizes from a byte stream of JSON values (``{"Width":W,"Height":H}``), which
    may be split anywhere; keys match case-insensitively as Go's decoder does."""

    def __init__(self) -> None:
        self._buf = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._json = json.JSONDecoder()

    def feed(self, data: bytes) -> list[TerminalSize]:
        self._buf += self._utf8.decode(data)
        sizes: list[TerminalSize] = []
        while True:
            text = self._buf.lstrip()
            if not text:
                self._buf = ""
                return sizes
            try:
                value, end = self._json.raw_decode(text)
            except ValueError:
                if len(text) > MAX_RESIZE_MESSAGE:
                    raise ResizeError("resize message too long") from None
                self._buf = text
                return sizes
            self._buf = text[end:]
            if not isinstance(value, dict):
                raise ResizeError(f"resize message is not an object: {value!r}")
            fields = {str(k).lower(): v for k, v in value.items()}
            width, height = fields.get("width", 0), fields.get("height", 0)
            if not all(type(v) is int and 0 <= v <= 0xFFFF for v in (width, height)):
                raise ResizeError(f"bad terminal size {value!r}")
            sizes.append(TerminalSize(width, height))
