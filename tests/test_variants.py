"""Published variants: parameter counts against numerics.md §9 and against HF transformers."""

from __future__ import annotations

import pytest

from paligemma_jax.models import VARIANTS, get_variant, param_count
from paligemma_jax.models.variants import HF_VOCAB

# numerics.md §9: big_vision layout, 257,152-row embedding counted once, projector included.
PUBLISHED_PARAMS = {
    "paligemma_3b_224": 2_923_335_408,
    "paligemma_3b_448": 2_924_220_144,
    "paligemma_3b_896": 2_927_759_088,
    "paligemma2_3b_224": 3_032_094_960,
    "paligemma2_3b_448": 3_032_979_696,
    "paligemma2_3b_896": 3_036_518_640,
    "paligemma2_10b_224": 9_662_409_456,
    "paligemma2_10b_448": 9_663_294_192,
    "paligemma2_10b_896": 9_666_833_136,
    "paligemma2_28b_224": 27_650_192_112,
    "paligemma2_28b_448": 27_651_076_848,
    "paligemma2_28b_896": 27_654_615_792,
}


def test_variant_names_are_the_published_twelve():
  assert set(VARIANTS) == set(PUBLISHED_PARAMS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_param_count_matches_published(name):
  assert param_count(VARIANTS[name]) == PUBLISHED_PARAMS[name]


def test_hf_vocab_adds_64_rows():
  cfg = get_variant("paligemma2_10b_224", **{"text.vocab_size": HF_VOCAB})
  assert param_count(cfg) == PUBLISHED_PARAMS["paligemma2_10b_224"] + 64 * cfg.text.width


def _hf_param_count(cfg) -> int:
  """Unique parameters of HF's PaliGemmaForConditionalGeneration for `cfg`, built on "meta"."""
  torch = pytest.importorskip("torch")
  tr = pytest.importorskip("transformers")
  t, v = cfg.text, cfg.vision
  common = dict(hidden_size=t.width, intermediate_size=t.mlp_dim, num_hidden_layers=t.depth,
                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
                head_dim=t.head_dim, vocab_size=t.vocab_size, tie_word_embeddings=True)
  if t.version == 1:
    text = tr.GemmaConfig(**common)
  else:
    text = tr.Gemma2Config(**common,
                           query_pre_attn_scalar=int(t.query_pre_attn_scalar or t.head_dim))
  vision = tr.SiglipVisionConfig(
      hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
      num_attention_heads=v.num_heads, patch_size=v.patch_size, image_size=v.image_size,
      vision_use_head=False)
  config = tr.PaliGemmaConfig(vision_config=vision, text_config=text, vocab_size=t.vocab_size,
                              projection_dim=t.width, hidden_size=t.width,
                              tie_word_embeddings=True)
  with torch.device("meta"):
    model = tr.PaliGemmaForConditionalGeneration(config)
  unique = {id(p): p.numel() for p in model.parameters()}
  return sum(unique.values())


@pytest.mark.parametrize("name", ["paligemma_3b_224", "paligemma2_3b_448", "paligemma2_28b_896"])
def test_param_count_matches_hf(name):
  cfg = get_variant(name, **{"text.vocab_size": HF_VOCAB})
  # The published So400m numbers, not just whatever the variant says.
  assert (cfg.vision.width, cfg.vision.mlp_dim, cfg.vision.depth, cfg.vision.num_heads) == (
      1152, 4304, 27, 16)
  assert param_count(cfg) == _hf_param_count(cfg)


def test_get_variant_error_lists_valid_names():
  with pytest.raises(ValueError) as info:
    get_variant("paligemma2_3b_512")
  message = str(info.value)
  assert "paligemma2_3b_512" in message and "\n" not in message
  assert all(name in message for name in VARIANTS)


def test_get_variant_overrides():
  cfg = get_variant("paligemma2_3b_224", dtype="bfloat16", **{"text.sliding_window": 4096})
  assert (cfg.dtype, cfg.text.sliding_window) == ("bfloat16", 4096)
  assert VARIANTS["paligemma2_3b_224"].dtype == "float32"  # the registry is not mutated


def test_attention_scales():
  assert get_variant("paligemma2_28b_224").text.attn_scale == pytest.approx(1 / 12)
  assert get_variant("paligemma2_28b_224").text.head_dim == 128
  for name in ("paligemma_3b_224", "paligemma2_3b_224", "paligemma2_10b_896"):
    assert get_variant(name).text.attn_scale == pytest.approx(1 / 16)


def test_gemma_versions_and_softcaps():
  for name, cfg in VARIANTS.items():
    pg2 = name.startswith("paligemma2")
    assert cfg.text.version == (2 if pg2 else 1), name
    assert cfg.text.attn_logit_softcap == (50.0 if pg2 else None), name
    assert cfg.text.final_logit_softcap == (30.0 if pg2 else None), name
    assert cfg.vision.image_size == int(name.rsplit("_", 1)[1]), name
