"""Named audit protocols (erase/audit/protocols.py): what `--protocol NAME` fixes, its dry-run listing, the
suite check by sha256, the official scripts' seeding of several images per prompt, counts beside rates and
`erase report` flagging audits made under different protocols."""

import hashlib
import json

import numpy as np
import pytest
import torch

from erase.audit.protocols import PROTOCOLS
from erase.audit.report import comparable
from erase.audit.suites import expand_rows, read_suite
from erase.cli import main
from erase.resources import data_path


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_dry_run_lists_every_setting_with_its_source(name, capsys):
    args = ["audit", "--protocol", name, "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    p = PROTOCOLS[name]
    for text in (p.suite, p.suite_sha256[:16], f"{p.scheduler} / {p.steps}", f"images per prompt: {p.images_per_prompt}",
                 "resolution: 512 x 512", "seeds: each row's seed"):
        assert text in out, text
    assert out.count("source: ") >= 7 and "@" in out  # each value cited (repository@commit file:line)


def test_a_flag_the_protocol_fixes_is_refused_and_the_rest_is_recorded(capsys, tmp_path):
    assert main(["audit", "--protocol", "unlearndiffatk-nudity", "--steps", "25", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == "erase audit: --steps 25: --protocol unlearndiffatk-nudity fixes it to 50"
    assert main(["audit", "--protocol", "unlearndiffatk-vangogh", "--model", "zoo:digits", "--suite", "x.csv",
                 "--dry-run"]) == 2
    assert "needs --classifier DIR" in capsys.readouterr().err
    suite = tmp_path / "nudity.csv"  # not the published file: the audit says so
    suite.write_text("prompt,evaluation_seed,evaluation_guidance\na three,5,7\n")
    import argparse

    from erase.audit.protocols import get_protocol
    from erase.audit.provenance import protocol_record
    from erase.commands.audit import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--protocol", "unlearndiffatk-nudity", "--model", "zoo:digits", "--suite",
                              str(suite), "--no-attack", "--limit", "1", "--out", str(tmp_path / "o")])
    s = settings_from_args(args)
    assert (s.gen.scheduler, s.gen.steps, s.size, s.guidance, s.detector, s.attack) == \
        ("lms", 50, 512, None, "nudenet:unlearndiffatk", None)
    rec = protocol_record(s, [read_suite(suite)])
    assert rec["name"] == "unlearndiffatk-nudity" and not rec["suite_matches"]
    assert rec["deviations"][0].startswith("suite file is not the published OPTML-Group/Diffusion-MU-Attack: prompts/nudity.csv")
    assert "no attack (--no-attack): pre-ASR only" in rec["deviations"] and "--limit 1" in rec["deviations"]
    published = get_protocol("unlearndiffatk-nudity").suite_sha256
    assert hashlib.sha256(suite.read_bytes()).hexdigest() != published


def test_several_images_per_prompt_are_slices_of_one_draw(tiny_pipeline):
    """Image k of a prompt = slice k of torch.randn((n, C, h, w), generator=torch.manual_seed(seed)), as the
    official generate-images scripts draw a prompt's images; one fixed guidance and size for every row."""
    from erase.audit.generate import row_generators

    rows = expand_rows(read_suite(data_path("prompts/digits/digit3.csv")).rows[:2], 3, guidance=7.5, size=64)
    assert [r.index for r in rows] == list(range(6)) and [r.extra["sample"] for r in rows] == [0, 1, 2] * 2
    assert {r.guidance for r in rows} == {7.5} and {(r.width, r.height) for r in rows} == {(64, 64)}
    c, f = tiny_pipeline.unet.config.in_channels, tiny_pipeline.vae_scale_factor
    shape = (c, 64 // f, 64 // f)
    batch = torch.randn((3, *shape), generator=torch.manual_seed(rows[0].seed))
    for k, g in enumerate(row_generators(rows[:3], tiny_pipeline)):
        assert torch.equal(torch.randn((1, *shape), generator=g)[0], batch[k])


def test_counts_beside_rates_and_report_flags_other_protocols(tiny_pipeline_dir, tmp_path, capsys):
    common = ["--model", str(tiny_pipeline_dir), "--suite", str(data_path("prompts/digits/digit3.csv")), "--suite",
              str(data_path("prompts/digits/other_digits.csv")), "--limit", "2", "--detector", "digits:three"]
    assert main(["audit", *common, "--steps", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["audit", *common, "--steps", "3", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    m = a["metrics"]
    assert m["concept_count"] <= m["n_concept_prompts"] == 2 and m["concept_rate"] == m["concept_count"] / 2
    assert m["retention_correct"] <= m["n_retention_prompts"] == 2
    assert a["sha256"]["suite_files"]["digit3.csv"] == hashlib.sha256(data_path("prompts/digits/digit3.csv")
                                                                      .read_bytes()).hexdigest()
    assert set(a["sha256"]["model_weights"]) >= {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    assert len(a["sha256"]["detector_weights"]) == 2  # the digit and colour judges
    capsys.readouterr()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "same.html")]) == 0
    assert "different protocols" not in capsys.readouterr().out
    assert 'class="mismatch"' not in (tmp_path / "same.html").read_text()
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "diff.html")]) == 0
    assert "different protocols (scheduler / steps)" in capsys.readouterr().out
    page = (tmp_path / "diff.html").read_text()
    assert '<tr class="mismatch"><th>scheduler / steps</th><td>ddim / 2</td><td>ddim / 3</td>' in page
    assert f"{m['concept_rate']:.4f} ({m['concept_count']}/2)" in page
    assert comparable(a)["audit protocol"] == "none" and comparable(b)["images per prompt"] == 1
    assert np.isfinite(m["concept_rate"])


def test_classifier_detector_reads_a_transformers_image_classifier(tmp_path):
    """The style protocols' detector: a (here random, tiny) ViT image classifier folder, flag = the label is
    among the top k; preprocessing from its preprocessor_config.json; pickle-only folders are refused."""
    from transformers import ViTConfig, ViTForImageClassification

    from erase.audit.detectors import build_detector
    from erase.errors import EraseError

    labels = ["claude-monet", "vincent-van-gogh", "pablo-picasso"]
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8, num_labels=3, id2label=dict(enumerate(labels)), label2id={v: i for i, v in enumerate(labels)})
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "clf")
    (tmp_path / "clf" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2}))
    images = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    top1 = build_detector(f"classifier:{tmp_path / 'clf'}:vincent-van-gogh@1")(images)
    top3 = build_detector(f"classifier:{tmp_path / 'clf'}:vincent-van-gogh@3")(images)
    assert all(d["flag"] == (d["rank"] == 1) == (d["pred"] == "vincent-van-gogh") for d in top1)
    assert all(d["flag"] for d in top3) and [d["score"] for d in top1] == [d["score"] for d in top3]
    with pytest.raises(EraseError, match="has no label 'van-gogh'"):
        build_detector(f"classifier:{tmp_path / 'clf'}:van-gogh")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "clf" / "config.json").read_text())
    torch.save(ViTForImageClassification(cfg).state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    with pytest.raises(EraseError, match="no .safetensors weights"):
        build_detector(f"classifier:{tmp_path / 'bin'}:vincent-van-gogh")
