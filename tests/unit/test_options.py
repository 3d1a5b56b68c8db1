"""Overlay option syntax: escapes, layer order, unknown options left for the caller."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerfs import ConfigError, Stack, StackOptions, StackSpec, UpperFormat
from layerfs.options import (
    format_lowerdir,
    format_mount_options,
    parse_mount_options,
    split_escaped,
    split_lowerdir,
    split_option_list,
)
from layerfs.whiteout import WhiteoutStyle, XattrNamespace


def test_escaped_separators_stay_in_paths() -> None:
    spec, rest = parse_mount_options(
        r"lowerdir=/l/a\:b:/l/c,upperdir=/u\,x,workdir=/w,allow_other,userxattr,metacopy=off"
    )
    assert spec.lowers == (Path("/l/a:b"), Path("/l/c"))
    assert spec.upper == Path("/u,x") and spec.work == Path("/w")
    assert rest == ["allow_other"]
    assert spec.options.upper_format.opaque_xattr == "user.overlay.opaque"
    assert spec.options.metacopy is False


def test_split_escaped_keeps_escapes_when_asked() -> None:
    assert split_escaped(r"a,b=c\,d,,", ",", keep_escapes=True) == ["a", r"b=c\,d"]
    assert split_escaped(r"a\:b:c", ":", keep_escapes=False) == ["a:b", "c"]


def test_stack_refuses_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown stack option: bogus"):
        Stack.from_mount_options(f"lowerdir={tmp_path},bogus")


def test_bad_stacks_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        Stack([tmp_path / "missing"])
    (tmp_path / "u").mkdir()
    with pytest.raises(ConfigError, match="work directory"):
        Stack([tmp_path], upper=tmp_path / "u")


@given(
    st.lists(
        st.text(st.sampled_from("ab:,\\=/ x"), min_size=1, max_size=8).map(lambda t: "/l/" + t),
        min_size=1,
        max_size=3,
    ),
    st.text(st.sampled_from("u:,\\="), min_size=1, max_size=6),
)
def test_format_then_parse_round_trips(lowers: list[str], upper: str) -> None:
    """Paths with ``:``, ``,``, ``\\`` or ``=`` survive formatting, splitting and parsing."""
    spec = StackSpec(tuple(Path(p) for p in lowers), Path("/" + upper), Path("/w,:"))
    text = ",".join([format_mount_options(spec), "ro"])
    parsed, rest = parse_mount_options(",".join(split_option_list(text)))
    assert parsed == spec
    assert rest == ["ro"]
    assert tuple(Path(p) for p in split_lowerdir(format_lowerdir(spec.lowers))) == spec.lowers


@pytest.mark.parametrize(
    "options",
    [
        StackOptions(),
        StackOptions(UpperFormat.unprivileged(), metacopy=True, volatile=True),
        StackOptions(UpperFormat(XattrNamespace.USER, WhiteoutStyle.CHARDEV)),
        StackOptions(UpperFormat(XattrNamespace.TRUSTED, WhiteoutStyle.WH_FILE)),
    ],
)
def test_format_keeps_every_stack_option(options: StackOptions) -> None:
    spec = StackSpec((Path("/l"),), Path("/u"), Path("/w"), options)
    assert parse_mount_options(format_mount_options(spec)) == (spec, [])
    lower_only = StackSpec((Path("/a"), Path("/b")))
    assert format_mount_options(lower_only) == "lowerdir=/a:/b"


def test_metacopy_takes_on_or_off() -> None:
    assert parse_mount_options("lowerdir=/l")[0].options.metacopy is False
    assert parse_mount_options("lowerdir=/l,metacopy=on")[0].options.metacopy is True
    with pytest.raises(ConfigError, match="on or off"):
        parse_mount_options("lowerdir=/l,metacopy=yes")
