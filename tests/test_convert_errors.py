"""Bad input and failed writes: a one-line error naming the cause, the destination untouched and
no partial output (the temporary sibling removed); the CLI prints one line, never a traceback."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import convert_fixtures as CF
import hf_oracle as O
from paligemma_jax import checkpoints
from paligemma_jax.conversion import (CheckpointError, ConversionError, DestinationExistsError,
                                      convert, npz_io, safetensors_io)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q0 = "language_model.model.layers.0.self_attn.q_proj.weight"


def run(src, dst, **kwargs):
  return convert(src, dst, progress=False, log=lambda _: None, **kwargs)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  return CF.hf_folder(str(tmp_path_factory.mktemp("src") / "hf"), O.PG1)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
  return CF.hf_folder(str(tmp_path_factory.mktemp("src") / "hf"), O.PG1, shard="40KB")


def snapshot(folder):
  """Every path under `folder` with its bytes: to prove nothing was added, left or changed."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = open(path, "rb").read() if name in files else None
  return out


def assert_fails_cleanly(src, out_dir, dst_name, needle, error=CheckpointError, **kwargs):
  """The conversion raises a one-line error containing `needle`; `out_dir` is unchanged."""
  os.makedirs(out_dir, exist_ok=True)
  before = snapshot(out_dir)
  with pytest.raises(error) as info:
    run(src, os.path.join(out_dir, dst_name), **kwargs)
  message = str(info.value)
  assert needle in message and "\n" not in message, message
  assert snapshot(out_dir) == before
  return message


def copy_hf(src, dst, edit=None):
  """A copy of an HF folder whose single safetensors file passes through `edit(dict)`."""
  from safetensors.numpy import load_file, save_file
  os.makedirs(dst)
  for name in os.listdir(src):
    with open(os.path.join(src, name), "rb") as f:
      data = f.read()
    with open(os.path.join(dst, name), "wb") as f:
      f.write(data)
  if edit:
    path = os.path.join(dst, "model.safetensors")
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})
  return dst


@pytest.mark.parametrize("dst_format", ["hf", "npz", "orbax"])
def test_existing_destination_needs_overwrite(hf_dir, tmp_path, dst_format):
  name = "out.npz" if dst_format == "npz" else "out"
  dst = tmp_path / name
  os.makedirs(dst) if dst_format != "npz" else dst.write_bytes(b"keep me")
  if dst_format != "npz":
    (dst / "keep.txt").write_text("keep me")
  message = assert_fails_cleanly(hf_dir, tmp_path, name, "--overwrite", DestinationExistsError,
                                 dst_format=dst_format)
  assert "already exists" in message
  run(hf_dir, dst, dst_format=dst_format, overwrite=True)
  assert sorted(os.listdir(tmp_path)) == [name]  # replaced in place; no siblings left
  assert dst_format == "npz" or not (dst / "keep.txt").exists()


def test_truncated_safetensors(hf_dir, tmp_path):
  bad = copy_hf(hf_dir, tmp_path / "bad")
  path = bad / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-1000])
  assert_fails_cleanly(bad, tmp_path / "out", "orbax", "truncated")


def test_missing_shard_and_index_naming_a_missing_file(sharded_dir, tmp_path):
  bad = copy_hf(sharded_dir, tmp_path / "bad")
  shard = sorted(n for n in os.listdir(bad) if n.endswith(".safetensors"))[1]
  os.remove(bad / shard)
  assert_fails_cleanly(bad, tmp_path / "out", "orbax", f"names shard {shard} which is not in")
  index = json.loads((bad / "model.safetensors.index.json").read_text())
  os.remove(bad / "model.safetensors.index.json")  # shards alone, no index and no single file
  assert_fails_cleanly(bad, tmp_path / "out", "orbax", "no model.safetensors or")
  assert index["weight_map"]


@pytest.mark.parametrize("edit,needle", [
    (lambda t: {**t, "language_model.model.layers.0.self_attn.q_norm.weight": np.zeros(4,
                                                                              np.float32)},
     "q_norm.weight"),
    (lambda t: {**t, Q0: t[Q0][:-1]}, "q_proj.weight has shape (63, 48), expected (64, 48)"),
    (lambda t: {k: v for k, v in t.items() if "layers.1.mlp.up_proj" not in k},
     "layers.1.mlp.up_proj.weight"),
], ids=["unknown", "misshaped", "missing"])
def test_bad_tensors_are_named(hf_dir, tmp_path, edit, needle):
  bad = copy_hf(hf_dir, tmp_path / "bad", edit)
  assert_fails_cleanly(bad, tmp_path / "out", "x.npz", needle)


def test_untied_head_found_mid_conversion_leaves_nothing(hf_dir, tmp_path):
  """The head is compared when the embedding is read, i.e. after writing started."""
  emb = "language_model.model.embed_tokens.weight"
  bad = copy_hf(hf_dir, tmp_path / "bad", lambda t: {**t, "lm_head.weight": t[emb] + 1})
  for name in ("out_hf", "out.npz", "out_orbax"):
    fmt = {"out_hf": "hf", "out.npz": "npz", "out_orbax": "orbax"}[name]
    assert_fails_cleanly(bad, tmp_path / "out", name, "untied", dst_format=fmt)


def test_bad_npz_files(tmp_path):
  good = CF.write_big_vision_npz(str(tmp_path / "good.npz"), CF.BV_PG2, "bfloat16")
  data = open(good, "rb").read()
  (tmp_path / "truncated.npz").write_bytes(data[:len(data) // 2])
  assert_fails_cleanly(str(tmp_path / "truncated.npz"), tmp_path / "out", "o", "not a readable npz")
  arrays = CF.npz_arrays(good)
  key = "params/llm/layers/mlp/linear"
  np.savez(tmp_path / "misshaped.npz", **{**arrays, key: arrays[key][:, :-1]})
  assert_fails_cleanly(str(tmp_path / "misshaped.npz"), tmp_path / "out", "o", key)
  np.savez(tmp_path / "extra.npz", **{**arrays, "params/llm/extra": arrays[key]})
  assert_fails_cleanly(str(tmp_path / "extra.npz"), tmp_path / "out", "o", "params/llm/extra")
  np.savez(tmp_path / "short.npz", **{k: v for k, v in arrays.items() if k != key})
  assert_fails_cleanly(str(tmp_path / "short.npz"), tmp_path / "out", "o", key)


def test_npz_variant_is_required_only_when_ambiguous(tmp_path):
  src = CF.write_big_vision_npz(str(tmp_path / "28b.npz"), CF.BV_PG2_28B)
  assert_fails_cleanly(src, tmp_path / "out", "o", "--variant", ConversionError)
  assert_fails_cleanly(src, tmp_path / "out", "o", "valid variants", ConversionError,
                       variant="paligemma_28b")
  assert_fails_cleanly(src, tmp_path / "out", "o", "vision.width is 32 in the file, 1152",
                       ConversionError, variant="paligemma2_3b_224")
  run(src, tmp_path / "out" / "o", variant=CF.BV_PG2_28B)
  assert checkpoints.read_config(tmp_path / "out" / "o").text.query_pre_attn_scalar == 16.0


@pytest.mark.parametrize("dst_format", ["hf", "npz", "orbax"])
@pytest.mark.parametrize("replacing", [False, True], ids=["new", "overwrite"])
def test_full_disk_removes_partial_output(hf_dir, tmp_path, monkeypatch, dst_format, replacing):
  """ENOSPC after some bytes were written: "disk full", no partial output, an old destination
  (when overwriting) intact."""
  target, name = {"hf": (safetensors_io, "write_bytes"), "npz": (npz_io, "write_bytes"),
                  "orbax": (checkpoints.ParamsWriter, "write")}[dst_format]
  original, calls = getattr(target, name), [0]

  def fill_disk(*args, **kwargs):
    calls[0] += 1
    if calls[0] < 5:
      return original(*args, **kwargs)
    original(*args, **kwargs)  # this write lands, then the disk is full
    raise OSError(errno.ENOSPC, "No space left on device")

  if dst_format == "orbax":  # all tiny leaves go in one batch: fail on it, after it is written
    calls[0] = 4
  monkeypatch.setattr(target, name, fill_disk)
  out_dir = tmp_path / "out_dir"
  dst_name = "out.npz" if dst_format == "npz" else "out"
  if replacing:
    keep = out_dir / dst_name if dst_format == "npz" else out_dir / dst_name / "keep.txt"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("previous")
  assert_fails_cleanly(hf_dir, out_dir, dst_name, "disk full", ConversionError,
                       dst_format=dst_format, overwrite=replacing)
  assert calls[0] >= 5


def cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "convert_checkpoint.py"), *args,
                         "--noprogress"], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)


def test_cli_prints_one_line_and_exit_codes(hf_dir, tmp_path):
  bad = copy_hf(hf_dir, tmp_path / "bad")
  (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:-1000])
  for args, code, needle in [
      (["--src", str(bad), "--dst", str(tmp_path / "o")], 1, "truncated"),
      (["--src", hf_dir, "--dst", hf_dir + "/.."], 1, "--overwrite"),
      (["--src", hf_dir, "--dst", str(tmp_path / "o"), "--dtype", "int8"], 2, "--dtype"),
      (["--src", hf_dir], 2, "--dst"),
  ]:
    result = cli(*args)
    assert result.returncode == code, (args, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("convert_checkpoint: error:") and needle in lines[0], lines
  assert not os.path.exists(tmp_path / "o")


def test_cli_converts_and_summarises(hf_dir, tmp_path):
  result = cli("--src", hf_dir, "--dst", str(tmp_path / "x.npz"))
  assert result.returncode == 0, result.stderr
  assert "converted hf -> npz: 34 tensors (34 float32)" in result.stdout
  assert os.path.isfile(tmp_path / "x.npz") and os.listdir(tmp_path) == ["x.npz"]
