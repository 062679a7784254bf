"""Training the PyTorch GPT on the course corpus: batches, the learning-rate schedule, the loop, held-out
evaluation, and checkpoints written atomically.

    llmcourse train --out runs/tiny --steps 600 --tokenizer bpe --vocab-size 512     # the command line
    summary = run("runs/tiny", gpt=dict(n_layer=4, ...), config=TrainConfig(steps=600))  # the same from Python

The model is a GPT (`llmcourse.gpt`) or a Llama (`llmcourse.llama`, `run(..., arch="llama")`): the loop, the
evaluation and the checkpoints are the same for both. A checkpoint named NAME in a folder is NAME.json (the model's
config under its architecture's name, "gpt" or "llama"; the training record: settings, loss curves, held-out
perplexities) and the two files it names with their SHA-256: the weights (NAME.<hash>.safetensors) and the tokenizer
(NAME.<hash>.tokenizer.json). A save writes the two files first, then replaces NAME.json in one rename (`os.replace`)
and only then removes the previous files: whenever a save is interrupted, the folder holds the previous checkpoint
or the new one, whole. `run` saves at every evaluation, and stops at the first NaN or infinite loss
(`TrainingDiverged`), so a diverging run keeps its last good checkpoint.

Perplexities compared across tokenizers are per character: the total negative log-likelihood of the held-out text
divided by its number of characters, whatever the tokens were (a BPE token spans about two characters here).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmcourse.data import load_corpus, train_val_split
from llmcourse.files import atomic_write, write_then_name
from llmcourse.gpt import GPT, GPTConfig, LanguageModel
from llmcourse.llama import Llama, LlamaConfig
from llmcourse.runtime import get_device, set_seed
from llmcourse.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, load_tokenizer

FORMAT = "llmcourse-gpt-checkpoint"
FORMAT_VERSION = 2  # 2: files named by their hash, listed with their SHA-256
ARCHITECTURES = {"gpt": (GPT, GPTConfig), "llama": (Llama, LlamaConfig)}  # the record's key -> model, config


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-3  # peak learning rate, reached after the warm-up
    min_lr: float = 3e-4  # the cosine decay ends here at the last step
    warmup_steps: int = 50  # linear warm-up from lr / warmup_steps
    weight_decay: float = 0.1  # AdamW's decoupled decay, on matrices only (not biases, LayerNorms)
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float | None = 1.0  # largest global gradient norm
    eval_every: int = 100  # held-out loss every this many steps (and at the last step)
    eval_tokens: int | None = 8192  # held-out tokens used by those evaluations (None: all)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of 0-based `step`: linear warm-up to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = max(config.steps - 1 - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / decay_steps, 1.0)  # 0 -> 1
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def get_batch(ids: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of the token stream `ids` (N,): inputs x (B, T) and targets y = x shifted by one."""
    if len(ids) < block_size + 1:
        raise ValueError(f"the text has {len(ids)} tokens, too few for one window of block_size + 1 = "
                         f"{block_size + 1}: use a longer text or a smaller block_size")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size + 1)  # (T + 1,)
    windows = ids[starts[:, None] + offsets]  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the weight matrices and embeddings only (biases and LayerNorms are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                  clip: float | None = 1.0) -> float:
    """One update on the batch x, y (B, T): mean cross-entropy of model(x) (B, T, V) against y, backward, global
    gradient norm clipped to `clip` (None: no clipping), optimizer step, gradients cleared. Returns the loss before
    the update."""
    logits = model(x)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over the B * T positions
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
    optimizer.step()
    optimizer.zero_grad()  # gradients set to None
    return loss.item()


def perplexity(mean_cross_entropy: float) -> float:
    """exp(mean cross-entropy in nats); inf when that overflows a float."""
    try:
        return math.exp(mean_cross_entropy)
    except OverflowError:
        return math.inf


@dataclass
class Evaluation:
    total_nll: float  # sum of -log P(token) over the predicted tokens, in nats
    tokens: int  # how many tokens were predicted

    @property
    def loss(self) -> float:
        """Mean cross-entropy in nats per token."""
        return self.total_nll / self.tokens

    @property
    def perplexity(self) -> float:
        """Per-token perplexity exp(loss)."""
        return perplexity(self.loss)


@torch.no_grad()
def evaluate(model: LanguageModel, ids, *, max_tokens: int | None = None, batch_size: int = 16) -> Evaluation:
    """Cross-entropy of `model` on the token stream `ids`, cut into consecutive windows of block_size tokens.

    Every token after the first is predicted exactly once, from the tokens before it in its window; with
    `max_tokens` only the first max_tokens ids are used. The model's train/eval mode is restored afterwards.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"evaluate needs a 1-D sequence of at least 2 token ids, got shape {tuple(ids.shape)}")
    T = model.config.block_size
    device = next(model.parameters()).device
    n_windows = (len(ids) - 1) // T
    full_x = ids[: n_windows * T].view(n_windows, T)  # (W, T)
    full_y = ids[1: n_windows * T + 1].view(n_windows, T)  # (W, T)
    batches = [(full_x[i:i + batch_size], full_y[i:i + batch_size]) for i in range(0, n_windows, batch_size)]
    if (len(ids) - 1) % T:  # the shorter last window
        batches.append((ids[n_windows * T:-1][None], ids[n_windows * T + 1:][None]))
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for x, y in batches:
            logits = model(x.to(device))  # (b, t, V)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum").item()
    finally:
        model.train(was_training)
    return Evaluation(total, len(ids) - 1)


def held_out_text(corpus: str | os.PathLike | None = None) -> str:
    """The validation part of the corpus (`train_val_split` of `load_corpus(corpus)`), the same for every model."""
    return train_val_split(load_corpus(corpus))[1]


def chars_predicted(tokenizer: Tokenizer, ids: list[int]) -> int:
    """Characters spelled by ids[1:], the tokens a language model predicts (the first one has no context)."""
    return len(tokenizer.decode(ids)) - len(tokenizer.decode(ids[:1]))


def per_char_loss(model: LanguageModel, tokenizer: Tokenizer, text: str, *, max_tokens: int | None = None) -> float:
    """Mean negative log-likelihood in nats per character of `text` (comparable across tokenizers)."""
    ids = tokenizer.encode(text)[:max_tokens]
    result = evaluate(model, ids)
    return result.total_nll / chars_predicted(tokenizer, ids)


def held_out_perplexity(model: LanguageModel, tokenizer: Tokenizer, text: str | None = None, *,
                        max_tokens: int | None = None) -> float:
    """Per-character perplexity of `model` on `text` (default: the corpus's held-out part); lower is better.

    `max_tokens` evaluates only the first max_tokens tokens: faster, for comparing model variants on the same text.
    """
    text = held_out_text() if text is None else text
    return perplexity(per_char_loss(model, tokenizer, text, max_tokens=max_tokens))


@dataclass
class History:
    """What happened during training: the loss of every step, and the held-out loss at a few steps (nats/token)."""

    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


class TrainingDiverged(ArithmeticError):
    """The loss became NaN or infinite: training stopped at that step."""


def _check_finite(loss: float, what: str, step: int, lr: float) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged: the {what} became {loss} at step {step} (learning rate {lr:.3g}); "
                               "lower the learning rate (or lengthen the warm-up) and train again")


def train(model: LanguageModel, train_ids, val_ids, config: TrainConfig, *, step: Callable | None = None,
          progress: bool = True, desc: str = "training", on_eval: Callable[[int], None] | None = None) -> History:
    """Train `model` in place on random windows of train_ids for `config.steps` steps, with a progress bar.

    `step` is the training step (default: `training_step`; the notebook passes the learner's own). Every
    `config.eval_every` steps and at the end, the held-out loss on val_ids is recorded and `on_eval(steps done)` is
    called (`run` saves a checkpoint there). A NaN or infinite loss stops training at once with TrainingDiverged.
    """
    step = step or training_step
    device = next(model.parameters()).device
    train_ids = torch.as_tensor(train_ids, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)  # batches depend on the seed only
    optimizer = make_optimizer(model, config)
    history = History()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, mininterval=1.0)
    for i in bar:
        lr = lr_at(i, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_ids, config.batch_size, model.config.block_size, generator)  # (B, T) each
        history.train_loss.append(step(model, optimizer, x.to(device), y.to(device), clip=config.clip))
        history.lr.append(lr)
        _check_finite(history.train_loss[-1], "training loss", i + 1, lr)
        if (i + 1) % config.eval_every == 0 or i + 1 == config.steps:
            history.val_steps.append(i + 1)
            history.val_loss.append(evaluate(model, val_ids, max_tokens=config.eval_tokens).loss)
            _check_finite(history.val_loss[-1], "held-out loss", i + 1, lr)
            bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val=f"{history.val_loss[-1]:.3f}")
            if on_eval is not None:
                on_eval(i + 1)
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


# -- checkpoints -------------------------------------------------------------------------------------------------

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > 100:
        raise ValueError(f"checkpoint name must be a file name stem of letters, digits, '.', '_' and '-' that does "
                         f"not start with '.' (e.g. 'tiny_gpt'), got {name!r}")
    return name


def checkpoint_paths(folder: str | os.PathLike, name: str, meta: dict | None = None) -> dict[str, Path]:
    """Where checkpoint `name` lives in `folder`: NAME.json, and the weights and tokenizer files it names (read from
    NAME.json, or from `meta`, its contents, when the caller has read it already)."""
    folder, record = Path(folder), Path(folder) / f"{_check_name(name)}.json"
    files = {"weights": f"{name}.safetensors", "tokenizer": f"{name}.tokenizer.json"}
    if meta is None and record.is_file():
        meta = _read_meta(record)
    files.update({kind: entry for kind, entry in (meta or {}).get("files", {}).items() if kind in files})
    return {kind: folder / files[kind] for kind in ("weights", "tokenizer")} | {"meta": record}


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create the checkpoint folder {str(folder)!r}: {err.strerror}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {str(folder)!r}: choose a folder of your own with --out")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _architecture(model: LanguageModel) -> str:
    """The record's name for the model's architecture: "gpt" or "llama"."""
    for arch, (cls, _) in ARCHITECTURES.items():
        if type(model) is cls:
            return arch
    raise TypeError(f"a checkpoint holds a GPT or a Llama, got {type(model).__name__}")


def _tied(model: LanguageModel) -> set[str]:
    """Entries of the state dict that are another entry's tensor (a tied head): stored once, under the first name."""
    seen, tied = set(), set()
    for key, value in model.state_dict(keep_vars=True).items():
        if id(value) in seen:
            tied.add(key)
        seen.add(id(value))
    return tied


def save_checkpoint(folder: str | os.PathLike, model: LanguageModel, tokenizer: Tokenizer, *, name: str = "tiny_gpt",
                    training: dict | None = None) -> dict[str, Path]:
    """Write checkpoint `name` into `folder` as one unit: the previous checkpoint or this one, never a mix.

    The weights and the tokenizer go to files named by their content's hash (NAME.<hash>.safetensors,
    NAME.<hash>.tokenizer.json); NAME.json, which names them with their SHA-256, replaces the old one in a single
    rename. Until that rename the old NAME.json still names the old files, which are removed only afterwards.
    """
    from safetensors.torch import save_file

    _check_name(name)
    arch = _architecture(model)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding table has "
                         f"{model.config.vocab_size} rows: save the tokenizer the model was built for")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        old = {path.name for path in checkpoint_paths(folder, name).values()}
    except ValueError:  # a damaged NAME.json: this save replaces it
        old = {f"{name}.safetensors", f"{name}.tokenizer.json"}
    config = json.dumps(asdict(model.config), sort_keys=True)
    tied = _tied(model)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in tied}
    files = {
        # One metadata entry: safetensors writes several in no fixed order, and the file's hash names it.
        "weights": write_then_name(folder, lambda tmp: save_file(weights, tmp, metadata={FORMAT: config}),
                                   lambda tmp: f"{name}.{_sha256(tmp)[:12]}.safetensors", hint=name),
        "tokenizer": write_then_name(folder, tokenizer.save, lambda tmp: f"{name}.{_sha256(tmp)[:12]}.tokenizer.json",
                                     hint=name),
    }
    meta = {"format": FORMAT, "version": FORMAT_VERSION, arch: asdict(model.config),
            "files": {kind: path.name for kind, path in files.items()},
            "sha256": {kind: _sha256(path) for kind, path in files.items()}, "training": training or {}}
    text = json.dumps(meta, indent=1) + "\n"
    paths = files | {"meta": folder / f"{name}.json"}
    atomic_write(paths["meta"], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    for stale in old - {path.name for path in paths.values()}:
        (folder / stale).unlink(missing_ok=True)
    return paths


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint record ({err}): the checkpoint is damaged; "
                         "re-create it with `llmcourse train`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an llmcourse checkpoint record")
    return meta


def _damaged(path: Path, why: str) -> ValueError:
    return ValueError(f"checkpoint file {str(path)!r} {why}: the checkpoint is damaged or was changed by hand; "
                      "re-create it with `llmcourse train`")


def load_checkpoint(folder: str | os.PathLike, *, name: str = "tiny_gpt",
                    device: torch.device | str | None = None) -> tuple[LanguageModel, Tokenizer, dict]:
    """(model in eval mode on `device` (default `get_device()`), tokenizer, NAME.json's contents). The model is a
    GPT or a Llama, as the record says.

    Each file is checked against the SHA-256 that NAME.json records, the weights against the model's shape, and the
    tokenizer against the embedding table: a damaged or mismatched checkpoint is refused with a one-line error.
    """
    from safetensors import SafetensorError, safe_open

    record = Path(folder) / f"{_check_name(name)}.json"
    if not record.is_file():
        raise FileNotFoundError(f"no checkpoint {name!r} in {str(folder)!r} ({record.name} is missing): "
                                "create one with `llmcourse train --out FOLDER`")
    meta = _read_meta(record)
    paths = checkpoint_paths(folder, name, meta)
    for kind, expected in meta.get("sha256", {}).items():
        if kind not in ("weights", "tokenizer"):
            continue
        if not paths[kind].is_file():
            raise _damaged(paths[kind], f"is missing (named by {paths['meta'].name})")
        if _sha256(paths[kind]) != expected:
            raise _damaged(paths[kind], "does not match the SHA-256 recorded in " + paths["meta"].name)
    archs = [arch for arch in ARCHITECTURES if arch in meta]
    if len(archs) != 1:
        raise _damaged(paths["meta"], f"must describe one model under one of {list(ARCHITECTURES)}, found {archs}")
    model_class, config_class = ARCHITECTURES[archs[0]]
    try:
        config = config_class(**meta[archs[0]])
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(paths["meta"], f"has no valid model shape ({err})") from None
    try:
        with safe_open(str(paths["weights"]), "pt") as weights_file:  # its metadata and tensors in one open
            stored = (weights_file.metadata() or {}).get(FORMAT)
            state = {key: weights_file.get_tensor(key) for key in weights_file.keys()}
    except (OSError, SafetensorError) as err:
        raise _damaged(paths["weights"], f"cannot be read ({err})") from None
    if stored is not None and json.loads(stored) != asdict(config):
        raise _damaged(paths["meta"], f"describes the model {asdict(config)}, but the weights were saved for {stored}")
    model = model_class(config)
    tied = _tied(model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise _damaged(paths["weights"], "does not fit the model's shape: " + str(err).splitlines()[-1].strip()) \
            from None
    if set(missing) != tied or unexpected:
        raise _damaged(paths["weights"], f"does not fit the model in {paths['meta'].name}: missing "
                       f"{[k for k in missing if k not in tied]}, unexpected {unexpected}")
    tokenizer = load_tokenizer(paths["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise _damaged(paths["tokenizer"], f"has {tokenizer.vocab_size} tokens but the model's embedding table "
                       f"has {config.vocab_size} rows")
    model.to(device or get_device()).eval()
    return model, tokenizer, meta


# -- the whole recipe: what `llmcourse train` runs ---------------------------------------------------------------

def make_tokenizer(kind: str, train_text: str, all_text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE trained on the training text, or a character tokenizer ("char")."""
    if kind == "bpe":
        return BPETokenizer.train(train_text, vocab_size=vocab_size)
    if kind == "char":
        # The character set of the whole corpus, so that a held-out character is never unknown; only the
        # alphabet is taken from the held-out text, not any statistics.
        return CharTokenizer.train(all_text)
    raise ValueError(f"tokenizer must be 'bpe' or 'char', got {kind!r}")


def bigram_per_char_loss(tokenizer: Tokenizer, train_text: str, val_text: str, smoothing: float = 0.1) -> float:
    """Nats per character of the held-out text under a count-based bigram model over `tokenizer`'s tokens."""
    from llmcourse.ngram import BigramModel

    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    bigram = BigramModel.fit(train_ids, tokenizer.vocab_size, smoothing)
    return (len(val_ids) - 1) * math.log(bigram.perplexity(val_ids)) / chars_predicted(tokenizer, val_ids)


def run(out: str | os.PathLike, *, name: str = "tiny_gpt", corpus: str | os.PathLike | None = None,
        tokenizer: str = "bpe", vocab_size: int = 512, arch: str = "gpt", shape: dict | None = None,
        config: TrainConfig = TrainConfig(), command: str | None = None, progress: bool = True) -> dict:
    """Train a tokenizer and a model on the corpus, evaluate on the held-out part, save the checkpoint; its record.

    `arch` is "gpt" or "llama"; `shape` holds the fields of its config (GPTConfig or LlamaConfig) other than
    vocab_size, which is the tokenizer's.
    """
    _check_name(name)
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {list(ARCHITECTURES)}, got {arch!r}")
    model_class, config_class = ARCHITECTURES[arch]
    _check_writable(Path(out))
    set_seed(config.seed)
    text = load_corpus(corpus)
    train_text, val_text = train_val_split(text)
    tok = make_tokenizer(tokenizer, train_text, text, vocab_size)
    train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
    model = model_class(config_class(vocab_size=tok.vocab_size, **(shape or {}))).to(get_device())
    saved: list[int] = []

    def keep(steps_done: int) -> None:  # a checkpoint at every evaluation: a diverging or killed run loses little
        save_checkpoint(out, model, tok, name=name, training={"command": command, "steps_done": steps_done,
                                                              "status": f"in progress ({config.steps} steps)"})
        saved.append(steps_done)

    try:
        history = train(model, train_ids, val_ids, config, progress=progress, on_eval=keep)
    except TrainingDiverged as err:
        kept = (f"the last good checkpoint (after step {saved[-1]}) is {checkpoint_paths(out, name)['meta']}"
                if saved else "this run wrote no checkpoint")
        raise TrainingDiverged(f"{err}; {kept}") from None
    final = evaluate(model, val_ids)
    record = {
        "command": command,
        "corpus": str(corpus) if corpus else "default (pydoc topics)",
        "tokenizer": tokenizer, "train_tokens": len(train_ids), "val_tokens": len(val_ids),
        "val_chars": chars_predicted(tok, val_ids), "parameters": model.num_parameters(),
        "config": asdict(config), "seconds": round(history.seconds, 1), "device": str(get_device()),
        "torch": torch.__version__, "python": platform.python_version(),
        "val_loss_per_token": final.loss,
        "val_perplexity_per_token": final.perplexity,
        "val_perplexity_per_char": perplexity(final.total_nll / chars_predicted(tok, val_ids)),
        "bigram_perplexity_per_char": perplexity(bigram_per_char_loss(tok, train_text, val_text)),
        "history": {"train_loss": [round(v, 4) for v in history.train_loss],
                    "lr": [float(f"{v:.4g}") for v in history.lr],
                    "val_steps": history.val_steps, "val_loss": [round(v, 4) for v in history.val_loss]},
    }
    save_checkpoint(out, model, tok, name=name, training=record)
    return record
