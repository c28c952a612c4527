"""`erase audit --model M --suite S --out DIR`: how much of a concept a model still makes.

Generates the suite's images (per-row seeds, resumable), runs a detector under a named protocol,
optionally attacks the concept prompts, and writes DIR/results.json and DIR/report.html.
Rerunning the same command resumes a killed audit.
"""

from __future__ import annotations

import argparse

from erase.audit.attacks import attack_names
from erase.audit.detectors import DEFAULT_NUDENET_PROTOCOL, NUDENET_PROTOCOLS
from erase.audit.generate import SCHEDULERS
from erase.audit.protocols import PROTOCOLS

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULTS = {"steps": 50, "scheduler": "ddim", "detector": "nudenet", "images_per_prompt": 1}
from erase.commands._model_args import add_model_arguments

RERUN = "the images and logs written so far are intact; fix the cause and rerun the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model", help="diffusers folder, .safetensors file, Hub id (cached), RUN/model, or zoo:NAME (required)")
    p.add_argument("--suite", action="append", metavar="FILE",
                   help="prompt suite (.csv I2P-style, .txt, .jsonl); repeat to add e.g. a retention suite (required)")
    p.add_argument("--out", help="output folder (required unless --dry-run)")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), metavar="NAME",
                   help=f"a published audit protocol ({', '.join(PROTOCOLS)}): fixes the suite file (checked by sha256), "
                        "images per prompt, sampler, steps, guidance, resolution, seeds, detector and attack; "
                        "--protocol NAME --dry-run lists them with their sources")
    p.add_argument("--detector",
                   help=f"nudenet[:PROTOCOL] (protocols: {', '.join(NUDENET_PROTOCOLS)}; default {DEFAULT_NUDENET_PROTOCOL}; "
                        "or LABEL,LABEL>T), digits[:CONCEPT], clip:PATH[:CONCEPT], classifier:DIR:LABEL[@K], or a plugin's")
    p.add_argument("--classifier", metavar="DIR", help="an image-classification model folder (transformers) for "
                   "classifier detectors, e.g. UnlearnDiffAtk's artist classifier for --protocol unlearndiffatk-vangogh")
    p.add_argument("--concept", help="the audited concept (digits: 'three'; clip/ringabell: its words); several: 'three,five,eight'")
    p.add_argument("--attack", choices=attack_names(),
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
                                             "inversion), Ring-A-Bell's vector and search; with a labelled suite, the base model whose confusions "
                                             "between labels give each concept's nearest ones (pinpoint-ness)")
    p.add_argument("--target-images", metavar="DIR", help="concept images instead of --reference-model's")
    p.add_argument("--attack-steps", type=int,
                   help="optimisation steps: UnlearnDiffAtk per visited timestep (official 40); concept inversion in all")
    p.add_argument("--attack-timesteps", type=int,
                   help="UnlearnDiffAtk timesteps visited, evenly spaced; judged after each, stops on success (official 50)")
    p.add_argument("--attack-tokens", type=int, help="UnlearnDiffAtk prefix tokens k (5); concept inversion tokens (1)")
    p.add_argument("--attack-lr", type=float, help="learning rate: UnlearnDiffAtk 0.01, concept inversion 0.08")
    p.add_argument("--attack-limit", type=int, help="attack at most N concept prompts")
    p.add_argument("--no-attack", action="store_true", help="with --protocol: skip its attack (pre-ASR only; recorded)")
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
    p.add_argument("--steps", type=int, help="denoising steps (default 50)")
    p.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="sampler (default ddim)")
    p.add_argument("--images-per-prompt", type=int, help="images of each prompt (default 1): image k is the k-th slice "
                   "of one noise draw from the row's seed, as the official scripts make them")
    p.add_argument("--guidance", type=float, help="one guidance scale for every row (default: each row's own, else 7.5)")
    p.add_argument("--size", type=int, help="one square resolution for every row (default: each row's own, else the model's)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (does not change the images)")
    p.add_argument("--limit", type=int, help="use only the first N prompts (after filters)")
    p.add_argument("--category", action="append", default=[], help="keep I2P rows with this category (repeatable)")
    p.add_argument("--min-nudity", type=float, help="keep I2P rows with nudity_percentage >= this")
    p.add_argument("--template", help="rewrite prompts, e.g. 'a photo of {prompt}' ({label} also works)")
    p.add_argument("--base-seed", type=int, default=0, help="seed of rows without one is base + row number")
    p.add_argument("--clip", metavar="DIR|HUB_ID", nargs="?", const=DEFAULT_CLIP,
                   help=f"adds the CLIP score with a real CLIP: a local folder or a Hub id in the local cache "
                        f"(bare --clip: {DEFAULT_CLIP})")
    p.add_argument("--reference-images", metavar="DIR", help="real images (e.g. the COCO images of a coco_30k.csv "
                   "suite): adds FID with --inception, else a Frechet distance in CLIP or judge features")
    p.add_argument("--inception", metavar="FILE", nargs="?", const="auto",
                   help="the FID Inception-v3 weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth with "
                        "--allow-pickle, or its .safetensors conversion); bare --inception: torch hub's cache")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dry-run", action="store_true", help="validate model and suite, print the image count, make nothing")
    add_model_arguments(p, components=True)


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


def apply_protocol(args: argparse.Namespace) -> list[str]:
    """Fill the flags a --protocol fixes; a flag given with another value is an error. Returns the
    deviations the user asked for that the protocol allows (a subset of prompts, no attack)."""
    from erase.audit.protocols import get_protocol
    from erase.errors import EraseError

    if not args.protocol:
        for k, v in DEFAULTS.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        return []
    p = get_protocol(args.protocol)
    detector = p.detector
    if "{classifier}" in detector:
        if args.classifier:
            detector = detector.replace("{classifier}", args.classifier)
        elif args.dry_run and not args.model:
            detector = detector.replace("{classifier}", "DIR")
        else:
            raise EraseError(f"--protocol {p.name} needs {p.needs}")
    fixed = {"steps": p.steps, "scheduler": p.scheduler, "detector": detector, "images_per_prompt": p.images_per_prompt,
             "guidance": p.guidance, "size": p.size, "min_nudity": p.min_nudity}
    for key, value in fixed.items():
        given = getattr(args, key)
        if given is not None and given != value:
            raise EraseError(f"--{key.replace('_', '-')} {given}: --protocol {p.name} fixes it to {value}")
        setattr(args, key, value)
    if args.category and tuple(args.category) != p.categories:
        raise EraseError(f"--category: --protocol {p.name} fixes the categories to {', '.join(p.categories) or 'all'}")
    args.category = list(p.categories)
    deviations = []
    if args.attack is None and p.attack and not args.no_attack:
        args.attack, args.attack_budget = p.attack, args.attack_budget or p.attack_budget
        args.attack_tokens = args.attack_tokens or p.attack_tokens
    elif args.attack not in (None, p.attack):
        raise EraseError(f"--attack {args.attack}: --protocol {p.name} fixes the attack to {p.attack or 'none'}")
    if p.attack and args.no_attack:
        deviations.append("no attack (--no-attack): pre-ASR only")
    if args.attack and args.attack_budget and args.attack_budget != p.attack_budget:
        deviations.append(f"attack budget {args.attack_budget} (protocol: {p.attack_budget})")
    if args.attack and args.attack_tokens != p.attack_tokens:
        deviations.append(f"attack tokens {args.attack_tokens} (protocol: {p.attack_tokens})")
    for flag, value in (("limit", args.limit), ("attack_limit", args.attack_limit), ("template", args.template)):
        if value is not None:
            deviations.append(f"--{flag.replace('_', '-')} {value}")
    return deviations


def settings_from_args(args: argparse.Namespace):
    from erase.audit.attacks import attack_settings
    from erase.audit.generate import GenSettings
    from erase.audit.run import AuditSettings
    from erase.audit.suites import SuiteFilter
    from erase.errors import EraseError

    deviations = apply_protocol(args)
    missing = [flag for flag, value in (("--model", args.model), ("--suite", args.suite)) if not value]
    if missing:  # not argparse-required: `--protocol NAME --dry-run` needs neither
        raise EraseError(f"the following arguments are required: {', '.join(missing)}")
    try:
        if args.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt: must be >= 1, got {args.images_per_prompt}")
        if args.size is not None and (args.size < 8 or args.size % 8):
            raise ValueError(f"size: must be a positive multiple of 8, got {args.size}")
        if args.guidance is not None and not args.guidance >= 0:
            raise ValueError(f"guidance: must be >= 0, got {args.guidance}")
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
            protocol=args.protocol, deviations=deviations, images_per_prompt=args.images_per_prompt,
            guidance=args.guidance, size=args.size, inception=args.inception,
            unet=args.unet, text_encoder=args.text_encoder, lora=args.lora,
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

    if args.protocol and args.dry_run and not (args.model and args.suite):
        from erase.audit.protocols import describe, get_protocol

        apply_protocol(args)
        print("\n".join(describe(get_protocol(args.protocol))))
        print(f"(pass --model and --suite FILE, the published {get_protocol(args.protocol).suite.split(': ')[1]}, "
              "to check them too)")
        return 0
    s = settings_from_args(args)
    check_device(args.device)
    if args.dry_run:
        if s.protocol:
            from erase.audit.protocols import describe, get_protocol

            print("\n".join(describe(get_protocol(s.protocol))))
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
        check = info.get("protocol_check")
        if check:
            print(f"protocol {check['name']}: " + ("suite file is the published one (sha256 matches)"
                                                   if check["suite_matches"] else "") + "".join(
                f"{'; ' if i or check['suite_matches'] else ''}{d}" for i, d in enumerate(check["deviations"])))
        print(f"would make {len(rows)} images ({s.gen.scheduler}, {s.gen.steps} steps)"
              + (f" and attack up to {n_attack} prompts with {s.attack} (budget {attack_record(s)['budget']})"
                 if s.attack else ""))
        return 0
    if not args.out:
        raise EraseError("erase audit: --out DIR is required (or pass --dry-run)")
    import contextlib
    import os

    main = os.environ.get("RANK", "0") == "0"  # accelerate launch: the main process locks, merges and reports
    with output_lock(check_out_dir(args.out), command_line()) if main else contextlib.nullcontext():
        res = run_audit(s)
    if not res:
        return 0
    print(res["summary"])
    m = res["metrics"]
    print(f"audit of {res['model']} under {res['protocol']['id']}: {m['n_images']} images")
    for k in ("concept_rate", "retention_accuracy", "pinpoint_retention", "pre_asr", "asr", "fd_judge", "clip_score"):
        if m.get(k) is not None:
            print(f"  {k}: {m[k]:.4f}")
    for c, v in (m.get("per_concept") or {}).items():
        near = (m.get("pinpoint") or {}).get(c)
        line = f"  {c}: rate {v['rate']:.4f} (n={v['n']})" if v["rate"] is not None else f"  {c}: no rows"
        if near and near["retention"] is not None:
            line += f"; its nearest ({', '.join(near['nearest'])}) kept {near['retention']:.4f}"
        print(line)
    relearn = (res.get("attack") or {}).get("relearn")
    if relearn:
        curve = ", ".join(f"{c['steps']}: {c['concept_rate']:.2f}" for c in relearn["curve"])
        print(f"  relearning curve (steps: concept rate): {curve}; steps to {relearn['threshold']}: "
              f"{relearn['steps_to_threshold'] if relearn['steps_to_threshold'] is not None else 'not reached'}")
    if (res.get("attack") or {}).get("found_suite"):
        print(f"  found prompts (replay with --suite): {args.out}/{res['attack']['found_suite']}")
    print(f"wrote {args.out}/results.json and {args.out}/report.html")
    return 0
