"""A copy-up's data is copied without the stack's lock: nothing unrelated waits for it.

The copy is parked inside its data phase (a fault hook that blocks until released). Meanwhile
lookups, attributes, listings, reads and writes of other files, and a copy-up of another file,
all complete in this thread (were the lock held, they would hang and the test time out); an
operation on the object being copied waits until the copy is done, then sees it complete.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from layerfs import Stack, copyup

pytestmark = pytest.mark.timeout(60)


def test_a_parked_copy_up_stalls_nothing_unrelated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    (lower / "d").mkdir(parents=True)
    (lower / "big").write_bytes(b"b" * 100_000)
    for name in ("one", "two", "three"):
        (lower / "d" / name).write_bytes(name.encode())
    upper.mkdir()
    work.mkdir()
    parked, release = threading.Event(), threading.Event()

    def hook(step: str) -> None:
        if step == "file-data-copying" and threading.current_thread().name == "copier":
            parked.set()
            release.wait()

    monkeypatch.setattr(copyup, "FAULT_HOOK", hook)
    with Stack([lower], upper, work) as stack:
        errors: list[BaseException] = []

        def run(name: str, call: object) -> threading.Thread:
            def body() -> None:
                try:
                    call()  # type: ignore[operator]
                except BaseException as exc:  # reported by the assertions below
                    errors.append(exc)

            thread = threading.Thread(target=body, name=name)
            thread.start()
            return thread

        copier = run("copier", lambda: stack.write_bytes("/big", b"new", mode=0o644))
        assert parked.wait(30), "the copy-up never reached its data phase"
        # the same thread meanwhile: none of this may wait for the copy
        assert stack.listdir("/d") == ["one", "three", "two"]
        assert stack.lstat("/d/two").size == 3
        assert stack.read_bytes("/d/one") == b"one"
        assert stack.read_bytes("/big") == b"b" * 100_000  # still the lower data
        stack.write_bytes("/d/three", b"changed")  # another copy-up, done at once
        stack.mkdir("/new")
        # an operation on the object being copied waits for it
        chmod = run("chmod", lambda: stack.chmod("/big", 0o600))
        chmod.join(0.2)
        assert chmod.is_alive(), "chmod did not wait for the copy-up of its object"
        release.set()
        copier.join(30)
        chmod.join(30)
        assert errors == []
        assert stack.read_bytes("/big") == b"new"
        assert stack.lstat("/big").mode & 0o777 == 0o600
        assert stack.read_bytes("/d/three") == b"changed"
    assert (upper / "big").read_bytes() == b"new"
    assert os.listdir(work / "work") == []
