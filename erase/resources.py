"""Files that ship inside the package: recipes, prompt suites, templates and the digits model.

The recipes and prompt suites have one source: the top-level `configs/` and `prompts/` folders of
the repository, the files people open, edit and link to. The wheel carries copies of them under
`erase/data/configs/` and `erase/data/prompts/` (setup.py's build step copies them there), so an
installed erase finds them too. `shipped_root` picks whichever exists: the package's copy in an
installed wheel, the checkout's folder in a checkout or an editable install. A path the user gives
as `configs/...` or `prompts/...` that does not exist from the working directory means the shipped
file (`locate`), so the documented commands work from any folder.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path, PurePosixPath

from erase.errors import EraseError

SHIPPED = ("configs", "prompts")  # the repository's top-level folders, copied under erase/data/ in a wheel


def package_path(*parts: str) -> Path:
    """A file or folder inside the installed `erase` package, as a real path on disk."""
    root = files("erase")
    if not isinstance(root, Path):  # a zipped install: from_pretrained and YAML readers need real files
        raise EraseError(f"erase is installed as {root}; install it unzipped (pip install) to use its shipped files")
    return root.joinpath(*parts)


def shipped_root(name: str) -> Path:
    """The folder that holds the shipped `configs` or `prompts`: the wheel's copy, else the checkout's."""
    inside = package_path("data", name)
    if inside.is_dir():
        return inside
    return package_path().parent / name  # a checkout or an editable install: the top-level folder


def data_path(relative: str) -> Path:
    """`configs/digits/esd.yaml` -> the shipped recipe; `templates/x` -> erase/data/templates/x."""
    parts = PurePosixPath(relative).parts
    if parts and parts[0] in SHIPPED:
        return shipped_root(parts[0]).joinpath(*parts[1:])
    return package_path("data", *parts)


def shown(path: str | os.PathLike) -> str:
    """A shipped file as `configs/...` / `prompts/...` (what every command accepts anywhere), else `path`."""
    resolved = Path(path).resolve()
    for name in SHIPPED:
        try:
            return (PurePosixPath(name) / resolved.relative_to(shipped_root(name).resolve()).as_posix()).as_posix()
        except ValueError:
            continue
    return str(path)


def locate(path: str | os.PathLike) -> Path:
    """`path` itself if it exists (or is absolute, or is not under configs/ or prompts/); else the shipped file."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute() or not p.parts or p.parts[0] not in SHIPPED:
        return p
    shipped = data_path(p.as_posix())
    return shipped if shipped.exists() else p
