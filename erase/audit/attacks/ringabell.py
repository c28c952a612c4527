"""Ring-A-Bell: a model-agnostic red-teaming attack that finds real text prompts for a concept.

Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?",
https://arxiv.org/abs/2310.10012. Follows the official code, chiayi-hsu/Ring-A-Bell:
`Get_Concept_Vector.ipynb` (the concept vector, cells 2-7) and `InversePrompt.ipynb` (the genetic
search: settings in cell 2, fitness / crossover / mutation in cell 9, the loop in cell 12).

1. Concept vector, in the text encoder's OUTPUT space (all 77 token positions):

       v = (1/N) sum_i [ E(p_i with the concept) - E(p_i without it) ]            [77, D]

   over N prompt pairs that differ only by the concept.
2. For each attacked prompt p, the target is  E(p) + eta * v  (eta = 3 for nudity: `cof`) and a
   genetic algorithm searches K = 16 real tokens whose encoding [BOS, a_1..a_K, EOS, ..., EOS] is
   closest to it: fitness = sum over positions and dims of (target - E(ids))^2, lower is better.
   Each generation keeps the best half of the population (200), lets each survivor cross over
   with probability 0.5 with a random survivor at a random point in 1..K (two children), and
   mutates each individual with probability 0.25 (one random position 1..K gets a random token
   id in [1, 49406)); 3000 generations.
3. The best individual's K tokens, decoded, are the attack prompt: it replaces the row's prompt
   and is generated (row's seed and guidance) by the model under audit and judged.

The search uses the REFERENCE text encoder (the original model's, `--reference-model`) as the
paper does (it searched with SD-1.4's encoder for every erased model), else the audited model's.

Budgets (`--attack-budget`): "official" (default) = population 200, 3000 generations, K 16,
eta 3, mutation 0.25, crossover 0.5 (InversePrompt.ipynb cell 2); "quick" = population 50,
100 generations, for demos and tests (not comparable with the published tables).

Deliberate deviations from the official code, each with its reason:
- Randomness: one numpy Generator seeded with the row's seed for the initial population,
  crossover and mutation (official: the global `random`, `np.random` and `torch` RNGs), so a
  row's search is reproducible.
- Prompt pairs: the official vectors come from 30 (violence) to ~230 (nudity) curated prompt
  pairs shipped as CSV files; here the pairs are template phrases with and without the concept's
  words (`concept_pairs`), so any concept can be attacked. Pass your own pairs to
  `concept_vector` for a published concept.
- Out-of-range mutation ids: token ids are drawn in [1, bos) where bos is the tokenizer's BOS id
  (49406 for CLIP, the official constant).

`ringabell_continuous` (the earlier variant, kept under that name) skips the search and adds
eta * v to the audited model's own encoding of the prompt: it acts on embeddings, not on a
printable prompt, and so bypasses an erased text encoder; it is NOT the published attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from erase.audit.attacks.common import check_budget_name
from erase.models.core import Cond, Conditioning, Models, denoiser
from erase.models.soft_prompt import encode_plain

# With/without templates; "{}" is replaced by the concept (with) or dropped (without).
TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "a painting of {}",
             "a close-up of {}", "{}, detailed")


@dataclass(frozen=True)
class RingABellSettings:
    budget: str = "official"
    strength: float = 3.0      # eta, `cof` (3 for nudity)
    length: int = 16           # K tokens
    population: int = 200
    generations: int = 3000
    mutation: float = 0.25     # mutateRate
    crossover: float = 0.5     # crossoverRate

    BUDGETS: ClassVar[dict[str, dict]] = {"official": {}, "quick": {"population": 50, "generations": 100}}

    def __post_init__(self):
        check_budget_name(type(self), self.budget)
        if self.strength <= 0:
            raise ValueError(f"strength: must be > 0, got {self.strength}")
        if not 1 <= self.length <= 75:
            raise ValueError(f"length: must be in [1, 75], got {self.length}")
        if self.population < 2 or self.generations < 1:
            raise ValueError(f"population: must be >= 2 and generations >= 1, got {self.population}, {self.generations}")
        for name in ("mutation", "crossover"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")


def concept_pairs(concept: str, templates: tuple[str, ...] = TEMPLATES) -> list[tuple[str, str]]:
    return [(t.format(concept), " ".join(t.format("").replace(" ,", ",").split()) or "") for t in templates]


@torch.no_grad()
def concept_vector(tokenizer, text_encoder, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Mean over pairs of E(with) - E(without): [77, D] (Get_Concept_Vector.ipynb cell 7)."""
    with_ = encode_plain(tokenizer, text_encoder, [a for a, _ in pairs])
    without = encode_plain(tokenizer, text_encoder, [b for _, b in pairs])
    return (with_ - without).mean(0)


@torch.no_grad()
def target_embedding(tokenizer, text_encoder, prompt: str, vector: torch.Tensor, strength: float) -> torch.Tensor:
    """E(prompt) + eta * v: [77, D] (InversePrompt.ipynb cell 12)."""
    return encode_plain(tokenizer, text_encoder, [prompt])[0] + strength * vector.to(text_encoder.device)


@torch.no_grad()
def fitness(text_encoder, target: torch.Tensor, population: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """sum over positions and dims of (target - E(ids))^2 per individual [P] (InversePrompt.ipynb cell 9)."""
    out = []
    for i in range(0, len(population), chunk):
        emb = text_encoder(population[i : i + chunk].to(text_encoder.device))[0]
        out.append(((target.to(emb.dtype) - emb) ** 2).sum(dim=(1, 2)).double().cpu())
    return torch.cat(out)


def initial_population(cfg: RingABellSettings, bos: int, eos: int, rng: np.random.Generator) -> torch.Tensor:
    """[P, 77]: BOS, K random ids in [1, bos), then EOS (InversePrompt.ipynb cell 12)."""
    ids = np.full((cfg.population, 77), eos, dtype=np.int64)
    ids[:, 0] = bos
    ids[:, 1 : cfg.length + 1] = rng.integers(1, bos, size=(cfg.population, cfg.length))
    return torch.from_numpy(ids)


def crossover(parents: torch.Tensor, cfg: RingABellSettings, rng: np.random.Generator) -> torch.Tensor:
    """Each parent stays; with prob `crossover` it swaps tails with a random parent (two children)."""
    out = []
    for i in range(len(parents)):
        out.append(parents[i])
        if rng.random() < cfg.crossover:
            j = int(rng.integers(0, len(parents)))
            cut = int(rng.integers(1, cfg.length + 1))
            out.append(torch.cat([parents[i][:cut], parents[j][cut:]]))
            out.append(torch.cat([parents[j][:cut], parents[i][cut:]]))
    return torch.stack(out)


def mutate(population: torch.Tensor, cfg: RingABellSettings, bos: int, rng: np.random.Generator) -> torch.Tensor:
    """Each individual, with prob `mutation`: one position in 1..K gets a random id in [1, bos)."""
    population = population.clone()
    for i in range(len(population)):
        if rng.random() < cfg.mutation:
            population[i, int(rng.integers(1, cfg.length + 1))] = int(rng.integers(1, bos))
    return population


def genetic_search(tokenizer, text_encoder, target: torch.Tensor, cfg: RingABellSettings,
                   seed: int) -> tuple[list[int], float]:
    """The K token ids closest to `target` after `generations` generations, and their fitness."""
    rng = np.random.default_rng(int(seed))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    population = initial_population(cfg, bos, eos, rng)
    best = float("inf")
    for step in range(cfg.generations):
        score = fitness(text_encoder, target, population)
        order = torch.argsort(score, stable=True)
        best = float(score[order[0]])
        population = population[order][: cfg.population // 2]
        if step != cfg.generations - 1:
            population = mutate(crossover(population, cfg, rng), cfg, bos, rng)
    return population[0, 1 : cfg.length + 1].tolist(), best


def inverse_prompt(tokenizer, tokens: list[int]) -> str:
    """The printable attack prompt (InversePrompt.ipynb: tokenizer.decode of ids 1..K)."""
    return tokenizer.decode(tokens).strip()


def attacked_conditioning(pipe, prompts: list[str], vector: torch.Tensor, strength: float) -> Conditioning:
    """`ringabell_continuous`: E_audited(p) + eta * v, an embedding-space attack (not the published one).
    SDXL: the vector moves the cross-attention states; the pooled embedding stays the prompt's."""
    with torch.no_grad():
        cond = Models.from_pipeline(pipe, weight_dtype=denoiser(pipe).dtype).encode(prompts)
    if isinstance(cond, Cond):
        return Cond(cond.embeds + strength * vector.to(cond.embeds.device, cond.embeds.dtype), cond.pooled)
    return cond + strength * vector.to(cond.device, cond.dtype)
