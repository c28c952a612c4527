"""Test-wide settings and the shared tiny real models (never mocks).

Settings: offline Hub (every test but the push test, which sets its own env), and one torch thread:
the models here are tiny, and two intra-op threads that contend with anything else on a 2-core
machine are many times slower (BENCHMARKS.md, "Test suite"), so one thread is faster and steadier.

Fixtures. Objects that tests may mutate are handed out as fresh copies, never shared:
- `make_tiny_pipeline(seed=0)`: a fresh copy of build_pipeline("tiny", seed=seed), torch's global
  generator left as that call leaves it (each seed is built once per session; the tokenizer is the
  process-wide shared one); `tiny_pipeline` is one such copy per test.
- `tiny_models(spec="xattn", lora=None)`: (Models with original(), pipeline, selection) on a fresh copy.
- `make_run(root, lora=False, audit=False, token=...)`: a fake run directory (ARCHITECTURE.md's layout).
Folders shared by the whole session are checked at the end: a test that writes into one fails there.
- `tiny_pipeline_dir` (seed 0) and `tiny_reference_dir` (seed 1): diffusers folders;
  `tiny_clip_dir`: a random CLIPModel with the project's tokenizer.
Plain helpers as fixtures: `perturb`, `latents`, `make_batch`, `sgd_step`, `setup_stub`, `sample_images`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

# ERASE_THREADS: the same for `erase` commands the tests run in-process or as subprocesses (erase.threads)
os.environ.setdefault("ERASE_THREADS", os.environ.get("ERASE_TEST_THREADS", "1"))
torch.set_num_threads(int(os.environ["ERASE_THREADS"]))


# --- tiny pipelines ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def make_tiny_pipeline():
    """`make(seed=0)` -> a fresh copy of build_pipeline("tiny", seed=seed), free to mutate."""
    from erase.models.builder import build_pipeline

    built: dict[int, tuple] = {}

    def make(seed: int = 0):
        if seed not in built:
            built[seed] = build_pipeline("tiny", seed=seed), torch.get_rng_state()
        base, rng_after = built[seed]
        # build_pipeline seeds torch's global generator: leave it as a build would, so code after
        # this call draws the same numbers whichever tests ran before.
        torch.set_rng_state(rng_after)
        # deepcopy of the modules only: the CLIP tokenizer is the process-wide cached one anyway,
        # and copying its 49k-entry tables costs 10x copying the weights.
        return copy.deepcopy(base, {id(base.tokenizer): base.tokenizer})

    return make


@pytest.fixture
def tiny_pipeline(make_tiny_pipeline):
    return make_tiny_pipeline()


def _snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def _shared_dir(path: Path):
    """Yield a folder shared by the session, then fail if any test changed what it holds."""
    before = _snapshot(path)
    yield path
    assert _snapshot(path) == before, f"a test wrote into the shared fixture folder {path}"


@pytest.fixture(scope="session")
def tiny_pipeline_dir(make_tiny_pipeline, tmp_path_factory):
    """The seed-0 tiny pipeline saved as a diffusers folder (safetensors). Read only."""
    path = tmp_path_factory.mktemp("tiny") / "model"
    make_tiny_pipeline(0).save_pretrained(path, safe_serialization=True)
    yield from _shared_dir(path)


@pytest.fixture(scope="session")
def tiny_reference_dir(make_tiny_pipeline, tmp_path_factory):
    """The seed-1 tiny pipeline (another model of the same architecture) as a folder. Read only."""
    path = tmp_path_factory.mktemp("tiny_ref") / "model"
    make_tiny_pipeline(1).save_pretrained(path, safe_serialization=True)
    yield from _shared_dir(path)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A random CLIPModel (ViT 32 px, 1 layer) plus the project's CLIP tokenizer, saved. Read only."""
    from transformers import CLIPConfig, CLIPModel

    from erase.tokenizer import clip_tokenizer

    path = tmp_path_factory.mktemp("clip") / "clip"
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    yield from _shared_dir(path)


# --- the erasure engine on the tiny pipeline -----------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(make_tiny_pipeline):
    """`make(spec="xattn", lora=None)` -> (Models with original(), pipeline, selection), all fresh."""
    from erase.models.core import Models
    from erase.train.original import Original
    from erase.train.params import select_parameters

    def make(spec: str = "xattn", lora=None):
        pipe = make_tiny_pipeline()
        pipe.vae.requires_grad_(False)
        sel = select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, spec, lora=lora)
        models = Models.from_pipeline(pipe, device="cpu")
        models.original = Original(models, sel, torch.float32)
        return models, pipe, sel

    return make


@pytest.fixture(scope="session")
def perturb():
    """`perturb(models, scale=0.05, seed=1)`: move every trainable weight, so the model differs from the original."""

    def move(models, scale: float = 0.05, seed: int = 1) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in models.named_trainable().values():
                p.add_(scale * torch.randn(p.shape, generator=g))

    return move


@pytest.fixture(scope="session")
def latents():
    """`latents(n, seed=0)`: n tiny-model latents [n, 4, 16, 16] from a seeded generator."""

    def draw(n: int, seed: int = 0) -> torch.Tensor:
        return torch.randn(n, 4, 16, 16, generator=torch.Generator().manual_seed(seed))

    return draw


@pytest.fixture(scope="session")
def make_batch():
    """`make_batch(prompts, step=0, **fields)`: a Batch of forget prompts with ids 0..n-1."""
    from erase.objectives.base import Batch, Draws

    def make(prompts: list[str], step: int = 0, **kw):
        return Batch(forget_prompts=prompts, forget_ids=torch.arange(len(prompts)), rng=Draws(seed=0, step=step),
                     **kw)

    return make


@pytest.fixture(scope="session")
def sgd_step():
    """`sgd_step(models, loss, lr)`: one plain gradient step on the trainable weights."""

    def step(models, loss: torch.Tensor, lr: float) -> None:
        params = list(models.named_trainable().values())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)

    return step


@pytest.fixture(scope="session")
def setup_stub():
    """The class of a minimal SetupData: prompts plus an in-memory cache (make() runs once per name)."""
    from erase.objectives.base import Batch, Draws

    class SetupStub:
        def __init__(self, forget_prompts, retain_prompts=(), anchor_prompts=(), forget_latents=None, seed=0):
            self.forget_prompts = list(forget_prompts)
            self.retain_prompts = list(retain_prompts)
            self.anchor_prompts = list(anchor_prompts)
            self.forget_latents = forget_latents
            self.seed = seed
            self.store: dict = {}
            self.made: list[str] = []

        def cached(self, name, make):
            if name not in self.store:
                self.made.append(name)
                self.store[name] = make()
            return self.store[name]

        def forget_batches(self, batch_size, draw=0, shared=True):
            n = len(self.forget_prompts)
            for s in range(0, n, batch_size):
                idx = list(range(s, min(n, s + batch_size)))
                yield Batch(forget_prompts=[self.forget_prompts[i] for i in idx], forget_ids=torch.tensor(idx),
                            forget_latents=self.forget_latents[idx], rng=Draws(seed=self.seed, step=-1 - draw))

    return SetupStub


# --- fake run directories (export, push) -------------------------------------------------------


@pytest.fixture(scope="session")
def sample_images():
    """`sample_images(pipe, steps=3)` -> images [2, 32, 32, 3] in [0, 1] for two fixed prompts and seeds."""
    import numpy as np

    def sample(pipe, steps: int = 3):
        out = []
        for prompt, seed in zip(["a photo of a cat", "a red car"], [0, 1]):
            gen = torch.Generator("cpu").manual_seed(seed)
            out.append(pipe(prompt, num_inference_steps=steps, generator=gen, output_type="np").images[0])
        return np.stack(out)

    return sample


@pytest.fixture(scope="session")
def make_run(make_tiny_pipeline, sample_images):
    """`make_run(root, lora=False, audit=False, token=...)` writes a fake run directory at `root`.

    Returns (the pipeline RUN/model holds, the LoRA run's images or None). For a LoRA run the images
    come from the live peft adapter, before fusing: an independent reference for both the fused
    model/ and the exported LoRA file. `token` is planted in config.yaml (train.hub_token), where
    export and push must never carry it.
    """
    import numpy as np

    from erase.io import atomic_write_json, atomic_write_text

    def erase_some(pipe) -> None:
        """Stand-in for training: move the cross-attention keys/values (what ESD-x trains)."""
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, p in pipe.unet.named_parameters():
                if "attn2.to_k" in name or "attn2.to_v" in name:
                    p.add_(0.2 * torch.randn(p.shape, generator=gen))

    def make(root: Path, *, lora: bool = False, audit: bool = False, token: str = "hf_plantedSECRET123"):
        root.mkdir(parents=True, exist_ok=True)
        pipe = make_tiny_pipeline()
        lora_ref = None
        if lora:
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft import LoraConfig
            from peft.utils import get_peft_model_state_dict

            # init_lora_weights=False: B is random, not zero, so the LoRA really changes the model.
            torch.manual_seed(3)
            pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                             init_lora_weights=False))
            state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
            StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=state, safe_serialization=True)
            lora_ref = sample_images(pipe)
            pipe = copy.deepcopy(pipe)
            pipe.unet.fuse_lora(lora_scale=1.0)
            pipe.unet.unload_lora()
        else:
            erase_some(pipe)
        pipe.save_pretrained(root / "model", safe_serialization=True)
        # The schema `erase train` writes (RunConfig).
        atomic_write_text(root / "config.yaml", (
            "model: CompVis/stable-diffusion-v1-4\nmethod: esd\nobjective:\n  variant: x\n  eta: 1.0\n"
            "concept: nudity\nweighting:\n  kind: dynamic\n  tau: 0.05\n"
            f"train:\n  lr: 1.0e-05\n  steps: 10\n  hub_token: {token}\n"
        ))
        atomic_write_json(root / "run.json", {
            "status": "completed", "method": "esd", "objective": {"name": "esd", "variant": "x", "eta": 1.0},
            "weighting": {"kind": "dynamic", "tau": 0.05}, "base_model": "CompVis/stable-diffusion-v1-4",
            "concept": "nudity", "forget_prompts": ["a photo of a nude person", "nudity"],
        })
        # Training leftovers that must never be exported or pushed.
        (root / "checkpoints" / "step_5").mkdir(parents=True)
        (root / "checkpoints" / "step_5" / "optimizer.bin").write_bytes(b"\0" * 64)
        (root / "cache").mkdir()
        (root / "cache" / "forget_0.png").write_bytes(b"png")
        (root / "logs").mkdir()
        (root / "logs" / "events.out.tfevents.1").write_bytes(b"events")
        if audit:
            from PIL import Image

            (root / "audit").mkdir()
            atomic_write_json(root / "audit" / "results.json", {
                "protocol": "digits-v1",
                "metrics": {"forget": {"asr": 0.04, "accuracy": 0.02}, "retain": {"accuracy": 0.93}, "fid": 12.5},
            })
            Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / "audit" / "grid.png")
            (root / "audit" / "report.html").write_text("<html></html>")
        return pipe, lora_ref

    return make
