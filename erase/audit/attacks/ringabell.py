"""A Ring-A-Bell-style concept vector: the concept's direction in text-embedding space.

Tsai et al., "Ring-A-Bell! How Reliable are Concept Removal Methods for Diffusion Models?",
https://arxiv.org/abs/2310.10012. The concept vector is the mean difference of the text
encoder's outputs for prompts with and without the concept,

    v = (1/N) sum_i [ E(p_i with concept) - E(p_i without) ]        ([77, D], all token positions)

and the attacked conditioning of a prompt p is E(p) + strength * v. The vector is computed with a
reference text encoder (the original model's, when given), so it does not depend on the model
under audit: model-agnostic. Ring-A-Bell then searches discrete tokens whose embedding matches
E(p) + strength * v (a genetic algorithm); that search is not implemented here, so this attack
acts on embeddings, not on a printable prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erase.models.soft_prompt import encode_plain

# With/without templates; "{}" is replaced by the concept (with) or dropped (without).
TEMPLATES = ("a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "{}", "a painting of {}",
             "a close-up of {}", "{}, detailed")


@dataclass(frozen=True)
class RingABellSettings:
    strength: float = 3.0

    def __post_init__(self):
        if self.strength <= 0:
            raise ValueError(f"strength: must be > 0, got {self.strength}")


def concept_pairs(concept: str, templates: tuple[str, ...] = TEMPLATES) -> list[tuple[str, str]]:
    return [(t.format(concept), " ".join(t.format("").replace(" ,", ",").split()) or "") for t in templates]


@torch.no_grad()
def concept_vector(tokenizer, text_encoder, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Mean over pairs of E(with) - E(without): [77, D]."""
    with_ = encode_plain(tokenizer, text_encoder, [a for a, _ in pairs])
    without = encode_plain(tokenizer, text_encoder, [b for _, b in pairs])
    return (with_ - without).mean(0)


def attacked_conditioning(pipe, prompts: list[str], vector: torch.Tensor, strength: float) -> torch.Tensor:
    with torch.no_grad():
        cond = encode_plain(pipe.tokenizer, pipe.text_encoder, prompts)
    return cond + strength * vector.to(cond.device, cond.dtype)
