"""Platforms (``os/arch[/variant]``) and choosing an image manifest from an index.

Registries serve multi-platform images as an OCI image index or a Docker manifest list; a pull
keeps the one image manifest whose platform matches the host (``linux`` and the GOARCH name of
:func:`platform.machine`) or the one ``--platform`` asks for.
"""

from __future__ import annotations

import platform as _platform

from layerfs.errors import BadReferenceError, RegistryError
from layerfs.store.oci import MANIFEST_TYPES, Descriptor, Index, Platform

# platform.machine() -> (GOARCH, variant)
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
}


def host_platform() -> Platform:
    """This machine as an OCI platform: ``linux`` and the GOARCH name of its CPU."""
    machine = _platform.machine().lower()
    arch, variant = _MACHINES.get(machine, (machine, None))
    return Platform("linux", arch, variant)


def parse_platform(text: str) -> Platform:
    """``os/arch`` or ``os/arch/variant`` (``linux/arm64``, ``linux/arm/v7``)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadReferenceError(f"invalid platform {text!r}: expected os/arch[/variant]")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def format_platform(value: Platform) -> str:
    text = f"{value.os}/{value.architecture}"
    return f"{text}/{value.variant}" if value.variant else text


def matches(candidate: Platform | None, wanted: Platform) -> bool:
    """OS and architecture equal; the variant too when *wanted* names one."""
    if candidate is None:
        return False
    if (candidate.os, candidate.architecture) != (wanted.os, wanted.architecture):
        return False
    return wanted.variant is None or candidate.variant in (wanted.variant, None)


def select_manifest(index: Index, wanted: Platform, what: str) -> Descriptor:
    """The image manifest of *index* for *wanted*; :class:`RegistryError` if there is none.

    Without a variant asked for, an entry without a variant is preferred, then the first.
    """
    found = [
        d for d in index.manifests if d.media_type in MANIFEST_TYPES and matches(d.platform, wanted)
    ]
    if not found:
        offered = sorted(
            {format_platform(d.platform) for d in index.manifests if d.platform is not None}
        )
        raise RegistryError(
            f"{what}: no image for {format_platform(wanted)} (offered: "
            f"{', '.join(offered) or 'none'})"
        )
    exact = [d for d in found if d.platform is not None and d.platform.variant == wanted.variant]
    return (exact or found)[0]
