"""The CLIP BPE tokenizer of Stable Diffusion, built offline from a vocabulary file a package ships.

SD-1.x uses OpenAI CLIP's byte-level BPE: 49408 ids, BOS 49406, EOS 49407, 77 tokens, padded with
EOS. The Hub copy cannot be downloaded here, but open_clip_torch ships the same merges
(`bpe_simple_vocab_16e6.txt.gz`); vocab.json and merges.txt follow from it exactly
(see shared/docs/environment.md). We never import open_clip itself: its __init__ needs torchvision.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

from erase.errors import EraseError
from erase.io import atomic_write_text

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
_N_MERGES = 49152 - 256 - 2  # 48,894 merges after the header line


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise EraseError(
            "CLIP tokenizer: open_clip_torch is not installed; run scripts/setup.sh "
            "(pip install --no-deps open_clip_torch) or pass a model folder that has a tokenizer/"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise EraseError(f"{path}: CLIP vocabulary file missing from open_clip_torch")
    return path


def tokenizer_dir() -> Path:
    """A folder with vocab.json, merges.txt and the tokenizer config, made once and cached."""
    cache = Path(os.environ.get("ERASE_CACHE", Path.home() / ".cache" / "erase")) / "clip-tokenizer"
    if (cache / "vocab.json").is_file() and (cache / "merges.txt").is_file():
        return cache
    lines = gzip.open(_bpe_file(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 1 + _N_MERGES]]
    byte_syms = list(_bytes_to_unicode().values())
    vocab = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    atomic_write_text(cache / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(cache / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "model_max_length": CLIP_MAX_LENGTH}
    atomic_write_text(cache / "tokenizer_config.json", json.dumps({"tokenizer_class": "CLIPTokenizer", **special}))
    atomic_write_text(cache / "special_tokens_map.json", json.dumps({k: v for k, v in special.items() if k != "model_max_length"}))
    return cache


@lru_cache(maxsize=1)
def _cached() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=CLIP_MAX_LENGTH)


def clip_tokenizer() -> CLIPTokenizer:
    """SD's CLIP tokenizer: ids identical to CLIP's, 49408 tokens, max length 77, EOS padding."""
    tok = _cached()
    check_tokenizer(tok, CLIP_VOCAB_SIZE, "built CLIP tokenizer")
    return tok


def check_tokenizer(tok, vocab_size: int, where: str) -> None:
    """Catch the offline trap: a tokenizer silently loaded with 2 tokens instead of CLIP's 49408."""
    if len(tok) != vocab_size:
        raise EraseError(
            f"{where}: tokenizer has {len(tok)} tokens but the text encoder expects {vocab_size}; "
            "the tokenizer files are missing or broken (an offline Hub load does this silently)"
        )
