"""What `convert_checkpoint.py` is told about an npz beyond its shapes.

An npz carries no config. Shapes give the sizes; a published variant (`--variant`) gives the rest.
For a custom size that no variant matches, the command line can give config fields as JSON
(`--variant_json`: an object in the `PaliGemmaConfig.to_dict()` layout, any subset of fields) and
the attention scale alone (`--query_pre_attn_scalar`: Gemma 2 scales queries by its -0.5 power).
They apply, in that order, over the variant if one is named, else over the config the shapes give
with PaliGemma's defaults (softcaps 50 / 30, no sliding window). The result is what
`convert(variant=...)` takes, which still checks it against the shapes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from typing import Any

from paligemma_jax.conversion.convert import detect_format
from paligemma_jax.conversion.npz import shapes_config
from paligemma_jax.conversion.streaming import ConversionError
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig, get_variant

_SECTIONS = {"vision": SigLIPConfig, "text": GemmaConfig}


def npz_variant(src: str, src_format: str | None = None, *, variant: str | None = None,
                variant_json: str | None = None, query_pre_attn_scalar: float | None = None
                ) -> str | PaliGemmaConfig | None:
  """The `variant` for `convert` from the flags; one-line `ConversionError`s for bad values."""
  if query_pre_attn_scalar is not None and not (math.isfinite(query_pre_attn_scalar)
                                                and query_pre_attn_scalar > 0):
    raise ConversionError(f"--query_pre_attn_scalar must be a positive number (queries are "
                          f"scaled by its -0.5 power, e.g. 144), got {query_pre_attn_scalar}")
  if variant_json is None and query_pre_attn_scalar is None:
    return variant
  flag = "--variant_json" if variant_json is not None else "--query_pre_attn_scalar"
  fmt = src_format or detect_format(os.path.abspath(src))
  if fmt != "npz":
    raise ConversionError(f"{flag} only applies to npz sources ({src} is {fmt}; HF and Orbax "
                          "checkpoints carry their config)")
  changes = {} if variant_json is None else read_config_json(variant_json)
  if query_pre_attn_scalar is not None:
    changes["text.query_pre_attn_scalar"] = float(query_pre_attn_scalar)
  try:
    base = shapes_config(src) if variant is None else get_variant(variant)
  except ValueError as e:  # an unknown variant name
    raise ConversionError(str(e)) from None
  try:
    config = base.replace(**changes)
  except ValueError as e:  # fields that make no valid config (an odd head_dim, ...)
    raise ConversionError(f"{flag}: {e}") from None
  if config.text.version != 2 and config.text.query_pre_attn_scalar is not None:
    raise ConversionError(f"{flag}: query_pre_attn_scalar applies to Gemma 2 (PaliGemma 2); "
                          f"{src} is Gemma 1, whose attention scale is head_dim^-0.5")
  return config


def read_config_json(path: str) -> dict[str, Any]:
  """The fields a JSON file sets, as `PaliGemmaConfig.replace` keys ("text.width", "dtype")."""
  where = f"--variant_json {path}"
  if not os.path.isfile(path):
    raise ConversionError(f"{where} does not exist; give a JSON file of PaliGemmaConfig fields "
                          "(the layout of PaliGemmaConfig.to_dict())")
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ConversionError(f"{where} is not JSON ({e.msg} at line {e.lineno} column {e.colno})"
                          ) from None
  except (OSError, UnicodeDecodeError) as e:
    raise ConversionError(f"cannot read {where}: {e}") from None
  _check_fields(data, PaliGemmaConfig, "", where)
  changes = {k: v for k, v in data.items() if k not in _SECTIONS}
  for section, cls in _SECTIONS.items():
    _check_fields(data.get(section, {}), cls, f"{section}.", where)
    changes.update({f"{section}.{k}": v for k, v in data.get(section, {}).items()})
  return changes


def _check_fields(data: Any, cls: type, prefix: str, where: str) -> None:
  """Every key a field of `cls`, every value of the field's type (JSON cannot say 1.0 vs 1)."""
  if not isinstance(data, dict):
    what = f"'{prefix[:-1]}'" if prefix else "the file"
    raise ConversionError(f"{where}: {what} must be a JSON object of {cls.__name__} fields")
  fields = [f.name for f in dataclasses.fields(cls)]
  hints = typing.get_type_hints(cls)
  for key, value in data.items():
    if key not in fields:
      raise ConversionError(f"{where}: unknown field {prefix}{key}; valid fields of "
                            f"{cls.__name__}: {', '.join(fields)}")
    if key not in _SECTIONS or prefix:
      if not _accepts(hints[key], value):
        raise ConversionError(f"{where}: {prefix}{key} must be {_type_name(hints[key])}, got "
                              f"{json.dumps(value)}")


def _accepts(hint: Any, value: Any) -> bool:
  options = typing.get_args(hint) or (hint,)
  for option in options:
    if option is type(None) and value is None:
      return True
    if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
      return True
    if option in (int, str, bool) and isinstance(value, option) and (
        option is bool or not isinstance(value, bool)):
      return True
  return False


def _type_name(hint: Any) -> str:
  names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
           type(None): "null"}
  return " or ".join(names.get(o, str(o)) for o in typing.get_args(hint) or (hint,))
