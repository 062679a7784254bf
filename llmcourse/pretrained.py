"""The small GPT shipped with the course (`llmcourse/assets/tiny_gpt.*`), so notebooks 06-10 need no training.

    model, tokenizer = load_tiny_gpt()        # eval mode, on llmcourse.runtime.get_device()
    tiny_gpt_record()["command"]             # the `llmcourse train ...` command that recreates it

It was trained by the course's own code (`llmcourse.train`) on the default corpus; its record (settings, loss
curves, held-out perplexity) is `assets/tiny_gpt.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmcourse.gpt import GPT
from llmcourse.tokenizer import Tokenizer
from llmcourse.train import checkpoint_paths, load_checkpoint

ASSETS = Path(__file__).resolve().parent / "assets"
NAME = "tiny_gpt"


def load_tiny_gpt(device: torch.device | str | None = None) -> tuple[GPT, Tokenizer]:
    """A fresh copy of the shipped GPT (eval mode, on `device`, default `get_device()`) and its tokenizer."""
    model, tokenizer, _ = load_checkpoint(ASSETS, name=NAME, device=device)
    return model, tokenizer


def tiny_gpt_record() -> dict:
    """How the shipped GPT was trained: command, settings, loss curves and held-out perplexities."""
    return json.loads(checkpoint_paths(ASSETS, NAME)["meta"].read_text(encoding="utf-8"))["training"]
