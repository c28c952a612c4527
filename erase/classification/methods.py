"""Classifier unlearning methods as objectives that return a VECTOR of per-sample forget losses.

Every method with a forget loss is weighted by the same `erase.weighting.Weighting` as the
diffusion trainer: uniform, LoReUn-s (l_i = the ORIGINAL model's cross-entropy on forget sample i,
computed once) or LoReUn-d (l_i = the CURRENT model's cross-entropy on sample i, read off the same
forward pass). The loss of a step is sum_i w_i f_i / B_f combined with the method's retain term.

Methods (official code read: OPTML-Group/Unlearn-Saliency `Classification/`, kairanzhao/RUM,
meghdadk/SCRUB as used in RUM, ZhengbaoHe/NatMU `sample-wise/`):

- Retrain: the original recipe, from a fresh initialisation, on the retain set (exact unlearning).
- Original: the model before unlearning, unchanged (the gap that doing nothing leaves).
- FT: fine-tune on the retain set.  l1-sparse: FT + alpha (1 - epoch/E) ||theta||_1.
- GA: gradient ascent on the forget set, f_i = -CE(x_i, y_i).
- NegGrad+: alpha CE(retain) + (1 - alpha) f, f_i = -CE(x_i, y_i) (RUM's NG, alpha 0.99).
- RL: forget samples relabelled uniformly at random (drawn once), trained together with the retain
  set as one concatenated data set: f_i = CE(x_i, random y_i).
- SalUn: RL with a saliency mask: |gradient of the forget CE at the original weights|, the top
  `mask_ratio` (50%) of weights globally are trainable, the others' gradients are zeroed.
- SCRUB: teacher = the original model; for the first `msteps` epochs a max pass over the forget
  set, f_i = -KL_T(teacher || student)_i, then every epoch a min pass on the retain set,
  gamma CE + alpha KL_T (kd_T = 4).
- NatMU: for each forget sample the original model's top-k classes other than its own (k = 4);
  for the j-th a random retain sample of that class; hybrid x' = m_j x_f + (1 - m_j) x_r with the
  j-th of NatMU's four ramp masks (vertical/horizontal tents and their inverses) shifted by
  `delta` and clipped to [0, 1]; x' is labelled with the RETAIN class. Fine-tune on retain +
  hybrids (AdamW, cosine); f = the hybrids' CE, weighted by their forget sample's LoReUn weight.
  (NatMU's re-balancing of over-used classes is left out: it only matters when one class is
  the top-1 of most forget samples.)
- RUM: `erase.rum.partition` of the forget set by the memorisation proxy into low / mid / high,
  unlearned in that order with NegGrad+ (RUM's `main_rum_proxy.py` example: alpha 0.99 / 0.97 /
  0.97, 5 / 5 / 10 epochs, the last group at a tenth of the lr), the retain set of step i being
  the training set minus the groups handled so far.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erase.classification.data import Dataset, Split
from erase.classification.train import TrainRecipe, cosine, fit, logits_of, make_optimizer, per_sample_loss
from erase.rum import partition
from erase.weighting import Weighting, WeightingConfig

Mode = Literal["joint", "forget", "retain", "alternate"]


@dataclass(frozen=True)
class MethodConfig:
    """One method's hyperparameters. `alpha` is the method's one trade-off knob (NegGrad+: weight of
    the retain loss; l1-sparse: the l1 coefficient; SCRUB: the retain KL weight)."""

    epochs: int
    lr: float
    optimizer: Literal["sgd", "adamw"] = "sgd"
    alpha: float = 0.0
    batch_size: int = 64
    weight_decay: float = 5e-4
    mask_ratio: float = 0.5  # SalUn
    msteps: int = 2  # SCRUB max epochs
    gamma: float = 0.99  # SCRUB retain CE weight
    kd_t: float = 4.0  # SCRUB temperature
    k: int = 4  # NatMU classes per forget sample
    delta: float = -0.19  # NatMU mask shift (official CIFAR-10 value)

    def scaled(self, factor: float) -> MethodConfig:
        """The same method with `factor` x the epochs (at least 1; SCRUB keeps msteps <= epochs)."""
        e = max(1, round(self.epochs * factor))
        return dataclasses.replace(self, epochs=e, msteps=min(self.msteps, e))


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


def per_sample_kl(student: Tensor, teacher: Tensor, t: float) -> Tensor:
    """KL(softmax(teacher / t) || softmax(student / t)) * t^2 per sample (SCRUB's DistillKL)."""
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="none").sum(1) * t * t


class Objective:
    """A method: how it builds its forget set and its per-step loss terms; the loop is `unlearn`."""

    mode: Mode = "joint"
    has_forget_loss: bool = True

    def __init__(self, cfg: MethodConfig, task: Task, seed: int):
        self.cfg, self.task, self.seed = cfg, task, seed

    def forget_set(self, gen: torch.Generator) -> ForgetSet:
        f = self.task.forget
        return ForgetSet(f.x, f.y, f.y, torch.arange(len(f)))

    def forget_terms(self, model: nn.Module, fb: ForgetSet) -> tuple[Tensor, Tensor]:
        """(per-sample forget losses f_i with gradient, difficulties l_i detached: CE on the true label)."""
        raise NotImplementedError

    def retain_term(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(x), y)

    def combine(self, forget: Tensor | None, retain: Tensor | None, nf: int, nr: int) -> Tensor:
        """Default: one concatenated data set (RL, SalUn, NatMU): a sample-count weighted mean."""
        if forget is None:
            return retain
        if retain is None:
            return forget
        return (nf * forget + nr * retain) / (nf + nr)

    def prepare(self, model: nn.Module) -> None:
        """Anything computed once at the original weights (SalUn's mask)."""

    def after_backward(self, model: nn.Module) -> None:
        """A hook between backward and the optimiser step (SalUn masks gradients)."""

    def regulariser(self, model: nn.Module, epoch: int) -> Tensor | None:
        return None


class FT(Objective):
    mode: Mode = "retain"
    has_forget_loss = False


class L1Sparse(FT):
    def regulariser(self, model: nn.Module, epoch: int) -> Tensor | None:
        coef = self.cfg.alpha * (1 - epoch / self.cfg.epochs)
        return coef * sum(p.abs().sum() for p in model.parameters())


class GA(Objective):
    mode: Mode = "forget"

    def forget_terms(self, model, fb):
        ce = F.cross_entropy(model(fb.x), fb.true, reduction="none")
        return -ce, ce.detach()


class NegGradPlus(GA):
    mode: Mode = "joint"

    def combine(self, forget, retain, nf, nr):
        a = self.cfg.alpha
        return (a * retain if retain is not None else 0.0) + ((1 - a) * forget if forget is not None else 0.0)


class RL(Objective):
    def forget_set(self, gen):
        f = self.task.forget
        labels = torch.randint(0, self.task.data.num_classes, (len(f),), generator=gen).to(f.y.device)
        return ForgetSet(f.x, labels, f.y, torch.arange(len(f)))

    def forget_terms(self, model, fb):
        logits = model(fb.x)
        return (F.cross_entropy(logits, fb.target, reduction="none"),
                F.cross_entropy(logits.detach(), fb.true, reduction="none"))


class SalUn(RL):
    masks: dict[str, Tensor]

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
        model.zero_grad(set_to_none=True)

    def after_backward(self, model):
        for n, p in model.named_parameters():
            if p.grad is not None:
                p.grad.mul_(self.masks.get(n, torch.zeros_like(p.grad)))


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
    mirror; then + delta, clipped to [0, 1]."""

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


class NatMU(Objective):
    def forget_set(self, gen):
        t, cfg = self.task, self.cfg
        f, r = t.forget, t.retain
        logits = logits_of(t.original, f.x)
        logits.scatter_(1, f.y[:, None], float("-inf"))  # never the sample's own class
        k = min(cfg.k, t.data.num_classes - 1)
        top = torch.topk(logits, k, dim=1).indices  # [N_f, k]
        masks = ramp_masks(f.x.shape[-2], f.x.shape[-1], cfg.delta).to(f.x.device)
        top = top.cpu()
        by_class = {c: torch.nonzero(r.y.cpu() == c).flatten() for c in range(t.data.num_classes)}
        xs, targets, trues, ids = [], [], [], []
        for j in range(k):
            m = masks[j % len(masks)]
            for i in range(len(f)):
                pool = by_class[int(top[i, j])]
                if len(pool) == 0:
                    continue
                ri = pool[torch.randint(len(pool), (1,), generator=gen)].item()
                xs.append(m * f.x[i] + (1 - m) * r.x[ri])
                targets.append(int(r.y[ri]))
                trues.append(int(f.y[i]))
                ids.append(i)
        dev = f.y.device
        return ForgetSet(torch.stack(xs), torch.tensor(targets, device=dev), torch.tensor(trues, device=dev), torch.tensor(ids))

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

# Tuned on the digits VALIDATION split with random-10% forget sets and tuning seeds 100 and 101
# (scripts/tune_classification.py; the grid and every point's gap are in BENCHMARKS.md). The
# epochs, mask ratio, SCRUB's msteps / gamma / kd_T and NatMU's k / delta / optimiser are the
# official values, not tuned.
DEFAULTS: dict[str, MethodConfig] = {
    "FT": MethodConfig(epochs=10, lr=0.1),
    "l1-sparse": MethodConfig(epochs=10, lr=0.1, alpha=3e-4),
    "GA": MethodConfig(epochs=5, lr=0.03),
    "NegGrad+": MethodConfig(epochs=5, lr=0.3, alpha=0.99),
    "RL": MethodConfig(epochs=10, lr=3e-4),
    "SalUn": MethodConfig(epochs=10, lr=3e-4, mask_ratio=0.5),
    "SCRUB": MethodConfig(epochs=5, lr=0.05, msteps=2, alpha=0.001, gamma=0.99),
    "NatMU": MethodConfig(epochs=5, lr=0.01, optimizer="adamw", weight_decay=0.002),
    "RUM": MethodConfig(epochs=5, lr=0.3, alpha=0.97),  # NegGrad+ per group; see run_rum
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
    "SCRUB": MethodConfig(epochs=5, lr=5e-3, msteps=4, alpha=0.001, gamma=0.99, batch_size=256),
    "NatMU": MethodConfig(epochs=5, lr=1e-3, optimizer="adamw", weight_decay=0.002, batch_size=128),
    "RUM": MethodConfig(epochs=5, lr=0.01, alpha=0.99, batch_size=256),
}
DEFAULT_TAU = 1.0


def defaults_for(data: str) -> dict[str, MethodConfig]:
    """Hyperparameters per method: tuned on the digits validation split, or the papers' CIFAR-10 values."""
    return PAPER_DEFAULTS if data == "cifar10" else DEFAULTS


def _chunks(perm: Tensor, size: int) -> list[Tensor]:
    return [perm[i:i + size] for i in range(0, len(perm), size)]


def _batches(mode: Mode, epoch: int, cfg: MethodConfig, nf: int, nr: int,
             gen: torch.Generator) -> Iterator[tuple[Tensor | None, Tensor | None]]:
    """(forget item indices, retain indices) of each step of one epoch."""
    if mode == "retain" or (mode == "joint" and nf == 0):
        yield from ((None, b) for b in _chunks(torch.randperm(nr, generator=gen), cfg.batch_size))
    elif mode == "forget" or (mode == "joint" and nr == 0):
        yield from ((b, None) for b in _chunks(torch.randperm(nf, generator=gen), cfg.batch_size))
    elif mode == "joint":
        # One pass over both, as one concatenated shuffled data set would make: every step gets its
        # share of forget items (nf / steps) next to a retain batch.
        rb = _chunks(torch.randperm(nr, generator=gen), cfg.batch_size)
        fb = torch.tensor_split(torch.randperm(nf, generator=gen), len(rb))
        yield from zip(fb, rb)
    else:  # alternate (SCRUB): max pass over the forget set in the first msteps epochs, then a min pass
        if epoch < cfg.msteps:
            yield from ((b, None) for b in _chunks(torch.randperm(nf, generator=gen), cfg.batch_size))
        yield from ((None, b) for b in _chunks(torch.randperm(nr, generator=gen), cfg.batch_size))


def _steps(mode: Mode, cfg: MethodConfig, nf: int, nr: int) -> int:
    sf, sr = math.ceil(nf / cfg.batch_size), math.ceil(nr / cfg.batch_size)
    per = {"retain": sr, "forget": sf, "joint": sr or sf}
    if mode in per:
        return cfg.epochs * per[mode]
    return min(cfg.msteps, cfg.epochs) * sf + cfg.epochs * sr


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
    sched = cosine(opt, _steps(obj.mode, cfg, nf, len(retain)))
    model.train()
    for epoch in range(cfg.epochs):
        for fi, ri in _batches(obj.mode, epoch, cfg, nf, len(retain), gen):
            forget_term = retain_term = None
            if fi is not None and len(fi):
                fb = ForgetSet(fset.x[fi], fset.target[fi], fset.true[fi], fset.ids[fi])
                vec, difficulty = obj.forget_terms(model, fb)
                weights = w(difficulty, fb.ids)
                forget_term = (weights * vec).mean()
            if ri is not None and len(ri):
                retain_term = obj.retain_term(model, retain.x[ri], retain.y[ri])
            if forget_term is None and retain_term is None:
                continue
            loss = obj.combine(forget_term, retain_term, 0 if fi is None else len(fi), 0 if ri is None else len(ri))
            reg = obj.regulariser(model, epoch)
            if reg is not None:
                loss = loss + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            obj.after_backward(model)
            opt.step()
            sched.step()
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


def weighting_config(kind: str, tau: float = DEFAULT_TAU, normalize: str = "batch") -> WeightingConfig:
    # A classifier's per-sample loss has no random (t, noise) draw: the loss itself is the
    # paper's difficulty, so LoReUn-d uses it as it is ("raw"), not a diffusion draw correction.
    return WeightingConfig(kind=kind, tau=tau, normalize=normalize, estimate="raw")  # type: ignore[arg-type]


def describe(cfg: MethodConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
