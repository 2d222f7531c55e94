"""The `.npz` container, read and written one array (or one slice of an array) at a time.

An npz is a zip of `.npy` members. `np.load` would read a member whole; big_vision stores stacked
pairs (`kv_einsum` [L, 2, K, D, H], `gating_einsum` [L, 2, D, F]) whose halves are separate
native leaves, so the reader can also read `array[:, j]` alone. Uncompressed members (np.savez,
the official files) are read with positioned reads straight from the zip into the output array;
compressed ones through zipfile's stream.

bfloat16 is stored as the 2-byte void dtype `|V2` (numpy has no bf16); it is reinterpreted by
view, never cast numerically, on both sides.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.safetensors_io import CheckpointError, write_bytes

BF16 = np.dtype(ml_dtypes.bfloat16)
VOID2 = np.dtype("V2")
_CHUNK = 64 << 20


def stored_dtype(dtype: np.dtype) -> np.dtype:
  """The dtype an array is written with: bf16 as `|V2`, others unchanged."""
  return VOID2 if np.dtype(dtype) == BF16 else np.dtype(dtype)


def logical_dtype(dtype: np.dtype, where: str) -> np.dtype:
  """The dtype an array is read as: 2-byte void as bf16."""
  if dtype.kind == "V":
    if dtype.itemsize != 2 or dtype.fields:
      raise CheckpointError(f"{where} has dtype {dtype}; only 2-byte void (bfloat16) is known")
    return BF16
  return dtype


class NpyMember:
  """One `.npy` member: `shape`, `dtype` (logical) and `read(part=None)`."""

  def __init__(self, archive: "NpzReader", info: zipfile.ZipInfo):
    self.archive, self.info = archive, info
    with archive.zip.open(info) as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      self.header_size = f.tell()
    self.shape, self.fortran = tuple(shape), fortran
    self.dtype = logical_dtype(dtype, f"{archive.path}:{info.filename}")
    self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
    if info.file_size != self.header_size + self.nbytes:
      raise CheckpointError(f"{archive.path}:{info.filename} holds {info.file_size} bytes but its "
                            f"header declares {self.shape} {self.dtype}; the file is corrupt")

  def read(self, part: int | None = None, layer: int | None = None) -> np.ndarray:
    """`array[layer, part]`, with either index optional (None = all); only those bytes are
    read (a part of a shared array is strided: one block per layer)."""
    if self.fortran:  # never in big_vision files; correct, not frugal
      with self.archive.zip.open(self.info) as f:
        whole = np.lib.format.read_array(f, allow_pickle=False).view(self.dtype)
      index = (slice(None) if layer is None else layer,) + (() if part is None else (part,))
      return np.ascontiguousarray(whole[index])
    if part is None and layer is None:
      out = buffers.empty(self.shape, self.dtype)
      self._read_ranges([(0, out)])
      return out
    layers = range(self.shape[0]) if layer is None else [layer]
    inner = self.shape[1:] if part is None else self.shape[2:]
    out = buffers.empty((len(layers),) + inner, self.dtype)
    block = out[:1].nbytes
    parts = 1 if part is None else self.shape[1]
    # out[n:n+1] (a view, even for 1-D arrays) receives block n.
    self._read_ranges([((i * parts + (part or 0)) * block, out[n:n + 1])
                       for n, i in enumerate(layers)])
    return out if layer is None else out[0]

  def _read_ranges(self, ranges: list[tuple[int, np.ndarray]]) -> None:
    """Fills each output array from the data bytes at its offset (ascending offsets)."""
    where = f"{self.archive.path}:{self.info.filename}"
    if self.info.compress_type == zipfile.ZIP_STORED:
      base = self.archive.data_offset(self.info) + self.header_size
      with open(self.archive.path, "rb") as f:
        for offset, out in ranges:
          f.seek(base + offset)
          _fill(f, out, where)
    else:
      with self.archive.zip.open(self.info) as f:
        f.seek(self.header_size)
        for offset, out in ranges:
          f.seek(self.header_size + offset)  # forward only: zipfile decompresses as it skips
          _fill(f, out, where)


def _fill(f, out: np.ndarray, where: str) -> None:
  view = memoryview(out.reshape(-1).view(np.uint8))
  done = 0
  while done < len(view):
    got = f.readinto(view[done:done + _CHUNK])
    if not got:
      raise CheckpointError(f"{where} ends early; the file is truncated")
    done += got


class NpzReader:
  """The members of an `.npz` file by key (the member name without `.npy`)."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise CheckpointError(f"npz file {path} does not exist")
    self.path = path
    try:
      self.zip = zipfile.ZipFile(path)
      infos = [i for i in self.zip.infolist() if i.filename.endswith(".npy")]
      self.members = {i.filename[:-4]: NpyMember(self, i) for i in infos}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
      raise CheckpointError(f"{path} is not a readable npz file ({e}); it may be truncated "
                            "(re-download it)") from None
    self._offsets: dict[str, int] = {}

  def data_offset(self, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes start: after its local header (name and extra fields)."""
    if info.filename not in self._offsets:
      with open(self.path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
          raise CheckpointError(f"{self.path}: bad local header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
      self._offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return self._offsets[info.filename]

  def close(self) -> None:
    self.zip.close()


class NpzWriter:
  """Writes an `.npz` member by member, each from chunks, as `np.savez` lays them out
  (uncompressed, zip64, `<key>.npy`): the whole model is never in memory."""

  def __init__(self, path: str):
    self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)

  def write(self, key: str, shape: tuple[int, ...], dtype: np.dtype,
            chunks: Iterable[np.ndarray]) -> None:
    """Member `key` of `shape` and (logical) `dtype` from chunks along axis 0, in order."""
    stored = stored_dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(stored), "fortran_order": False,
              "shape": tuple(shape)}
    written = 0
    with self.zip.open(key + ".npy", "w", force_zip64=True) as f:
      np.lib.format.write_array_header_1_0(f, header)
      for chunk in chunks:
        if chunk.dtype != np.dtype(dtype) or chunk.shape[1:] != tuple(shape[1:]):
          raise ValueError(f"{key}: a chunk of {chunk.shape} {chunk.dtype} does not fit "
                           f"{tuple(shape)} {np.dtype(dtype)}")
        write_bytes(f, chunk.view(stored) if stored != chunk.dtype else chunk)
        written += chunk.nbytes
    want = int(np.prod(shape, dtype=np.int64)) * stored.itemsize
    if written != want:
      raise ValueError(f"{key}: wrote {written} bytes, its shape {shape} needs {want}")

  def close(self) -> None:
    self.zip.close()
