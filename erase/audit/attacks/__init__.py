"""Adversarial attacks used in audits (docs/attacks.md).

- unlearndiffatk: white-box adversarial prefix tokens, the audited model is its own victim.
- ringabell: the published Ring-A-Bell, real text prompts found by a genetic search.
- ringabell_continuous: Ring-A-Bell's concept vector added in embedding space (a variant).
- concept_inversion: textual inversion against the erased model (Pham et al.).
- p4d: P4D-N / P4D-K, real-token prompts that make the erased UNet denoise like the original.
- mma: MMA-Diffusion's text attack, a GCG search for a prompt the text encoder takes for the concept.
- relearn: fine-tune a copy of the audited model on a few concept images; the concept rate per step.

Every attack but relearn writes the prompts it found as a suite (found.py): the transfer test.
"""

ATTACKS = ("unlearndiffatk", "ringabell", "ringabell_continuous", "concept_inversion", "p4d", "mma", "relearn")
# the AuditSettings field of each attack's settings
SETTINGS_FIELD = {"unlearndiffatk": "udatk", "ringabell": "ringabell", "ringabell_continuous": "ringabell",
                  "concept_inversion": "ci", "p4d": "p4d", "mma": "mma", "relearn": "relearn"}
# third-party attacks (entry-point group `erase.attacks`, erase/plugins.py): name -> make_attacker(**context),
# context = settings, out, pipe, rows, concept, detector, targets, open_model (see runner.make_attacker);
# it returns row -> (image [H, W, 3] in [0, 1], record dict).
PLUGIN_ATTACKS: dict[str, object] = {}


def register_attack(name: str, factory) -> None:
    """Make `--attack NAME` run `factory`; a name already taken (a built-in's too) is an error."""
    from erase.plugins import register_unique

    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is already registered (a built-in attack)")
    register_unique(PLUGIN_ATTACKS, name, factory, "attack")


def attack_names() -> tuple[str, ...]:
    """The built-in attacks and every installed plugin's."""
    from erase.plugins import load_plugins

    load_plugins("erase.attacks", register_attack)
    return ATTACKS + tuple(PLUGIN_ATTACKS)


def attack_settings(attack: str | None, budget: str | None, *, k=None, lr=None, iterations=None, timesteps=None,
                    strength=None, generations=None, population=None, relearn_images=None, relearn_checkpoints=None,
                    relearn_params=None, relearn_threshold=None, mma_ban=None) -> dict:
    """AuditSettings fields {udatk, ringabell, ci, p4d, mma, relearn}: the chosen attack's named budget
    plus overrides.

    Flags that do not apply to the chosen attack are ignored; the other attacks keep their
    published settings (they are recorded in the audit fingerprint, not used).
    """
    from erase.audit.attacks.common import from_budget
    from erase.audit.attacks.concept_inversion import ConceptInversionSettings
    from erase.audit.attacks.mma import MMASettings
    from erase.audit.attacks.p4d import P4DSettings
    from erase.audit.attacks.relearn import RelearnSettings
    from erase.audit.attacks.ringabell import RingABellSettings
    from erase.audit.attacks.unlearndiffatk import UnlearnDiffAtkSettings

    given = {"udatk": (UnlearnDiffAtkSettings, "official", {"k": k, "lr": lr, "iterations": iterations,
                                                            "timesteps": timesteps}),
             "ringabell": (RingABellSettings, "official", {"strength": strength, "generations": generations,
                                                           "population": population}),
             "ci": (ConceptInversionSettings, "official", {"tokens": k, "lr": lr, "iterations": iterations}),
             "p4d": (P4DSettings, "official", {"tokens": k, "lr": lr, "iterations": iterations}),
             "mma": (MMASettings, "official", {"tokens": k, "iterations": iterations, "ban": mma_ban}),
             "relearn": (RelearnSettings, "standard", {"lr": lr, "images": relearn_images,
                                                       "checkpoints": relearn_checkpoints, "params": relearn_params,
                                                       "threshold": relearn_threshold})}
    chosen = SETTINGS_FIELD.get(attack or "")
    if budget and not chosen:
        raise ValueError("budget: needs --attack NAME")
    out = {}
    for key, (cls, default, overrides) in given.items():
        from_budget(cls, default, **overrides)  # a bad value fails even for an attack not chosen
        out[key] = from_budget(cls, budget or default, **overrides) if key == chosen else cls()
    return out
