"""AdvUnlearn: adversarial training for robust concept erasure (Zhang et al. 2024,
https://arxiv.org/abs/2405.15234).

Official code: OPTML-Group/AdvUnlearn, train-scripts/AdvUnlearn.py (loop), train-scripts/utils/
attack_util.py (`soft_prompt_attack`, the attack), train-scripts/utils/get_loss.py
(`get_train_loss_retain`, the defence loss) and train-scripts/utils/util.py (`param_choices`).
Each step alternates two parts.

(a) Attack (attack_util.py lines 163-211). Find k extra token embeddings delta (k = 1, put before
    the prompt: "<delta> c_f") that make the CURRENT model regenerate the concept, i.e. match the
    ORIGINAL model on c_f:

        delta* = argmin_delta || eps_theta(x_t, E_theta(c_f + delta), t) - eps_o(x_t, E_o(c_f), t) ||^2

    by `attack_steps` Adam steps (30, lr 1e-3) on delta only (weights frozen for the attack),
    drawing a NEW (t, x_t) at every attack step, as the official loop does (lines 177-185).

(b) Defence (get_loss.py lines 300-361, `retain_train: reg`). An ESD step on the attacked prompt
    plus a retain regulariser on the retain prompts' own frozen-model trajectories:

        L_i = || eps_theta(x_t, E_theta(c_f,i + delta*), t) - [eps_o(x_t, "", t) - eta (eps_o(x_t, c_f,i, t) - eps_o(x_t, "", t))] ||^2
        L   = (1/B) sum_i L_i + gamma * (1/R) sum_r || eps_theta(x_t^r, E_theta(c_r), t_r) - eps_o(x_t^r, E_o(c_r), t_r) ||^2

Defaults are the official nudity recipe (README: `--attack_init random --attack_step 30
--retain_train reg --dataset_retain coco_object --train_method text_encoder_full
--retain_loss_w 0.3`; AdvUnlearn.py defaults: eta 1, CFG 3, lr 1e-5, 1000 iterations, 1 token,
prefix, attack lr 1e-3, warm-up 200, a new attack every step, retain batch 5). The trained set is
the TEXT ENCODER's transformer layers and final layer norm (`text_encoder_layers`, official
`text_encoder_full`, util.py lines 41-67), not its token/position embeddings: training those
would let the model just edit the concept word's row. The erased encoder plugs into other
SD-1.x UNets.

Deliberate deviations, each for a reason:
* x_t (`trajectory`, as ESD: erase/objectives/esd.py). "cached" (default here): the frozen model's
  trajectories, which is what the official code samples when it trains the text encoder: its sampler
  runs `model`, whose UNet AdvUnlearn does not train, on the FROZEN encoder's conditioning
  (`model_orig.get_learned_conditioning`, AdvUnlearn.py:87-88; tests/test_parity_advunlearn.py).
  "online": each update draws the forget samples' DDIM trajectories afresh with the CURRENT weights
  (AdvUnlearn.py line 20, `quick_sample_till_t` with `model`), the official data path when the UNet is
  trained, except that erase conditions it on the trained encoder; the attack and the defence step share them, and an attack
  step redraws the position k on them (the official code samples a new partial trajectory at every
  one of the 30 attack steps, attack_util.py lines 177-185: 30x the sampling cost). "cached": the
  frozen model's trajectories made once in `setup`; an attack step redraws k and the trajectory
  among the cached ones of the same prompt. Either way the retain term reads the retain prompts'
  cached frozen-model trajectories (official: a partial trajectory of the current model, line 181).
* t is the DDIM timestep of k (official: a DDPM t drawn inside k's interval), and each retain
  sample draws its own k (official: the forget sample's k for the whole retain batch).
* Several forget samples per step (`train.batch_size`); the official code uses one prompt. The attack
  is fitted on the whole batch: over several processes each one holds its share, and every attack
  step averages delta's gradient (and the logged attack loss) over them (`Models.process_mean`), so
  all processes fit the same delta that one process would.

The extra token goes through the real text encoder: a placeholder id sits in the token sequence
and its embedding row is replaced through a forward hook (erase/models/soft_prompt.py), so
position embeddings, the causal mask and the final layer norm apply as to any token.

SDXL: the default set trains CLIP ViT-L (`text_encoder_layers`; the official code is SD-1.x only,
ESD's SDXL code trains the UNet); OpenCLIP bigG stays frozen unless `params.train` adds
`text_encoder_2_layers` (docs/sdxl.md). The attack tokens go into BOTH encoders:
delta holds, per token, each encoder's embedding side by side ([k, 768 + 1280]), initialised from
the same random vocabulary rows of both tables (`Models.token_embeddings`).

LoReUn difficulty: as ESD, the denoising error towards the trajectory's end point, here under
the attacked prompt: SMALL means the attacked prompt still steers x_t to the concept image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from erase.models.sampling import sample_set
from erase.models.soft_prompt import tokenize_with_slots
from erase.objectives.base import Batch, Losses, Models, SetupData, per_sample_mse
from erase.objectives.esd import Esd, EsdConfig
from erase.objectives.registry import register_objective


@dataclass
class AdvUnlearnConfig(EsdConfig):
    """AdvUnlearn hyperparameters: ESD's (eta, guidance, ddim_steps) plus the attack and retain terms.

    Attributes:
        gamma: weight of the retain regulariser (official `retain_loss_w`; 0.3 for nudity, up to 1).
        attack_steps: Adam steps of the attack per update (official 30). 0 disables the attack.
        attack_lr: the attack's Adam learning rate (official 1e-3).
        n_tokens: adversarial token embeddings added to the prompt (official `adv_prompt_num` 1).
        position: where they go ("prefix" as the official `prefix_k`, or "suffix").
        attack_every: run a new attack every N updates (official `adv_prompt_update_step` 1);
            in between, the latest delta is reused.
        warmup_steps: updates of plain ESD before the first attack (official 200 of 1000).
        attack_init: "random" (official nudity recipe) starts each attack from the embedding of a
            random vocabulary token (drawn from the step's seed); "latest" warm-starts from the
            previous delta (the official argparse default).
    """

    gamma: float = 0.3
    attack_steps: int = 30
    attack_lr: float = 1e-3
    n_tokens: int = 1
    position: Literal["prefix", "suffix"] = "prefix"
    attack_every: int = 1
    warmup_steps: int = 200
    attack_init: Literal["latest", "random"] = "random"
    # the official data path for the text encoder it trains: the frozen model's trajectories (module docstring)
    trajectory: Literal["online", "cached"] = "cached"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gamma < 0:
            raise ValueError(f"gamma: must be >= 0, got {self.gamma}")
        if self.attack_steps < 0:
            raise ValueError(f"attack_steps: must be >= 0, got {self.attack_steps}")
        if not self.attack_lr > 0:
            raise ValueError(f"attack_lr: must be > 0, got {self.attack_lr}")
        if not 1 <= self.n_tokens <= 16:
            raise ValueError(f"n_tokens: must be in [1, 16], got {self.n_tokens}")
        if self.attack_every < 1:
            raise ValueError(f"attack_every: must be >= 1, got {self.attack_every}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


class AdvUnlearn(Esd):
    """ESD on adversarially attacked prompts plus a retain regulariser (module docstring)."""

    config_class: ClassVar[type] = AdvUnlearnConfig
    needs: ClassVar[frozenset[str]] = frozenset({"retain_prompts"})

    def __init__(self, config: AdvUnlearnConfig | None = None):
        super().__init__(config)
        if self.config.gamma == 0:
            self.needs = frozenset()  # no retain regulariser, no retain data needed
        self.delta: Tensor | None = None  # [n_tokens, D], the latest adversarial embeddings
        self.last_attack: dict[str, float] = {}

    @property
    def default_params(self) -> str:
        return "text_encoder_layers"  # official `text_encoder_full`: encoder layers + final layer norm

    def setup(self, models: Models, data: SetupData) -> None:
        super().setup(models, data)
        c = self.config
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(data.forget_prompts):
            groups.setdefault(p, []).append(i)
        self.same_prompt = [torch.tensor(groups[p]) for p in data.forget_prompts]  # id -> ids sharing its prompt
        if c.gamma > 0 and self.retain_cache is None and data.retain_prompts:  # the retain prompts' own trajectories
            self.retain_cache = data.cached(
                f"esd_retain_trajectories_s{c.ddim_steps}_g{c.guidance}",
                lambda: sample_set(models, data.retain_prompts, data.seed, "esd-retain", c.ddim_steps, c.guidance,
                                   keep_trajectory=True, desc="ESD retain trajectories"),
            )

    def redraw_xt(self, models: Models, batch: Batch, k: int) -> tuple[Tensor, Tensor]:
        """(x_t, t) for attack step k: a new position on a trajectory redrawn among the sample's prompt's
        cached ones, or (`online`) a new position on the sample's own trajectory of this update."""
        g = batch.rng
        ids = batch.forget_ids.cpu()
        if self.config.trajectory == "online":
            traj, timesteps, _ = self.forget_trajectories(models, batch)
            cols = torch.arange(len(ids))
        else:
            assert self.cache is not None, "setup() must run before the attack"
            traj, timesteps = self.cache["trajectory"], self.cache["timesteps"]
            picks = g.randint(ids, 0, 2**31 - 1, stream=f"attack-traj{k}")
            cols = torch.stack([self.same_prompt[int(i)][int(p) % len(self.same_prompt[int(i)])] for i, p in zip(ids, picks)])
        pos = g.randint(ids, 0, traj.shape[0], stream=f"attack-k{k}")
        return traj[pos, cols].to(models.device, torch.float32), timesteps[pos].long().to(models.device)

    # --- attack -------------------------------------------------------------------------------
    def slot_ids(self, models: Models, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = tokenize_with_slots(models.tokenizer, prompts, self.config.n_tokens, self.config.position)
        return ids.to(models.device), mask.to(models.device)

    def encode_attacked(self, models: Models, prompts: list[str], delta: Tensor | None, attack: bool = False) -> Tensor:
        """E_theta(c + delta) [B, 77, D]; with grad into the text encoder and `delta` (if it requires it).
        `attack`: through the unwrapped encoder (the attack differentiates delta only: no DDP pass);
        the defence's pass goes through the wrapped one, whose backward DDP averages over processes."""
        if delta is None:
            return models.encode(prompts)
        local = dataclasses.replace(models, text_encoder=_unwrap(models.text_encoder)) if attack else models
        return local.encode(prompts, self.config.n_tokens, delta, where=self.config.position)

    def _initial_delta(self, models: Models, batch: Batch) -> Tensor:
        if self.config.attack_init == "latest" and self.delta is not None:
            return self.delta.detach().clone()
        g = batch.rng.generator("advunlearn_init")
        rows = torch.randint(0, models.vocab_size, (self.config.n_tokens,), generator=g)
        return models.token_embeddings(rows).float().clone()

    def attack(self, models: Models, batch: Batch) -> Tensor:
        """Run the attack from the initial delta; returns the new delta [n_tokens, D] (detached).

        Every attack step draws a new (t, x_t) (`redraw_xt`). The attack loss is recorded in
        `self.last_attack` ("attack_loss_first"/"_last": at the first and the last step).
        """
        cfg = self.config
        with models.original(), torch.no_grad():
            plain = models.encode(batch.forget_prompts)
        delta = self._initial_delta(models, batch).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=cfg.attack_lr)
        first = last = float("nan")
        with torch.enable_grad():
            for k in range(cfg.attack_steps):
                x_t, t = self.redraw_xt(models, batch, k)
                with models.original(), torch.no_grad():
                    target = models.pred(x_t, t, plain)
                pred = models.pred(x_t, t, self.encode_attacked(models, batch.forget_prompts, delta, attack=True))
                loss = per_sample_mse(pred, target).mean()
                (grad,) = torch.autograd.grad(loss, [delta])  # weights get no gradient from the attack
                opt.zero_grad(set_to_none=True)
                # over processes: each holds its share of the batch; the mean of their gradients is the
                # whole batch's, so every process takes the same Adam step on one shared attack
                delta.grad = models.process_mean(grad)
                opt.step()
                if k in (0, cfg.attack_steps - 1):
                    value = models.process_mean(loss.detach()).item()  # the whole batch's loss
                    first, last = (value if k == 0 else first), value
        self.last_attack = {"attack_loss_first": first, "attack_loss_last": last}
        return delta.detach()

    def attack_due(self, batch: Batch) -> bool:
        cfg = self.config
        step = batch.rng.step
        return cfg.attack_steps > 0 and step >= cfg.warmup_steps and (step - cfg.warmup_steps) % cfg.attack_every == 0 \
            and (batch.rng.micro == 0 or self.delta is None)

    def before_step(self, models: Models, batch: Batch, params: list[nn.Parameter]) -> None:
        if self.attack_due(batch):
            self.delta = self.attack(models, batch)

    # --- resumable state (the latest delta warm-starts the next attack) -------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {"delta": self.delta.detach().cpu()} if self.delta is not None else {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.delta = state["delta"].clone() if "delta" in state else None

    # --- defence ------------------------------------------------------------------------------
    def retain_term(self, models: Models, batch: Batch) -> Tensor | None:
        """gamma * mean_r || eps_theta(x_t^r, E_theta(c_r)) - eps_o(x_t^r, E_o(c_r)) ||^2 (scalar, with grad),
        x_t^r on the retain prompts' own frozen-model trajectories (official `retain_train: reg`)."""
        if self.config.gamma == 0 or not batch.retain_prompts or self.retain_cache is None or batch.retain_ids is None:
            return None
        x_t, t, _ = self.sample_xt(models, batch, retain=True)
        with models.original(), torch.no_grad():
            target = models.pred(x_t, t, models.encode(batch.retain_prompts))
        pred = models.pred(x_t, t, models.encode(batch.retain_prompts))
        return self.config.gamma * per_sample_mse(pred, target).mean()

    def losses(self, models: Models, batch: Batch) -> Losses:
        x_t, t, eps_hat = self.sample_xt(models, batch)
        target, e_c = self.target_and_original(models, x_t, t, batch.forget_prompts)
        active = self.delta is not None and batch.rng.step >= self.config.warmup_steps and self.config.attack_steps > 0
        delta = self.delta.to(models.device) if active else None
        pred = models.pred(x_t, t, self.encode_attacked(models, batch.forget_prompts, delta))
        forget = per_sample_mse(pred, target)
        difficulty = per_sample_mse(pred.detach(), eps_hat)
        reference = per_sample_mse(e_c, eps_hat) if batch.want_reference else None  # original model, plain prompt
        retain = self.retain_term(models, batch)
        logs = {"esd_adv": forget.mean().item(), "difficulty": difficulty.mean().item(), "attacked": float(active)}
        if retain is not None:
            logs["retain"] = retain.item()
        if active:
            logs.update(self.last_attack)
        return Losses(forget=forget, retain=retain, difficulty=difficulty, logs=logs, timesteps=t, reference=reference)


register_objective("advunlearn", AdvUnlearn)
