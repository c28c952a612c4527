"""Classifier unlearning methods as objectives that return a VECTOR of per-sample forget losses.

Every method with a forget loss is weighted by the same `erase.weighting.Weighting` as the
diffusion trainer: uniform, LoReUn-s (l_i = the ORIGINAL model's cross-entropy on forget sample i,
computed once) or LoReUn-d (l_i = the CURRENT model's cross-entropy on sample i, read off the same
forward pass). The forget term of a step is sum_i w_i f_i / B_f over the step's forget batch.

Each loop is the one its official repository runs (file:line below; repositories read:
OPTML-Group/Unlearn-Saliency `Classification/`, kairanzhao/RUM, meghdadk/SCRUB, ZhengbaoHe/NatMU
`sample-wise/`). `_batches` yields the steps of an epoch:

- Retrain: the original recipe (erase.classification.train.TrainRecipe), from a fresh
  initialisation, on the retain set (exact unlearning).  Original: the model before unlearning.
- FT: retain batches (Unlearn-Saliency `unlearn/FT.py:44-47`).  l1-sparse: FT + alpha (1 - epoch/E) ||theta||_1
  (`unlearn/FT.py:125-134`, FT_l1).
- GA: forget batches only, f_i = -CE(x_i, y_i) (`unlearn/GA.py:107-128`).
- RL: per epoch a pass over the forget set in full batches with labels drawn uniformly at random
  FOR EVERY BATCH, then a pass over the retain set (`unlearn/RL.py:123-159`, cifar10 branch;
  the draw is line 125). f_i = CE(x_i, random y_i).
- SalUn: RL through the saliency mask: |gradient of the forget CE at the original weights|, the top
  `mask_ratio` (50%) of weights are trainable; gradients of the others are zeroed and the weights
  themselves put back after every step, momentum included (`unlearn/RL.py:11-34, 84-90`).
- NegGrad+: every retain batch beside a forget batch, the forget batches cycling
  (`zip(r_loader, cycle(f_loader))`, RUM `unlearn/neggrad.py:23`); loss alpha CE(retain) - (1 - alpha) CE(forget)
  (`neggrad.py:42`), the forget part LoReUn-weighted.
- SCRUB: per epoch e = 0, 1, ...: if e <= msteps a max pass over the forget set, f_i = -KL_T(teacher || student)_i,
  then a min pass on the retain set, gamma CE + alpha KL_T (kd_T 4) (RUM `unlearn/scrub.py:146-150`:
  `epoch <= args.msteps`, so msteps + 1 max epochs; the losses `scrub.py:59-62`). The rate steps x0.1 at
  50/80/90% of the epochs (meghdadk/SCRUB `small_scale_unlearning.ipynb`, lr_decay_epochs [5, 8, 9] of 10).
- NatMU: for each forget sample the original model's top-k classes other than its own (k = 4;
  `sample-wise/natmu.py:52-63`); for the j-th a retain sample of that class, drawn WITHOUT replacement
  (a permutation of the retain set matched to the labels, `natmu.py:65-75`); hybrid
  x' = m_j x_f + (1 - m_j) x_r with the j-th of NatMU's four ramp masks shifted by `delta`, clipped to
  [0, 1] (`utils/generate_patch_data.py:4-23`, `natmu.py:115`), labelled with the RETAIN class. One
  shuffled data set of retain + hybrids (`natmu.py:122-134`), AdamW, cosine per step (`natmu.py:196`);
  f = the hybrids' CE, weighted by their forget sample's LoReUn weight.
- RUM: the forget set split by the memorisation proxy (`erase.rum.partition`) into low / mid / high,
  unlearned in that order with NegGrad+, each step's retain set the training set minus the groups done
  (RUM `main_forget.py:444-453`); alpha 0.99 / 0.97 / 0.97, 5 / 5 / 10 epochs, the last group at a
  tenth of the rate (`main_rum_proxy.py:51-53`).

Schedules (`erase.classification.train.lr_factor`): constant for FT, l1-sparse, GA, RL, SalUn,
NegGrad+ and RUM (their MultiStepLR milestones 91,136 are never reached in <= 10 epochs:
Unlearn-Saliency `unlearn/impl.py:95-97`, RUM `unlearn/impl.py:253-255`), SCRUB's steps, NatMU's cosine.
Augmentation (random crop + horizontal flip, `train.augment`): the SalUn repository unlearns with it
(`--no-aug` off by default, `Classification/arg_parser.py:80`; `dataset.py:549-555`): FT, l1-sparse,
GA, RL, SalUn. RUM's runs pass `--no_aug` (`main_rum_proxy.py:51-53`): NegGrad+, SCRUB, RUM without.
NatMU augments the retain images, not the hybrids (`utils/data.py:130-149`, `natmu.py:127-128`).

Deviations that remain (digits scale): batch 128 (official 256; NatMU 128), so a digits forget set
(~126 samples) is one forget batch; epochs as the official scripts, learning rates tuned on the
validation split (erase.classification.bench); NatMU's re-balancing of over-used partner classes
(`natmu.py:97-107`) is left out (it acts only when one class is the top-1 of most forget samples);
RL's random labels come from torch's generator, not numpy's; SCRUB's alpha / gamma / msteps are RUM's
README values, not the SCRUB notebook's (alpha 0.5, gamma 1, msteps 3, kd_T 2).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erase.classification.data import Dataset, Split
from erase.classification.train import (
    TrainRecipe,
    augment,
    fit,
    logits_of,
    lr_factor,
    make_optimizer,
    per_sample_loss,
    set_lr,
)
from erase.rum import partition
from erase.weighting import Weighting, WeightingConfig

Mode = Literal["retain", "forget", "cycle", "sequential", "alternate", "concat"]


@dataclass(frozen=True)
class MethodConfig:
    """One method's hyperparameters. `alpha` is the method's one trade-off knob (NegGrad+: weight of
    the retain loss; l1-sparse: the l1 coefficient; SCRUB: the retain KL weight)."""

    epochs: int
    lr: float
    optimizer: Literal["sgd", "adamw"] = "sgd"
    alpha: float = 0.0
    batch_size: int = 128
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine", "scrub", "step"] = "constant"
    mask_ratio: float = 0.5  # SalUn
    msteps: int = 2  # SCRUB: max passes in epochs 0..msteps (msteps + 1 of them, as RUM's scrub.py)
    gamma: float = 0.99  # SCRUB retain CE weight
    kd_t: float = 4.0  # SCRUB temperature
    k: int = 4  # NatMU classes per forget sample
    delta: float = -0.19  # NatMU mask shift (official CIFAR-10 value)

    def scaled(self, factor: float) -> MethodConfig:
        """The same method with `factor` x the epochs (at least 1; SCRUB keeps msteps < epochs)."""
        e = max(1, round(self.epochs * factor))
        return dataclasses.replace(self, epochs=e, msteps=min(self.msteps, e - 1))


@dataclass
class Task:
    """One unlearning problem: the data, which training samples to forget, and the original model."""

    data: Dataset
    forget_idx: Tensor
    original: nn.Module
    memorisation: Tensor  # [N_train] RUM proxy: 1 - mean true-class confidence over training epochs
    test: Split  # the test split the metrics use (for a whole forgotten class: the other classes only)
    recipe: TrainRecipe = field(default_factory=TrainRecipe)

    @property
    def retain_idx(self) -> Tensor:
        keep = torch.ones(len(self.data.train), dtype=torch.bool)
        keep[self.forget_idx] = False
        return torch.nonzero(keep).flatten()

    @property
    def forget(self) -> Split:
        return self.data.train.subset(self.forget_idx)

    @property
    def retain(self) -> Split:
        return self.data.train.subset(self.retain_idx)


@dataclass
class ForgetSet:
    """What a method trains on in place of the forget set: inputs, training targets, the true labels,
    and each item's forget-sample id (0..N_f-1; NatMU has k hybrids per id)."""

    x: Tensor
    target: Tensor
    true: Tensor
    ids: Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def subset(self, i: Tensor) -> ForgetSet:
        return ForgetSet(self.x[i], self.target[i], self.true[i], self.ids[i])


def per_sample_kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
    """KL(softmax(teacher / t) || softmax(student / t)) * t^2 per sample (SCRUB's DistillKL)."""
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="none").sum(1) * t * t


class Objective:
    """A method: how it builds its forget set, batches an epoch and forms a step's loss; the loop is
    `run_objective`. `augment_forget` / `augment_retain`: crop + flip on that side's batches."""

    mode: Mode = "cycle"
    has_forget_loss: bool = True
    augment_forget: bool = False
    augment_retain: bool = False

    def __init__(self, cfg: MethodConfig, task: Task, seed: int):
        self.cfg, self.task, self.seed = cfg, task, seed
        self.gen = torch.Generator().manual_seed(seed)

    def forget_set(self, gen: torch.Generator) -> ForgetSet:
        f = self.task.forget
        return ForgetSet(f.x, f.y, f.y, torch.arange(len(f)))

    def forget_terms(self, model: nn.Module, fb: ForgetSet) -> tuple[Tensor, Tensor]:
        """(per-sample forget losses f_i with gradient, difficulties l_i detached: CE on the true label)."""
        raise NotImplementedError

    def retain_term(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    def combine(self, forget: Tensor | None, retain: Tensor | None, nf: int, nr: int) -> Tensor:
        """Default: one concatenated data set (NatMU): a sample-count weighted mean; a step with one
        side only (GA, RL, SalUn, SCRUB, FT) is that side's term."""
        if forget is None:
            return retain
        if retain is None:
            return forget
        return (nf * forget + nr * retain) / (nf + nr)

    def prepare(self, model: nn.Module) -> None:
        """Anything computed once at the original weights (SalUn's mask)."""

    def after_backward(self, model: nn.Module) -> None:
        """A hook between backward and the optimiser step (SalUn masks gradients)."""

    def after_step(self, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """A hook after the optimiser step (SalUn puts the frozen weights back)."""

    def regulariser(self, model: nn.Module, epoch: int) -> Tensor | None:
        return None


class FT(Objective):
    mode: Mode = "retain"
    has_forget_loss = False
    augment_retain = True


class L1Sparse(FT):
    def regulariser(self, model: nn.Module, epoch: int) -> Tensor | None:
        coef = self.cfg.alpha * (1 - epoch / self.cfg.epochs)
        return coef * sum(p.abs().sum() for p in model.parameters())


class GA(Objective):
    mode: Mode = "forget"
    augment_forget = True

    def forget_terms(self, model, fb):
        ce = F.cross_entropy(model(fb.x), fb.true, reduction="none")
        return -ce, ce.detach()


class NegGradPlus(GA):
    mode: Mode = "cycle"
    augment_forget = False  # RUM runs with --no_aug

    def combine(self, forget, retain, nf, nr):
        a = self.cfg.alpha
        return (a * retain if retain is not None else 0.0) + ((1 - a) * forget if forget is not None else 0.0)


class RL(Objective):
    mode: Mode = "sequential"
    augment_forget = augment_retain = True

    def forget_terms(self, model, fb):
        labels = torch.randint(0, self.task.data.num_classes, (len(fb),), generator=self.gen).to(fb.true.device)
        logits = model(fb.x)  # a fresh random label for every sample of every batch (SalUn RL.py:125)
        return (F.cross_entropy(logits, labels, reduction="none"),
                F.cross_entropy(logits.detach(), fb.true, reduction="none"))


class SalUn(RL):
    masks: dict[str, Tensor]
    theta0: dict[str, Tensor]

    def prepare(self, model):
        """Top `mask_ratio` of |d CE(forget) / d theta| at the original weights, over all weights at once."""
        model.zero_grad(set_to_none=True)
        f = self.task.forget
        for i in range(0, len(f), 256):
            F.cross_entropy(model(f.x[i:i + 256]), f.y[i:i + 256], reduction="sum").backward()
        grads = {n: p.grad.detach().abs() for n, p in model.named_parameters() if p.grad is not None}
        flat = torch.cat([g.flatten() for g in grads.values()])
        keep = max(1, round(self.cfg.mask_ratio * flat.numel()))
        threshold = torch.topk(flat, keep).values.min()
        self.masks = {n: (g >= threshold).float() for n, g in grads.items()}
        self.theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)

    def after_backward(self, model):
        for n, p in model.named_parameters():
            if p.grad is not None:
                p.grad.mul_(self.masks.get(n, torch.zeros_like(p.grad)))

    @torch.no_grad()
    def after_step(self, model, opt):
        """Frozen weights back to their original values, their momentum zeroed (weight decay moved them)."""
        for n, p in model.named_parameters():
            m = self.masks.get(n, torch.zeros_like(p))
            p.mul_(m).add_(self.theta0[n] * (1 - m))
            state = opt.state.get(p)
            if state and "momentum_buffer" in state and state["momentum_buffer"] is not None:
                state["momentum_buffer"].mul_(m)


class SCRUB(Objective):
    mode: Mode = "alternate"

    def forget_terms(self, model, fb):
        logits = model(fb.x)
        with torch.no_grad():
            teacher = self.task.original(fb.x)
        return -per_sample_kl(logits, teacher, self.cfg.kd_t), F.cross_entropy(logits.detach(), fb.true, reduction="none")

    def retain_term(self, model, x, y):
        logits = model(x)
        with torch.no_grad():
            teacher = self.task.original(x)
        return self.cfg.gamma * F.cross_entropy(logits, y) + self.cfg.alpha * per_sample_kl(logits, teacher, self.cfg.kd_t).mean()


def ramp_masks(h: int, w: int, delta: float) -> Tensor:
    """NatMU's four masks [4, h, w] (weight of the FORGET image): a tent rising 0 -> 1 over the top
    half and falling over the bottom half, the same across columns, and each one's complement-like
    mirror; then + delta, clipped to [0, 1] (`sample-wise/utils/generate_patch_data.py:4-23`)."""

    def tent(n: int) -> Tensor:
        half = n // 2
        up = torch.arange(half, dtype=torch.float32) / half
        down = (half - 1) / half - torch.arange(n - half, dtype=torch.float32) / half
        return torch.cat([up, down])

    rows, cols = tent(h), tent(w)
    rows_inv = (h // 2 - 1) / (h // 2) - rows
    cols_inv = (w // 2 - 1) / (w // 2) - cols
    m = torch.stack([rows[:, None].expand(h, w), cols[None, :].expand(h, w),
                     rows_inv[:, None].expand(h, w), cols_inv[None, :].expand(h, w)])
    return (m + delta).clamp(0, 1)


def partners_without_replacement(retain_y: Tensor, wanted: Tensor, gen: torch.Generator) -> Tensor:
    """For each wanted class, a distinct retain index of that class: NatMU's matching of a shuffled
    retain set to the labels (`natmu.py:65-75`), each retain sample used at most once. When a class
    runs out (more hybrids than retain samples of it), its permutation starts again."""
    out = torch.empty(len(wanted), dtype=torch.long)
    for c in wanted.unique().tolist():
        slots = torch.nonzero(wanted == c).flatten()
        pool = torch.nonzero(retain_y == c).flatten()
        if len(pool) == 0:
            out[slots] = -1
            continue
        reps = math.ceil(len(slots) / len(pool))
        order = torch.cat([pool[torch.randperm(len(pool), generator=gen)] for _ in range(reps)])
        out[slots] = order[: len(slots)]
    return out


class NatMU(Objective):
    mode: Mode = "concat"
    augment_retain = True

    def forget_set(self, gen):
        t, cfg = self.task, self.cfg
        f, r = t.forget, t.retain
        logits = logits_of(t.original, f.x)
        logits.scatter_(1, f.y[:, None], float("-inf"))  # never the sample's own class
        k = min(cfg.k, t.data.num_classes - 1)
        top = torch.topk(logits, k, dim=1).indices.cpu()  # [N_f, k]
        masks = ramp_masks(f.x.shape[-2], f.x.shape[-1], cfg.delta).to(f.x.device)
        # hybrid order as NatMU's np.repeat: forget sample i's k hybrids are consecutive, the j-th with mask j
        ids = torch.arange(len(f)).repeat_interleave(k)
        js = torch.arange(k).repeat(len(f))
        partner = partners_without_replacement(r.y.cpu(), top[ids, js], gen)
        ok = partner >= 0
        ids, js, partner = ids[ok], js[ok], partner[ok]
        m = masks[js % len(masks)][:, None]  # [n, 1, h, w]: every channel alike
        x = m * f.x[ids] + (1 - m) * r.x[partner]
        return ForgetSet(x, r.y[partner], f.y[ids], ids)

    def forget_terms(self, model, fb):
        hybrid = F.cross_entropy(model(fb.x), fb.target, reduction="none")
        f = self.task.forget
        with torch.no_grad():  # LoReUn-d's l_i: the current model's loss on the hybrid's forget sample
            difficulty = F.cross_entropy(model(f.x[fb.ids]), f.y[fb.ids], reduction="none")
        return hybrid, difficulty


OBJECTIVES: dict[str, type[Objective]] = {
    "FT": FT, "GA": GA, "RL": RL, "NegGrad+": NegGradPlus, "SalUn": SalUn, "l1-sparse": L1Sparse,
    "SCRUB": SCRUB, "NatMU": NatMU,
}
# "Original" is the model before unlearning (no method at all): the gap that doing nothing leaves.
METHODS: tuple[str, ...] = ("Retrain", "Original", *OBJECTIVES, "RUM")
FORGET_LOSS_METHODS: tuple[str, ...] = tuple(m for m in METHODS if m == "RUM" or (m in OBJECTIVES and OBJECTIVES[m].has_forget_loss))

# Digits: epochs and the other knobs are the official scripts' values; `lr` is the CENTRE of the
# learning-rate grid that `erase.classification.bench` searches on the validation split for every
# (method, weighting, forget set) (bench.LR_GRID: x1/3, x1, x3), fixed before the test split is read.
DEFAULTS: dict[str, MethodConfig] = {
    "FT": MethodConfig(epochs=10, lr=0.03),
    "l1-sparse": MethodConfig(epochs=10, lr=0.03, alpha=3e-4),
    "GA": MethodConfig(epochs=5, lr=0.03),
    "NegGrad+": MethodConfig(epochs=5, lr=0.03, alpha=0.99),
    "RL": MethodConfig(epochs=10, lr=3e-3),
    "SalUn": MethodConfig(epochs=10, lr=3e-3, mask_ratio=0.5),
    "SCRUB": MethodConfig(epochs=5, lr=0.03, msteps=2, alpha=0.001, gamma=0.99, schedule="scrub"),
    "NatMU": MethodConfig(epochs=5, lr=3e-3, optimizer="adamw", weight_decay=0.002, schedule="cosine"),
    "RUM": MethodConfig(epochs=5, lr=0.03, alpha=0.97),  # NegGrad+ per group; see run_rum
}
# CIFAR-10 (ResNet-18): the official scripts' values (RUM README / main_rum_proxy.py, SalUn README,
# NatMU scripts/cifar10/natmu.sh), untuned here; batch 256 as in RUM and SalUn (NatMU: 128).
PAPER_DEFAULTS: dict[str, MethodConfig] = {
    "FT": MethodConfig(epochs=10, lr=0.01, batch_size=256),
    "l1-sparse": MethodConfig(epochs=10, lr=0.01, alpha=5e-4, batch_size=256),
    "GA": MethodConfig(epochs=5, lr=1e-4, batch_size=256),
    "NegGrad+": MethodConfig(epochs=5, lr=0.01, alpha=0.99, batch_size=256),
    "RL": MethodConfig(epochs=10, lr=0.013, batch_size=256),
    "SalUn": MethodConfig(epochs=10, lr=0.013, mask_ratio=0.5, batch_size=256),
    "SCRUB": MethodConfig(epochs=5, lr=5e-3, msteps=4, alpha=0.001, gamma=0.99, batch_size=256, schedule="scrub"),
    "NatMU": MethodConfig(epochs=5, lr=1e-3, optimizer="adamw", weight_decay=0.002, batch_size=128, schedule="cosine"),
    "RUM": MethodConfig(epochs=5, lr=0.01, alpha=0.99, batch_size=256),
}
# LoReUn's temperature on STANDARDISED losses (z-scores over the normalisation set): the weight of a
# sample one standard deviation easier than the mean is e^(1/tau) times the mean's. Fixed, not tuned.
DEFAULT_TAU = 1.0


def defaults_for(data: str) -> dict[str, MethodConfig]:
    """Hyperparameters per method: the digits grid centres, or the papers' CIFAR-10 values."""
    return PAPER_DEFAULTS if data == "cifar10" else DEFAULTS


def _chunks(perm: Tensor, size: int) -> list[Tensor]:
    return [perm[i:i + size] for i in range(0, len(perm), size)]


def _batches(mode: Mode, epoch: int, cfg: MethodConfig, nf: int, nr: int,
             gen: torch.Generator) -> Iterator[tuple[Tensor | None, Tensor | None]]:
    """(forget item indices, retain indices) of each step of one epoch (module docstring)."""
    def forget() -> list[Tensor]:
        return _chunks(torch.randperm(nf, generator=gen), cfg.batch_size)

    def retain() -> list[Tensor]:
        return _chunks(torch.randperm(nr, generator=gen), cfg.batch_size)

    if mode == "retain" or (mode == "cycle" and nf == 0):
        yield from ((None, b) for b in retain())
    elif mode == "forget" or (mode == "cycle" and nr == 0):
        yield from ((b, None) for b in forget())
    elif mode == "cycle":  # zip(r_loader, cycle(f_loader)): a full forget batch beside every retain batch
        yield from ((f, r) for r, f in zip(retain(), itertools.cycle(forget())))
    elif mode == "sequential":  # a forget pass, then a retain pass
        yield from ((b, None) for b in forget())
        yield from ((None, b) for b in retain())
    elif mode == "alternate":  # SCRUB: max pass while epoch <= msteps, then a min pass
        if epoch <= cfg.msteps:
            yield from ((b, None) for b in forget())
        yield from ((None, b) for b in retain())
    else:  # concat: one shuffled data set of forget items (ids < nf) and retain samples
        for b in _chunks(torch.randperm(nf + nr, generator=gen), cfg.batch_size):
            yield b[b < nf], b[b >= nf] - nf


def _steps(obj: Objective, cfg: MethodConfig, nf: int, nr: int, gen_seed: int) -> int:
    g = torch.Generator().manual_seed(gen_seed)
    return sum(1 for e in range(cfg.epochs) for _ in _batches(obj.mode, e, cfg, nf, nr, g))


def weight_spread(weighting: WeightingConfig, first: Tensor) -> float:
    """max / min LoReUn weight over the whole forget set at the first step (`first`: the forget
    samples' losses under the original model, which is also the current model at step 0)."""
    if weighting.kind == "uniform" or len(first) < 2:
        return 1.0
    w = Weighting(dataclasses.replace(weighting, normalize="batch"), len(first))
    w.set_static(first)
    weights = w(first, torch.arange(len(first)))
    return float(weights.max() / weights.min().clamp_min(1e-30))


def run_objective(obj: Objective, model: nn.Module, weighting: WeightingConfig, retain: Split,
                  gen: torch.Generator) -> nn.Module:
    """The unlearning loop shared by every method: weighted forget term + retain term, one optimiser."""
    cfg = obj.cfg
    fset = obj.forget_set(gen) if obj.has_forget_loss else None
    n_ids = len(obj.task.forget)
    w = Weighting(weighting if obj.has_forget_loss else WeightingConfig(), max(n_ids, 1))
    if w.needs_static:
        w.set_static(per_sample_loss(obj.task.original, obj.task.forget))
    obj.prepare(model)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    nf = len(fset) if fset is not None else 0
    schedule = cfg.schedule
    total = _steps(obj, cfg, nf, len(retain), 0) if schedule == "cosine" else 1
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        for fi, ri in _batches(obj.mode, epoch, cfg, nf, len(retain), gen):
            forget_term = retain_term = None
            if fi is not None and len(fi):
                fb = fset.subset(fi)
                if obj.augment_forget:
                    fb = dataclasses.replace(fb, x=augment(fb.x, gen))
                vec, difficulty = obj.forget_terms(model, fb)
                weights = w(difficulty, fb.ids)
                forget_term = (weights * vec).mean()
            if ri is not None and len(ri):
                x = augment(retain.x[ri], gen) if obj.augment_retain else retain.x[ri]
                retain_term = obj.retain_term(model, x, retain.y[ri])
            if forget_term is None and retain_term is None:
                continue
            set_lr(opt, cfg.lr, lr_factor(schedule, epoch, cfg.epochs, step, total))
            loss = obj.combine(forget_term, retain_term, 0 if fi is None else len(fi), 0 if ri is None else len(ri))
            reg = obj.regulariser(model, epoch)
            if reg is not None:
                loss = loss + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            obj.after_backward(model)
            opt.step()
            obj.after_step(model, opt)
            step += 1
    model.eval()
    return model


def retrain(task: Task, seed: int) -> nn.Module:
    """Exact unlearning: the original recipe from a fresh initialisation on the retain set."""
    from erase.classification.models import build

    torch.manual_seed(10_000 + seed)
    model = build(task.data.name, task.data.num_classes, width=getattr(task.original, "width", 64))
    model.to(task.data.train.x.device)
    fit(model, task.retain, task.recipe, seed=10_000 + seed)
    model.eval()
    return model


def run_rum(task: Task, cfg: MethodConfig, weighting: WeightingConfig, seed: int) -> nn.Module:
    """RUM with NegGrad+ per group, low -> mid -> high memorisation (groups by `erase.rum.partition`)."""
    groups = partition(task.memorisation[task.forget_idx], 3)  # easiest (least memorised) first
    phases = [dataclasses.replace(cfg, alpha=0.99),
              dataclasses.replace(cfg, alpha=min(cfg.alpha, 0.97)),
              dataclasses.replace(cfg, alpha=min(cfg.alpha, 0.97), epochs=2 * cfg.epochs, lr=cfg.lr / 10)]
    model = copy.deepcopy(task.original)
    gen = torch.Generator().manual_seed(seed)
    handled: list[Tensor] = []
    for group, pcfg in zip(groups, phases):
        if len(group) == 0:
            continue
        handled.append(task.forget_idx[group])
        # the group's own task: forget = this group; retain = all training samples minus the groups done so far
        sub = dataclasses.replace(task, forget_idx=task.forget_idx[group])
        done = torch.cat(handled)
        keep = torch.ones(len(task.data.train), dtype=torch.bool)
        keep[done] = False
        retain = task.data.train.subset(torch.nonzero(keep).flatten())
        run_objective(NegGradPlus(pcfg, sub, seed), model, weighting, retain, gen)
    return model


def unlearn(task: Task, method: str, weighting: WeightingConfig, seed: int,
            cfg: MethodConfig | None = None) -> tuple[nn.Module, float]:
    """(unlearned model, wall seconds) of `method` on `task`."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    if method == "Retrain":
        model = retrain(task, seed)
    elif method == "Original":
        model = task.original
    elif method == "RUM":
        model = run_rum(task, cfg or DEFAULTS["RUM"], weighting, seed)
    else:
        cfg = cfg or DEFAULTS[method]
        obj = OBJECTIVES[method](cfg, task, seed)
        model = run_objective(obj, copy.deepcopy(task.original), weighting, task.retain,
                              torch.Generator().manual_seed(seed))
    return model, time.perf_counter() - t0


def weighting_config(kind: str, tau: float = DEFAULT_TAU, normalize: str = "batch", standardize: bool = True) -> WeightingConfig:
    # A classifier's per-sample loss has no random (t, noise) draw: the loss itself is the
    # paper's difficulty, so LoReUn-d uses it as it is ("raw"), not a diffusion draw correction.
    return WeightingConfig(kind=kind, tau=tau, normalize=normalize, estimate="raw", standardize=standardize)  # type: ignore[arg-type]


def describe(cfg: MethodConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
