"""The CLIP tokenizer of Stable Diffusion, loaded offline from the tokenizer.json that erase ships.

SD-1.x uses OpenAI CLIP's byte-level BPE: 49408 ids, BOS 49406, EOS 49407, 77 tokens, padded with
EOS. The Hub copy cannot be downloaded offline, but the digits model inside the package
(erase/zoo/artifacts/digits/tokenizer/) carries the complete tokenizer, so transformers'
`CLIPTokenizer.from_pretrained` reads it like any saved pipeline's `tokenizer/` folder.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from erase.errors import EraseError
from erase.resources import package_path

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77


def tokenizer_dir() -> Path:
    """The shipped folder with tokenizer.json and tokenizer_config.json (SD's CLIP tokenizer)."""
    return package_path("zoo", "artifacts", "digits", "tokenizer")


@lru_cache(maxsize=1)
def _cached() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=CLIP_MAX_LENGTH)


def clip_tokenizer() -> CLIPTokenizer:
    """SD's CLIP tokenizer: ids identical to CLIP's, 49408 tokens, max length 77, EOS padding."""
    tok = _cached()
    check_tokenizer(tok, CLIP_VOCAB_SIZE, f"{tokenizer_dir()}")
    return tok


@lru_cache(maxsize=1)
def _cached_openclip() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=CLIP_MAX_LENGTH, pad_token="!")


def openclip_tokenizer() -> CLIPTokenizer:
    """The tokenizer of SD-2.x and of SDXL's second text encoder (OpenCLIP): the same BPE and ids as
    CLIP's, padded with "!" (id 0) instead of EOS, as the published `tokenizer/` (SD-2) and
    `tokenizer_2/` (SDXL) folders say."""
    tok = _cached_openclip()
    check_tokenizer(tok, CLIP_VOCAB_SIZE, f"{tokenizer_dir()}")
    return tok


def check_tokenizer(tok, vocab_size: int, where: str) -> None:
    """Catch the offline trap: a tokenizer silently loaded with 2 tokens instead of CLIP's 49408."""
    if len(tok) != vocab_size:
        raise EraseError(
            f"{where}: tokenizer has {len(tok)} tokens but the text encoder expects {vocab_size}; "
            "the tokenizer files are missing or broken (an offline Hub load does this silently)"
        )


# A tiny T5 vocabulary for the random FLUX / SD3 test pipelines: no T5 tokenizer ships offline, so
# `t5_tokenizer()` builds a SentencePiece-style Unigram model (transformers' T5Tokenizer is the
# `tokenizers` library's Unigram with T5's Metaspace pre-tokenizer and "</s>" post-processor)
# with T5's special ids: <pad> 0, </s> 1, <unk> 2. Whole words score above their letters, so
# common prompt words are one token and anything else falls back to letters.
_T5_WORDS = (
    "a", "an", "the", "of", "in", "on", "with", "and", "or", "by", "to", "at", "photo", "picture",
    "painting", "image", "drawing", "portrait", "style", "artist", "van", "gogh", "monet", "picasso",
    "starry", "night", "nude", "nudity", "naked", "woman", "man", "person", "people", "cat", "dog", "car",
    "tree", "house", "red", "green", "blue", "yellow", "black", "white", "handwritten", "digit", "one",
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero", "church", "parachute",
    "garbage", "truck", "fish", "golf", "ball", "tench", "chain", "saw", "french", "horn", "english",
    "springer",
)


def t5_tokenizer(max_length: int = 77):
    """A tiny T5 tokenizer (Unigram over letters, digits, punctuation and common prompt words; ids 0-2
    are <pad>, </s>, <unk>): what the tiny FLUX / SD3 pipelines save as their `tokenizer_2` / `tokenizer_3`."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()"
    pieces += [(c, -8.0) for c in chars] + [("\u2581" + c, -7.0) for c in chars]
    pieces += [("\u2581" + w, -2.0) for w in dict.fromkeys(_T5_WORDS)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)
