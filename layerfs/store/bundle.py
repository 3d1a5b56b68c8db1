"""OCI runtime bundles: a ``config.json`` derived from an image config, for ``runc run``.

A bundle is a directory holding ``config.json`` and the root filesystem at ``rootfs/``; for
a layerfs container the root filesystem is the container mounted there (``layerfs bundle``).
The process comes from the image config (``Entrypoint`` + ``Cmd``, ``Env``, ``WorkingDir``,
a numeric ``User``) unless a command is given; the container's volumes and bind mounts become
``bind`` mounts (``ro`` honoured); the rest are the conventional defaults of the OCI runtime
specification for a Linux container: new pid, network, ipc, uts and mount namespaces, the
usual pseudo-filesystems, a small capability set and masked ``/proc`` paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from layerfs.errors import StoreError

OCI_RUNTIME_VERSION = "1.0.2"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
NOFILE_LIMIT = 1024
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
]  # fmt: skip
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
]  # fmt: skip


def _mount(dest: str, fstype: str, source: str, options: list[str]) -> dict[str, Any]:
    return {"destination": dest, "type": fstype, "source": source, "options": options}


MOUNTS = [
    _mount("/proc", "proc", "proc", []),
    _mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    _mount(
        "/dev/pts",
        "devpts",
        "devpts",
        ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    ),
    _mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    _mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    _mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
]


def process_of(image_config: Mapping[str, Any], command: Sequence[str] | None) -> dict[str, Any]:
    """The ``process`` section: *command* or the image's Entrypoint + Cmd, env, cwd, user."""
    settings = image_config.get("config") or {}
    args = list(command) if command else _image_args(settings)
    if not args:
        raise StoreError("the image defines no command: give one after --")
    env = list(settings.get("Env") or [DEFAULT_PATH])
    uid, gid = _user(settings.get("User") or "")
    return {
        "terminal": False,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": env,
        "cwd": settings.get("WorkingDir") or "/",
        "capabilities": {key: list(CAPABILITIES) for key in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE_LIMIT, "soft": NOFILE_LIMIT}],
        "noNewPrivileges": True,
    }


def _image_args(settings: Mapping[str, Any]) -> list[str]:
    entrypoint = settings.get("Entrypoint") or []
    cmd = settings.get("Cmd") or []
    return [str(a) for a in [*entrypoint, *cmd]]


def _user(text: str) -> tuple[int, int]:
    """A numeric ``uid[:gid]``; names would need the image's /etc/passwd, so they are refused."""
    if not text:
        return 0, 0
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise StoreError(f"image user {text!r} is not numeric; give a command and set it")
    return int(uid), int(gid or uid)


def bind_mounts(binds: Sequence[tuple[str, Path, bool]]) -> list[dict[str, Any]]:
    """Runtime bind mounts for ``(destination, host source, readonly)``, parents first.

    A runtime mounts in the order given, so a mount inside another one's path comes after it.
    """
    ordered = sorted(binds, key=lambda b: b[0].count("/"))
    return [
        _mount(dest, "bind", str(source), ["rbind", "ro" if readonly else "rw"])
        for dest, source, readonly in ordered
    ]


def runtime_config(
    image_config: Mapping[str, Any],
    *,
    command: Sequence[str] | None,
    hostname: str,
    binds: Sequence[tuple[str, Path, bool]] = (),
) -> dict[str, Any]:
    """A complete OCI runtime ``config.json`` for a bundle whose root is ``rootfs/``.

    *binds* (``(destination, host source, readonly)``: the container's volumes and bind
    mounts) follow the standard mounts, see :func:`bind_mounts`.
    """
    return {
        "ociVersion": OCI_RUNTIME_VERSION,
        "process": process_of(image_config, command),
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [dict(m) for m in MOUNTS] + bind_mounts(binds),
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def write_config(bundle_dir: Path, config: Mapping[str, Any]) -> Path:
    """Write ``config.json`` into *bundle_dir* (created if missing) and make ``rootfs/``."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    (bundle_dir / "rootfs").mkdir(exist_ok=True)
    path = bundle_dir / "config.json"
    tmp = bundle_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.rename(tmp, path)
    return path
