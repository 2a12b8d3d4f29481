"""Image references, parsed and normalised the way kubelet and containerd do it.

The grammar is the one of ``github.com/distribution/reference`` (which kubelet, containerd's
CRI plugin and containerd's deprecated ``reference/docker`` alias all use)::

    reference        := name [ ":" tag ] [ "@" digest ]
    name             := [ domain "/" ] path
    domain           := host [ ":" port ]        ; DNS-ish name, IPv4, or [IPv6]
    path             := path-component [ "/" path-component ]*
    path-component   := [a-z0-9]+ ( ( [._] | "__" | "-"+ ) [a-z0-9]+ )*
    tag              := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest           := algorithm ":" hex        ; sha256/64, sha384/96, sha512/128, lower-case

``parse`` checks a string against that grammar and splits it without applying any default.
``normalize`` is ``ParseNormalizedNamed`` followed by ``TagNameOnly``: ``busybox`` becomes
``docker.io/library/busybox:latest``.

Whether the first ``/``-separated component is a domain follows docker's rule: it is one when it
is ``localhost``, contains ``.`` or ``:``, or contains an upper-case letter (``Foo/bar`` has domain
``Foo``); otherwise it is the first path component. Behaviour of the real parsers kept on purpose:

* ``localhost:5000`` (no slash) is the Docker Hub image ``library/localhost`` with tag ``5000``.
* ``sha256:<64 hex>`` is a valid *reference* (``docker.io/library/sha256`` with a 64-hex tag);
  callers that may receive image ids (ImageStatus, RemoveImage) must try ``parse_image_id`` first.
* The 255-character limit applies to the path only (distribution/reference >= v0.6.0), and
  ``normalize`` checks it after adding ``library/``.
* A first component that docker takes for a domain but that the grammar does not accept as one
  while accepting it as a path component (``foo_bar.com/repo``) ends up in the path, and the
  normalised reference has an empty domain.

No I/O and no asyncio: everything here is a pure function of its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "LEGACY_DEFAULT_DOMAIN",
    "OFFICIAL_REPO_PREFIX",
    "REPOSITORY_NAME_MAX_LENGTH",
    "Reference",
    "ReferenceError",
    "is_image_id",
    "looks_like_digest",
    "normalize",
    "parse",
    "parse_image_id",
    "validate_digest",
    "validate_tag",
]

DEFAULT_DOMAIN: Final = "docker.io"
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
OFFICIAL_REPO_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"
REPOSITORY_NAME_MAX_LENGTH: Final = 255
TAG_MAX_LENGTH: Final = 128

# Hex lengths of the digest algorithms kubelet registers (crypto/sha256 and crypto/sha512).
_DIGEST_HEX_LENGTHS: Final[dict[str, int]] = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN_AND_PORT = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"

# re.ASCII everywhere, and always fullmatch(): ``$`` would accept a trailing newline.
_NAME_RE: Final = re.compile(rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}", re.ASCII)
_DOMAIN_RE: Final = re.compile(_DOMAIN_AND_PORT, re.ASCII)
_TAG_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_TAG_CHARS_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", re.ASCII)
_DIGEST_RE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}", re.ASCII
)
_IDENTIFIER_RE: Final = re.compile(r"[a-f0-9]{64}", re.ASCII)

_SHOW_MAX: Final = 300


def _show(ref: str) -> str:
    if len(ref) <= _SHOW_MAX:
        return repr(ref)
    return f"{ref[:_SHOW_MAX]!r}... ({len(ref)} characters)"


class ReferenceError(ValueError):  # shadows the builtin on purpose: the name is API
    """An image reference that kubelet/containerd would refuse.

    ``problem`` says what is wrong, ``reference`` is the rejected input.
    """

    def __init__(self, problem: str, reference: str) -> None:
        super().__init__(f"invalid reference format: {problem}: {_show(reference)}")
        self.problem = problem
        self.reference = reference

    def __reduce__(self) -> tuple[type[ReferenceError], tuple[str, str]]:
        return (type(self), (self.problem, self.reference))


def _tag_problem(tag: str) -> str | None:
    if _TAG_RE.fullmatch(tag):
        return None
    if not tag:
        return "tag is empty (trailing ':')"
    if _TAG_CHARS_RE.fullmatch(tag):
        return f"tag must not be more than {TAG_MAX_LENGTH} characters (has {len(tag)})"
    return f"invalid tag {_show(tag)}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"


def _digest_problem(digest: str) -> str | None:
    if not digest:
        return "digest is empty (trailing '@')"
    if not _DIGEST_RE.fullmatch(digest):
        return f"invalid digest {_show(digest)}: want algorithm:hex with at least 32 hex digits"
    algorithm, _, encoded = digest.partition(":")
    want = _DIGEST_HEX_LENGTHS.get(algorithm)
    if want is None:
        return f"unsupported digest algorithm {algorithm!r}"
    if len(encoded) != want:
        return f"{algorithm} digest must have {want} hex digits, not {len(encoded)}"
    if encoded != encoded.lower():
        return f"{algorithm} digest must be lower-case hex"
    return None


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise :class:`ReferenceError`."""
    problem = _tag_problem(tag)
    if problem is not None:
        raise ReferenceError(problem, tag)
    return tag


def validate_digest(digest: str) -> str:
    """Return ``digest`` if kubelet would accept it in a reference, else raise."""
    problem = _digest_problem(digest)
    if problem is not None:
        raise ReferenceError(problem, digest)
    return digest


def looks_like_digest(value: str) -> bool:
    """True for a well-formed ``sha256:<64 hex>`` / ``sha384:<96>`` / ``sha512:<128>``."""
    return _digest_problem(value) is None


def parse_image_id(value: str) -> str | None:
    """``sha256:<64 hex>`` or a bare 64-hex image id, as canonical ``sha256:<hex>``; else None.

    This is the form kubelet passes to ImageStatus/RemoveImage for images it knows by id, and
    what ``ParseAnyReference`` treats as a digest rather than a name.
    """
    if _IDENTIFIER_RE.fullmatch(value):
        return "sha256:" + value
    if value.startswith("sha256:") and _IDENTIFIER_RE.fullmatch(value, 7):
        return value
    return None


def is_image_id(value: str) -> bool:
    """True if ``value`` is an image id (``sha256:<64 hex>`` or bare 64 hex)."""
    return parse_image_id(value) is not None


def _is_docker_domain(component: str) -> bool:
    """Docker's rule for whether the first path element names a registry."""
    return (
        component == "localhost"
        or "." in component
        or ":" in component
        or component.lower() != component
    )


def _check_name(name: str, ref: str) -> None:
    if not name:
        raise ReferenceError("repository name must have at least one component", ref)
    if _NAME_RE.fullmatch(name):
        return
    if "//" in name or name.startswith("/") or name.endswith("/"):
        raise ReferenceError("repository name has an empty path component", ref)
    lower = name.lower()
    if lower != name and _NAME_RE.fullmatch(lower):
        raise ReferenceError("repository name must be lowercase", ref)
    detail = "" if name == ref else f" {_show(name)}"
    raise ReferenceError(f"invalid repository name{detail}", ref)


def _components(ref: str) -> tuple[str, str | None, str | None]:
    """Split and validate ``ref`` into name, tag and digest."""
    if not ref:
        raise ReferenceError("repository name must have at least one component", ref)
    if any(ch.isspace() for ch in ref):
        raise ReferenceError("reference must not contain whitespace", ref)
    if "://" in ref:
        raise ReferenceError("reference must not include a URL scheme", ref)
    if _IDENTIFIER_RE.fullmatch(ref):
        raise ReferenceError(
            "a 64-character hexadecimal string is an image id, not a repository name", ref
        )
    rest, at, digest = ref.partition("@")
    # A tag follows the last ':' unless that ':' belongs to the domain (before any '/').
    tag: str | None = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
    _check_name(rest, ref)
    if tag is not None and (problem := _tag_problem(tag)) is not None:
        raise ReferenceError(problem, ref)
    if not at:
        return rest, tag, None
    if (problem := _digest_problem(digest)) is not None:
        raise ReferenceError(problem, ref)
    return rest, tag, digest


def _check_length(path: str, ref: str) -> None:
    if len(path) > REPOSITORY_NAME_MAX_LENGTH:
        raise ReferenceError(
            f"repository name must not be more than {REPOSITORY_NAME_MAX_LENGTH} characters"
            f" (has {len(path)})",
            ref,
        )


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference. ``str()`` gives the full form ``name[:tag][@digest]``."""

    domain: str
    """Registry host and optional port; ``""`` when the reference names none."""
    path: str
    """Repository path within the registry, e.g. ``library/busybox``."""
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Repository name including the domain, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        """The short form docker prints: ``busybox:latest``, ``user/repo:tag``.

        Only Docker Hub references are shortened. Unlike docker's ``FamiliarString``, the
        ``docker.io/`` prefix is kept when dropping it would make the first path component read
        as a registry (``docker.io/foo.com/bar``), so the result always normalises back.
        """
        if self.domain != DEFAULT_DOMAIN:
            return str(self)
        path = self.path
        short = path.removeprefix(OFFICIAL_REPO_PREFIX)
        if short != path and "/" not in short:
            return short + self._suffix()
        first, slash, _ = path.partition("/")
        if slash and _is_docker_domain(first):
            return str(self)
        return path + self._suffix()

    @property
    def is_name_only(self) -> bool:
        return self.tag is None and self.digest is None

    def with_tag(self, tag: str | None) -> Reference:
        """A copy with ``tag`` (validated) replacing the tag; ``None`` drops it."""
        return replace(self, tag=None if tag is None else validate_tag(tag))

    def with_digest(self, digest: str | None) -> Reference:
        """A copy with ``digest`` (validated) replacing the digest; ``None`` drops it."""
        return replace(self, digest=None if digest is None else validate_digest(digest))

    def trim(self) -> Reference:
        """The repository alone, without tag or digest."""
        return replace(self, tag=None, digest=None)

    def docker_ref(self) -> Reference:
        """What ``ParseDockerRef`` returns: the digest alone when there is one, else a tag.

        containerd's CRI plugin stores and looks up image names in this form.
        """
        if self.digest is not None:
            return replace(self, tag=None)
        if self.tag is None:
            return replace(self, tag=DEFAULT_TAG)
        return self


def parse(ref: str) -> Reference:
    """Parse ``ref`` strictly, applying no default.

    ``parse("busybox")`` is ``Reference("", "busybox", None, None)``;
    ``parse("docker.io/busybox")`` keeps the domain and the single-component path as written.
    Raises :class:`ReferenceError` for anything kubelet would not accept as an image name,
    including a bare 64-hex image id.
    """
    name, tag, digest = _components(ref)
    first, slash, rest = name.partition("/")
    if slash and _is_docker_domain(first) and _DOMAIN_RE.fullmatch(first):
        domain, path = first, rest
    else:
        domain, path = "", name
    _check_length(path, ref)
    return Reference(domain, path, tag, digest)


def normalize(ref: str) -> Reference:
    """Parse ``ref`` and fill in defaults as kubelet/containerd do.

    ``docker.io`` when no registry is named (``index.docker.io`` is rewritten to it),
    ``library/`` in front of a single-component Docker Hub path, and tag ``latest`` when there
    is neither tag nor digest. A reference with both tag and digest keeps both.
    """
    parsed = parse(ref)
    name = parsed.name
    first, slash, rest = name.partition("/")
    if not slash:
        domain, remote = DEFAULT_DOMAIN, name
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remote = DEFAULT_DOMAIN, rest
    elif _is_docker_domain(first):
        domain, remote = first, rest
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    if not _DOMAIN_RE.fullmatch(domain):
        # e.g. "foo_bar.com/repo": taken for a domain by docker's rule, but the grammar only
        # accepts it as a path component, so the real parser leaves the domain empty.
        domain, remote = "", name
    _check_length(remote, ref)
    tag = parsed.tag
    if tag is None and parsed.digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, remote, tag, parsed.digest)
