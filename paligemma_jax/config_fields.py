"""The one way a config section (a dict, e.g. a ConfigDict's `to_dict()`) becomes a typed frozen
dataclass, shared by every config boundary (inference, training, evaluation, the input pipeline).

`build(cls, values, where)` fails with one line that names the key: an unknown key (with the valid
ones), a missing required value, or a value of the wrong type. Pure Python: data/ may use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


def build(cls: type, values: Any, where: str, given: Mapping[str, Any] | None = None) -> Any:
  """`cls(**values)` for a config section `where` (e.g. "config.infer"), with one-line errors.

  Recurses into dataclass-typed fields; `given` supplies fields already built (they may not also
  appear in `values`). Errors raised by `cls` itself keep their text, prefixed with `where`
  unless they already name a config key.
  """
  if isinstance(values, cls):
    return values
  if not isinstance(values, Mapping):
    raise ValueError(f"{where} must be a section (a dict), got {values!r}")
  given = dict(given or {})
  fields = dataclasses.fields(cls)
  names = [f.name for f in fields]
  for key in values:
    if key not in names or key in given:
      raise ValueError(f"unknown config key {where}.{key}; valid keys in {where}: "
                       f"{', '.join(names)}")
  hints = typing.get_type_hints(cls)
  kwargs = dict(given)
  for f in fields:
    if f.name in given:
      continue
    if f.name not in values:
      if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        raise ValueError(f"{where}.{f.name} is missing; add it to the config")
      continue
    kwargs[f.name] = coerce(values[f.name], hints[f.name], f"{where}.{f.name}")
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    named = message.startswith(("config.", where))
    raise ValueError(message if named else f"{where}: {message}") from None


def coerce(value: Any, hint: Any, path: str) -> Any:
  """`value` checked against `hint`: scalars, unions, dataclasses, tuples and mappings."""
  if dataclasses.is_dataclass(hint):
    return build(hint, value, path)
  origin = typing.get_origin(hint)
  if isinstance(hint, types.UnionType) or origin is typing.Union:
    errors = []
    for option in typing.get_args(hint):
      if option is type(None) and value is not None and errors:
        continue  # "must be None" would hide why the value is not the other option
      try:
        return coerce(value, option, path)
      except ValueError as e:
        errors.append(e)
    raise errors[-1]
  if origin in (tuple, Sequence, list) or hint in (tuple, list):
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"{path} must be a list, got {value!r}")
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if args and len(args) == len(value):
      return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)
  if origin in (dict, Mapping) or hint in (dict, Mapping):
    if not isinstance(value, Mapping):
      raise ValueError(f"{path} must be a section (a dict), got {value!r}")
    return dict(value)
  if hint is Any:
    return tuple(value) if isinstance(value, list) else value
  return check_scalar(value, hint, path)


def check_scalar(value: Any, hint: Any, path: str) -> Any:
  if hint is type(None) and value is None:
    return value
  if hint is bool and isinstance(value, bool):
    return value
  if hint is int and isinstance(value, int) and not isinstance(value, bool):
    return value
  if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  if hint is str and isinstance(value, str):
    return value
  name = "None" if hint is type(None) else getattr(hint, "__name__", str(hint))
  raise ValueError(f"{path} must be {name}, got {value!r}")
