"""A walker over zstd frame structure that notices a blob cut short.

The streaming decompressor of ``zstandard`` returns a quiet end of data when its input stops
in the middle of a frame; a truncated layer would then look like a shorter one. This walker
follows the frame and block headers of the compressed bytes (it never decodes data, so it
costs a few operations per 128 KiB block) and reports whether the input ended exactly at a
frame boundary. Layout per RFC 8878: magic, frame header, blocks (3-byte headers), optional
checksum; skippable frames carry their own length.
"""

from __future__ import annotations

from layerfs.errors import LayerFormatError

_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK = 0xFFFFFFF0
_SKIPPABLE = 0x184D2A50
_DICT_ID_SIZES = (0, 1, 2, 4)
_FCS_SIZES = (0, 2, 4, 8)


class ZstdFrameWalker:
    """Feed it every compressed byte in order; :meth:`finish` raises if a frame is open."""

    def __init__(self) -> None:
        self._pending = b""  # bytes of a header being collected
        self._need = 4  # header bytes wanted, or 0 while skipping
        self._skip = 0  # payload bytes still to pass over
        self._state = "magic"
        self._checksum = False
        self._frames = 0

    def feed(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._after_skip()
                continue
            take = min(self._need - len(self._pending), end - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                header, self._pending = self._pending, b""
                self._header(header)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _after_skip(self) -> None:
        if self._state == "block-last":
            self._expect("checksum", 4) if self._checksum else self._frame_done()
        elif self._state in ("skippable-data", "checksum-data"):
            self._frame_done()
        else:
            self._expect("block", 3)

    def _frame_done(self) -> None:
        self._frames += 1
        self._expect("magic", 4)

    def _header(self, header: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(header, "little")
            if magic == _MAGIC:
                self._expect("fhd", 1)
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE:
                self._expect("skippable-size", 4)
            else:
                raise LayerFormatError("corrupt zstd stream: data after the last frame")
        elif state == "skippable-size":
            self._state, self._skip = "skippable-data", int.from_bytes(header, "little")
            if not self._skip:
                self._frame_done()
        elif state == "fhd":
            fhd = header[0]
            single = (fhd >> 5) & 1
            self._checksum = bool((fhd >> 2) & 1)
            fcs = _FCS_SIZES[fhd >> 6] or single  # FCS flag 0: one byte when single-segment
            rest = (0 if single else 1) + _DICT_ID_SIZES[fhd & 3] + fcs
            self._state, self._skip = "frame-header", rest
            if not rest:
                self._expect("block", 3)
        elif state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise LayerFormatError("corrupt zstd stream: reserved block type")
            self._state = "block-last" if last else "block-data"
            self._skip = 1 if kind == 1 else size
            if not self._skip:
                self._after_skip()
        elif state == "checksum":
            self._frame_done()

    def finish(self) -> None:
        """Raise :class:`LayerFormatError` unless the input ended right after a frame."""
        if self._state != "magic" or self._pending or self._skip or not self._frames:
            raise LayerFormatError("corrupt zstd stream: truncated (ends inside a frame)")
