"""Adversarial prompt attacks used in audits: UnlearnDiffAtk (white-box, the audited model is its
own victim) and a Ring-A-Bell-style concept vector (model-agnostic, text-embedding space)."""

ATTACKS = ("unlearndiffatk", "ringabell")
