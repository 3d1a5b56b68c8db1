"""``make demo``: a three-layer sample stack, mounted with layerfs, used, and unmounted.

It shows the three things a union filesystem does: a file in a higher layer shadows the same
name below, a deletion leaves a whiteout in the upper layer, and a change copies the file up.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from layerfs.options import format_lowerdir
from layerfs.whiteout import is_whiteout_stat

LAYERS: dict[str, dict[str, str]] = {
    "base": {
        "etc/os-release": 'NAME="layerfs demo"\n',
        "etc/motd": "motd from the base layer\n",
        "app/config": "version=1\n",
        "app/old.log": "stale log line\n",
    },
    "middle": {
        "etc/motd": "motd from the middle layer\n",
        "app/data.txt": "hello from the middle layer\n",
    },
    "top": {"app/config": "version=2\n"},
}


def build(root: Path) -> tuple[list[Path], Path, Path, Path]:
    """Write the sample layers; return (lowers top-most first, upper, work, mountpoint)."""
    for layer, files in LAYERS.items():
        for rel, text in files.items():
            path = root / layer / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    upper, work, mnt = root / "upper", root / "work", root / "merged"
    for d in (upper, work, mnt):
        d.mkdir()
    return [root / "top", root / "middle", root / "base"], upper, work, mnt


def layerfs(*args: str) -> None:
    print(f"$ layerfs {' '.join(args)}")
    subprocess.run([sys.executable, "-m", "layerfs.cli", *args], check=True)


def show(title: str, text: str) -> None:
    body = "\n".join(f"      | {line}" for line in text.rstrip().splitlines())
    print(f"{title}\n{body}")


def describe_upper(upper: Path) -> None:
    print(f"upper directory ({upper}):")
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        for name in sorted(filenames + dirnames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(upper)
            if is_whiteout_stat(st):
                what = "whiteout (character device 0/0): deleted from the layers below"
            elif stat.S_ISDIR(st.st_mode):
                what = "directory (copied up as the parent of a change)"
            else:
                what = f"file, {st.st_size} bytes: {path.read_text().strip()!r}"
            print(f"    {rel}  -> {what}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="layerfs-demo-") as tmp:
        lowers, upper, work, mnt = build(Path(tmp))
        print(f"three layers in {tmp}: top -> middle -> base, plus an empty upper\n")
        layerfs(
            "mount",
            "--lower",
            format_lowerdir(lowers),
            "--upper",
            str(upper),
            "--work",
            str(work),
            str(mnt),
        )
        try:
            show(
                "\n1. shadowing: /etc/motd exists in base and middle; the mount shows middle's",
                (mnt / "etc/motd").read_text(),
            )
            show(
                "   /app/config from the top layer hides base's version=1:",
                (mnt / "app/config").read_text(),
            )
            print("\n2. deleting a lower file: rm /app/old.log")
            (mnt / "app/old.log").unlink()
            print(f"    merged /app now lists: {sorted(os.listdir(mnt / 'app'))}")
            print("\n3. changing a lower file: append to /app/data.txt (copy-up)")
            with open(mnt / "app/data.txt", "a") as f:
                f.write("appended through the mount\n")
            show("    merged view:", (mnt / "app/data.txt").read_text())
            show("    the middle layer is untouched:", (lowers[1] / "app/data.txt").read_text())
            print()
            describe_upper(upper)
        finally:
            print()
            layerfs("umount", str(mnt))
        print("\nunmounted; the lower layers never changed. Done.")


if __name__ == "__main__":
    main()
