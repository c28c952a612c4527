"""RUM: refine the forget set by difficulty, then unlearn the pieces in sequence.

Zhao et al., "What makes unlearning hard and what to do about it", NeurIPS 2024,
https://arxiv.org/abs/2406.01257. RUM (Refined-Unlearning Meta-algorithm) has two steps:

1. *Refine*: score every forget sample by how hard it is to unlearn and split the forget set
   into k groups (paper: k = 3, low / mid / high memorisation).
2. *Meta-unlearn*: unlearn the groups one after another, low -> mid -> high, each with the
   method and hyperparameters that suit it. In the official code the retain set of step i is
   the training set minus every group handled so far (``all - (S_1 u ... u S_i)``).

Scores (``rum.score``):

- ``loss`` (default): the ORIGINAL model's denoising loss on the sample's image, a cheap
  memorisation proxy. Per-sample diffusion losses are dominated by the random t and noise, so
  the estimate is made fair: every sample sees the SAME timesteps and the SAME noise tensors,
  and the loss is averaged over ``n_timesteps`` evenly spaced t. Measured on the digits model
  (scripts/measure_rum_scores.py, 32 forget samples, Spearman rho between two scorings with
  different noise seeds): shared draws rho = 0.55 / 0.80 / 0.93 / 0.98 for 1 / 2 / 5 / 10
  timesteps; independent draws per sample rho = -0.30 / 0.14 / 0.11 / 0.21 (a partition by
  them would be noise). Default: 10 timesteps (a one-time cost of 10 forward passes per sample).
  The ORDER (``rum.order``): the RUM paper's memorisation proxies read HIGH confidence as LOW
  memorisation, handled FIRST; a low denoising loss is the diffusion model's high confidence,
  so by default (``low_loss_first``) the groups run from the lowest original-model loss to the
  highest. ``high_loss_first`` is the opposite order (LoReUn's view: a low loss means the model
  knows the sample best, the hardest to forget, so it goes last). Note: the official proxy code
  (kairanzhao/RUM main_forget.py lines 374-450) names its groups by confidence level and
  main_rum_proxy.py runs them low -> mid -> high by that name; the order here follows the
  paper's reading, as the project's methods notes state it.
- ``entanglement``: how close the sample lies to the retain set in embedding space. The set-level
  entanglement score of the paper is

      ES = [mean_r ||z_r - mu_R||^2 + mean_f ||z_f - mu_F||^2] / [(||mu_R - mu||^2 + ||mu_F - mu||^2) / 2],
      mu = (mu_R + mu_F) / 2.

  Per sample we replace the forget-set spread by the sample's own squared distance to mu_F;
  the mean of the per-sample scores is exactly ES. ``difficulty = ES_i`` (more entangled =
  harder). Embeddings are CLIP text embeddings (EOS-pooled) of the prompts, or flattened VAE
  latents of the images (``rum.embedding``).

Sequencing lives in :func:`run_rum`, which drives one ordinary trainer run per group (the
trainer stays method-agnostic), in RUN/rum/phase_i: each phase sees only its group's forget
samples, with its own objective / weighting / steps / lr, and starts from the previous phase's
erased model -- which is also that phase's "original" (the model the phase's method erases
from, as each RUM step's algorithm starts from the current model). The forget and retain
IMAGES are fixed data: generated once by the true original model, written to
RUN/rum/data/ (PNG + caption), and shared by every phase. RUN/model is the last phase's model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Score = Literal["loss", "entanglement"]


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class RumGroupConfig:
    """What one difficulty group is unlearned with. Unset fields inherit the run's config.

    Attributes:
        objective: objective name for this group (e.g. "esd", "salun", "ga"); "none" skips the
            group (the official RUM examples leave the easiest group to the retain fine-tune).
        steps: optimisation steps of this group's phase.
        lr: learning rate of this group's phase.
        weighting: weighting scheme name for this group (e.g. "uniform", "loreun_d").
        overrides: any other `key=value` overrides of the run's config for this phase, as a
            mapping of dotted keys (e.g. ``{"objective.alpha": 0.5}``).
    """

    objective: str | None = None
    steps: int | None = None
    lr: float | None = None
    weighting: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps: must be >= 0, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


@dataclass
class RumConfig:
    """The `rum:` section of a training config. Absent or `groups: []` = no RUM.

    Attributes:
        groups: one entry per group, easiest first; k = len(groups) (paper: 3).
        score: "loss" (original model's denoising loss, memorisation proxy) or "entanglement".
        embedding: for "entanglement": "text" (CLIP EOS-pooled prompt embeddings) or "latent"
            (flattened VAE latents of the images).
        n_timesteps: timesteps averaged per sample for the "loss" score. One t gives a score
            dominated by where on the schedule it was drawn; several evenly spaced t, identical
            for every sample, rank samples by the model, not by the draw.
        fractions: optional group sizes as fractions of the forget set (sum 1); default equal.
        pending_in_retain: put the forget samples of groups not yet handled into the retain
            set of the current phase, as in the official classifier code (retain = all minus
            the handled groups). Off by default: when the groups share one concept (erasing
            "nudity", a digit), retaining the pending samples fights the erasure.
        seed: seed of the shared timesteps/noise of the score.
        order: for the "loss" score, which group runs first: "low_loss_first" (the paper's
            memorisation proxy: high confidence = low memorisation = first) or "high_loss_first".
    """

    groups: list[RumGroupConfig] = field(default_factory=list)
    score: Score = "loss"
    embedding: Literal["text", "latent"] = "text"
    n_timesteps: int = 10
    fractions: list[float] | None = None
    pending_in_retain: bool = False
    seed: int = 0
    order: Literal["low_loss_first", "high_loss_first"] = "low_loss_first"

    def __post_init__(self) -> None:
        if self.n_timesteps < 1:
            raise ValueError(f"n_timesteps: must be >= 1, got {self.n_timesteps}")
        if self.fractions is not None:
            if len(self.fractions) != len(self.groups):
                raise ValueError(f"fractions: {len(self.fractions)} fractions for {len(self.groups)} groups")
            if any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
                raise ValueError("fractions: must be positive and sum to 1")

    @property
    def enabled(self) -> bool:
        return len(self.groups) > 0


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------
def shared_timesteps(n: int, num_train_timesteps: int = 1000) -> Tensor:
    """`n` evenly spaced timesteps, centred in n equal bins of the schedule (e.g. 5 -> 100, 300, ... 900)."""
    return ((torch.arange(n, dtype=torch.float64) + 0.5) * num_train_timesteps / n).long().clamp(0, num_train_timesteps - 1)


@torch.no_grad()
def denoising_scores(models: Any, latents: Tensor, prompts: Sequence[str], n_timesteps: int = 5,
                     seed: int = 0, batch_size: int = 16) -> Tensor:
    """Per-sample denoising loss of the ORIGINAL model, [N], averaged over shared t and noise.

    l_i = (1/T) sum_k || eps_k - eps_o(sqrt(abar_tk) x_i + sqrt(1 - abar_tk) eps_k, c_i, t_k) ||^2 / d
    (for v-prediction models the target is v_k = sqrt(abar_tk) eps_k - sqrt(1 - abar_tk) x_i: `Models.target`)
    with the same (t_k, eps_k) for every sample i, so that differences between samples come from
    the model and the sample, not from the draw.
    """
    assert latents.shape[0] == len(prompts), f"{latents.shape[0]} latents for {len(prompts)} prompts"
    sched = models.noise_scheduler
    ts = shared_timesteps(n_timesteps, sched.config.num_train_timesteps)
    gen = torch.Generator().manual_seed(seed)
    noises = torch.randn((n_timesteps, *latents.shape[1:]), generator=gen)
    out = []
    with models.original():
        for start in range(0, len(prompts), batch_size):
            x0 = latents[start:start + batch_size].to(models.device, torch.float32)
            cond = models.encode(list(prompts[start:start + batch_size]))
            total = torch.zeros(x0.shape[0], device=models.device)
            for t, eps in zip(ts, noises):
                eps = eps.to(models.device).expand_as(x0)
                t_b = t.expand(x0.shape[0]).to(models.device)
                x_t = sched.add_noise(x0, eps, t_b)
                pred = models.pred(x_t.to(models.weight_dtype), t_b, cond).float()
                total += (pred - models.target(x0, eps, t_b)).pow(2).flatten(1).mean(1)
            out.append((total / n_timesteps).cpu())
    return torch.cat(out)


def entanglement_score(forget_z: Tensor, retain_z: Tensor) -> float:
    """Set-level ES of RUM (see module docstring): within-set spread over between-set separation."""
    return float(per_sample_entanglement(forget_z, retain_z).mean())


def per_sample_entanglement(forget_z: Tensor, retain_z: Tensor) -> Tensor:
    """ES_i = [mean_r ||z_r - mu_R||^2 + ||z_f,i - mu_F||^2] / [(||mu_R - mu||^2 + ||mu_F - mu||^2)/2], [N_f].

    Its mean over the forget set equals the set-level ES exactly.
    """
    zf, zr = forget_z.flatten(1).double(), retain_z.flatten(1).double()
    mu_f, mu_r = zf.mean(0), zr.mean(0)
    mu = (mu_f + mu_r) / 2
    spread_r = (zr - mu_r).pow(2).sum(1).mean()
    between = ((mu_r - mu).pow(2).sum() + (mu_f - mu).pow(2).sum()) / 2
    return ((spread_r + (zf - mu_f).pow(2).sum(1)) / between.clamp_min(1e-12)).float()


@torch.no_grad()
def text_embeddings(models: Any, prompts: Sequence[str], batch_size: int = 32) -> Tensor:
    """EOS-pooled CLIP text embeddings of the ORIGINAL text encoder, [N, D]."""
    tok = models.tokenizer
    out = []
    with models.original():
        for start in range(0, len(prompts), batch_size):
            ids = tok(list(prompts[start:start + batch_size]), padding="max_length", truncation=True,
                      max_length=tok.model_max_length, return_tensors="pt").input_ids.to(models.device)
            out.append(models.text_encoder(ids).pooler_output.float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# partition
# ----------------------------------------------------------------------------------------------
def partition(difficulty: Tensor, k: int = 3, fractions: Sequence[float] | None = None) -> list[Tensor]:
    """Indices of the forget set split into k groups of increasing difficulty (easiest first).

    Sizes are equal up to one (or follow `fractions`); ties are broken by index, so the split is
    deterministic. Every index appears in exactly one group.
    """
    n = difficulty.shape[0]
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    order = torch.sort(difficulty.double(), stable=True).indices
    if fractions is None:
        return [g.clone() for g in torch.tensor_split(order, k)]
    bounds = torch.tensor([0.0, *fractions], dtype=torch.float64).cumsum(0)
    edges = (bounds * n).round().long().tolist()
    edges[-1] = n
    return [order[edges[i]:edges[i + 1]].clone() for i in range(k)]


def difficulty_from_scores(scores: Tensor, score: Score, order: str = "low_loss_first") -> Tensor:
    """Convert a raw score to the partition key (groups run in increasing key): ES -> ES (least
    entangled first); loss -> loss ("low_loss_first", the paper's proxy order) or -loss."""
    if score != "loss":
        return scores
    return scores if order == "low_loss_first" else -scores


def group_overrides(group: RumGroupConfig) -> dict[str, Any]:
    """The group's settings as a flat {dotted key: value} mapping (None fields left out)."""
    out = {k: v for k, v in dataclasses.asdict(group).items() if k != "overrides" and v is not None}
    out.update(group.overrides)
    return out


# ----------------------------------------------------------------------------------------------
# sequence: one ordinary trainer run per group
# ----------------------------------------------------------------------------------------------
def _set_dotted(d: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[last] = value


def phase_config_dict(base: dict, group: RumGroupConfig, *, model: str, forget: dict, retain: dict | None,
                      output_dir: str) -> dict:
    """The config (plain dict) of one group's phase: the run's config with the group's settings.

    A group that switches to another objective starts from that objective's defaults (the run's
    `objective:` options belong to the run's method), then applies its own `overrides`.
    """
    import copy

    d = copy.deepcopy(base)
    d.pop("rum", None)
    if group.objective is not None and group.objective != d.get("method"):
        d["method"] = group.objective
        d["objective"] = {}
    if group.steps is not None:
        _set_dotted(d, "train.steps", group.steps)
    if group.lr is not None:
        _set_dotted(d, "train.lr", group.lr)
    if group.weighting is not None:
        _set_dotted(d, "weighting.kind", group.weighting)
    for k, v in group.overrides.items():
        _set_dotted(d, k, v)
    d["model"] = model
    d.setdefault("data", {})["forget"] = forget
    if retain is not None:
        d["data"]["retain"] = retain
    d["output_dir"] = output_dir
    return d


def _write_images(models: Any, latents: Tensor, captions: Sequence[str], ids: Sequence[int], folder: Any) -> None:
    """PNG + caption sidecar per sample (names = sample ids, so sorted order = id order), atomically."""
    import numpy as np
    from PIL import Image

    from erase.io import atomic_dir

    with atomic_dir(folder) as tmp:
        for start in range(0, len(ids), 16):
            chunk = list(ids[start:start + 16])
            imgs = models.decode(latents[torch.tensor(chunk)].to(models.device)).cpu()
            for i, img in zip(chunk, imgs):
                arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                Image.fromarray(arr).save(tmp / f"{i:05d}.png")
                (tmp / f"{i:05d}.txt").write_text(captions[i], encoding="utf-8")


def _state() -> Any:
    """Accelerate's process state, initialised as the trainer's Accelerator will (it is a singleton:
    a PartialState made without the launcher's CPU flag would turn a 2-process CPU launch into two
    independent single-process runs)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _frozen_models(cfg: Any, where: str) -> Any:
    """The run's ORIGINAL model as `Models` (nothing trained: `original()` is the model itself)."""
    from erase.models.core import Models
    from erase.train.model import load_model

    pipe = load_model(cfg.model, f"{where}: model", cfg.model_config, cfg.allow_pickle)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.to(device).requires_grad_(False).eval()
    return Models.from_pipeline(pipe, device=device)


def score_and_partition(cfg: Any, run_dir: Any, where: str) -> dict[str, Any]:
    """Score the forget set with the ORIGINAL model, split it, write each group's images.

    Writes RUN/rum/partition.json and RUN/rum/data/{group_i,retain}/ (PNG + caption per sample,
    generated once by the original model, so every phase unlearns the same data); returns the
    partition record. Runs on the main process; the others wait.
    """
    import json
    from pathlib import Path

    from erase.io import atomic_write_json
    from erase.train.data import RunData

    state = _state()
    rum: RumConfig = cfg.rum
    root = Path(run_dir) / "rum"
    record_path = root / "partition.json"
    if state.is_main_process and not record_path.is_file():
        models = _frozen_models(cfg, where)
        has_retain = bool(cfg.data.retain.prompts or cfg.data.retain.file or cfg.data.retain.images)
        needs = {"forget_images"} | ({"retain_images"} if has_retain else set())
        data = RunData(cfg.data, frozenset(needs), cfg.train.seed, Path(run_dir) / "cache", cache_key=cfg.model, where=where)
        data.prepare(models)
        if rum.score == "loss":
            raw = denoising_scores(models, data.forget_latents, data.forget_prompts, rum.n_timesteps, rum.seed)
        else:
            if not has_retain:
                raise ValueError("rum.score: entanglement needs retain data (data.retain.prompts)")
            if rum.embedding == "text":
                zf, zr = text_embeddings(models, data.forget_prompts), text_embeddings(models, data.retain_prompts)
            else:
                zf, zr = data.forget_latents.flatten(1), data.retain_latents.flatten(1)
            raw = per_sample_entanglement(zf, zr)
        groups = partition(difficulty_from_scores(raw, rum.score, rum.order), len(rum.groups), rum.fractions)
        for gi, ids in enumerate(groups):
            _write_images(models, data.forget_latents, data.forget_prompts, ids.tolist(), root / "data" / f"group_{gi}")
        if has_retain:
            _write_images(models, data.retain_latents, data.retain_prompts, list(range(len(data.retain_prompts))),
                          root / "data" / "retain")
        record = {
            "score": rum.score, "embedding": rum.embedding if rum.score == "entanglement" else None,
            "order": (f"loss: {rum.order.replace('_', ' ')}" if rum.score == "loss" else "entanglement: lowest first"),
            "groups": [{"ids": ids.tolist(), "prompts": [data.forget_prompts[i] for i in ids.tolist()],
                        "score_min": float(raw[ids].min()) if len(ids) else None,
                        "score_max": float(raw[ids].max()) if len(ids) else None,
                        "score_mean": float(raw[ids].mean()) if len(ids) else None} for ids in groups],
            "retain_prompts": list(data.retain_prompts) if has_retain else [],
            "scores": raw.tolist(),
        }
        atomic_write_json(record_path, record)
        del models, data
    state.wait_for_everyone()
    return json.loads(record_path.read_text())


def phase_configs(cfg: Any, record: dict[str, Any], run_dir: Any, where: str) -> list[tuple[int, Any]]:
    """(group index, RunConfig) of every phase to run, in order; groups with objective "none" are skipped.

    Phase i starts from phase i-1's erased model. Its forget set is group i's images; its retain
    set is the run's retain data plus, with `pending_in_retain`, the groups not yet handled --
    never a group already handled.
    """
    from pathlib import Path

    from erase.config import from_dict, to_dict
    from erase.train.config import RunConfig

    state = _state()
    is_main = state.is_main_process
    rum: RumConfig = cfg.rum
    root = Path(run_dir) / "rum"
    base = to_dict(cfg)
    out, model = [], cfg.model
    for gi, group in enumerate(rum.groups):
        if group.objective == "none":
            continue
        g = record["groups"][gi]
        if not g["ids"]:
            continue
        forget = {"prompts": g["prompts"], "templates": ["{}"], "samples_per_prompt": 1,
                  "images": str(root / "data" / f"group_{gi}")}
        retain = None
        pending = [j for j in range(gi + 1, len(rum.groups)) if record["groups"][j]["ids"]] if rum.pending_in_retain else []
        if record["retain_prompts"] or pending:
            retain = {"prompts": list(record["retain_prompts"]) + [p for j in pending for p in record["groups"][j]["prompts"]],
                      "templates": ["{}"], "samples_per_prompt": 1}
            if pending:
                folder = root / "data" / f"retain_for_group_{gi}"
                if is_main and not folder.is_dir():
                    _merge_folders([root / "data" / "retain"] + [root / "data" / f"group_{j}" for j in pending], folder)
                retain["images"] = str(folder)
            elif (root / "data" / "retain").is_dir():
                retain["images"] = str(root / "data" / "retain")
        phase_dir = root / f"phase_{gi}"
        d = phase_config_dict(base, group, model=model, forget=forget, retain=retain, output_dir=str(phase_dir))
        out.append((gi, from_dict(RunConfig, d, f"{where}: rum.groups[{gi}]")))
        model = str(phase_dir / "model")
    state.wait_for_everyone()  # merged retain folders are written by the main process
    return out


def _merge_folders(folders: list[Any], dest: Any) -> None:
    import shutil

    from erase.io import atomic_dir

    with atomic_dir(dest) as tmp:
        for k, folder in enumerate(folders):
            if folder.is_dir():
                for f in sorted(folder.iterdir()):
                    shutil.copy2(f, tmp / f"{k:02d}_{f.name}")


def check_groups(cfg: Any, where: str) -> None:
    """Fail fast (one line) on a bad group: unknown objective or options, or nothing to run."""
    from erase.errors import EraseError
    from erase.objectives import build_objective

    rum: RumConfig = cfg.rum
    if all(g.objective == "none" for g in rum.groups):
        raise EraseError(f"{where}: rum.groups: every group has objective none; nothing to unlearn")
    for gi, g in enumerate(rum.groups):
        if g.objective == "none":
            continue
        method = g.objective or cfg.method
        opts = dict(cfg.objective) if method == cfg.method else {}
        opts.update({k.split(".", 1)[1]: v for k, v in g.overrides.items() if k.startswith("objective.")})
        build_objective(method, opts, f"{where}: rum.groups[{gi}]")


def _phase_trainer_class() -> type:
    from erase.train.trainer import Trainer

    class PhaseTrainer(Trainer):
        """A Trainer whose end keeps the process group alive: `Accelerator.end_training()` destroys it,
        and re-creating one per phase over the same rendezvous is flaky. run_rum ends it once."""

        def _accelerator(self):
            acc = super()._accelerator()

            def end_training() -> None:
                for tracker in acc.trackers:
                    tracker.finish()

            acc.end_training = end_training
            return acc

    return PhaseTrainer


def run_rum(cfg: Any, run_dir: Any, where: str = "<config>", resume: str | None = None) -> dict[str, Any]:
    """Score, partition, then run one trainer phase per group; RUN/model is the last phase's model."""
    import json
    import shutil
    import time
    from pathlib import Path

    from erase.config import dump_yaml
    from erase.errors import EraseError
    from erase.io import atomic_dir, atomic_write_json, atomic_write_text
    t0 = time.time()
    _PhaseTrainer = _phase_trainer_class()
    run_dir = Path(run_dir)
    check_groups(cfg, where)
    root = run_dir / "rum"
    if not resume and any(root.glob("phase_*/run.json")):
        raise EraseError(f"{run_dir}: already has RUM phases; pass --resume latest to continue, or choose another --out")
    state = _state()
    if state.is_main_process:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        atomic_write_json(run_dir / "run.json", {"status": "running", "method": "rum", "base_model": cfg.model})
    try:
        record = score_and_partition(cfg, run_dir, where)
    except ValueError as err:
        raise EraseError(f"{where}: {err}") from None
    phases = phase_configs(cfg, record, run_dir, where)
    results = []
    for gi, pcfg in phases:
        phase_dir = Path(pcfg.output_dir)
        done = phase_dir / "run.json"
        if done.is_file() and json.loads(done.read_text()).get("status") == "completed" and (phase_dir / "model").is_dir():
            info = json.loads(done.read_text())
        else:
            info = _PhaseTrainer(pcfg, phase_dir, f"{where}: rum.groups[{gi}]").run(resume="latest" if resume else None)
            state.wait_for_everyone()
            info = info or json.loads(done.read_text())  # other ranks: the main process's record
        results.append({"group": gi, "method": pcfg.method, "steps": pcfg.train.steps, "lr": pcfg.train.lr,
                        "weighting": pcfg.weighting.kind, "size": len(record["groups"][gi]["ids"]),
                        "run_dir": str(phase_dir), "status": info.get("status"), "metrics": info.get("metrics", {})})
    last = Path(phases[-1][1].output_dir) / "model"
    info: dict[str, Any] = {}
    if state.is_main_process:
        with atomic_dir(run_dir / "model") as tmp:
            shutil.copytree(last, tmp, dirs_exist_ok=True)
        kinds = sorted({r["weighting"] for r in results})
        by_id = sorted((i, p) for g in record["groups"] for i, p in zip(g["ids"], g["prompts"]))
        forget_prompts = list(dict.fromkeys(p for _, p in by_id))  # in config order, file prompts too
        info = {
            "status": "completed", "method": "rum", "base_model": cfg.model,
            "objective": {"name": "rum: " + " -> ".join(r["method"] for r in results)},
            "weighting": {"kind": "/".join(kinds)},
            "concept": cfg.concept or forget_prompts[0], "forget_prompts": forget_prompts,
            "rum": {"score": record["score"], "groups": [
                {k: g[k] for k in ("ids", "score_min", "score_max", "score_mean")} for g in record["groups"]],
                "pending_in_retain": cfg.rum.pending_in_retain, "phases": results},
            "outputs": {"model": str(run_dir / "model")}, "wall_time_s": round(time.time() - t0, 2),
        }
        atomic_write_json(run_dir / "run.json", info)
    state.wait_for_everyone()
    if state.num_processes > 1:
        state.destroy_process_group()
    return info
