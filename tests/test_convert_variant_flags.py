"""convert_checkpoint.py's ways to tell an npz what its shapes cannot, for custom Gemma 2 sizes no
published variant matches: --query_pre_attn_scalar and --variant_json (one-line errors for bad
values), giving the same checkpoint as the Python API's `variant=PaliGemmaConfig(...)`."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import convert_fixtures as CF
import hf_oracle as O
from paligemma_jax import checkpoints
from paligemma_jax.conversion import ConversionError, convert
from paligemma_jax.conversion.npz_variant import npz_variant

REPO = pathlib.Path(__file__).resolve().parents[1]
SCALE = CF.BV_PG2_28B.text.query_pre_attn_scalar  # 16, while head_dim is 8: not inferable


@pytest.fixture(scope="module")
def ambiguous_npz(tmp_path_factory) -> str:
  return CF.write_big_vision_npz(str(tmp_path_factory.mktemp("npz") / "custom.npz"),
                                 CF.BV_PG2_28B)


@pytest.fixture(scope="module")
def api_config(ambiguous_npz, tmp_path_factory):
  """What the Python API writes for the file given its whole config."""
  out = tmp_path_factory.mktemp("api") / "orbax"
  convert(ambiguous_npz, out, variant=CF.BV_PG2_28B, progress=False, log=lambda _: None)
  return checkpoints.read_config(out)


def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "convert_checkpoint.py"), *args,
                         "--noprogress"], capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}, timeout=300)


def one_line_error(run: subprocess.CompletedProcess, code: int) -> str:
  lines = [line for line in run.stderr.splitlines() if line.strip()]
  assert run.returncode == code and len(lines) == 1, run.stderr[-2000:]
  assert lines[0].startswith("convert_checkpoint: error:") and "Traceback" not in run.stderr
  return lines[0]


def test_cli_query_pre_attn_scalar_converts_an_npz_shapes_cannot_tell(ambiguous_npz, api_config,
                                                                      tmp_path):
  message = one_line_error(cli("--src", ambiguous_npz, "--dst", str(tmp_path / "no")), 1)
  assert "--query_pre_attn_scalar" in message and "--variant_json" in message
  run = cli("--src", ambiguous_npz, "--dst", str(tmp_path / "orbax"),
            f"--query_pre_attn_scalar={SCALE:g}", "--verify")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "verify: max |dlogit|" in run.stdout
  config = checkpoints.read_config(tmp_path / "orbax")
  assert config.text.query_pre_attn_scalar == SCALE and config == api_config


def test_cli_variant_json_sets_fields_over_the_shapes(ambiguous_npz, api_config, tmp_path):
  fields = tmp_path / "custom.json"
  fields.write_text(json.dumps({"text": {"query_pre_attn_scalar": SCALE, "sliding_window": 6}}))
  run = cli("--src", ambiguous_npz, "--dst", str(tmp_path / "hf"), "--dst_format=hf",
            f"--variant_json={fields}", "--verify")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "transformers on the HF side" in run.stdout  # transformers loaded the export
  text = json.loads((tmp_path / "hf" / "config.json").read_text())["text_config"]
  assert text["query_pre_attn_scalar"] == SCALE and text["sliding_window"] == 6
  assert text["head_dim"] == CF.BV_PG2_28B.text.head_dim
  # A whole config (PaliGemmaConfig.to_dict()) works too, and gives the API's checkpoint.
  fields.write_text(json.dumps(CF.BV_PG2_28B.to_dict()))
  run = cli("--src", ambiguous_npz, "--dst", str(tmp_path / "orbax"), f"--variant_json={fields}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert checkpoints.read_config(tmp_path / "orbax") == api_config


def test_cli_bad_values_get_one_line_errors(ambiguous_npz, tmp_path):
  dst = str(tmp_path / "o")
  for value in ("0", "-144", "nan", "abc"):
    message = one_line_error(cli("--src", ambiguous_npz, "--dst", dst,
                                 f"--query_pre_attn_scalar={value}"), 2)
    assert "--query_pre_attn_scalar" in message, message
  hf = CF.hf_folder(str(tmp_path / "hf"), O.PG1)
  message = one_line_error(cli("--src", hf, "--dst", dst, "--query_pre_attn_scalar=16"), 1)
  assert "only applies to npz sources" in message
  assert not os.path.exists(dst)


def write(tmp_path, text: str) -> str:
  path = tmp_path / "fields.json"
  path.write_text(text)
  return str(path)


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist; give a JSON file of PaliGemmaConfig fields"),
    ("{oops", "is not JSON (Expecting property name"),
    ("[1, 2]", "the file must be a JSON object of PaliGemmaConfig fields"),
    ('{"text": 3}', "'text' must be a JSON object of GemmaConfig fields"),
    ('{"text": {"widht": 64}}', "unknown field text.widht; valid fields of GemmaConfig: version"),
    ('{"modle": 1}', "unknown field modle; valid fields of PaliGemmaConfig: vision, text"),
    ('{"text": {"width": "64"}}', 'text.width must be an integer, got "64"'),
    ('{"text": {"query_pre_attn_scalar": "big"}}', "must be a number or null"),
    ('{"text": {"head_dim": 7}}', "head_dim must be even"),
])
def test_variant_json_errors(ambiguous_npz, tmp_path, content, needle):
  path = str(tmp_path / "missing.json") if content is None else write(tmp_path, content)
  with pytest.raises(ConversionError) as info:
    npz_variant(ambiguous_npz, variant_json=path)
  assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_fields_must_still_match_the_shapes(ambiguous_npz, tmp_path):
  variant = npz_variant(ambiguous_npz, variant_json=write(tmp_path, '{"text": {"width": 96}}'),
                        query_pre_attn_scalar=SCALE)
  with pytest.raises(ConversionError, match="does not have the shapes of the given config: "
                                            "text.width is 64 in the file, 96 in the config"):
    convert(ambiguous_npz, tmp_path / "o", variant=variant, progress=False, log=lambda _: None)


def test_scale_over_a_named_variant_and_gemma1_refused(ambiguous_npz, tmp_path):
  assert npz_variant(ambiguous_npz, variant="paligemma2_3b_224") == "paligemma2_3b_224"
  named = npz_variant(ambiguous_npz, variant="paligemma2_3b_224", query_pre_attn_scalar=99)
  assert named.text.query_pre_attn_scalar == 99.0 and named.text.width == 2304
  with pytest.raises(ConversionError, match="valid variants"):
    npz_variant(ambiguous_npz, variant="paligemma_28b", query_pre_attn_scalar=16)
  pg1 = CF.write_big_vision_npz(str(tmp_path / "pg1.npz"), CF.BV_PG1)
  with pytest.raises(ConversionError, match="applies to Gemma 2"):
    npz_variant(pg1, query_pre_attn_scalar=16)
