"""Real programs on a mount: a busybox shell chrooted into it, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fuse.conftest import Mounter, write_tree

pytestmark = [pytest.mark.fuse, pytest.mark.root]

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "echo", "mv", "rm", "mkdir", "ln", "sed", "wc", "touch", "chmod")

SCRIPT = """
set -e
echo created > /tmp/created
echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd
mv /etc/hostname /etc/hostname.old
rm /data/remove-me
sed -i s/old/new/ /data/edit-me
mkdir -p /var/log/app
echo log > /var/log/app/out.log
ln -s /etc/passwd /etc/pw
chmod 600 /data/keep
ls / > /tmp/listing
wc -l < /etc/pw > /tmp/count
"""


def busybox_layers(mounter: Mounter) -> tuple[Path, Path, Path]:
    dirs = mounter.layers(
        {"etc/hostname": "box\n", "data/edit-me": "old text\n", "data/remove-me": "bye\n",
         "data/keep": "keep\n"},
        {"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "tmp": None, "var": None},
    )  # fmt: skip
    base = dirs.lowers[1]
    (base / "bin").mkdir()
    shutil.copy2(BUSYBOX, base / "bin/busybox")
    for applet in APPLETS:
        os.symlink("busybox", base / "bin" / applet)
    mnt = mounter.mount(dirs)
    assert dirs.upper is not None
    return mnt, dirs.upper, dirs.lowers[0]


@pytest.mark.timeout(120)
@pytest.mark.skipif(not BUSYBOX.exists(), reason="needs a static busybox")
def test_busybox_shell_in_a_chroot(mounter: Mounter) -> None:
    mnt, upper, top = busybox_layers(mounter)
    done = subprocess.run(
        ["chroot", str(mnt), "/bin/sh", "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (mnt / "tmp/created").read_text() == "created\n"
    assert (mnt / "etc/passwd").read_text().endswith("user:x:1000:1000::/home/user:/bin/sh\n")
    assert not (mnt / "etc/hostname").exists()
    assert (mnt / "etc/hostname.old").read_text() == "box\n"
    assert not (mnt / "data/remove-me").exists()
    assert (mnt / "data/edit-me").read_text() == "new text\n"
    assert (mnt / "var/log/app/out.log").read_text() == "log\n"
    assert os.readlink(mnt / "etc/pw") == "/etc/passwd"
    assert (mnt / "tmp/count").read_text().strip() == "2"
    assert "bin" in (mnt / "tmp/listing").read_text().split()
    # The upper holds exactly the changes, in overlayfs format; the lowers are untouched.
    assert (upper / "etc/passwd").read_text().count("\n") == 2
    for gone in ("etc/hostname", "data/remove-me"):
        st = os.lstat(upper / gone)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, gone
    assert (upper / "etc/hostname.old").read_text() == "box\n"
    assert stat.S_IMODE(os.lstat(upper / "data/keep").st_mode) == 0o600
    assert not (upper / "bin").exists()
    assert (top / "etc/hostname").read_text() == "box\n"
    assert (top / "data/remove-me").exists()


WORKERS = 4
OPS_PER_WORKER = 300


def worker(mnt: str, number: int, result: str) -> None:
    """Random file operations in its own directory and a shared one; records what must exist."""
    rng = random.Random(number)
    own = Path(mnt) / f"w{number}"
    shared = Path(mnt) / "shared"
    own.mkdir()
    expected: dict[str, bytes] = {}
    for step in range(OPS_PER_WORKER):
        choice = rng.random()
        names = sorted(expected)
        if choice < 0.35 or not names:
            name = f"f{step}"
            data = rng.randbytes(rng.randrange(0, 70_000))
            target = own / name if rng.random() < 0.7 else shared / f"w{number}-{name}"
            target.write_bytes(data)
            expected[str(target.relative_to(mnt))] = data
        elif choice < 0.5:
            name = rng.choice(names)
            extra = rng.randbytes(rng.randrange(1, 5000))
            with open(Path(mnt) / name, "ab") as f:
                f.write(extra)
            expected[name] += extra
        elif choice < 0.65:
            name = rng.choice(names)
            os.unlink(Path(mnt) / name)
            del expected[name]
        elif choice < 0.75:
            name = rng.choice(names)
            new = f"{name}.r{step}"
            os.rename(Path(mnt) / name, Path(mnt) / new)
            expected[new] = expected.pop(name)
        elif choice < 0.9:
            assert (Path(mnt) / "lower/big").read_bytes() == b"L" * 200_000
        else:
            os.listdir(shared)
            os.listdir(own)
    Path(result).write_text("\n".join(f"{k}\t{v.hex()}" for k, v in sorted(expected.items())))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_concurrent_writers(mounter: Mounter, tmp_path: Path) -> None:
    dirs = mounter.layers({"lower/big": b"L" * 200_000, "shared": None})
    mnt = mounter.mount(dirs)
    results = write_tree(tmp_path / "results", {})
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=worker, args=(str(mnt), i, str(results / f"{i}.txt")))
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
        assert proc.exitcode == 0, f"worker failed with {proc.exitcode}"
    expected: dict[str, bytes] = {}
    for i in range(WORKERS):
        for line in (results / f"{i}.txt").read_text().splitlines():
            name, data = line.split("\t")
            expected[name] = bytes.fromhex(data)
    found = {
        str(p.relative_to(mnt)): p.read_bytes()
        for p in mnt.rglob("*")
        if p.is_file() and not str(p.relative_to(mnt)).startswith("lower/")
    }
    assert found.keys() == expected.keys()
    assert found == expected
    assert dirs.upper is not None
    for name, data in expected.items():
        assert (dirs.upper / name).read_bytes() == data


@pytest.mark.interop
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (shutil.which("runc") and BUSYBOX.exists()), reason="needs runc")
def test_runc_runs_a_container_on_the_mount(mounter: Mounter, tmp_path: Path) -> None:
    """runc runs a container whose root filesystem is the mount (on each backend)."""
    from tests.fuse.conftest import run_cli
    from tests.store.builders import E, Image, write_oci_layout

    layer = [
        E("bin", "dir"),
        E("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
        E("bin/sh", "symlink", target="busybox"),
        E("etc", "dir"),
        E("etc/motd", data=b"from the image\n"),
    ]
    write_oci_layout(tmp_path / "src", [Image("bb:1", [layer])])
    root = str(tmp_path / "store")
    run_cli("import", "--root", root, str(tmp_path / "src"), "bb:1")
    run_cli("create", "--root", root, "--name", "box", "bb:1")
    bundle = tmp_path / "bundle"
    script = "cat /etc/motd; echo written > /out"
    run_cli("bundle", "--root", root, "box", str(bundle), "--", "/bin/sh", "-c", script)
    rootfs = bundle / "rootfs"
    run_cli("umount", str(rootfs))  # mounted again with the backend under test
    mounter.mounted.append(rootfs)
    run_cli("mount", "--root", root, "box", str(rootfs))
    name = f"layerfs-fuse-{os.getpid()}-{random.randrange(1 << 30)}"
    done = subprocess.run(
        ["runc", "run", "--bundle", str(bundle), name],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "from the image\n"
    assert (rootfs / "out").read_text() == "written\n"
    mounter.unmount(rootfs)
