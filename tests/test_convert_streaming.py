"""The converter streams: writers hold about one native leaf (two where one npz array stores two
leaves), readers materialise one leaf per read, and the peak of numpy memory during a whole
conversion stays a small multiple of the largest leaf, far below the model. The Orbax writer and
reader go further, one layer of a stacked leaf at a time (a 28B MLP leaf is 15 GB, a layer 0.3).

Leaves come from `GeneratedSource`, which draws each leaf (each layer of a stacked one) from its
own seed when read, so the model never exists in memory as a whole and whatever is alive was kept
by the code under test.
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref

import jax
import ml_dtypes
import numpy as np
import pytest

import convert_fixtures as CF
import hf_oracle as O
from paligemma_jax import checkpoints
from paligemma_jax.conversion import HFSource, NpzSource, Source, write_hf, write_npz
from paligemma_jax.conversion.orbax_io import BATCH_BYTES, OrbaxSource, write_orbax
from paligemma_jax.conversion.streaming import RandomSource, native_specs, nbytes, stacked
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig

# Many similar-sized leaves (8 layers on both sides, MLPs as wide as the model): the largest leaf
# (512 KiB in f32) is under a tenth of the model (6.6 MiB), and large enough that Python's own
# bookkeeping (~100 KiB of plans and headers) does not blur the measurement.
CONFIG = PaliGemmaConfig(
    vision=SigLIPConfig(width=128, depth=8, mlp_dim=128, num_heads=4, patch_size=14,
                        image_size=28),
    text=GemmaConfig(version=2, width=128, depth=8, mlp_dim=128, num_heads=4, num_kv_heads=2,
                     head_dim=32, vocab_size=256),
    image_token_id=256)


def GeneratedSource(config: PaliGemmaConfig = CONFIG, dtype=np.float32) -> RandomSource:
  return RandomSource(config.replace(param_dtype=np.dtype(dtype).name))


class RecordingSource(Source):
  """Counts the leaves it handed out that are still alive, at every read."""

  def __init__(self, source: Source):
    self.source, self.config = source, source.config
    self.live = self.live_bytes = self.max_live = self.max_live_bytes = 0

  def specs(self):
    return self.source.specs()

  def read(self, key):
    gc.collect()
    array = self.source.read(key)
    base = array  # the memory's owner: views (e.g. a row slice) keep it alive
    while isinstance(base.base, np.ndarray):
      base = base.base
    self.live += 1
    self.live_bytes += array.nbytes
    size = array.nbytes
    weakref.finalize(base, self._freed, size)
    self.max_live = max(self.max_live, self.live)
    self.max_live_bytes = max(self.max_live_bytes, self.live_bytes)
    return array

  def _freed(self, size):
    self.live -= 1
    self.live_bytes -= size


def model_bytes(source):
  return sum(nbytes(s) for s in source.specs().values())


def largest_leaf(source):
  return max(nbytes(s) for s in source.specs().values())


def test_generated_model_is_much_larger_than_a_leaf():
  source = GeneratedSource()
  assert model_bytes(source) > 10 * largest_leaf(source)


@pytest.mark.parametrize("writer,most", [
    (lambda s, p: write_hf(s, str(p / "hf"), max_shard_size=50_000), 1),
    (lambda s, p: write_npz(s, str(p / "x.npz")), 2),  # kv_einsum / gating_einsum: two leaves
    (lambda s, p: write_orbax(s, str(p / "orbax"), batch_bytes=0), 1),
], ids=["hf", "npz", "orbax"])
def test_writers_hold_one_or_two_leaves(tmp_path, writer, most):
  source = RecordingSource(GeneratedSource())
  writer(source, tmp_path)
  assert source.max_live <= most
  assert source.max_live_bytes <= most * largest_leaf(source)


def test_orbax_batches_only_small_leaves(tmp_path):
  """The default batching gathers small leaves up to BATCH_BYTES; a large leaf goes alone."""
  source = RecordingSource(GeneratedSource())
  write_orbax(source, str(tmp_path / "orbax"))
  assert source.max_live_bytes <= BATCH_BYTES + largest_leaf(source)
  reader = OrbaxSource(str(tmp_path / "orbax"), batch_bytes=2 * largest_leaf(source))
  recorded = RecordingSource(reader)
  write_npz(recorded, str(tmp_path / "x.npz"))
  assert len(reader._prefetched) == 0 and recorded.max_live_bytes <= 4 * largest_leaf(source)


def traced_peak(fn) -> int:
  """Peak bytes of Python/numpy allocations while `fn` runs (numpy reports to tracemalloc)."""
  gc.collect()
  tracemalloc.start()
  try:
    tracemalloc.reset_peak()
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_peak_memory_of_whole_conversions_is_about_a_leaf(tmp_path, dtype):
  """Generated -> HF (sharded) -> npz -> HF: the numpy peak of each step stays a small part of
  the model."""
  generated = GeneratedSource(dtype=dtype)
  leaf, model = largest_leaf(generated), model_bytes(generated)
  peaks = {"generated->hf": traced_peak(lambda: write_hf(generated, str(tmp_path / "hf"),
                                                         max_shard_size=3 * leaf))}
  # Sources are opened outside the traced region: opening reads headers only, but tracing the
  # model's shapes (jax.eval_shape) allocates Python objects that tracemalloc would count.
  source = HFSource(str(tmp_path / "hf"))
  peaks["hf->npz"] = traced_peak(lambda: write_npz(source, str(tmp_path / "x.npz")))
  source = NpzSource(str(tmp_path / "x.npz"), CONFIG)
  peaks["npz->hf"] = traced_peak(lambda: write_hf(source, str(tmp_path / "hf2")))
  # Every source reads one layer at a time, so the peak is an unstacked leaf (the patch conv)
  # read and transposed, plus up to ~190 KiB of Python bookkeeping.
  assert peaks["generated->hf"] < 0.3 * model, peaks
  unstacked = max(nbytes(s) for k, s in generated.specs().items() if "/layers/" not in k)
  for step in ("generated->hf", "hf->npz", "npz->hf"):
    assert peaks[step] <= 2 * unstacked + (192 << 10) and peaks[step] < 0.15 * model, peaks


def test_npz_reads_one_part_of_a_shared_array(tmp_path):
  """Reading k from kv_einsum allocates k, not the [L, 2, ...] array."""
  write_npz(GeneratedSource(), str(tmp_path / "x.npz"))
  source = NpzSource(str(tmp_path / "x.npz"), CONFIG)
  key = "params/llm/layers/attn/k/w"
  k_bytes = nbytes(source.specs()[key])
  peak = traced_peak(lambda: source.read(key))
  assert peak < 1.5 * k_bytes
  np.testing.assert_array_equal(source.read(key), GeneratedSource().read(key))
  assert jax.tree.structure(source.specs()) == jax.tree.structure(native_specs(CONFIG))


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "deflated"])
def test_npz_member_reads_match_np_load(tmp_path, save):
  """Whole arrays, one part, one layer, one layer's part; 1-D, void bf16 and Fortran order."""
  from paligemma_jax.conversion.npz_io import NpzReader
  rng = np.random.default_rng(0)
  bf16 = rng.standard_normal((3, 2, 4, 5)).astype(ml_dtypes.bfloat16)
  arrays = {"vec": rng.standard_normal(7).astype(np.float32), "bf16": bf16.view(np.dtype("V2")),
            "fortran": np.asfortranarray(rng.standard_normal((3, 2, 6)).astype(np.float32))}
  save(tmp_path / "x.npz", **arrays)
  members = NpzReader(str(tmp_path / "x.npz")).members
  np.testing.assert_array_equal(members["vec"].read(), arrays["vec"])
  assert members["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
  for name, want in (("bf16", bf16), ("fortran", arrays["fortran"])):
    member = members[name]
    np.testing.assert_array_equal(member.read().view(np.uint16 if name == "bf16" else np.float32),
                                  want.view(np.uint16 if name == "bf16" else np.float32))
    for part in range(2):
      np.testing.assert_array_equal(member.read(part).astype(np.float32),
                                    want[:, part].astype(np.float32))
      np.testing.assert_array_equal(member.read(part, layer=2).astype(np.float32),
                                    want[2, part].astype(np.float32))
    np.testing.assert_array_equal(member.read(layer=1).astype(np.float32),
                                  want[1].astype(np.float32))


# -- Orbax, one layer at a time -----------------------------------------------------------------

# Wide layers (the largest stacked leaf, an MLP matrix, is 16 MiB in f32, a layer 2 MiB: far above
# Python's bookkeeping) and 8 of them, so holding two layers and holding the leaf differ by 4x.
WIDE = PaliGemmaConfig(
    vision=SigLIPConfig(width=256, depth=8, mlp_dim=1024, num_heads=4, patch_size=14,
                        image_size=28),
    text=GemmaConfig(version=2, width=256, depth=8, mlp_dim=2048, num_heads=4, num_kv_heads=2,
                     head_dim=64, vocab_size=256),
    image_token_id=256)
SMALL = 1 << 20  # batch_bytes: stacked leaves above it stream, smaller leaves batch up to it


class OwnerRecordingSource(RecordingSource):
  """Forwards `read` and `read_layer`; counts the bytes of the arrays (and of what they are views
  of, such as a block of layers) still alive, each memory owner once."""

  def __init__(self, source: Source):
    super().__init__(source)
    self._owners: set[int] = set()

  def read(self, key):
    return self._record(self.source.read(key))

  def read_layer(self, key, layer):
    return self._record(self.source.read_layer(key, layer))

  def _record(self, array):
    owner = array
    while isinstance(owner.base, np.ndarray):
      owner = owner.base
    if id(owner) not in self._owners:
      self._owners.add(id(owner))
      self.live_bytes += owner.nbytes
      self.max_live_bytes = max(self.max_live_bytes, self.live_bytes)
      weakref.finalize(owner, self._gone, id(owner), owner.nbytes)
    return array

  def _gone(self, owner, size):
    self._owners.discard(owner)
    self.live_bytes -= size


def layer_and_leaf(source) -> tuple[int, int]:
  """Bytes of one layer of the largest stacked leaf, and of that leaf."""
  key = max((k for k in source.specs() if stacked(k)), key=lambda k: nbytes(source.specs()[k]))
  spec = source.specs()[key]
  return nbytes(spec) // spec.shape[0], nbytes(spec)


def small_leaves(source) -> int:
  """What one batch of small leaves may hold: the budget plus one leaf over it."""
  return SMALL + max(nbytes(s) for k, s in source.specs().items()
                     if not stacked(k) or nbytes(s) <= SMALL)


def test_orbax_writer_holds_two_layers_not_a_stacked_leaf(tmp_path):
  """Generated -> Orbax: what the writer keeps of the source's arrays, and the numpy peak, stay
  within two layers (one being written, the next being read) or one batch of small leaves."""
  generated = OwnerRecordingSource(GeneratedSource(WIDE))
  layer, leaf = layer_and_leaf(generated)
  peak = traced_peak(lambda: write_orbax(generated, str(tmp_path / "orbax"), batch_bytes=SMALL))
  bound = max(2 * layer, small_leaves(generated)) + (256 << 10)
  assert generated.max_live_bytes <= bound and peak <= bound, (peak, generated.max_live_bytes)
  assert peak < leaf / 2
  store = checkpoints.open_leaf(tmp_path / "orbax", "params/llm/layers/mlp/up/w")
  assert store.chunk_layout.read_chunk.shape[0] == 1  # what lets a reader take one layer


def test_orbax_reader_holds_one_layer_not_a_stacked_leaf(tmp_path):
  """Orbax -> HF: the reader decodes one layer per `read_layer` (tensorstore reads into our numpy
  array, so tracemalloc sees it), and keeps nothing of a leaf between layers."""
  write_orbax(GeneratedSource(WIDE), str(tmp_path / "orbax"), batch_bytes=SMALL)
  reader = OrbaxSource(str(tmp_path / "orbax"), batch_bytes=SMALL)
  layer, leaf = layer_and_leaf(reader)
  key = "params/llm/layers/mlp/up/w"

  def read_each_layer():
    for i in range(WIDE.text.depth):
      reader.read_layer(key, i)  # and dropped

  one = traced_peak(read_each_layer)
  assert one <= layer + (64 << 10), one
  recorded = OwnerRecordingSource(reader)
  peak = traced_peak(lambda: write_hf(recorded, str(tmp_path / "hf")))
  # The reader hands out one layer at a time; the HF writer adds its transposed copy.
  assert recorded.max_live_bytes <= max(layer, small_leaves(reader)) + 64, recorded.max_live_bytes
  assert peak <= 2 * layer + small_leaves(reader) and peak < leaf / 2, peak


def test_orbax_reader_reads_checkpoints_chunked_across_layers(tmp_path):
  """A leaf stored in Orbax's default chunks (every layer in one chunk, as every checkpoint
  written before per-layer streaming) is read whole once and handed out layer by layer."""
  generated = GeneratedSource()
  write_orbax(generated, str(tmp_path / "orbax"))  # CONFIG's leaves are all below BATCH_BYTES
  key = "params/llm/layers/mlp/up/w"
  depth = CONFIG.text.depth
  assert checkpoints.open_leaf(tmp_path / "orbax", key).chunk_layout.read_chunk.shape[0] == depth
  reader = OrbaxSource(str(tmp_path / "orbax"), batch_bytes=0)
  for i in range(depth):
    np.testing.assert_array_equal(reader.read_layer(key, i), generated.read_layer(key, i))
  assert not reader._blocks  # dropped after its last layer


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_streamed_orbax_checkpoint_is_bit_identical(tmp_path, dtype):
  """Every stacked leaf streamed: each leaf read by `load_params` (plain Orbax restore), by
  `read` and layer by layer equals the generated one, in dtype and bits."""
  generated = GeneratedSource(dtype=dtype)
  write_orbax(generated, str(tmp_path / "orbax"), batch_bytes=0)
  _, loaded = checkpoints.load_params(tmp_path / "orbax")
  loaded = {"/".join(k.key for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(loaded)}
  reader = OrbaxSource(str(tmp_path / "orbax"))
  for key, spec in generated.specs().items():
    want = generated.read(key)
    assert loaded[key].dtype == want.dtype == spec.dtype, key
    np.testing.assert_array_equal(loaded[key], want, err_msg=key)
    if stacked(key):
      for i in range(spec.shape[0]):
        np.testing.assert_array_equal(reader.read_layer(key, i), want[i], err_msg=key)
    else:
      np.testing.assert_array_equal(reader.read(key), want, err_msg=key)


def test_streamed_hf_and_npz_round_trips_are_bit_identical(tmp_path):
  """Real HF and big_vision files through streamed Orbax checkpoints and back: same bytes."""
  hf = CF.hf_folder(str(tmp_path / "hf"), O.PG2, dtype="bfloat16")
  write_orbax(HFSource(hf), str(tmp_path / "orbax"), batch_bytes=0)
  write_hf(OrbaxSource(str(tmp_path / "orbax")), str(tmp_path / "hf2"))
  assert CF.hf_tensor_bytes(str(tmp_path / "hf2")) == CF.hf_tensor_bytes(hf)
  npz = CF.write_big_vision_npz(str(tmp_path / "bv.npz"), CF.BV_PG2, dtype="bfloat16")
  write_orbax(NpzSource(npz, CF.BV_PG2), str(tmp_path / "orbax_bv"), batch_bytes=0)
  write_npz(OrbaxSource(str(tmp_path / "orbax_bv")), str(tmp_path / "bv2.npz"))
  a, b = CF.npz_arrays(npz), CF.npz_arrays(str(tmp_path / "bv2.npz"))
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key
