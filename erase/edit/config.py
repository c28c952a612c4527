"""The typed config of `erase edit` (YAML -> dataclasses; one-line errors through erase.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from erase.train.config import ConceptSpec, PromptSet


@dataclass
class EditConfig:
    """A whole `erase edit` run.

    `concepts`: what to erase, each with its prompts and `anchor` (the guide each prompt is mapped
    to; none: the method's `default_guide`); `preserve`: prompts whose outputs must not move (the
    other concepts a user keeps). `model` takes every source `erase train` takes.
    """

    model: str
    concepts: list[ConceptSpec]
    method: str = "uce"
    edit: dict[str, Any] = field(default_factory=dict)  # the method's hyperparameters
    concept: str = ""  # human name of what is erased (run.json, model card); default: the concepts' names
    default_guide: str = ""  # a concept without anchors is guided to this ("" for objects, "art" for styles)
    preserve: PromptSet = field(default_factory=PromptSet)
    save_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  # auto: cuda when there is one
    output_dir: str | None = None
    model_config: str | None = None
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if not self.concepts:
            raise ValueError("concepts: is empty; give at least one concept to erase")
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise ValueError(f"concepts: names must differ, got {names}")
        if not self.concept:
            self.concept = ", ".join(names)
