"""Model sources given by name: `SCHEME:NAME` resolved by the package that owns the scheme.

The loaders (erase/models/loading.py) know no package above them. A package that serves models
by name registers its scheme here when it is imported (erase.zoo.registry registers `zoo`, and
`import erase` imports it), so `zoo:digits` works wherever a model source is accepted while
`erase.models` imports nothing of `erase.zoo` (the zoo depends on the models, not the reverse).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from erase.errors import EraseError

_SCHEMES: dict[str, Callable[[str], os.PathLike | str]] = {}


def register_scheme(scheme: str, resolve: Callable[[str], os.PathLike | str]) -> None:
    """`SCHEME:NAME` -> `resolve(NAME)` (a folder); registering a scheme twice with another function is an error."""
    if _SCHEMES.get(scheme, resolve) is not resolve:
        raise ValueError(f"model source scheme {scheme!r} is already registered")
    _SCHEMES[scheme] = resolve


def resolve_source(source: str | os.PathLike, where: str | None = None) -> str:
    """`SCHEME:NAME` (e.g. `zoo:digits`) -> its folder; a training run directory -> its `RUN/model`;
    anything else unchanged. `where` prefixes errors (e.g. the config file and key)."""
    src = str(source)
    scheme, sep, name = src.partition(":")
    if sep and scheme in _SCHEMES:
        try:
            src = str(_SCHEMES[scheme](name))
        except EraseError as err:
            raise EraseError(f"{where}: {err}" if where else str(err)) from None
    path = Path(src).expanduser()
    if not (path / "model_index.json").is_file() and (path / "model" / "model_index.json").is_file():
        src = str(path / "model")  # a run directory of `erase train`
    return src
