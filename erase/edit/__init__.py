"""Training-free, closed-form concept editing (`erase edit`): one module per method, each registering
itself (erase/edit/registry.py), like the fine-tuning objectives. UCE (erase/edit/uce.py) is the first.

config.py: the run config (`EditConfig`); runner.py: model -> erase/preserve sets -> editor -> the
run directory `erase train` writes (model/, run.json, config.yaml), so export and audit read it unchanged.
"""

from __future__ import annotations
