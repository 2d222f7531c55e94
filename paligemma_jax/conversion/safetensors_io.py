"""The safetensors format: reading checkpoint folders (one file, or shards named by an index) and
streaming one file out.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each key to
{"dtype", "shape", "data_offsets": [begin, end]} (offsets from the first byte after the header),
then the raw row-major little-endian data.

Both directions use plain positioned reads and writes, never `mmap`: mapped file pages count in
the process's resident memory for as long as the file stays open, which would make a converter
streaming a 6 GB checkpoint look (and, under memory pressure, behave) like it holds all of it.
Tensors are read one at a time into a fresh numpy array; bf16 comes back as `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
import os
import struct
import ml_dtypes
import numpy as np

from paligemma_jax.conversion import buffers

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
TAGS: dict[np.dtype, str] = {dtype: tag for tag, dtype in DTYPES.items()}
_CHUNK = 64 << 20  # bytes per read/write call: bounds the transient copies


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as asked; the message names the file or key."""


def _weight_map(folder: str) -> dict[str, str]:
  """Tensor key -> shard file name, from the index, or from the single file's header."""
  index_path = os.path.join(folder, INDEX_FILE)
  single_path = os.path.join(folder, SINGLE_FILE)
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
      if not isinstance(weight_map, dict):
        raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path} is not a safetensors index with a weight_map ({e})")
    missing = sorted({f for f in weight_map.values()
                      if not os.path.exists(os.path.join(folder, f))})
    if missing:
      raise CheckpointError(
          f"{index_path} names shard {missing[0]} which is not in {folder}"
          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return weight_map
  if os.path.exists(single_path):
    return {key: SINGLE_FILE for key in SafetensorsFile(single_path).entries}
  raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


class SafetensorsFile:
  """One safetensors file: its header is parsed and checked against the file size on open."""

  def __init__(self, path: str):
    self.path = path
    bad = f"{path} is not a readable safetensors file"
    try:
      size = os.path.getsize(path)
      with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))
        if n > size - 8:
          raise CheckpointError(f"{bad} (its header runs past the end: the file is truncated); "
                                "re-download or re-export it")
        header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, struct.error) as e:
      raise CheckpointError(f"{bad} ({e}); re-download or re-export it") from None
    self.data_start = 8 + n
    try:
      self.metadata = header.pop("__metadata__", None) or {}
      self.entries: dict[str, dict] = header
      end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
      raise CheckpointError(f"{bad}: its header is malformed ({e!r})") from None
    if self.data_start + end > size:
      raise CheckpointError(f"{bad}: its header promises {self.data_start + end} bytes but the "
                            f"file has {size}; it is truncated (re-download or re-export it)")
    for key, e in header.items():
      if e.get("dtype") not in DTYPES:
        raise CheckpointError(f"{key} in {path} has dtype {e.get('dtype')!r}, which this reader "
                              f"does not know ({', '.join(DTYPES)})")

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.entries[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    return DTYPES[self.entries[key]["dtype"]]

  def read(self, key: str) -> np.ndarray:
    e = self.entries[key]
    begin, end = e["data_offsets"]
    out = buffers.empty(tuple(e["shape"]), DTYPES[e["dtype"]])
    if out.nbytes != end - begin:
      raise CheckpointError(f"{key} in {self.path} spans {end - begin} bytes but its shape and "
                            f"dtype need {out.nbytes}; the file is corrupt")
    view = memoryview(out.reshape(-1).view(np.uint8))
    with open(self.path, "rb") as f:
      f.seek(self.data_start + begin)
      done = 0
      while done < len(view):
        got = f.readinto(view[done:done + _CHUNK])
        if not got:
          raise CheckpointError(f"cannot read {key} from {self.path}: the file ends early; "
                                "it may be truncated")
        done += got
    return out


class SafetensorsReader:
  """Random access to the tensors of a checkpoint folder, one tensor at a time."""

  def __init__(self, folder: str):
    if not os.path.isdir(folder):
      raise CheckpointError(f"checkpoint folder {folder} does not exist")
    self.folder = folder
    self.weight_map = _weight_map(folder)
    self._files: dict[str, SafetensorsFile] = {}

  def __enter__(self) -> "SafetensorsReader":
    return self

  def __exit__(self, *exc) -> None:
    self._files.clear()  # nothing stays open between reads

  def _file(self, key: str) -> SafetensorsFile:
    name = self.weight_map[key]
    if name not in self._files:
      self._files[name] = SafetensorsFile(os.path.join(self.folder, name))
      stored = set(self._files[name].entries)
      listed = {k for k, f in self.weight_map.items() if f == name}
      if not listed <= stored:
        absent = sorted(listed - stored)[0]
        raise CheckpointError(f"the index puts {absent} in {name} but that file does not hold it")
    return self._files[name]

  def keys(self) -> list[str]:
    return list(self.weight_map)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._file(key).shape(key)

  def dtype(self, key: str) -> str:
    """The safetensors dtype tag: "F32", "BF16", "F16", ..."""
    return TAGS[self._file(key).dtype(key)]

  def np_dtype(self, key: str) -> np.dtype:
    return self._file(key).dtype(key)

  def read(self, key: str) -> np.ndarray:
    return self._file(key).read(key)


class SafetensorsWriter:
  """Streams one safetensors file: the header is written first from the declared entries, then
  `write(key, array)` appends each tensor's bytes in the declared order (a whole shard is never
  held in memory)."""

  def __init__(self, path: str, entries: list[tuple[str, tuple[int, ...], np.dtype]],
               metadata: dict[str, str] | None = None):
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    self._order = []
    for key, shape, dtype in entries:
      nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      header[key] = {"dtype": TAGS[np.dtype(dtype)], "shape": list(shape),
                     "data_offsets": [offset, offset + nbytes]}
      self._order.append((key, tuple(shape), np.dtype(dtype)))
      offset += nbytes
    self.nbytes = offset
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # as the safetensors library: data starts 8-byte aligned
    self._file = open(path, "wb")
    self._file.write(struct.pack("<Q", len(text)) + text)
    self._next = 0

  def write(self, key: str, array: np.ndarray) -> None:
    self.write_parts(key, [array])

  def write_parts(self, key: str, parts: list[np.ndarray]) -> None:
    """Writes the next declared tensor from blocks that concatenate along axis 0 (so padding
    rows can follow an embedding without a concatenated copy)."""
    want_key, shape, dtype = self._order[self._next]
    got = parts[0].shape if len(parts) == 1 else (
        (sum(p.shape[0] for p in parts),) + parts[0].shape[1:])
    if ((key, got) != (want_key, shape) or any(p.dtype != dtype for p in parts)
        or any(p.shape[1:] != shape[1:] for p in parts)):
      raise ValueError(f"expected {want_key} {shape} {dtype}, got {key} {got} "
                       f"{[p.dtype.name for p in parts]}")
    for part in parts:
      write_bytes(self._file, part)
    self._next += 1

  def close(self) -> None:
    self._file.close()
    if self._next != len(self._order):
      raise ValueError(f"{len(self._order) - self._next} declared tensor(s) were not written")

  def __enter__(self) -> "SafetensorsWriter":
    return self

  def __exit__(self, exc_type, *exc) -> None:
    if exc_type is None:
      self.close()
    else:
      self._file.close()


def write_bytes(f, array: np.ndarray) -> None:
  """Writes an array's row-major bytes in bounded chunks along its first axis, so a transposed
  view is made contiguous piecewise rather than copied whole."""
  array = array.reshape(1) if array.ndim == 0 else array
  per_row = array.nbytes // max(1, array.shape[0])
  rows = max(1, _CHUNK // max(1, per_row))
  for start in range(0, array.shape[0], rows):
    chunk = np.ascontiguousarray(array[start:start + rows])
    f.write(memoryview(chunk.reshape(-1).view(np.uint8)))
