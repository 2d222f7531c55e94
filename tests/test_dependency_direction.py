"""Dependencies point one way (STYLE.md): parse every module's imports and check the rules below.

Imports are read with `ast`, so lazy imports inside functions count too. `from pkg import name`
counts as importing `pkg.name` (name may be a submodule), relative imports are resolved.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = "paligemma_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

# subpackage -> ("only", allowed prefixes) or ("never", forbidden prefixes).
# "<stdlib>" stands for any standard-library module. Every module outside training/ also obeys
# NOT_TRAINING.
RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "models": ("only", ("<stdlib>", "jax", "flax", "numpy", "paligemma_jax.models",
                        "paligemma_jax.native_build")),
    "data": ("never", ("paligemma_jax.models", "jax", "flax")),
    "conversion": ("never", ("paligemma_jax.training",)),
    "inference": ("never", ("paligemma_jax.training",)),
    "evaluation": ("never", ("paligemma_jax.training",)),
}
NOT_TRAINING = ("paligemma_jax.training",)  # only training/ itself may import the trainer


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
  """Absolute dotted names a module's source imports."""
  names = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      names.update(f"{base}.{alias.name}" if alias.name != "*" else base
                   for alias in node.names)
  return names


def _matches(name: str, prefix: str) -> bool:
  if prefix == "<stdlib>":
    return name.split(".")[0] in sys.stdlib_module_names
  return name == prefix or name.startswith(prefix + ".")


def violations(module: str, names: set[str]) -> list[str]:
  """Human-readable rule violations of `module` importing `names`."""
  parts = module.split(".")
  sub = parts[1] if len(parts) > 1 else ""
  found = []
  for name in sorted(names):
    if sub != "training" and any(_matches(name, p) for p in NOT_TRAINING):
      found.append(f"{module} imports {name}: only training/ may import the trainer")
    if sub not in RULES:
      continue
    kind, prefixes = RULES[sub]
    hit = any(_matches(name, p) for p in prefixes)
    if (kind == "only") != hit:
      what = "may only import " if kind == "only" else "must not import "
      found.append(f"{module} imports {name}: {sub}/ {what}{', '.join(prefixes)}")
  return found


def _sources() -> list[pathlib.Path]:
  return sorted(ROOT.rglob("*.py"))


def test_package_modules_found():
  names = {module_name(p) for p in _sources()}
  assert {"paligemma_jax.models", "paligemma_jax.models.gemma"} <= names


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependency_direction(path):
  module = module_name(path)
  names = imported_names(path.read_text(), module, path.name == "__init__.py")
  assert not violations(module, names)


# --- the checker itself must catch what it claims to catch (synthetic sources) -----------------


@pytest.mark.parametrize("source", [
    "import paligemma_jax.models",
    "from paligemma_jax.models import PaliGemma",
    "from paligemma_jax import models",
    "from ..models.gemma import Gemma",
    "def lazy():\n  import paligemma_jax.models.masks",
    "import jax.numpy as jnp",
])
def test_data_importing_models_is_caught(source):
  module = "paligemma_jax.data.processor"
  assert violations(module, imported_names(source, module, is_package=False))


@pytest.mark.parametrize("module, source", [
    ("paligemma_jax.models.gemma", "import tensorflow as tf"),
    ("paligemma_jax.models.gemma", "from paligemma_jax.data import tokenizer"),
    ("paligemma_jax.models.gemma", "from .. import sharding"),
    ("paligemma_jax.models.paligemma", "from ..training import trainer"),
    ("paligemma_jax.evaluation.metrics", "from paligemma_jax.training.state import TrainState"),
    ("paligemma_jax.inference", "import paligemma_jax.training"),
    ("paligemma_jax.conversion.hf", "from paligemma_jax import training"),
    ("paligemma_jax.sharding", "from paligemma_jax.training import loss"),
])
def test_other_violations_are_caught(module, source):
  assert violations(module, imported_names(source, module, is_package=False))


@pytest.mark.parametrize("module, source", [
    ("paligemma_jax.models.gemma", "from __future__ import annotations\nimport dataclasses"),
    ("paligemma_jax.models.gemma", "import flax.linen as nn\nfrom jax import numpy as jnp"),
    ("paligemma_jax.models.gemma", "from .layers import Einsum\nfrom . import masks"),
    ("paligemma_jax.data.processor", "import numpy as np\nfrom .tokenizer import Tokenizer"),
    ("paligemma_jax.training.trainer", "from paligemma_jax.training import loss\n"
                                       "from paligemma_jax.models import PaliGemma"),
    ("paligemma_jax.evaluation.metrics", "from paligemma_jax.inference import sampler"),
])
def test_allowed_imports_pass(module, source):
  assert not violations(module, imported_names(source, module, is_package=False))


def test_relative_imports_resolve():
  names = imported_names("from ..models.gemma import Gemma\nfrom . import x\nfrom .y import z",
                         "paligemma_jax.data.processor", is_package=False)
  assert names == {"paligemma_jax.models.gemma.Gemma", "paligemma_jax.data.x",
                   "paligemma_jax.data.y.z"}
  names = imported_names("from . import x", "paligemma_jax.data", is_package=True)
  assert names == {"paligemma_jax.data.x"}
