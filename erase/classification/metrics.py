"""The papers' metrics (SalUn, RUM, LoReUn, NatMU all report these on CIFAR-10):

- UA = 100 - accuracy on the forget set; RA = accuracy on the retain set; TA = accuracy on the
  test set (for --forget class: on the test samples of the other classes, as class-wise papers do).
- MIA-Efficacy (SalUn's `SVC_MIA`, "confidence" feature): an RBF SVC (C=3, gamma="auto") learns
  member vs non-member from the true-class confidence, with retain samples as members (as many as
  there are test samples, drawn at random) and test samples as non-members; MIA-Efficacy is the
  percentage of FORGET samples it calls non-member (higher = the forget set looks unseen).
- Avg. Gap = mean over {UA, RA, TA, MIA} of |metric - metric(Retrain)|, in points.
- ToW (RUM) = prod over D in {forget, retain, test} of (1 - |acc_D - acc_D(Retrain)| / 100), in [0, 1].
All are percentages except ToW.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from erase.classification.data import Split
from erase.classification.train import logits_of, true_class_confidence

GAP_KEYS = ("UA", "RA", "TA", "MIA")


def accuracy(model: nn.Module, split: Split) -> float:
    if len(split) == 0:
        return float("nan")
    return 100.0 * float((logits_of(model, split.x).argmax(1) == split.y).double().mean())


def mia_efficacy(model: nn.Module, retain: Split, test: Split, forget: Split, seed: int) -> float:
    """% of forget samples an SVC on true-class confidence (retain = member, test = non-member) calls non-member."""
    from sklearn.svm import SVC

    g = torch.Generator().manual_seed(seed)
    members = retain.subset(torch.randperm(len(retain), generator=g)[: len(test)])
    def conf(split: Split) -> Tensor:  # a diverged model (NaN logits) reads as confidence 0
        return torch.nan_to_num(true_class_confidence(model, split).double().cpu(), nan=0.0)

    conf_m, conf_n = conf(members), conf(test)
    x = torch.cat([conf_m, conf_n]).numpy()[:, None]
    y = [1] * len(conf_m) + [0] * len(conf_n)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, y)
    pred = clf.predict(conf(forget).numpy()[:, None])
    return 100.0 * float((pred == 0).mean())


def evaluate(model: nn.Module, forget: Split, retain: Split, test: Split, seed: int) -> dict[str, float]:
    """UA, RA, TA, MIA (percentages) of one model."""
    return {"UA": 100.0 - accuracy(model, forget), "RA": accuracy(model, retain), "TA": accuracy(model, test),
            "MIA": mia_efficacy(model, retain, test, forget, seed)}


def avg_gap(m: dict[str, float], ref: dict[str, float]) -> float:
    return sum(abs(m[k] - ref[k]) for k in GAP_KEYS) / len(GAP_KEYS)


def tow(m: dict[str, float], ref: dict[str, float]) -> float:
    """Tug-of-war: 1 when forget, retain and test accuracy all equal Retrain's (UA = 100 - forget accuracy)."""
    out = 1.0
    for k in ("UA", "RA", "TA"):
        out *= 1.0 - abs(m[k] - ref[k]) / 100.0
    return out
