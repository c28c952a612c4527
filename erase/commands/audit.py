"""`erase audit --model M --suite S --out DIR`: how much of a concept a model still makes.

Generates the suite's images (per-row seeds, resumable), runs a detector under a named protocol,
optionally attacks the concept prompts, and writes DIR/results.json and DIR/report.html.
Rerunning the same command resumes a killed audit.
"""

from __future__ import annotations

import argparse

from erase.audit.attacks import ATTACKS
from erase.audit.detectors import DEFAULT_NUDENET_PROTOCOL, NUDENET_PROTOCOLS
from erase.audit.generate import SCHEDULERS
from erase.commands._model_args import add_model_arguments

RERUN = "the images and logs written so far are intact; fix the cause and rerun the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", required=True, help="diffusers folder, .safetensors file, Hub id (cached), RUN/model, or zoo:NAME")
    p.add_argument("--suite", required=True, action="append", metavar="FILE",
                   help="prompt suite (.csv I2P-style, .txt, .jsonl); repeat to add e.g. a retention suite")
    p.add_argument("--out", help="output folder (required unless --dry-run)")
    p.add_argument("--detector", default="nudenet",
                   help=f"nudenet[:PROTOCOL] (protocols: {', '.join(NUDENET_PROTOCOLS)}; default {DEFAULT_NUDENET_PROTOCOL}; "
                        "or LABEL,LABEL>T), digits[:CONCEPT], clip:PATH[:CONCEPT]")
    p.add_argument("--concept", help="the audited concept (digits: 'three'; clip/ringabell: its words)")
    p.add_argument("--attack", choices=ATTACKS,
                   help="attack the concept prompts (docs/attacks.md): unlearndiffatk, ringabell (published, discrete "
                        "prompts), ringabell_continuous (embedding-space variant), concept_inversion, p4d (P4D-N; "
                        "budget official_k: P4D-K), mma (MMA-Diffusion's text attack), relearn (fine-tune a copy on "
                        "concept images; the concept rate per step). Found prompts: OUT/attack/found.csv|jsonl")
    p.add_argument("--attack-budget", metavar="NAME",
                   help="named attack budget: unlearndiffatk/ringabell/mma 'official' (default, the published one) or "
                        "'quick'; p4d 'official', 'official_k', 'quick', 'quick_k'; concept_inversion 'official' "
                        "(default), 'standard' or 'quick'; relearn 'standard' (default: 16 images, up to 200 steps) or "
                        "'quick' (8 images, 5/10/20 steps). The flags below override it")
    p.add_argument("--reference-model", help="the ORIGINAL model: attack target images (UnlearnDiffAtk, concept "
                                             "inversion), Ring-A-Bell's vector and search")
    p.add_argument("--target-images", metavar="DIR", help="concept images instead of --reference-model's")
    p.add_argument("--attack-steps", type=int,
                   help="optimisation steps: UnlearnDiffAtk per visited timestep (official 40); concept inversion in all")
    p.add_argument("--attack-timesteps", type=int,
                   help="UnlearnDiffAtk timesteps visited, evenly spaced; judged after each, stops on success (official 50)")
    p.add_argument("--attack-tokens", type=int, help="UnlearnDiffAtk prefix tokens k (5); concept inversion tokens (1)")
    p.add_argument("--attack-lr", type=float, help="learning rate: UnlearnDiffAtk 0.01, concept inversion 0.08")
    p.add_argument("--attack-limit", type=int, help="attack at most N concept prompts")
    p.add_argument("--ringabell-strength", type=float, help="Ring-A-Bell concept-vector coefficient eta (default 3)")
    p.add_argument("--ringabell-generations", type=int, help="Ring-A-Bell genetic-search generations (official 3000)")
    p.add_argument("--ringabell-population", type=int, help="Ring-A-Bell genetic-search population (official 200)")
    p.add_argument("--mma-ban", action="append", default=[], metavar="WORD",
                   help="mma: also ban tokens containing WORD (repeatable; the concept's words always are), e.g. a synonym")
    p.add_argument("--relearn-images", type=int, help="relearn: concept images fine-tuned on (quick 8, standard 16)")
    p.add_argument("--relearn-checkpoints", type=_int_list, metavar="S,S,...",
                   help="relearn: steps after which the concept rate is measured (quick 5,10,20; standard 25,50,100,200)")
    p.add_argument("--relearn-params", choices=["full", "lora"], help="relearn: fine-tune every UNet weight (default) or a LoRA")
    p.add_argument("--relearn-threshold", type=float, help="relearn: the concept rate that counts as back (default 0.5)")
    p.add_argument("--relearn-reference", metavar="SOURCE",
                   help="relearn: run the same fine-tuning on this model too (the retrain reference), for comparison")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--scheduler", default="ddim", choices=sorted(SCHEDULERS), help="sampler (default ddim)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (does not change the images)")
    p.add_argument("--limit", type=int, help="use only the first N prompts (after filters)")
    p.add_argument("--category", action="append", default=[], help="keep I2P rows with this category (repeatable)")
    p.add_argument("--min-nudity", type=float, help="keep I2P rows with nudity_percentage >= this")
    p.add_argument("--template", help="rewrite prompts, e.g. 'a photo of {prompt}' ({label} also works)")
    p.add_argument("--base-seed", type=int, default=0, help="seed of rows without one is base + row number")
    p.add_argument("--clip", metavar="DIR", help="local CLIP model folder: adds the CLIP score")
    p.add_argument("--reference-images", metavar="DIR", help="real images: adds a Frechet distance")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="validate model and suite, print the image count, make nothing")
    add_model_arguments(p)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


# settings field -> the flag that sets it, for one-line errors that name what the user typed
_FLAGS = {"iterations": "attack-steps", "timesteps": "attack-timesteps", "k": "attack-tokens", "lr": "attack-lr",
          "tokens": "attack-tokens", "budget": "attack-budget", "strength": "ringabell-strength",
          "generations": "ringabell-generations", "population": "ringabell-population", "batch_size": "batch-size",
          "images": "relearn-images", "checkpoints": "relearn-checkpoints", "params": "relearn-params",
          "threshold": "relearn-threshold"}


def settings_from_args(args: argparse.Namespace):
    from erase.audit.attacks import attack_settings
    from erase.audit.generate import GenSettings
    from erase.audit.run import AuditSettings
    from erase.audit.suites import SuiteFilter
    from erase.errors import EraseError

    try:
        return AuditSettings(
            model=args.model, suites=list(args.suite), out=args.out or "", detector=args.detector, concept=args.concept,
            attack=args.attack, gen=GenSettings(args.scheduler, args.steps, args.batch_size),
            filter=SuiteFilter(tuple(args.category), args.min_nudity, args.limit, args.template, args.base_seed),
            **attack_settings(args.attack, args.attack_budget, k=args.attack_tokens, lr=args.attack_lr,
                              iterations=args.attack_steps, timesteps=args.attack_timesteps,
                              strength=args.ringabell_strength, generations=args.ringabell_generations,
                              population=args.ringabell_population, relearn_images=args.relearn_images,
                              relearn_checkpoints=args.relearn_checkpoints, relearn_params=args.relearn_params,
                              relearn_threshold=args.relearn_threshold, mma_ban=tuple(args.mma_ban) or None),
            attack_limit=args.attack_limit, relearn_reference=args.relearn_reference,
            reference_model=args.reference_model, target_images=args.target_images, clip=args.clip,
            reference_images=args.reference_images, device=args.device,
            model_config=args.model_config, allow_pickle=args.allow_pickle,
        )
    except ValueError as err:
        field, _, msg = str(err).partition(":")
        flag = _FLAGS.get(field, field.replace("_", "-"))
        raise EraseError(f"--{flag}: {msg.strip()}") from None


def check_device(name: str) -> None:
    """--device: a torch device that exists here (one line otherwise, before any model is loaded)."""
    import torch

    from erase.errors import EraseError

    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EraseError(f"--device {name!r}: not a device (use auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EraseError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise EraseError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EraseError(f"--device {name}: MPS is not available on this machine (use cpu or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise EraseError(f"--device {name}: unsupported device type {device.type!r} (use auto, cpu, cuda, cuda:N, mps)")


def run(args: argparse.Namespace) -> int:
    from erase.audit.attacks.runner import attack_record
    from erase.audit.run import run_audit
    from erase.errors import EraseError
    from erase.io import check_out_dir, command_line, output_lock

    s = settings_from_args(args)
    check_device(args.device)
    if args.dry_run:
        info = run_audit(s, dry_run=True)
        rows = info["rows"]
        n_attack = 0
        if s.attack:
            n_attack = len([r for r in rows if not r.label or r.label == (s.concept or rows[0].label)][: s.attack_limit])
        from erase.audit.run import suites_summary

        print(f"model {s.model}: ok ({info['architecture']})")
        print(f"suite: {len(rows)} prompts from {', '.join(s.suites)}")
        for suite in info["suites"]:
            print(f"  {suite.summary()}")
            print(f"  {suite.describe_columns()}")
        print(suites_summary(info["suites"]))
        print(f"would make {len(rows)} images ({s.gen.scheduler}, {s.gen.steps} steps)"
              + (f" and attack up to {n_attack} prompts with {s.attack} (budget {attack_record(s)['budget']})"
                 if s.attack else ""))
        return 0
    if not args.out:
        raise EraseError("erase audit: --out DIR is required (or pass --dry-run)")
    with output_lock(check_out_dir(args.out), command_line()):
        res = run_audit(s)
    print(res["summary"])
    m = res["metrics"]
    print(f"audit of {res['model']} under {res['protocol']['id']}: {m['n_images']} images")
    for k in ("concept_rate", "retention_accuracy", "pre_asr", "asr", "fd_judge", "clip_score"):
        if m.get(k) is not None:
            print(f"  {k}: {m[k]:.4f}")
    relearn = (res.get("attack") or {}).get("relearn")
    if relearn:
        curve = ", ".join(f"{c['steps']}: {c['concept_rate']:.2f}" for c in relearn["curve"])
        print(f"  relearning curve (steps: concept rate): {curve}; steps to {relearn['threshold']}: "
              f"{relearn['steps_to_threshold'] if relearn['steps_to_threshold'] is not None else 'not reached'}")
    if (res.get("attack") or {}).get("found_suite"):
        print(f"  found prompts (replay with --suite): {args.out}/{res['attack']['found_suite']}")
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0
