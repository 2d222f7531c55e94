"""What the accelerator image can import: it has jax, flax, optax, orbax, torch, transformers,
safetensors and sentencepiece, but not tensorflow, tensorflow-datasets, grain or ml-collections.
The model, inference, conversion, checkpoints, the train step and the benchmarks must import
there; this runs them in a process where those four packages cannot be found."""

import subprocess
import sys
import textwrap

ABSENT = ("tensorflow", "tensorflow_datasets", "grain", "ml_collections")

IMPORTS = """
import paligemma_jax
from paligemma_jax import checkpoints, sharding
from paligemma_jax.models import cpu_matmul, cpu_path, quantize
from paligemma_jax.inference import Pipeline, beam_generate, decode_tokens, generate, score
from paligemma_jax.conversion import convert, load_hf_checkpoint
from paligemma_jax.training import loss, optimizer, state, step
import paligemma_jax.training as training
assert training.make_train_step and training.TrainState
sys.path.insert(0, "benchmarks")
import inference_speed, train_speed, quantize as quantize_benchmark
"""


def test_accelerator_image_imports_without_tensorflow_grain_or_ml_collections():
  program = textwrap.dedent(f"""
      import sys
      class Absent:
        def find_spec(self, name, path=None, target=None):
          if name.split(".")[0] in {ABSENT!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on purpose)")
      sys.meta_path.insert(0, Absent())
      """) + IMPORTS + "\nprint('imported')\n"
  run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 0 and "imported" in run.stdout, run.stderr[-3000:]
