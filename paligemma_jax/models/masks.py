"""Prefix-LM attention masks (big_vision's `mask_ar` rule) and Gemma 2's sliding window.

Each token carries `mask_ar` in {0, 1}; `c = cumsum(mask_ar)` numbers the blocks. Token i may attend
token j iff `c[j] <= c[i]` and both are valid. A 1 opens a new block, a 0 continues the current one,
so image tokens + bos + prompt + "\\n" (all 0) form one bidirectional block, and each suffix token
(1) is causal and sees the whole prefix. Example, 2 image tokens, [bos, p1, \\n], [s1, eos], 1 pad:

            img0 img1 bos p1 \\n s1 eos pad      mask_ar = 0 0 0 0 0 1 1 1
  prefix      1    1   1  1  1  0  0   0        input_mask = 1 1 1 1 1 1 1 0
  s1          1    1   1  1  1  1  0   0
  eos         1    1   1  1  1  1  1   0
  pad         0    0   0  0  0  0  0   0

HF's `token_type_ids` (0 prefix, 1 suffix) map to `mask_ar = token_type_ids`: every tt==1 token is
causal and the tt==0 tokens form the bidirectional prefix block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def prefix_lm_mask(input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array) -> jax.Array:
  """Returns the [B, S, S] boolean mask (query, key) of the big_vision prefix-LM rule."""
  blocks_BxS = jnp.cumsum(mask_ar_BxS.astype(jnp.int32), axis=1)
  allowed_BxSxS = blocks_BxS[:, None, :] <= blocks_BxS[:, :, None]
  valid = input_mask_BxS.astype(bool)
  return allowed_BxSxS & valid[:, None, :] & valid[:, :, None]


def sliding_window_mask(mask_BxSxS: jax.Array, mask_ar_BxS: jax.Array, window: int) -> jax.Array:
  """Restricts a prefix-LM mask to keys fewer than `window` positions back (index space).

  HF transformers v5 semantics: a key inside the query's own block is never windowed, so the
  bidirectional prefix block stays whole; only suffix tokens lose keys `window` or more back.
  Left padding counts towards the distance, as in HF.
  """
  s = mask_BxSxS.shape[-1]
  idx = jnp.arange(s)
  near_SxS = (idx[:, None] - idx[None, :]) < window
  blocks_BxS = jnp.cumsum(mask_ar_BxS.astype(jnp.int32), axis=1)
  same_block_BxSxS = blocks_BxS[:, :, None] == blocks_BxS[:, None, :]
  return mask_BxSxS & (near_SxS[None] | same_block_BxSxS)


def mask_ar_from_token_type_ids(token_type_ids_BxS: jax.Array) -> jax.Array:
  """HF `token_type_ids` (0 prefix, 1 suffix) as big_vision `mask_ar` (1 = causal token)."""
  return token_type_ids_BxS.astype(jnp.int32)


def default_positions(input_mask_BxS: jax.Array, offset: int) -> jax.Array:
  """Position ids `cumsum(input_mask) - 1 + offset`; padding sits at `offset`.

  With cumsum positions a left-padded row gets exactly the positions of the unpadded row, as in
  HF generation (offset 1) and big_vision decoding (offset 0).
  """
  mask = input_mask_BxS.astype(jnp.int32)
  return jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 0) + offset
