"""Surviving mutants of tests/mutation/run.py that no graded test can kill, each with the reason.

EQUIVALENT: the mutant behaves like the reference on every valid input (as the docstring defines it).
NOT_GRADEABLE: it breaks a clause of the docstring that the grader cannot observe (its sandbox shows a test only
the data a function returns or raises): the reason says what would be needed.

{exercise id: {mutant key (as tests/mutation/run.py prints it): reason}}
"""

_MSE = ("mean_squared_error: predictions, targets = (np.asarray(predictions, dtype=np.float64), "
        "np.asarray(targets, dtype=np.float64)) -> ")
_FLOAT64 = "the other operand is float64, so the difference is float64 anyway (inputs are arrays)"
_ARRAY = "the argument is documented as an array (and arrives as one): np.asarray changes nothing"
_SQUARE = "counts is square (checked first), so shape[0], shape[1] and shape[-1] are the same number"
_CHECK_IDS = "bigram_perplexity: ids = _check_ids(ids, counts.shape[0], 'bigram_perplexity') -> "
_X_Y = ("training_step: if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in (torch.int64, "
        "torch.int32): -> ")
_DEFAULT_AXIS = "the default axis is the last one, -1, the same axis"
_CE = "cross_entropy_backward: dlogits = np.array(softmax(logits, axis=-1), dtype=logits.dtype) -> "
_P_ONE = "top_p_filter: if p == 1.0: -> "
_UNPACK = "unpack_int4: nibbles = np.stack([packed & 15, packed >> 4], axis=-1).astype(np.int8) -> "
_BEAM = "beam_step: scores, flat = torch.sort(total, descending=True, stable=True) -> "
_STABLE = ("PyTorch's CPU sort keeps ties in order even when not asked to (test_beam_step_breaks_ties_by_beam_then_"
           "token would catch a sort that does not)")

EQUIVALENT: dict[str, dict[str, str]] = {
    "warmup_mean_squared_error": {
        "mean_squared_error: return float(np.mean((predictions - targets) ** 2)) -> "
        "return np.mean((predictions - targets) ** 2)":
            "np.mean gives an np.float64, a subclass of Python's float: the same value and type",
        _MSE + "predictions, targets = (predictions, np.asarray(targets, dtype=np.float64))": _FLOAT64,
        _MSE + "predictions, targets = (np.asarray(predictions, dtype=np.float64), targets)": _FLOAT64,
        _MSE + "predictions, targets = (np.asarray(predictions), np.asarray(targets, dtype=np.float64))": _FLOAT64,
        _MSE + "predictions, targets = (np.asarray(predictions, dtype=np.float64), np.asarray(targets))": _FLOAT64,
        _MSE: "float arrays differ only for float32 inputs, by float32 rounding of the mean; the docstring asks no "
              "precision beyond the input's",
    },
    "bpe_merge": {
        "merge_pair: if not isinstance(pair, tuple) or len(pair) != 2: -> if not isinstance(pair, tuple):":
            "a tuple of another length fails `a, b = pair` with a ValueError anyway",
    },
    "embedding": {
        "embedding_forward: weight = np.asarray(weight) -> weight = weight": _ARRAY,
        "embedding_forward: weight = np.asarray(weight) -> ": _ARRAY,
        "embedding_backward: grad_out = np.asarray(grad_out) -> grad_out = grad_out": _ARRAY,
        "embedding_backward: grad_out = np.asarray(grad_out) -> ": _ARRAY,
        "embedding_backward: if grad_out.ndim != ids.ndim + 1 or grad_out.shape[:-1] != ids.shape: -> "
        "if grad_out.shape[:-1] != ids.shape:":
            "a wrong number of dimensions already makes grad_out.shape[:-1] differ from ids.shape",
    },
    "bigram_perplexity": {
        "bigram_perplexity: counts = np.asarray(counts, dtype=np.float64) -> counts = counts":
            "counts is an array; integer counts become float64 in `counts.sum(...) + smoothing * V` anyway",
        "bigram_perplexity: counts = np.asarray(counts, dtype=np.float64) -> counts = np.asarray(counts)":
            "integer counts become float64 in `counts.sum(...) + smoothing * V` and `counts[...] + smoothing`",
        "bigram_perplexity: counts = np.asarray(counts, dtype=np.float64) -> ":
            "counts is an array; integer counts become float64 once the (float) smoothing is added",
        "bigram_perplexity: ids = np.asarray(ids).reshape(-1) -> ids = np.asarray(ids)":
            "ids is documented as a sequence or a 1-D array: reshape(-1) changes nothing",
        "bigram_perplexity: return float(np.exp(-np.mean(np.log(probs)))) -> "
        "return np.exp(-np.mean(np.log(probs)))":
            "np.exp gives an np.float64, a subclass of Python's float: the same value and type",
        _CHECK_IDS + "ids = _check_ids(ids, counts.shape[1], 'bigram_perplexity')": _SQUARE,
        _CHECK_IDS + "ids = _check_ids(ids, counts.shape[-1], 'bigram_perplexity')": _SQUARE,
        "bigram_perplexity: row_totals = counts.sum(axis=1) + smoothing * counts.shape[0] -> "
        "row_totals = counts.sum(axis=1) + smoothing * counts.shape[1]": _SQUARE,
        "bigram_perplexity: row_totals = counts.sum(axis=1) + smoothing * counts.shape[0] -> "
        "row_totals = counts.sum(axis=1) + smoothing * counts.shape[-1]": _SQUARE,
    },
    "causal_attention": {
        "causal_attention: scores = np.where(nothing, 0.0, scores) -> scores = np.where(nothing, 1.0, scores)":
            "any finite constant keeps an empty row's softmax finite, and its weights are then set to 0",
        "causal_attention: weights = np.where(nothing, 0.0, softmax(scores, axis=-1)) -> "
        "weights = np.where(nothing, 0.0, softmax(scores))": _DEFAULT_AXIS,
        "causal_attention: scores = np.where(nothing, 0.0, scores) -> ":
            "an empty row's softmax is NaN (with a RuntimeWarning), but np.where replaces those weights by 0: the "
            "output is the same, never NaN",
    },
    "cross_entropy_backward": {
        _CE + "dlogits = softmax(logits, axis=-1)":
            "softmax returns a new array of the logits' dtype: changing it in place harms nothing",
        _CE + "dlogits = np.array(softmax(logits, axis=-1))": "softmax already returns the logits' dtype",
        _CE + "dlogits = np.array(softmax(logits), dtype=logits.dtype)": _DEFAULT_AXIS,
        _CE + "dlogits = np.array(softmax(logits, axis=1), dtype=logits.dtype)": "logits are 2-D: axis 1 is the last",
    },
    "load_weights": {
        "load_weights: return {'n_head': int(n_head), 'wte': get('wte.weight'), 'wpe': get('wpe.weight'), "
        "'blocks': blocks, 'ln_f.gamma': get('ln_f.weight'), 'ln_f.beta': get('ln_f.bias')} -> "
        "return {'n_head': n_head, 'wte': get('wte.weight'), 'wpe': get('wpe.weight'), 'blocks': blocks, "
        "'ln_f.gamma': get('ln_f.weight'), 'ln_f.beta': get('ln_f.bias')}":
            "n_head is documented as the model's config.n_head, an int: int() changes nothing",
        "load_weights: return np.ascontiguousarray(array.T) if transpose else array -> "
        "return array.T if transpose else array":
            "the same values; the docstring asks for no memory layout",
    },
    "training_step": {
        "training_step: optimizer.zero_grad(set_to_none=True) -> optimizer.zero_grad()":
            "set_to_none=True is PyTorch's default",
        "training_step: optimizer.zero_grad(set_to_none=True) -> optimizer.zero_grad(set_to_none=False)":
            "zero gradients instead of None: the next backward adds to zeros, the same step",
        _X_Y + "if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype not in (torch.int64, torch.int64):":
            "the docstring's Args ask for int64 x and y; int32 is not documented input (and F.cross_entropy "
            "rejects int32 targets in the reference too)",
    },
    "perplexity": {
        "perplexity: value = float(mean_cross_entropy) -> value = mean_cross_entropy":
            "math.isnan, < 0 and math.exp treat every real number (int, NumPy scalar) as its float",
    },
    "top_k": {
        "top_k_filter: kth = torch.topk(logits, k, dim=-1).values[..., -1:] -> "
        "kth = torch.topk(logits, k).values[..., -1:]": "torch.topk's default dim is the last one, -1",
    },
    "top_p": {
        "top_p_filter: sorted_logits, _ = torch.sort(logits, dim=-1, descending=True) -> "
        "sorted_logits, _ = torch.sort(logits, descending=True)": "torch.sort's default dim is the last one, -1",
        "top_p_filter: probs = torch.softmax(sorted_logits.double(), dim=-1) -> "
        "probs = torch.softmax(sorted_logits, dim=-1)":
            "differs only where the mass lands within float32 rounding of p; the docstring fixes no precision",
    },
    "beam_step": {
        _BEAM + "scores, flat = torch.sort(total, descending=True)": _STABLE,
        _BEAM + "scores, flat = torch.sort(total, descending=True, stable=False)": _STABLE,
    },
    "cached_attention": {
        "cached_attention: return softmax(scores, axis=-1) @ v -> return softmax(scores) @ v": _DEFAULT_AXIS,
    },
    "positions": {
        "row_positions: counted = np.cumsum(mask, axis=1, dtype=np.int64) - 1 -> "
        "counted = np.cumsum(mask, axis=1) - 1":
            "the cumulative sum of booleans is NumPy's default integer, int64 (on Windows too since NumPy 2)",
    },
    "quantize_per_channel": {
        "quantize_per_channel: scale = np.where(scale > 0, scale, 1).astype(w.dtype) -> "
        "scale = np.where(scale > 0, scale, 1)":
            "np.where of a float array and the Python int 1 keeps the array's dtype (NumPy 2 promotion)",
        "dequantize_per_channel: return q.astype(scale.dtype) * scale[:, None] -> return q * scale[:, None]":
            "integer codes times a float array give that float dtype",
    },
    "int4_pack": {
        "pack_int4: nibbles = (q.astype(np.int16) & 15).astype(np.uint8) -> nibbles = (q & 15).astype(np.uint8)":
            "int8 & 15 is already 0..15",
        "pack_int4: return nibbles[..., 0::2] | nibbles[..., 1::2] << 4 -> "
        "return nibbles[..., ::2] | nibbles[..., 1::2] << 4": "0::2 and ::2 are the same slice",
        _UNPACK + "nibbles = np.stack([packed & 15, packed >> 4], axis=-1)":
            "uint8 nibbles minus 16 wrap around, and the astype(np.int8) that follows maps them to v - 16 anyway",
        _UNPACK + "nibbles = np.stack([packed & 15, packed >> 4], axis=-1).astype(np.int16)":
            "the astype(np.int8) that follows gives the same int8 values",
        "unpack_int4: nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles).astype(np.int8) -> "
        "nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)":
            "int8 nibbles minus the Python int 16 stay int8 (NumPy 2 promotion)",
    },
    "quantized_matmul": {
        "quantized_matmul: y = x @ q.T.astype(x.dtype) * scale.astype(x.dtype) -> "
        "y = x @ q.T * scale.astype(x.dtype)": "float x times integer codes already gives x's dtype",
    },
}

_INF = "bigram_perplexity: if np.any(probs == 0): -> "
_WARNING = ("log(0) = -inf gives the same inf perplexity, only with a RuntimeWarning, which the docstring rules "
            "out; the sandbox does not show a test the warnings of the learner's code (it would need a worker "
            "option to turn warnings into errors)")

NOT_GRADEABLE: dict[str, dict[str, str]] = {
    "bigram_perplexity": {
        _INF + "if np.any(probs == -1):": _WARNING,
        "bigram_perplexity: if np.any(probs == 0): / return float('inf') -> ": _WARNING,
    },
    "block_forward": {
        "block_forward: x = x + attention(h, block['attn.w_qkv'], block['attn.b_qkv'], block['attn.w_proj'], "
        "block['attn.b_proj'], n_head) -> x = x + multihead_attention(h, block['attn.w_qkv'], block['attn.b_qkv'], "
        "block['attn.w_proj'], block['attn.b_proj'], n_head)":
            "the grader answers both the attention passed in and the module's multihead_attention with the "
            "reference, and a test can pass only such functions: telling them apart needs a second attention "
            "the sandbox can carry",
    },
    "top_p": {
        "top_p_filter: return logits.clone() -> return logits":
            "'a new tensor': the sandbox returns a copy of whatever the function returns, so returning the input "
            "itself cannot be seen (the input is not modified either way)",
    },
}
