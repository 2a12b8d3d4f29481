"""Image reference parsing and normalisation, checked against the real parsers' behaviour.

Cases marked "distribution" come from the test tables of github.com/distribution/reference
(reference_test.go, normalize_test.go; kubelet and containerd's CRI plugin use that package),
"containerd" from containerd's reference/docker tests, "go-digest" from the digest validation
that distribution/reference delegates to, and "quirk" marks behaviour of the real parsers that
is easy to get wrong.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from cri_async.registry.reference import (
    Reference,
    ReferenceError,
    is_image_id,
    looks_like_digest,
    normalize,
    parse,
    parse_image_id,
    validate_digest,
    validate_tag,
)

HEX64 = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
D = "sha256:" + HEX64
BUSYBOX_DIGEST = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
IMAGE_ID = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"

# (input, normalized string, domain, path, tag, digest, familiar)
VALID: list[tuple[str, str, str, str, str | None, str | None, str]] = [
    # distribution normalize_test TestParseRepositoryInfo / containerd ParseDockerRef
    (
        "busybox",
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "busybox:latest",
    ),
    (
        "library/busybox",
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "busybox:latest",
    ),
    (
        "docker.io/busybox",
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "busybox:latest",
    ),
    (
        "docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "busybox:latest",
    ),
    (
        "index.docker.io/library/busybox",
        "docker.io/library/busybox:latest",
        "docker.io",
        "library/busybox",
        "latest",
        None,
        "busybox:latest",
    ),
    (
        "index.docker.io/busybox:1.36",
        "docker.io/library/busybox:1.36",
        "docker.io",
        "library/busybox",
        "1.36",
        None,
        "busybox:1.36",
    ),
    (
        "busybox:1.36.1-musl",
        "docker.io/library/busybox:1.36.1-musl",
        "docker.io",
        "library/busybox",
        "1.36.1-musl",
        None,
        "busybox:1.36.1-musl",
    ),
    (
        "user/repo",
        "docker.io/user/repo:latest",
        "docker.io",
        "user/repo",
        "latest",
        None,
        "user/repo:latest",
    ),
    (
        "docker.io/user/repo:tag",
        "docker.io/user/repo:tag",
        "docker.io",
        "user/repo",
        "tag",
        None,
        "user/repo:tag",
    ),
    (
        "index.docker.io/fooo/bar",
        "docker.io/fooo/bar:latest",
        "docker.io",
        "fooo/bar",
        "latest",
        None,
        "fooo/bar:latest",
    ),
    # distribution: "library/foo/bar" keeps its library/ in the familiar form
    (
        "library/foo/bar",
        "docker.io/library/foo/bar:latest",
        "docker.io",
        "library/foo/bar",
        "latest",
        None,
        "library/foo/bar:latest",
    ),
    (
        "other/library",
        "docker.io/other/library:latest",
        "docker.io",
        "other/library",
        "latest",
        None,
        "other/library:latest",
    ),
    (
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io/pause:3.9",
        "registry.k8s.io",
        "pause",
        "3.9",
        None,
        "registry.k8s.io/pause:3.9",
    ),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com",
        "bar/baz/quux",
        "some-long-tag",
        None,
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io",
        "test.example.com/my-app",
        "test.example.com",
        None,
        "b.gcr.io/test.example.com/my-app:test.example.com",
    ),
    (
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        "xn--n3h.com",
        "myimage",
        "xn--n3h.com",
        None,
        "xn--n3h.com/myimage:xn--n3h.com",
    ),
    # distribution: localhost is always a domain, with or without a port
    (
        "localhost/fooo",
        "localhost/fooo:latest",
        "localhost",
        "fooo",
        "latest",
        None,
        "localhost/fooo:latest",
    ),
    (
        "localhost:5000/foo/bar:v1",
        "localhost:5000/foo/bar:v1",
        "localhost:5000",
        "foo/bar",
        "v1",
        None,
        "localhost:5000/foo/bar:v1",
    ),
    (
        "test-com:8080/foo",
        "test-com:8080/foo:latest",
        "test-com:8080",
        "foo",
        "latest",
        None,
        "test-com:8080/foo:latest",
    ),
    (
        "127.0.0.1:5000/debian",
        "127.0.0.1:5000/debian:latest",
        "127.0.0.1:5000",
        "debian",
        "latest",
        None,
        "127.0.0.1:5000/debian:latest",
    ),
    (
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000/repo:5050",
        "192.168.1.1:5000",
        "repo",
        "5050",
        None,
        "192.168.1.1:5000/repo:5050",
    ),
    # distribution reference_test: IPv6 in brackets, with and without port
    (
        "[::1]:5000/repo",
        "[::1]:5000/repo:latest",
        "[::1]:5000",
        "repo",
        "latest",
        None,
        "[::1]:5000/repo:latest",
    ),
    (
        "[2001:db8::1]/repo",
        "[2001:db8::1]/repo:latest",
        "[2001:db8::1]",
        "repo",
        "latest",
        None,
        "[2001:db8::1]/repo:latest",
    ),
    (
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
        "[2001:db8:1:2:3:4:5:6]",
        "repo",
        "tag",
        None,
        "[2001:db8:1:2:3:4:5:6]/repo:tag",
    ),
    (
        f"[2001:db8::1]:5000/repo:tag@{D}",
        f"[2001:db8::1]:5000/repo:tag@{D}",
        "[2001:db8::1]:5000",
        "repo",
        "tag",
        D,
        f"[2001:db8::1]:5000/repo:tag@{D}",
    ),
    # distribution: a digest without tag gets no :latest
    (
        f"busybox@{BUSYBOX_DIGEST}",
        f"docker.io/library/busybox@{BUSYBOX_DIGEST}",
        "docker.io",
        "library/busybox",
        None,
        BUSYBOX_DIGEST,
        f"busybox@{BUSYBOX_DIGEST}",
    ),
    (
        f"test:5000/repo@{D}",
        f"test:5000/repo@{D}",
        "test:5000",
        "repo",
        None,
        D,
        f"test:5000/repo@{D}",
    ),
    # distribution TestParseReferenceWithTagAndDigest: tag and digest are both kept
    (
        f"busybox:latest@{BUSYBOX_DIGEST}",
        f"docker.io/library/busybox:latest@{BUSYBOX_DIGEST}",
        "docker.io",
        "library/busybox",
        "latest",
        BUSYBOX_DIGEST,
        f"busybox:latest@{BUSYBOX_DIGEST}",
    ),
    # kubelet registers crypto/sha512, which also provides sha384
    (
        "repo@sha512:" + "ab" * 64,
        "docker.io/library/repo@sha512:" + "ab" * 64,
        "docker.io",
        "library/repo",
        None,
        "sha512:" + "ab" * 64,
        "repo@sha512:" + "ab" * 64,
    ),
    (
        "repo@sha384:" + "0" * 96,
        "docker.io/library/repo@sha384:" + "0" * 96,
        "docker.io",
        "library/repo",
        None,
        "sha384:" + "0" * 96,
        "repo@sha384:" + "0" * 96,
    ),
    # distribution: an upper-case first component is taken for a domain
    (
        "LOCALDOMAIN/fooo",
        "LOCALDOMAIN/fooo:latest",
        "LOCALDOMAIN",
        "fooo",
        "latest",
        None,
        "LOCALDOMAIN/fooo:latest",
    ),
    ("Foo/bar", "Foo/bar:latest", "Foo", "bar", "latest", None, "Foo/bar:latest"),
    # distribution TestNormalizedSplitHostname: "_" does not make a domain
    (
        "test_com/foo",
        "docker.io/test_com/foo:latest",
        "docker.io",
        "test_com/foo",
        "latest",
        None,
        "test_com/foo:latest",
    ),
    # distribution TestValidateRemoteName: separators
    (
        "docker---rules/docker",
        "docker.io/docker---rules/docker:latest",
        "docker.io",
        "docker---rules/docker",
        "latest",
        None,
        "docker---rules/docker:latest",
    ),
    (
        "dock__er/docker",
        "docker.io/dock__er/docker:latest",
        "docker.io",
        "dock__er/docker",
        "latest",
        None,
        "dock__er/docker:latest",
    ),
    (
        "d/docker",
        "docker.io/d/docker:latest",
        "docker.io",
        "d/docker",
        "latest",
        None,
        "d/docker:latest",
    ),
    # distribution: tags may be upper-case, repository names may not
    (
        "lowercase:Uppercase",
        "docker.io/library/lowercase:Uppercase",
        "docker.io",
        "library/lowercase",
        "Uppercase",
        None,
        "lowercase:Uppercase",
    ),
    (
        "repo:" + "_" + "a" * 127,
        "docker.io/library/repo:_" + "a" * 127,
        "docker.io",
        "library/repo",
        "_" + "a" * 127,
        None,
        "repo:_" + "a" * 127,
    ),
    # distribution: 64 non-hex characters are a name; 64 hex after a domain too
    (
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "docker.io/library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
        "docker.io",
        "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "latest",
        None,
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev:latest",
    ),
    (
        f"docker.io/{IMAGE_ID}",
        f"docker.io/library/{IMAGE_ID}:latest",
        "docker.io",
        f"library/{IMAGE_ID}",
        "latest",
        None,
        f"{IMAGE_ID}:latest",
    ),
    # distribution ParseAnyReference: 63 hex is a name
    (
        IMAGE_ID[:63],
        f"docker.io/library/{IMAGE_ID[:63]}:latest",
        "docker.io",
        f"library/{IMAGE_ID[:63]}",
        "latest",
        None,
        f"{IMAGE_ID[:63]}:latest",
    ),
    # quirk (distribution): without a '/', "host:port" is a Docker Hub name plus a tag
    (
        "localhost:5000",
        "docker.io/library/localhost:5000",
        "docker.io",
        "library/localhost",
        "5000",
        None,
        "localhost:5000",
    ),
    (
        "test.com:5000",
        "docker.io/library/test.com:5000",
        "docker.io",
        "library/test.com",
        "5000",
        None,
        "test.com:5000",
    ),
    (
        "192.168.1.1",
        "docker.io/library/192.168.1.1:latest",
        "docker.io",
        "library/192.168.1.1",
        "latest",
        None,
        "192.168.1.1:latest",
    ),
    # quirk: "sha256:<hex>" is a reference to docker.io/library/sha256 with a 64-hex tag
    (
        f"sha256:{HEX64}",
        f"docker.io/library/sha256:{HEX64}",
        "docker.io",
        "library/sha256",
        HEX64,
        None,
        f"sha256:{HEX64}",
    ),
    # quirk (distribution): "foo_bar.com" looks like a domain to docker's rule but the grammar
    # only accepts it as a path component, so the normalised reference has no domain
    (
        "foo_bar.com/repo",
        "foo_bar.com/repo:latest",
        "",
        "foo_bar.com/repo",
        "latest",
        None,
        "foo_bar.com/repo:latest",
    ),
    # distribution v0.6.0: the length limit counts the path only, not the domain
    (
        "example.com/" + "a" * 255 + ":tag",
        "example.com/" + "a" * 255 + ":tag",
        "example.com",
        "a" * 255,
        "tag",
        None,
        "example.com/" + "a" * 255 + ":tag",
    ),
    (
        "a/" * 127 + "a:t",
        "docker.io/" + "a/" * 127 + "a:t",
        "docker.io",
        "a/" * 127 + "a",
        "t",
        None,
        "a/" * 127 + "a:t",
    ),
    # docker would print "foo.com/bar:latest", which normalises to registry foo.com; we keep
    # the docker.io/ prefix so the familiar form round-trips
    (
        "docker.io/foo.com/bar",
        "docker.io/foo.com/bar:latest",
        "docker.io",
        "foo.com/bar",
        "latest",
        None,
        "docker.io/foo.com/bar:latest",
    ),
    (
        "docker.io/localhost/bar",
        "docker.io/localhost/bar:latest",
        "docker.io",
        "localhost/bar",
        "latest",
        None,
        "docker.io/localhost/bar:latest",
    ),
]

# (input, error substring) for inputs that neither parse() nor normalize() accept
INVALID: list[tuple[str, str]] = [
    ("", "at least one component"),  # distribution: ErrNameEmpty
    (" ", "whitespace"),
    ("busybox ", "whitespace"),
    ("busybox\n", "whitespace"),  # a regex anchored with $ would let this through
    ("\tbusybox", "whitespace"),
    ("Busybox", "repository name must be lowercase"),
    ("Uppercase:tag", "repository name must be lowercase"),  # distribution
    ("docker/Docker", "repository name must be lowercase"),  # distribution
    ("docker.io/docker/Docker", "repository name must be lowercase"),  # distribution
    ("test:5000/Uppercase/lowercase:tag", "repository name must be lowercase"),  # distribution
    ("busybox:", "trailing ':'"),
    ("busybox@", "trailing '@'"),
    ("busybox:latest@", "trailing '@'"),
    ("docker///docker", "empty path component"),  # distribution
    ("docker.io//busybox", "empty path component"),
    ("docker/", "empty path component"),  # distribution
    ("/busybox", "empty path component"),
    ("localhost:5000/", "empty path component"),
    (":justtag", "at least one component"),  # distribution
    (f"@{D}", "at least one component"),  # distribution
    ("busybox:-tag", "invalid tag"),  # distribution TestInvalidReferenceComponents
    ("busybox:.tag", "invalid tag"),
    ("busybox:a/b", "invalid"),
    ("busybox:" + "a" * 129, "tag must not be more than 128 characters"),
    ("busybox:tag:tag2", "invalid repository name"),
    (f"repo@sha256:{'f' * 34}", "must have 64 hex digits"),  # distribution, go-digest
    (f"repo@sha256:{'f' * 65}", "must have 64 hex digits"),
    (f"repo@sha256:{'F' * 64}", "lower-case hex"),  # go-digest: A-F not allowed
    (f"repo@sha512:{'f' * 64}", "must have 128 hex digits"),
    (f"validname@invaliddigest:{HEX64}", "unsupported digest algorithm"),  # distribution
    (f"repo@md5:{'f' * 32}", "unsupported digest algorithm"),
    (f"repo@SHA256:{HEX64}", "unsupported digest algorithm"),
    ("repo@sha256:xyz", "invalid digest"),
    (f"repo@sha256:{'f' * 31}", "invalid digest"),  # at least 32 hex digits
    (f"repo@{HEX64}", "invalid digest"),
    (f"repo@{D}@{D}", "invalid digest"),
    (IMAGE_ID, "image id"),  # distribution: "cannot specify 64-byte hexadecimal strings"
    (HEX64, "image id"),
    ("domain/" + "a" * 256 + ":tag", "must not be more than 255 characters"),  # distribution
    ("https://github.com/docker/docker", "URL scheme"),  # distribution
    ("-docker", "invalid repository name"),  # distribution
    ("-docker/docker", "invalid repository name"),  # distribution
    ("-docker.io/docker/docker", "invalid repository name"),  # distribution
    ("docker-/docker", "invalid repository name"),  # distribution
    ("____/____", "invalid repository name"),  # distribution
    ("dock..er/docker", "invalid repository name"),  # distribution
    ("dock_.er/docker", "invalid repository name"),  # distribution
    ("dock-.er/docker", "invalid repository name"),  # distribution
    ("aa/asdf$$^/aa", "invalid repository name"),  # distribution
    ("[fc00::1]", "invalid"),  # distribution: IPv6 without a path
    ("[fc00::1]:5000", "invalid"),  # distribution
    ("[2001:db8::1]:tag", "invalid"),  # distribution
    ("fc00::1:5000/debian", "invalid repository name"),  # distribution: no brackets
    ("[fe80::1%eth0]:5000/debian", "invalid repository name"),  # distribution: zone id
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid repository name"),  # distribution
    ("ünïcode", "invalid repository name"),
]


@pytest.mark.parametrize(
    ("ref", "full", "domain", "path", "tag", "digest", "familiar"),
    VALID,
    ids=[case[0][:60] for case in VALID],
)
def test_normalize_valid(
    ref: str,
    full: str,
    domain: str,
    path: str,
    tag: str | None,
    digest: str | None,
    familiar: str,
) -> None:
    got = normalize(ref)
    assert got == Reference(domain, path, tag, digest)
    assert str(got) == full
    assert got.familiar == familiar
    assert normalize(familiar) == got
    assert normalize(full) == got
    assert str(parse(ref)) == ref


@pytest.mark.parametrize(("ref", "message"), INVALID, ids=[repr(c[0])[:60] for c in INVALID])
def test_invalid(ref: str, message: str) -> None:
    for fn in (parse, normalize):
        with pytest.raises(ReferenceError, match=re.escape(message)) as info:
            fn(ref)
        text = str(info.value)
        assert text.startswith("invalid reference format: ")
        assert text.endswith(repr(ref))  # the message names the input
        assert info.value.reference == ref


def test_uppercase_message_matches_brief() -> None:
    with pytest.raises(ReferenceError) as info:
        normalize("Busybox")
    assert str(info.value) == (
        "invalid reference format: repository name must be lowercase: 'Busybox'"
    )


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", Reference("", "busybox", None, None)),
        ("busybox:1", Reference("", "busybox", "1", None)),
        ("user/repo", Reference("", "user/repo", None, None)),
        ("docker.io/busybox", Reference("docker.io", "busybox", None, None)),
        ("index.docker.io/busybox", Reference("index.docker.io", "busybox", None, None)),
        ("localhost:5000", Reference("", "localhost", "5000", None)),
        ("localhost/x", Reference("localhost", "x", None, None)),
        ("Foo/bar", Reference("Foo", "bar", None, None)),
        ("foo_bar.com/repo", Reference("", "foo_bar.com/repo", None, None)),
        (f"[::1]:5000/repo:t@{D}", Reference("[::1]:5000", "repo", "t", D)),
        (f"sha256:{HEX64}", Reference("", "sha256", HEX64, None)),
    ],
    ids=repr,
)
def test_parse_applies_no_defaults(ref: str, expected: Reference) -> None:
    got = parse(ref)
    assert got == expected
    assert str(got) == ref


def test_length_limit_counts_library_prefix_on_normalize() -> None:
    # quirk: the real parser checks the length of "library/<name>" after normalising
    name = "a" * 250
    assert parse(name).path == name
    with pytest.raises(ReferenceError, match="255 characters"):
        normalize(name)
    assert normalize("a" * 247).path == "library/" + "a" * 247


def test_name_property() -> None:
    assert normalize("busybox").name == "docker.io/library/busybox"
    assert parse("busybox").name == "busybox"


def test_with_tag_and_digest() -> None:
    ref = normalize("busybox")
    assert str(ref.with_tag("1.36")) == "docker.io/library/busybox:1.36"
    assert str(ref.with_digest(D)) == f"docker.io/library/busybox:latest@{D}"
    assert str(ref.with_digest(D).with_tag(None)) == f"docker.io/library/busybox@{D}"
    assert str(ref.trim()) == "docker.io/library/busybox"
    assert ref.trim().is_name_only
    with pytest.raises(ReferenceError, match="invalid tag"):
        ref.with_tag("-x")
    with pytest.raises(ReferenceError, match="unsupported digest algorithm"):
        ref.with_digest("md5:" + "0" * 32)


def test_docker_ref_prefers_digest() -> None:
    # distribution ParseDockerRef: tag dropped when a digest is present
    ref = normalize(f"busybox:latest@{BUSYBOX_DIGEST}")
    assert str(ref.docker_ref()) == f"docker.io/library/busybox@{BUSYBOX_DIGEST}"
    assert str(parse("busybox").docker_ref()) == "busybox:latest"
    assert normalize("busybox:1").docker_ref() == normalize("busybox:1")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (IMAGE_ID, "sha256:" + IMAGE_ID),
        ("sha256:" + IMAGE_ID, "sha256:" + IMAGE_ID),
        (IMAGE_ID.upper(), None),
        ("sha256:" + IMAGE_ID.upper(), None),
        (IMAGE_ID[:63], None),
        ("sha256:" + IMAGE_ID + "0", None),
        ("sha512:" + "0" * 128, None),
        ("busybox", None),
        ("", None),
        (IMAGE_ID + "\n", None),
    ],
    ids=repr,
)
def test_parse_image_id(value: str, expected: str | None) -> None:
    assert parse_image_id(value) == expected
    assert is_image_id(value) is (expected is not None)


def test_digest_helpers() -> None:
    assert looks_like_digest(D)
    assert looks_like_digest("sha512:" + "0" * 128)
    assert not looks_like_digest("sha256:" + "0" * 63)
    assert not looks_like_digest(HEX64)
    assert validate_digest(D) == D
    assert validate_tag("v1.0_rc-1") == "v1.0_rc-1"
    with pytest.raises(ReferenceError, match="tag is empty"):
        validate_tag("")


def test_error_is_value_error_and_pickles() -> None:
    with pytest.raises(ValueError, match="lowercase") as info:
        parse("Busybox")
    err = info.value
    assert isinstance(err, ReferenceError)
    clone = pickle.loads(pickle.dumps(err))
    assert str(clone) == str(err)
    assert clone.problem == err.problem


def test_long_input_message_is_truncated() -> None:
    with pytest.raises(ReferenceError) as info:
        parse("!" * 100_000)
    assert len(str(info.value)) < 500
    assert "100000 characters" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Property tests. Strategies follow the grammar in distribution/reference's regexp.go.

LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
DOMAIN_CHARS = LOWER_ALNUM + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TAG_FIRST = DOMAIN_CHARS + "_"
TAG_REST = TAG_FIRST + ".-"
HEX = "0123456789abcdef"

alnum = st.text(LOWER_ALNUM, min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts += [draw(separator), draw(alnum)]
    return "".join(parts)


paths = st.lists(path_components(), min_size=1, max_size=4).map("/".join)


@st.composite
def domain_labels(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from(DOMAIN_CHARS))
    if draw(st.booleans()):
        return first
    middle = draw(st.text(DOMAIN_CHARS + "-", max_size=5))
    return first + middle + draw(st.sampled_from(DOMAIN_CHARS))


hostnames = st.lists(domain_labels(), min_size=1, max_size=3).map(".".join)
ipv6_hosts = (
    st.ip_addresses(v=6)
    .map(str)
    .filter(lambda s: "." not in s)  # the grammar excludes dotted forms like ::ffff:1.2.3.4
    .map(lambda s: f"[{s}]")
)
hosts = st.one_of(hostnames, st.just("localhost"), ipv6_hosts)


@st.composite
def domains(draw: st.DrawFn) -> str:
    host = draw(hosts)
    if draw(st.booleans()):
        host += ":" + str(draw(st.integers(0, 99999)))
    return host


tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(TAG_FIRST),
    st.text(TAG_REST, max_size=127),
)
digests = st.sampled_from([("sha256", 64), ("sha384", 96), ("sha512", 128)]).flatmap(
    lambda alg: st.text(HEX, min_size=alg[1], max_size=alg[1]).map(lambda h: f"{alg[0]}:{h}")
)


@st.composite
def references(draw: st.DrawFn) -> str:
    ref = draw(paths)
    domain = draw(st.none() | domains())
    if domain is not None:
        ref = f"{domain}/{ref}"
    tag = draw(st.none() | tags)
    if tag is not None:
        ref += ":" + tag
    digest = draw(st.none() | digests)
    if digest is not None:
        ref += "@" + digest
    assume(not is_image_id(ref))
    return ref


def looks_like_registry(component: str) -> bool:
    return (
        component == "localhost"
        or "." in component
        or ":" in component
        or component != component.lower()
    )


@given(references())
@example("busybox")
@example(f"[::1]:5000/repo:tag@{D}")
def test_parse_round_trips(ref: str) -> None:
    parsed = parse(ref)
    assert str(parsed) == ref
    assert parse(str(parsed)) == parsed


@given(references())
@example("busybox")
@example("docker.io/foo.com/bar")
def test_normalize_is_idempotent(ref: str) -> None:
    norm = normalize(ref)
    assert normalize(str(norm)) == norm
    assert norm.tag is not None or norm.digest is not None
    assert parse(str(norm)) == norm  # the full form is also a plain, default-free parse


@given(references())
def test_familiar_normalizes_back(ref: str) -> None:
    norm = normalize(ref)
    assert normalize(norm.familiar) == norm
    assert len(norm.familiar) <= len(str(norm))


@given(paths, st.none() | domains(), st.none() | tags, st.none() | digests)
@example("foo_bar.com/repo", None, None, None)
@example("a", "index.docker.io", None, None)
def test_normalize_parts(
    path: str, domain: str | None, tag: str | None, digest: str | None
) -> None:
    name = path if domain is None else f"{domain}/{path}"
    ref = name + ("" if tag is None else ":" + tag) + ("" if digest is None else "@" + digest)
    norm = normalize(ref)
    # docker's rule (distribution normalize.go splitDockerDomain), then the grammar's split
    first, slash, rest = name.partition("/")
    if not slash or not looks_like_registry(first):
        want_domain, want_path = "docker.io", name
    elif first == "index.docker.io":
        want_domain, want_path = "docker.io", rest
    else:
        want_domain, want_path = first, rest
    if want_domain == "docker.io" and "/" not in want_path:
        want_path = "library/" + want_path
    if not re.fullmatch(_GO_DOMAIN, want_domain, re.ASCII):
        want_domain, want_path = "", name  # e.g. foo_bar.com/repo
    assert (norm.domain, norm.path) == (want_domain, want_path)
    assert norm.digest == digest
    assert norm.tag == (tag if tag is not None or digest is not None else "latest")


# An independent transcription of distribution/reference's referencePat (regexp.go),
# used as an oracle for which strings parse() accepts and how it splits them.
_GO_ALNUM = "[a-z0-9]+"
_GO_SEP = "(?:[._]|__|[-]+)"
_GO_COMP = f"{_GO_ALNUM}(?:{_GO_SEP}{_GO_ALNUM})*"
_GO_REMOTE = f"{_GO_COMP}(?:/{_GO_COMP})*"
_GO_DC = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_GO_HOST = rf"(?:{_GO_DC}(?:\.{_GO_DC})*|\[(?:[a-fA-F0-9:]+)\])"
_GO_DOMAIN = f"{_GO_HOST}(?::[0-9]+)?"
_GO_REFERENCE = re.compile(
    f"(?P<name>(?:{_GO_DOMAIN}/)?{_GO_REMOTE})"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}))?",
    re.ASCII,
)
_GO_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


def go_parse(ref: str) -> tuple[str, str | None, str | None] | None:
    """(name, tag, digest) if distribution's Parse plus go-digest accept ``ref``, else None."""
    m = _GO_REFERENCE.fullmatch(ref)
    if m is None or re.fullmatch("[a-f0-9]{64}", ref):
        return None
    digest = m["digest"]
    if digest is not None:
        algorithm, encoded = digest.split(":", 1)
        want = _GO_DIGEST_HEX.get(algorithm)
        if want is None or not re.fullmatch(f"[a-f0-9]{{{want}}}", encoded):
            return None
    return m["name"], m["tag"], digest


MUTATION_CHARS = "aA0:/@._-[]%"


@st.composite
def mutated_references(draw: st.DrawFn) -> str:
    ref = draw(references())
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(ref)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from(MUTATION_CHARS))
        if op == "insert":
            ref = ref[:pos] + ch + ref[pos:]
        elif op == "delete":
            ref = ref[:pos] + ref[pos + 1 :]
        else:
            ref = ref[:pos] + ch + ref[pos + 1 :]
    return ref


@settings(max_examples=400)
@given(st.one_of(mutated_references(), st.text(MUTATION_CHARS + "bcz19", max_size=24)))
@example("localhost:5000")
@example("[::1]/a")
@example("a:b/c")
def test_parse_agrees_with_go_grammar(ref: str) -> None:
    expected = go_parse(ref)
    try:
        got = parse(ref)
    except ReferenceError:
        assert expected is None
        return
    assert expected is not None
    name, tag, digest = expected
    assert (got.name, got.tag, got.digest) == (name, tag, digest)
    if got.domain:
        assert looks_like_registry(got.domain)


def outcome(fn: Callable[[str], Reference], text: str) -> Reference | ReferenceError:
    try:
        return fn(text)
    except ReferenceError as err:
        return err


@given(st.text())
@example("\x00")
@example("a\u0301")
@example("sha256:")
def test_arbitrary_text_only_raises_reference_error(text: str) -> None:
    # anything other than ReferenceError escapes outcome() and fails the test
    for fn in (parse, normalize):
        result = outcome(fn, text)
        if isinstance(result, ReferenceError):
            assert str(result).startswith("invalid reference format: ")
        else:
            assert parse(str(result)) == result


@given(st.text(alphabet=MUTATION_CHARS + " \n", max_size=40))
def test_reference_like_text_only_raises_reference_error(text: str) -> None:
    parsed = outcome(parse, text)
    normalized = outcome(normalize, text)
    if isinstance(parsed, ReferenceError):
        # normalize never accepts what parse rejects
        assert isinstance(normalized, ReferenceError)


@given(st.text(HEX, min_size=64, max_size=64))
def test_image_ids(hex_id: str) -> None:
    assert parse_image_id(hex_id) == f"sha256:{hex_id}"
    assert parse_image_id(f"sha256:{hex_id}") == f"sha256:{hex_id}"
    with pytest.raises(ReferenceError, match="image id"):
        parse(hex_id)
    # with the algorithm prefix it is (per the real parser) a name plus tag
    assert normalize(f"sha256:{hex_id}").path == "library/sha256"
