"""Slot embeddings spliced through the input-embedding hook equal the real tokens they stand for."""

import torch

from erase.models.soft_prompt import encode_plain, encode_with_slots, slot_embeddings, tokenize_with_slots


def test_slots_equal_real_tokens_and_carry_gradients(tiny_pipeline):
    pipe = tiny_pipeline
    tok, te = pipe.tokenizer, pipe.text_encoder.requires_grad_(False)
    word_ids = tok("cat dog", add_special_tokens=False).input_ids
    ids, mask = tokenize_with_slots(tok, ["a photo"], n_slots=2, where="prefix")
    assert mask[0].tolist()[:4] == [False, True, True, False]
    table = te.get_input_embeddings().weight
    embeds = table[word_ids].detach().clone().requires_grad_(True)
    got = encode_with_slots(te, ids, mask, embeds)
    want = encode_plain(tok, te, ["cat dog a photo"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the same ids written into the slots give the same encoding without any hook
    ids2, _ = tokenize_with_slots(tok, ["a photo"], n_slots=2, slot_ids=torch.tensor(word_ids))
    torch.testing.assert_close(te(ids2)[0], want, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0
    assert table.grad is None  # frozen encoder: only the slot embeddings learn
    # the hook acts only while its context is open, and is removed on exit, even on an error
    layer = te.get_input_embeddings()
    before = te(ids)[0]  # the placeholder ids as they are, no hook registered yet
    with slot_embeddings(te, mask, torch.zeros_like(embeds)):
        inside = te(ids)[0]
    assert (inside - before).abs().max() > 1e-3  # zeros in the slots change the encoding
    assert not layer._forward_hooks
    torch.testing.assert_close(te(ids)[0], before, rtol=0, atol=0)
    try:
        with slot_embeddings(te, mask, torch.zeros_like(embeds)):
            raise KeyError("inside")
    except KeyError:
        pass
    assert not layer._forward_hooks
    torch.testing.assert_close(te(ids)[0], before, rtol=0, atol=0)


def test_suffix_and_truncation(tiny_pipeline):
    tok = tiny_pipeline.tokenizer
    ids, mask = tokenize_with_slots(tok, ["word " * 100, "a b"], n_slots=3, where="suffix")
    assert ids.shape == (2, 77) and mask.sum(1).tolist() == [3, 3]
    assert mask[0, 73:76].all() and ids[0, 76] == tok.eos_token_id
    assert mask[1, 3:6].all()
