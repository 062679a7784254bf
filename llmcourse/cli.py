"""The `llmcourse` command (also `python -m llmcourse`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from llmcourse.course.impl import SolutionsMissing
from llmcourse.files import COURSE_ROOT


def _write_json(path: str, data: dict) -> None:
    from llmcourse.files import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def cmd_check(args: argparse.Namespace) -> int:
    from llmcourse.course.check import run_check
    return run_check()


def cmd_release(args: argparse.Namespace) -> int:
    from llmcourse.course import release
    if args.student:
        return _student_release(Path(args.student), tuple(args.hold_out))
    exercises = COURSE_ROOT / "exercises"
    try:
        generated = release.generate()
    except (release.ReleaseError, SolutionsMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.check:
        problems = release.differences(generated, exercises)
        for problem in problems:
            print(problem)
        print("exercises/ is up to date with solutions/" if not problems else
              "exercises/ is out of date: run `llmcourse release`")
        return 1 if problems else 0
    changed, kept = release.write(generated, exercises, keep_work=not args.force)
    print(f"wrote {len(changed)} file(s) in exercises/: {', '.join(changed)}" if changed else
          "exercises/ was already up to date")
    for where in kept:
        print(f"kept your code: {where} (it is not the stub any more, so the release left it as it is)")
    return 0


def _student_release(out: Path, hold_out: tuple[str, ...]) -> int:
    from llmcourse.course import release
    try:
        files = release.student_release(out, hold_out)
    except (release.ReleaseError, SolutionsMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unused = [pattern for pattern in hold_out if not any(release.held_out(path, (pattern,))
                                                         for path in release.course_files())]
    print(f"wrote the student release to {out}: {len(files)} files, exercises/ as stubs, no solutions/")
    for pattern in unused:
        print(f"warning: --hold-out {pattern!r} matches no file of the course")
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from llmcourse.course.grading.runner import format_table, grade, gradescope_results
    report = grade(args.impl, submission=args.submission, only=args.only, timeout=args.timeout,
                   workers=args.workers, sandbox="bubblewrap" if args.require_sandbox else "auto")
    print(format_table(report))
    if args.json:
        _write_json(args.json, report.to_json())
    if args.gradescope:
        _write_json(args.gradescope, gradescope_results(report))
    return report.exit_code


def cmd_autograder(args: argparse.Namespace) -> int:
    from llmcourse.course.grading.autograder import build_bundle
    out = build_bundle(Path(args.out))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): setup.sh, run_autograder and the course's graded tests "
          "and solutions; keep it from students")
    print("1. Gradescope: create a Programming Assignment; under Configure Autograder pick the Ubuntu 22.04 base "
          "image and upload this zip")
    print("2. in the assignment's autograder settings give it at least 2 GB of memory (grading takes about 1.1 GB)")
    print("3. students submit the .py files of their exercises/ folder (or the folder itself), not notebooks")
    return 0


def cmd_hint(args: argparse.Namespace) -> int:
    from llmcourse.course.hints import hints
    try:
        found = hints(args.exercise)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    for function, idea, detail in found:
        print(f"{function}: {idea}")
        if args.more:
            print(f"  more: {detail}")
    if not args.more:
        print(f"Still stuck? `llmcourse hint {args.exercise} --more` gives the formula or the call that does it.")
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0 and at most 3600")
    return value


def _processes(text: str) -> int:
    if not (text.isdigit() and 1 <= int(text) <= 64):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 64")
    return int(text)


def cmd_train(args: argparse.Namespace) -> int:
    import shlex
    import torch
    from llmcourse.train import TrainConfig, run
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, min_lr=args.lr / 10,
                         warmup_steps=min(args.warmup, args.steps), eval_every=args.eval_every, seed=args.seed)
    shape = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size)
    llama_only = {"n_kv_head": args.n_kv_head, "hidden": args.hidden, "tie_head": args.tie_head or None}
    if args.arch == "llama":
        hidden = args.hidden or -(-8 * args.n_embd // 3 // 32) * 32  # 8/3 n_embd rounded up to a multiple of 32
        shape |= dict(n_kv_head=args.n_kv_head or args.n_head, hidden=hidden, tie_word_embeddings=args.tie_head)
    elif any(value is not None for value in llama_only.values()):
        given = [f"--{key.replace('_', '-')}" for key, value in llama_only.items() if value is not None]
        raise ValueError(f"{', '.join(given)} only apply to --arch llama")
    options = ("out", "name", "corpus", "tokenizer", "vocab_size", "arch", "n_layer", "n_head", "n_kv_head",
               "n_embd", "hidden", "block_size", "steps", "batch_size", "lr", "warmup", "eval_every", "seed",
               "threads")
    words = [item for key in options if getattr(args, key) is not None and (key != "arch" or args.arch != "gpt")
             for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]
    command = shlex.join(["llmcourse", "train"] + words + (["--tie-head"] if args.tie_head else []))
    record = run(args.out, name=args.name, corpus=args.corpus, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                 arch=args.arch, shape=shape, config=config, command=command)
    print(f"{record['parameters']:,} parameters trained in {record['seconds']:.0f} s; held-out perplexity per "
          f"character {record['val_perplexity_per_char']:.3f} (bigram baseline "
          f"{record['bigram_perplexity_per_char']:.3f}); saved {args.out}/{args.name}.*")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from llmcourse import bench
    if args.markdown:  # no measuring: the table of a saved run
        from llmcourse.files import read_json
        print(bench.markdown_table(read_json(args.markdown, "bench results")))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    results = bench.run(quick=args.quick, hf=args.compare_hf)
    print()
    print(bench.format_table(results))
    if args.json:
        _write_json(args.json, results)
    if args.plots:
        print("plots: " + ", ".join(str(p) for p in bench.save_plots(results, args.plots)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcourse", description="How LLMs work and how their inference is made "
                                     "fast: helpers for the course's notebooks, exercises and grading.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="print versions and the device; check that the exercises import",
                           description="Print the versions of Python and the course's packages, the device the "
                           "course will use, and whether exercises/ imports. Exit 1 when something is missing.")
    check.set_defaults(func=cmd_check)

    rel = sub.add_parser("release", help="regenerate exercises/ from solutions/",
                         description="Replace every '# BEGIN SOLUTION' ... '# END SOLUTION' region of solutions/ "
                         "with a NotImplementedError stub and write the result to exercises/, keeping every "
                         "function that holds your own code. With --student, write a whole course for a class.")
    rel.add_argument("--check", action="store_true", help="write nothing; exit 1 if exercises/ is out of date")
    rel.add_argument("--force", action="store_true", help="overwrite exercises/ even where it holds your own code "
                     "(by default a function that is not the stub any more is kept, and said so)")
    rel.add_argument("--student", metavar="OUT", help="instead, write the whole course for a class into the new or "
                     "empty folder OUT: every course file but solutions/, exercises/ as stubs, a student README")
    rel.add_argument("--hold-out", action="append", default=[], metavar="PATTERN",
                     help="with --student: leave out the files matching this glob, relative to the course root (e.g. "
                     "hidden tests: tests/graded/test_training.py); repeatable")
    rel.set_defaults(func=cmd_release)

    gr = sub.add_parser("grade", help="grade exercises/, solutions/ or a submission folder",
                        description="Run the course's graded tests against an implementation and print a table "
                        "of points per exercise. Exit 0 when everything passed, 1 when some exercise lost points, "
                        "2 when the grader itself could not run.")
    which = gr.add_mutually_exclusive_group()
    which.add_argument("--impl", default="exercises", choices=("exercises", "solutions"),
                       help="the course's own exercises/ (default) or solutions/")
    which.add_argument("--submission", metavar="DIR",
                       help="grade this folder (laid out like exercises/) instead; always a path")
    gr.add_argument("--only", nargs="+", metavar="EXERCISE_ID", help="grade only these exercises")
    gr.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    gr.add_argument("--gradescope", metavar="FILE", help="also write Gradescope's results.json")
    gr.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS", help="time limit per test (30)")
    gr.add_argument("--workers", type=_processes, default=2, help="test processes run at once (2)")
    gr.add_argument("--require-sandbox", action="store_true",
                    help="fail (exit 2) instead of grading unsandboxed where bubblewrap does not work: for a class")
    gr.set_defaults(func=cmd_grade)

    hi = sub.add_parser("hint", help="a hint for an exercise: the idea, or with --more the formula",
                        description="Print the hint of each function of an exercise: first the idea (also in its "
                        "docstring); with --more, the detail (the formula, or the NumPy or PyTorch call that does it).")
    hi.add_argument("exercise", metavar="EXERCISE_ID", help="e.g. softmax (`llmcourse grade` lists the ids)")
    hi.add_argument("--more", action="store_true", help="also print the second, more detailed hint")
    hi.set_defaults(func=cmd_hint)

    ag = sub.add_parser("autograder", help="build Gradescope's autograder zip (it holds the solutions)",
                        description="Write the zip to upload to a Gradescope programming assignment: setup.sh (builds "
                        "the grading image: Python, PyTorch for the CPU, the course with its sandbox) and "
                        "run_autograder (grades each submission with `llmcourse grade` and writes results.json), "
                        "with the course's package, graded tests and solutions. It is the instructor's file: the "
                        "solutions are inside.")
    ag.add_argument("--out", default="autograder.zip", metavar="FILE", help="the zip to write (autograder.zip)")
    ag.set_defaults(func=cmd_autograder)

    tr = sub.add_parser("train", help="train a tokenizer and a small GPT (or Llama) on the corpus; save a checkpoint",
                        description="Train a byte-level BPE (or character) tokenizer and a GPT or a Llama on the "
                        "corpus (default: Python's pydoc topics), report the held-out perplexity per character, and "
                        "save the checkpoint OUT/NAME.json (with the weights and tokenizer files it names) at every "
                        "evaluation, as one unit. A NaN or infinite loss stops the run and keeps the last good "
                        "checkpoint.")
    tr.add_argument("--out", required=True, metavar="DIR", help="folder for the checkpoint")
    tr.add_argument("--name", default="tiny_gpt", help="file name stem of the checkpoint (tiny_gpt)")
    tr.add_argument("--corpus", metavar="FILE", help="a UTF-8 text file instead of the default corpus")
    tr.add_argument("--tokenizer", choices=("bpe", "char"), default="bpe", help="bpe (default) or char")
    tr.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (512)")
    tr.add_argument("--arch", choices=("gpt", "llama"), default="gpt", help="gpt (GPT-2's architecture, default) "
                    "or llama (RMSNorm, SwiGLU, rotary positions, grouped-query attention)")
    tr.add_argument("--n-layer", type=int, default=4, help="transformer blocks (4)")
    tr.add_argument("--n-head", type=int, default=4, help="attention heads (4)")
    tr.add_argument("--n-kv-head", type=int, help="llama: key/value heads, dividing n_head (default: n_head)")
    tr.add_argument("--n-embd", type=int, default=128, help="embedding width (128)")
    tr.add_argument("--hidden", type=int, help="llama: SwiGLU width (default: 8/3 n_embd rounded up to a multiple "
                    "of 32)")
    tr.add_argument("--tie-head", action="store_true", help="llama: the output head is the embedding table "
                    "(default: a head of its own; a GPT always ties them)")
    tr.add_argument("--block-size", type=int, default=128, help="context length in tokens (128)")
    tr.add_argument("--steps", type=int, default=600, help="optimisation steps (600)")
    tr.add_argument("--batch-size", type=int, default=16, help="windows per step (16)")
    tr.add_argument("--lr", type=float, default=3e-3, help="peak learning rate; cosine decay to lr/10 (3e-3)")
    tr.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (50)")
    tr.add_argument("--eval-every", type=int, default=100, help="held-out loss every this many steps (100)")
    tr.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the batches (0)")
    tr.add_argument("--threads", type=_processes, help="CPU threads for PyTorch (default: PyTorch's choice)")
    tr.set_defaults(func=cmd_train)

    be = sub.add_parser("bench", help="measure KV-cache, batching and quantization speed against this machine's limits",
                        description="Measure, on the GPT-2 124M shape with random weights: the KV-cache speedup vs "
                        "generated length, tokens/s vs batch size, continuous vs static batching, quantization, and "
                        "batch-1 decoding against the memory-bandwidth bound, with PyTorch's default kernels and "
                        "with weights prepacked for oneDNN. Prints a table. The full run takes about 10 minutes on "
                        "2 cores.")
    be.add_argument("--quick", action="store_true", help="fewer sizes and repeats (about a minute on 2 cores)")
    be.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    be.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")
    be.add_argument("--threads", type=_processes, help="CPU threads for PyTorch (default: PyTorch's choice)")
    be.add_argument("--markdown", metavar="FILE", help="print the Markdown table of a saved run (--json FILE) and "
                    "measure nothing")
    be.add_argument("--compare-hf", action="store_true", help="also time Hugging Face transformers' generate on the "
                    "same weights (needs `pip install transformers`)")
    be.set_defaults(func=cmd_bench)
    return parser


DEBUG_ENV = "LLMCOURSE_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one command. A mistake of the user's (a bad file, value or setting) prints one line and exits 2;
    `LLMCOURSE_DEBUG=1` shows the whole traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"llmcourse {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ArithmeticError) as err:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"llmcourse {args.command}: error: {err}", file=sys.stderr)
        return 2
