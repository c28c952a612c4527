"""Classifier unlearning (erase/classification): data, forget sets, methods, metrics, bench."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from erase.classification import bench as B
from erase.classification import data as D
from erase.classification import methods as M
from erase.classification.metrics import GAP_KEYS, avg_gap, tow
from erase.classification.models import SmallCNN
from erase.classification.train import per_sample_loss
from erase.cli import main
from erase.errors import EraseError
from erase.rum import partition


def _write_cifar(folder, n_per_batch: int, seed: int = 0):
    """A tiny CIFAR-10 binary folder: 5 train batches + a test batch; returns the raw records."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n_per_batch).astype(np.uint8)
        pixels = rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        records[name] = (labels, pixels)
    return records


def test_cifar_binary_reader_matches_the_records_it_was_given(tmp_path):
    recs = _write_cifar(tmp_path / "cifar-10-batches-bin", 12)
    x, y = D.read_cifar_batch(tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin")
    labels, pixels = recs["data_batch_2.bin"]
    assert x.shape == (12, 3, 32, 32) and np.array_equal(y, labels.astype(np.int64))
    assert np.array_equal(x[5, 1], pixels[5, 1024:2048].reshape(32, 32))  # channel-major: green plane
    ds = D.load_cifar10(tmp_path)  # the parent folder works too
    assert len(ds.train) + len(ds.val) == 60 and len(ds.test) == 12 and ds.train.x.shape[1:] == (3, 32, 32)
    mean = torch.tensor(D.CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(D.CIFAR_STD).view(3, 1, 1)
    expect = (torch.from_numpy(recs["data_batch_3.bin"][1][0].reshape(3, 32, 32)).float() / 255 - mean) / std
    assert torch.allclose(ds.train.x[24], expect)  # first record of data_batch_3 (12 + 12 before it)
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(EraseError, match="bad.bin"):
        D.read_cifar_batch(tmp_path / "bad.bin")
    with pytest.raises(EraseError, match="--data-dir"):
        D.load_cifar10(tmp_path / "nowhere")


def test_forget_sets():
    ds = D.load_digits()
    n = len(ds.train)
    r = D.forget_indices("random10", ds.train, seed=3)
    assert len(r) == round(0.1 * n) and len(set(r.tolist())) == len(r) and torch.equal(r, r.sort().values)
    assert not torch.equal(r, D.forget_indices("random10", ds.train, seed=4))
    c = D.forget_indices("class", ds.train, seed=0)
    assert set(ds.train.y[c].tolist()) == {D.FORGET_CLASS} and len(c) == int((ds.train.y == D.FORGET_CLASS).sum())
    score = torch.rand(n, generator=torch.Generator().manual_seed(0))
    m = D.forget_indices("memorised", ds.train, 0, score)
    k = len(m) // 3
    assert len(m) == round(0.1 * n) and len(set(m.tolist())) == len(m)
    order = torch.argsort(score, descending=True)
    assert set(order[:k].tolist()) <= set(m.tolist()) and set(order[-k:].tolist()) <= set(m.tolist())
    mid = score.median()
    chosen_mid = [i for i in m.tolist() if i not in set(order[:k].tolist()) | set(order[-(len(m) - 2 * k):].tolist())]
    assert len(chosen_mid) == k and max(abs(float(score[i] - mid)) for i in chosen_mid) < 0.1


def test_ramp_masks_follow_natmu():
    m = M.ramp_masks(8, 8, 0.0)
    assert m.shape == (4, 8, 8) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert torch.allclose(m[0, :, 0], torch.tensor([0, .25, .5, .75, .75, .5, .25, 0]))  # tent over rows
    assert torch.allclose(m[1], m[0].T) and torch.allclose(m[0] + m[2], torch.full((8, 8), 0.75))
    shifted = M.ramp_masks(8, 8, -0.19)
    assert torch.allclose(shifted, (m - 0.19).clamp(0, 1))


def _tiny_task(forget: str = "random10", seed: int = 0) -> M.Task:
    cfg = dataclasses.replace(B.BenchConfig(quick=True, forget=forget), seeds=1)
    ds = D.load_digits()
    small = D.Dataset("digits", ds.train.subset(torch.arange(300)), ds.val, ds.test.subset(torch.arange(100)), 10)
    task = B.make_task(cfg, small, seed)
    return task


@pytest.fixture(scope="module")
def task():
    return _tiny_task()


def test_objectives_return_per_sample_forget_losses(task):
    gen = torch.Generator().manual_seed(0)
    for name in ("GA", "RL", "NegGrad+", "SalUn", "SCRUB", "NatMU"):
        obj = M.OBJECTIVES[name](M.DEFAULTS[name], task, 0)
        fs = obj.forget_set(gen)
        fb = M.ForgetSet(fs.x[:5], fs.target[:5], fs.true[:5], fs.ids[:5])
        vec, diff = obj.forget_terms(task.original, fb)
        assert vec.shape == (5,) and diff.shape == (5,) and vec.requires_grad and not diff.requires_grad
        # the difficulty is the true-label loss of the forget sample the item came from
        f = task.forget
        expect = per_sample_loss(task.original, D.Split(f.x[fb.ids], f.y[fb.ids]))
        assert torch.allclose(diff, expect, atol=1e-5), name


def test_natmu_hybrids_carry_retain_labels_of_the_top_k_other_classes(task):
    obj = M.NatMU(M.DEFAULTS["NatMU"], task, 0)
    fs = obj.forget_set(torch.Generator().manual_seed(0))
    f = task.forget
    assert len(fs) == 4 * len(f) and torch.equal(fs.true, f.y[fs.ids])
    assert not bool((fs.target == fs.true).any())
    logits = M.logits_of(task.original, f.x)
    logits.scatter_(1, f.y[:, None], float("-inf"))
    top = torch.topk(logits, 4, 1).indices
    assert all(int(t) in top[int(i)].tolist() for t, i in zip(fs.target, fs.ids))


def test_salun_mask_keeps_the_requested_share_of_weights(task):
    model = M.copy.deepcopy(task.original)
    obj = M.SalUn(dataclasses.replace(M.DEFAULTS["SalUn"], mask_ratio=0.3, weight_decay=0.0), task, 0)
    obj.prepare(model)
    kept = sum(float(m.sum()) for m in obj.masks.values())
    total = sum(m.numel() for m in obj.masks.values())
    assert abs(kept / total - 0.3) < 0.01
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    M.run_objective(obj, model, M.weighting_config("uniform"), task.retain, torch.Generator().manual_seed(0))
    for n, p in model.named_parameters():  # without weight decay (which SalUn applies to every weight) frozen weights stay put
        frozen = obj.masks[n] == 0
        assert torch.equal(p.detach()[frozen], before[n][frozen]), n


def test_loreun_weighting_changes_ga_and_static_upweights_low_loss_samples(task):
    cfg = M.DEFAULTS["GA"]
    models = {k: M.unlearn(task, "GA", M.weighting_config(k, tau=0.05), 0, cfg)[0] for k in ("uniform", "static")}
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(models["uniform"].parameters(), models["static"].parameters()))
    assert diff > 0
    from erase.weighting import Weighting

    w = Weighting(M.weighting_config("static", tau=0.05), len(task.forget))
    w.set_static(per_sample_loss(task.original, task.forget))
    ids = torch.arange(len(task.forget))
    weights = w(torch.zeros(len(ids)), ids)
    losses = w.static
    assert float(weights[losses.argmin()]) == float(weights.max()) and abs(float(weights.mean()) - 1) < 1e-5


def test_rum_groups_go_from_least_to_most_memorised(task):
    groups = partition(task.memorisation[task.forget_idx], 3)
    means = [float(task.memorisation[task.forget_idx][g].mean()) for g in groups]
    assert means[0] <= means[1] <= means[2]
    model, seconds = M.unlearn(task, "RUM", M.weighting_config("dynamic"), 0, M.DEFAULTS["RUM"].scaled(0.2))
    assert seconds > 0 and any(not torch.equal(a, b) for a, b in zip(model.parameters(), task.original.parameters()))


def test_gap_and_tow_against_retrain():
    ref = {"UA": 2.0, "RA": 100.0, "TA": 97.0, "MIA": 5.0}
    assert avg_gap(ref, ref) == 0.0 and tow(ref, ref) == 1.0
    m = {"UA": 0.0, "RA": 99.0, "TA": 98.0, "MIA": 9.0}
    assert avg_gap(m, ref) == pytest.approx(sum(abs(m[k] - ref[k]) for k in GAP_KEYS) / 4)
    assert tow(m, ref) == pytest.approx(0.98 * 0.99 * 0.99)


def test_bench_cifar10_path_runs_on_a_tiny_binary_folder(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-bin", 8)
    cfg = B.BenchConfig(data="cifar10", data_dir=str(tmp_path), seeds=1, quick=True, width=4,
                        methods=("Retrain", "GA", "NatMU"), tune=False)  # CIFAR-10: the official rates, untuned
    r = B.run(cfg, tmp_path / "out", log=lambda *_: None)
    assert {(row["method"], row["weighting"]) for row in r["rows"]} == {
        ("Retrain", "uniform"), *[(m, k) for m in ("GA", "NatMU") for k in B.WEIGHTINGS]}


def test_small_cnn_shapes():
    assert SmallCNN()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_bench_classification_quick_cli_writes_every_row(tmp_path, capsys):
    assert main(["bench", "classification", "--quick", "--out", str(tmp_path)]) == 0  # --quick: 2 seeds
    r = json.loads((tmp_path / "classification" / "results.json").read_text())  # --out D -> D/<bench>/
    expect = {(m, k, s) for s in (0, 1) for m in M.METHODS
              for k in (B.WEIGHTINGS if m in M.FORGET_LOSS_METHODS else ("uniform",))}
    assert {(row["method"], row["weighting"], row["seed"]) for row in r["rows"]} == expect
    for row in r["rows"]:
        assert {"method", "weighting", "seed", "UA", "RA", "TA", "MIA", "avg_gap", "time_s"} <= set(row)
        assert all(0 <= row[k] <= 100 for k in ("UA", "RA", "TA", "MIA"))
        if row["method"] == "Retrain":
            assert row["avg_gap"] == 0.0
        if row["weighting"] != "uniform":  # LoReUn rows: the temperature and how far apart it puts the weights
            assert row["tau"] == M.DEFAULT_TAU and row["weight_spread"] > 1
    # one verdict per (method with a forget loss, LoReUn weighting), read off a paired interval
    assert {(v["method"], v["weighting"], v["forget"]) for v in r["verdicts"]} == {
        (m, k, "random10") for m in M.FORGET_LOSS_METHODS for k in ("static", "dynamic")}
    for v in r["verdicts"]:
        assert v["n"] == 2 and v["ci_low"] <= v["mean_diff"] <= v["ci_high"] and 0 <= v["seeds_lower"] <= 2
        assert v["verdict"] in ("helps", "hurts", "no difference")
    # tuning: the same grid for every arm, on the validation split, before the test rows
    assert all(len(t["grid"]) == len(B.LR_GRID) for t in r["tuning"].values())
    out = tmp_path / "classification"  # --out D -> D/<bench>/
    assert (out / "seeds" / "seed_1.json").is_file() and (out / "tuning.json").is_file()
    assert (out / "gap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| SalUn | LoReUn-d |" in capsys.readouterr().out
    # a second run reuses the tuning and the finished seeds
    assert main(["bench", "classification", "--quick", "--out", str(tmp_path), "--seeds", "2"]) == 0
    assert "seed 1: done before" in capsys.readouterr().out
    assert main(["bench", "classification", "--forget", "bogus"]) == 2
    assert main(["bench", "classification", "--seeds", "0"]) == 2
    assert "for seed 0 alone write '0,'" in capsys.readouterr().err


def test_seed_list_forms():
    from erase.commands.bench import seed_list

    assert seed_list("3") == (0, 1, 2)
    assert seed_list("0,") == (0,)
    assert seed_list("2, 5") == (2, 5)


def test_verdicts_and_claims_pair_by_seed():
    rows = []
    for s, (u, st, dy) in enumerate([(2.0, 1.0, 2.1), (3.0, 2.2, 3.0), (2.5, 1.4, 2.4)]):
        rows += [{"method": "GA", "weighting": k, "seed": s, "avg_gap": g, "forget": "random10", "ToW": 0.9, "UA": 1.0, "TA": 97.0}
                 for k, g in (("uniform", u), ("static", st), ("dynamic", dy))]
        rows.append({"method": "Retrain", "weighting": "uniform", "seed": s, "avg_gap": 0.0, "forget": "random10",
                     "ToW": 1.0, "UA": 2.0 + s / 10, "TA": 97.0 + s / 10})
    c = {r["weighting"]: r for r in B.verdicts(rows)}
    assert c["static"]["mean_diff"] == pytest.approx((-1.0 - 0.8 - 1.1) / 3) and c["static"]["seeds_lower"] == 3
    assert c["static"]["verdict"] == "helps" and c["static"]["ci_high"] < 0
    assert c["dynamic"]["verdict"] == "no difference" and c["dynamic"]["ci_low"] < 0 < c["dynamic"]["ci_high"]
    ua = next(x for x in B.claims(rows) if x["metric"] == "UA" and x["method"] == "GA")
    assert ua["reading"] == "under-forgets" and ua["mean_diff"] == pytest.approx(-1.1)


def test_loreun_weights_act_on_standardised_losses(task):
    """The temperature acts whatever the losses' scale: the spread over the forget set is exp(z range / tau)."""
    losses = per_sample_loss(task.original, task.forget)
    spread = M.weight_spread(M.weighting_config("static", tau=1.0), losses)
    z = (losses - losses.mean()) / losses.std()
    assert spread == pytest.approx(float(torch.exp(z.max() - z.min())), rel=1e-3) and spread > 2
    assert M.weight_spread(M.weighting_config("uniform"), losses) == 1.0
    assert M.weight_spread(M.weighting_config("static", tau=1.0, standardize=False), losses * 1e-3) < 1.01


def test_official_loops_batch_as_the_official_code():
    cfg = M.MethodConfig(epochs=4, lr=0.1, batch_size=10, msteps=1)
    g = torch.Generator().manual_seed(0)
    cyc = list(M._batches("cycle", 0, cfg, 25, 45, g))  # RUM neggrad.py: zip(retain, cycle(forget))
    assert len(cyc) == 5 and [len(f) for f, _ in cyc] == [10, 10, 5, 10, 10] and torch.equal(cyc[0][0], cyc[3][0])
    seq = list(M._batches("sequential", 0, cfg, 25, 45, g))  # SalUn RL.py: a forget pass, then a retain pass
    assert [r is None for _, r in seq] == [True] * 3 + [False] * 5
    # SCRUB: max passes while epoch <= msteps (RUM scrub.py:146): msteps + 1 epochs of them
    maxes = [sum(f is not None for f, _ in M._batches("alternate", e, cfg, 25, 45, g)) for e in range(4)]
    assert maxes == [3, 3, 0, 0]
    cat = list(M._batches("concat", 0, cfg, 25, 45, g))
    assert sum(len(f) for f, _ in cat) == 25 and sum(len(r) for _, r in cat) == 45
    from erase.classification.train import lr_factor

    assert [lr_factor("scrub", e, 10) for e in range(10)] == pytest.approx([1] * 5 + [0.1] * 3 + [0.01, 0.001])
    assert [lr_factor("step", e, 8) for e in (0, 3, 4, 5, 6, 7)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor("constant", 9, 10) == 1.0


def test_rl_draws_new_labels_every_batch_and_natmu_partners_are_distinct(task):
    obj = M.RL(M.DEFAULTS["RL"], task, 0)
    fb = obj.forget_set(torch.Generator().manual_seed(0))
    a, _ = obj.forget_terms(task.original, fb)
    b, _ = obj.forget_terms(task.original, fb)
    assert not torch.allclose(a, b)  # the same images, other random labels
    nat = M.NatMU(M.DEFAULTS["NatMU"], task, 0)
    y = task.retain.y
    partners = M.partners_without_replacement(y, torch.tensor([1, 1, 2, 1, 2]), torch.Generator().manual_seed(0))
    assert len(set(partners.tolist())) == 5 and y[partners].tolist() == [1, 1, 2, 1, 2]
    hy = nat.forget_set(torch.Generator().manual_seed(0))
    assert len(hy) == 4 * len(task.forget)


def test_one_full_forget_batch_makes_batch_and_global_normalisation_the_same(task):
    """With the forget set inside one forget batch (digits: ~126 samples, batch 128), the softmax over
    the batch IS the softmax over the forget set: normalize batch and global give the same model."""
    cfg = M.DEFAULTS["NegGrad+"].scaled(0.2)
    assert len(task.forget) <= cfg.batch_size
    a, _ = M.unlearn(task, "NegGrad+", M.weighting_config("dynamic", normalize="batch"), 0, cfg)
    b, _ = M.unlearn(task, "NegGrad+", M.weighting_config("dynamic", normalize="global"), 0, cfg)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
