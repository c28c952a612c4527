"""Export erased models where people run them: diffusers folder, original-layout single file,
LoRA weights, a model card, and an upload to the Hugging Face Hub.

Names are imported lazily so that `erase push` (huggingface_hub only) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExportResult": "erase.export.diffusers_folder",
    "export_run": "erase.export.diffusers_folder",
    "PushResult": "erase.export.hub",
    "push_folder": "erase.export.hub",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
