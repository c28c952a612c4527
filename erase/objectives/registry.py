"""The registry of unlearning objectives: method name (a run config's `method:`) -> Objective class.

Each objective module registers its classes itself, at its end, with `register_objective(name,
cls)` (peft's `register_peft_method` pattern): adding a method is one new file that registers
itself plus its module name in `BUILTIN_MODULES`. The built-in modules are imported once, on the
first look-up, so importing `erase.objectives` stays cheap. The registry key is the method's
only name: classes carry no `name` field (`objective_name(cls)` answers the reverse question).
Third-party methods register through the `erase.objectives` entry-point group (erase/plugins.py),
under the same duplicate check.
"""

from __future__ import annotations

import importlib
from typing import Any

from erase.errors import EraseError
from erase.objectives.base import Objective, ObjectiveConfig

# modules under erase/objectives/ that register the built-in methods
BUILTIN_MODULES: tuple[str, ...] = ("esd", "salun", "gradient_ascent", "ablation", "erasediff", "advunlearn")

_REGISTRY: dict[str, type[Objective]] = {}
_UNAVAILABLE: dict[str, str] = {}  # built-in module -> why it could not be imported
_loaded = False


def register_objective(name: str, cls: type[Objective]) -> type[Objective]:
    """Make `cls` the objective of `method: name`; a name already taken by another class is an error.

    Registering the same class again (a re-imported module) is a no-op. Returns `cls`.
    TypeError for a class that is not an Objective with an ObjectiveConfig, ValueError for a taken name.
    """
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register_objective({name!r}): {cls!r} is not an Objective subclass")
    if not issubclass(cls.config_class, ObjectiveConfig):
        raise TypeError(f"register_objective({name!r}): {cls.__name__}.config_class must inherit ObjectiveConfig")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register_objective: method {name!r} is already registered to "
                         f"{old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _register_plugin(name: str, obj: Any) -> None:
    """An `erase.objectives` entry point: an Objective subclass, or a module that registered itself."""
    import types

    if isinstance(obj, types.ModuleType):
        if name not in _REGISTRY:
            raise TypeError(f"module {obj.__name__} did not register an objective named {name!r}")
        return
    register_objective(name, obj)


def _load_builtins() -> None:
    """The built-in methods (once), then any third-party ones (entry-point group `erase.objectives`)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            try:
                importlib.import_module(f"erase.objectives.{module}")
            except ModuleNotFoundError as err:  # a missing optional dependency disables that method only
                _UNAVAILABLE[module] = str(err)
    from erase.plugins import load_plugins

    load_plugins("erase.objectives", _register_plugin)


def objective_names() -> list[str]:
    """Every registered method name, in registration order."""
    _load_builtins()
    return list(_REGISTRY)


def objective_name(cls: type[Objective]) -> str:
    """The method name `cls` is registered under."""
    _load_builtins()
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    raise KeyError(f"{cls.__qualname__} is not a registered objective")


def get_objective(name: str, where: str = "method") -> type[Objective]:
    """The Objective class registered as `name` (EraseError naming `where` if unknown)."""
    _load_builtins()
    if name not in _REGISTRY:
        missing = "".join(f"; {m} not loaded: {why}" for m, why in _UNAVAILABLE.items())
        raise EraseError(f"{where}: unknown method {name!r} (choose from {', '.join(_REGISTRY)}){missing}")
    return _REGISTRY[name]


def build_objective(name: str, options: dict[str, Any] | None, where: str = "<config>") -> Objective:
    """An objective instance from its name and its `objective:` mapping, validated (one-line errors)."""
    from erase.config import from_dict

    cls = get_objective(name, f"{where}: method")
    config = from_dict(cls.config_class, options or {}, f"{where}: objective")
    return cls(config)
