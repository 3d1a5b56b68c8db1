"""The differential and FUSE suites, once more as an unprivileged user, against the rootless forms.

The user runs pytest inside ``unshare -r --map-auto -m``: uid 0 of a user namespace that maps
its subordinate ids, as podman's rootless mount program runs, so kernel overlayfs can be mounted
(with ``userxattr``) and ownership tests find their ids mapped. layerfs sees no real privilege
there and writes the rootless forms by itself; :mod:`tests.forms` switches the comparisons to
them (and says what a run without privilege cannot compare). The hypothesis profile is
``default`` (tens of sequences per test), which keeps this to a couple of minutes. Left out:
the mount-helper tests, which install into ``/sbin``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from tests.dropin.users import User

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.root,
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.timeout(1200),
]

SUITES = (
    "tests/differential/test_kernel_diff.py",
    "tests/fuse/test_fuse_diff.py",
    "tests/fuse/test_ops.py",
    "tests/fuse/test_lifecycle.py",
    "tests/fuse/test_mount_store.py",
    "tests/fuse/test_programs.py::test_busybox_shell_in_a_chroot",
)
NEEDS_HOST_ROOT = (
    "tests/fuse/test_lifecycle.py::test_mount_t_fuse_layerfs",
    "tests/fuse/test_lifecycle.py::test_fstab_line",
)


def test_suites_pass_as_an_unprivileged_user(unprivileged: User) -> None:
    work = unprivileged.path("suites")
    report = work / "report.xml"
    argv = [
        unprivileged.python,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-c",
        unprivileged.src / "pyproject.toml",
        "--rootdir",
        unprivileged.src,
        "--basetemp",
        work / "tmp",
        "--junitxml",
        report,
        "-q",
        *(unprivileged.src / suite for suite in SUITES),
        *(arg for test in NEEDS_HOST_ROOT for arg in ("--deselect", test)),
    ]
    env = {"LAYERFS_HYPOTHESIS_PROFILE": "default"}
    done = unprivileged.run(argv, userns=True, cwd=work, env=env, check=False, timeout=1100)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    suite = ET.parse(report).getroot().find("testsuite")
    assert suite is not None
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    assert counts["tests"] >= 20, counts
