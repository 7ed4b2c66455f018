"""TensorFlow's checkpoint file format (a "tensor bundle"), read without TensorFlow.

`PREFIX.index` is a LevelDB-format table (uncompressed, as TensorFlow writes it): its keys are
variable names, its values `BundleEntryProto` records (dtype, shape, shard, offset, size,
crc32c); the empty key holds a `BundleHeaderProto` (shard count, byte order).
`PREFIX.data-0000S-of-0000N` holds the raw little-endian bytes. Every block of the table and
every tensor read is checked against its masked crc32c, so a damaged file is refused, never
loaded as slightly wrong numbers.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from max_gpt2.errors import CheckpointError

MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number
FOOTER = 48
# TensorFlow's DataType enum values for the dtypes a checkpoint of weights holds.
DTYPES = {1: np.float32, 2: np.float64, 19: np.float16, 14: "bfloat16", 3: np.int32, 9: np.int64}


def read(prefix: Path) -> dict[str, np.ndarray]:
    """Every tensor of the bundle at `prefix` (the path without .index / .data-*)."""
    index = Path(f"{prefix}.index")
    entries = _table(index)
    header = _fields(entries.pop(b"", b""))
    if header.get(2, 0) != 0:
        raise CheckpointError(f"{index} is stored big-endian; only little-endian checkpoints are read")
    shards = header.get(1, 1)
    out: dict[str, np.ndarray] = {}
    files: dict[int, object] = {}
    try:
        for key, value in entries.items():
            name = key.decode("utf-8", "replace")
            out[name] = _tensor(name, _fields(value), prefix, shards, files)
    finally:
        for f in files.values():
            f.close()
    return out


def _tensor(name: str, entry: dict, prefix: Path, shards: int, files: dict) -> np.ndarray:
    if 7 in entry:
        raise CheckpointError(f"{prefix}: {name} is stored in slices (a partitioned variable), which max-gpt2 does not read")
    dtype = DTYPES.get(entry.get(1, 0))
    if dtype is None:
        raise CheckpointError(f"{prefix}: {name} has TensorFlow dtype {entry.get(1, 0)}, not a float type GPT-2's weights use")
    shape = _shape(entry.get(2, b""))
    shard, offset, size = entry.get(3, 0), entry.get(4, 0), entry.get(5, 0)
    path = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")
    if shard not in files:
        try:
            files[shard] = open(path, "rb")  # noqa: SIM115  closed by read()
        except OSError as e:
            raise CheckpointError(f"cannot read {path}: {e.strerror} (it belongs beside {prefix}.index)") from None
    f = files[shard]
    f.seek(offset)
    data = bytearray(size)
    got = f.readinto(data)
    if got != size:
        raise CheckpointError(
            f"{path} is truncated: {name} needs bytes {offset}-{offset + size} but the file ends at "
            f"{path.stat().st_size}; download it again"
        )
    if _masked_crc(data) != entry.get(6):
        raise CheckpointError(f"{path}: {name} fails its crc32c checksum: the file is damaged; download it again")
    itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if size != itemsize * int(np.prod(shape)):
        raise CheckpointError(f"{prefix}.index: {name} claims shape {list(shape)} but holds {size} bytes")
    if dtype == "bfloat16":  # the high half of a float32
        return (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).reshape(shape)


# --- LevelDB's table format -------------------------------------------------------------------


def _table(path: Path) -> dict[bytes, bytes]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if len(raw) < FOOTER or struct.unpack("<Q", raw[-8:])[0] != MAGIC:
        raise CheckpointError(f"{path} is not a TensorFlow checkpoint index (no table footer); download it again")
    footer = memoryview(raw)[-FOOTER:]
    _, pos = _handle(footer, 0)  # the meta-index block: TensorFlow writes no filters, nothing to read
    (index_offset, index_size), _ = _handle(footer, pos)
    entries: dict[bytes, bytes] = {}
    for _, handle in _block(raw, index_offset, index_size, path):
        (offset, size), _ = _handle(memoryview(handle), 0)
        entries.update(_block(raw, offset, size, path))
    return entries


def _block(raw: bytes, offset: int, size: int, path: Path) -> list[tuple[bytes, bytes]]:
    """A block's entries: keys share a prefix with the one before; a 5-byte trailer follows."""
    if offset + size + 5 > len(raw):
        raise CheckpointError(f"{path} is truncated; download it again")
    block, kind = raw[offset : offset + size], raw[offset + size]
    if kind != 0:
        raise CheckpointError(f"{path} has compressed blocks (type {kind}); TensorFlow writes checkpoint indexes uncompressed")
    (crc,) = struct.unpack("<I", raw[offset + size + 1 : offset + size + 5])
    if _masked_crc(raw[offset : offset + size + 1]) != crc:
        raise CheckpointError(f"{path} fails its checksum: the file is damaged; download it again")
    (restarts,) = struct.unpack("<I", block[-4:])
    end = len(block) - 4 - 4 * restarts
    out, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def _handle(buf, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return (offset, size), pos


# --- protocol buffers: the two small messages of a bundle --------------------------------------


def _fields(message: bytes) -> dict[int, object]:
    """Field number -> value (an int, or the bytes of a nested message); repeated fields: the last."""
    out: dict[int, object] = {}
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            out[number], pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            out[number] = message[pos : pos + length]
            pos += length
        elif wire == 5:
            (out[number],) = struct.unpack("<I", message[pos : pos + 4])
            pos += 4
        elif wire == 1:
            (out[number],) = struct.unpack("<Q", message[pos : pos + 8])
            pos += 8
        else:
            raise CheckpointError(f"unreadable entry in a TensorFlow checkpoint index (wire type {wire})")
    return out


def _shape(message: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated `dim` (field 2), each a message whose field 1 is its size."""
    dims, pos = [], 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        if tag & 7 != 2:
            value, pos = _varint(message, pos)  # unknown_rank, never set for a saved variable
            continue
        length, pos = _varint(message, pos)
        if tag >> 3 == 2:
            dims.append(_fields(message[pos : pos + length]).get(1, 0))
        pos += length
    return tuple(int(d) for d in dims)


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("a TensorFlow checkpoint index ends inside a number: the file is damaged")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _masked_crc(data) -> int:
    """crc32c as LevelDB and TensorFlow store it: rotated and offset, so a crc of crcs stays strong."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
