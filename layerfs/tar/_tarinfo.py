"""Reading tar headers without trusting them: damaged headers and absurd lengths are errors.

``tarfile`` trusts what a header announces: it reads a GNU long name or a PAX record block of
the announced size into memory in one piece, and it ends an archive quietly at a damaged
header after the first member. A layer or an import archive is untrusted input, so the tar
readers of layerfs use :class:`StrictTarInfo`:

* an extended header (GNU long name or long link target, PAX records, global or Solaris) of
  more than :data:`MAX_EXTENDED_HEADER` bytes is a :class:`~layerfs.errors.LayerFormatError`
  before anything is read (Go's ``archive/tar``, which containerd, docker, buildah, skopeo
  and umoci read layers with, has the same limit);
* a header with a bad checksum or cut short after the first member is a ``tarfile.ReadError``
  instead of the end of the archive, so a layer cut short never looks like a shorter layer.
"""

from __future__ import annotations

import tarfile

from layerfs.errors import LayerFormatError

MAX_EXTENDED_HEADER = 1 << 20  # bytes of one GNU long name/link or one PAX record block

_EXTENDED_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)
_DAMAGED_HEADER: tuple[type[Exception], ...] = (
    tarfile.InvalidHeaderError,  # type: ignore[attr-defined]
    tarfile.TruncatedHeaderError,  # type: ignore[attr-defined]
)
_SUBSEQUENT_HEADER_ERROR: type[Exception] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]


class StrictTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` for untrusted archives: pass it as ``tarfile.open(..., tarinfo=)``."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> StrictTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _DAMAGED_HEADER as exc:
            raise _SUBSEQUENT_HEADER_ERROR(str(exc)) from exc

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        """Refuse an absurd extended header before ``tarfile`` reads it into memory."""
        if self.type in _EXTENDED_TYPES and self.size > MAX_EXTENDED_HEADER:
            raise LayerFormatError(
                f"tar header at byte {self.offset} announces an extended header of"
                f" {self.size} bytes (the limit is {MAX_EXTENDED_HEADER})"
            )
        return super()._proc_member(tarfile_)  # type: ignore[misc, no-any-return]
