"""Parity: Ring-A-Bell's concept vector, target and fitness equal the official formulas; the
genetic search keeps the official population structure and finds better prompts than it starts with.

Official repository chiayi-hsu/Ring-A-Bell:
- Get_Concept_Vector.ipynb, cell 2 (the Violence prompts: each prompt encoded `num_samples` = 5
  times, `embed = text_encoder(input_ids)[0]`) and cell 3 (`vec = np.mean(with - without, axis=0)`);
- InversePrompt.ipynb, cell 2 (population 200, 3000 generations, mutateRate 0.25, crossoverRate 0.5,
  length 16, cof 3), cell 9 (`fitness`: `((targetEmbed - dummy_embed) ** 2).sum(dim=(1, 2))`,
  `crossover`, `mutation`), cell 12 (`targetEmbed = text_encoder(ids)[0] + cof * vec`, the initial
  population [49406, 16 ids in [1, 49406), 49407 x 60], selection of the best half).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from erase.audit.attacks.common import from_budget
from erase.audit.attacks.ringabell import (
    RingABellSettings,
    concept_pairs,
    concept_vector,
    crossover,
    fitness,
    genetic_search,
    initial_population,
    inverse_prompt,
    mutate,
    target_embedding,
)
from erase.audit.attacks.unlearndiffatk import render
from erase.audit.generate import GenSettings
from erase.audit.suites import load_suite
from erase.cli import main


def official_vector(tokenizer, text_encoder, with_prompts, without_prompts, num_samples=5):  # cells 2-3
    def encode(prompts):
        out = []
        for p in prompts:
            text_input = tokenizer([p] * num_samples, padding="max_length", max_length=77, truncation=True,
                                   return_tensors="pt")
            out.extend(text_encoder(text_input.input_ids, return_dict=True)[0].detach().numpy())
        return np.array(out)
    return np.mean(encode(with_prompts) - encode(without_prompts), axis=0)


def test_official_defaults():
    s = RingABellSettings()
    assert (s.budget, s.population, s.generations, s.mutation, s.crossover, s.length, s.strength) == \
        ("official", 200, 3000, 0.25, 0.5, 16, 3.0)
    assert from_budget(RingABellSettings, "quick").generations < s.generations


def test_vector_target_and_fitness_equal_the_official_formulas(tiny_pipeline):
    pipe = tiny_pipeline.to(torch.float64)
    tok, te = pipe.tokenizer, pipe.text_encoder
    pairs = concept_pairs("three")
    assert pairs[0] == ("a photo of three", "a photo of") and ("three", "") in pairs
    vec = concept_vector(tok, te, pairs)
    want = official_vector(tok, te, [a for a, _ in pairs], [b for _, b in pairs])
    np.testing.assert_allclose(vec.numpy(), want, rtol=1e-12, atol=1e-12)
    assert vec.abs().max() > 0

    prompt, cof = "a handwritten three in red ink", 3.0
    text_input = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    target_official = te(text_input.input_ids)[0] + cof * torch.from_numpy(want)  # cell 12
    target = target_embedding(tok, te, prompt, vec, cof)
    torch.testing.assert_close(target, target_official[0], rtol=1e-12, atol=1e-12)

    cfg = RingABellSettings(population=6)
    population = initial_population(cfg, tok.bos_token_id, tok.eos_token_id, np.random.default_rng(0))
    with torch.no_grad():
        dummy_embed = te(population)[0]
    losses = ((target_official - dummy_embed) ** 2).sum(dim=(1, 2))  # cell 9 `fitness`
    torch.testing.assert_close(fitness(te, target, population, chunk=4), losses, rtol=1e-12, atol=0)


def test_population_structure_matches_the_official_code():
    cfg = RingABellSettings(population=40)
    rng = np.random.default_rng(0)
    bos, eos = 49406, 49407
    pop = initial_population(cfg, bos, eos, rng)
    assert pop.shape == (40, 77) and (pop[:, 0] == bos).all() and (pop[:, 17:] == eos).all()
    assert ((pop[:, 1:17] >= 1) & (pop[:, 1:17] < bos)).all()
    parents = pop[:20]
    children = mutate(crossover(parents, cfg, rng), cfg, bos, rng)
    # every parent survives into the next generation (mutated or not); crossover adds pairs
    assert 20 <= len(children) <= 60 and (len(children) - 20) % 2 == 0
    assert (children[:, 0] == bos).all() and (children[:, 17:] == eos).all()
    assert ((children[:, 1:17] >= 1) & (children[:, 1:17] < bos)).all()
    # with mutation 0 and crossover 0 the next generation is exactly the parents (official: no-op)
    still = RingABellSettings(population=40, mutation=0.0, crossover=0.0)
    assert torch.equal(mutate(crossover(parents, still, rng), still, bos, rng), parents)


def test_search_improves_fitness_and_is_reproducible(tiny_pipeline):
    pipe = tiny_pipeline
    tok, te = pipe.tokenizer, pipe.text_encoder
    vec = concept_vector(tok, te, concept_pairs("three"))
    target = target_embedding(tok, te, "a handwritten digit", vec, 3.0)
    cfg = RingABellSettings(population=16, generations=1)
    _, first = genetic_search(tok, te, target, cfg, seed=5)  # best of the random initial population
    cfg = RingABellSettings(population=16, generations=25)
    tokens, best = genetic_search(tok, te, target, cfg, seed=5)
    assert best < first
    assert (tokens, best) == genetic_search(tok, te, target, cfg, seed=5)
    assert len(tokens) == 16 and all(1 <= t < tok.bos_token_id for t in tokens)
    ids = torch.tensor([[tok.bos_token_id, *tokens] + [tok.eos_token_id] * 60])
    assert fitness(te, target, ids)[0].item() == best


@pytest.mark.slow
def test_audit_with_ringabell_generates_the_found_prompts(tiny_pipeline, tiny_pipeline_dir, tiny_reference_dir,
                                                          tiny_clip_dir, tmp_path):
    model, clip, ref = tiny_pipeline_dir, tiny_clip_dir, tiny_reference_dir
    out = tmp_path / "out"
    assert main(["audit", "--model", str(model), "--suite", "prompts/digits/digit3.csv", "--limit", "2",
                 "--steps", "2", "--out", str(out), "--detector", f"clip:{clip}:three", "--attack", "ringabell",
                 "--reference-model", str(ref), "--attack-budget", "quick", "--ringabell-generations", "3",
                 "--ringabell-population", "8"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["attack"]["name"] == "ringabell" and res["attack"]["budget"] == "quick+custom"
    assert (res["attack"]["generations"], res["attack"]["population"], res["attack"]["length"]) == (3, 8, 16)
    attacks = [json.loads(x) for x in (out / "attack.jsonl").read_text().splitlines()]
    pipe = tiny_pipeline
    rows = load_suite("prompts/digits/digit3.csv")
    for a in attacks:
        if a["pre"]:
            continue
        # the attack prompt is plain text made of the K found tokens; it alone makes the saved image
        assert a["adv_prompt"] == inverse_prompt(pipe.tokenizer, a["tokens"]) and len(a["tokens"]) == 16
        image = render(pipe, rows[a["index"]], a["adv_prompt"], GenSettings("ddim", 2, 1))
        saved = np.asarray(Image.open(out / a["file"]).convert("RGB"))
        np.testing.assert_array_equal((image * 255).round().astype(np.uint8), saved)
