"""Select the trained weights by name, optionally as LoRA adapters (peft) on that selection.

Parameter sets (join several with '+', e.g. "xattn+text_encoder"):
  xattn         UNet cross-attention (`attn2`: to_q, to_k, to_v, to_out): ESD-x
  xattn_kv      UNet cross-attention keys and values only (`attn2.to_k`, `attn2.to_v`): concept
                ablation's official default `cross-attn`, ESD's `esd-x-strict`
  noxattn       every UNet weight except cross-attention: ESD-u
  selfattn      UNet self-attention (`attn1`)
  unet          the full UNet
  text_encoder  the whole CLIP text encoder, token and position embeddings included
  text_encoder_layers  the text encoder's transformer layers and final layer norm, not the
                embeddings: AdvUnlearn's official `text_encoder_full`
  text_encoder_2, text_encoder_2_layers  the same for SDXL's second text encoder (OpenCLIP bigG);
                `text_encoder` is CLIP ViT-L in every family, so e.g. AdvUnlearn on SDXL trains CLIP-L
                unless the set adds these ("text_encoder_layers+text_encoder_2_layers" trains both)
FLUX.1 and SD3 (a transformer instead of the UNet; erase/models/family.py TRANSFORMER_PARAM_SETS): the same
names select the transformer's counterparts -- xattn = the text stream's joint-attention projections in
the double (joint) blocks, add_q_proj / add_k_proj / add_v_proj / to_add_out; xattn_kv = add_k_proj /
add_v_proj; noxattn = everything else; selfattn = the image stream's attention projections; unet (alias
`transformer`) = the whole transformer. On FLUX `text_encoder_2` is T5 (SD3: CLIP-G; T5 is never trained).
`exclude` drops any weight whose name contains one of its substrings (older ESD-u code excludes
`time_embedding` and `conv_out`). With LoRA, adapters go on the Linear/Conv2d layers of the set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from diffusers import ModelMixin
from torch import nn

from erase.errors import EraseError
from erase.train.config import LoraOptions

Kind = Literal["lora", "partial", "full"]

# set name -> (module, predicate on the dotted name of a parameter or module inside it)
PARAM_SETS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "xattn": ("unet", lambda n: ".attn2." in f".{n}."),
    "noxattn": ("unet", lambda n: ".attn2." not in f".{n}."),
    "xattn_kv": ("unet", lambda n: ".attn2.to_k." in f".{n}." or ".attn2.to_v." in f".{n}."),
    "selfattn": ("unet", lambda n: ".attn1." in f".{n}."),
    "unet": ("unet", lambda n: True),
    "text_encoder": ("text_encoder", lambda n: True),
    "text_encoder_layers": ("text_encoder", lambda n: _text_layer(n)),
    "text_encoder_2": ("text_encoder_2", lambda n: True),
    "text_encoder_2_layers": ("text_encoder_2", lambda n: _text_layer(n)),
    "transformer": ("unet", lambda n: True),  # the whole denoiser, under the FLUX / SD3 name
}
TRAINABLE_MODULES = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")  # frozen unless a set names them


def _text_layer(name: str) -> bool:
    """A text encoder's transformer layers and final layer norm (not embeddings, not SDXL's text_projection)."""
    return name.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm"))


def trainable_modules(pipe) -> dict[str, nn.Module]:
    """The pipeline's modules a parameter set can name: unet (FLUX / SD3: transformer), text_encoder and, on
    SDXL, FLUX and SD3, text_encoder_2."""
    return {n: getattr(pipe, n) for n in TRAINABLE_MODULES if getattr(pipe, n, None) is not None}
LORA_TARGETS = (nn.Linear, nn.Conv2d)


@dataclass
class Selection:
    """What is trained: per module (unet / text_encoder) the kind of training and the parameter names."""

    spec: str
    kinds: dict[str, Kind] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    lora_targets: dict[str, list[str]] = field(default_factory=dict)

    def trains(self, module: str) -> bool:
        return module in self.kinds


def parse_spec(spec: str, where: str, transformer: bool = False) -> dict[str, list[Callable[[str], bool]]]:
    """Per module, the predicates of the named sets; with `transformer` the UNet's sets select the FLUX / SD3
    transformer's counterparts (erase.models.family.TRANSFORMER_PARAM_SETS)."""
    from erase.models.family import TRANSFORMER_PARAM_SETS

    by_module: dict[str, list[Callable[[str], bool]]] = {}
    for part in (p.strip() for p in spec.split("+")):
        if part not in PARAM_SETS:
            raise EraseError(f"{where}: unknown parameter set {part!r} (choose from {', '.join(PARAM_SETS)}, joined with '+')")
        module, pred = PARAM_SETS[part]
        if module == "unet" and transformer:
            module, pred = "transformer", TRANSFORMER_PARAM_SETS[part]
        by_module.setdefault(module, []).append(pred)
    return by_module


def select_parameters(
    modules: dict[str, nn.Module],
    spec: str,
    exclude: list[str] | None = None,
    lora: LoraOptions | None = None,
    where: str = "params.train",
) -> Selection:
    """Freeze everything, then make the selected weights (or LoRA adapters on them) trainable.

    `modules` maps "unet" / "text_encoder" (/ "text_encoder_2") to the modules (`trainable_modules(pipe)`;
    LoRA adapters are added in place).
    """
    exclude = list(exclude or [])
    sel = Selection(spec=spec)
    for m in modules.values():
        m.requires_grad_(False)
    for module_name, preds in parse_spec(spec, where, transformer="transformer" in modules).items():
        if module_name not in modules:
            raise EraseError(f"{where}: {spec!r} trains the {module_name}, which this model does not have "
                             "(SDXL, FLUX and SD3 only)")
        module = modules[module_name]

        def chosen(n: str, preds=preds) -> bool:
            return any(p(n) for p in preds) and not any(x in n for x in exclude)

        if lora is not None:
            targets = [n for n, m in module.named_modules() if isinstance(m, LORA_TARGETS) and chosen(n)]
            if not targets:
                raise EraseError(f"{where}: {spec!r} selects no Linear/Conv2d layer of the {module_name} for LoRA")
            _add_lora(module, targets, lora)
            sel.lora_targets[module_name] = targets
            sel.kinds[module_name] = "lora"
            sel.names[module_name] = [n for n, p in module.named_parameters() if p.requires_grad]
        else:
            names = [n for n, p in module.named_parameters() if chosen(n)]
            if not names:
                raise EraseError(f"{where}: {spec!r} selects no parameter of the {module_name}")
            params = dict(module.named_parameters())
            for n in names:
                params[n].requires_grad_(True)
            sel.names[module_name] = names
            sel.kinds[module_name] = "full" if len(names) == len(params) else "partial"
    return sel


def _add_lora(module: nn.Module, targets: list[str], opts: LoraOptions) -> None:
    """LoRA adapters named "default" on `targets`, as diffusers' `load_lora_weights` names them.

    A diffusers model (UNet, FLUX / SD3 transformer) takes them through its own `add_adapter`. A transformers text encoder
    takes them from peft directly (`inject_adapter_in_model`, the layers diffusers' LoRA loader puts
    on text encoders): transformers' `add_adapter` refuses peft releases older than its minimum
    (0.22 for transformers 5.24, newer than any peft release installable here).
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=opts.rank, lora_alpha=opts.alpha if opts.alpha is not None else opts.rank,
        lora_dropout=opts.dropout, init_lora_weights="gaussian", target_modules=targets,
    )
    if isinstance(module, ModelMixin):
        module.add_adapter(config)
    else:
        inject_adapter_in_model(config, module, adapter_name="default")
        module.peft_config = {"default": config}  # what peft's state-dict helpers and diffusers' unload read
    for n, p in module.named_parameters():
        p.requires_grad_("lora_" in n)


def enable_lora(module: nn.Module, enabled: bool) -> None:
    """Switch every LoRA layer of `module` on or off (off: the module computes its base weights)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(enabled)


def count(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
