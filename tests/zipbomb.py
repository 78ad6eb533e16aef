"""
Zip bombs for the tests, made in a second or so without writing gigabytes:
one bzip2 block of zeros is compressed once, then repeated bit by bit into a
single stream (bzip2 blocks are independent; the stream's CRC combines
theirs), and the stream is put in a hand-made zip next to a valid
manifest.json.
"""

from __future__ import annotations

import bz2
import json
import struct
import zlib

_BLOCK_MAGIC = format(0x314159265359, "048b")
_END_MAGIC = format(0x177245385090, "048b")
# Zeros in each block: few blocks (a small file), each compressed quickly.
BLOCK_BYTES = 32 << 20


def _bits(data: bytes) -> str:
    return "".join(format(b, "08b") for b in data)


def bzip2_zeros(size: int) -> bytes:
    """A single bzip2 stream that decompresses to C{size} zero bytes (a
    multiple of L{BLOCK_BYTES}), a few KB long."""
    blocks, rest = divmod(size, BLOCK_BYTES)
    assert rest == 0 and blocks > 0
    one = _bits(bz2.compress(bytes(BLOCK_BYTES), 9))
    assert one[:32] == _bits(b"BZh9") and one[32:80] == _BLOCK_MAGIC
    end = one.rindex(_END_MAGIC)
    block = one[32:end]
    block_crc = int(block[48:80], 2)
    combined = 0
    for _ in range(blocks):
        combined = (((combined << 1) | (combined >> 31)) & 0xFFFFFFFF) ^ block_crc
    bits = one[:32] + block * blocks + _END_MAGIC + format(combined, "032b")
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _entry(name: str, method: int, crc: int, data: bytes, size: int,
           offset: int) -> tuple[bytes, bytes]:
    """The local header with its data, and the central directory record."""
    raw_name = name.encode()
    zip64 = size >= 0xFFFFFFFF
    if zip64:
        local_extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        central_extra = local_extra
        sizes = (0xFFFFFFFF, 0xFFFFFFFF)
    else:
        local_extra = central_extra = b""
        sizes = (len(data), size)
    version = 45 if zip64 else 46 if method == 12 else 20
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", version, 0, method, 0, 0x21, crc,
                        sizes[0], sizes[1], len(raw_name), len(local_extra))
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", version, version, 0, method, 0,
                          0x21, crc, sizes[0], sizes[1], len(raw_name), len(central_extra),
                          0, 0, 0, 0o100644 << 16, offset)
    return local + raw_name + local_extra + data, central + raw_name + central_extra


def bomb(unpacked: int = 4 << 30, declared: int | None = None) -> bytes:
    """A firmware .zip: a manifest.json and fw.bin, C{unpacked} zero bytes
    in bzip2, declaring C{declared} (default: the truth)."""
    manifest = json.dumps({"name": "bomb", "version": "1.0"}).encode()
    entries = [("manifest.json", 0, zlib.crc32(manifest), manifest, len(manifest)),
               ("fw.bin", 12, 0, bzip2_zeros(unpacked),
                unpacked if declared is None else declared)]
    body = b""
    directory = b""
    for name, method, crc, data, size in entries:
        local, central = _entry(name, method, crc, data, size, len(body))
        body += local
        directory += central
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                      len(directory), len(body), 0)
    return body + directory + end
