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
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


@dataclass(frozen=True, slots=True)
class Cycle:
    """One system's turn at one workload variant in one repetition."""

    workload: Workload
    variant: str
    depth: int | None  # for *deep*: how many lowers; None: all of them
    system: System
    rep: int
    stack: BuiltStack
    expected: int  # the count a correct pass returns

    def sample(self, state: str, metric: str, value: float) -> Sample:
        return Sample(
            self.workload.name, self.variant, state, metric, self.system.name, self.rep, value
        )


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
        for variant, depth in self._variants(workload):
            for rep in range(self.config.reps):
                for system in rotate(self.systems, rep):
                    cycle = Cycle(workload, variant, depth, system, rep, stack, expected)
                    self._attempt(cycle)

    def _attempt(self, cycle: Cycle) -> None:
        """Run *cycle* unless its system already failed this variant; report a failure."""
        what = f"{cycle.workload.name} {cycle.variant}".rstrip()
        if (what, cycle.system.name) in self._failed:
            return
        _progress(f"{what} rep {cycle.rep + 1}: {cycle.system.name}")
        try:
            if cycle.workload.kind == "mutate":
                self._mutation(cycle)
            else:
                self._read(cycle)
        except (MountError, WorkloadError, OSError, SubprocessError) as exc:
            self._failed.add((what, cycle.system.name))
            self.recorder.skip(f"{cycle.system.name} failed {what}: {exc}")

    def _variants(self, workload: Workload) -> list[tuple[str, int | None]]:
        if workload.kind == "lookup":
            return [(f"depth={d}", d) for d in self.config.sizes.deep_depths]
        return [("", None)]

    def _read(self, cycle: Cycle) -> None:
        states = self.config.states
        upper = cycle.depth is not None  # *deep*: d lowers under an empty upper, as containers
        with self._mounted(cycle, upper) as (path, pid):
            # The first pass is the cold one; it runs (untimed) even when cold is not
            # wanted, so that warm is always a second pass and fresh finds a warm host cache.
            if "cold" in states:
                drop_caches()
            first = self._timed(cycle, path, pid)
            if "cold" in states:
                self._record_time(cycle, "cold", *first)
            if "warm" in states:
                self._record_time(cycle, "warm", *self._timed(cycle, path, pid))
            self._record_rss(cycle, "warm", pid)
        if "fresh" in states:
            with self._mounted(cycle, upper) as (path, pid):
                self._record_time(cycle, "fresh", *self._timed(cycle, path, pid))
                self._record_rss(cycle, "fresh", pid)

    def _mutation(self, cycle: Cycle) -> None:
        with self._mounted(cycle, True, copy_flat=True) as (path, pid):
            seconds, count = self._timed(cycle, path, pid)
            if cycle.workload.check is not None:
                cycle.workload.check(path, cycle.stack, self.config.sizes)
            self._record_time(cycle, "fresh", seconds, count)
            self._record_rss(cycle, "fresh", pid)

    def _timed(self, cycle: Cycle, path: Path, pid: int | None) -> tuple[float, int]:
        """One timed pass; raises :class:`WorkloadError` when the count is wrong.

        A pass on a FUSE mount that outlives the pass timeout has its daemon (the one this run
        started, *pid*) killed: the kernel then fails the blocked calls with ENOTCONN, and the
        system is reported as failed instead of hanging the run.
        """
        watchdog = Watchdog(pid, self.config.pass_timeout)
        start = time.perf_counter_ns()
        with watchdog:
            count = cycle.workload.run(path, cycle.stack, self.config.sizes)
        seconds = (time.perf_counter_ns() - start) / 1e9
        if count != cycle.expected:
            raise WorkloadError(f"{cycle.workload.name} counted {count}, expected {cycle.expected}")
        return seconds, count

    def _record_time(self, cycle: Cycle, state: str, seconds: float, count: int) -> None:
        if cycle.workload.kind == "lookup":
            self.recorder.add(cycle.sample(state, "time_per_op", seconds / count))
        else:
            self.recorder.add(cycle.sample(state, "time", seconds))

    def _record_rss(self, cycle: Cycle, state: str, pid: int | None) -> None:
        """Record the daemon's VmHWM; for a FUSE system without a known daemon, say so."""
        if not cycle.system.is_fuse:
            return
        value = None if pid is None else peak_rss(pid)
        if value is None:
            self.recorder.skip(f"{cycle.system.name}: peak RSS unknown, daemon process not found")
        else:
            self.recorder.add(cycle.sample(state, "peak_rss", value))

    @contextmanager
    def _mounted(
        self, cycle: Cycle, with_upper: bool, copy_flat: bool = False
    ) -> Iterator[tuple[Path, int | None]]:
        """Mount the cycle's stack on a new mount point under the scratch directory.

        With *with_upper* the mount gets an empty upper and workdir; with *copy_flat* the
        plain directory is a fresh copy of the merged tree. All of it is removed afterwards,
        unless the mount point could not be unmounted (then removing would reach into it).
        """
        self._serial += 1
        base = self.scratch / f"{self._serial:05d}-{cycle.system.name}"
        target = base / "mnt"
        target.mkdir(parents=True)
        flat = cycle.stack.flat
        try:
            if copy_flat and cycle.system.name == "plain":
                flat = base / "copy"
                shutil.copytree(cycle.stack.flat, flat, symlinks=True)
            upper = work = None
            if with_upper:
                upper, work = base / "upper", base / "work"
                upper.mkdir()
                work.mkdir()
            spec = MountSpec(tuple(cycle.stack.lowers(cycle.depth)), flat, upper, work)
            with cycle.system.mount(spec, target) as mounted:
                yield mounted.path, mounted.daemon_pid
        finally:
            if not os.path.ismount(target):
                shutil.rmtree(base, ignore_errors=True)


class Watchdog:
    """Kills daemon *pid* if the guarded block runs longer than *limit* seconds."""

    def __init__(self, pid: int | None, limit: float) -> None:
        self.pid = pid
        self.fired = False
        self._timer = threading.Timer(limit, self._fire) if pid is not None else None

    def _fire(self) -> None:
        self.fired = True
        assert self.pid is not None
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def __enter__(self) -> Watchdog:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.fired:
            raise WorkloadError(f"pass took too long: daemon {self.pid} killed")


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)
