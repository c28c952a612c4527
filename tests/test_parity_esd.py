"""ESD parity: the project's loss equals the official formulas for the same x_t, t (tiny random model).

Official: rohitgandikota/erasing, train-scripts/train-esd.py line 247 (commit 414dc94^, the paper's
code): criteria(e_n, e_0 - negative_guidance * (e_p - e_0)), negative_guidance 1 (line 298); and the
newer esd_sd.py line 191: criteria(noise_pred_esd_model, noise_pred_erase_from -
negative_guidance * (noise_pred_erase - noise_pred_null)), negative_guidance 2 (line 62).
criteria = torch.nn.MSELoss() (a mean over every element).
"""

import copy

import torch

from erase.objectives.esd import Esd, EsdConfig

PROMPTS = ["nudity", "a nude person", "naked"]


def test_esd_loss_is_the_official_loss_in_both_parametrisations(setup_stub, make_batch, perturb, tiny_models):
    models, pipe, _ = tiny_models("noxattn")
    original = copy.deepcopy(pipe.unet).requires_grad_(False)
    esd = Esd(EsdConfig(eta=1.0, ddim_steps=4, trajectory="cached"))
    esd.setup(models, setup_stub(PROMPTS))
    perturb(models)
    criteria = torch.nn.MSELoss()
    for ids in ([1], [0, 1, 2]):  # one sample per step (official) and a batch (its mean)
        b = make_batch([PROMPTS[i] for i in ids], step=5)
        b.forget_ids = torch.tensor(ids)
        ours = esd.losses(models, b).forget.mean()
        # the same draw: position k on each sample's cached trajectory
        k = b.rng.randint(b.forget_ids, 0, 4, stream="k")
        z, t = esd.cache["trajectory"][k, b.forget_ids], esd.cache["timesteps"][k].long()
        with torch.no_grad():
            emb_0 = models.encode([""] * len(ids))
            emb_p = models.encode(b.forget_prompts)
            e_0 = original(z, t, encoder_hidden_states=emb_0).sample
            e_p = original(z, t, encoder_hidden_states=emb_p).sample
            e_n = pipe.unet(z, t, encoder_hidden_states=emb_p).sample
        old = criteria(e_n, e_0 - 1.0 * (e_p - e_0))  # train-esd.py:247, negative_guidance 1
        new = criteria(e_n, e_p - 2.0 * (e_p - e_0))  # esd_sd.py:191, negative_guidance 2 (= eta 1 here)
        torch.testing.assert_close(ours.detach().double(), old.double(), rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(old.double(), new.double(), rtol=1e-5, atol=1e-8)
    # and eta 2 here is NOT the newer code's 2: it is its 3
    esd2 = Esd(EsdConfig(eta=2.0, ddim_steps=4, trajectory="cached"))
    esd2.cache = esd.cache
    ours2 = esd2.losses(models, b).forget.mean().detach()
    torch.testing.assert_close(ours2.double(), criteria(e_n, e_p - 3.0 * (e_p - e_0)).double(), rtol=1e-5, atol=1e-8)
