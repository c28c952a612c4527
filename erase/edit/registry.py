"""The registry of editing methods: method name (an edit config's `method:`) -> Editor class.

As erase/objectives/registry.py: each method's module registers its class at its end with
`register_editor(name, cls)`; the built-in modules are imported on the first look-up.
"""

from __future__ import annotations

import importlib
from typing import Any

from erase.edit.base import Editor, EditorConfig
from erase.errors import EraseError

BUILTIN_MODULES: tuple[str, ...] = ("uce",)

_REGISTRY: dict[str, type[Editor]] = {}
_loaded = False


def register_editor(name: str, cls: type[Editor]) -> type[Editor]:
    """Make `cls` the editor of `method: name`; a name taken by another class is a ValueError."""
    if not (isinstance(cls, type) and issubclass(cls, Editor) and issubclass(cls.config_class, EditorConfig)):
        raise TypeError(f"register_editor({name!r}): {cls!r} is not an Editor with an EditorConfig")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"register_editor: method {name!r} is already registered to {old.__module__}.{old.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def editor_names() -> list[str]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(f"erase.edit.{module}")
    return list(_REGISTRY)


def build_editor(name: str, options: dict[str, Any] | None, where: str = "<config>") -> Editor:
    """An editor from its name and its `edit:` mapping, validated (one-line errors)."""
    from erase.config import from_dict

    if name not in editor_names():
        raise EraseError(f"{where}: method: unknown editing method {name!r} (choose from {', '.join(editor_names())})")
    cls = _REGISTRY[name]
    return cls(from_dict(cls.config_class, options or {}, f"{where}: edit"))


def is_edit_config(path) -> bool:
    """Whether the YAML at `path` names an editing method (`method: uce`): an `erase edit` config,
    which `erase train` refuses with a pointer to `erase edit`."""
    from erase.config import read_yaml

    try:
        data = read_yaml(path)
    except EraseError:
        return False
    return isinstance(data, dict) and data.get("method") in editor_names()
