"""Export erased models where people run them: diffusers folder, original-layout single file,
LoRA weights, a model card, and an upload to the Hugging Face Hub."""

from erase.export.diffusers_folder import ExportResult, export_run
from erase.export.hub import PushResult, push_folder

__all__ = ["ExportResult", "PushResult", "export_run", "push_folder"]
