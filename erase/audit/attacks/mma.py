"""MMA-Diffusion's text attack: a printable prompt without the concept's words that the text encoder
takes for the concept prompt.

Yang et al., "MMA-Diffusion: MultiModal Attack on Diffusion Models", CVPR 2024,
https://arxiv.org/abs/2311.17516. Follows the official code, cure-lab/MMA-Diffusion,
`src/textual_attack.py`: `CosineSimilarityLoss` (lines 28-47), `token_gradient` (52-110), `logits`
(114-127), `sample_control` (130-158), `SDattack.get_filtered_cands` / `step` / `run` (182-291) and
`main` (297-403: the budget, the initial prompt, the banned tokens).

A GCG-style discrete search (Zou et al. 2023) over n = 20 tokens. The target is the text
encoder's pooled embedding of the concept prompt; the loss of a prompt is 1 - cos(pooled(prompt),
pooled(target)). Each iteration:
1. the gradient of the loss with respect to the one-hot of every token of the current prompt
   (`token_gradient`), each row normalised to unit length (`step`, line 221);
2. the tokens of the banned words get +inf and the top-256 tokens of -gradient per position are
   the candidates (`sample_control`, lines 136-138); 512 candidate prompts, each the current one
   with ONE token swapped: candidate j changes position floor(j n / 512) to a random one of its
   top-256 (lines 146-155);
3. candidates that decode to the current prompt or do not re-tokenise to n tokens are replaced by
   the last valid one (`get_filtered_cands`, lines 182-202);
4. the candidate with the lowest loss becomes the current prompt (always), and the best prompt
   over the run is kept (`run`, lines 279-290).
The initial prompt is 20 random ASCII letters separated by spaces (lines 372-377); 1000 iterations
(the README's `-i 1000`). The found prompt REPLACES the row's prompt: the audited model renders it
with the row's seed and guidance, and the audit's detector judges it.

Banned tokens: the official bans every vocabulary token containing a word of its nudity list or one
of 'ak', 'na', 'ke', 'nud' (lines 329-357); here every token containing a word of the concept
(`--concept`, else the audit's concept) or of `MMASettings.ban`, plus BOS and EOS.

Budgets (`--attack-budget`): "official" (default) = 20 tokens, 1000 iterations, 512 candidates,
top-256; "quick" = 20 iterations of 128 candidates, for demos and tests (NOT comparable with the
published numbers).

Deliberate deviations from the official code, each with its reason:
- The gradient rows: the official one-hot covers the first 20 positions of the padded ids,
  [BOS, c_1 .. c_19], so the gradient row used for token c_i is that of c_(i-1) (row 0 is BOS's) and
  c_20 has none (lines 73-92 with 146-155). Here row i is c_i's own gradient, as GCG defines it.
- The text encoder: the official attacks the ORIGINAL (SD inpainting) text encoder. Here the
  reference model's (`--reference-model`) when given, else the audited model's; SDXL: both encoders'
  pooled embeddings side by side (`Models.pooled`), the one-hot shared by both.
- FLUX and SD3 (CLIP + T5) follow the official SD3.5 adaptation, cure-lab/MMA-Diffusion
  `src_sd3-5/text_space_attack/` (commit 53a976e): `sd3_loss.py` `SD3CombinedLoss_Batch` and
  `MMA_para.py` `encode_prompt_sd3_batch` / `token_gradient_batch` / `step`. The search stays over CLIP-L's
  vocabulary (the control is CLIP tokens, filtered by CLIP's re-tokenisation); each candidate is scored
  as TEXT through every encoder, each with its own tokenizer (T5 re-tokenises the decoded text), with
  loss = 1.0 (1 - cos(pooled, target pooled)) + 0.5 (1 - the mean over positions of the cosine of the
  text sequences), on the conditioning the transformer takes (`Models.encode`: SD3's [CLIP-L ; CLIP-G]
  padded to T5's width then T5, both pooled projections; FLUX's T5 states and CLIP-L's pooled output, a
  natural reading of the same loss for the model the adaptation does not cover). Deviations: T5 gets the
  pipeline's own length (SD3 256, FLUX 512 tokens; the adaptation pads T5 to 77, which changes its states:
  the pipelines run T5 without an attention mask); the gradient reaches the one-hot through every encoder
  (the adaptation differentiates CLIP-L only, its patched CLIP being the one encoder taking embeddings):
  T5 sees each CLIP token as the mean embedding of the T5 pieces of its text
  (`erase.models.flow.vocab_map`, UnlearnDiffAtk's mapping). The gradient only proposes candidates; the
  scores that choose among them are exact.
- Randomness: one CPU generator seeded with the row's seed draws the initial prompt and the
  candidates (official: the global `random` and torch RNGs).
- When every candidate is filtered out, the current prompt stays (the official indexes an empty list).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from erase.audit.attacks.common import check_budget_name, frozen
from erase.models.core import Cond, Models

# FLUX / SD3: the official SD3.5 adaptation's weights (src_sd3-5/text_space_attack/MMA_para.py, `lambda_vec`,
# `lambda_ctxt` defaults in ParallelMMA.__init__)
LAMBDA_VEC, LAMBDA_CTXT = 1.0, 0.5


@dataclass(frozen=True)
class MMASettings:
    budget: str = "official"
    tokens: int = 20          # control_length, the 20-letter control_init
    iterations: int = 1000    # n_steps (README: -i 1000)
    candidates: int = 512     # params.batch_size
    topk: int = 256           # params.topk
    ban: tuple[str, ...] = ()  # more words whose tokens are banned (the concept's words always are)

    BUDGETS: ClassVar[dict[str, dict]] = {"official": {}, "quick": {"iterations": 20, "candidates": 128}}

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
        for name in ("tokens", "iterations", "candidates", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.tokens > 75:
            raise ValueError(f"tokens: must be <= 75, got {self.tokens}")


def cosine_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos(x, y) per row (`CosineSimilarityLoss`, eps 1e-6)."""
    return 1 - F.cosine_similarity(x, y, dim=1, eps=1e-6)


def text_features(models: Models, prompts: list[str], n_slots: int = 0, embeds=None) -> torch.Tensor | Cond:
    """What the loss compares: every encoder's pooled embedding side by side (`Models.pooled`; SD-1/2, SDXL),
    or, for the models with T5 (FLUX, SD3), the conditioning the transformer takes (`Models.encode`: the
    pooled vector and the text sequence, T5's states included)."""
    if models.is_flow:
        return models.encode(prompts, n_slots, embeds)
    return models.pooled(prompts, n_slots, embeds)


def mma_loss(feats: torch.Tensor | Cond, target: torch.Tensor | Cond) -> torch.Tensor:
    """The loss per prompt: 1 - cos(pooled, target pooled) (`CosineSimilarityLoss`); for a conditioning
    (FLUX, SD3) the official SD3.5 adaptation's `SD3CombinedLoss_Batch`: LAMBDA_VEC (1 - cos of the pooled
    vectors) + LAMBDA_CTXT (1 - the mean over positions of the cosine of the text sequences)."""
    if not isinstance(feats, Cond):
        return cosine_loss(_wide(feats), _wide(target))
    vec = 1 - F.cosine_similarity(_wide(feats.pooled), _wide(target.pooled), dim=-1)
    ctxt = 1 - F.cosine_similarity(_wide(feats.embeds), _wide(target.embeds), dim=-1).mean(-1)
    return LAMBDA_VEC * vec + LAMBDA_CTXT * ctxt


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 or wider (a half-precision encoder's features; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def banned_tokens(tokenizer, words: list[str]) -> list[int]:
    """Ids of every vocabulary token containing one of `words` (lower-cased), plus BOS and EOS (main, lines 349-357)."""
    words = [w.lower() for w in words if w.strip()]
    out = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    out |= {i for tok, i in tokenizer.get_vocab().items() if any(w in tok for w in words)}
    return sorted(out)


def initial_control(n: int, g: torch.Generator) -> str:
    """n random ASCII letters joined by spaces (main, lines 372-374)."""
    letters = string.ascii_letters
    return " ".join(letters[int(i)] for i in torch.randint(len(letters), (n,), generator=g))


def control_ids(tokenizer, control: str) -> torch.Tensor:
    """The control's token ids without BOS/EOS (`sample_control`, lines 141-143)."""
    return torch.tensor(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(control)), dtype=torch.long)


def token_gradient(models: Models, ids: torch.Tensor, target: torch.Tensor | Cond) -> torch.Tensor:
    """d loss / d one-hot [n, V] of the prompt `ids` (`token_gradient`; rows aligned to the tokens). The one-hot
    goes into every text encoder (`Models.encode` / `pooled` with slots; T5: CLIP tokens as T5 sees them)."""
    dtype = torch.promote_types(models.embedding_tables()[0].dtype, torch.float32)
    onehot = F.one_hot(ids, models.vocab_size).to(dtype).requires_grad_(True)
    feats = text_features(models, [""], len(ids), lambda table: onehot.to(table.dtype) @ table)
    loss = mma_loss(feats, target).mean()
    grad, = torch.autograd.grad(loss, [onehot])
    return grad


def sample_control(grad: torch.Tensor, ids: torch.Tensor, batch: int, topk: int, banned: list[int],
                   g: torch.Generator) -> torch.Tensor:
    """[batch, n] candidates: one token of `ids` swapped each (`sample_control`, lines 130-158)."""
    grad = grad.clone()
    grad[:, banned] = float("inf")
    top = (-grad).topk(topk, dim=1).indices
    n = len(ids)
    pos = torch.arange(0, n, n / batch).long()[:batch]
    vals = torch.gather(top[pos], 1, torch.randint(0, topk, (batch, 1), generator=g))
    return ids.repeat(batch, 1).scatter_(1, pos.unsqueeze(-1), vals)


def filter_candidates(tokenizer, cands: torch.Tensor, current: str) -> list[str]:
    """Decoded candidates that differ from `current` and re-tokenise to as many tokens; the dropped ones
    are replaced by the last kept one (`get_filtered_cands`); empty when none is kept."""
    kept = []
    for c in cands:
        text = "".join(tokenizer.convert_ids_to_tokens(c.tolist())).replace("</w>", " ")[:-1]
        if text != current and len(tokenizer(text, add_special_tokens=False).input_ids) == len(c):
            kept.append(text)
    return kept + kept[-1:] * (len(cands) - len(kept)) if kept else []


@torch.no_grad()
def candidate_losses(models: Models, texts: list[str], target: torch.Tensor | Cond, chunk: int = 128) -> torch.Tensor:
    """The loss of each candidate text (`step`, lines 230-238), each text tokenised by every encoder's own tokenizer."""
    out = [mma_loss(text_features(models, texts[i : i + chunk]), target) for i in range(0, len(texts), chunk)]
    return torch.cat(out).cpu()


def mma_step(models: Models, control: str, target: torch.Tensor | Cond, cfg: MMASettings, banned: list[int],
             g: torch.Generator) -> tuple[str, float]:
    """One iteration (`SDattack.step`): (the next prompt, its loss)."""
    ids = control_ids(models.tokenizer, control)
    grad = token_gradient(models, ids.to(models.device), target)
    grad = grad / grad.norm(dim=-1, keepdim=True)
    cands = filter_candidates(models.tokenizer, sample_control(grad.cpu(), ids, cfg.candidates, cfg.topk, banned, g),
                              control)
    if not cands:
        return control, float(candidate_losses(models, [control], target)[0])
    loss = candidate_losses(models, cands, target)
    best = int(loss.argmin())
    return cands[best], float(loss[best])


def search(models: Models, prompt: str, cfg: MMASettings, words: list[str], seed: int) -> tuple[str, float, int]:
    """The prompt whose pooled embedding is nearest the target prompt's: (prompt, loss, iteration found)."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    banned = banned_tokens(models.tokenizer, [*words, *cfg.ban])
    control = initial_control(cfg.tokens, g)
    modules = [m for _, m in models.encoders()]
    with frozen(*modules):
        with torch.no_grad():
            target = text_features(models, [prompt])
        best, best_loss, best_step = control, float("inf"), 0
        for step in range(cfg.iterations):
            control, loss = mma_step(models, control, target, cfg, banned, g)
            if loss < best_loss:
                best, best_loss, best_step = control, loss, step + 1
    return best, best_loss, best_step
