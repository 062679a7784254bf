"""Two levels of hints for every exercise function: the idea, in its docstring, and the detail (the formula, or
the NumPy or PyTorch call that does it), shown by `llmcourse hint ID`."""

from __future__ import annotations

from llmcourse.course import catalog

# "module.function" -> (the idea, the detail)
HINTS: dict[str, tuple[str, str]] = {
    'warmup.mean_squared_error': (
        'the mean, over every entry, of the squared difference.',
        'NumPy does the work element-wise; `np.mean` averages over every entry.',
    ),
    'tokens.count_pairs': (
        'look at each pair of neighbours once, and count.',
        '`zip(ids, ids[1:])` walks over the adjacent pairs.',
    ),
    'tokens.merge_pair': (
        'walk through the ids left to right; a match consumes two ids, anything else one.',
        'walk an index i; when ids[i], ids[i + 1] equals the pair append new_id and step by 2, else step by 1.',
    ),
    'tokens.bpe_encode': (
        "start from the text's bytes; repeatedly merge the pair that was learnt earliest, until none of the "
        'pairs present was learnt.',
        '`min(pairs, key=lambda p: merges.get(p, float("inf")))` picks the earliest-learned pair; reuse '
        '`merge_pair` from the previous exercise.',
    ),
    'tokens.bpe_decode': (
        'every id stands for a fixed string of bytes; join them, then decode the bytes as UTF-8 once.',
        'build a table id -> bytes once: the 256 single bytes, then each merge in order as table[a] + table[b].',
    ),
    'tokens.bpe_train': (
        'keep a count per pair and, per pair, the set of chunks holding it; a merge updates only those chunks.',
        'start from `words = [list(chunk.encode("utf-8")) ...]`, `stats = {pair: count}` and `where = {pair: set of '
        'word indices}`; each merge: `most_frequent_pair(stats)`, then for every index in `where.pop(pair)`, '
        'subtract the counts of `count_pairs(old)` (times the chunk\'s count), merge with `merge_pair`, add those '
        'of `count_pairs(new)` and record the new pairs in `where`.',
    ),
    'tokens.embedding_forward': (
        'a lookup: row `ids[...]` of the table, for every id.',
        "NumPy's integer-array indexing `weight[ids]` does exactly this lookup.",
    ),
    'tokens.embedding_backward': (
        "each use of an id sends its gradient back to that id's row, and uses of the same id add up.",
        '`weight_grad[ids] += g` loses repeated ids (NumPy writes each row once); `np.add.at` accumulates.',
    ),
    'tokens.bigram_perplexity': (
        'turn smoothed counts into probabilities of next given previous, then exp of the mean negative '
        "log-probability of the text's pairs.",
        'normalise the rows of counts + k into probabilities, pick probs[ids[:-1], ids[1:]], average the logs.',
    ),
    'attention.softmax': (
        'exp(x - c) / sum(exp(x - c)) is the same for every constant c: choose the c that keeps exp from '
        'overflowing.',
        '`x.max(axis=axis, keepdims=True)` keeps the reduced axis so the subtraction broadcasts.',
    ),
    'attention.causal_attention': (
        'scores from queries against keys, scaled; hide the future; softmax; weight the values.',
        '`causal_mask(T)` gives the (T, T) lower-triangular mask; use your `softmax`; `np.swapaxes(k, -1, -2)` '
        'transposes the last two axes of a batched array.',
    ),
    'attention.split_heads': (
        'the last axis holds n_head blocks side by side: give each block an axis of its own, then move the head'
        ' axis before time.',
        'a reshape to (B, T, n_head, D) then `transpose(0, 2, 1, 3)`.',
    ),
    'attention.merge_heads': (
        'undo split_heads, in the reverse order of its steps.',
        'transpose back first, then reshape (reshape alone would interleave the wrong numbers).',
    ),
    'attention.multihead_attention': (
        'one projection to queries, keys and values, attention per head, heads back together, one output '
        'projection.',
        '`np.split(qkv, 3, axis=-1)`, then your `split_heads`, `causal_attention` and `merge_heads`.',
    ),
    'backprop.linear_backward': (
        'each output depends on one row of x and one column of w: the chain rule gives a matrix product for '
        'each gradient, and the bias gradient sums over every position.',
        'y[n, j] = sum_i x[n, i] w[i, j] + b[j]; flatten the leading axes with reshape(-1, in) for dw.',
    ),
    'backprop.gelu_backward': (
        'GELU is x times a smooth step: differentiate the product, and the tanh inside it, by the chain rule.',
        "write u = sqrt(2/pi) (x + 0.044715 x^3) and t = tanh(u); then y = 0.5 x (1 + t), tanh' = 1 - t^2, and "
        'use the product rule. The constants are GELU_C and GELU_A.',
    ),
    'backprop.layernorm_backward': (
        'every output of a row depends on every input of that row through the mean and the variance: follow '
        'those two paths back as well as the direct one.',
        'with xhat = (x - mean) * rstd and rstd = 1 / sqrt(var + eps), every xhat in a row depends on every x '
        'in that row through mean and var; the result is dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with'
        ' g = dout * gamma and means over the last axis.',
    ),
    'backprop.cross_entropy_backward': (
        'differentiate log-sum-exp and the picked logit separately; the result is strikingly simple, and do not'
        ' forget the mean over rows.',
        'for one row, d(-log softmax(z)[y]) / dz = softmax(z) - onehot(y); then remember the mean over N rows. '
        'Use `softmax` (your exercise of notebook 02, imported at the top of this file).',
    ),
    'backprop.sgd_step': (
        'walk downhill: the gradient points to where the loss grows fastest.',
        'param - lr * grad, written as a new array: `param -= ...` would change the caller\'s array in place.',
    ),
    'backprop.momentum_step': (
        'the velocity is a decaying sum of the gradients so far; the parameter moves along the velocity, not the '
        'gradient.',
        'velocity <- momentum * velocity + grad (no (1 - momentum) factor, as in torch); param <- param - lr * '
        'velocity; return both, as new arrays.',
    ),
    'backprop.adam_step': (
        'keep running averages of the gradient and of its square, correct their start-up bias, and step by '
        'their ratio.',
        'm <- beta1 m + (1 - beta1) g; v <- beta2 v + (1 - beta2) g^2; m_hat = m / (1 - beta1^t), v_hat = v / '
        '(1 - beta2^t); param <- param - lr m_hat / (sqrt(v_hat) + eps).',
    ),
    'gpt_numpy.block_forward': (
        'two sub-layers, each reading a normalised copy of the stream and adding its result back to it.',
        '`layernorm_forward`, `linear_forward` and `gelu_forward` are imported from notebook 03; keep the two '
        'residual additions (x + ...), and give each LayerNorm its own gamma and beta.',
    ),
    'gpt_numpy.load_weights': (
        "the same numbers under other names; PyTorch's Linear stores its weight the other way round.",
        '`_to_numpy(tensor)` gives a NumPy copy; `.T` transposes. Count layers with range(n_layer), not by '
        'sorting key strings ("h.10" sorts before "h.2").',
    ),
    'training.training_step': (
        'forward, loss, backward, clip, step, clean up: in that order, and report the loss from before the '
        'step.',
        '`torch.nn.functional.cross_entropy` wants logits of shape (N, V) and targets (N,): flatten with '
        '`.view`; `torch.nn.utils.clip_grad_norm_` clips every gradient at once.',
    ),
    'training.perplexity': (
        'the exponential of the mean cross-entropy, with care for inputs that are not plain numbers and for '
        'overflow.',
        '`math.exp` raises OverflowError past about 709; `float(t)` turns a one-element tensor into a number.',
    ),
    'decoding.apply_temperature': (
        'dividing the logits spreads or squeezes the distribution without changing the order.',
        'one division; it changes no ranking, only how far apart the logits are.',
    ),
    'decoding.top_k_filter': (
        "find each row's k-th largest logit; everything below it becomes -inf.",
        '`torch.topk(logits, k, dim=-1).values[..., -1:]` is the k-th largest value of each row; keep what is '
        '>= it (`torch.where` or `masked_fill`).',
    ),
    'decoding.top_p_filter': (
        'sort by probability; keep tokens while the mass before them is still below p.',
        '`torch.sort(..., descending=True)`, `softmax`, `cumsum`; mass before token i = cumsum[i] - prob[i]. '
        'Find the logit of the last kept token in sorted order, then keep every entry >= it, as in '
        'top_k_filter.',
    ),
    'decoding.beam_step': (
        'every beam can be extended by every token: score all W x V extensions, keep the best W, and remember '
        'where each came from.',
        'add with broadcasting to get (W, V) scores, flatten, sort stably in descending order (`torch.sort(...,'
        ' descending=True, stable=True)`), keep the first beam_width; flat index i is beam i // V, token i % V.',
    ),
    'kv_cache.cache_append': (
        'the new keys and values go right after the ones already stored, in the same arrays.',
        'a slice on the second-to-last axis, `cache_k[..., length:length + T_new, :] = k_new`, writes in place.',
    ),
    'kv_cache.cached_attention': (
        'causal attention for a single query, over the positions the cache holds so far.',
        'slice `cache_k[..., :length, :]` first; use your `softmax`; scores have shape (..., 1, length).',
    ),
    'kv_cache.gpt_forward_cached': (
        'the GPT forward of notebook 04 in PyTorch, with one change in attention: keys and values are written into '
        'the cache first, and the new queries attend over everything the cache holds, under a mask of which '
        'position may see which.',
        '`F.layer_norm`, `F.linear` and `F.gelu(..., approximate="tanh")` are the layers; per layer, '
        '`cache_k[layer, :, :, length:length + T] = k`; the mask is `key <= query` with `query = torch.arange(length, '
        'length + T)[:, None]` and `key = torch.arange(length + T)[None, :]`, then `& attention_mask[:, None, :] | '
        '(key == query)`, given to `F.scaled_dot_product_attention(q, keys, values, attn_mask=...)` as (B, 1, T, S).',
    ),
    'batching.padding_mask': (
        'a row of length L in a batch of width S starts with S - L pad columns.',
        "compare `np.arange(width)` with each row's number of padding columns, broadcasting (1, S) with (B, 1).",
    ),
    'batching.row_positions': (
        "a token's position counts only the real tokens before it in its row, not the padding.",
        'a cumulative sum along the row counts the real tokens up to and including each column.',
    ),
    'batching.scheduler_step': (
        'finished requests free their rows; waiting requests take free rows, lowest row and earliest request '
        'first.',
        'copy `slots` first; then one loop frees rows, and one loop fills free rows from `waiting`.',
    ),
    'batching.generate_batch': (
        'pad and mask once, prefill once, then one column per step: choose the tokens, hold the finished rows at '
        'eos, and grow the mask and the positions by one.',
        '`left_pad` and `row_positions` give ids, mask and positions (convert them with `torch.from_numpy`); keep '
        '`length`, the positions the cache holds, and call `gpt_forward_cached(weights, n_head, step_ids, cache_k, '
        'cache_v, length, positions, mask)[:, -1]`; after the prefill, `step_ids = token[:, None]`, `mask = '
        'torch.cat([mask, ones(B, 1)], dim=1)` and `positions = real + step` with `real = mask.sum(dim=1, '
        'keepdim=True)` taken before the loop; eos: `token.masked_fill(finished, eos_id)`, then `finished |= token '
        '== eos_id`.',
    ),
    'quantization.quantize_per_channel': (
        'each output row gets the scale that maps its largest magnitude to the largest code.',
        "`np.abs(w).max(axis=1)` gives each row's largest magnitude; `scale[:, None]` broadcasts over the "
        'columns.',
    ),
    'quantization.dequantize_per_channel': (
        "multiply each row's codes by its scale.",
        "convert q to scale's dtype first, so that the product is not computed in int8.",
    ),
    'quantization.pack_int4': (
        'two 4-bit codes fit in one byte: the even one in the low half, the odd one in the high half.',
        '`q[..., 0::2]` and `q[..., 1::2]` are the even and odd codes; do the bit operations on uint8 arrays.',
    ),
    'quantization.unpack_int4': (
        'split each byte into its two halves, then give the halves their signs back.',
        '`packed & 0xF` and `packed >> 4` are the two nibbles; interleave them with np.stack(..., axis=-1).',
    ),
    'quantization.quantized_matmul': (
        'x @ (q * scale).T, without building the dequantized matrix: the scale can be applied after the '
        'product.',
        "convert q to x's dtype (`q.astype(x.dtype)`) before the matmul; scale broadcasts over the last axis.",
    ),
    'quantization.quantize_state_dict': (
        'walk over the state dict once; quantize the embeddings and the blocks\' Linear weights with the exercises '
        'of this notebook, keep the rest, and leave out the tied output head.',
        '`name.endswith(("attn.c_attn.weight", ...))` picks the Linear weights; `value.float().numpy()` gives the '
        'float32 matrix; int8 is `quantize_per_channel(w, 8)` with `scale[:, None]`, int4 is '
        '`quantize_groupwise(w, 4, N)` then `pack_int4(q)` and `scale.astype(np.float16)`; `torch.from_numpy` '
        'turns the results back into tensors.',
    ),
    # -- 11 from GPT-2 to Llama --
    'llama.rmsnorm_forward': (
        'one number per row, the root of the mean of its squares (plus eps); divide by it, scale by weight.',
        '`np.mean(x * x, axis=-1, keepdims=True)` keeps the reduced axis, so the division broadcasts over the row.',
    ),
    'llama.rmsnorm_backward': (
        "LayerNorm's backward with one path fewer: every output of a row depends on every input of that row "
        'through the root mean square only.',
        'with r = 1 / rms, xhat = x r and g = dout * weight: dx = r (g - xhat mean(g xhat)) along the row, and '
        'dweight sums dout * xhat over every leading axis.',
    ),
    'llama.swiglu': (
        'two projections of x side by side; one goes through SiLU and gates the other element by element; '
        'project back down.',
        'weights are (out, in), so a projection is `x @ w.T`; sigmoid(z) = 0.5 (1 + tanh(z / 2)) never '
        'overflows.',
    ),
    'llama.apply_rope': (
        "one angle per (token, pair) from the position and the pair's frequency; then each pair turns like a 2-D"
        ' vector.',
        'inv_freq = theta ** (-2 i / d) for i = 0 .. d/2 - 1; angles = positions[..., None] * inv_freq is '
        '(..., T, d/2); x[..., :d/2] and x[..., d/2:] are the two halves of the pairs.',
    ),
    'llama.scaled_dot_product_attention': (
        "chapter 02's attention without the built-in causal mask; take care of the rows where every key is masked.",
        '`np.where(mask, scores, -np.inf)` before your softmax; `mask.any(axis=-1, keepdims=True)` finds the '
        'rows with a key left, and those without one get weights 0.',
    ),
    'llama.gqa_attention': (
        'give every query head the key/value head of its group, then it is ordinary attention: use your '
        '`scaled_dot_product_attention`.',
        '`np.repeat(k, n_head // n_kv_head, axis=1)` puts key/value head h // g next to query head h (np.tile '
        'would interleave the groups the wrong way).',
    ),
    # -- 12 attention without the T x T matrix --
    'tiled.online_softmax': (
        'm only grows; when it grows, what you summed so far was measured against the old m and must be rescaled.',
        'per chunk: `new_m = max(m, chunk.max())`, `l = l * exp(m - new_m) + exp(chunk - new_m).sum()`, `m = new_m` '
        '(start from m = -inf, l = 0; skip empty or all -inf chunks); then `exp(chunk - m) / l` for each chunk.',
    ),
    'tiled.tiled_attention': (
        'the online softmax of `online_softmax`, for every query row at once, carrying a weighted sum of values too.',
        'keep m, l of shape (..., T, 1) and acc (..., T, D_v); per tile: scores, mask with `np.where(key_pos <= '
        'query_pos, scores, -np.inf)`, new_m, `p = exp(scores - new_m)`, then `l = l * exp(m - new_m) + p.sum(-1)`, '
        '`acc = acc * exp(m - new_m) + p @ v_tile`. Where new_m is still -inf, subtract 0 instead (no NaN).',
    ),
    # -- 13 serving many requests --
    'serving.verify_draft': (
        "compare the draft with the target's argmax position by position and stop at the first disagreement.",
        '`choices = logits.argmax(axis=-1)`; count accepted while `draft[i] == choices[i]`; the next token is '
        '`choices[accepted]` (row k when all k are accepted).',
    ),
    'serving.paged_append': (
        'first make the table long enough, then each new position has a block and an offset to write to.',
        'while `len(table) * block_size < length + T_new`: `table.append(free.pop())`; then position p goes to '
        '`pool[table[p // block_size], p % block_size]`.',
    ),
    'serving.paged_gather': (
        'the table lists the blocks in order: read them one after another and keep the first `length` rows.',
        '`positions = np.arange(length)`; blocks `np.array(table)[positions // block_size]`, offsets `positions % '
        'block_size`; index the pool with both at once.',
    ),
}


def hints(exercise_id: str) -> list[tuple[str, str, str]]:
    """(function, idea, detail) for each function of the exercise; KeyError naming the valid ids for a typo."""
    exercise = catalog.get(exercise_id)
    return [(function, *HINTS[f"{exercise.module}.{function}"]) for function in exercise.functions]
