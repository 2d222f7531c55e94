"""Input checks shared by the metrics: each failure is a `ValueError` with one line naming it."""

from __future__ import annotations

from collections.abc import Sequence


def check_pairs(metric: str, predictions: Sequence, references: Sequence,
                **others: Sequence) -> None:
  """Non-empty predictions, and references (plus any per-example lists in `others`) of equal length."""
  if not isinstance(predictions, Sequence) or isinstance(predictions, (str, bytes)):
    raise ValueError(f"{metric}: predictions must be a list, got {type(predictions).__name__}")
  if len(predictions) == 0:
    raise ValueError(f"{metric}: no predictions (empty list)")
  for name, values in {"references": references, **others}.items():
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
      raise ValueError(f"{metric}: {name} must be a list, got {type(values).__name__}")
    if len(values) != len(predictions):
      raise ValueError(f"{metric}: {len(predictions)} predictions but {len(values)} {name}")


def check_answer_lists(metric: str, references: Sequence) -> list[list[str]]:
  """Each example's references as a non-empty list of strings (a bare string is one reference)."""
  out = []
  for i, refs in enumerate(references):
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
      raise ValueError(f"{metric}: example {i} has no references")
    if not all(isinstance(r, str) for r in refs):
      raise ValueError(f"{metric}: example {i} has a reference that is not a string")
    out.append(refs)
  return out


def check_strings(metric: str, name: str, values: Sequence) -> None:
  """Every item of `values` is a string."""
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise ValueError(f"{metric}: {name}[{i}] is {type(value).__name__}, not a string")
