"""Where the embedded models live: shipped artifacts in the package, user-built ones in a cache.

`zoo:NAME` is accepted wherever a model source is (`erase train`, `erase audit`, configs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from erase.errors import EraseError
from erase.models.sources import register_scheme

ARTIFACTS = Path(__file__).parent / "artifacts"


def cache_dir() -> Path:
    return Path(os.environ.get("ERASE_CACHE", Path.home() / ".cache" / "erase")) / "zoo"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    path: Path
    description: str

    @property
    def exists(self) -> bool:
        return (self.path / "model_index.json").is_file() or (self.path / "judges.json").is_file()


SHIPPED = {
    "digits": "digits world text-to-image model (SD architecture, 16 px, fp16), trained by `erase zoo build digits`",
    "judges": "digits world judges: digit and ink-colour classifiers + features for the Frechet distance",
}


def reference_name(exclude: list[str] | tuple[str, ...]) -> str:
    """`["digit=3"]` -> "digits-no-digit3": the retrain-without-concept reference's name."""
    if not exclude:
        return "digits"
    parts = [e.replace("color", "colour").replace("=", "").replace(" ", "") for e in exclude]
    return "digits-no-" + "-".join(parts)


def entries() -> list[ZooEntry]:
    out = [ZooEntry(n, ARTIFACTS / n, d) for n, d in SHIPPED.items()]
    root = cache_dir()
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if (p / "model_index.json").is_file():
                desc = "user-built"
                recipe = p / "recipe.json"
                if recipe.is_file():
                    ex = json.loads(recipe.read_text()).get("recipe", {}).get("exclude", [])
                    desc = f"retrain reference without {', '.join(ex)}" if ex else "digits world model (rebuilt)"
                out.append(ZooEntry(p.name, p, desc))
    return out


def model_path(name: str) -> Path:
    """The folder of zoo model `name`: the user's rebuilt copy first, then the shipped artifact."""
    for entry in sorted(entries(), key=lambda e: e.path.is_relative_to(ARTIFACTS)):
        if entry.name == name and entry.exists:
            return entry.path
    known = ", ".join(e.name for e in entries() if e.exists and e.name != "judges") or "none"
    raise EraseError(f"zoo:{name}: no such model (available: {known}); build it with `erase zoo build digits`")


def judges_path() -> Path:
    return model_path("judges")


register_scheme("zoo", model_path)  # `zoo:NAME` wherever a model source is accepted
