"""What an audit's numbers came from, for results.json: the named protocol it followed (and how it
deviated), and the sha256 of its suite files, model weights, component overrides and detector weights."""

from __future__ import annotations

import re
from pathlib import Path

from erase.audit.suites import Suite


def protocol_record(s, suites: list[Suite]) -> dict | None:
    """results.json `audit_protocol`: the named protocol's settings and sources, whether the suite
    file is the published one (sha256), and what this audit did otherwise (--limit, no attack)."""
    if not s.protocol:
        return None
    from erase.audit.protocols import get_protocol
    from erase.io import file_sha256

    p = get_protocol(s.protocol)
    shas = [file_sha256(x.file) for x in suites]
    matches = shas == [p.suite_sha256]
    deviations = list(s.deviations)
    if not matches:
        deviations.insert(0, f"suite file is not the published {p.suite} (sha256 {p.suite_sha256[:16]}...)")
    return {"name": p.name, "title": p.title, "settings": p.settings(), "sources": p.sources, "suite_matches": matches,
            "deviations": deviations}


def model_weight_files(source: str) -> tuple[Path, list[Path]]:
    """(root, files): the weight files a model source reads: a single file, or the *.safetensors (else
    *.bin) under a diffusers folder (a Hub id: its local snapshot folder)."""
    from erase.models.loading import hub_snapshot
    from erase.models.sources import resolve_source

    path = Path(resolve_source(source)).expanduser()
    if not path.exists():
        path = hub_snapshot(str(source)) or path
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        return path, [f for part in ("unet", "text_encoder", "text_encoder_2", "vae") for f in _weights_in(path / part)]
    return path, []


def _weights_in(folder: Path) -> list[Path]:
    """The weight files a component folder is loaded from: *.safetensors (else *.bin), without the
    variant files (*.fp16.safetensors) when plain ones are there."""
    for ext in ("safetensors", "bin"):
        files = sorted(p for p in folder.glob(f"*.{ext}") if p.is_file())
        plain = [p for p in files if not re.search(r"\.(fp16|bf16|fp32)$", p.stem)]
        if files:
            return plain or files
    return []


def reproducibility_hashes(s, suites: list[Suite], detector) -> dict:
    """sha256 of what the numbers came from: the suite files, the model's weight files (and any
    component override), the detector's weights. Keys are file names relative to the model folder."""
    from erase.io import file_sha256

    def digest(source: str) -> dict[str, str]:
        root, files = model_weight_files(source)
        return {f.relative_to(root).as_posix(): file_sha256(f) for f in files}

    weight_files = getattr(detector, "weight_files", None)
    return {
        "suite_files": {Path(x.file).name: file_sha256(x.file) for x in suites},
        "model_weights": digest(s.model),
        "overrides": {k: digest(v) for k, v in s.overrides().items()},
        "detector_weights": {Path(f).name: file_sha256(f) for f in weight_files()} if weight_files else {},
    }
