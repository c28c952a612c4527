"""RUM: refine the forget set by difficulty, then unlearn the pieces in sequence.

Zhao et al., "What makes unlearning hard and what to do about it", NeurIPS 2024,
https://arxiv.org/abs/2406.01257. RUM (Refined-Unlearning Meta-algorithm) has two steps:

1. *Refine*: score every forget sample by how hard it is to unlearn and split the forget set
   into k groups (paper: k = 3, low / mid / high memorisation).
2. *Meta-unlearn*: unlearn the groups one after another, low -> mid -> high, each with the
   method and hyperparameters that suit it. In the official code the retain set of step i is
   the training set minus every group handled so far (``all - (S_1 u ... u S_i)``).

Scores (``rum.score``, erase/rum/scores.py):

- ``loss`` (default): the ORIGINAL model's denoising loss on the sample's image, a cheap
  memorisation proxy. Per-sample diffusion losses are dominated by the random t and noise, so
  the estimate is made fair: every sample sees the SAME timesteps and the SAME noise tensors,
  and the loss is averaged over ``n_timesteps`` evenly spaced t. Independent draws per sample
  rank the samples no better than chance, shared draws reliably (BENCHMARKS.md, "RUM's loss score:
  rank reliability"). Default: 10 timesteps (a one-time cost of 10 forward passes per sample).
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

Sequencing lives in `erase.rum.runner.run_rum`, which drives one ordinary trainer run per group (the
trainer stays method-agnostic), in RUN/rum/phase_i: each phase sees only its group's forget
samples, with its own objective / weighting / steps / lr, and starts from the previous phase's
erased model -- which is also that phase's "original" (the model the phase's method erases
from, as each RUM step's algorithm starts from the current model). The forget and retain
IMAGES are fixed data: generated once by the true original model, written to
RUN/rum/data/ (PNG + caption), and shared by every phase. RUN/model is the last phase's model.

The package: `scores` (scores and partition, pure math), `files` (group images and retain
folders), `runner` (score, partition, one trainer run per group). The `rum:` section of a run
config is `erase.train.config.RumConfig` (RUM sits on top of training: erase.rum imports
erase.train, never the reverse). Importing `erase.rum` loads `scores` only.
"""

from erase.rum.scores import (
    Score,
    denoising_scores,
    difficulty_from_scores,
    entanglement_score,
    partition,
    per_sample_entanglement,
    shared_timesteps,
    text_embeddings,
)

__all__ = ["Score", "denoising_scores", "difficulty_from_scores", "entanglement_score",
           "partition", "per_sample_entanglement", "shared_timesteps", "text_embeddings"]
