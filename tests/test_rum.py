"""RUM: scores, partition and the sequence of per-group phases (erase/rum.py)."""

from __future__ import annotations

import torch

from erase.rum import (
    RumConfig, RumGroupConfig, difficulty_from_scores, entanglement_score, partition,
    per_sample_entanglement, shared_timesteps,
)
from erase.config import from_dict
from erase.errors import EraseError

import pytest


def test_partition_sizes_order_and_cover():
    scores = torch.tensor([5.0, 1.0, 3.0, 9.0, 7.0, 2.0, 8.0])
    groups = partition(scores, k=3)
    assert [len(g) for g in groups] == [3, 2, 2]
    flat = torch.cat(groups)
    assert sorted(flat.tolist()) == list(range(7))
    # easiest first: every score of group i is <= every score of group i+1
    for a, b in zip(groups, groups[1:]):
        assert scores[a].max() <= scores[b].min()
    assert groups[0].tolist() == [1, 5, 2]


def test_partition_fractions():
    groups = partition(torch.arange(10.0), k=3, fractions=[0.2, 0.3, 0.5])
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]]


def test_loss_score_low_loss_is_hard():
    loss = torch.tensor([0.1, 0.5, 0.9])
    groups = partition(difficulty_from_scores(loss, "loss"), k=3)
    # the sample the original model reproduces best (loss 0.1) is handled last
    assert [g.item() for g in groups] == [2, 1, 0]


def test_per_sample_entanglement_mean_is_set_es():
    g = torch.Generator().manual_seed(0)
    zr = torch.randn(50, 8, generator=g)
    zf = torch.randn(20, 8, generator=g) + 3.0
    es_i = per_sample_entanglement(zf, zr)
    mu_r, mu_f = zr.mean(0), zf.mean(0)
    mu = (mu_r + mu_f) / 2
    num = (zr - mu_r).pow(2).sum(1).mean() + (zf - mu_f).pow(2).sum(1).mean()
    den = ((mu_r - mu).pow(2).sum() + (mu_f - mu).pow(2).sum()) / 2
    assert torch.allclose(es_i.mean(), num / den, rtol=1e-5)
    assert entanglement_score(zf, zr) == pytest.approx(float(num / den), rel=1e-5)
    # a forget sample sitting far out of its cluster is scored more entangled
    zf2 = zf.clone()
    zf2[0] = zf.mean(0) + 10
    assert per_sample_entanglement(zf2, zr).argmax().item() == 0
    # separated sets are less entangled than overlapping ones
    assert entanglement_score(zf, zr) < entanglement_score(torch.randn(20, 8, generator=g), zr)


def test_shared_timesteps_spread():
    assert shared_timesteps(5).tolist() == [100, 300, 500, 700, 900]
    assert shared_timesteps(1).tolist() == [500]


def test_config_validation():
    cfg = from_dict(RumConfig, {"groups": [{"objective": "esd", "steps": 5, "lr": "1e-5"}, {}, {"objective": "salun"}]}, "x.yaml")
    assert cfg.enabled and cfg.groups[0].lr == 1e-5 and cfg.groups[1].objective is None
    with pytest.raises(EraseError, match=r"x.yaml: groups\[0\].steps: must be >= 0"):
        from_dict(RumConfig, {"groups": [{"steps": -1}]}, "x.yaml")
    with pytest.raises(EraseError, match="fractions"):
        from_dict(RumConfig, {"groups": [{}, {}], "fractions": [0.5, 0.2]}, "x.yaml")
