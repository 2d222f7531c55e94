"""big_vision's bilinear resize (plain and antialiased) in C++, called through ctypes.

`resize_kernel.cc` gives `tf.image.resize(..., "bilinear")`'s pixels (then clip and truncation
to uint8) bit for bit, with TF's float32 operations in TF's order. It is compiled with g++ on
first use and cached (`native_build`, as the models' CPU kernels are). ctypes releases the GIL
for the call, so Grain's reader threads resize in parallel; NumPy released it only inside each
ufunc call. Where nothing can be compiled, `available()` is False, the callers use their NumPy
(or TensorFlow) path, and one INFO record says why.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import threading

import numpy as np

from paligemma_jax import native_build

SOURCE = pathlib.Path(__file__).with_name("resize_kernel.cc")
# -ffp-contract=off: a fused multiply-add would round once where TF rounds twice.
FLAGS = ("-O3", "-std=c++17", "-ffp-contract=off")
DISABLE_ENV = "PALIGEMMA_JAX_RESIZE_KERNEL"  # "off" (or "0"): the NumPy / TF paths

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_SIGNATURES = {
    "PgResizeBilinear": (None, [_P, _I64, _I64, _I64, _P, _I64, _I64, _P, _P, _P, _P, _P,
                                _P]),
    "PgTriangleSpanSize": (ctypes.c_int, [_I64, _I64]),
    "PgTriangleSpans": (ctypes.c_int, [_I64, _I64, ctypes.c_int, _P, _P, _P]),
    "PgResizeAntialiased": (None, [_P, _I64, _I64, _P, _I64, _I64,
                                   ctypes.c_int, _P, _P, _P, ctypes.c_int, _P, _P, _P]),
}
_LOCK = threading.Lock()
_LOADED: list[ctypes.CDLL | None] = []  # [the library or None] once tried


def _library() -> ctypes.CDLL | None:
  """The loaded library, or None; built, loaded (or given up on) once per process."""
  if not _LOADED:
    with _LOCK:  # reader threads may ask at once: one builds, the others wait for it
      if not _LOADED:
        _LOADED.append(_load())
  return _LOADED[0]


def _load() -> ctypes.CDLL | None:
  why = None
  if os.environ.get(DISABLE_ENV, "").lower() in ("off", "0"):
    why = f"{DISABLE_ENV} is off"
  elif sys.platform != "linux" or shutil.which("g++") is None:
    why = "no g++ on this machine"
  else:
    try:
      lib = ctypes.CDLL(str(native_build.build_library(SOURCE, FLAGS)))
      for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
      return lib
    except (OSError, subprocess.CalledProcessError, AttributeError) as error:
      why = f"it did not build or load ({type(error).__name__}: {error})"
  logging.getLogger(__name__).info(
      "big_vision's bilinear resize runs in NumPy (antialiased: TensorFlow), slower than its "
      "C++ kernel: %s", why)
  return None


def available() -> bool:
  """Whether the C++ resize runs in this process (compiled, loaded, not switched off)."""
  return _library() is not None


def _pointer(array: np.ndarray) -> int:
  return array.ctypes.data


def bilinear_into(rgb: np.ndarray, out: np.ndarray, taps: tuple[np.ndarray, ...]) -> None:
  """TF's half-pixel bilinear resize of C-contiguous uint8 [H, W, C] into C-contiguous uint8
  `out` [size, size, C], with `images._bilinear_taps`' arrays (int64 y_lo, y_hi, float32 y_frac,
  int64 left, right, float32 x_frac)."""
  y_lo, y_hi, y_frac, left, right, x_frac = taps
  size = out.shape[0]
  height, width, channels = rgb.shape
  _library().PgResizeBilinear(
      _pointer(rgb), height, width * channels, channels, _pointer(out), size, out[0].size,
      *(_pointer(a) for a in (y_lo, y_hi, y_frac, left, right, x_frac)))


@functools.lru_cache(maxsize=64)
def triangle_spans(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """TF's ScaleAndTranslate spans for the antialiased triangle kernel, less their zero-weight
  taps: int32 starts and counts [out], float32 weights [out, span] (read-only; datasets repeat
  a few shapes)."""
  lib = _library()
  span = lib.PgTriangleSpanSize(out_size, in_size)
  starts, counts = np.empty(out_size, np.int32), np.empty(out_size, np.int32)
  weights = np.empty((out_size, span), np.float32)
  if lib.PgTriangleSpans(out_size, in_size, span, _pointer(starts), _pointer(counts),
                         _pointer(weights)) != span:
    raise RuntimeError(f"antialiased spans for {in_size} -> {out_size} px overflowed {span}")
  for array in (starts, counts, weights):
    array.setflags(write=False)
  return starts, counts, weights


def antialiased_into(rgb: np.ndarray, out: np.ndarray) -> None:
  """`tf.image.resize(rgb, out.shape[:2], "bilinear", antialias=True)`, clipped and truncated,
  of C-contiguous uint8 [H, W, C] into C-contiguous uint8 `out`."""
  height, width, channels = rgb.shape
  out_h, out_w = out.shape[:2]
  rows = triangle_spans(out_h, height)
  cols = triangle_spans(out_w, width)
  _library().PgResizeAntialiased(
      _pointer(rgb), width, channels, _pointer(out), out_h, out_w,
      rows[2].shape[1], *(_pointer(a) for a in rows), cols[2].shape[1],
      *(_pointer(a) for a in cols))
