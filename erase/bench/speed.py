"""`erase bench speed`: how fast and how lean a training step is, as ratios measured in one run.

Every ratio compares two sides timed in the same process, interleaved (A, B, A, B, ...) after a
warm-up, and is reported as the median of the per-pair ratios with its spread (min, max): the
machines this runs on are shared and noisy, and interleaving makes slow phases hit both sides.

Per objective (a shipped `configs/digits/<name>.yaml`, built by the real `Trainer`):
- floor: `Trainer.train_step` against the UNet passes that step makes, replayed as bare
  forward calls of the same UNet on inputs of the same shapes (with gradient where the step had
  one, then one backward). The passes are recorded with a forward hook during a real step.
- loreun_d / loreun_s: the same step with LoReUn-d or LoReUn-s weighting against uniform; LoReUn-s
  also reports its one-time cost (the static difficulty pass) in seconds.
- memory: peak bytes allocated during the step against a plain fine-tuning step (noise
  prediction MSE) of the same trainable set, two ways: on the step's forget batch ("ratio", the
  first definition) and on as many samples as the step sees (forget + retain batch:
  "ratio_same_samples"; the same number where an objective has no retain term). On CUDA `torch.cuda.max_memory_allocated`;
  on CPU the profiler's memory events (`torch.profiler`, profile_memory=True): the running sum,
  in time order, of each op's net own CPU allocation and of every free inside the step, and its
  maximum (tensors alive before the step, e.g. weights, count on neither side; allocations freed
  inside one op are netted, so both sides are slight underestimates).
- esd_official (ESD only): the official procedure against ours on the SAME algorithm, ours being
  the recipe's default `trajectory: online`. The official step (rohitgandikota/erasing,
  train-scripts/train-esd.py at 414dc94^, lines 205-243) re-samples a partial DDIM trajectory with
  the model being trained before every loss evaluation (t_enc uniform in [0, ddim_steps), one t_enc
  per batch, classifier-free guidance), stopping at t_enc; ours samples every sample's trajectory
  to its end (the LoReUn difficulty needs its x_0: erase/objectives/esd.py). Both at the recipe's
  `ddim_steps` (the official script's default is 50, OFFICIAL_ESD_DDIM_STEPS, twice our recipe's
  25: at its own default the official step costs about twice what is timed here). One loss
  evaluation per step on both sides, of the official loss (no retain term).
  "esd_official_cached": the same official step against our `trajectory: cached` option (x_t read
  from the frozen model's cached trajectories: one UNet call per sample-step), on its own line.
  (Before issue 22 a third ratio, "esd_official_with_retain", had the recipe's retain term on both
  sides; the retain term is the same on both sides, so it only dilutes the ratio.)

Once: audit throughput (images/s of `erase.audit.generate.sample`, the audit's generator,
against `StableDiffusionPipeline.__call__` on the same prompts, seeds, scheduler and steps), and
how step time, one-time setup and memory grow with the forget-set size, by more prompts and by more
samples of the same prompts (a PNG plot).
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

OBJECTIVES = ("esd", "salun", "erasediff", "ablation", "advunlearn", "neggrad", "ga")
OFFICIAL_ESD_DDIM_STEPS = 50  # rohitgandikota/erasing, train-scripts/train-esd.py: --ddim_steps default


@contextlib.contextmanager
def quiet_profiler_lines():
    """Drop the `USDT: ... profiler_start/stop` lines that the torch profiler's C++ side writes on
    every start and stop (straight to the process's stdout/stderr, past Python's streams); any
    other output of the block is written back."""
    import os
    import sys
    import tempfile

    saved = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            saved.append(os.dup(fd))
            os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            rest = b"".join(line for line in tmp if not line.startswith(b"USDT:"))
            if rest:
                sys.stderr.write(rest.decode(errors="replace"))


def ratio_stats(pairs: list[tuple[float, float]]) -> dict:
    """Median of per-pair ratios a/b and its spread; the two sides' medians in seconds."""
    ratios = [a / b for a, b in pairs]
    return {"ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios),
            "a_s": statistics.median(a for a, _ in pairs), "b_s": statistics.median(b for _, b in pairs)}


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds `fn()` takes on `device`, the one clock of this bench. On CUDA, kernels run
    asynchronously: the device is synchronised before the clock starts and before it stops
    (torch.cuda.synchronize), so the time is the work done, not the time to queue it. Elsewhere
    (CPU) operations finish before they return and the wall clock is the time."""
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleave(a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int = 1,
               device: torch.device | str = "cpu") -> list[tuple[float, float]]:
    """Time a and b alternately on `device` (`warmup` untimed rounds first); the order flips every round."""
    for _ in range(warmup):
        a(), b()
    pairs = []
    for i in range(repeats):
        ta = tb = 0.0
        for side in ((0, 1) if i % 2 == 0 else (1, 0)):
            dt = timed(a if side == 0 else b, device)
            ta, tb = (dt, tb) if side == 0 else (ta, dt)
        pairs.append((ta, tb))
    return pairs


# ---------------------------------------------------------------------------------- memory
def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """Peak bytes allocated while `fn` runs, above what was allocated when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - start), "cuda_max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler_lines(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Each op's net own allocation (self_cpu_memory_usage) and every free ("[memory]" events), in time order.
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    running = peak = 0
    for e in events:
        running += e.self_cpu_memory_usage
        peak = max(peak, running)
    return int(peak), "torch_profiler_cpu_allocations"


# ---------------------------------------------------------------------------------- trainers
def make_trainer(config: Path, model: str, run_dir: Path, overrides: list[str], precision: str | None = None,
                 device: str | None = None):
    """The real `Trainer` of a recipe, built (caches made), on `device` ("cpu" forces the CPU; "cuda" or
    None: Accelerate's choice, the GPU where there is one)."""
    from erase.config import load_config
    from erase.train.config import RunConfig, resolve_data_paths
    from erase.train.trainer import Trainer

    ov = [f"model={model}", "train.checkpoint_every=0", "train.report_to=none", "train.lr_scheduler=constant",
          "train.lr_warmup_steps=0", *overrides]
    if precision:
        ov.append(f"train.mixed_precision={precision}")
    cfg = resolve_data_paths(load_config(RunConfig, config, ov), config)
    tr = Trainer(cfg, run_dir, str(config), device=device)
    # The trainer prints its "mixed precision: ..." line at every build: once per bench is enough.
    quiet = contextlib.redirect_stdout(io.StringIO()) if _PRINTED_PRECISION else contextlib.nullcontext()
    with quiet:
        tr.build_seconds = timed(tr.build, "cuda" if device == "cuda" else "cpu")
    _PRINTED_PRECISION.append(True)
    return tr


_PRINTED_PRECISION: list[bool] = []


class StepRunner:
    """Calls `trainer.train_step` with an increasing step number (fresh draws each call)."""

    def __init__(self, trainer):
        self.tr, self.step = trainer, 0

    def __call__(self) -> None:
        self.tr.train_step(self.step)
        self.step += 1


def record_unet_calls(trainer) -> list[dict]:
    """The UNet calls one real training step makes: input shapes, dtype, whether grad was on."""
    calls: list[dict] = []
    unet = trainer.models.unet

    def hook(_module, args, kwargs):
        x = args[0]
        ehs = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        calls.append({"sample": tuple(x.shape), "dtype": x.dtype, "cond": tuple(ehs.shape), "cond_dtype": ehs.dtype,
                      "grad": torch.is_grad_enabled()})

    h = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        StepRunner(trainer)()
    finally:
        h.remove()
    return calls


def floor_fn(trainer, calls: list[dict]) -> Callable[[], None]:
    """Bare forward (and one backward) calls of the same UNet, same shapes and grad modes."""
    unet, dev = trainer.models.unet, trainer.models.device
    # Only the text encoder trains (e.g. AdvUnlearn): the backward still runs through the UNet to the
    # conditioning, so the replayed conditioning asks for a gradient (the text encoder's own passes are
    # not part of the floor).
    to_cond = not trainer.selection.trains("unet")
    g = torch.Generator("cpu").manual_seed(0)
    inputs = [(torch.randn(c["sample"], generator=g).to(dev, c["dtype"]),
               torch.randint(0, 1000, (c["sample"][0],), generator=g).to(dev),
               torch.randn(c["cond"], generator=g).to(dev, c["cond_dtype"]).requires_grad_(to_cond and c["grad"]),
               c["grad"]) for c in calls]

    def run() -> None:
        total = None
        with trainer.acc.autocast():
            for x, t, ehs, grad in inputs:
                with torch.set_grad_enabled(grad):
                    out = unet(x, t, encoder_hidden_states=ehs, return_dict=False)[0]
                if grad:
                    total = out.float().pow(2).mean() if total is None else total + out.float().pow(2).mean()
        if total is not None and total.requires_grad:
            total.backward()
        for p in trainer.params:
            p.grad = None

    return run


def step_samples(trainer) -> int:
    """Samples one step of `trainer` sees: its forget batch plus its retain batch, if it has one."""
    return trainer.micro + (trainer.rmicro if trainer.data.uses_retain() else 0)


def plain_finetune_fn(trainer, samples: int | None = None) -> Callable[[], None]:
    """A plain fine-tuning step of the same trainable set: noise-prediction MSE, backward, optimizer
    step, on `samples` samples (default: the step's forget batch)."""
    m, dev = trainer.models, trainer.models.device
    b = samples or trainer.micro
    g = torch.Generator("cpu").manual_seed(1)
    z0 = torch.randn((b, *m.latent_shape()), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    prompts = trainer.data.forget_prompts[:1] * b

    def run() -> None:
        t = torch.randint(0, m.num_train_timesteps, (b,), generator=g)
        with trainer.acc.autocast():
            cond = m.encode(prompts)  # with gradient where the text encoder is trained
            x_t = m.add_noise(z0.to(dev), noise.to(dev), t.to(dev))
            loss = torch.nn.functional.mse_loss(m.pred(x_t, t.to(dev), cond).float(), noise.to(dev))
        trainer.acc.backward(loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return run


def official_esd_fn(trainer, seed: int = 0) -> Callable[[], None]:
    """rohitgandikota/erasing's step: a partial DDIM trajectory (the recipe's `ddim_steps`, eta 0, stopped
    at t_enc) with the CURRENT model, then the loss evaluation. `trainer` must use `trajectory: cached`:
    its step (one loss evaluation on a cached x_t of the same shapes) stands in for the loss on the
    partial trajectory's x_t."""
    from diffusers import DDIMScheduler

    from erase.models.sampling import denoise_loop

    m, obj = trainer.models, trainer.objective
    assert obj.config.trajectory == "cached", "the official side's loss evaluation reads a cached x_t"
    guidance = float(obj.config.guidance)
    steps = int(obj.config.ddim_steps)
    sched = DDIMScheduler.from_config(m.noise_scheduler.config)
    sched.set_timesteps(steps)
    full = sched.timesteps.clone()
    g = torch.Generator("cpu").manual_seed(seed)
    runner = StepRunner(trainer)
    b = trainer.micro
    with torch.no_grad():
        cond = m.encode(trainer.data.forget_prompts[:1] * b)
        uncond = m.encode([""]).expand_as(cond)

    def run() -> None:
        t_enc = int(torch.randint(0, steps, (1,), generator=g))
        x = torch.randn((b, *m.latent_shape()), generator=g).to(m.device) * sched.init_noise_sigma
        sched.timesteps = full[: t_enc + 1]  # the partial trajectory: erase's one guided loop, stopped at t_enc
        with torch.no_grad(), trainer.acc.autocast():
            denoise_loop(m, sched, x, cond, uncond, guidance)
        runner()  # the loss evaluation itself

    return run


def esd_official_ratios(config: Path, model: str, work: Path, repeats: int, precision: str | None,
                        overrides: list[str], log: Callable[[str], None], pairs: int | None = None,
                        device: str | None = None) -> dict:
    """Official ESD's step against ours at equal loss evaluations (one per step on both sides).

    "esd_official": both sides evaluate the official loss (ESD's, without our optional retain term,
    which rohitgandikota/erasing does not have), ours with `trajectory: online`;
    "esd_official_cached": the same against our `trajectory: cached` option.
    t_enc is drawn per step (0 to steps-1 trajectory steps), so these pairs vary more than the
    others: `pairs` (default: at least 9) are timed.
    """
    n = pairs or max(repeats, 9)

    def trainer(name: str, trajectory: str):
        return make_trainer(config, model, work / name, [*overrides, "weighting.kind=uniform", "objective.retain_weight=0",
                                                         f"objective.trajectory={trajectory}"], precision, device)

    cached = trainer("esd_cached", "cached")
    official = official_esd_fn(cached)
    out = {}
    for key, ours in (("esd_official", trainer("esd_online", "online")), ("esd_official_cached", cached)):
        out[key] = ratio_stats(interleave(official, StepRunner(ours), n, device=ours.models.device))
        steps = int(ours.objective.config.ddim_steps)
        out[key].update(ddim_steps=steps, ours_ddim_steps=steps, pairs=n, official_default_ddim_steps=OFFICIAL_ESD_DDIM_STEPS,
                        ours_trajectory=ours.objective.config.trajectory)
        log(f"esd: official / ours = {out[key]['ratio']:.2f} ({key})")
    return out


# ---------------------------------------------------------------------------------- the bench
def bench_objective(name: str, config: Path, model: str, work: Path, repeats: int, precision: str | None,
                    overrides: list[str], log: Callable[[str], None], official_pairs: int | None = None,
                    device: str | None = None) -> dict:
    # One run folder per objective: the three weightings share its one-time caches (images, trajectories).
    tr = make_trainer(config, model, work / name, [*overrides, "weighting.kind=uniform"], precision, device)
    dev = tr.models.device
    out: dict = {"config": str(config), "device": str(dev), "batch": tr.micro, "trainable": sum(p.numel() for p in tr.params),
                 "build_s": round(tr.build_seconds, 3)}
    step = StepRunner(tr)
    calls = record_unet_calls(tr)
    out["unet_calls"] = {"with_grad": sum(c["grad"] for c in calls), "no_grad": sum(not c["grad"] for c in calls)}
    out["floor"] = ratio_stats(interleave(step, floor_fn(tr, calls), repeats, device=dev))
    log(f"{name}: step / floor = {out['floor']['ratio']:.3f}")
    if name == "esd":
        out.update(esd_official_ratios(config, model, work, repeats, precision, overrides, log, official_pairs, device))
    mem_step, kind = peak_bytes(step, dev)
    plain = plain_finetune_fn(tr)
    plain()  # optimizer state exists on both sides before measuring
    mem_plain, _ = peak_bytes(plain, dev)
    n = step_samples(tr)
    plain_n = plain_finetune_fn(tr, n)
    plain_n()
    mem_plain_n, _ = peak_bytes(plain_n, dev)
    out["memory"] = {"kind": kind, "step_bytes": mem_step, "plain_finetune_bytes": mem_plain,
                     "ratio": mem_step / max(mem_plain, 1), "step_samples": n, "plain_same_samples_bytes": mem_plain_n,
                     "ratio_same_samples": mem_step / max(mem_plain_n, 1)}
    log(f"{name}: memory step / plain = {out['memory']['ratio']:.3f} (forget batch), "
        f"{out['memory']['ratio_same_samples']:.3f} (same {n} samples)")
    for kind_, ov in (("loreun_d", ["weighting.kind=dynamic"]), ("loreun_s", ["weighting.kind=static"])):
        other = make_trainer(config, model, work / name, [*overrides, *ov], precision, device)
        out[kind_] = ratio_stats(interleave(StepRunner(other), step, repeats, device=dev))
        out[kind_]["overhead"] = out[kind_]["ratio"] - 1.0
        if kind_ == "loreun_s":
            out[kind_]["one_time_s"] = round(timed(other._static_losses, dev), 3)
        log(f"{name}: {kind_} / uniform = {out[kind_]['ratio']:.3f}")
        del other
    return out


def audit_throughput(model: str, n: int, steps: int, repeats: int, device: str = "cpu") -> dict:
    """Images/s of the audit's generator against StableDiffusionPipeline.__call__ (same everything),
    both with the pipeline on `device`."""
    from erase.audit.generate import GenSettings, make_scheduler, sample
    from erase.models.loading import load_pipeline
    from erase.models.soft_prompt import encode_plain

    pipe = load_pipeline(model).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a handwritten {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")]
    prompts = (prompts * math.ceil(n / len(prompts)))[:n]
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    settings = GenSettings("ddim", steps, n)
    pipe.scheduler = make_scheduler(pipe, "ddim")

    def ours() -> None:
        with torch.no_grad():
            cond = encode_plain(pipe.tokenizer, pipe.text_encoder, prompts)
            gens = [torch.Generator("cpu").manual_seed(i) for i in range(n)]
            sample(pipe, cond, torch.full((n,), 5.0), gens, settings, size, size)

    def bare() -> None:
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(n)]
        pipe(prompts, num_inference_steps=steps, guidance_scale=5.0, generator=gens, height=size, width=size,
             output_type="np", eta=0.0)

    stats = ratio_stats(interleave(bare, ours, repeats, device=pipe.device))  # time(bare)/time(ours) = throughput(ours)/throughput(bare)
    stats.update({"device": str(pipe.device), "images": n, "ddim_steps": steps, "ours_images_per_s": n / stats["b_s"], "bare_images_per_s": n / stats["a_s"]})
    return stats


def scaling(config: Path, model: str, work: Path, sizes: list[int], repeats: int, precision: str | None,
            overrides: list[str], log: Callable[[str], None], device: str | None = None) -> list[dict]:
    """Step time, one-time setup and step memory against the forget-set size, grown two ways:
    more prompts (series "prompts": `sizes` prompts, one sample each) and more samples of the same
    prompts (series "samples": `sizes[0]` prompts, `size / sizes[0]` samples each; its first point
    is the prompts series' first)."""
    rows = []
    base = sizes[0]
    points = [("prompts", p, 1) for p in sizes] + [("samples", base, n // base) for n in sizes[1:] if n % base == 0]
    for series, p, spp in points:
        prompts = [f"a handwritten three, variant {i}" for i in range(p)]
        ov = [*overrides, "weighting.kind=uniform", f"data.forget.prompts={prompts!r}".replace("'", '"'),
              f"data.forget.samples_per_prompt={spp}", "data.forget.file=null"]
        tr = make_trainer(config, model, work / "scaling" / f"p{p}x{spp}", ov, precision, device)
        step = StepRunner(tr)
        step()
        times = [timed(step, tr.models.device) for _ in range(repeats)]
        mem, kind = peak_bytes(step, tr.models.device)
        rows.append({"series": series, "forget_prompts": p, "samples_per_prompt": spp, "forget_samples": tr.N,
                     "setup_s": round(tr.build_seconds, 3), "step_s": statistics.median(times), "step_s_min": min(times),
                     "step_s_max": max(times), "step_peak_bytes": mem, "memory_kind": kind})
        log(f"scaling: {p} prompts x {spp} samples: setup {tr.build_seconds:.2f} s, step {rows[-1]['step_s']:.3f} s")
        del tr
    return rows


def plot_scaling(rows: list[dict], path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from erase.io import atomic_write_bytes

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    first = rows[0]
    labels = {"prompts": "more prompts (1 sample each)", "samples": f"more samples of {first['forget_prompts']} prompt(s)"}
    xs = sorted({r["forget_samples"] for r in rows})
    for series, label in labels.items():
        rs = [r for r in rows if r["series"] == series]
        if series == "samples" and rs:
            rs = [first, *rs]  # the series starts where the prompts series does
        if not rs:
            continue
        x = [r["forget_samples"] for r in rs]
        med = [r["step_s"] for r in rs]
        axes[0].errorbar(x, med, yerr=[[m - r["step_s_min"] for m, r in zip(med, rs)], [r["step_s_max"] - m for m, r in zip(med, rs)]],
                         marker="o", capsize=3, label=label)
        axes[1].plot(x, [r["setup_s"] for r in rs], marker="o", label=label)
        axes[2].plot(x, [r["step_peak_bytes"] / 2**20 for r in rs], marker="o", label=label)
    axes[0].set(title="step time (median, min-max)", ylabel="s")
    axes[1].set(title="one-time setup (caches)", ylabel="s")
    axes[2].set(title="step peak memory", ylabel=f"MiB ({first['memory_kind']})")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.minorticks_off()
        ax.set_xlabel("forget samples")
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def model_source(arch: str | None, work: Path) -> str:
    """zoo:digits by default; a saved random-weight pipeline for --arch tiny|small|sd15."""
    if not arch or arch == "digits":
        return "zoo:digits"
    from erase.models.builder import build_pipeline

    folder = work / f"model_{arch}"
    if not (folder / "model_index.json").is_file():
        build_pipeline(arch).save_pretrained(folder)
    return str(folder)


def run_speed(out: Path, *, quick: bool, objectives: tuple[str, ...] | None = None, arch: str | None = None,
              device: str = "cpu", dtype: str | None = None, repeats: int | None = None,
              configs_dir: Path | None = None, log: Callable[[str], None] = print) -> dict:
    from erase.errors import EraseError
    from erase.io import atomic_write_json
    from erase.resources import data_path

    configs_dir = configs_dir or data_path("configs/digits")
    if device == "cuda" and not torch.cuda.is_available():
        raise EraseError("--device: cuda is not available on this machine")
    if device != "cuda" and dtype in ("fp16",):
        raise EraseError("--dtype: fp16 needs --device cuda (use bf16 or none on CPU)")
    objectives = objectives or (("esd",) if quick else OBJECTIVES)
    _PRINTED_PRECISION.clear()  # once per bench run (not once per process: tests and scripts run several)
    repeats = repeats or (2 if quick else 7)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    model = model_source(arch or ("tiny" if quick else None), work)
    precision = {"bf16": "bf16", "fp16": "fp16", None: None, "fp32": "no"}[dtype]
    small = ["train.batch_size=2", "data.forget.samples_per_prompt=1"] if quick else []
    if quick:
        small += ["objective.ddim_steps=4", "weighting.static_draws=2"]
    prev = torch.get_num_threads()
    ctx = torch.cuda.device(0) if device == "cuda" else contextlib.nullcontext()
    result: dict = {"benchmark": "speed", "quick": quick, "model": model, "device": device, "device_requested": device,
                    "dtype": dtype or "fp32",
                    "repeats": repeats, "threads": prev, "torch": torch.__version__, "objectives": {}}
    t0 = time.time()
    with ctx:
        for name in objectives:
            cfg = configs_dir / f"{name}.yaml"
            if not cfg.is_file():
                raise EraseError(f"{cfg}: no such config (--objectives {name})")
            ov = list(small)
            if quick and name != "esd":
                ov = [o for o in ov if not o.startswith("objective.")]
            # --quick: as many official pairs as the other ratios (a test, not a measurement)
            result["objectives"][name] = bench_objective(name, cfg, model, work, repeats, precision, ov, log,
                                                         repeats if quick else None, device)
            atomic_write_json(out / "results.partial.json", result)  # a long run keeps what it measured
        result["audit_throughput"] = audit_throughput(model, 4 if quick else 20, 4 if quick else 25, repeats, device)
        log(f"audit throughput: ours / bare = {result['audit_throughput']['ratio']:.3f}")
        sizes = [1, 2] if quick else [4, 16, 64]
        result["scaling"] = scaling(configs_dir / "esd.yaml", model, work, sizes, repeats, precision, small, log, device)
    # what ran, as the trainers and the pipeline placed it (e.g. "cuda:0"), not only what was asked
    ran = {r["device"] for r in result["objectives"].values()} | {result["audit_throughput"]["device"]}
    result["device"] = ran.pop() if len(ran) == 1 else sorted(ran)
    result["plot"] = str(plot_scaling(result["scaling"], out / "scaling.png"))
    result["seconds"] = round(time.time() - t0, 1)
    shutil.rmtree(work, ignore_errors=True)
    (out / "results.partial.json").unlink(missing_ok=True)
    return result


def all_ratios(result: dict) -> dict[str, float]:
    """Every ratio in a speed result, flat: name -> value."""
    out = {}
    for name, r in result["objectives"].items():
        for key in ("floor", "esd_official", "esd_official_cached", "loreun_d", "loreun_s", "memory"):
            if key in r:
                out[f"{name}.{key}"] = r[key]["ratio"]
    out["audit_throughput"] = result["audit_throughput"]["ratio"]
    return out


def table(result: dict) -> str:
    """A markdown table of the ratios with their spreads."""
    def fmt(r: dict | None, pct: bool = False) -> str:
        if not r:
            return "-"
        if pct:
            return f"{100 * (r['ratio'] - 1):+.1f}% [{100 * (r['min'] - 1):+.1f}, {100 * (r['max'] - 1):+.1f}]"
        return f"{r['ratio']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"

    lines = [("| objective | step / floor (UNet passes) | official ESD / ours online (the same algorithm, official loss) "
              "| LoReUn-d overhead | LoReUn-s overhead (one-time s) "
              "| memory step / plain fine-tune (forget batch) | memory step / plain fine-tune (same samples) |"),
             "|---|---|---|---|---|---|---|"]
    for name, r in result["objectives"].items():
        calls = r["unet_calls"]
        s = r.get("loreun_s")
        lines.append(f"| {name} | {fmt(r['floor'])} ({calls['with_grad']}+{calls['no_grad']}) | {fmt(r.get('esd_official'))} | "
                     f"{fmt(r.get('loreun_d'), True)} | {fmt(s, True)} ({s['one_time_s'] if s else '-'}) | {r['memory']['ratio']:.2f} | "
                     f"{r['memory']['ratio_same_samples']:.2f} ({r['memory']['step_samples']}) |")
    for name, r in result["objectives"].items():
        if r.get("esd_official_cached"):
            lines.append("")
            lines.append(f"{name}, the `trajectory: cached` option (a deviation: the frozen model's cached trajectories): "
                         f"official ESD / ours cached = {fmt(r['esd_official_cached'])} (official loss).")
    a = result["audit_throughput"]
    lines.append("")
    lines.append(f"Audit throughput: {a['ours_images_per_s']:.2f} images/s against {a['bare_images_per_s']:.2f} for bare "
                 f"StableDiffusionPipeline (ratio {a['ratio']:.2f} [{a['min']:.2f}, {a['max']:.2f}]).")
    return "\n".join(lines)
