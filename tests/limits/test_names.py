"""Names of 250-256 bytes and long paths through every namespace operation of the core.

Each operation either succeeds completely or fails and changes nothing: the merged view and
the upper directory on disk are compared before and after every failure. ``.wh.`` + a name of
more than 251 bytes cannot exist, which once made a rename fail *after* it had happened; the
``.wh.``-style upper (what unprivileged users write) cannot whiteout such a name at all and
must refuse up front. The kernel mounts what the chardev style wrote and must agree.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerfs import Stack, StackOptions, UpperFormat
from tests.treedesc import Tree, host_tree, stack_tree

LENGTHS = (250, 251, 252, 253, 254, 255)
STYLES = {"chardev": UpperFormat(), "whfile": UpperFormat.unprivileged()}


def name(length: int, fill: str = "n") -> str:
    return fill * length


@pytest.fixture(params=sorted(STYLES))
def style(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def layers(tmp_path: Path) -> dict[str, Path]:
    lower = tmp_path / "lower"
    (lower / "m").mkdir(parents=True)
    (lower / "m" / "f").write_bytes(b"lower f")
    (lower / "m" / "dir").mkdir()
    for length in LENGTHS:
        (lower / "m" / name(length, "l")).write_bytes(b"long %d" % length)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return {"lower": lower, "upper": upper, "work": work}


@pytest.fixture
def stack(layers: dict[str, Path], style: str) -> Iterator[Stack]:
    options = StackOptions(upper_format=STYLES[style])
    with Stack([layers["lower"]], layers["upper"], layers["work"], options=options) as s:
        s.write_bytes("/m/up", b"upper file")  # /m is now a merged directory
        yield s


def _state(stack: Stack, upper: Path) -> tuple[Tree, list[str]]:
    on_disk = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    return stack_tree(stack), on_disk


def _fails_cleanly(stack: Stack, upper: Path, code: int, call: Callable[[], object]) -> None:
    before = _state(stack, upper)
    with pytest.raises(OSError) as failed:
        call()
    assert failed.value.errno == code, failed.value
    assert _state(stack, upper) == before, "a failed operation changed something"


@pytest.mark.parametrize("length", LENGTHS)
def test_long_names_through_every_operation(
    stack: Stack, layers: dict[str, Path], style: str, length: int
) -> None:
    upper = layers["upper"]
    new = "/m/" + name(length)
    stack.write_bytes(new, b"created")
    stack.unlink(new)
    stack.rename("/m/f", new)  # a lower file renamed to a long name: whiteout at "f"
    assert stack.read_bytes(new) == b"lower f" and not stack.exists("/m/f")
    stack.rename(new, "/m/f")  # and back: the long name was never in a lower
    assert stack.read_bytes("/m/f") == b"lower f" and not stack.exists(new)
    stack.link("/m/up", new)
    assert stack.lstat(new).ino == stack.lstat("/m/up").ino
    stack.unlink(new)
    stack.mkdir(new)
    stack.rename(new, "/m/dir2")
    stack.rmdir("/m/dir2")
    lower_long = "/m/" + name(length, "l")
    if style == "whfile" and length > 251:
        # no ".wh." file can name it: refused before anything changes
        _fails_cleanly(stack, upper, errno.ENAMETOOLONG, lambda: stack.unlink(lower_long))
        _fails_cleanly(
            stack, upper, errno.ENAMETOOLONG, lambda: stack.rename(lower_long, "/m/moved")
        )
        return
    stack.rename(lower_long, "/m/moved")
    assert not stack.exists(lower_long)
    stack.rename("/m/moved", lower_long)
    stack.unlink(lower_long)
    assert not stack.exists(lower_long)
    stack.write_bytes(lower_long, b"again")  # replaces the whiteout
    assert stack.read_bytes(lower_long) == b"again"


def test_names_past_the_limit_fail_and_change_nothing(
    stack: Stack, layers: dict[str, Path]
) -> None:
    upper, too_long = layers["upper"], "/m/" + name(256)
    code = errno.ENAMETOOLONG
    _fails_cleanly(stack, upper, code, lambda: stack.write_bytes(too_long, b"x"))
    _fails_cleanly(stack, upper, code, lambda: stack.mkdir(too_long))
    _fails_cleanly(stack, upper, code, lambda: stack.rename("/m/f", too_long))
    _fails_cleanly(stack, upper, code, lambda: stack.rename("/m/up", too_long))
    _fails_cleanly(stack, upper, code, lambda: stack.link("/m/f", too_long))
    _fails_cleanly(stack, upper, code, lambda: stack.symlink("t", too_long))
    _fails_cleanly(stack, upper, code, lambda: stack.symlink("t" * 4096, "/m/s"))


def test_paths_near_path_max(stack: Stack, layers: dict[str, Path]) -> None:
    """A deep tree is built one name at a time; a path argument of 4,096 bytes is refused."""
    path, room = "/m", 4095 - 1 - 255  # a 255-byte name under it makes 4,095 bytes
    while len(path) < room:
        path += "/" + name(min(200, room - len(path) - 1), "d")
        stack.mkdir(path)
    last = path + "/" + name(255, "f")
    assert len(last) == 4095
    stack.write_bytes(last, b"deep")
    assert stack.read_bytes(last) == b"deep"
    stack.rename(last, path + "/short")
    stack.rename(path + "/short", last)
    _fails_cleanly(stack, layers["upper"], errno.ENAMETOOLONG, lambda: stack.lstat(last + "x"))
    stack.unlink(last)


@pytest.mark.root
@pytest.mark.kernel
def test_kernel_reads_what_long_names_left(layers: dict[str, Path], tmp_path: Path) -> None:
    with Stack([layers["lower"]], layers["upper"], layers["work"]) as stack:
        for length in LENGTHS:
            stack.rename("/m/" + name(length, "l"), "/m/" + name(length, "r"))
        stack.unlink("/m/f")
        stack.write_bytes("/m/" + name(255), b"new")
        want = stack_tree(stack)
    target, work = tmp_path / "mnt", tmp_path / "kwork"
    target.mkdir()
    work.mkdir()
    opts = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)], check=True)
    try:
        assert host_tree(target) == want
    finally:
        subprocess.run(["umount", str(target)], check=True)
