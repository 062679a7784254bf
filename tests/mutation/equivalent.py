"""Surviving mutants of tests/mutation/run.py that no graded test can kill, each with the reason.

EQUIVALENT: the mutant behaves like the reference on every valid input (as the docstring defines it).
NOT_GRADEABLE: it breaks a clause of the docstring that the grader cannot observe (its sandbox shows a test only
the data a function returns or raises): the reason says what would be needed.

{exercise id: {mutant key: reason}}. A key names the function, the kind of change and a digest of the changed lines
(no code: this file ships with a student release); `python tests/mutation/run.py --list --exercise ID` shows each
mutant's key and diff.
"""

EQUIVALENT: dict[str, dict[str, str]] = {
    'warmup_mean_squared_error': {
        'mean_squared_error: drop float(...) #cd6979c0':
            "np.mean gives an np.float64, a subclass of Python's float: the same value and type",
        'mean_squared_error: drop asarray(...) #c3ad9cec':
            'the other operand is float64, so the difference is float64 anyway (inputs are arrays)',
        'mean_squared_error: drop asarray(...) #ea5ec24c':
            'the other operand is float64, so the difference is float64 anyway (inputs are arrays)',
        'mean_squared_error: drop dtype= #857638f3':
            'the other operand is float64, so the difference is float64 anyway (inputs are arrays)',
        'mean_squared_error: drop dtype= #79c3ca7f':
            'the other operand is float64, so the difference is float64 anyway (inputs are arrays)',
        'mean_squared_error: drop the statement #ace45374':
            'float arrays differ only for float32 inputs, by float32 rounding of the mean; the docstring asks no '
            "precision beyond the input's",
    },
    'bpe_merge': {
        'merge_pair: drop operand 1 of Or #0a330df1':
            'a tuple of another length fails `a, b = pair` with a ValueError anyway',
    },
    'embedding': {
        'embedding_forward: drop asarray(...) #784cf366':
            'the argument is documented as an array (and arrives as one): np.asarray changes nothing',
        'embedding_forward: drop the statement #267fc220':
            'the argument is documented as an array (and arrives as one): np.asarray changes nothing',
        'embedding_backward: drop asarray(...) #79fef5f9':
            'the argument is documented as an array (and arrives as one): np.asarray changes nothing',
        'embedding_backward: drop the statement #07467fb8':
            'the argument is documented as an array (and arrives as one): np.asarray changes nothing',
        'embedding_backward: drop operand 0 of Or #dcf64eec':
            'a wrong number of dimensions already makes grad_out.shape[:-1] differ from ids.shape',
    },
    'bigram_perplexity': {
        'bigram_perplexity: drop asarray(...) #503a4905':
            'counts is an array; integer counts become float64 in `counts.sum(...) + smoothing * V` anyway',
        'bigram_perplexity: drop dtype= #6400e830':
            'integer counts become float64 in `counts.sum(...) + smoothing * V` and `counts[...] + smoothing`',
        'bigram_perplexity: drop the statement #4852da95':
            'counts is an array; integer counts become float64 once the (float) smoothing is added',
        'bigram_perplexity: drop .reshape(...) #3e156374':
            'ids is documented as a sequence or a 1-D array: reshape(-1) changes nothing',
        'bigram_perplexity: drop float(...) #1d93ad6d':
            "np.exp gives an np.float64, a subclass of Python's float: the same value and type",
        'bigram_perplexity: 0 -> 1 #d1cfc1c4':
            'counts is square (checked first), so shape[0], shape[1] and shape[-1] are the same number',
        'bigram_perplexity: 0 -> -1 #9ea115f2':
            'counts is square (checked first), so shape[0], shape[1] and shape[-1] are the same number',
        'bigram_perplexity: 0 -> 1 #cfe400ab':
            'counts is square (checked first), so shape[0], shape[1] and shape[-1] are the same number',
        'bigram_perplexity: 0 -> -1 #2d3e2be2':
            'counts is square (checked first), so shape[0], shape[1] and shape[-1] are the same number',
    },
    'causal_attention': {
        'causal_attention: 0.0 -> 1.0 #56946fae':
            "any finite constant keeps an empty row's softmax finite, and its weights are then set to 0",
        'causal_attention: drop axis= #2a630b27':
            'the default axis is the last one, -1, the same axis',
        'causal_attention: drop the statement #7b1c836a':
            "an empty row's softmax is NaN (with a RuntimeWarning), but np.where replaces those weights by 0: the"
            ' output is the same, never NaN',
    },
    'cross_entropy_backward': {
        'cross_entropy_backward: drop array(...) #b1577e16':
            "softmax returns a new array of the logits' dtype: changing it in place harms nothing",
        'cross_entropy_backward: drop dtype= #0a819651':
            "softmax already returns the logits' dtype",
        'cross_entropy_backward: drop axis= #69dd74ca':
            'the default axis is the last one, -1, the same axis',
        'cross_entropy_backward: drop unary USub #2261fcb7':
            'logits are 2-D: axis 1 is the last',
    },
    'load_weights': {
        'load_weights: drop int(...) #6b34abe6':
            "n_head is documented as the model's config.n_head, an int: int() changes nothing",
        'load_weights: drop ascontiguousarray(...) #c8329eba':
            'the same values; the docstring asks for no memory layout',
    },
    'training_step': {
        'training_step: drop set_to_none= #4987750d':
            "set_to_none=True is PyTorch's default",
        'training_step: True -> False #40795537':
            'zero gradients instead of None: the next backward adds to zeros, the same step',
        'training_step: .int32 -> .int64 #14a4879a':
            "the docstring's Args ask for int64 x and y; int32 is not documented input (and F.cross_entropy "
            'rejects int32 targets in the reference too)',
    },
    'perplexity': {
        'perplexity: drop float(...) #d33fdb4f':
            'math.isnan, < 0 and math.exp treat every real number (int, NumPy scalar) as its float',
    },
    'top_k': {
        'top_k_filter: drop dim= #46d479c4':
            "torch.topk's default dim is the last one, -1",
    },
    'top_p': {
        'top_p_filter: drop dim= #3a14640e':
            "torch.sort's default dim is the last one, -1",
        'top_p_filter: drop .double(...) #217f19a9':
            'differs only where the mass lands within float32 rounding of p; the docstring fixes no precision',
    },
    'beam_step': {
        'beam_step: drop stable= #067da690':
            "PyTorch's CPU sort keeps ties in order even when not asked to "
            '(test_beam_step_breaks_ties_by_beam_then_token would catch a sort that does not)',
        'beam_step: True -> False #53fb2892':
            "PyTorch's CPU sort keeps ties in order even when not asked to "
            '(test_beam_step_breaks_ties_by_beam_then_token would catch a sort that does not)',
    },
    'cached_attention': {
        'cached_attention: drop axis= #aca825fd':
            'the default axis is the last one, -1, the same axis',
    },
    'positions': {
        'row_positions: drop dtype= #f06e2242':
            "the cumulative sum of booleans is NumPy's default integer, int64 (on Windows too since NumPy 2)",
    },
    'quantize_per_channel': {
        'quantize_per_channel: drop .astype(...) #becc86c1':
            "np.where of a float array and the Python int 1 keeps the array's dtype (NumPy 2 promotion)",
        'dequantize_per_channel: drop .astype(...) #eeeda2a9':
            'integer codes times a float array give that float dtype',
    },
    'int4_pack': {
        'pack_int4: drop .astype(...) #ba17b5e5':
            'int8 & 15 is already 0..15',
        "pack_int4: drop the slice's lower bound #3cd84c23":
            '0::2 and ::2 are the same slice',
        'unpack_int4: drop .astype(...) #201065ea':
            'uint8 nibbles minus 16 wrap around, and the astype(np.int8) that follows maps them to v - 16 anyway',
        'unpack_int4: .int8 -> .int16 #8f77459b':
            'the astype(np.int8) that follows gives the same int8 values',
        'unpack_int4: drop .astype(...) #4a13d761':
            'int8 nibbles minus the Python int 16 stay int8 (NumPy 2 promotion)',
    },
    'quantize_state_dict': {
        'quantize_state_dict: drop the statement #fff04ba2':
            'quantize_groupwise, called next with the same group, raises the ValueError for a group that does not '
            'divide the columns',
        'quantize_state_dict: drop the statement #da397a5a':
            'quantize_groupwise, called next with the same group, raises the ValueError for a group that does not '
            'divide the columns',
        'quantize_state_dict: 2 -> 1 #f7c89623':
            'group < 1 or odd refuses the same group sizes as group < 2 or odd: 1 is odd',
        'quantize_state_dict: drop .detach(...) #654ed8ce':
            "a state_dict()'s tensors never require grad (keep_vars=False): detach changes nothing",
    },
    'online_softmax': {
        'online_softmax: drop .astype(...) #272cc6f0':
            'the provided check gives every chunk one float dtype, and exp of it with Python floats keeps that dtype',
        'online_softmax: 0.0 -> 1.0 #a1193986':
            'the starting sum is multiplied by exp(-inf - m) = 0 at the first chunk with a finite score',
        'online_softmax: drop float(...) #a83b40c9': 'a NumPy scalar in place of a Python float: the same value',
        'online_softmax: drop float(...) #4e7e8489': 'a NumPy scalar in place of a Python float: the same value',
        'online_softmax: 0 -> -1 #e0072300': 'the provided check gives every chunk the same dtype',
    },
    'tiled_attention': {
        'tiled_attention: drop .astype(...) #3b324710':
            'the running arrays are made in q\'s dtype, so acc / l already has it',
        'tiled_attention: drop dtype= #e9775f0f':
            "the final astype gives the output q's dtype; float32 rounding within the tolerance",
        'tiled_attention: drop dtype= #fe892c5c':
            "the final astype gives the output q's dtype; float32 rounding within the tolerance",
        'tiled_attention: drop dtype= #4c604a62':
            "the final astype gives the output q's dtype; float32 rounding within the tolerance",
        'tiled_attention: 0.0 -> 1.0 #5bc3bbb7':
            'the shift only applies to rows that see no key yet, whose exponentials are exp(-inf) = 0 either way',
        'tiled_attention: 1 -> 0 #114cfaf1': 'a running maximum of shape (1,) broadcasts to every query on first use',
        'tiled_attention: 1 -> 0 #e393a147': 'a running sum of shape (1,) broadcasts to every query on first use',
        'tiled_attention: 1 -> 0 #c34a32eb': 'an accumulator of shape (dv,) broadcasts to every query on first use',
    },
    'verify_draft': {
        'verify_draft: drop unary USub #bb429e20': 'the logits are 2-D (k + 1, V): axis 1 is the last axis',
    },
    'quantized_matmul': {
        'quantized_matmul: drop .astype(...) #5e172648':
            "float x times integer codes already gives x's dtype",
    },
}

NOT_GRADEABLE: dict[str, dict[str, str]] = {
    'bigram_perplexity': {
        'bigram_perplexity: 0 -> -1 #a0449ca0':
            'log(0) = -inf gives the same inf perplexity, only with a RuntimeWarning, which the docstring rules '
            "out; the sandbox does not show a test the warnings of the learner's code (it would need a worker "
            'option to turn warnings into errors)',
        'bigram_perplexity: drop the statement #1fe18e6a':
            'log(0) = -inf gives the same inf perplexity, only with a RuntimeWarning, which the docstring rules '
            "out; the sandbox does not show a test the warnings of the learner's code (it would need a worker "
            'option to turn warnings into errors)',
    },
    'block_forward': {
        'block_forward: call multihead_attention instead of the argument attention #993dfdc1':
            "the grader answers both the attention passed in and the module's multihead_attention with the "
            'reference, and a test can pass only such functions: telling them apart needs a second attention the '
            'sandbox can carry',
    },
    'top_p': {
        'top_p_filter: drop .clone(...) #e4cc1b07':
            "'a new tensor': the sandbox returns a copy of whatever the function returns, so returning the input "
            'itself cannot be seen (the input is not modified either way)',
    },
}
