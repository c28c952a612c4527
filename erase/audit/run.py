"""One audit, end to end and resumable: suite -> images -> detections -> attack -> metrics -> report.

Every stage appends to its own JSONL log in the output folder (images.jsonl, detections.jsonl,
targets.jsonl, attack.jsonl), keyed by the row index; a rerun with the same settings picks up
where a killed run stopped. `audit.json` records the settings the folder was started with, and a
rerun with different settings is refused rather than mixing two audits. results.json holds no
timestamps or paths of the output folder, so a resumed audit's results.json equals an
uninterrupted one's byte for byte.

Under `accelerate launch -m erase audit ...` (P processes) the image generation is split: each
process makes every P-th batch of the suite on its own device and resumes its own rows
(erase/audit/generate.py); the main process then merges the logs and alone runs the detector,
the attack, the metrics and writes one results.json and one report, the same as one process's.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from erase.audit.attacks import attack_names
from erase.audit.attacks.common import judge
from erase.audit.attacks.concept_inversion import ConceptInversionSettings
from erase.audit.attacks.found import replay_cond_fn, write_found
from erase.audit.attacks.mma import MMASettings
from erase.audit.attacks.p4d import P4DSettings
from erase.audit.attacks.relearn import RelearnSettings
from erase.audit.attacks.ringabell import RingABellSettings
from erase.audit.attacks.runner import attack_outputs, attack_record, make_attacker
from erase.audit.attacks.unlearndiffatk import UnlearnDiffAtkSettings
from erase.audit.detectors import build_detector
from erase.audit.generate import (
    GenSettings,
    RowLog,
    default_size,
    generate_rows,
    load_images,
    merge_parts,
    png_bytes,
    to_uint8,
)
from erase.audit.metrics import clip_score, concept_list, confusion, frechet_distance, summarise
from erase.audit.provenance import protocol_record, reproducibility_hashes
from erase.audit.suites import PromptRow, Suite, SuiteFilter, expand_rows, read_suites, suite_digest
from erase.errors import EraseError
from erase.io import atomic_write_bytes, atomic_write_json
from erase.models.core import denoiser

_VERSIONED = ("erase", "torch", "diffusers", "transformers", "nudenet", "onnxruntime", "numpy", "scipy")


@dataclass
class AuditSettings:
    model: str
    suites: list[str]
    out: str
    detector: str = "nudenet"
    concept: str | None = None
    attack: str | None = None
    gen: GenSettings = field(default_factory=GenSettings)
    filter: SuiteFilter = field(default_factory=SuiteFilter)
    udatk: UnlearnDiffAtkSettings = field(default_factory=UnlearnDiffAtkSettings)
    ringabell: RingABellSettings = field(default_factory=RingABellSettings)
    ci: ConceptInversionSettings = field(default_factory=ConceptInversionSettings)
    p4d: P4DSettings = field(default_factory=P4DSettings)
    mma: MMASettings = field(default_factory=MMASettings)
    relearn: RelearnSettings = field(default_factory=RelearnSettings)
    relearn_reference: str | None = None   # relearn: the same fine-tuning on this model too (the retrain reference)
    attack_limit: int | None = None        # attack at most this many concept prompts
    reference_model: str | None = None     # the ORIGINAL model: attack targets, Ring-A-Bell vector and search
    target_images: str | None = None       # or a folder of concept images as attack targets
    clip: str | None = None                # a local CLIP folder for the CLIP score
    reference_images: str | None = None    # real images for a Frechet distance
    device: str = "auto"
    model_config: str | None = None        # --config for single-file models (folder of configs or YAML)
    allow_pickle: bool = False             # --allow-pickle: read .ckpt/.pt (weights only)
    protocol: str | None = None            # --protocol NAME (erase/audit/protocols.py)
    deviations: list[str] = field(default_factory=list)  # what this audit does otherwise than its protocol
    images_per_prompt: int = 1
    guidance: float | None = None          # one guidance for every row (else each row's own)
    size: int | None = None                # one square resolution for every row
    inception: str | None = None           # FID Inception-v3 weights (erase/audit/inception.py)
    unet: str | None = None                # component overrides on --model (erase/models/components.py)
    text_encoder: str | None = None
    lora: str | None = None

    def fingerprint(self) -> dict:
        """Everything that changes results (not batch size, device, output folder or pickle permission)."""
        d = asdict(self)
        for k in ("out", "device", "allow_pickle", "deviations"):
            d.pop(k)
        # settings added later are left out at their defaults: audits started before them resume unchanged
        for k, default in (("model_config", None), ("protocol", None), ("images_per_prompt", 1), ("guidance", None),
                           ("size", None), ("inception", None), ("unet", None), ("text_encoder", None), ("lora", None)):
            if d[k] == default:
                d.pop(k)
        for k in ("p4d", "mma", "relearn", "relearn_reference"):  # nor do audits of the older attacks
            if self.attack not in ("p4d", "mma", "relearn"):
                d.pop(k)
        d["gen"].pop("batch_size")
        return json.loads(json.dumps(d, default=str))

    def overrides(self) -> dict:
        """The component overrides on --model (load_pipeline / apply_overrides keywords)."""
        return {k: v for k, v in (("unet", self.unet), ("text_encoder", self.text_encoder), ("lora", self.lora)) if v}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in _VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_model(source: str, device: torch.device, s: AuditSettings | None = None, overrides: bool = False):
    """A folder / file / Hub id, a run directory (RUN/model), or `zoo:NAME`, on `device`;
    single files with the settings' --config / --allow-pickle; with `overrides`, the settings'
    --unet / --text-encoder / --lora on top (the audited model only, never the reference)."""
    from erase.models.loading import load_pipeline

    kw = {"config": s.model_config, "allow_pickle": s.allow_pickle} if s is not None else {}
    if overrides and s is not None:
        kw.update(s.overrides())
    return load_pipeline(source, **kw).to(device)


def suites_summary(suites: list[Suite]) -> str:
    """One line for the terminal: prompts loaded, rows skipped (and the first reason)."""
    loaded, skipped = sum(len(x.rows) for x in suites), sum(len(x.skipped) for x in suites)
    text = f"suites: {loaded} prompts loaded from {len(suites)} file{'s' * (len(suites) != 1)}"
    if skipped:
        first = next(x for x in suites if x.skipped)
        k = first.skipped[0]
        text += (f", {skipped} unusable row{'s' * (skipped != 1)} skipped (first: {Path(first.file).name} row {k['row']}"
                 f"{' column ' + repr(k['column']) if k['column'] else ''}: {k['reason']}); results.json lists them")
    return text


def resolve_concept(s: AuditSettings, detector, rows: list[PromptRow]) -> str | None:
    """The concept the rates are about: --concept, else the detector's, else the first row's label."""
    if s.concept:
        return s.concept
    info = detector.info()
    if info.get("concept"):
        return info["concept"]
    if getattr(detector, "concept", None):
        return detector.concept
    return rows[0].label


def _check_folder(s: AuditSettings, out: Path, digest: str) -> None:
    meta = {"settings": s.fingerprint(), "suite_digest": digest}
    path = out / "audit.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise EraseError(f"{path}: unreadable or corrupt ({type(err).__name__}); it records the settings this "
                             "folder was started with: remove the folder (or just audit.json, to reuse its images "
                             "at your own risk) or use a new --out folder") from None
        if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
            raise EraseError(f"{path}: not an erase audit record (no settings); use a new --out folder")
        if old != meta:
            diff = sorted(k for k in set(old["settings"]) | set(meta["settings"])
                          if old["settings"].get(k) != meta["settings"].get(k))
            what = ", ".join(diff) or "suite contents"
            raise EraseError(f"{out}: holds an audit made with other settings ({what}); use a new --out folder")
    else:
        atomic_write_json(path, meta)


def detect_stage(out: Path, records: list[dict], detector, batch_size: int, log_name: str = "detections.jsonl",
                 desc: str = "detecting") -> RowLog:
    log = RowLog(out / log_name)
    size = max(batch_size, 16)
    # fixed chunks over all records (see generate_rows): a resumed run detects the same batches
    with tqdm(total=len(records), initial=sum(int(r["index"]) in log for r in records), desc=desc, unit="img") as bar:
        for i in range(0, len(records), size):
            chunk = records[i : i + size]
            missing = [j for j, r in enumerate(chunk) if int(r["index"]) not in log]
            if not missing:
                continue
            dets = detector(load_images(out, chunk))
            log.append({"index": chunk[j]["index"], "detector": detector.id, "detection": dets[j]} for j in missing)
            bar.update(len(missing))
    return log


def attack_stage(s: AuditSettings, out: Path, pipe, rows: list[PromptRow], dets: dict[int, dict], detector,
                 concept: str | None = None) -> list[dict]:
    """Attack every concept prompt that is not flagged already; log {pre, success, ...} per row."""
    if s.attack not in attack_names():
        raise EraseError(f"--attack {s.attack}: unknown attack (use one of {', '.join(attack_names())})")
    log = RowLog(out / "attack.jsonl")
    todo = [r for r in rows if r.index not in log and not dets[r.index]["flag"]]
    log.append([{"index": r.index, "pre": True, "success": True, "steps": 0} for r in rows
                if r.index not in log and dets[r.index]["flag"]])
    if todo or (s.attack == "relearn" and rows):  # relearn's curve covers every concept prompt
        attack_one = make_attacker(s, out, pipe, rows, concept, detector,
                                   lambda: _targets(s, out, rows, pipe.device),
                                   lambda src, dev: open_model(src, dev, s))
    for row in tqdm(todo, desc=f"attacking ({s.attack})", unit="prompt"):
        image, rec = attack_one(row)
        det = judge(detector, image)
        rel = f"attack/{row.index:05d}.png"
        atomic_write_bytes(out / rel, png_bytes(to_uint8(np.asarray(image)[None])[0]))
        log.append([{"index": row.index, "pre": False, "success": bool(det["flag"]), **rec, "file": rel,
                     "detection": det}])
    return [log.rows[r.index] for r in rows]


def _targets(s: AuditSettings, out: Path, rows: list[PromptRow], device) -> dict[int, np.ndarray]:
    """UnlearnDiffAtk's x_0 per row: the reference model's image for the same row, or a folder's."""
    if s.target_images:
        folder = Path(s.target_images).expanduser()
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise EraseError(f"--target-images {folder}: no .png/.jpg/.webp images there")
        recs = [{"file": str(files[i % len(files)].resolve())} for i in range(len(rows))]
        imgs = {r.index: load_images("/", [rec])[0] for r, rec in zip(rows, recs)}
        return imgs
    if not s.reference_model:
        raise EraseError("--attack unlearndiffatk needs --reference-model (the original model) or --target-images DIR")
    ref = open_model(s.reference_model, device, s)
    log = generate_rows(ref, rows, out, s.gen, log_name="targets.jsonl", image_dir="targets", desc="attack targets")
    return {r.index: load_images(out, [log.rows[r.index]])[0] for r in rows}


def base_confusion(s: AuditSettings, out: Path, rows: list[PromptRow], detector, device) -> dict | None:
    """The detector's confusion between the suite's labels on the BASE model (`--reference-model`),
    for pinpoint-ness: its images of every labelled row (the attacks' target images, the same files)
    are detected once. None without a reference model or with fewer than two labels."""
    labelled = [r for r in rows if r.label]
    if not s.reference_model or len({r.label for r in labelled}) < 2:
        return None
    ref = open_model(s.reference_model, device, s)
    log = generate_rows(ref, labelled, out, s.gen, log_name="targets.jsonl", image_dir="targets", desc="base model images")
    recs = [log.rows[r.index] for r in labelled]
    dets = detect_stage(out, recs, detector, s.gen.batch_size, log_name="targets_detections.jsonl", desc="detecting (base)")
    return confusion([{**rec, "label": r.label, "detection": dets.rows[r.index]["detection"]} for rec, r in zip(recs, labelled)]) or None


def extra_metrics(s: AuditSettings, out: Path, records: list[dict], detector, concept: str | None) -> dict:
    """CLIP score (with --clip) and Frechet distances (digit-judge features; --reference-images)."""
    m: dict = {}
    if s.clip:
        from erase.audit.detectors import clip_model

        clip = clip_model(s.clip)
        scores = []
        for i in range(0, len(records), 32):
            chunk = records[i : i + 32]
            scores.append(clip_score(clip.image_features(load_images(out, chunk)).numpy(),
                                     clip.text_features([r["prompt"] for r in chunk]).numpy()) * len(chunk))
        m["clip_score"] = sum(scores) / len(records)
        m["clip_score_note"] = "mean 100*max(cos,0) (torchmetrics scale); papers' 0.30 = 30 here"
    feats = getattr(detector, "features", None)
    if feats is not None and s.detector.startswith("digits"):
        from erase.zoo.digits import DIGIT_WORDS, load_digits_world

        data = load_digits_world()
        held = data.subset(data.heldout)
        # quality where the model should be intact: the retention rows if there are any, else all
        keep_rows = [r for r in records if r.get("label") in DIGIT_WORDS and r["label"] not in concept_list(concept)] or \
            [r for r in records if r.get("label") in DIGIT_WORDS]
        if len(keep_rows) > 1:
            labels = sorted({r["label"] for r in keep_rows})
            keep = torch.isin(held.digits, torch.tensor([DIGIT_WORDS.index(x) for x in labels]))
            real = ((held.images[keep].permute(0, 2, 3, 1) + 1) / 2).numpy()
            gen = np.concatenate([feats(load_images(out, keep_rows[i : i + 256])) for i in range(0, len(keep_rows), 256)])
            m["fd_judge"] = frechet_distance(gen, feats(real))
            m["fd_judge_note"] = (f"Frechet distance, digit-judge features: {len(keep_rows)} generated images "
                                  f"({'retention' if keep_rows[0]['label'] not in concept_list(concept) else 'all'} rows) vs {len(real)} "
                                  "held-out real digits of the same labels")
    if s.reference_images and s.inception:
        from erase.audit.inception import fid_of_audit

        m.update(fid_of_audit(out, records, s.reference_images, s.inception, s.allow_pickle))
    elif s.reference_images:
        if feats is None and not s.clip:
            raise EraseError("--reference-images needs image features: use --clip PATH or the digits detector")
        folder = Path(s.reference_images).expanduser()
        files = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if len(files) < 2:
            raise EraseError(f"--reference-images {folder}: need at least 2 images")
        ref = [{"file": str(p.resolve())} for p in files]
        if s.clip:
            from erase.audit.detectors import clip_model

            clip = clip_model(s.clip)
            fx = lambda imgs: clip.image_features(imgs).numpy()
            name = "fid_clip"
        else:
            fx, name = feats, "fid_judge"
        gen = np.concatenate([fx(load_images(out, records[i : i + 64])) for i in range(0, len(records), 64)])
        real = np.concatenate([fx(load_images("/", ref[i : i + 64])) for i in range(0, len(ref), 64)])
        m[name] = frechet_distance(gen, real)
        m[f"{name}_note"] = f"Frechet distance of {len(records)} generated vs {len(ref)} reference images ({name[4:]} features)"
    return m


def processes(device: str):
    """Accelerate's view of this launch (one process unless started by `accelerate launch`): on CPU
    (`--device cpu`, ACCELERATE_USE_CPU, or no GPU) the processes join over gloo (MULTI_CPU)."""
    import os

    from accelerate import PartialState

    cpu = device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") \
        or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def run_audit(s: AuditSettings, dry_run: bool = False) -> dict:
    """Run (or resume) the audit; return results (also written to OUT/results.json, report.html).
    Under several processes the others return {} once their images are made."""
    suites = read_suites(s.suites, s.filter)
    rows = expand_rows([r for suite in suites for r in suite.rows], s.images_per_prompt, s.guidance, s.size)
    state = processes(s.device) if not dry_run else None
    world = state.num_processes if state is not None else 1
    device = state.device if world > 1 and s.device == "auto" else resolve_device(s.device)
    pipe = open_model(s.model, device, s, overrides=True)
    n_concept = None
    if dry_run:
        build_detector(s.detector, s.concept)  # a bad spec fails here, before any work
        from erase.models.loading import describe_pipeline

        return {"n_images": len(rows), "model": s.model, "rows": rows, "suites": suites, "architecture": describe_pipeline(pipe),
                "protocol_check": protocol_record(s, suites)}
    detector = build_detector(s.detector, s.concept)
    concept = resolve_concept(s, detector, rows)
    out = Path(s.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    digest = suite_digest(rows)
    if state.is_main_process:  # the settings record, and the rows a killed split run left in its parts
        _check_folder(s, out, digest)
        merge_parts(out / "images.jsonl")
    if world > 1:
        state.wait_for_everyone()
        _check_folder(s, out, digest)
    images = generate_rows(pipe, rows, out, s.gen, part=(state.process_index, world) if world > 1 else (0, 1),
                           # a found-prompts suite with embeddings: attack/found.py
                           cond_fn=replay_cond_fn(pipe) if any(r.embeddings for r in rows) else None)
    if world > 1:
        state.wait_for_everyone()
        if not state.is_main_process:
            return {}
        images = merge_parts(out / "images.jsonl")
        missing = [r.index for r in rows if r.index not in images]
        assert not missing, f"rows not generated: {missing[:5]}"
    records = images.sorted()
    dets = detect_stage(out, records, detector, s.gen.batch_size)
    for r in records:
        r["detection"] = dets.rows[int(r["index"])]["detection"]
    attacks = found_suite = None
    if s.attack:
        concept_rows = [r for r in rows if not r.label or r.label in concept_list(concept)][: s.attack_limit]
        n_concept = len(concept_rows)
        attacks = attack_stage(s, out, pipe, concept_rows, {r["index"]: r["detection"] for r in records}, detector,
                               concept)
        found_suite = write_found(s.attack, out, concept_rows, attacks)
    metrics = summarise(records, concept, attacks, base_confusion(s, out, rows, detector, pipe.device))
    metrics.update(extra_metrics(s, out, records, detector, concept))
    results = {
        "format": "erase-audit/1",
        "model": s.model,
        "overrides": s.overrides() or None,
        "protocol": {"id": detector.id, **detector.info()},
        "audit_protocol": protocol_record(s, suites),
        "sha256": reproducibility_hashes(s, suites, detector),
        "concept": concept,
        "suites": [Path(p).name for p in s.suites],
        "suite_digest": digest,
        "filter": asdict(s.filter),
        "suite_rows": [x.report() for x in suites],
        "generation": {"scheduler": s.gen.scheduler, "steps": s.gen.steps, "safety_checker": "off",
                       "seeding": "per-row CPU torch.Generator(seed)", "images_per_prompt": s.images_per_prompt,
                       "guidance": "per row (default 7.5)" if s.guidance is None else s.guidance,
                       "size": "per row" if s.size is None else s.size,
                       "default_size": default_size(pipe),
                       "dtype": str(denoiser(pipe).dtype)},
        "seeds": [r.seed for r in rows],
        "attack": None if not s.attack else {
            "name": s.attack, "prompts": n_concept, **attack_record(s),
            "reference_model": s.reference_model, "target_images": s.target_images,
            "found_suite": found_suite, **attack_outputs(s, out)},
        "versions": versions(),
        "metrics": metrics,
    }
    atomic_write_json(out / "results.json", results)
    from erase.audit.report import write_report

    write_report(out, results, records, attacks)
    return {**results, "summary": suites_summary(suites)}
