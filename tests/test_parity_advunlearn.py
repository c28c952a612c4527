"""AdvUnlearn parity: the defence loss and one attack step equal the official ones (tiny model, same draws).

The official side never calls erase: prompts are tokenized and embedded as the official code does
(the tokenizer, `id2embedding`'s one-hot product with the token table, the prefix split and concat, and
`CustomTextEncoder`'s forward on word embeddings), the frozen model is a fresh copy of the same
pipeline, and x_t is the official partial trajectory. erase's side is observed through a forward
pre-hook on the UNet (tests/test_parity_esd.py's `UnetInputs`), which gives the (x_t, t) it drew.

Official: OPTML-Group/AdvUnlearn, train-scripts/.
* Prompt encoding with the adversarial token (`attack_embd_type: word_embd`, `attack_type: prefix_k`):
  attack_util.py:144 and 154-161 (tokenize to 77 with padding, split by the prompt's WORD count:
  [SOT | prompt | k | rest], lines 224-230), 193-195 (construct_embd/construct_id prefix_k, lines
  232-234 and 273-275, then the trained encoder on the word embeddings); util.py:475-479
  (id2embedding: one-hot @ the token table); text_encoder.py:62-84 (CustomTextEncoder.forward:
  position embeddings on `inputs_embeds`, the encoder under a causal mask, the final layer norm).
  The prompts here have one token per word, where the word-count split and the token split agree.
* Data path: x_t from ESD's sampler (get_loss.py:299-301, 317; attack_util.py:149-151, 185) with
  `model`, whose UNet AdvUnlearn never trains and whose conditioning is the frozen encoder's
  (`model_orig.get_learned_conditioning`, AdvUnlearn.py:87-88): the frozen model's guided DDIM
  trajectory, at any training step. erase's x_t is checked against it (tests/test_parity_esd.py's
  `official_xt`), with t the DDIM timestep of the trajectory position (erase's documented deviation
  from the DDPM t drawn inside that interval).
* Defence, get_loss.py:315-360 (`retain_train == 'reg'`): e_0, e_p from the frozen model at (z, t)
  (319-320), e_n from the trained encoder on the adversarial prompt (336-337), unlearn_loss =
  MSE(e_n, e_0 - negative_guidance * (e_p - e_0)) (352); retain_e_p from the frozen model (325) and
  retain_e_n from the trained encoder on the retain prompts' word embeddings (AdvUnlearn.py:133-135,
  get_loss.py:354); loss = unlearn_loss + retain_loss_w * MSE(retain_e_n, retain_e_p) (358-360).
* Attack step, attack_util.py:175-211: a new (t, z) each step (177-185), e_p = frozen model on the
  plain prompt (188), e_n = model on the prompt with the adversarial prefix (192-198),
  loss = MSE(e_n, e_p) (203), Adam on the embedding (168).
"""

import pytest
import torch
import torch.nn.functional as F
from test_objectives_advunlearn import FORGET, Data
from test_parity_esd import XT_ATOL, UnetInputs, official_xt, scheduler

from erase.objectives import build_objective
from erase.objectives.base import Batch, Draws

RETAIN = ["a dog", "a house"]  # the retain prompts test_objectives_advunlearn's setup caches trajectories for
K = 1  # adversarial tokens (AdvUnlearn.py's adv_prompt_num as erase's n_tokens default)


def id2embedding(tokenizer, table, input_ids):
    """util.py:475-479."""
    one_hot = F.one_hot(input_ids.view(-1), num_classes=len(tokenizer.get_vocab())).float()
    return one_hot[None] @ table


def custom_text_encoder(te, input_ids, inputs_embeds):
    """text_encoder.py:62-84: the encoder on word embeddings; its causal mask is _make_causal_mask (19-33).
    (transformers 5's CLIP encoder takes the additive mask as `attention_mask`; 4 named it `causal_attention_mask`.)"""
    tm = getattr(te, "text_model", te)
    hidden = tm.embeddings(inputs_embeds=inputs_embeds)
    b, n = input_ids.shape
    mask = torch.full((n, n), torch.finfo(hidden.dtype).min)
    cond = torch.arange(n)
    mask.masked_fill_(cond < (cond + 1).view(n, 1), 0)
    out = tm.encoder(inputs_embeds=hidden, attention_mask=mask[None, None].expand(b, 1, n, n))[0]
    return tm.final_layer_norm(out)


def adversarial_condition(tokenizer, te, word: str, adv: torch.Tensor) -> torch.Tensor:
    """attack_util.py:144, 154-161, 193-195: the prompt with the adversarial word embedding(s) prepended."""
    n = len(word.split())
    ids = tokenizer(word, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt",
                    truncation=True).input_ids
    assert n == len(tokenizer(word, add_special_tokens=False).input_ids), "one token per word (see the docstring)"
    emb = id2embedding(tokenizer, te.get_input_embeddings().weight, ids)
    sot_id, mid_id, replace_id, eot_id = torch.split(ids, [1, n, K, 76 - n - K], dim=1)
    sot, mid, _, eot = torch.split(emb, [1, n, K, 76 - n - K], dim=1)
    word_embd = torch.cat([sot, adv.reshape(1, K, -1), mid, eot], dim=1)
    return custom_text_encoder(te, torch.cat([sot_id, replace_id, mid_id, eot_id], dim=1), word_embd)


def frozen_conditioning(ref, prompts: list[str]) -> torch.Tensor:
    """model_orig.get_learned_conditioning (ldm FrozenCLIPEmbedder): padded ids through the frozen encoder."""
    ids = ref.tokenizer(prompts, padding="max_length", max_length=ref.tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        return ref.text_encoder(ids)[0]


def check_on_trajectory(ref, rec: UnetInputs, x_t, t, prompts) -> int:
    """Each row of x_t is the official frozen-model trajectory from a start noise erase drew, at t;
    returns how many rows were past the start (the ones a transcription checks)."""
    timesteps = scheduler(ref).timesteps.tolist()
    starts = rec.start_noises(timesteps[0])
    for r, prompt in enumerate(prompts):
        k = timesteps.index(int(t[r]))
        if k:
            gaps = [float((official_xt(ref, ref.unet, prompt, s, k) - x_t[r]).abs().max()) for s in starts]
            assert gaps and min(gaps) <= XT_ATOL, (prompt, k, gaps)
    return sum(timesteps.index(int(v)) > 0 for v in t)


@pytest.fixture
def erased(tiny_models, make_tiny_pipeline):
    """`erased(**options)` -> (Models, objective, recorder, ref): test_objectives_advunlearn's set-up (its
    Data, ddim_steps 4) with every UNet input recorded from the set-up on, then a partly erased encoder
    (trained and original differ); `ref` is a fresh copy of the original pipeline (the official side's
    frozen model and tokenizer)."""

    def make(**options):
        models, pipe, _ = tiny_models("text_encoder_layers")
        rec = UnetInputs(pipe.unet)
        obj = build_objective("advunlearn", {"ddim_steps": 4, "warmup_steps": 0, **options}, "t.yaml")
        obj.setup(models, Data(FORGET))
        with torch.no_grad():
            for p in (p for p in models.text_encoder.parameters() if p.requires_grad):
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return models, obj, rec, make_tiny_pipeline()

    return make


def test_defence_loss_is_the_official_loss(erased):
    models, obj, rec, ref = erased(gamma=0.3)
    b = Batch(forget_prompts=FORGET, forget_ids=torch.tensor([0, 1]), retain_prompts=RETAIN[::-1],
              retain_ids=torch.tensor([1, 0]), rng=Draws(seed=0, step=9))
    obj.delta = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    out = obj.losses(models, b)
    (z, t), (xr, tr) = [(x, tt) for x, tt, grad in rec.calls if grad][-2:]  # the forget, then the retain prediction
    assert check_on_trajectory(ref, rec, z, t, FORGET) + check_on_trajectory(ref, rec, xr, tr, RETAIN[::-1]) >= 2
    criteria = torch.nn.MSELoss()
    te, unet, tok = models.text_encoder, models.unet, ref.tokenizer  # the trained encoder; the UNet is not trained
    with torch.no_grad():
        e_0 = ref.unet(z, t, frozen_conditioning(ref, [""] * 2)).sample
        e_p = ref.unet(z, t, frozen_conditioning(ref, FORGET)).sample
        retain_e_p = ref.unet(xr, tr, frozen_conditioning(ref, RETAIN[::-1])).sample
    e_n = unet(z, t, torch.cat([adversarial_condition(tok, te, w, obj.delta) for w in FORGET])).sample
    r_ids = tok(RETAIN[::-1], padding="max_length", max_length=tok.model_max_length, return_tensors="pt",
                truncation=True).input_ids
    r_embd = id2embedding(tok, te.get_input_embeddings().weight, r_ids).reshape(len(RETAIN), -1, 32)
    retain_e_n = unet(xr, tr, custom_text_encoder(te, r_ids, r_embd)).sample
    loss = criteria(e_n, e_0 - 1.0 * (e_p - e_0)) + 0.3 * criteria(retain_e_n, retain_e_p)
    torch.testing.assert_close((out.forget.mean() + out.retain).detach().double(), loss.detach().double(),
                               rtol=1e-5, atol=1e-9)


def test_one_attack_step_is_the_official_step(erased):
    models, obj, rec, ref = erased(attack_steps=1, attack_lr=1e-3, attack_init="random")
    b = Batch(forget_prompts=FORGET[:1], forget_ids=torch.tensor([0]), rng=Draws(seed=0, step=4))
    init = obj._initial_delta(models, b)
    # official: a random vocabulary token's embedding as the start (attack_util.py:14-17)
    table = models.text_encoder.get_input_embeddings().weight
    assert any(torch.equal(init[0], row) for row in table.detach())
    obj.before_step(models, b, [])
    z, t = rec.loss_call()  # the attack step's prediction (autograd on, into the embedding)
    check_on_trajectory(ref, rec, z, t, FORGET[:1])
    # transcription of one step: frozen target, the trained encoder on the attacked prompt, Adam on the embedding
    with torch.no_grad():
        e_p = ref.unet(z, t, frozen_conditioning(ref, FORGET[:1])).sample
    adv = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([adv], lr=1e-3)
    e_n = models.unet(z, t, adversarial_condition(ref.tokenizer, models.text_encoder, FORGET[0], adv)).sample
    torch.nn.MSELoss()(e_n, e_p).backward()
    opt.step()
    torch.testing.assert_close(obj.delta.double(), adv.detach().double(), rtol=1e-6, atol=1e-9)
    assert not torch.equal(obj.delta, init)
