"""The segmentation VQ-VAE: parity with a PyTorch AiT reference through vae-oid.npz, and conversion.

The reference below is written from the AiT architecture with vae-oid.npz's state-dict names
(checkpoints.md §4.1): `encoder`/`decoder` are `nn.Sequential`s whose indices give the keys, the
codebook is the buffer `_vq_vae._embedding`, next to EMA buffers the converter must ignore.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import traverse_util
from torch import nn

from paligemma_jax.conversion.safetensors_io import CheckpointError
from paligemma_jax.conversion.vqvae import (TABLE, load_vqvae_npz, save_vqvae_npz,
                                            vqvae_params_from_npz, vqvae_params_to_npz)
from paligemma_jax.models.vqvae import (decode_codes, encode_masks, init_vqvae_params,
                                        vqvae_param_shapes)


class TorchResBlock(nn.Module):

  def __init__(self, c: int):
    super().__init__()
    self.net = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 1))

  def forward(self, x):
    return x + self.net(x)


class TorchQuantizer(nn.Module):

  def __init__(self, num_codes: int = 128, dim: int = 512):
    super().__init__()
    self.register_buffer("_embedding", torch.randn(num_codes, dim))
    self.register_buffer("_ema_cluster_size", torch.rand(num_codes))
    self.register_buffer("_ema_w", torch.randn(num_codes, dim))


class TorchVQVAE(nn.Module):
  """AiT's mask VQ-VAE, NCHW, with vae-oid.npz's module names."""

  def __init__(self):
    super().__init__()
    down = lambda i, o: nn.Conv2d(i, o, 4, stride=2, padding=1)
    up = lambda i, o: nn.ConvTranspose2d(i, o, 4, stride=2, padding=1)
    self.encoder = nn.Sequential(
        down(1, 16), nn.ReLU(), down(16, 32), nn.ReLU(), down(32, 64), nn.ReLU(), down(64, 128),
        nn.ReLU(), TorchResBlock(128), TorchResBlock(128), nn.Conv2d(128, 512, 1))
    self._vq_vae = TorchQuantizer()
    self.decoder = nn.Sequential(
        nn.Conv2d(512, 128, 1), nn.ReLU(), TorchResBlock(128), TorchResBlock(128),
        up(128, 128), nn.ReLU(), up(128, 64), nn.ReLU(), up(64, 32), nn.ReLU(), up(32, 16),
        nn.ReLU(), nn.Conv2d(16, 1, 1))

  def latents(self, masks_Bx1x64x64):
    return self.encoder(2.0 * (masks_Bx1x64x64 - 0.5))

  def encode(self, masks_Bx1x64x64):
    z = self.latents(masks_Bx1x64x64).permute(0, 2, 3, 1).reshape(-1, 512)
    e = self._vq_vae._embedding
    dist = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.T
    return dist.argmin(1).reshape(-1, 16)

  def decode(self, codes_Bx16):
    x = self._vq_vae._embedding[codes_Bx16].reshape(-1, 4, 4, 512).permute(0, 3, 1, 2)
    return self.decoder(x)  # [B, 1, 64, 64]


def _masks(n: int, rng: np.random.Generator) -> np.ndarray:
  """Random soft ellipses [n, 64, 64] in [0, 1]."""
  yy, xx = np.mgrid[:64, :64]
  masks = []
  for _ in range(n):
    cy, cx = rng.uniform(10, 54, 2)
    ry, rx = rng.uniform(5, 30, 2)
    r = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    masks.append(np.clip(1.5 - r, 0, 1))
  return np.stack(masks).astype(np.float32)


@pytest.fixture(scope="module")
def torch_model() -> TorchVQVAE:
  """Random weights with live activations, and a codebook of actual encoder outputs (+ noise), so
  outputs are O(1) and the nearest codes differ from mask to mask."""
  torch.manual_seed(0)
  model = TorchVQVAE().eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        w = module.weight
        fan_in = w[0].numel() if isinstance(module, nn.Conv2d) else w.shape[0] * 4
        w.normal_(0.0, (2.0 / fan_in) ** 0.5)
        module.bias.normal_(0.0, 0.1)
    masks = torch.from_numpy(_masks(8, np.random.default_rng(1)))[:, None]
    z = model.latents(masks).permute(0, 2, 3, 1).reshape(-1, 512)
    pick = torch.randperm(z.shape[0])[:128]
    model._vq_vae._embedding.copy_(z[pick] + 0.05 * z.std() * torch.randn(128, 512))
  return model


@pytest.fixture(scope="module")
def npz_path(torch_model, tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("vae") / "vae-oid.npz"
  np.savez(path, **{k: v.numpy() for k, v in torch_model.state_dict().items()})
  return str(path)


def test_state_dict_keys_are_the_table_plus_ema(torch_model):
  keys = set(torch_model.state_dict())
  assert keys - {row.npz for row in TABLE} == {"_vq_vae._ema_w", "_vq_vae._ema_cluster_size"}
  assert {row.npz for row in TABLE} <= keys
  assert torch_model.state_dict()["decoder.4.weight"].shape == (128, 128, 4, 4)
  assert torch_model.state_dict()["decoder.6.weight"].shape == (128, 64, 4, 4)  # (in, out, kH, kW)


def test_table_covers_every_parameter_once():
  natives = [row.native for row in TABLE]
  assert sorted(natives) == sorted(traverse_util.flatten_dict(vqvae_param_shapes(), sep="/"))


def test_decoder_parity_with_torch(torch_model, npz_path):
  params = load_vqvae_npz(npz_path)
  codes = np.random.default_rng(2).integers(0, 128, (4, 16))
  with torch.no_grad():
    want = torch_model.decode(torch.from_numpy(codes)).numpy()[:, 0]
  got = np.asarray(decode_codes(params["decoder"], codes.astype(np.int32)))
  assert got.shape == (4, 64, 64, 1)
  assert want.std() > 0.1  # the comparison is not between two near-zero outputs
  np.testing.assert_allclose(got[..., 0], want, atol=1e-4, rtol=0)


def test_encoder_parity_with_torch(torch_model, npz_path):
  params = load_vqvae_npz(npz_path)
  masks = _masks(6, np.random.default_rng(3))
  with torch.no_grad():
    want = torch_model.encode(torch.from_numpy(masks)[:, None]).numpy()
  got = np.asarray(encode_masks(params["encoder"], masks[..., None]))
  assert got.shape == (6, 16) and got.dtype == np.int32
  assert len(np.unique(want)) > 10  # codes vary, so identical codes are a real check
  np.testing.assert_array_equal(got, want)


def test_parity_detects_an_unflipped_conv_transpose(torch_model, npz_path):
  """The check is sharp enough to catch the classic layout bug (kernel read without the flip)."""
  params = load_vqvae_npz(npz_path)
  params["decoder"]["up_1"]["kernel"] = params["decoder"]["up_1"]["kernel"][::-1, ::-1]
  codes = np.random.default_rng(2).integers(0, 128, (2, 16))
  with torch.no_grad():
    want = torch_model.decode(torch.from_numpy(codes)).numpy()[:, 0]
  got = np.asarray(decode_codes(params["decoder"], codes.astype(np.int32)))[..., 0]
  assert np.abs(got - want).max() > 1e-2


def test_npz_round_trip_is_bit_identical(npz_path, tmp_path):
  with np.load(npz_path) as f:
    original = {k: f[k] for k in f.files if not k.startswith("_vq_vae._ema_")}
  out = tmp_path / "again.npz"
  save_vqvae_npz(load_vqvae_npz(npz_path), out)
  with np.load(out) as f:
    again = {k: f[k] for k in f.files}
  assert sorted(again) == sorted(original)
  for key, value in original.items():
    assert again[key].dtype == value.dtype and again[key].shape == value.shape, key
    assert again[key].tobytes() == value.tobytes(), key


def test_params_round_trip_through_npz_arrays():
  params = init_vqvae_params(5)
  back = vqvae_params_from_npz(vqvae_params_to_npz(params))
  flat = lambda p: {k: np.asarray(v) for k, v in traverse_util.flatten_dict(p).items()}
  assert flat(back).keys() == flat(params).keys()
  for key, value in flat(params).items():
    np.testing.assert_array_equal(flat(back)[key], value)


@pytest.fixture()
def arrays(npz_path) -> dict[str, np.ndarray]:
  with np.load(npz_path) as f:
    return {k: f[k] for k in f.files}


def test_missing_key_is_named(arrays):
  del arrays["decoder.6.bias"]
  with pytest.raises(CheckpointError, match=r"decoder\.6\.bias is missing") as e:
    vqvae_params_from_npz(arrays)
  assert "\n" not in str(e.value)


def test_unexpected_key_is_named(arrays):
  arrays["decoder.14.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  with pytest.raises(CheckpointError, match=r"unexpected VQ-VAE npz key decoder\.14\.weight"):
    vqvae_params_from_npz(arrays)


def test_ema_buffers_are_ignored_but_only_them(arrays):
  assert "_vq_vae._ema_w" in arrays
  vqvae_params_from_npz(arrays)  # loads
  arrays["_vq_vae._other"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError, match=r"_vq_vae\._other"):
    vqvae_params_from_npz(arrays)


def test_misshaped_key_is_named(arrays):
  # A conv-transpose weight stored as (out, in, kH, kW), the conv layout, is a shape error.
  arrays["decoder.6.weight"] = arrays["decoder.6.weight"].transpose(1, 0, 2, 3).copy()
  with pytest.raises(CheckpointError, match=r"decoder\.6\.weight has shape \(64, 128, 4, 4\), "
                                            r"expected \(128, 64, 4, 4\)"):
    vqvae_params_from_npz(arrays)


def test_inverse_is_strict():
  params = init_vqvae_params(0)
  params["decoder"]["extra"] = {"kernel": np.zeros(1, np.float32)}
  with pytest.raises(CheckpointError, match="unexpected VQ-VAE parameter decoder/extra/kernel"):
    vqvae_params_to_npz(params)
  params = init_vqvae_params(0)
  del params["encoder"]["down_2"]["bias"]
  with pytest.raises(CheckpointError, match="encoder/down_2/bias is missing"):
    vqvae_params_to_npz(params)
  params = init_vqvae_params(0)
  params["encoder"]["conv_out"]["kernel"] = np.zeros((1, 1, 128, 256), np.float32)
  with pytest.raises(CheckpointError, match=r"conv_out/kernel has shape \(1, 1, 128, 256\)"):
    vqvae_params_to_npz(params)
  params = init_vqvae_params(0)
  params["decoder"]["codebook"] = params["decoder"]["codebook"] + 1
  with pytest.raises(CheckpointError, match="share one codebook"):
    vqvae_params_to_npz(params)


def test_unreadable_files(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    load_vqvae_npz(tmp_path / "nope.npz")
  (tmp_path / "bad.npz").write_bytes(b"not a zip")
  with pytest.raises(CheckpointError, match="not a readable .npz"):
    load_vqvae_npz(tmp_path / "bad.npz")
  np.save(tmp_path / "single.npy", np.zeros(3))
  with pytest.raises(CheckpointError, match="single array"):
    load_vqvae_npz(tmp_path / "single.npy")


def test_module_shape_errors():
  params = init_vqvae_params(0)
  with pytest.raises(ValueError, match=r"codes must have shape \[batch, 16\]"):
    decode_codes(params["decoder"], np.zeros((2, 15), np.int32))
  with pytest.raises(ValueError, match="crop and resize them to 64x64"):
    encode_masks(params["encoder"], np.zeros((2, 32, 32, 1), np.float32))


def test_cli_converts_the_vqvae_to_orbax_and_back(npz_path, tmp_path):
  """convert_checkpoint.py --vqvae: npz -> Orbax -> npz is bit-identical; no silent overwrite."""
  import os
  import pathlib
  import subprocess
  import sys
  script = pathlib.Path(__file__).resolve().parents[1] / "convert_checkpoint.py"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  run = lambda *a: subprocess.run([sys.executable, str(script), "--vqvae", *a],
                                  capture_output=True, text=True, env=env, timeout=300)
  orbax_dir, back = tmp_path / "vq", tmp_path / "back.npz"
  first = run(f"--src={npz_path}", f"--dst={orbax_dir}")
  assert first.returncode == 0, first.stderr[-1500:]
  assert "parameters" in first.stdout
  assert run(f"--src={orbax_dir}", f"--dst={back}").returncode == 0
  with np.load(npz_path) as a, np.load(back) as b:
    for key in b.files:
      assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
  again = run(f"--src={npz_path}", f"--dst={orbax_dir}")
  assert again.returncode == 1 and "--overwrite" in again.stderr
  assert "Traceback" not in again.stderr
