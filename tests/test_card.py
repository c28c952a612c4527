"""The model card: Hub metadata, the run's config and audit, use and limitations."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from erase.errors import EraseError
from erase.export.card import build_card, metric_rows
from erase.export.run import RunInfo, read_run

PLANTED = "hf_plantedSECRET123"


def _run_dir(tmp_path, *, audit=True, base="CompVis/stable-diffusion-v1-4"):
    root = tmp_path / "run"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model_index.json").write_text("{}")
    (root / "config.yaml").write_text(  # the schema `erase train` writes
        f"model: {base}\nmethod: salun\nobjective:\n  threshold: 0.5\nconcept: ''\n"
        "weighting:\n  kind: dynamic\n  tau: 0.05\n"
        f"train:\n  lr: 1.0e-05\n  hub_token: {PLANTED}\n"
    )
    (root / "run.json").write_text(json.dumps({
        "status": "completed", "base_model": base, "method": "salun", "concepts": ["nudity", "Van Gogh"],
        "objective": {"name": "salun", "threshold": 0.5}, "weighting": {"kind": "dynamic", "tau": 0.05},
        "forget_prompts": ["a nude person"],
    }))
    if audit:
        (root / "audit").mkdir()
        (root / "audit" / "results.json").write_text(json.dumps(
            {"protocol": "i2p-nudity", "metrics": {"forget": {"asr": 0.0412, "nudenet_rate": 0.031}, "fid": 14.25}}))
        (root / "audit" / "grid.png").write_bytes(b"\x89PNG")
    return read_run(root)


def test_metadata_has_what_the_hub_indexes(tmp_path):
    run = _run_dir(tmp_path)
    card = build_card(run, "erased-nudity", single_file="erased-nudity.safetensors", has_audit_grid=True)
    path = tmp_path / "README.md"
    card.save(path)
    data = ModelCard.load(path).data.to_dict()
    assert data["base_model"] == "CompVis/stable-diffusion-v1-4"
    assert data["license"] == "creativeml-openrail-m"
    assert data["library_name"] == "diffusers"
    assert data["pipeline_tag"] == "text-to-image"
    assert {"concept-erasure", "stable-diffusion", "erased-nudity", "erased-van-gogh", "salun", "loreun-dynamic"} <= set(data["tags"])
    assert data["erased_concepts"] == ["nudity", "Van Gogh"]
    assert (data["objective"], data["weighting"]) == ("salun", "loreun-dynamic")


def test_body_has_config_audit_table_grid_and_limitations(tmp_path):
    run = _run_dir(tmp_path)
    text = str(build_card(run, "erased-nudity", has_audit_grid=True, has_lora=True))
    assert "| forget.asr | 0.0412 |" in text and "| fid | 14.25 |" in text
    assert "![audit image grid](audit_grid.png)" in text
    assert "## Training configuration" in text and "lr: 1.0e-05" in text
    assert "## Intended use" in text and "## Limitations" in text
    assert "load_lora_weights" in text and "StableDiffusionPipeline.from_pretrained(\"CompVis/stable-diffusion-v1-4\")" in text
    assert PLANTED not in text and "hub_token: <redacted>" in text


def test_no_audit_no_audit_section_and_local_base_stays_out_of_metadata(tmp_path):
    local = tmp_path / "my-base"
    local.mkdir()
    run = _run_dir(tmp_path, audit=False, base=str(local))
    card = build_card(run, "x")
    assert "## Audit" not in str(card)
    assert card.data.base_model is None  # the Hub rejects a base_model that is not a Hub id
    assert card.data.license == "other"
    assert str(local) in str(card)  # still said in the body


def test_bare_folder_card_is_valid(tmp_path):
    card = build_card(RunInfo(root=tmp_path, model_dir=tmp_path), "plain", license="apache-2.0")
    assert card.data.license == "apache-2.0" and "concept-erasure" in card.data.tags
    assert card.data.erased_concepts == []


def test_config_only_run_and_unfinished_run(tmp_path):
    run = _run_dir(tmp_path, audit=False)
    (run.root / "run.json").unlink()
    run = read_run(run.root)
    assert (run.objective, run.weighting, run.base_model) == ("salun", "loreun-dynamic", "CompVis/stable-diffusion-v1-4")
    (run.root / "run.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(EraseError, match="status: the run is 'failed'"):
        read_run(run.root)


def test_metric_rows_flatten_and_format():
    rows = metric_rows({"metrics": {"a": {"b": 0.123456, "c": [1, 2]}, "d": True, "e": "ok"}})
    assert rows == [("a.b", "0.1235"), ("d", "True"), ("e", "ok")]
    assert metric_rows({"protocol": "p", "x": 2}) == [("protocol", "p"), ("x", "2")]
