"""Where a GPT's parameters and memory go: counts by layer and component, as a table and as pictures.

Counts are measured from the module itself (`named_parameters`, which counts the tied output head once). A config
is built on PyTorch's "meta" device, which allocates nothing, so even GPT-2 XL's 1.5 billion parameters are counted
in a fraction of a second without a byte of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmcourse.gpt import GPT, GPTConfig, gpt_skeleton

COMPONENTS = ("embedding", "attention", "mlp", "layernorm")
COLORS = {"embedding": "tab:blue", "attention": "tab:orange", "mlp": "tab:green", "layernorm": "tab:gray"}

GPT2_SIZES: dict[str, GPTConfig] = {  # the four published GPT-2 shapes
    "GPT-2 small": GPTConfig(n_layer=12, n_head=12, n_embd=768),
    "GPT-2 medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),
    "GPT-2 large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),
    "GPT-2 XL": GPTConfig(n_layer=48, n_head=25, n_embd=1600),
}


@dataclass(frozen=True)
class LayerCount:
    layer: str  # "wte (= lm_head)", "wpe", "block 0", ..., "ln_f"
    counts: dict[str, int]  # component -> number of parameters

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _model(model_or_config: GPT | GPTConfig) -> GPT:
    if isinstance(model_or_config, GPT):
        return model_or_config
    if isinstance(model_or_config, GPTConfig):
        return gpt_skeleton(model_or_config)  # shapes only: no memory, no random init
    raise TypeError(f"expected a GPT or a GPTConfig, got {type(model_or_config).__name__}")


def _component(name: str) -> str:
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    if name.startswith("transformer.w"):  # wte, wpe
        return "embedding"
    return "layernorm"


def count_by_layer(model_or_config: GPT | GPTConfig) -> list[LayerCount]:
    """Parameters of each layer, split by component, in the model's order (shared tensors counted once)."""
    model = _model(model_or_config)
    layers: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():  # the tied lm_head.weight is wte's and is not listed again
        part = name.split(".")
        layer = f"block {part[2]}" if part[1] == "h" else {"wte": "wte (= lm_head)"}.get(part[1], part[1])
        counts = layers.setdefault(layer, dict.fromkeys(COMPONENTS, 0))
        counts[_component(name)] += param.numel()
    return [LayerCount(layer, counts) for layer, counts in layers.items()]


def count_by_component(model_or_config: GPT | GPTConfig) -> dict[str, int]:
    """Total parameters of each component (embedding, attention, mlp, layernorm) over the whole model."""
    totals = dict.fromkeys(COMPONENTS, 0)
    for row in count_by_layer(model_or_config):
        for component, n in row.counts.items():
            totals[component] += n
    return totals


def formula_parameters(config: GPTConfig) -> int:
    """The count by hand: each block holds 12 C^2 + 13 C parameters (qkv 3C^2 + 3C, attention projection
    C^2 + C, MLP 8C^2 + 5C, two LayerNorms 4C); embeddings (V + block_size) C; final LayerNorm 2C; tied head 0.
    Without biases (`config.bias` False) a block keeps 12 C^2 + 2 C (the LayerNorms' scales) and the final
    LayerNorm C."""
    C = config.n_embd
    vectors = (13, 2) if config.bias else (2, 1)  # per block, final LayerNorm: parameters per channel
    return config.n_layer * (12 * C * C + vectors[0] * C) + (config.vocab_size + config.block_size) * C + vectors[1] * C


def _megabytes(parameters: int, bytes_per_parameter: float) -> float:
    return parameters * bytes_per_parameter / 2**20


def parameter_table(model_or_config: GPT | GPTConfig, *, blocks_shown: int | None = None) -> str:
    """A text table: parameters, share and memory of each layer, and the total.

    Memory columns: float32 weights (4 bytes each), bfloat16 weights (2 bytes), and training with AdamW in float32
    (16 bytes: weight, gradient and Adam's two moments). With `blocks_shown`, only the first blocks are listed and
    the others are summed into one row (the blocks are identical in size).
    """
    rows = count_by_layer(model_or_config)
    total = sum(r.total for r in rows)
    blocks = [r for r in rows if r.layer.startswith("block ")]
    if blocks_shown is not None and len(blocks) > blocks_shown:
        rest = blocks[blocks_shown:]
        merged = LayerCount(f"blocks {rest[0].layer[6:]}-{rest[-1].layer[6:]}",
                            {c: sum(r.counts[c] for r in rest) for c in COMPONENTS})
        rows = [r for r in rows if r not in rest]
        rows.insert(rows.index(blocks[blocks_shown - 1]) + 1 if blocks_shown else 2, merged)
    header = f"{'layer':<18}{'parameters':>14}{'share':>8}{'fp32 MB':>10}{'bf16 MB':>10}{'AdamW MB':>10}"
    lines = [header, "-" * len(header)]
    for r in rows + [LayerCount("total", {"embedding": total})]:
        lines.append(f"{r.layer:<18}{r.total:>14,}{100 * r.total / total:>7.1f}%{_megabytes(r.total, 4):>10.1f}"
                     f"{_megabytes(r.total, 2):>10.1f}{_megabytes(r.total, 16):>10.1f}")
    lines.insert(-1, "-" * len(header))
    return "\n".join(lines)


def plot_by_layer(model_or_config: GPT | GPTConfig, ax=None, *, title: str | None = None):
    """Horizontal stacked bars: the parameters of each layer, coloured by component. Returns the axes."""
    import matplotlib.pyplot as plt

    rows = count_by_layer(model_or_config)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2))
    y = range(len(rows))
    left = [0] * len(rows)
    for component in COMPONENTS:
        widths = [r.counts[component] / 1e6 for r in rows]
        if any(widths):
            ax.barh(y, widths, left=left, color=COLORS[component], label=component)
            left = [a + b for a, b in zip(left, widths)]
    ax.set_xlim(0, 1.05 * max(left))  # explicit: zero-width bars would pin the right edge to the longest bar
    ax.set_yticks(list(y), [r.layer for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("parameters (millions)")
    ax.set_title(title or "parameters by layer")
    ax.legend(loc="lower right", fontsize="small")
    ax.figure.tight_layout()
    return ax


def plot_component_shares(configs: dict[str, GPTConfig], ax=None):
    """Stacked bars, one per model: the share of embedding, attention, MLP and LayerNorm parameters. Returns ax."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    shares, totals = {}, []
    for name, config in configs.items():
        counts = count_by_component(config)
        totals.append(sum(counts.values()))
        shares[name] = {c: n / totals[-1] for c, n in counts.items()}
    bottom = [0.0] * len(configs)
    for component in COMPONENTS:
        heights = [100 * shares[name][component] for name in configs]
        ax.bar(list(configs), heights, bottom=bottom, color=COLORS[component], label=component)
        bottom = [a + b for a, b in zip(bottom, heights)]
    for i, total in enumerate(totals):
        ax.text(i, 101, f"{total / 1e6:,.0f}M" if total >= 1e6 else f"{total / 1e3:,.0f}k", ha="center",
                va="bottom", fontsize="small")
    ax.set_ylim(0, 112)
    ax.set_ylabel("share of parameters (%)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return ax
