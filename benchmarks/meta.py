"""What a result depends on: commit, kernel, Python, CPU, load, tool versions, overlay options."""

from __future__ import annotations

import datetime
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOOLS = {
    "fuse-overlayfs": ["fuse-overlayfs", "--version"],
    "tar": ["tar", "--version"],
    "umoci": ["umoci", "--version"],
    "zstd": ["zstd", "--version"],
}


def collect(args: dict[str, Any]) -> dict[str, Any]:
    """Metadata recorded next to every run's samples."""
    now = datetime.datetime.now(datetime.UTC)
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H:%M:%SZ"),
        "host": socket.gethostname(),
        "commit": _git("rev-parse", "HEAD") or "unknown",
        "worktree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "memory_total_kib": _meminfo("MemTotal"),
        "tools": {name: _first_line(argv) for name, argv in TOOLS.items()},
        "overlay_module": _overlay_params(),
        "args": {key: portable(value) for key, value in args.items()},
    }


def portable(value: Any) -> Any:
    """An argument as it can be published: a path inside the checkout relative to it, any
    other absolute path by its last component (where a run kept its files is nobody's
    business but the machine's)."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(value)
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    return f".../{path.name}"


def _git(*argv: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), *argv], capture_output=True, text=True, check=False
        )
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _first_line(argv: list[str]) -> str | None:
    """The line of ``TOOL --version`` that gives the tool's own version (fuse-overlayfs also
    prints libfuse's and fusermount3's; GNU tar's licence lines say "version" too)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if _VERSION.search(ln)]
    own = [ln for ln in lines if ln.lower().startswith(Path(argv[0]).name.lower())]
    found = own or lines
    return found[0] if found else None


_VERSION = re.compile(r"\d+\.\d+")


def _overlay_params() -> dict[str, str]:
    base = Path("/sys/module/overlay/parameters")
    try:
        return {p.name: p.read_text().strip() for p in sorted(base.iterdir())}
    except OSError:
        return {}
