import pytest

from erase.errors import EraseError
from erase.tokenizer import CLIP_VOCAB_SIZE, check_tokenizer, clip_tokenizer

# Ids from OpenAI CLIP's tokenizer (the one SD-1.x ships).
KNOWN = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "a": [49406, 320, 49407],
}


@pytest.mark.parametrize("text,ids", KNOWN.items())
def test_ids_equal_clip(text, ids):
    assert clip_tokenizer()(text).input_ids == ids


@pytest.mark.parametrize("text", ["a photo of a nude person wearing clothes", "painting by van gogh, starry night",
                                  "the number 7 written in red", "héllo wörld ✨ 123"])
def test_byte_level_roundtrip(text):
    tok = clip_tokenizer()
    ids = tok(text).input_ids
    assert ids[0] == 49406 and ids[-1] == 49407 and all(0 <= i < 49406 for i in ids[1:-1])
    # CLIP decodes word-final tokens with a trailing space, so compare without spaces.
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_size_length_padding():
    tok = clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert tok.model_max_length == 77
    ids = tok("a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407  # SD pads with EOS
    long = tok(" ".join(["cat"] * 200), truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[-1] == 49407


def test_broken_tokenizer_is_caught():
    class TwoTokens:
        def __len__(self):
            return 2

    with pytest.raises(EraseError, match="2 tokens but the text encoder expects 49408"):
        check_tokenizer(TwoTokens(), 49408, "x")
