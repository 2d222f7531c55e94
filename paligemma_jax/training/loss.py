"""big_vision's PaliGemma training loss; the LM head's cross-entropy is chunked over the vocabulary.

Per token (shared/reference/training_and_tasks.md §1), with logits z = h · Eᵀ over the tied
embedding E [V, D], smoothing ls and true token y:

  target q_v = 1 − ls at v = y, ls / (V − 1) elsewhere (V = the logits width, E's row count);
  ℓ = −Σ_v q_v · log_softmax(z)_v.

Σ_v q_v = 1, so ℓ = lse(z) − (1 − ls)·z_y − ls/(V − 1)·(Σ_v z_v − z_y): three running reductions
(a logsumexp, the true-token logit, the plain sum of logits) that a scan over vocabulary chunks can
carry, so the [B, T, V] logits (257,152 wide: 1 GiB per 1,024 tokens in f32) never exist whole.
The gradient is a custom VJP that recomputes each chunk's logits, so the backward pass also holds
one [B, T, chunk] block at a time (autodiff of the scan would store every chunk's logits); it
computes no [V, D] gradient when the table is not differentiated (a frozen embedding). The table
may be the float32 master: each chunk is cast to the hidden states' dtype (bf16 in mixed
precision) as it is read, and its gradient is summed in the table's dtype.

Reduction (big_vision, not HF): mean over each example's supervised tokens, then over the batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


def _chunking(vocab: int, chunk: int) -> tuple[int, int]:
  """(chunk width C, number of chunks n). C = min(chunk, V); n = ceil(V / C)."""
  width = min(chunk, vocab)
  return width, -(-vocab // width)


def _chunk_rows(embedding_VxD: jax.Array, start: jax.Array, width: int, dtype: jnp.dtype
                ) -> jax.Array:
  """Rows [start, start + C) of the table in `dtype` (the hidden states'): a float32 master
  table is cast a chunk at a time, never as a whole [V, D] copy."""
  return jax.lax.dynamic_slice_in_dim(embedding_VxD, start, width, axis=0).astype(dtype)


def _chunk_logits(hidden_BxTxD: jax.Array, embedding_VxD: jax.Array, i: jax.Array, width: int,
                  softcap: float | None) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Chunk i's f32 logits [B, T, C], their column ids [C], validity [C] and tanh (softcap) or None.

  The last chunk is not padded: its slice start is clamped to V − C (dynamic_slice's own rule), and
  the columns it shares with chunk i − 1 are masked. Padding would copy the whole V×D table.
  """
  vocab = embedding_VxD.shape[0]
  start = jnp.minimum(i * width, vocab - width)
  emb_CxD = _chunk_rows(embedding_VxD, start, width, hidden_BxTxD.dtype)
  logits_BxTxC = jnp.einsum("btd,cd->btc", hidden_BxTxD, emb_CxD,
                            preferred_element_type=jnp.float32)
  tanh_BxTxC = None
  if softcap:
    tanh_BxTxC = jnp.tanh(logits_BxTxC / softcap)
    logits_BxTxC = softcap * tanh_BxTxC
  cols_C = start + jnp.arange(width)
  valid_C = cols_C >= i * width  # False only on the clamped last chunk's overlap.
  return logits_BxTxC, cols_C, valid_C, tanh_BxTxC


def _forward(hidden_BxTxD: jax.Array, embedding_VxD: jax.Array, targets_BxT: jax.Array,
             label_smoothing: float, chunk: int, softcap: float | None
             ) -> tuple[jax.Array, jax.Array]:
  """(token losses [B, T], logsumexp [B, T]), both f32."""
  vocab = embedding_VxD.shape[0]
  width, n = _chunking(vocab, chunk)
  shape_BxT = targets_BxT.shape

  def body(carry, i):
    max_BxT, sumexp_BxT, true_BxT, total_BxT = carry
    logits_BxTxC, cols_C, valid_C, _ = _chunk_logits(hidden_BxTxD, embedding_VxD, i, width,
                                                     softcap)
    masked_BxTxC = jnp.where(valid_C, logits_BxTxC, -jnp.inf)
    new_max_BxT = jnp.maximum(max_BxT, masked_BxTxC.max(-1))
    # Online logsumexp: rescale the running sum to the new maximum. Chunk 0 always has a valid
    # column, so the maximum is finite from the first step on.
    sumexp_BxT = (sumexp_BxT * jnp.exp(max_BxT - new_max_BxT)
                  + jnp.exp(masked_BxTxC - new_max_BxT[..., None]).sum(-1))
    is_true_BxTxC = (cols_C == targets_BxT[..., None]) & valid_C
    true_BxT = true_BxT + jnp.where(is_true_BxTxC, logits_BxTxC, 0.0).sum(-1)
    total_BxT = total_BxT + jnp.where(valid_C, logits_BxTxC, 0.0).sum(-1)
    return (new_max_BxT, sumexp_BxT, true_BxT, total_BxT), None

  zeros = jnp.zeros(shape_BxT, jnp.float32)
  init = (jnp.full(shape_BxT, -jnp.inf, jnp.float32), zeros, zeros, zeros)
  (max_BxT, sumexp_BxT, true_BxT, total_BxT), _ = jax.lax.scan(body, init, jnp.arange(n))
  lse_BxT = max_BxT + jnp.log(sumexp_BxT)
  off = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  loss_BxT = lse_BxT - (1.0 - label_smoothing) * true_BxT - off * (total_BxT - true_BxT)
  return loss_BxT, lse_BxT


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _token_losses(hidden_BxTxD: jax.Array, embedding_VxD: jax.Array, targets_BxT: jax.Array,
                  label_smoothing: float, chunk: int, softcap: float | None) -> jax.Array:
  return _forward(hidden_BxTxD, embedding_VxD, targets_BxT, label_smoothing, chunk, softcap)[0]


def _token_losses_fwd(hidden, embedding, targets, label_smoothing, chunk, softcap):
  """`symbolic_zeros`: each primal comes with `perturbed`, so the backward knows whether the
  embedding is differentiated at all (a frozen table needs no [V, D] gradient)."""
  hidden_BxTxD, embedding_VxD, targets_BxT = hidden.value, embedding.value, targets.value
  loss_BxT, lse_BxT = _forward(hidden_BxTxD, embedding_VxD, targets_BxT, label_smoothing, chunk,
                               softcap)
  return loss_BxT, (hidden_BxTxD, embedding_VxD, targets_BxT, lse_BxT, embedding.perturbed)


def _token_losses_bwd(label_smoothing, chunk, softcap, residuals, g_BxT):
  """∂ℓ/∂z_v = softmax(z)_v − q_v, recomputed chunk by chunk; chained through the softcap's tanh."""
  hidden_BxTxD, embedding_VxD, targets_BxT, lse_BxT, embedding_grad = residuals
  vocab = embedding_VxD.shape[0]
  width, n = _chunking(vocab, chunk)
  off = label_smoothing / (vocab - 1) if vocab > 1 else 0.0
  g_BxT = g_BxT.astype(jnp.float32)

  def body(carry, i):
    grad_hidden_BxTxD, grad_emb_VxD = carry
    logits_BxTxC, cols_C, valid_C, tanh_BxTxC = _chunk_logits(hidden_BxTxD, embedding_VxD, i,
                                                              width, softcap)
    probs_BxTxC = jnp.exp(logits_BxTxC - lse_BxT[..., None])
    is_true_BxTxC = cols_C == targets_BxT[..., None]
    target_BxTxC = jnp.where(is_true_BxTxC, 1.0 - label_smoothing, off)
    dlogits_BxTxC = jnp.where(valid_C, g_BxT[..., None] * (probs_BxTxC - target_BxTxC), 0.0)
    if softcap:
      dlogits_BxTxC = dlogits_BxTxC * (1.0 - tanh_BxTxC * tanh_BxTxC)
    start = jnp.minimum(i * width, vocab - width)
    emb_CxD = _chunk_rows(embedding_VxD, start, width, hidden_BxTxD.dtype)
    # The matmuls take the hidden states' dtype (bf16 in mixed precision), accumulate in f32.
    dlogits_BxTxC = dlogits_BxTxC.astype(emb_CxD.dtype)
    grad_hidden_BxTxD = grad_hidden_BxTxD + jnp.einsum(
        "btc,cd->btd", dlogits_BxTxC, emb_CxD, preferred_element_type=jnp.float32)
    if grad_emb_VxD is None:
      return (grad_hidden_BxTxD, None), None
    grad_emb_CxD = jnp.einsum("btc,btd->cd", dlogits_BxTxC,
                              hidden_BxTxD.astype(dlogits_BxTxC.dtype),
                              preferred_element_type=jnp.float32)
    # Written in place into the [V, D] gradient (no stacked per-chunk copy). Added, not set: the
    # clamped last chunk overlaps rows already written, and its masked overlap adds exactly 0.
    rows_CxD = jax.lax.dynamic_slice_in_dim(grad_emb_VxD, start, width, axis=0)
    grad_emb_VxD = jax.lax.dynamic_update_slice_in_dim(
        grad_emb_VxD, rows_CxD + grad_emb_CxD.astype(grad_emb_VxD.dtype), start, axis=0)
    return (grad_hidden_BxTxD, grad_emb_VxD), None

  init = (jnp.zeros(hidden_BxTxD.shape, jnp.float32),
          jnp.zeros_like(embedding_VxD) if embedding_grad else None)
  (grad_hidden_BxTxD, grad_emb_VxD), _ = jax.lax.scan(body, init, jnp.arange(n))
  return (grad_hidden_BxTxD.astype(hidden_BxTxD.dtype), grad_emb_VxD, None)


_token_losses.defvjp(_token_losses_fwd, _token_losses_bwd, symbolic_zeros=True)


def token_losses(hidden_BxTxD: jax.Array, embedding_VxD: jax.Array, targets_BxT: jax.Array, *,
                 label_smoothing: float = 0.0, chunk: int = 8192,
                 softcap: float | None = None) -> jax.Array:
  """Per-token cross-entropy f32 [B, T] of the tied LM head's logits, computed over vocab chunks.

  Args:
    hidden_BxTxD: final-norm hidden states of the text positions (any float dtype).
    embedding_VxD: the tied embedding table; V = its row count is the logits width used for
      label smoothing (257,152 for big_vision checkpoints, 257,216 for HF ones).
    targets_BxT: int token ids in [0, V). An id ≥ V contributes no true-token logit.
    label_smoothing: ls ∈ [0, 1): 1 − ls on the true token, ls / (V − 1) on each other token.
    chunk: vocabulary columns per step; memory is O(B·T·chunk) forward and backward.
    softcap: final-logit softcap c (z ← c·tanh(z / c)) if given. big_vision's training loss does
      not apply it and PaliGemma 2 transfers set it to 0 (numerics.md §12); it is here for parity.

  Differentiable in hidden and embedding (a custom VJP recomputes each chunk); targets get none.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  if chunk < 1:
    raise ValueError(f"chunk must be a positive number of vocabulary columns, got {chunk}")
  if (hidden_BxTxD.shape[-1] != embedding_VxD.shape[-1]
      or hidden_BxTxD.shape[:2] != targets_BxT.shape):
    raise ValueError(f"shapes do not fit: hidden {hidden_BxTxD.shape} (B, T, D), embedding "
                     f"{embedding_VxD.shape} (V, D), targets {targets_BxT.shape} (B, T)")
  return _token_losses(hidden_BxTxD, embedding_VxD, targets_BxT, float(label_smoothing),
                       int(chunk), float(softcap) if softcap else None)


def bv_loss(token_loss_BxT: jax.Array, mask_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """big_vision's reduction: (scalar loss, per-example losses [B]).

  loss_b = Σ_t m_bt·ℓ_bt / max(Σ_t m_bt, 1), loss = mean_b loss_b: every example weighs the same
  whatever its suffix length, and an example with no supervised token contributes 0.
  """
  mask_BxT = mask_BxT.astype(jnp.float32)
  per_example_B = ((token_loss_BxT * mask_BxT).sum(-1)
                   / jnp.maximum(mask_BxT.sum(-1), 1.0))
  return per_example_B.mean(), per_example_B


def hf_loss(token_loss_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """HF transformers' reduction, for parity only: the mean over the batch's supervised tokens."""
  mask_BxT = mask_BxT.astype(jnp.float32)
  return (token_loss_BxT * mask_BxT).sum() / jnp.maximum(mask_BxT.sum(), 1.0)


class ShiftedText(NamedTuple):
  """Model inputs and loss targets of a batch, all [B, S − 1]."""
  inputs: jax.Array     # text[:, :-1]: what the model reads.
  mask_ar: jax.Array    # mask_ar[:, :-1]: the prefix-LM mask of the inputs.
  targets: jax.Array    # text[:, 1:]: position t predicts token t + 1.
  mask_loss: jax.Array  # mask_loss[:, 1:]: suffix tokens including eos; no prefix, bos, "\n", pads.


def shift_for_loss(tokens_BxS: jax.Array, mask_ar_BxS: jax.Array,
                   mask_loss_BxS: jax.Array) -> ShiftedText:
  """big_vision's next-token shift: read tokens[:, :-1], predict tokens[:, 1:].

  The loss mask is taken on the target side (mask_loss[:, 1:]), so the last prefix token (the
  "\n" separator) is the input that predicts the first suffix token.
  """
  return ShiftedText(tokens_BxS[:, :-1], mask_ar_BxS[:, :-1], tokens_BxS[:, 1:],
                     mask_loss_BxS[:, 1:])
