"""Run a command as uid 0 of a new user namespace: root to itself, without real privilege.

That is how rootless podman runs a mount program; :mod:`layerfs.privilege` must not take it
for root of the host. ``unshare --map-root-user`` maps the caller's own uid to 0 and nothing
else, so files the caller owns stay writable inside.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

TIMEOUT = 120  # seconds
USERNS = ("unshare", "--user", "--map-root-user")


def run_in_namespace(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run *argv* as uid 0 of a new user namespace, whatever its outcome; skips the test
    (with the reason) where user namespaces cannot be made."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    probe = subprocess.run([*USERNS, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a user namespace: {probe.stderr.strip()}")
    return subprocess.run(
        [*USERNS, *argv], capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


def run_as_namespace_root(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run *argv* as uid 0 of a new user namespace; its stdout. Skips the test (with the
    reason) where user namespaces cannot be made; fails it when *argv* fails."""
    done = run_in_namespace(argv, env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def python_as_namespace_root(code: str, env: dict[str, str] | None = None) -> str:
    """Run Python *code* with this interpreter as uid 0 of a new user namespace."""
    return run_as_namespace_root([sys.executable, "-c", code], env)
