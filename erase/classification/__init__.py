"""Classifier unlearning against exact retraining: the home turf of LoReUn, RUM and NatMU.

The diffusion side of `erase` cannot afford to retrain; a classifier can, so here every method is
measured by its gap to Retrain (the model trained from scratch without the forget set).

- `data`: scikit-learn digits (8x8, ships with the package) or a local CIFAR-10 binary folder;
  train / validation / test splits; forget sets (random 10%, one class, memorisation-ranked).
- `models`: a small CNN for digits, a ResNet-18-style network for CIFAR-10.
- `train`: ordinary training (the original model and Retrain), recording the per-epoch
  true-class confidence that RUM uses as its memorisation proxy.
- `methods`: unlearning objectives returning a VECTOR of per-sample forget losses, weighted by
  the same `erase.weighting.Weighting` as the diffusion trainer (uniform, LoReUn static/dynamic),
  and RUM's sequence over the groups of `erase.rum.partition`.
- `metrics`: UA, RA, TA, MIA-Efficacy, Avg. Gap, ToW as the papers compute them.
- `bench`: `erase bench classification`: every method x weighting x seed, table, plot, JSON.
"""
