"""The model card (README.md) of an exported model: huggingface_hub's ModelCard from a Jinja template.

The YAML header is what the Hub indexes (base_model, license, library_name, tags, and our own
fields erased_concepts / objective / weighting); the body says how to load each export, what
was erased and how, the audit numbers if the run was audited, the full training config, and
the intended use and limitations of concept erasure.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from erase.export.layout import architecture_text
from erase.export.run import RunInfo
from erase.models.family import FAMILIES, Family
from erase.resources import package_path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SECRET_KEY = re.compile(r"token|secret|password|api[_-]?key", re.IGNORECASE)
AUDIT_GRID = "audit_grid.png"
AUDIT_RESULTS = "audit_results.json"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _redact(value: Any) -> Any:
    """Drop anything that looks like a credential before a config goes into a public file."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if _SECRET_KEY.search(str(k)) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def default_license(base_model: str | None, family: Family | None = None) -> str:
    """A derivative keeps its base's license: SD-1.x weights are CreativeML OpenRAIL-M, Stability's
    SD-2.x and SDXL releases CreativeML Open RAIL++-M ("openrail++" on the Hub)."""
    if family is not None and family.key in ("sd2", "sdxl"):
        return "openrail++"
    if family is not None and family.key == "flux" and base_model and "schnell" in base_model.lower():
        return "apache-2.0"
    if base_model and re.search(r"stable-diffusion|sd-?1[.-]?[45]|CompVis|runwayml", base_model, re.IGNORECASE):
        return "creativeml-openrail-m"
    return "other"


def metric_rows(results: dict[str, Any], limit: int = 60) -> list[tuple[str, str]]:
    """Flatten an audit's results.json into (metric, value) rows: `metrics` if present, else all scalars."""
    source = results.get("metrics") if isinstance(results.get("metrics"), dict) else results
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any, depth: int) -> None:
        if len(rows) >= limit:
            return
        if isinstance(value, dict) and depth < 4:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(value, (bool, int, str)):
            rows.append((prefix, str(value)))
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))

    walk("", source, 0)
    return rows


def card_data(run: RunInfo, license: str | None = None, family: Family | None = None,
              prediction: str = "epsilon") -> ModelCardData:
    concepts = run.concepts
    family = family or FAMILIES["sd1"]
    tags = ["concept-erasure", *family.tags, "text-to-image", "diffusers", "erase"]
    if prediction == "v_prediction":
        tags.append("v-prediction")
    tags += [f"erased-{_slug(c)}" for c in concepts if _slug(c)]
    tags += [_slug(t) for t in (run.objective, run.weighting) if t and _slug(t)]
    base = run.base_model
    extra: dict[str, Any] = {"pipeline_tag": "text-to-image", "erased_concepts": concepts,
                             "architecture": family.label, "prediction_type": prediction}
    if run.objective:
        extra["objective"] = run.objective
    if run.weighting:
        extra["weighting"] = run.weighting
    return ModelCardData(
        # The Hub rejects a base_model that is not a Hub id, so local paths stay in the body only.
        base_model=base if base and _HUB_ID.match(base) and not Path(base).exists() else None,
        license=license or default_license(base, family),
        library_name="diffusers",
        tags=list(dict.fromkeys(tags)),
        **extra,
    )


def build_card(
    run: RunInfo,
    name: str,
    *,
    license: str | None = None,
    single_file: str | None = None,
    has_lora: bool = False,
    has_fp16: bool = False,
    has_audit_grid: bool = False,
    family: Family | None = None,
    prediction: str = "epsilon",
    original_config: str | None = None,
) -> ModelCard:
    """The card: huggingface_hub's ModelCard rendered from erase's template (erase/data/templates/model_card.md).

    `family` / `prediction` are the exported pipeline's (erase.export.layout); they choose the
    pipeline class in the code samples, the architecture line, tags and default license.
    """
    concepts = run.concepts
    family = family or FAMILIES["sd1"]
    return ModelCard.from_template(
        card_data(run, license, family, prediction),
        template_path=str(package_path("data", "templates", "model_card.md")),
        model_name=name,
        concepts_text=", ".join(f"\"{c}\"" for c in concepts) or "(the run did not record its concepts)",
        objective_text=run.objective or "unknown",
        weighting_text=run.weighting or ("none (closed form)" if run.meta.get("kind") == "edit" else "uniform"),
        how_text="in closed form (`erase edit`, no training)" if run.meta.get("kind") == "edit" else "by fine-tuning",
        base_model_text=run.base_model or "unknown",
        forget_prompts=list(run.forget_prompts[:20]) if run.forget_prompts else [],
        has_fp16=has_fp16,
        single_file=single_file,
        original_config=original_config,
        pipeline_class=family.pipeline,
        model_kind={"flux": "FLUX.1", "sd3": "Stable Diffusion 3"}.get(family.key, "Stable Diffusion"),
        single_file_transformer=family.key == "flux",
        single_file_t5=family.key == "sd3",
        single_file_layout=("all-in-one SD3 checkpoint layout (MMDiT, VAE and the three text encoders)" if family.key == "sd3"
                            else "original Stable Diffusion checkpoint layout"),
        architecture_text=architecture_text(family, prediction),
        v_prediction=prediction == "v_prediction",
        has_lora=has_lora,
        lora_base=run.base_model or "BASE_MODEL",
        audit_rows=metric_rows(run.audit_results) if run.audit_results is not None else None,
        audit_results_file=AUDIT_RESULTS,
        audit_grid_file=AUDIT_GRID if has_audit_grid else None,
        config_yaml=yaml.safe_dump(_redact(run.config), sort_keys=False).rstrip() if run.config else None,
    )
