"""Reader for the IDX format of (Fashion-)MNIST, gzip-compressed or plain.

IDX layout: a 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimensions, then the data in C order (big-endian for multi-byte types). The reader
checks the magic, the dimensions and that the payload size matches the header exactly, so
a truncated or padded file is reported instead of silently mis-shaped; it streams the
payload into one preallocated array, so a (gzip) file whose header declares a huge size is
refused before anything is decompressed.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "write_idx", "IDX_DTYPES"]

IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# Deflate cannot expand data by more than ~1032:1, so a header declaring more than this many
# bytes per compressed byte is corrupt or truncated: refuse it before decompressing anything.
_MAX_GZIP_RATIO = 1100
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB: far above any IDX dataset held in memory here


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb"), True
    return open(path, "rb"), False


def _read_exact(stream, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``stream``; returns the bytes read (fewer only at end of stream)."""
    done = 0
    while done < len(buffer):
        n = stream.readinto(buffer[done:])
        if not n:
            break
        done += n
    return done


def read_idx(path: str | os.PathLike, expected_ndim: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Read one IDX file into a numpy array (native byte order).

    Streams the (possibly gzip-compressed) file: the header is read first and checked
    (magic, number of dimensions, declared size against ``max_bytes``, against the file size
    for a plain file and against the largest expansion deflate allows for a gzip file), then
    the payload is decompressed straight into one preallocated array, and one more byte is
    read to detect trailing data. A file declaring a huge size is refused from its header,
    before any decompression; memory use is the array itself. Raises ValueError naming
    ``path`` for every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file not found: {path}")
    stream, compressed = _open(path)
    try:
        with stream:
            return _read_stream(stream, path, compressed, expected_ndim, max_bytes)
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def _read_stream(stream, path: Path, compressed: bool, expected_ndim, max_bytes: int) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
    dtype, ndim = IDX_DTYPES[magic[2]], magic[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: expected an IDX file with {expected_ndim} dimensions, header says {ndim}")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    header = 4 + 4 * ndim
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if expected > max_bytes:
        raise ValueError(
            f"{path}: the header declares {dims} ({dtype}) = {expected} bytes, above the limit of "
            f"{max_bytes} bytes (read_idx(max_bytes=...)); refusing to read it"
        )
    file_size = path.stat().st_size
    if compressed and expected > _MAX_GZIP_RATIO * file_size:
        raise ValueError(
            f"{path}: the header declares {dims} ({dtype}) = {expected} bytes, more than a gzip file of "
            f"{file_size} bytes can hold (file truncated or corrupt); refusing to decompress it"
        )
    if not compressed and file_size - header != expected:
        raise ValueError(
            f"{path}: payload is {file_size - header} bytes but the header {dims} ({dtype}) needs {expected}"
            + (" (file truncated)" if file_size - header < expected else " (trailing data)")
        )
    native = dtype.newbyteorder("=")
    data = np.empty(dims, dtype=native)
    got = _read_exact(stream, memoryview(data.reshape(-1).view(np.uint8)))
    if got < expected:
        raise ValueError(f"{path}: payload is {got} bytes but the header {dims} ({dtype}) needs {expected} (file truncated)")
    if stream.read(1):
        raise ValueError(f"{path}: payload is longer than the header {dims} ({dtype}) declares ({expected} bytes; trailing data)")
    if dtype.itemsize > 1 and np.little_endian:  # IDX stores big-endian: swap in place, no copy
        data.byteswap(inplace=True)
    return data


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (gzip when ``compress`` or the name ends in .gz). For tests and tools."""
    path = Path(path)
    array = np.asarray(array)
    codes = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX code")
    code = codes[native]
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">u4").tobytes()
        + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    )
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=1)
    path.write_bytes(payload)
