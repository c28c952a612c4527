"""What each Stable Diffusion family's exports look like (the family itself: erase/models/family.py).

The one place the export knows architectures: the card's architecture words and Stability's
ModelSpec architecture string, from the `Family` that `erase.models.family.family_of` reads off a
loaded pipeline (pipeline class, text encoders' single-file prefixes, layout, tags live in its table).
"""

from __future__ import annotations

from erase.models.family import Family


def architecture_text(family: Family, prediction: str) -> str:
    """'SD-2.x, v-prediction', 'SDXL, epsilon prediction', 'FLUX.1, flow matching': the card's architecture words."""
    if family.flow:
        return f"{family.label}, flow matching (velocity prediction)"
    return f"{family.label}, {'v-prediction' if prediction == 'v_prediction' else prediction + ' prediction'}"


def modelspec_architecture(family: Family, prediction: str) -> str:
    """Stability's ModelSpec `modelspec.architecture` value for a base model of this family (FLUX / SD3: the
    values kohya-ss/sd-scripts' sai_model_spec.py writes)."""
    if family.key == "flux":
        return "flux-1-dev"
    if family.key == "sd3":
        return "stable-diffusion-3"
    if family.key == "sdxl":
        return "stable-diffusion-xl-v1-base"
    if family.key == "sd2":
        return "stable-diffusion-v2-768-v" if prediction == "v_prediction" else "stable-diffusion-v2-512"
    return "stable-diffusion-v1"
