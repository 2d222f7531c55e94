"""LoRA / QLoRA adapters (models/lora.py): start at the base, merge into it, quantized bases."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_fixtures import PG1, PG2, forward, make_batch, random_params
from paligemma_jax.models import PaliGemma, lora, quantize
from paligemma_jax.models.config import (LORA_DECODER, LORA_VISION, LoraConfig, PaliGemmaConfig,
                                         QuantizationConfig)
from paligemma_jax.models.paligemma import init_adapters, param_shapes

# Every kind of weight: 1, 2 (attention out) and 3 (patch embedding) contracted axes, stacked
# layers and single weights (projector), both towers.
EVERYWHERE = (LORA_DECODER, LORA_VISION, "projector/w", "vision/patch_embed/w")


def _config(model: PaliGemmaConfig, **lora_fields) -> PaliGemmaConfig:
  return model.replace(lora=LoraConfig(**{"rank": 4, "alpha": 8.0, "targets": EVERYWHERE,
                                         **lora_fields}))


def _random_adapters(config: PaliGemmaConfig, seed: int = 3) -> dict:
  """Non-zero adapters (as after training), at a scale that moves the logits by O(1-10)."""
  return lora.split(random_params(config, seed))[1]


def test_adapter_specs():
  assert lora.adapter_specs("BTD,DNH->BTNH", 1) == ("BTD,Dr->BTr", "BTr,rNH->BTNH")
  assert lora.adapter_specs("BTNH,NHD->BTD", 2) == ("BTNH,NHr->BTr", "BTr,rD->BTD")
  assert lora.adapter_specs("BiPjQC,PQCW->BijW", 3) == ("BiPjQC,PQCr->Bijr", "Bijr,rW->BijW")
  assert lora.adapter_specs("BrD,Dq->Brq", 1) == ("BrD,DR->BrR", "BrR,Rq->Brq")  # r is taken


@pytest.mark.parametrize("base", [PG1, PG2], ids=["pg1", "pg2"])
def test_adapters_at_init_leave_the_outputs_of_the_base(base):
  config = _config(base)
  params = random_params(base)
  adapters = init_adapters(config, jax.random.key(1))
  shapes = lora.split(param_shapes(config))[1]
  assert jax.tree.map(lambda x: x.shape, adapters) == jax.tree.map(lambda x: x.shape, shapes)
  q = adapters["params"]["llm"]["layers"]["attn"]["q"]
  assert q["lora_a"].shape == (2, base.text.width, 4) and float(np.abs(q["lora_a"]).max()) > 0
  assert not np.any(np.asarray(q["lora_b"]))  # B = 0: the product is exactly zero
  batch = make_batch(base)
  np.testing.assert_allclose(forward(config, lora.join(params, adapters), batch),
                             forward(base, params, batch), rtol=1e-5, atol=1e-5)


def test_split_join_roundtrip_and_targets():
  config = _config(PG2, targets=(r"llm/layers/attn/(q|v)/w",))
  params = random_params(config)
  base, adapters = lora.split(params)
  assert jax.tree.structure(lora.join(base, adapters)) == jax.tree.structure(params)
  assert jax.tree.structure(base) == jax.tree.structure(random_params(PG2))
  assert sorted(adapters["params"]["llm"]["layers"]["attn"]) == ["q", "v"]
  assert not lora.has_adapters(base) and lora.has_adapters(params)
  with pytest.raises(ValueError, match="match no weight"):
    init_adapters(_config(PG2, targets=("img/.*",)), jax.random.key(0))


def test_merged_params_give_the_logits_of_base_plus_adapters():
  config = _config(PG2)
  params = lora.join(random_params(PG2), _random_adapters(config))
  batch = make_batch(PG2)
  with_adapters = forward(config, params, batch)
  assert np.abs(with_adapters - forward(PG2, random_params(PG2), batch)).max() > 1.0
  merged_config, merged = lora.merge(config, params)
  assert merged_config == PG2 and not lora.has_adapters(merged)
  assert jax.tree.structure(merged) == jax.tree.structure(random_params(PG2))
  # The merged weight is w + (alpha / r) A B (float64 reference), for a stacked 2-axis one.
  node = params["params"]["llm"]["layers"]["attn"]["out"]
  a, b = np.asarray(node["lora_a"], np.float64), np.asarray(node["lora_b"], np.float64)
  want = np.asarray(node["w"], np.float64) + 2.0 * np.einsum("lnhr,lrd->lnhd", a, b)
  np.testing.assert_allclose(merged["params"]["llm"]["layers"]["attn"]["out"]["w"], want,
                             rtol=1e-5, atol=1e-6)
  got = forward(merged_config, merged, batch)
  assert np.abs(got - with_adapters).max() <= 1e-5 * np.abs(with_adapters).max()


def test_qlora_base_is_quantized_and_merges_dequantized():
  config = _config(PG2)
  adapters = _random_adapters(config)
  for kind in ("int8", "int4"):
    quant = QuantizationConfig(kind, group_size=16)
    qconfig = config.replace(quantization=quant)
    params = lora.join(quantize.quantize_params(random_params(PG2), quant), adapters)
    q = params["params"]["llm"]["layers"]["mlp"]["up"]
    assert f"w_{kind}" in q and "w" not in q and q["lora_a"].dtype == np.float32
    batch = make_batch(PG2)
    with_adapters = forward(qconfig, params, batch)
    merged_config, merged = lora.merge(qconfig, params)
    assert merged_config.quantization is None and merged_config.lora is None
    got = forward(merged_config, merged, batch)
    assert np.abs(got - with_adapters).max() <= 1e-5 * np.abs(with_adapters).max(), kind


def test_lora_dropout_acts_only_with_a_dropout_rng():
  config = _config(PG2, dropout=0.5, targets=(LORA_DECODER,))
  params = lora.join(random_params(PG2), _random_adapters(config))
  batch = make_batch(PG2)
  args = (batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  model = PaliGemma(config)
  plain = np.asarray(jax.jit(model.apply)(params, *args))
  no_dropout = config.replace(lora=dataclasses.replace(config.lora, dropout=0.0))
  np.testing.assert_allclose(plain, forward(no_dropout, params, batch), rtol=1e-5, atol=1e-5)
  dropped = [np.asarray(jax.jit(lambda p, k: model.apply(p, *args, rngs={"dropout": k}))(
      params, jax.random.key(seed))) for seed in (0, 1)]
  assert np.abs(dropped[0] - plain).max() > 0.1
  assert np.abs(dropped[0] - dropped[1]).max() > 0.1  # each key its own masks


def test_lora_config_checks_and_serialises():
  config = _config(PG2, base="/ckpt/pg2")
  assert PaliGemmaConfig.from_dict(config.to_dict()) == config
  for bad, match in (({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha"),
                     ({"dropout": 1.0}, "dropout"), ({"targets": ("(",)}, "regular expression"),
                     ({"targets": ()}, "empty")):
    with pytest.raises(ValueError, match=match):
      LoraConfig(**bad)


def test_unrolled_layers_apply_the_adapters():
  """The decode path runs per-layer params through a functionally applied block: the adapters
  in those params are applied there as in the scanned forward."""
  from paligemma_jax.models import unstack_layers
  config = _config(PG2)
  params = lora.join(random_params(PG2), _random_adapters(config))
  model = PaliGemma(config)
  batch = make_batch(PG2, batch=1)
  images = batch["images"]
  scanned = nn.apply(lambda m: m.encode_images(images), model)(params)
  unrolled = nn.apply(lambda m: m.encode_images(images, unstack_layers(params, "vision")),
                      model)(params)
  base = nn.apply(lambda m: m.encode_images(images), PaliGemma(PG2))(random_params(PG2))
  np.testing.assert_allclose(unrolled, scanned, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(scanned) - np.asarray(base)).max() > 0.1


def test_bf16_adapters_in_per_layer_params_read_in_place():
  """On CPU, bf16 stacked leaves of per-layer params are `LayerSlice`s of their stacks (read in
  place by the kernels); bf16 adapters there are applied as in the scanned forward."""
  from paligemma_jax.models import unstack_layers
  config = _config(PG2).replace(dtype="bfloat16", param_dtype="bfloat16")
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16),
                        lora.join(random_params(PG2), _random_adapters(_config(PG2))))
  images = make_batch(PG2, batch=1)["images"]
  model = PaliGemma(config)
  scanned = jax.jit(lambda p: nn.apply(lambda m: m.encode_images(images), model)(p))(params)
  unrolled = jax.jit(lambda p: nn.apply(
      lambda m: m.encode_images(images, unstack_layers(p, "vision")), model)(p))(params)
  np.testing.assert_allclose(np.asarray(unrolled, np.float32), np.asarray(scanned, np.float32),
                             rtol=0.05, atol=0.05)
