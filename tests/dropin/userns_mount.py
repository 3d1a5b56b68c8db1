"""Run by the test user inside ``unshare -r --map-auto -m``: uid 0 without privilege, as podman's
mount program runs. ``python -m tests.dropin.userns_mount LAYERFS BASE`` mounts ``BASE/lower``
with ``BASE/upper`` through the FUSE program convention, changes the merged view, unmounts with
a plain ``umount`` and prints what it saw as JSON, for ``test_rootless.py`` to check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fuse_mount import daemon
from layerfs import privilege
from tests.dropin.mounts import mounted, read_pid, wait_gone


def run(layerfs: str, base: Path) -> dict[str, Any]:
    lower, upper, work, mnt = (base / name for name in ("lower", "upper", "work", "mnt"))
    report: dict[str, Any] = {
        "euid": os.geteuid(),
        "uid_map": privilege.read_id_map(),
        "privileged": privilege.is_privileged(),
        "runtime_dir": str(daemon.runtime_dir()),
    }
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run([layerfs, "-o", options, str(mnt)], check=True)
    entry = mounted(mnt)
    report["super_options"] = sorted(entry.super_options) if entry else None
    pidfile = daemon.pidfile_path(mnt)
    report["pidfile"] = str(pidfile)
    owner = read_pid(pidfile)
    (mnt / "gone").unlink()
    shutil.rmtree(mnt / "dir")
    (mnt / "dir").mkdir()
    (mnt / "dir" / "new").write_text("new")
    (mnt / "owned").write_text("owned")
    os.chown(mnt / "owned", 1000, 1000)
    st = (mnt / "owned").stat()
    report["owned"] = [st.st_uid, st.st_gid]
    subprocess.run(["umount", str(mnt)], check=True)
    report["daemon_gone"] = wait_gone(*owner)
    report["pidfile_left"] = pidfile.exists()
    # once more with a log: nothing that needs host privilege is tried (passthrough)
    log = base / "mount.log"
    subprocess.run([layerfs, "mount", "-o", options, "--log", str(log), str(mnt)], check=True)
    owner = read_pid(pidfile)
    report["kept"] = (mnt / "kept").read_text()
    subprocess.run(["umount", str(mnt)], check=True)
    wait_gone(*owner)
    report["log_warnings"] = [line for line in log.read_text().splitlines() if " WARNING " in line]
    report["upper"] = {
        path.name: {
            "xattrs": os.listxattr(path, follow_symlinks=False),
            "chardev": path.is_char_device(),
            "owner": [path.lstat().st_uid, path.lstat().st_gid],
        }
        for path in sorted(upper.iterdir())
    }
    return report


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], Path(sys.argv[2]))))
