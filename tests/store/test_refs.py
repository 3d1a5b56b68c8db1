"""References: parsing, formatting, defaults and rejection of junk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerfs.errors import BadReferenceError
from layerfs.store.refs import (
    DEFAULT_TAG,
    DIGEST_RE,
    Reference,
    parse_reference,
    parse_tagged,
    short_id_prefix,
)

HEX = "0123456789abcdef"
DIGEST = "sha256:" + "ab" * 32

components = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True).filter(
    lambda s: len(s) <= 30
)
hosts = st.one_of(
    st.just(""),
    st.from_regex(r"[a-z0-9]+(\.[a-z0-9]+)*", fullmatch=True).map(lambda h: h[:20] + "."),
    st.just("localhost:5000"),
)
names = st.builds(
    lambda host, parts: (f"{host.rstrip('.')}/" if host else "") + "/".join(parts),
    hosts,
    st.lists(components, min_size=1, max_size=3),
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digests = st.text(HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}")


@given(names, st.one_of(st.none(), tags), st.one_of(st.none(), digests))
def test_format_then_parse_round_trips(name: str, tag: str | None, digest: str | None) -> None:
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    ref = Reference(name, tag, digest)  # type: ignore[arg-type]
    assert parse_reference(str(ref)) == ref


@given(names, tags)
def test_parse_then_format_is_identity_for_tagged(name: str, tag: str) -> None:
    text = f"{name}:{tag}"
    assert str(parse_reference(text)) == text
    assert parse_reference(text).tagged == text


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest"),
    [
        ("alpine", "alpine", "latest", None),
        ("alpine:3.19", "alpine", "3.19", None),
        ("library/alpine", "library/alpine", "latest", None),
        ("localhost:5000/foo/bar", "localhost:5000/foo/bar", "latest", None),
        ("localhost:5000/foo:v1", "localhost:5000/foo", "v1", None),
        (f"alpine@{DIGEST}", "alpine", None, DIGEST),
        (f"alpine:3@{DIGEST}", "alpine", "3", DIGEST),
        ("a__b.c-d---e", "a__b.c-d---e", "latest", None),
    ],
)
def test_parse_examples(text: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Alpine",
        "alpine:",
        ":tag",
        "alpine::tag",
        "a//b",
        "/abs",
        "trailing/",
        "alpine:" + "t" * 129,
        "alpine@sha256:abc",
        "alpine@sha512:" + "a" * 128,
        "a_-b",
        "-a",
        "alpine:-tag",
        "alpine:tag with space",
        "a" * 256,
    ],
)
def test_junk_is_rejected(text: str) -> None:
    with pytest.raises(BadReferenceError):
        parse_reference(text)


def test_new_tag_may_not_carry_a_digest() -> None:
    with pytest.raises(BadReferenceError):
        parse_tagged(f"alpine@{DIGEST}")
    assert parse_tagged("x").tagged == "x:latest"


def test_digest_only_reference_has_no_tagged_form() -> None:
    with pytest.raises(BadReferenceError):
        _ = parse_reference(f"alpine@{DIGEST}").tagged


def test_short_ids() -> None:
    assert short_id_prefix("abcd12") == "abcd12"
    assert short_id_prefix("sha256:abcd") == "abcd"
    assert short_id_prefix("abc") is None
    assert short_id_prefix("xyz123") is None
    assert DIGEST_RE.match(DIGEST)
    assert not DIGEST_RE.match(DIGEST[:-1])
