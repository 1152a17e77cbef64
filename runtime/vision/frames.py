"""Cheap checks of JPEG bytes before any pixel is decoded.

Why before decoding: a few hundred bytes of JPEG can declare a 65535x65535
image, and libjpeg would allocate for it; a truncated frame decodes "fine"
into an image that is half grey. Reading the frame header (SOF segment) costs
microseconds and lets the decode stage refuse such frames with a reason code
("wrong_size", "corrupt_image", "truncated_image"). Only the standard library.
"""

from __future__ import annotations

from edgeloop.errors import PayloadError

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_EOI = b"\xff\xd9"
#: Some cameras pad a frame after the EOI marker; that much padding is accepted.
EOI_SLACK_BYTES = 64


def jpeg_dimensions(data: bytes) -> tuple[int, int, int]:
    """``(width, height, components)`` from a JPEG's frame header; PayloadError if there is none."""
    if data[:2] != b"\xff\xd8":
        raise PayloadError("not_jpeg", "image does not start with a JPEG SOI marker (FF D8)")
    i, n = 2, len(data)
    while i + 4 <= n:  # i grows on every pass
        if data[i] != 0xFF:
            raise PayloadError("corrupt_image", f"JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI, or the scan begins: no frame header came first
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            raise PayloadError("corrupt_image", f"JPEG: segment length {length} at byte {i}")
        if marker in _SOF:
            if length < 8 or i + 10 > n:
                raise PayloadError("corrupt_image", "JPEG: short frame header")
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            components = data[i + 9]
            if width == 0 or height == 0 or components not in (1, 3, 4):
                raise PayloadError(
                    "corrupt_image", f"JPEG: frame header says {width}x{height} with {components} components"
                )
            return width, height, components
        i += 2 + length
    raise PayloadError("corrupt_image", "JPEG: no frame header (SOF) before the image data")


def check_complete(data: bytes) -> None:
    """Refuse a JPEG whose end-of-image marker is missing (a frame cut short in transit or at capture)."""
    if data.rfind(_EOI, max(0, len(data) - EOI_SLACK_BYTES)) < 0:
        raise PayloadError("truncated_image", "JPEG has no end-of-image marker (FF D9): truncated frame")
