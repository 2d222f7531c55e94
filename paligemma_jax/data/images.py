"""Image preprocessing for PaliGemma: any RGB-able image in, float32 [size, size, 3] in [-1, 1] out.

Both references resize to a square (aspect ratio ignored), with no crop and no mean/std
normalisation, but they differ in details that measurably move benchmark scores, so both exist:

- `method="hf"` reproduces HF's `SiglipImageProcessor` with its PIL backend: transparency is
  composited onto white (`do_convert_rgb`), then PIL **bicubic** resize of the uint8 image (PIL
  rounds the result to uint8 and always filters over the whole source footprint, i.e. it is
  antialiased), then `x / 255` and `(x - 0.5) / 0.5`. Bit-identical to HF in the tests.
- `method="big_vision"` reproduces big_vision's `decode | resize(size) | value_range(-1, 1)`: alpha
  is dropped (`tf.io.decode_image(channels=3)`), then `tf.image.resize` **bilinear** with half-pixel
  centres on the uint8 image, clipped to [0, 255] and **truncated** to uint8, then
  `(x / 255) * 2 - 1`. Both `antialias=False` (big_vision's default) and `antialias=True` (set
  by many PaliGemma transfer configs) run in `resize_kernel`'s C++, TF's float32 operations in
  TF's order (the same pixels, no TensorFlow needed, no GIL held); where it cannot be compiled,
  a NumPy replica of TF's plain kernel, and TensorFlow for the antialiased one.

Both methods end their resize in uint8, so `preprocess_image` is `resize_image` (uint8
[size, size, 3]) then `scale_pixels` (exact: each float depends on its uint8 value alone); the
training input keeps the uint8 pixels until it batches them.

Accepted inputs (channels last): a PIL image of any mode; a NumPy-convertible array of shape
[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] that is either integer with values in [0, 255] or float
with values in [0, 1] (floats are scaled by 255 and rounded to uint8 first, because both references
resize uint8 images). Float arrays in [-1, 1] are refused rather than guessed at: values in [0, 1]
are valid under both conventions. Already-normalised pixels go to `check_pixel_values`.
HF itself mishandles float arrays (it rescales them by 1/255 twice), so there is no parity to keep.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any

import numpy as np
import PIL.Image

from paligemma_jax.data import resize_kernel

IMAGE_METHODS = ("hf", "big_vision")


def is_image(obj: Any) -> bool:
  """True for a PIL image or an array-like that is not a Python container or string."""
  if isinstance(obj, PIL.Image.Image):
    return True
  return hasattr(obj, "__array__") and not isinstance(obj, (str, bytes, list, tuple, dict))


def preprocess_image(image: Any, size: int, method: str = "hf", antialias: bool = False,
                     out: np.ndarray | None = None) -> np.ndarray:
  """Resizes and normalises one image: `scale_pixels(resize_image(...))`.

  Args:
    image: a PIL image or an array [H, W], [H, W, 1|3|4] (see the module docstring for ranges).
    size: output height and width in pixels.
    method: "hf" (PIL bicubic, HF parity) or "big_vision" (TF bilinear, big_vision parity).
    antialias: big_vision only: tf.image.resize's antialias flag. PIL's resize used by "hf" is
      always antialiased, so True with "hf" is refused.
    out: optional float32 [size, size, 3] C-contiguous array the result is written into (the
      processor passes its batch's slot, saving a copy per image); allocated when None.

  Returns:
    float32 [size, size, 3] in [-1, 1] (`out` when given).
  """
  _check_method(method, size, antialias)
  out = _image_slot(out, size, np.float32)
  pixels = resize_image(image, size, method, antialias, out=_scratch("pixels", out.shape, np.uint8))
  return scale_pixels(pixels, method, out=out)


def _image_slot(out: np.ndarray | None, size: int, dtype: Any) -> np.ndarray:
  """`out` checked to be a C-contiguous [size, size, 3] array of `dtype`, or a new one."""
  if out is None:
    return np.empty((size, size, 3), dtype)
  if out.shape != (size, size, 3) or out.dtype != dtype or not out.flags.c_contiguous:
    raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name} array of shape "
                     f"{(size, size, 3)}, got {out.dtype} {out.shape}")
  return out


def resize_image(image: Any, size: int, method: str = "hf", antialias: bool = False,
                 out: np.ndarray | None = None) -> np.ndarray:
  """The resized image before normalisation: uint8 [size, size, 3].

  Both methods end their resize in uint8 (HF's PIL resize rounds, big_vision truncates), so
  `scale_pixels` of these pixels is exactly `preprocess_image`'s float32 result. The training
  input keeps images this way until batching: a quarter of the bytes per example.

  Args and checks as `preprocess_image`; `out`, when given, is a C-contiguous uint8
  [size, size, 3] array (a batch's slot).
  """
  _check_method(method, size, antialias)
  out = _image_slot(out, size, np.uint8)
  alpha = "white" if method == "hf" else "drop"
  if isinstance(image, PIL.Image.Image):
    rgb = _pil_to_rgb(image, alpha)
  else:
    rgb = _array_to_rgb(image, alpha)
  if method == "hf":
    out[...] = np.asarray(PIL.Image.fromarray(rgb).resize((size, size),
                                                          resample=PIL.Image.Resampling.BICUBIC))
  else:
    _resize_bilinear_into(rgb, out, antialias)
  return out


def _check_method(method: str, size: int, antialias: bool) -> None:
  if method not in IMAGE_METHODS:
    raise ValueError(f"unknown image method {method!r}; use one of {IMAGE_METHODS}")
  if not isinstance(size, (int, np.integer)) or size <= 0:
    raise ValueError(f"image size must be a positive int, got {size!r}")
  if method == "hf" and antialias:
    raise ValueError("antialias=True applies to method='big_vision' only (PIL bicubic always antialiases)")


SCALE_CHUNK = 1 << 16  # values per step of `scale_pixels`: its float temporaries stay in cache


def scale_pixels(pixels: np.ndarray, method: str, out: np.ndarray | None = None) -> np.ndarray:
  """float32 in [-1, 1] of `resize_image`'s uint8 pixels (any shape, e.g. a batch [B, ..., 3]).

  "big_vision": big_vision's value_range(-1, 1), (x / 255) * 2 - 1 in float32. "hf": HF's rescale
  (float64 x * (1/255), cast to float32) then (x - 0.5) / 0.5. Each value gets the same float
  operations as in the references, so the result depends on its uint8 value alone. Done by
  chunks of SCALE_CHUNK values, so that the later passes read what the first wrote from cache.

  Args:
    pixels: uint8 array, C-contiguous.
    method: "hf" or "big_vision".
    out: optional C-contiguous float32 array of the same shape; allocated when None.
  """
  if method not in IMAGE_METHODS:
    raise ValueError(f"unknown image method {method!r}; use one of {IMAGE_METHODS}")
  if pixels.dtype != np.uint8 or not pixels.flags.c_contiguous:
    raise ValueError(f"pixels must be a C-contiguous uint8 array, got {pixels.dtype}")
  if out is None:
    out = np.empty(pixels.shape, np.float32)
  elif out.shape != pixels.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
    raise ValueError(f"out must be a C-contiguous float32 array of shape {pixels.shape}, got "
                     f"{out.dtype} {out.shape}")
  scale = _hf_scale if method == "hf" else _big_vision_scale
  flat_in, flat_out = pixels.reshape(-1), out.reshape(-1)
  for start in range(0, flat_in.size, SCALE_CHUNK):
    scale(flat_in[start:start + SCALE_CHUNK], flat_out[start:start + SCALE_CHUNK])
  return out


def _hf_scale(pixels: np.ndarray, out: np.ndarray) -> None:
  """out = HF's rescale then normalise of 1-D uint8 `pixels`, through a reused float64 buffer."""
  scaled = _scratch("hf", pixels.shape, np.float64)
  np.copyto(scaled, pixels)
  scaled *= 1 / 255
  np.copyto(out, scaled, casting="same_kind")  # rounded as astype rounds
  out -= np.float32(0.5)
  out /= np.float32(0.5)


def _big_vision_scale(pixels: np.ndarray, out: np.ndarray) -> None:
  """out = big_vision's value_range(-1, 1) of uint8 pixels: (x / 255) * 2 - 1 in float32."""
  np.divide(pixels, np.float32(255), out=out)  # the uint8 -> float32 cast happens in the ufunc
  out *= np.float32(2)
  out -= np.float32(1)


def _pil_to_rgb(image: PIL.Image.Image, alpha: str) -> np.ndarray:
  """uint8 [H, W, 3] of a PIL image; alpha "white" composites onto white, "drop" discards it."""
  if image.width == 0 or image.height == 0:
    raise ValueError(f"image is empty ({image.width}x{image.height}); pass an image with pixels")
  has_alpha = "A" in image.getbands() or "transparency" in image.info
  if alpha == "white" and has_alpha:
    rgba = image.convert("RGBA")
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(image.convert("RGB"))


def _array_to_rgb(image: Any, alpha: str) -> np.ndarray:
  """uint8 [H, W, 3] of an array image; see `_pil_to_rgb` for `alpha`."""
  if not is_image(image):
    raise ValueError(
      f"expected an image (PIL.Image or array [H, W, 3]), got {type(image).__name__}; load it with PIL first"
    )
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.ndim != 3:
    raise ValueError(
        f"image array must be [H, W] or [H, W, C], got shape {array.shape}; pass a batch as a list of images")
  if array.shape[-1] not in (1, 3, 4):
    hint = "; it looks channels-first, use np.moveaxis(x, 0, -1)" if array.shape[0] in (1, 3, 4) else ""
    raise ValueError(f"image must have 1, 3 or 4 channels (last axis), got shape {array.shape}{hint}")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise ValueError(f"image is empty (shape {array.shape}); pass an image with pixels")
  array = _to_uint8(array)
  channels = array.shape[-1]
  if channels == 1:
    return np.repeat(array, 3, axis=-1)
  if channels == 4 and alpha == "white":
    # Same formula as HF's NumPy convert_to_rgb: blend in float64, round to uint8.
    a = array[..., 3:4] / 255
    return np.round(a * array[..., :3] + (1 - a) * 255).astype(np.uint8)
  return np.ascontiguousarray(array[..., :3])


def _to_uint8(array: np.ndarray) -> np.ndarray:
  """Integer arrays in [0, 255] or float arrays in [0, 1] -> uint8."""
  if array.dtype == np.uint8:
    return array
  if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise ValueError(f"image dtype {array.dtype} is not supported; use uint8 in [0, 255] or float in [0, 1]")
  lo, hi = array.min(), array.max()
  if np.issubdtype(array.dtype, np.integer):
    if lo < 0 or hi > 255:
      raise ValueError(f"integer image values must lie in [0, 255], got [{lo}, {hi}]; rescale to uint8")
    return array.astype(np.uint8)
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
    raise ValueError(
      f"float image values must lie in [0, 1], got [{lo}, {hi}]; for pixels already in [-1, 1] use "
      "check_pixel_values / Processor(pixel_values=...)"
    )
  return np.round(array.astype(np.float64) * 255).astype(np.uint8)


def resize_bilinear_tf(rgb: np.ndarray, size: int, antialias: bool = False) -> np.ndarray:
  """big_vision's `resize(size)` of a uint8 image: TF2 bilinear, clip, truncate to uint8.

  Args:
    rgb: uint8 [H, W, C].
    size: output height and width.
    antialias: tf.image.resize's flag (its scale-and-translate triangle kernel).

  Returns:
    uint8 [size, size, C].
  """
  return _resize_bilinear_into(rgb, np.empty((size, size, rgb.shape[2]), np.uint8), antialias)


def _resize_bilinear_into(rgb: np.ndarray, out: np.ndarray, antialias: bool) -> np.ndarray:
  """`resize_bilinear_tf` into C-contiguous uint8 `out` [size, size, C]; returns `out`.

  The C++ kernel (`resize_kernel`: the same pixels, without the GIL) where it runs; otherwise
  NumPy, or TensorFlow when antialiased.
  """
  rgb = np.ascontiguousarray(rgb)
  if resize_kernel.available():
    if antialias:
      resize_kernel.antialiased_into(rgb, out)
    else:
      resize_kernel.bilinear_into(rgb, out, _bilinear_taps(*rgb.shape, out.shape[0]))
  elif antialias:
    import tensorflow as tf  # Lazy: only the fallback for antialiased resizing needs TF.

    resized = tf.image.resize(rgb, out.shape[:2], method="bilinear", antialias=True).numpy()
    np.copyto(out, np.clip(resized, 0, 255), casting="unsafe")
  else:
    _bilinear_into(rgb, out)
  return out


BLOCK_ROWS = 128  # output rows per block: temporaries in a core's L2 or the L3 (2-4% faster than 64)


def _bilinear_into(rgb: np.ndarray, out: np.ndarray) -> np.ndarray:
  """TF's half-pixel bilinear resize of uint8 [H, W, C] into C-contiguous uint8 `out`
  [size, size, C], by blocks of BLOCK_ROWS output rows; returns `out`.

  Bit-identical to `tf.image.resize(..., "bilinear")` then clip and truncation: per output value
  the same float32 operations in TF's order (lerp along x of the two source rows, then along y).
  The fallback where `resize_kernel` does not build. Each block of rows is done while in
  cache, and gathers index single channels (NumPy's `take` has fast paths for 1-byte items, none
  for 3-byte pixels).
  """
  height, width, channels = rgb.shape
  size = out.shape[0]
  y_lo, y_hi, y_frac, left, right, x_frac = _bilinear_taps(height, width, channels, size)
  rows = rgb.reshape(height, width * channels)
  flat_out = out.reshape(size, size * channels)
  row = size * channels
  for start in range(0, size, BLOCK_ROWS):
    stop = min(start + BLOCK_ROWS, size)
    first, last = y_lo[start], y_hi[stop - 1] + 1  # the source rows this block reads
    gathered = _scratch("gathered", (last - first, row), np.uint8)
    lo = _scratch("lo", (last - first, row), np.float32)
    hi = _scratch("hi", (last - first, row), np.float32)
    np.take(rows[first:last], left, axis=1, out=gathered, mode="clip")  # indices are in range
    np.copyto(lo, gathered)
    np.take(rows[first:last], right, axis=1, out=gathered, mode="clip")
    np.copyto(hi, gathered)
    hi -= lo
    hi *= x_frac
    lo += hi  # each source row lerped along x: lo + (hi - lo) * fx
    top = _scratch("top", (stop - start, row), np.float32)
    bottom = _scratch("bottom", (stop - start, row), np.float32)
    np.take(lo, y_lo[start:stop] - first, axis=0, out=top, mode="clip")
    np.take(lo, y_hi[start:stop] - first, axis=0, out=bottom, mode="clip")
    bottom -= top
    bottom *= y_frac[start:stop]
    top += bottom  # then along y: top + (bottom - top) * fy
    # Each lerp lies between its two uint8 inputs up to float32 rounding (never below 0 or
    # at 256), so truncating without TF's clip gives the same uint8.
    np.copyto(flat_out[start:stop], top, casting="unsafe")  # truncation, as astype(np.uint8)
  return out


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
  """This thread's reusable C-contiguous array `name` of `shape` (contents undefined).

  The resize's temporaries live here rather than in fresh arrays: glibc serves blocks of this
  size (hundreds of KB to MB) by mmap or hands them back to the OS when freed, so fresh ones cost
  a page fault per 4 KB on every image; at 896 px that took more time in the kernel than the
  resize itself in Grain's reader threads.
  """
  count = math.prod(shape)
  buffer = getattr(_SCRATCH, name, None)
  if buffer is None or buffer.size < count or buffer.dtype != dtype:
    buffer = np.empty(count, dtype)
    setattr(_SCRATCH, name, buffer)
  return buffer[:count].reshape(shape)


@functools.lru_cache(maxsize=64)
def _bilinear_taps(height: int, width: int, channels: int, size: int) -> tuple[np.ndarray, ...]:
  """`_bilinear_into`'s read-only tap arrays for one source shape (datasets repeat a few):
  y_lo, y_hi [size], y_frac [size, 1], left, right (indices into a flat source row) and x_frac
  [size * C], each output value's own."""
  y_lo, y_hi, y_frac = _half_pixel_taps(height, size)
  x_lo, x_hi, x_frac = _half_pixel_taps(width, size)
  per_channel = np.arange(channels)
  left = (x_lo[:, None] * channels + per_channel).ravel()
  right = (x_hi[:, None] * channels + per_channel).ravel()
  taps = (y_lo, y_hi, y_frac[:, None], left, right, np.repeat(x_frac, channels))
  for array in taps:
    array.setflags(write=False)
  return taps


def _half_pixel_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """TF's half-pixel-centre source positions: lower index, upper index, float32 fraction [out]."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(src)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
  return lower, upper, (src - floor).astype(np.float32)


def check_pixel_values(pixel_values: Any, size: int) -> np.ndarray:
  """Validates already-preprocessed pixels: float [..., size, size, 3] in [-1, 1] -> float32."""
  array = np.asarray(pixel_values)
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"pixel_values must be float in [-1, 1], got dtype {array.dtype}; pass raw images instead")
  if array.ndim < 3 or array.shape[-3:] != (size, size, 3):
    raise ValueError(f"pixel_values must end in ({size}, {size}, 3) (channels last), got shape {array.shape}")
  if array.size and (not np.all(np.isfinite(array)) or array.min() < -1 - 1e-6 or array.max() > 1 + 1e-6):
    raise ValueError(f"pixel_values must lie in [-1, 1], got [{array.min()}, {array.max()}]")
  return array.astype(np.float32)
