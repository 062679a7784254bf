"""Surviving mutants of tests/mutation/run.py that no graded test can kill, each with the reason.

EQUIVALENT: the mutant behaves like the reference on every valid input.
NOT_GRADEABLE: it breaks a clause of the docstring that the grader cannot observe (its sandbox shows a test only
the data a function returns or raises): the reason says what would be needed.

{exercise id: {mutant key (as tests/mutation/run.py prints it): reason}}
"""

_MSE_CONVERT = ("mean_squared_error: predictions, targets = (np.asarray(predictions, dtype=np.float64), "
                "np.asarray(targets, dtype=np.float64)) -> ")

EQUIVALENT: dict[str, dict[str, str]] = {
    "warmup_mean_squared_error": {
        "mean_squared_error: return float(np.mean((predictions - targets) ** 2)) -> "
        "return np.mean((predictions - targets) ** 2)":
            "np.mean gives an np.float64, which is a subclass of Python's float: the same value and type",
        _MSE_CONVERT + "predictions, targets = (predictions, np.asarray(targets, dtype=np.float64))":
            "the other operand is float64, so the difference is float64 anyway (inputs are arrays)",
        _MSE_CONVERT + "predictions, targets = (np.asarray(predictions, dtype=np.float64), targets)":
            "the other operand is float64, so the difference is float64 anyway (inputs are arrays)",
        _MSE_CONVERT + "predictions, targets = (np.asarray(predictions), np.asarray(targets, dtype=np.float64))":
            "the other operand is float64, so the difference is float64 anyway",
        _MSE_CONVERT + "predictions, targets = (np.asarray(predictions, dtype=np.float64), np.asarray(targets))":
            "the other operand is float64, so the difference is float64 anyway",
        _MSE_CONVERT:
            "for float arrays only float32 inputs differ: a float32 mean, within float32 rounding of the float64 "
            "one; the docstring asks no precision beyond the input's",
    },
}

NOT_GRADEABLE: dict[str, dict[str, str]] = {
}
