"""How often the policy solves each problem: the tool that chose the quickstart's annotation problems.

    python scripts/solve_rates.py --answer-in-question --max-question-chars 200 --samples 1 --temperature 0
    python scripts/solve_rates.py --ids b76b0eef993517e0,62a72e84f58e33c6 --samples 32 --temperature 0.5
    python scripts/solve_rates.py dataset=gsm8k-train order=shortest_solution --limit 200

The problems, prompt, policy and `max_solution_tokens` are the quickstart's annotation settings
(its annotate stage, `configs/quickstart/07_annotate.yaml`; change them with `hiprm annotate`'s
key=value overrides, or give another annotate YAML first). For each candidate problem it samples `--samples` whole solutions
to `# END!`, grades each as annotation grades a leaf (`hiprm.annotate.grow.grade_leaf`, in the
annotation's `grading` mode), and prints, per problem,
the correct / wrong / answerless counts, then the ids solved at least once.

Candidates: every problem of the dataset in the configured order (the stage's `problem_ids`
are ignored here), narrowed by `--ids`, `--max-question-chars`, `--answer-in-question` (the
reference answer is a number written in the question: the only answers the 135M model is ever
right about) and `--limit`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
QUICKSTART_ANNOTATE = Path(__file__).resolve().parents[1] / "configs" / "quickstart" / "07_annotate.yaml"


def answer_in_question(question: str, answer: str) -> bool:
    """Whether the reference answer is one of the numbers written in the question."""
    plain = answer.strip().strip("$").replace(",", "")
    return plain in _NUMBER.findall(question.replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="annotate settings: [ANNOTATE.yaml] key=value ...")
    ap.add_argument("--ids", default="", help="comma-separated problem ids (default: all)")
    ap.add_argument("--max-question-chars", type=int, default=0, help="only questions this short (0: any)")
    ap.add_argument("--answer-in-question", action="store_true", help="only answers written in the question")
    ap.add_argument("--limit", type=int, default=0, help="the first N candidates (0: all)")
    ap.add_argument("--samples", type=int, default=8, help="solutions per problem")
    ap.add_argument(
        "--temperature", type=float, default=None, help="default: the annotate config's temperature"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="also write every sample, graded, to this JSONL file")
    args = ap.parse_args(argv)

    from hiprm.annotate.grow import grade_leaf
    from hiprm.annotate.run import AnnotateConfig, load_problems
    from hiprm.artifacts import write_jsonl
    from hiprm.config import ConfigError, load_config
    from hiprm.policy.build import build_policy, build_style
    from hiprm.policy.protocol import SamplingParams

    path = args.overrides[0] if args.overrides and "=" not in args.overrides[0] else QUICKSTART_ANNOTATE
    ac = load_config(AnnotateConfig, path, [o for o in args.overrides if "=" in o])
    ac.limit, ac.problem_ids = 0, args.ids.split(",") if args.ids else []
    try:
        problems, source = load_problems(ac)
    except ConfigError as e:
        raise SystemExit(f"solve_rates: {e}") from None
    if args.max_question_chars:
        problems = [p for p in problems if len(p.question) <= args.max_question_chars]
    if args.answer_in_question:
        problems = [p for p in problems if answer_in_question(p.question, p.answer)]
    if args.limit:
        problems = problems[: args.limit]
    if not problems:
        raise SystemExit("solve_rates: no candidate problems")

    policy, style = build_policy(ac.policy), build_style(ac.prompt)
    temperature = ac.temperature if args.temperature is None else args.temperature
    params = SamplingParams(
        n=args.samples, temperature=temperature, top_p=ac.top_p, max_tokens=ac.max_solution_tokens,
        stop=[style.end_stop], seed=args.seed, include_stop=True,
    )  # fmt: skip
    print(
        f"{len(problems)} problems of {source}, {args.samples} samples each at temperature {temperature}",
        flush=True,
    )
    started = time.perf_counter()
    prompts = [style.prompt_for(p.question, "", policy.render_chat) for p in problems]
    total: Counter[str] = Counter()
    solved, rows = [], []
    # One generate call per batch of problems, so progress shows and the samples share the batch.
    step = max(ac.policy.batch_size // max(args.samples, 1), 1)
    for i in range(0, len(problems), step):
        chunk = problems[i : i + step]
        for p, texts in zip(chunk, policy.generate(prompts[i : i + step], params), strict=True):
            counts: Counter[str] = Counter()
            for text in texts:
                verdict, answer = grade_leaf(text, p.answer, ac.grade_timeout, ac.grading)
                counts[verdict] += 1
                rows.append({"problem_id": p.problem_id, "outcome": verdict, "answer": answer, "text": text})
            total.update(counts)
            if counts["correct"]:
                solved.append(p.problem_id)
            print(f"{p.problem_id}  correct {counts['correct']:>3}  wrong {counts['wrong']:>3}  no_answer "
                  f"{counts['no_answer']:>3}  {p.question[:60]!r} -> {p.answer!r}", flush=True)  # fmt: skip
    if args.out:
        write_jsonl(args.out, rows)
    n = sum(total.values())
    print(f"total: correct {total['correct']} of {n} ({100 * total['correct'] / n:.1f}%), wrong {total['wrong']}, "
          f"no_answer {total['no_answer']}; {time.perf_counter() - started:.0f} s")  # fmt: skip
    print(f"solved at least once ({len(solved)} of {len(problems)}): {','.join(solved)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
