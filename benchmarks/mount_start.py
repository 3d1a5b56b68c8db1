"""How long a container start waits for its root filesystem: mount command to first ``stat``.

Every system mounts the same small stack (one lower of a few files, an upper and a work dir)
the way a user or a container engine starts it: ``mount -t overlay`` for the kernel,
``fuse-overlayfs -o ... MNT``, ``layerfs mount --lower ... MNT`` (the installed console
script, as a user runs it, with each session backend) and ``layerfs -o ... MNT`` (the
drop-in call of podman and mount(8)). The clock runs from starting the
command until an ``lstat`` of a file inside the mount succeeds; the unmount is not timed.
Repetitions alternate between the systems, so a slow moment of the machine hits all of them.
Usage: ``python -m benchmarks.mount_start [--reps N]``; ``make bench-start`` runs it.
The issue's target: ``layerfs mount`` returns with the mount usable in at most 100 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.mounts import (
    FuseOverlayfs,
    Kernel,
    Layerfs,
    MountSpec,
    System,
    layerfs_command,
    layerfs_env,
    overlay_options,
    unmount,
)
from layerfs.options import format_lowerdir

TARGET_S = 0.100  # seconds: the limit for `layerfs mount`
PROBE = "etc/hostname"  # a file of the lower, looked up through the mount


def build(base: Path) -> Path:
    """One lower layer with a few directories and files, like a tiny image."""
    lower = base / "lower"
    for d in ("etc", "bin", "usr/lib", "var/tmp"):
        (lower / d).mkdir(parents=True)
    (lower / PROBE).write_text("layerfs\n")
    for i in range(20):
        (lower / "usr/lib" / f"lib{i}.so").write_bytes(bytes(1024))
    return lower


def layerfs_script() -> list[str]:
    """The ``layerfs`` console script next to this interpreter, as a user runs it (falling
    back to the checkout's entry point when the package is not installed)."""
    script = Path(sys.executable).parent / "layerfs"
    return [str(script)] if script.exists() else layerfs_command()


class DropinLayerfs(Layerfs):
    """``layerfs -o lowerdir=…,upperdir=…,workdir=… MNT``: how podman (containers-storage's
    ``mount_program``) and mount(8) start layerfs, without the click command line."""

    name = "layerfs-dropin"


Commands = tuple[list[str], Path | None, list[str]]


def commands(system: System, spec: MountSpec, target: Path) -> Commands:
    """(start command, its working directory, unmount command) of *system*."""
    options, cwd = overlay_options(spec)
    if isinstance(system, Kernel):
        return ["mount", "-t", "overlay", "overlay", "-o", options, str(target)], cwd, ["umount"]
    if isinstance(system, FuseOverlayfs):
        return ["fuse-overlayfs", "-o", options, str(target)], cwd, ["fusermount3", "-u"]
    assert isinstance(system, Layerfs)
    layerfs = layerfs_script()
    if isinstance(system, DropinLayerfs):  # as podman's mount_program call
        return (
            [*layerfs, "-o", f"{options},backend={system.backend}", str(target)],
            cwd,
            [
                *layerfs,
                "umount",
            ],
        )
    argv = [*layerfs, "mount", "-o", f"backend={system.backend}", "--lower"]
    argv += [format_lowerdir(spec.lowers), "--upper", str(spec.upper), "--work", str(spec.work)]
    return [*argv, str(target)], None, [*layerfs, "umount"]


def _run_with_deadline(argv: list[str], cwd: Path | None, env: dict[str, str]) -> None:
    """Run *argv* to its end; killed after 60 s. The wait blocks in ``waitpid`` (a timeout
    given to ``subprocess.run`` polls instead, in steps of up to 50 ms, which would round
    every measured start up to such a step)."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    watchdog = threading.Timer(60.0, proc.kill)
    watchdog.start()
    try:
        status = proc.wait()
    finally:
        watchdog.cancel()
    if status != 0:
        raise subprocess.CalledProcessError(status, argv)


def measure(system: System, base: Path, lower: Path, rep: int) -> float:
    """Seconds from starting *system*'s mount command to a successful lstat inside it."""
    run = base / f"{system.name}-{rep}"
    upper, work, target = run / "upper", run / "work", run / "mnt"
    for d in (upper, work, target):
        d.mkdir(parents=True)
    start_cmd, cwd, umount_cmd = commands(system, MountSpec((lower,), lower, upper, work), target)
    env = layerfs_env()
    started = time.perf_counter()
    try:
        _run_with_deadline(start_cmd, cwd, env)
        while True:
            try:
                os.lstat(target / PROBE)
                break
            except FileNotFoundError:  # the helper returned before its mount was up
                if time.perf_counter() - started > 60:
                    raise
                time.sleep(0.0005)
        return time.perf_counter() - started
    finally:
        if os.path.ismount(target):
            unmount(target, umount_cmd, env)
        shutil.rmtree(run, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="repetitions (medians reported)")
    args = parser.parse_args(argv)
    systems: list[System] = [
        Kernel(),
        FuseOverlayfs(),
        Layerfs(),
        DropinLayerfs(),
        Layerfs("pyfuse3"),
    ]
    ready = [s for s in systems if not s.unavailable_reason()]
    for s in systems:
        if s not in ready:
            print(f"{s.name:16} skipped: {s.unavailable_reason()}")
    samples: dict[str, list[float]] = {s.name: [] for s in ready}
    with tempfile.TemporaryDirectory(prefix="layerfs-start-") as tmp:
        base = Path(tmp)
        lower = build(base)
        for rep in range(args.reps):
            for system in ready:
                samples[system.name].append(measure(system, base, lower, rep))
    medians = {name: statistics.median(times) for name, times in samples.items()}
    print(f"{'system':16} {'median':>9} {'min':>9} {'max':>9}  /kernel  /fuse-overlayfs")
    for name, times in samples.items():
        kernel = medians.get("kernel")
        peer = medians.get("fuse-overlayfs")
        print(
            f"{name:16} {medians[name] * 1e3:7.1f}ms {min(times) * 1e3:7.1f}ms"
            f" {max(times) * 1e3:7.1f}ms  {_ratio(medians[name], kernel):>7}"
            f"  {_ratio(medians[name], peer):>7}"
        )
    if "layerfs" in medians:
        value = medians["layerfs"]
        outcome = "PASS" if value <= TARGET_S else "MISS"
        print(f"{outcome}  layerfs mount to first stat: {value * 1e3:.1f} ms  (<= 100 ms)")
    return 0


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.1f}x" if base else "-"


if __name__ == "__main__":
    raise SystemExit(main())
