"""`convert`: any supported checkpoint format to any other, streamed leaf by leaf.

Formats: "hf" (a folder of safetensors + config.json), "npz" (a big_vision file), "orbax" (the
project's params checkpoint). The source is checked in full from its headers before anything is
written; the destination is written under a temporary sibling name and renamed into place only
when complete, so a failure (bad input found late, a full disk, Ctrl-C) leaves the destination
as it was and no partial output.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable

from paligemma_jax.conversion.hf import HFSource
from paligemma_jax.conversion.hf_writer import DEFAULT_MAX_SHARD_SIZE, write_hf
from paligemma_jax.conversion.npz import NpzSource, write_npz
from paligemma_jax.conversion.safetensors_io import INDEX_FILE, CheckpointError
from paligemma_jax.conversion.streaming import (CastSource, ConversionError, MeteredSource, Source,
                                                dtype_name, nbytes)
from paligemma_jax.conversion.verify import VerifyResult, verify_conversion
from paligemma_jax.models import PaliGemmaConfig

FORMATS = ("hf", "npz", "orbax")


class DestinationExistsError(ConversionError):
  """The destination exists and `overwrite` was not given."""


@dataclasses.dataclass
class Summary:
  """What a conversion did; `str()` is the one-line report the CLI prints."""

  src: str
  dst: str
  src_format: str
  dst_format: str
  leaves: int
  bytes_read: int
  bytes_written: int
  dtypes: dict[str, int]
  seconds: float
  notes: list[str]
  verify: VerifyResult | None = None

  def __str__(self) -> str:
    dtypes = ", ".join(f"{n} {d}" for d, n in sorted(self.dtypes.items()))
    return (f"converted {self.src_format} -> {self.dst_format}: {self.leaves} tensors "
            f"({dtypes}), {_human(self.bytes_read)} read, {_human(self.bytes_written)} written "
            f"in {self.seconds:.1f} s -> {self.dst}")


def _human(n: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
    n /= 1024
  raise AssertionError


def parse_size(size: int | str) -> int:
  """Bytes from an int or "500MB" / "5GB" (powers of 1000) / "2GiB" (powers of 1024)."""
  if isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size, re.IGNORECASE)
  if not m:
    raise ConversionError(f"max_shard_size {size!r} is not a size like 500MB, 5GB or 2GiB")
  base = 1024 if m.group(3) else 1000
  return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def detect_format(path: str) -> str:
  """"npz" for a file, "hf" for a folder with safetensors, "orbax" for another folder."""
  if os.path.isfile(path):
    if path.endswith(".npz"):
      return "npz"
    raise ConversionError(f"cannot tell the format of {path}: only .npz files and checkpoint "
                          "folders (HF safetensors, Orbax) are known; pass src_format")
  if not os.path.isdir(path):
    raise CheckpointError(f"{path} does not exist")
  names = os.listdir(path)
  if INDEX_FILE in names or any(n.endswith(".safetensors") for n in names):
    return "hf"
  return "orbax"


def destination_format(dst: str, src_format: str) -> str:
  """From the name: *.npz -> npz; otherwise the other folder format (hf <-> orbax, npz -> orbax)."""
  if dst.endswith(".npz"):
    return "npz"
  return "hf" if src_format == "orbax" else "orbax"


def open_source(path: str, fmt: str, variant: str | PaliGemmaConfig | None = None) -> Source:
  if fmt == "hf":
    return HFSource(path)
  if fmt == "npz":
    return NpzSource(path, variant)
  if fmt == "orbax":
    from paligemma_jax.conversion.orbax_io import OrbaxSource  # Orbax loads only when used
    return OrbaxSource(path)
  raise ConversionError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, src_format: str | None = None,
            dst_format: str | None = None, dtype: str | None = None, overwrite: bool = False,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
            variant: str | PaliGemmaConfig | None = None, verify: bool = False,
            progress: bool = True, log: Callable[[str], None] = print) -> Summary:
  """Converts the checkpoint at `src` to `dst`; returns (and logs) a summary.

  Formats are detected when not given (see `detect_format`, `destination_format`). `dtype`
  ("float32", "bfloat16", "float16") casts every floating tensor; without it, dtypes and bits are
  preserved. `variant` (a name or a config) tells an npz source what its shapes cannot. `verify`
  compares logits of both sides on a small random input afterwards and raises if they differ.
  """
  src, dst = os.path.abspath(os.fspath(src)), os.path.abspath(os.fspath(dst))
  src_format, dst_format = _formats(src, dst, src_format, dst_format, overwrite, variant)
  max_shard_size = parse_size(max_shard_size)
  start = time.perf_counter()
  with open_source(src, src_format, variant) as source:
    how = f" ({source.how})" if isinstance(source, NpzSource) else ""
    if dtype is not None:
      source = CastSource(source, dtype)
    specs = source.specs()
    log(f"{src_format} -> {dst_format}: {source.config.text.depth}-layer Gemma "
        f"{source.config.text.version}, {len(specs)} tensors, "
        f"{_human(sum(nbytes(s) for s in specs.values()))}{how}")
    bar = _progress_bar(specs, progress, f"{src_format}->{dst_format}")
    metered = MeteredSource(source, lambda key, n: bar.update(n))
    try:
      notes = _write(metered, dst, dst_format, overwrite, max_shard_size)
    finally:
      bar.close()
  summary = Summary(
      src, dst, src_format, dst_format, leaves=metered.leaves, bytes_read=metered.nbytes,
      bytes_written=_size_on_disk(dst), seconds=time.perf_counter() - start, notes=notes,
      dtypes=dict(collections.Counter(dtype_name(s.dtype) for s in specs.values())))
  for note in notes:
    log(f"note: {note}")
  log(str(summary))
  if verify:
    summary.verify = verify_conversion(src, src_format, dst, dst_format, variant=variant,
                                       dtype=dtype, open_source=open_source, log=log)
  return summary


def _formats(src: str, dst: str, src_format: str | None, dst_format: str | None,
             overwrite: bool, variant) -> tuple[str, str]:
  """Both formats, after every check that needs no reading: fail before any work."""
  for fmt, what in ((src_format, "src_format"), (dst_format, "dst_format")):
    if fmt is not None and fmt not in FORMATS:
      raise ConversionError(f"unknown {what} {fmt!r}; valid formats: {', '.join(FORMATS)}")
  if src == dst:
    raise ConversionError(f"source and destination are the same path ({src})")
  src_format = src_format or detect_format(src)
  dst_format = dst_format or destination_format(dst, src_format)
  if os.path.lexists(dst) and not overwrite:
    raise DestinationExistsError(f"{dst} already exists; pass --overwrite (overwrite=True) to "
                                 "replace it")
  if variant is not None and src_format != "npz":
    raise ConversionError("a variant only applies to npz sources (HF and Orbax checkpoints "
                          "carry their config)")
  return src_format, dst_format


def _progress_bar(specs, enabled: bool, desc: str):
  from tqdm import tqdm
  return tqdm(total=sum(nbytes(s) for s in specs.values()), unit="B", unit_scale=True,
              unit_divisor=1024, desc=desc, disable=not enabled, dynamic_ncols=True)


def _write(source: Source, dst: str, fmt: str, overwrite: bool, max_shard_size: int) -> list[str]:
  """Writes into a temporary sibling and renames it into place; removes it on any failure."""
  if fmt == "orbax":  # ParamsWriter is atomic itself (temporary sibling, rename on commit)
    from paligemma_jax.conversion.orbax_io import write_orbax
    return _translating_errors(dst, lambda: write_orbax(source, dst, overwrite=overwrite))
  tmp = f"{dst}.incomplete-{uuid.uuid4().hex[:8]}"
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  try:
    if fmt == "hf":
      notes = _translating_errors(dst, lambda: write_hf(source, tmp,
                                                        max_shard_size=max_shard_size))
    else:
      notes = _translating_errors(dst, lambda: write_npz(source, tmp))
    _replace(tmp, dst)
  except BaseException:
    _remove(tmp)
    raise
  return notes


def _translating_errors(dst: str, write: Callable[[], list[str]]) -> list[str]:
  try:
    return write()
  except BaseException as e:
    if _is_disk_full(e):
      raise ConversionError(f"disk full while writing {dst}; the partial output was removed, "
                            "free some space and retry") from None
    if isinstance(e, OSError) and not isinstance(e, CheckpointError):
      raise ConversionError(f"cannot write {dst}: {e.strerror or e}") from None
    raise


def _is_disk_full(e: BaseException | None) -> bool:
  """ENOSPC anywhere in the exception chain (Orbax and tensorstore wrap the OSError)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _replace(tmp: str, dst: str) -> None:
  old = None
  if os.path.lexists(dst):
    old = f"{tmp}.old"
    os.rename(dst, old)
  os.rename(tmp, dst)
  if old:
    _remove(old)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


def _size_on_disk(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(path) for f in files)
