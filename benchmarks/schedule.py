"""Runs workloads on the systems, interleaved, and records one sample per timed pass.

For each workload and repetition the systems run one after another in a rotating order, so a
slow phase of a loaded machine is spread over all of them instead of hitting one. A read
workload's cycle on one system is: mount, drop caches, timed pass (*cold*), timed pass on the
same mount (*warm*), unmount; mount again, timed pass (*fresh*: new mount, host page cache
warm), unmount. A mutation gets a fresh upper (for the plain directory: a fresh copy of the
merged tree) and one timed pass. After the last pass on a FUSE mount the daemon's ``VmHWM`` is
recorded. A system that fails a workload is reported and left out of the rest of that workload.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import SubprocessError
from typing import TypeVar

from benchmarks.cache import drop_caches
from benchmarks.config import RunConfig
from benchmarks.mounts import MountError, MountSpec, System, peak_rss
from benchmarks.results import Recorder, Sample
from benchmarks.stacks import BuiltStack
from benchmarks.workloads import Workload, WorkloadError

T = TypeVar("T")


def rotate(items: list[T], rep: int) -> list[T]:
    """*items* rotated left by *rep*: each system takes every position in turn."""
    if not items:
        return []
    k = rep % len(items)
    return items[k:] + items[:k]


@dataclass(slots=True)
class Runner:
    """State shared by all workloads of a run."""

    config: RunConfig
    systems: list[System]
    stacks: dict[str, BuiltStack]
    recorder: Recorder
    scratch: Path
    _serial: int = 0
    _failed: set[tuple[str, str]] = field(default_factory=set)

    def run(self, workload: Workload) -> None:
        """Measure *workload* on every system for every repetition."""
        stack = self.stacks[workload.stack]
        expected = workload.expect(stack, self.config.sizes)
        variants = self._variants(workload)
        for variant, depth in variants:
            for rep in range(self.config.reps):
                for system in rotate(self.systems, rep):
                    if (workload.name + variant, system.name) in self._failed:
                        continue
                    _progress(f"{workload.name} {variant} rep {rep + 1}: {system.name}")
                    try:
                        self._cycle(workload, variant, depth, system, rep, stack, expected)
                    except (MountError, WorkloadError, OSError, SubprocessError) as exc:
                        self._failed.add((workload.name + variant, system.name))
                        self.recorder.skip(
                            f"{system.name} failed {workload.name} {variant}".rstrip() + f": {exc}"
                        )

    def _variants(self, workload: Workload) -> list[tuple[str, int | None]]:
        if workload.kind == "lookup":
            return [(f"depth={d}", d) for d in self.config.sizes.deep_depths]
        return [("", None)]

    def _cycle(
        self,
        workload: Workload,
        variant: str,
        depth: int | None,
        system: System,
        rep: int,
        stack: BuiltStack,
        expected: int,
    ) -> None:
        if workload.kind == "mutate":
            self._mutation(workload, system, rep, stack, expected)
        else:
            self._read(workload, variant, depth, system, rep, stack, expected)

    def _read(
        self,
        workload: Workload,
        variant: str,
        depth: int | None,
        system: System,
        rep: int,
        stack: BuiltStack,
        expected: int,
    ) -> None:
        states = self.config.states
        per_op = workload.kind == "lookup"
        upper = depth is not None  # deep stacks: d lowers under an empty upper, as containers
        sample = _SampleMaker(
            workload.name, variant, system.name, rep, per_op, system.is_fuse, self.recorder
        )
        with self._mounted(system, stack, depth, upper) as (path, pid):
            # The first pass is the cold one; it runs (untimed) even when cold is not
            # wanted, so that warm is always a second pass and fresh finds a warm host cache.
            if "cold" in states:
                drop_caches()
            first = self._timed(workload, path, stack, expected)
            if "cold" in states:
                sample.time("cold", *first)
            if "warm" in states:
                sample.time("warm", *self._timed(workload, path, stack, expected))
            sample.rss("warm", pid)
        if "fresh" in states:
            with self._mounted(system, stack, depth, upper) as (path, pid):
                sample.time("fresh", *self._timed(workload, path, stack, expected))
                sample.rss("fresh", pid)

    def _mutation(
        self, workload: Workload, system: System, rep: int, stack: BuiltStack, expected: int
    ) -> None:
        sample = _SampleMaker(
            workload.name, "", system.name, rep, False, system.is_fuse, self.recorder
        )
        with self._mounted(system, stack, None, True, copy_flat=True) as (path, pid):
            seconds, count = self._timed(workload, path, stack, expected)
            if workload.check is not None:
                workload.check(path, stack, self.config.sizes)
            sample.time("fresh", seconds, count)
            sample.rss("fresh", pid)

    def _timed(
        self, workload: Workload, path: Path, stack: BuiltStack, expected: int
    ) -> tuple[float, int]:
        start = time.perf_counter_ns()
        count = workload.run(path, stack, self.config.sizes)
        seconds = (time.perf_counter_ns() - start) / 1e9
        if count != expected:
            raise WorkloadError(f"{workload.name} counted {count}, expected {expected}")
        return seconds, count

    @contextmanager
    def _mounted(
        self,
        system: System,
        stack: BuiltStack,
        depth: int | None,
        with_upper: bool,
        copy_flat: bool = False,
    ) -> Iterator[tuple[Path, int | None]]:
        """Mount *stack* on a new mount point under the scratch directory; remove it after."""
        self._serial += 1
        base = self.scratch / f"{self._serial:05d}-{system.name}"
        target = base / "mnt"
        target.mkdir(parents=True)
        flat = stack.flat
        try:
            if copy_flat and system.name == "plain":
                flat = base / "copy"
                shutil.copytree(stack.flat, flat, symlinks=True)
            upper = work = None
            if with_upper:
                upper, work = base / "upper", base / "work"
                upper.mkdir()
                work.mkdir()
            spec = MountSpec(tuple(stack.lowers(depth)), flat, upper, work)
            with system.mount(spec, target) as mounted:
                yield mounted.path, mounted.daemon_pid
        finally:
            if not os.path.ismount(target):
                shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class _SampleMaker:
    workload: str
    variant: str
    system: str
    rep: int
    per_op: bool
    is_fuse: bool
    recorder: Recorder

    def time(self, state: str, seconds: float, count: int) -> None:
        metric, value = ("time_per_op", seconds / count) if self.per_op else ("time", seconds)
        self.recorder.add(
            Sample(self.workload, self.variant, state, metric, self.system, self.rep, value)
        )

    def rss(self, state: str, pid: int | None) -> None:
        """Record the daemon's VmHWM; for a FUSE system without a known daemon, say so."""
        if not self.is_fuse:
            return
        value = None if pid is None else peak_rss(pid)
        if value is None:
            self.recorder.skip(f"{self.system}: peak RSS unknown, daemon process not found")
        else:
            self.recorder.add(
                Sample(self.workload, self.variant, state, "peak_rss", self.system, self.rep, value)
            )


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)
