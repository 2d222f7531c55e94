"""Input checks shared by the metrics: each failure is a `ValueError` with one line naming it."""

from __future__ import annotations

from collections.abc import Sequence


def _is_list_like(values: object) -> bool:
  """A list, tuple or 1-D array; a string is not."""
  return (not isinstance(values, (str, bytes)) and hasattr(values, "__len__")
          and hasattr(values, "__iter__"))


def check_pairs(metric: str, predictions: Sequence, references: Sequence,
                **others: Sequence | None) -> None:
  """Non-empty predictions, and references (plus any per-example lists in `others` that are not
  None) of the same length."""
  if not _is_list_like(predictions):
    raise ValueError(f"{metric}: predictions must be a list, got {type(predictions).__name__}")
  if len(predictions) == 0:
    raise ValueError(f"{metric}: no predictions (empty list)")
  for name, values in {"references": references, **others}.items():
    if values is None and name != "references":
      continue
    if not _is_list_like(values):
      raise ValueError(f"{metric}: {name} must be a list, got {type(values).__name__}")
    if len(values) != len(predictions):
      raise ValueError(f"{metric}: {len(predictions)} predictions but {len(values)} {name}")


def check_answer_lists(metric: str, references: Sequence) -> list[list[str]]:
  """Each example's references as a non-empty list of strings (a bare string is one reference)."""
  out = []
  for i, refs in enumerate(references):
    if refs is None:
      raise ValueError(f"{metric}: example {i} has no references (None)")
    if isinstance(refs, str):
      refs = [refs]
    elif _is_list_like(refs):
      refs = list(refs)
    else:
      raise ValueError(f"{metric}: example {i} references are {type(refs).__name__}, "
                       "not a string or a list of strings")
    if not refs:
      raise ValueError(f"{metric}: example {i} has no references")
    if not all(isinstance(r, str) for r in refs):
      raise ValueError(f"{metric}: example {i} has a reference that is not a string")
    out.append(refs)
  return out


def check_single_references(metric: str, references: Sequence) -> list[str]:
  """Each example's one reference string (a one-element list is accepted)."""
  out = []
  for i, ref in enumerate(references):
    if ref is None:
      raise ValueError(f"{metric}: example {i} has no reference (None)")
    if _is_list_like(ref):
      if len(ref) != 1:
        raise ValueError(f"{metric}: example {i} has {len(ref)} references, expected one")
      ref = list(ref)[0]
    if not isinstance(ref, str):
      raise ValueError(f"{metric}: example {i} reference is {type(ref).__name__}, not a string")
    out.append(ref)
  return out


def check_strings(metric: str, name: str, values: Sequence) -> None:
  """Every item of `values` is a string."""
  for i, value in enumerate(values):
    if not isinstance(value, str):
      raise ValueError(f"{metric}: {name}[{i}] is {type(value).__name__}, not a string")
