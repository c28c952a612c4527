"""Moved to `erase.models.sampling` (sampling belongs with the models); kept for importers not yet updated."""

from erase.models.sampling import ddim_sample, latent_shape, sample_set, seeded_noise  # noqa: F401
