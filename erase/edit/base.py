"""The contract between `erase edit` (erase/edit/runner.py) and the editing methods.

An editor gets the frozen `Models` (erase/models/core.py) and an `EditSet`: the erase prompts, each
with its guide (the prompt it is mapped to) and its concept index, and the preserve prompts. It
changes the model's weights in place and returns what it did (plain values for run.json).
Architecture knowledge stays in erase/models/ (erase/models/editing.py: which projections, which
token states).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from erase.models.core import Models


@dataclass
class EditorConfig:
    """Base of every editor's hyperparameters (the `edit:` mapping of an edit config)."""


@dataclass
class EditSet:
    """What to edit: erase prompt i is mapped to guide prompt i; concept[i] is its concept's index."""

    erase: list[str]
    guide: list[str]
    concept: list[int]
    preserve: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert len(self.erase) == len(self.guide) == len(self.concept), "erase, guide and concept must align"


class Editor:
    """A closed-form editor: `edit(models, edits)` changes `models.unet` (or the text encoders) in place."""

    config_class: ClassVar[type[EditorConfig]] = EditorConfig

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.config_class()

    @property
    def params(self) -> str:
        """The parameter set it changes, in erase/train/params.py's names (run.json `params.set`)."""
        return "unet"

    def edit(self, models: Models, edits: EditSet) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
