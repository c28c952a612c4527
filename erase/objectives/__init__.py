"""Unlearning objectives: one module per method, each registering itself (erase/objectives/registry.py).

The class is an `erase.objectives.base.Objective` subclass whose `config_class` (an
`ObjectiveConfig` dataclass) holds its hyperparameters.
"""

from __future__ import annotations

from erase.objectives.base import Batch, Losses, Models, Objective, ObjectiveConfig
from erase.objectives.registry import (
    build_objective,
    get_objective,
    objective_name,
    objective_names,
    register_objective,
)

__all__ = ["Batch", "Losses", "Models", "Objective", "ObjectiveConfig", "build_objective", "get_objective",
           "objective_name", "objective_names", "register_objective"]
