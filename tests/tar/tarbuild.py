"""Builders for layer tars made on the fly, and a comparable snapshot of a directory tree."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from layerfs.tar import Compression
from layerfs.whiteout import is_private_xattr

MTIME = 1_600_000_000


@dataclass
class M:
    """One tar member: ``kind`` is a tarfile type flag, ``pax`` extra PAX records."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    pax: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


def d(name: str, mode: int = 0o755, **kw: object) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def f(name: str, data: bytes = b"", **kw: object) -> M:
    return M(name, tarfile.REGTYPE, data=data, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hard(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, linkname=target)


def build_tar(members: list[M], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.linkname = m.linkname
            info.mode = m.mode
            info.uid, info.gid, info.mtime = m.uid, m.gid, m.mtime
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.pax_headers = dict(m.pax)
            if m.kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def compress(data: bytes, kind: Compression) -> bytes:
    if kind is Compression.GZIP:
        return gzip.compress(data, mtime=0)
    if kind is Compression.ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    return data


def blob(tmp: Path, members: list[M], kind: Compression = Compression.NONE) -> Path:
    path = tmp / f"layer-{len(list(tmp.glob('layer-*')))}.tar"
    path.write_bytes(compress(build_tar(members), kind))
    return path


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in sorted(names):
        if is_private_xattr(name) or name.startswith("security."):
            continue
        out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


def snapshot(
    root: Path, *, mtimes: bool = True, owners: bool = True, dir_mtimes: bool = True
) -> dict[str, tuple]:  # type: ignore[type-arg]
    """path -> (kind, mode, uid, gid, mtime, content/target/rdev, xattrs) for every object."""
    out: dict[str, tuple] = {}  # type: ignore[type-arg]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                payload: object = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                payload = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                payload = st.st_rdev
            else:
                payload = None
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                (st.st_uid, st.st_gid) if owners else None,
                st.st_mtime_ns // 1_000_000_000
                if mtimes
                and not stat.S_ISLNK(st.st_mode)
                and (dir_mtimes or not stat.S_ISDIR(st.st_mode))
                else None,
                payload,
                _xattrs(p),
            )
    return out
