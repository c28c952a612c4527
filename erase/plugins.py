"""Third-party methods, detectors and attacks, plugged in through Python entry points.

A package declares, in its pyproject.toml:

    [project.entry-points."erase.objectives"]
    my_method = "my_pkg.method:MyObjective"        # an Objective subclass (or a module that registers itself)
    [project.entry-points."erase.detectors"]
    my_detector = "my_pkg.detect:build"            # build(spec_after_colon, concept) -> a Detector
    [project.entry-points."erase.attacks"]
    my_attack = "my_pkg.attack:make_attacker"      # make_attacker(**context) -> row -> (image, record)

and, once installed, `method: my_method` in a run config, `--detector my_detector[:SPEC]` and
`--attack my_attack` find it. The entry-point name is the registry key, under the registries'
duplicate check: a plugin that takes a name already registered (a built-in's or another
plugin's) is refused in one line naming the plugin's distribution. Entry points are read when a
registry is first consulted and again on later look-ups (new installs are seen); each is loaded once.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata

from erase.errors import EraseError

GROUPS = ("erase.objectives", "erase.detectors", "erase.attacks")
_seen: set[tuple[str, str, str]] = set()


def _where(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def register_unique(table: dict, name: str, obj, what: str) -> None:
    """table[name] = obj; ValueError if `name` is taken by another object (the same one again is a no-op)."""
    old = table.get(name)
    if old is not None and old is not obj:
        raise ValueError(f"{what} {name!r} is already registered to {_where(old)}")
    table[name] = obj


def load_plugins(group: str, register: Callable[[str, object], object]) -> None:
    """Load every entry point of `group` not loaded yet and `register(name, obj)` it (one-line errors)."""
    for ep in metadata.entry_points(group=group):
        key = (group, ep.name, ep.value)
        if key in _seen:
            continue
        _seen.add(key)
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - a broken plugin is the plugin's error, named as such
            raise EraseError(f"plugin {dist}: entry point {group} {ep.name} = {ep.value} cannot be loaded "
                             f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})") from None
        try:
            register(ep.name, obj)
        except (TypeError, ValueError) as err:
            _seen.discard(key)
            raise EraseError(f"plugin {dist}: entry point {group} {ep.name} = {ep.value}: {err}") from None
