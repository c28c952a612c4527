"""AdvUnlearn parity: the defence loss and one attack step equal the official ones (tiny model, same draws).

Official: OPTML-Group/AdvUnlearn.
* Defence, train-scripts/utils/get_loss.py lines 315-360 (`retain_train == 'reg'`): e_0, e_p from
  the frozen model at (z, t) (319-320), e_n from the trained encoder on the adversarial prompt
  (336-337), unlearn_loss = MSE(e_n, e_0 - negative_guidance * (e_p - e_0)) (352), retain_e_p from
  the frozen model and retain_e_n from the trained encoder on the retain prompts' own partial
  trajectories (323-325, 354), loss = unlearn_loss + retain_loss_w * MSE(retain_e_n, retain_e_p) (358-360).
* Attack step, train-scripts/utils/attack_util.py lines 175-211: a new (t, z) each step
  (177-185), e_p = frozen model on the plain prompt (188), e_n = model on the prompt with the
  adversarial prefix embedding (192-198), loss = MSE(e_n, e_p) (209), Adam on the embedding (168).
"""

import pytest
import torch
from test_objectives_advunlearn import FORGET, setup  # noqa: F401 (setup: the tiny AdvUnlearn fixture)

from erase.models.soft_prompt import encode_with_slots, tokenize_with_slots
from erase.objectives.base import Batch, Draws

RETAIN = ["a dog", "a house"]  # the retain prompts test_objectives_advunlearn's setup caches trajectories for


@pytest.fixture
def erased(setup):  # noqa: F811
    """`erased(**options)`: test_objectives_advunlearn's set-up with a partly erased encoder, so trained
    and original differ."""

    def make(**options):
        models, obj = setup(**options)
        with torch.no_grad():
            for p in (p for p in models.text_encoder.parameters() if p.requires_grad):
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return models, obj

    return make


def test_defence_loss_is_the_official_loss(erased):
    models, obj = erased(gamma=0.3)
    b = Batch(forget_prompts=FORGET, forget_ids=torch.tensor([0, 1]), retain_prompts=RETAIN[::-1],
              retain_ids=torch.tensor([1, 0]), rng=Draws(seed=0, step=9))
    obj.delta = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    out = obj.losses(models, b)
    criteria = torch.nn.MSELoss()
    unet, te = models.unet, models.text_encoder
    x_t, t, _ = obj.sample_xt(models, b)
    xr, tr, _ = obj.sample_xt(models, b, retain=True)
    ids, mask = tokenize_with_slots(models.tokenizer, FORGET, 1, "prefix")
    with models.original(), torch.no_grad():
        e_0 = unet(x_t, t, models.encode([""] * 2)).sample
        e_p = unet(x_t, t, models.encode(FORGET)).sample
        retain_e_p = unet(xr, tr, models.encode(RETAIN[::-1])).sample
    e_n = unet(x_t, t, encode_with_slots(te, ids, mask, obj.delta)).sample
    retain_e_n = unet(xr, tr, models.encode(RETAIN[::-1])).sample
    loss = criteria(e_n, e_0 - 1.0 * (e_p - e_0)) + 0.3 * criteria(retain_e_n, retain_e_p)
    torch.testing.assert_close((out.forget.mean() + out.retain).detach().double(), loss.detach().double(), rtol=1e-5, atol=1e-9)


def test_one_attack_step_is_the_official_step(erased):
    models, obj = erased(attack_steps=1, attack_lr=1e-3, attack_init="random")
    b = Batch(forget_prompts=FORGET[:1], forget_ids=torch.tensor([0]), rng=Draws(seed=0, step=4))
    init = obj._initial_delta(models, b)
    # official: a random vocabulary token's embedding as the start (attack_util.py:14-17)
    table = models.text_encoder.get_input_embeddings().weight
    assert any(torch.equal(init[0], row) for row in table.detach())
    obj.before_step(models, b, [])
    # transcription of one step: the draw of attack step 0, frozen target, Adam on the embedding
    z, t = obj.redraw_xt(models, b, 0)
    ids, mask = tokenize_with_slots(models.tokenizer, FORGET[:1], 1, "prefix")
    with models.original(), torch.no_grad():
        e_p = models.unet(z, t, models.encode(FORGET[:1])).sample
    adv = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([adv], lr=1e-3)
    e_n = models.unet(z, t, encode_with_slots(models.text_encoder, ids, mask, adv)).sample
    torch.nn.MSELoss()(e_n, e_p).backward()
    opt.step()
    torch.testing.assert_close(obj.delta.double(), adv.detach().double(), rtol=1e-6, atol=1e-9)
    assert not torch.equal(obj.delta, init)
