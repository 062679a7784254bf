"""The small GPT shipped with the course (`llmcourse/assets/tiny_gpt.*`), so notebooks 06-10 need no training, its
Llama counterpart (`assets/tiny_llama.*`, notebook 11), and the real GPT-2 where a learner has its files.

    model, tokenizer = load_tiny_gpt()        # eval mode, on llmcourse.runtime.get_device()
    tiny_gpt_record()["command"]             # the `llmcourse train ...` command that recreates it
    model, tokenizer = load_tiny_llama()      # RMSNorm, SwiGLU, RoPE, grouped-query attention; same tokenizer
    load_local_gpt2()                         # (GPT-2, its tokenizer) from $LLMCOURSE_GPT2, or None

Both were trained by the course's own code (`llmcourse.train`) on the default corpus, with the same tokenizer,
schedule and seed, at about the same parameter count; their records (command, settings, loss curves, held-out
perplexity) are `assets/tiny_gpt.json` and `assets/tiny_llama.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llmcourse.gpt import GPT, load_gpt2
from llmcourse.gpt2_tokenizer import GPT2Tokenizer, load_gpt2_tokenizer
from llmcourse.llama import Llama
from llmcourse.runtime import get_device
from llmcourse.tokenizer import Tokenizer
from llmcourse.train import checkpoint_paths, load_checkpoint

ASSETS = Path(__file__).resolve().parent / "assets"
NAME = "tiny_gpt"
LLAMA_NAME = "tiny_llama"
GPT2_ENV = "LLMCOURSE_GPT2"  # a folder with GPT-2's model.safetensors, config.json, vocab.json and merges.txt


def load_tiny_gpt(device: torch.device | str | None = None) -> tuple[GPT, Tokenizer]:
    """A fresh copy of the shipped GPT (eval mode, on `device`, default `get_device()`) and its tokenizer."""
    model, tokenizer, _ = load_checkpoint(ASSETS, name=NAME, device=device)
    return model, tokenizer


def tiny_gpt_record() -> dict:
    """How the shipped GPT was trained: command, settings, loss curves and held-out perplexities."""
    return _record(NAME)


def load_tiny_llama(device: torch.device | str | None = None) -> tuple[Llama, Tokenizer]:
    """A fresh copy of the shipped Llama (eval mode, on `device`, default `get_device()`) and its tokenizer, the
    tiny GPT's."""
    model, tokenizer, _ = load_checkpoint(ASSETS, name=LLAMA_NAME, device=device)
    return model, tokenizer


def tiny_llama_record() -> dict:
    """How the shipped Llama was trained: command, settings, loss curves and held-out perplexities."""
    return _record(LLAMA_NAME)


def _record(name: str) -> dict:
    return json.loads(checkpoint_paths(ASSETS, name)["meta"].read_text(encoding="utf-8"))["training"]


def load_local_gpt2(folder: str | os.PathLike | None = None) -> tuple[GPT, GPT2Tokenizer] | None:
    """GPT-2 (eval mode, on `get_device()`) and its own tokenizer from a local Hugging Face folder: `folder`, else
    `$LLMCOURSE_GPT2`; None when neither is set. Nothing is downloaded: fetch the files of the `gpt2` model yourself
    (model.safetensors, config.json, vocab.json, merges.txt) and point the variable at their folder."""
    folder = folder or os.environ.get(GPT2_ENV)
    if not folder:
        return None
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{GPT2_ENV}={str(folder)!r} is not a folder: point it at the folder that holds "
                                "GPT-2's model.safetensors, config.json, vocab.json and merges.txt")
    tokenizer = load_gpt2_tokenizer(folder / "vocab.json", folder / "merges.txt")
    return load_gpt2(folder).to(get_device()), tokenizer
