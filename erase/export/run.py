"""Read what `erase export` needs from a training run directory (or a bare diffusers folder).

The run directory layout is ARCHITECTURE.md's: RUN/config.yaml, RUN/run.json, RUN/model (a
diffusers folder), optional RUN/lora/pytorch_lora_weights.safetensors and RUN/audit/. Only
what the export uses is read; checkpoints/, cache/ and logs/ are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erase.config import read_yaml
from erase.errors import EraseError

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class RunInfo:
    """One run's inputs to the export: where the weights are and what the run says about itself."""

    root: Path
    model_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # run.json
    lora_file: Path | None = None
    audit_results: dict[str, Any] | None = None
    audit_grid: Path | None = None

    def find(self, *names: str) -> Any:
        """The first of `names` found in run.json, then config.yaml (top level or one section down)."""
        for source in (self.meta, self.config):
            for name in names:
                if source.get(name) not in (None, "", []):
                    return source[name]
            for value in source.values():
                if isinstance(value, dict):
                    for name in names:
                        if value.get(name) not in (None, "", []):
                            return value[name]
        return None

    @property
    def concepts(self) -> list[str]:
        found = self.find("concepts", "concept", "erased_concepts", "forget_concept", "target_concept")
        if found is None:
            return []
        items = found if isinstance(found, (list, tuple)) else [found]
        return [str(c.get("name", c.get("prompt", c))) if isinstance(c, dict) else str(c) for c in items]

    @property
    def objective(self) -> str | None:
        """run.json's objective.name (the trainer's describe()), else config.yaml's `method`."""
        value = self.find("objective")
        if isinstance(value, dict):
            value = value.get("name")
        if value is None:
            value = self.find("method")
        return None if value is None else str(value)

    @property
    def weighting(self) -> str | None:
        """'uniform', or LoReUn's 'loreun-dynamic' / 'loreun-static' (erase.weighting's `kind`)."""
        value = self.find("weighting")
        if isinstance(value, dict):
            value = value.get("name", value.get("kind"))
        if value is None:
            return None
        return f"loreun-{value}" if value in ("dynamic", "static") else str(value)

    @property
    def forget_prompts(self) -> list[str]:
        value = self.find("forget_prompts")
        return [str(p) for p in value] if isinstance(value, list) else []

    @property
    def base_model(self) -> str | None:
        value = self.find("base_model", "pretrained_model", "model_id", "pretrained_model_name_or_path")
        if value is None and isinstance(self.config.get("model"), str):
            value = self.config["model"]  # RunConfig.model
        return None if value is None else str(value)


def _read_json(path: Path) -> dict[str, Any]:
    from erase.models.loading import read_json_object

    return read_json_object(path)


def read_run(source: str | Path) -> RunInfo:
    """A RunInfo for a run directory, or for a bare diffusers folder (no metadata)."""
    root = Path(source).expanduser()
    if root.is_file():  # a single-file checkpoint: no run metadata
        return RunInfo(root=root.parent, model_dir=root)
    if not root.is_dir():
        raise EraseError(f"{root}: no such directory (expected a run directory or a diffusers folder)")
    if (root / "model_index.json").is_file():
        return RunInfo(root=root, model_dir=root)
    model_dir = root / "model"
    if not (model_dir / "model_index.json").is_file():
        raise EraseError(f"{root}: neither a run directory (no model/model_index.json) nor a diffusers folder (no model_index.json)")
    config = read_yaml(root / "config.yaml") if (root / "config.yaml").is_file() else {}
    meta = _read_json(root / "run.json") if (root / "run.json").is_file() else {}
    status = meta.get("status")
    if status in ("running", "failed"):
        raise EraseError(
            f"{root / 'run.json'}: status: the run is {status!r}, not completed; finish or resume it "
            f"(to export its model/ anyway, pass {model_dir} as RUN_DIR)"
        )
    lora = root / "lora" / LORA_WEIGHTS
    results = root / "audit" / "results.json"
    grid = root / "audit" / "grid.png"
    return RunInfo(
        root=root, model_dir=model_dir, config=config or {}, meta=meta,
        lora_file=lora if lora.is_file() else None,
        audit_results=_read_json(results) if results.is_file() else None,
        audit_grid=grid if grid.is_file() else None,
    )


def check_safetensors(folder: Path) -> None:
    """Open every `.safetensors` under `folder`: a truncated or corrupt file fails here, by name."""
    from safetensors import safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise EraseError(f"{path}: corrupt or truncated safetensors file ({first})") from None
