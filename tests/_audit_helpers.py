"""Shared fixtures-in-code for the audit tests: tiny real models saved as users would have them."""

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from erase.tokenizer import clip_tokenizer


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A random CLIPModel (ViT 32 px, 1 layer) plus the project's CLIP tokenizer, saved offline."""
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(path)
    clip_tokenizer().save_pretrained(path)
    return path


def save_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    from erase.models.builder import build_pipeline

    build_pipeline("tiny", seed=seed).save_pretrained(path)
    return path
