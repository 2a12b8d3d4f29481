"""Hypothesis strategies for hostile gRPC requests, built from the proto descriptors: any
message of any RPC with adversarial values in every field, and raw request bytes that
are not valid messages.

Values: path-like strings (``..``, ``/``, absolute paths, each ending in ``escape``, the
name an escape would create), NUL and control characters, long and huge strings (the
largest over any sane request limit), unknown enum values, 32/64-bit boundaries and
negatives, NaN and infinities, bytes that are not UTF-8, maps of up to 10,000 entries.
Fields that CRI defines as host paths chosen by the (trusted, root-equivalent) client -
log directories, host paths of mounts and devices, import paths - get paths under
``host_dir`` or relative and ``..`` paths, never absolute paths elsewhere: a client may
name any host path there by design, so only ids and names are tested for escapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

ESCAPE = "escape"  # the last component of every path-like hostile string

HOST_PATH_FIELDS = frozenset(
    {
        "log_directory",
        "log_path",
        "host_path",
        "path",
        "localhost_ref",
        "seccomp_profile_path",
        "output_path",
        "checkpoint_path",
    }
)
TEN_THOUSAND = {f"k{i:05}": f"v{i}" for i in range(10_000)}
INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
TEXT = st.characters(exclude_categories=("Cs",))  # protobuf strings are valid UTF-8


@dataclass(frozen=True)
class Hostile:
    """The strategies for one server: ``host_dir`` is where host paths may point,
    ``huge`` the length of a string no request limit should let through."""

    host_dir: str
    huge: int = 2 << 20  # 0: no huge strings
    known: tuple[str, ...] = ()  # ids and names of objects that exist: deeper paths

    def paths(self) -> st.SearchStrategy[str]:
        ups = st.integers(1, 12).map(lambda n: "../" * n + ESCAPE)
        return st.one_of(
            ups,
            st.sampled_from(
                [
                    ESCAPE,
                    f"/{ESCAPE}",
                    f"./{ESCAPE}",
                    f"a/../../{ESCAPE}",
                    f"..\x00/{ESCAPE}",
                    f"//{ESCAPE}",
                    f"{self.host_dir}/../{ESCAPE}",
                    "..",
                    ".",
                    "/",
                    "",
                ]
            ),
        )

    def strings(self) -> st.SearchStrategy[str]:
        return st.one_of(
            st.sampled_from(self.known or ("",)),
            st.text(TEXT, max_size=24),
            self.paths(),
            st.sampled_from(["\x00", "a\x00b", "\n", "x;IP=10.0.0.9", "k=v", " ", "-1", "\u202e"]),
            st.sampled_from([254, 4097, 70_000, self.huge or 1]).map(lambda n: "n" * n),
        )

    def host_paths(self) -> st.SearchStrategy[str]:
        under = st.text(st.sampled_from("abc/."), max_size=12).map(lambda s: f"{self.host_dir}/{s}")
        return st.one_of(under, st.just(""), self.paths().filter(lambda p: not p.startswith("/")))

    def scalar(self, f: FieldDescriptor) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FieldDescriptor.TYPE_STRING:
            return self.host_paths() if f.name in HOST_PATH_FIELDS else self.strings()
        if t == FieldDescriptor.TYPE_BYTES:
            return st.one_of(st.binary(max_size=16), st.just(b"\xff\xfe\xc3\x28"), st.just(b"\0"))
        if t == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if t == FieldDescriptor.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return st.one_of(st.sampled_from(known), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.floats(width=64 if t == FieldDescriptor.TYPE_DOUBLE else 32)
        lo, hi = INT_BOUNDS[t]
        return st.one_of(st.sampled_from([lo, hi, 0, -1 if lo < 0 else 1]), st.integers(lo, hi))

    def message(self, desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """A message of ``desc`` with any subset of its fields set."""
        cls = GetMessageClass(desc)
        fields: dict[str, st.SearchStrategy[Any]] = {}
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
                k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                fields[f.name] = st.one_of(
                    st.dictionaries(self.scalar(k), self.scalar(v), max_size=4),
                    st.just(TEN_THOUSAND),
                )
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= 4:
                    continue
                sub = st.deferred(lambda f=f: self.message(f.message_type, depth + 1))
                fields[f.name] = st.lists(sub, max_size=3) if f.is_repeated else sub
            elif f.is_repeated:
                fields[f.name] = st.lists(self.scalar(f), max_size=4)
            else:
                fields[f.name] = self.scalar(f)
        return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))

    def raw(self, desc: Descriptor) -> st.SearchStrategy[bytes]:
        """Bytes that are not a valid message of ``desc``: a string field holding
        invalid UTF-8, a length running past the end, a truncated varint, an unknown
        wire type; or random bytes (which may happen to parse)."""
        broken: list[bytes] = [b"\x0a\xff", b"\x08\x80\x80\x80", b"\x0f\x00"]
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_STRING:
                broken.append(_key(f.number, 2) + b"\x04\xff\xfe\xc3\x28")
        return st.one_of(st.sampled_from(broken), st.binary(min_size=1, max_size=64))


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
