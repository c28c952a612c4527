"""Where the embedded models live: shipped artifacts in the package, user-built ones in a cache.

`zoo:NAME` is accepted wherever a model source is (`erase train`, `erase audit`, configs).

The retrain references (`digits-no-digit3`, `digits-no-colourred`, `digits-no-digit358`) ship as their
UNet and text encoder only (fp16): they were trained on the base model's frozen autoencoder (`erase zoo build
digits --exclude ... --shared-vae`), as retrain references for Stable Diffusion reuse SD's VAE,
so the autoencoder, tokenizer and scheduler are the base model's. `shares.json` in such an
artifact names the base and the shared parts; `model_path` assembles a full diffusers folder of
links (copies where links fail) once, in the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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
        return any((self.path / f).is_file() for f in ("model_index.json", "judges.json", "shares.json"))


SHIPPED = {
    "digits": "digits world text-to-image model (SD architecture, 16 px, fp16), trained by `erase zoo build digits`",
    "judges": "digits world judges: digit and ink-colour classifiers + features for the Frechet distance",
    "digits-no-digit3": "retrain reference: the digits recipe without any image of the digit 3 (shared autoencoder)",
    "digits-no-colourred": "retrain reference: the digits recipe without any red-ink image (shared autoencoder)",
    "digits-no-digit358": "retrain reference: the digits recipe without any image of the digits 3, 5 and 8 (shared autoencoder)",
}


def reference_name(exclude: list[str] | tuple[str, ...]) -> str:
    """The retrain-without-concepts reference's name: `["digit=3"]` -> "digits-no-digit3";
    `["digit=3", "digit=5", "digit=8"]` (or `["digit=3,5,8"]`) -> "digits-no-digit358";
    `["colour=red"]` -> "digits-no-colourred"."""
    from erase.zoo.digits import COLOUR_NAMES, parse_exclude

    if not exclude:
        return "digits"
    by_axis: dict[str, list[int]] = {}
    for axis, value in parse_exclude(list(exclude)):
        by_axis.setdefault(axis, []).append(value)
    parts = [f"digit{''.join(str(v) for v in sorted(by_axis['digit']))}"] if "digit" in by_axis else []
    parts += [f"colour{COLOUR_NAMES[v]}" for v in sorted(by_axis.get("colour", []))]
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
            return assemble(entry.path) if (entry.path / "shares.json").is_file() else entry.path
    known = ", ".join(e.name for e in entries() if e.exists and e.name != "judges") or "none"
    raise EraseError(f"zoo:{name}: no such model (available: {known}); build it with `erase zoo build digits`")


def judges_path() -> Path:
    return model_path("judges")


def assemble(artifact: Path) -> Path:
    """A full diffusers folder for an artifact that ships some components only (`shares.json`:
    `{"base": NAME, "shared": [component, ...]}`): links to its own and the base's components."""
    from erase.io import atomic_dir

    shares = json.loads((artifact / "shares.json").read_text())
    base = model_path(shares["base"])
    index = json.loads((base / "model_index.json").read_text())
    parts = {c: (base if c in shares["shared"] else artifact) / c for c in index if not c.startswith("_")
             and isinstance(index[c], list) and index[c][0] is not None}
    stamp = json.dumps({c: str(p) for c, p in sorted(parts.items())})
    for root in (cache_dir() / "assembled", Path(tempfile.gettempdir()) / f"erase-zoo-{os.getuid()}"):
        out = root / artifact.name
        try:
            if (out / "stamp.json").is_file() and (out / "stamp.json").read_text() == stamp:
                return out
            with atomic_dir(out) as tmp:
                for c, src in parts.items():
                    try:
                        (Path(tmp) / c).symlink_to(src, target_is_directory=True)
                    except OSError:
                        shutil.copytree(src, Path(tmp) / c)
                shutil.copy(base / "model_index.json", Path(tmp) / "model_index.json")
                shutil.copy(artifact / "recipe.json", Path(tmp) / "recipe.json")
                (Path(tmp) / "stamp.json").write_text(stamp)
            return out
        except (OSError, EraseError):
            continue
    raise EraseError(f"zoo:{artifact.name}: cannot write its assembled folder under {cache_dir()} or the temp folder")


def _same_component(a: Path, b: Path) -> bool:
    """Same files; JSON configs compared without their bookkeeping keys (_name_or_path, and the
    tokenizer's local_files_only, which HF_HUB_OFFLINE sets)."""
    names = sorted(f.name for f in a.iterdir())
    if names != sorted(f.name for f in b.iterdir()):
        return False
    for n in names:
        if n.endswith(".json"):
            x, y = (json.loads((d / n).read_text()) for d in (a, b))
            if isinstance(x, dict) and isinstance(y, dict):
                x, y = ({k: v for k, v in d.items() if not k.startswith("_") and k != "local_files_only"} for d in (x, y))
            if x != y:
                return False
        elif (a / n).read_bytes() != (b / n).read_bytes():
            return False
    return True


def compact(folder: str | Path, base: str = "digits") -> Path:
    """Drop from a model trained on `base`'s frozen autoencoder (`--shared-vae`) the components it
    shares with `base` (autoencoder, tokenizer, scheduler, index) after checking they are the same,
    and write `shares.json`: what `erase zoo build --shared-vae --compact` ships."""
    folder, base_dir = Path(folder), model_path(base)
    shared = ["vae", "tokenizer", "scheduler"]
    for c in shared:
        if not _same_component(folder / c, base_dir / c):
            raise EraseError(f"{folder / c}: differs from zoo:{base}'s {c}; only a --shared-vae build can be compacted")
    for c in shared:
        shutil.rmtree(folder / c)
    (folder / "model_index.json").unlink()
    (folder / "shares.json").write_text(json.dumps({"base": base, "shared": shared}, indent=1) + "\n")
    return folder


register_scheme("zoo", model_path)  # `zoo:NAME` wherever a model source is accepted
