"""Image sizes read from PNG / JPEG headers without decoding: the one parser behind the training reader
(`biggait.data.shards.decode_image`) and inference's frame reader (`biggait.sources.read_frame`), so that a few
hostile bytes declaring 40000 x 40000 pixels are refused before any decoder allocates them. A module of its
own, importing nothing heavy, so that `embed` does not import the training data pipeline for it."""

from __future__ import annotations

from biggait.errors import CorruptDataError

__all__ = ["image_size"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image size.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(buf: bytes) -> tuple[int, int]:
    """(height, width) read from a PNG or JPEG header without decoding; `CorruptDataError` if there is none."""
    if buf[:8] == _PNG_SIGNATURE:
        if len(buf) < 24 or buf[12:16] != b"IHDR":
            raise CorruptDataError("PNG without an IHDR header")
        width, height = int.from_bytes(buf[16:20], "big"), int.from_bytes(buf[20:24], "big")
        return height, width
    if buf[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(buf):
            if buf[i] != 0xFF:
                raise CorruptDataError(f"JPEG marker expected at byte {i}")
            marker = buf[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
                i += 2
                continue
            length = int.from_bytes(buf[i + 2 : i + 4], "big")
            if marker in _JPEG_SOF:
                if i + 9 > len(buf):
                    break
                return int.from_bytes(buf[i + 5 : i + 7], "big"), int.from_bytes(buf[i + 7 : i + 9], "big")
            if marker == 0xDA or length < 2:  # image data before any frame header
                break
            i += 2 + length
        raise CorruptDataError("JPEG without a frame header (SOF)")
    raise CorruptDataError("neither a PNG nor a JPEG")
