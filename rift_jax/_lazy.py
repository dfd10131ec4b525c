"""Names a package forwards from its modules, imported on first use (PEP
562), so importing a package (or a light sibling module such as
`rift_jax.evaluation.stats`) imports no more than it needs."""
from __future__ import annotations

import importlib
from typing import Callable, Mapping


def forward(package: str, sources: Mapping[str, str]
            ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """(`__getattr__`, `__dir__`) for `package`: name -> the module that
  defines it (`sources`)."""
  namespace = importlib.import_module(package).__dict__

  def getattr_(name: str):
    if name in sources:
      value = getattr(importlib.import_module(sources[name]), name)
      namespace[name] = value
      return value
    raise AttributeError(f"module {package!r} has no attribute {name!r}")

  def dir_():
    return sorted(set(namespace) | set(sources))

  return getattr_, dir_
