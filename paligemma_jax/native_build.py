"""Per-machine artefacts: where they are cached, and C++ libraries compiled once and cached there.

The CPU kernels (`models/cpu_matmul*.cc`, `data/resize_kernel.cc`) ship as source, so the package
stays pure Python, and are built with g++ on first use (a few seconds, once per machine). This
module imports nothing but the standard library, so both `models/` and `data/` (which may not
import jax) use it.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import tempfile
from collections.abc import Sequence


def cache_dirs() -> tuple[pathlib.Path, ...]:
  """Where per-machine artefacts go: $XDG_CACHE_HOME (~/.cache), else the temporary directory."""
  home = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
  return home / "paligemma_jax", pathlib.Path(tempfile.gettempdir()) / "paligemma_jax"


def build_library(source: pathlib.Path, flags: Sequence[str], *, key: bytes = b"",
                  headers: Sequence[pathlib.Path] = (),
                  dirs: Sequence[pathlib.Path] | None = None) -> pathlib.Path:
  """Compiles `source` into a shared library once per source, headers, flags and `key`; returns it.

  The library is cached in the first writable of `dirs` (default `cache_dirs()`), written
  atomically, so concurrent processes never load a half-written file. `flags` go to g++ before
  the source (with -fPIC -shared). Raises subprocess.CalledProcessError if g++ fails and OSError
  if no directory can be written.
  """
  digest = hashlib.sha256(source.read_bytes() + b"".join(h.read_bytes() for h in headers)
                          + " ".join(flags).encode() + key).hexdigest()[:16]
  for cache in cache_dirs() if dirs is None else dirs:
    lib = cache / f"{source.stem}-{digest}.so"
    if lib.exists():
      return lib
    try:
      cache.mkdir(parents=True, exist_ok=True)
      with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = pathlib.Path(tmp) / lib.name
        subprocess.run(["g++", *flags, "-fPIC", "-shared", str(source), "-o", str(out)],
                       check=True, capture_output=True)
        os.replace(out, lib)
      return lib
    except OSError:  # not writable (a compiler failure raises CalledProcessError)
      continue
  raise OSError("no writable cache directory for compiled kernels "
                f"(tried {', '.join(map(str, cache_dirs() if dirs is None else dirs))})")
