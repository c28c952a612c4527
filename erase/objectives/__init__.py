"""Registry of unlearning objectives: adding a method is one file here plus one line below.

Each entry maps a method name (the `method:` key of a run config) to "module:Class", imported only
when used, so a broken or heavy method never slows the others. The class is an
`erase.objectives.base.Objective` subclass whose `config_class` holds its hyperparameters.
"""

from __future__ import annotations

import importlib
from typing import Any

from erase.errors import EraseError
from erase.objectives.base import Batch, Losses, Models, Objective, ObjectiveConfig

OBJECTIVES: dict[str, str] = {
    "esd": "erase.objectives.esd:Esd",
    "salun": "erase.objectives.salun:SalUn",
    "ga": "erase.objectives.gradient_ascent:GradientAscent",
    "neggrad+": "erase.objectives.gradient_ascent:NegGradPlus",
    "ablation": "erase.objectives.ablation:ConceptAblation",
    "erasediff": "erase.objectives.erasediff:EraseDiff",
    "advunlearn": "erase.objectives.advunlearn:AdvUnlearn",
}


def get_objective(name: str, where: str = "method") -> type[Objective]:
    """The Objective class registered as `name` (EraseError naming `where` if unknown)."""
    if name not in OBJECTIVES:
        raise EraseError(f"{where}: unknown method {name!r} (choose from {', '.join(OBJECTIVES)})")
    module, _, attr = OBJECTIVES[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ModuleNotFoundError, AttributeError) as err:
        raise EraseError(f"{where}: method {name!r} is not available in this version ({err})") from None
    return cls


def build_objective(name: str, options: dict[str, Any] | None, where: str = "<config>") -> Objective:
    """An objective instance from its name and its `objective:` mapping, validated (one-line errors)."""
    from erase.config import from_dict

    cls = get_objective(name, f"{where}: method")
    config = from_dict(cls.config_class, options or {}, f"{where}: objective")
    return cls(config)


__all__ = ["OBJECTIVES", "Batch", "Losses", "Models", "Objective", "ObjectiveConfig", "build_objective", "get_objective"]
