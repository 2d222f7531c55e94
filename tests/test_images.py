"""Image preprocessing: HF SiglipImageProcessor parity, tf.image.resize parity, input forms, errors."""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest

from paligemma_jax.data import resize_kernel
from paligemma_jax.data.images import (SCALE_CHUNK, check_pixel_values, preprocess_image,
                                      resize_bilinear_tf, resize_image, scale_pixels)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
RGBA = np.concatenate([RGB, RNG.integers(0, 256, (37, 53, 1), dtype=np.uint8)], axis=-1)
GRAY = RNG.integers(0, 256, (41, 30), dtype=np.uint8)


def _palette_with_transparency() -> PIL.Image.Image:
  image = PIL.Image.fromarray(RGB).quantize(16)
  image.info["transparency"] = 3
  return image


@pytest.fixture(scope="module")
def hf_processor():
  from transformers import SiglipImageProcessorPil
  return SiglipImageProcessorPil(size={"height": 32, "width": 32})


@pytest.mark.parametrize("image", [
    pytest.param(RGB, id="uint8-rgb"),
    pytest.param(RGBA, id="uint8-rgba"),
    pytest.param(GRAY[..., None], id="uint8-hw1"),
    pytest.param(PIL.Image.fromarray(RGB), id="pil-rgb"),
    pytest.param(PIL.Image.fromarray(RGBA), id="pil-rgba"),
    pytest.param(PIL.Image.fromarray(GRAY), id="pil-l"),
    pytest.param(PIL.Image.fromarray(GRAY).convert("LA"), id="pil-la"),
    pytest.param(_palette_with_transparency(), id="pil-p-transparency"),
    pytest.param(PIL.Image.fromarray(RGB).convert("CMYK"), id="pil-cmyk"),
])
def test_hf_method_matches_siglip_image_processor(hf_processor, image):
  ours = preprocess_image(image, 32, "hf")
  theirs = hf_processor(image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  assert ours.shape == (32, 32, 3) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)


@pytest.fixture(params=["kernel", "fallback"])
def resize_path(request, monkeypatch):
  """Runs a test through the C++ kernel and through the fallback (NumPy; TF when antialiased)."""
  if request.param == "kernel" and not resize_kernel.available():
    pytest.skip("the C++ resize kernel does not build here (no g++?)")
  if request.param == "fallback":
    monkeypatch.setattr(resize_kernel, "available", lambda: False)
  return request.param


def _antialias_values(resize_path: str) -> tuple[bool, ...]:
  """The antialias flags a parity test checks: the antialiased fallback is TF's own resize, which
  would only be compared with itself."""
  return (False, True) if resize_path == "kernel" else (False,)


SHAPES = [(37, 53, 32), (7, 9, 64), (300, 224, 224), (500, 375, 224), (32, 32, 32), (480, 640, 448),
          (61, 90, 200), (1, 1, 5), (100, 3000, 64)]  # several row blocks, upsampling, 1 px, wide


@pytest.mark.parametrize("height,width,size", SHAPES)
def test_bilinear_matches_tf_resize(resize_path: str, height: int, width: int, size: int):
  import tensorflow as tf
  image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
  # Smooth ramps hit exact integers, where truncation to uint8 is most sensitive to float error.
  ramp = np.broadcast_to((np.arange(width) % 256).astype(np.uint8)[None, :, None], (height, width, 3))
  for x in (image, np.ascontiguousarray(ramp), np.full_like(image, 255)):
    for antialias in _antialias_values(resize_path):
      resized = tf.image.resize(x, (size, size), method="bilinear", antialias=antialias)
      want = tf.cast(tf.clip_by_value(resized, 0, 255), tf.uint8).numpy()
      np.testing.assert_array_equal(resize_bilinear_tf(x, size, antialias), want)


@pytest.mark.parametrize("channels", [1, 4])
def test_any_strides_and_channel_count(resize_path: str, channels: int):
  import tensorflow as tf
  image = RNG.integers(0, 256, (60, 80, 2 * channels), dtype=np.uint8)
  view = image[::2, 1::2, :channels]  # not contiguous
  for antialias in _antialias_values(resize_path):
    want = tf.image.resize(np.ascontiguousarray(view), (24, 24), "bilinear", antialias=antialias)
    want = tf.cast(tf.clip_by_value(want, 0, 255), tf.uint8).numpy()
    np.testing.assert_array_equal(resize_bilinear_tf(view, 24, antialias), want)


def test_without_a_compiler_the_fallback_says_so_once(monkeypatch, caplog):
  monkeypatch.setattr(resize_kernel.shutil, "which", lambda name: None)
  with caplog.at_level(logging.INFO, logger=resize_kernel.__name__):
    assert resize_kernel._load() is None
  assert [r.levelno for r in caplog.records] == [logging.INFO]
  assert "no g++" in caplog.records[0].getMessage()
  monkeypatch.setenv(resize_kernel.DISABLE_ENV, "off")
  assert resize_kernel._load() is None


def test_big_vision_method():
  out = preprocess_image(RGB, 16, "big_vision")
  np.testing.assert_array_equal(out, resize_bilinear_tf(RGB, 16).astype(np.float32) / 255 * 2 - 1)
  assert out.min() >= -1 and out.max() <= 1
  # antialias only matters when shrinking: 53 -> 16 px must change.
  antialiased = preprocess_image(RGB, 16, "big_vision", antialias=True)
  assert np.abs(antialiased - out).max() > 0.05
  assert antialiased.dtype == np.float32 and antialiased.min() >= -1 and antialiased.max() <= 1


@pytest.mark.parametrize("method,antialias", [("hf", False), ("big_vision", False), ("big_vision", True)])
def test_out_receives_the_same_pixels(resize_path: str, method: str, antialias: bool):
  want = preprocess_image(RGB, 70, method, antialias)
  slots = np.full((2, 70, 70, 3), 7, np.float32)
  got = preprocess_image(RGB, 70, method, antialias, out=slots[1])
  assert got is slots[1] or np.shares_memory(got, slots[1])
  np.testing.assert_array_equal(slots[1], want)
  np.testing.assert_array_equal(slots[0], 7)  # nothing written outside the slot
  with pytest.raises(ValueError, match="C-contiguous float32"):
    preprocess_image(RGB, 70, method, antialias, out=np.empty((70, 70, 3), np.float64))
  with pytest.raises(ValueError, match="C-contiguous float32"):
    preprocess_image(RGB, 70, method, antialias, out=np.empty((70, 140, 3), np.float32)[:, ::2])


@pytest.mark.parametrize("method,antialias", [("hf", False), ("big_vision", False), ("big_vision", True)])
def test_uint8_resize_then_scale_is_preprocess_image(resize_path: str, method: str,
                                                     antialias: bool):
  # The training input keeps images as these uint8 pixels until they are batched.
  pixels = resize_image(RGBA, 70, method, antialias)
  assert pixels.dtype == np.uint8 and pixels.shape == (70, 70, 3)
  np.testing.assert_array_equal(scale_pixels(pixels, method), preprocess_image(RGBA, 70, method, antialias))
  slots = np.zeros((2, 70, 70, 3), np.uint8)
  assert np.shares_memory(resize_image(RGBA, 70, method, antialias, out=slots[1]), slots[1])
  np.testing.assert_array_equal(slots[1], pixels)
  with pytest.raises(ValueError, match="C-contiguous uint8"):
    resize_image(RGB, 70, method, antialias, out=np.empty((70, 70, 3), np.float32))


def test_scale_pixels_is_each_references_formula_on_every_uint8_value():
  values = np.arange(256, dtype=np.uint8)
  f32 = values.astype(np.float32)
  big_vision = f32 / np.float32(255) * np.float32(2) - np.float32(1)
  hf = ((values * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)  # float64 rescale
  np.testing.assert_array_equal(scale_pixels(values, "big_vision"), big_vision)
  np.testing.assert_array_equal(scale_pixels(values, "hf"), hf)
  batch = RNG.integers(0, 256, (2, 1, 150, 150, 3), dtype=np.uint8)  # several chunks, odd tail
  assert batch.size > 2 * SCALE_CHUNK and batch.size % SCALE_CHUNK
  for method, table in (("big_vision", big_vision), ("hf", hf)):
    out = np.full(batch.shape, 9, np.float32)
    assert scale_pixels(batch, method, out=out) is out
    np.testing.assert_array_equal(out, table[batch])
  with pytest.raises(ValueError, match="uint8"):
    scale_pixels(f32, "hf")


def test_threads_resizing_at_once_get_the_serial_pixels(resize_path: str):
  # The resize reuses per-thread buffers (Grain's reader threads call it concurrently).
  from concurrent.futures import ThreadPoolExecutor
  images = [RNG.integers(0, 256, (150 + 7 * i, 200 - 5 * i, 3), dtype=np.uint8) for i in range(8)]
  jobs = [(image, size, method, antialias) for image in images for size in (40, 130)
          for method, antialias in (("hf", False), ("big_vision", False), ("big_vision", True))]
  serial = [preprocess_image(*job) for job in jobs]
  with ThreadPoolExecutor(4) as pool:
    threaded = list(pool.map(lambda job: preprocess_image(*job), jobs * 3))
  for i, got in enumerate(threaded):
    np.testing.assert_array_equal(got, serial[i % len(jobs)])


def test_alpha_handling_differs_by_method():
  transparent = np.zeros((8, 8, 4), np.uint8)
  transparent[..., 0] = 200  # red but fully transparent
  np.testing.assert_array_equal(preprocess_image(transparent, 8, "hf"), 1.0)  # composited onto white
  np.testing.assert_allclose(preprocess_image(transparent, 8, "big_vision")[..., 0], 200 / 255 * 2 - 1, atol=1e-6)


def test_equivalent_input_forms():
  base = preprocess_image(RGB, 24)
  np.testing.assert_array_equal(preprocess_image(RGB / 255.0, 24), base)
  np.testing.assert_array_equal(preprocess_image(RGB.astype(np.int64), 24), base)
  np.testing.assert_array_equal(preprocess_image(PIL.Image.fromarray(RGB), 24), base)
  gray = preprocess_image(GRAY, 24)
  np.testing.assert_array_equal(gray, preprocess_image(np.repeat(GRAY[..., None], 3, -1), 24))
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("bad,message", [
    (np.zeros((8, 8, 2), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((8, 8, 5), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((3, 8, 8), np.uint8), "channels-first"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((2, 8, 8, 3), np.uint8), r"\[H, W\] or \[H, W, C\]"),
    (np.zeros((8,), np.uint8), r"\[H, W\] or \[H, W, C\]"),
    ("cat.jpg", "expected an image"),
    ([[1, 2], [3, 4]], "expected an image"),
    (np.full((4, 4, 3), -0.5, np.float32), r"float image values must lie in \[0, 1\]"),
    (np.full((4, 4, 3), 300, np.int32), r"integer image values must lie in \[0, 255\]"),
    (np.zeros((4, 4, 3), bool), "dtype bool"),
    (PIL.Image.new("RGB", (0, 5)), "empty"),
])
def test_bad_images(bad, message: str):
  with pytest.raises(ValueError, match=message) as info:
    preprocess_image(bad, 16)
  assert "\n" not in str(info.value)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown image method"):
    preprocess_image(RGB, 16, "bicubic")
  with pytest.raises(ValueError, match="antialias=True applies to method='big_vision'"):
    preprocess_image(RGB, 16, "hf", antialias=True)
  with pytest.raises(ValueError, match="positive int"):
    preprocess_image(RGB, 0)


def test_check_pixel_values():
  pixels = preprocess_image(RGB, 16)[None]
  np.testing.assert_array_equal(check_pixel_values(pixels.astype(np.float64), 16), pixels)
  with pytest.raises(ValueError, match=r"end in \(16, 16, 3\)"):
    check_pixel_values(pixels.transpose(0, 3, 1, 2), 16)
  with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
    check_pixel_values(pixels * 2, 16)
  with pytest.raises(ValueError, match="must be float"):
    check_pixel_values(RGB[None, :16, :16], 16)


def _encoded(image: PIL.Image.Image, fmt: str) -> bytes:
  import io
  out = io.BytesIO()
  image.save(out, format=fmt)
  return out.getvalue()


@pytest.mark.parametrize("image,fmt,channels", [
    pytest.param(PIL.Image.fromarray(RGB), "JPEG", 3, id="rgb-jpeg"),
    pytest.param(PIL.Image.fromarray(GRAY), "JPEG", 3, id="gray-jpeg"),
    pytest.param(PIL.Image.fromarray(RGBA), "PNG", 4, id="rgba-png"),
    pytest.param(_palette_with_transparency(), "PNG", 4, id="palette-transparency-png"),
])
def test_pil_decoder_gives_converted_pixels(image, fmt: str, channels: int):
  import io
  from paligemma_jax.data.tfds_input import decode_image
  data = _encoded(image, fmt)
  got = decode_image(data, "pil")
  want = np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB" if channels == 3 else "RGBA"))
  assert got.dtype == np.uint8 and got.shape == image.size[::-1] + (channels,)
  np.testing.assert_array_equal(got, want)


def test_pil_jpeg_decode_is_tfs_accurate_dct():
  # What benchmarks/input_throughput.py relies on to give tf.data the same decode as "pil";
  # TF's default (big_vision's decode, the "tf" decoder) uses the fast, less exact DCT.
  import tensorflow as tf
  from paligemma_jax.data.tfds_input import decode_image
  smooth = np.clip(RNG.normal(128, 60, (64, 80, 3)), 0, 255).astype(np.uint8)
  data = _encoded(PIL.Image.fromarray(smooth), "JPEG")
  accurate = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
  np.testing.assert_array_equal(decode_image(data, "pil"), accurate)
