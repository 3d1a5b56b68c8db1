"""diff_changes: docker-diff style A/C/D lists."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from layerfs.tar import Change, ChangeKind, diff_changes

pytestmark = pytest.mark.timeout(30)
A, C, D = ChangeKind.ADDED, ChangeKind.CHANGED, ChangeKind.DELETED


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("/"):
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(data)
    return root


def test_added_changed_deleted(tmp_path: Path) -> None:
    lower = _tree(tmp_path / "lower", {"etc/passwd": b"", "etc/group": b"", "bin/sh": b""})
    upper = _tree(tmp_path / "upper", {"etc/passwd": b"new", "etc/new/x": b"", "tmp/t": b""})
    os.mknod(upper / "etc" / "group", stat.S_IFCHR, 0)
    (upper / "bin").mkdir()
    (upper / "bin" / ".wh.sh").write_bytes(b"")
    assert diff_changes(upper, [lower]) == [
        Change("/bin", C),
        Change("/bin/sh", D),
        Change("/etc", C),
        Change("/etc/group", D),
        Change("/etc/new", A),
        Change("/etc/new/x", A),
        Change("/etc/passwd", C),
        Change("/tmp", A),
        Change("/tmp/t", A),
    ]


def test_opaque_dir_deletes_hidden_lower_children(tmp_path: Path) -> None:
    base = _tree(tmp_path / "base", {"d/a": b"", "d/b": b"", "d/sub/deep": b""})
    mid = _tree(tmp_path / "mid", {"d/c": b""})
    os.mknod(mid / "d" / "b", stat.S_IFCHR, 0)  # b is already gone in the merged lowers
    upper = _tree(tmp_path / "upper", {"d/a": b"again", "d/sub/other": b""})
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    assert diff_changes(upper, [mid, base]) == [
        Change("/d", C),
        Change("/d/a", C),
        Change("/d/c", D),
        Change("/d/sub", C),
        Change("/d/sub/deep", D),
        Change("/d/sub/other", A),
    ]


def test_without_lowers_everything_is_added(tmp_path: Path) -> None:
    upper = _tree(tmp_path / "upper", {"a/b": b""})
    (upper / ".wh.gone").write_bytes(b"")
    assert diff_changes(upper) == [Change("/a", A), Change("/a/b", A), Change("/gone", D)]


def test_file_replacing_a_lower_dir(tmp_path: Path) -> None:
    lower = _tree(tmp_path / "lower", {"x/y": b""})
    upper = _tree(tmp_path / "upper", {"x": b"file"})
    assert diff_changes(upper, [lower]) == [Change("/x", C)]
