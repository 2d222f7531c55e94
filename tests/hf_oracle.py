"""Tiny random HF `PaliGemmaForConditionalGeneration` models: the parity oracle.

HF's default init (std 0.02) gives near-constant logits, against which any implementation "agrees";
`randomize_` redraws every weight at fan-in scale so logits are O(1) and a parity test can fail.
"""

from __future__ import annotations

import dataclasses

import numpy as np

VOCAB = 320
IMAGE_TOKEN = 300  # inside the vocab, as 257152 is inside HF's 257216 rows


@dataclasses.dataclass(frozen=True)
class TinySpec:
  gemma_version: int = 1
  num_heads: int = 4
  num_kv_heads: int = 1
  head_dim: int = 16
  width: int = 48
  query_pre_attn_scalar: int | None = None
  attn_softcap: float | None = None
  final_softcap: float | None = None
  sliding_window: int | None = None
  image_size: int = 28
  vocab: int = VOCAB
  image_token: int = IMAGE_TOKEN


PG1 = TinySpec()
PG2 = TinySpec(gemma_version=2, num_kv_heads=2, attn_softcap=5.0, final_softcap=3.0,
               sliding_window=4096)
PG2_WINDOW = dataclasses.replace(PG2, sliding_window=5)
PG2_28B_HEADS = dataclasses.replace(PG2, head_dim=128, query_pre_attn_scalar=144, num_heads=4,
                                    num_kv_heads=2)


def hf_config(spec: TinySpec):
  import transformers as tr
  vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, patch_size=14,
                image_size=spec.image_size, vision_use_head=False,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  text = dict(hidden_size=spec.width, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
              head_dim=spec.head_dim, vocab_size=spec.vocab, rms_norm_eps=1e-6,
              hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512)
  if spec.gemma_version == 1:
    text = tr.GemmaConfig(**text)
  else:
    text = tr.Gemma2Config(
        **text, query_pre_attn_scalar=spec.query_pre_attn_scalar or spec.head_dim,
        attn_logit_softcapping=spec.attn_softcap, final_logit_softcapping=spec.final_softcap,
        sliding_window=spec.sliding_window)
  return tr.PaliGemmaConfig(vision_config=vision, text_config=text.to_dict(),
                            image_token_index=spec.image_token, vocab_size=spec.vocab,
                            projection_dim=spec.width)


def randomize_(model, seed: int = 0) -> None:
  """Redraws every parameter: matrices at 1/sqrt(fan_in), vectors around their init."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      if p.ndim >= 2:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
      elif name.endswith(("layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight")):
        p.copy_(1.0 + 0.1 * noise)  # SigLIP LayerNorm scales multiply directly
      else:
        p.copy_(0.1 * noise)  # biases and Gemma's (1 + w) norm offsets


def build_model(spec: TinySpec, seed: int = 0):
  import torch
  import transformers as tr
  torch.manual_seed(seed)
  model = tr.PaliGemmaForConditionalGeneration(hf_config(spec)).eval()
  randomize_(model, seed)
  return model


def forward(model, tokens, pixels_NCHW, attention_mask, token_type_ids, position_ids=None):
  """HF logits (float32 numpy) for a batch; pixels are [B*images, 3, R, R]."""
  import torch
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                pixel_values=torch.as_tensor(np.asarray(pixels_NCHW)).to(model.dtype),
                attention_mask=torch.as_tensor(np.asarray(attention_mask), dtype=torch.long),
                token_type_ids=torch.as_tensor(np.asarray(token_type_ids), dtype=torch.long),
                position_ids=None if position_ids is None else torch.as_tensor(
                    np.asarray(position_ids), dtype=torch.long),
                use_cache=False)
  return out.logits.float().numpy()


def saved_models(tmp_path_factory):
  """A getter spec -> (HF model, folder it was saved to), building each spec once."""
  cache = {}

  def get(spec: TinySpec):
    if spec not in cache:
      model = build_model(spec)
      folder = tmp_path_factory.mktemp("hf")
      model.save_pretrained(folder)
      cache[spec] = (model, str(folder))
    return cache[spec]

  return get
