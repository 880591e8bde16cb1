"""How often each hiprm grading setting agrees with the official PRM800K grader and with labels.

    .venv/bin/python benchmarks/grading_agreement.py            # ProcessBench + PRM800K human ratings
    GIT_LFS_SKIP_SMUDGE=1 git clone --depth 1 https://github.com/openai/prm800k /tmp/prm800k
    .venv/bin/pip install pylatexenc                            # the official grader needs it; hiprm does not
    .venv/bin/python benchmarks/grading_agreement.py --official /tmp/prm800k/prm800k/grading

Settings: `lenient` = `grade(text, ref)` (the default), `lenient+fallback` = `fallback=True`
(also reads unmarked free-form answers), `strict` = `mode="strict"` (the prediction must be
written in the reference's form; see `hiprm.grading.strict`), `strict+fallback` = both.

1. PRM800K phase 1 (train reconstruction + test): the distinct (answer, reference) pairs of every
   completion that states a `# Answer`. With `--official`, the verdicts of the official grader
   (`grader.grade_answer`, loaded from that folder; it runs sympy's `parse_expr`, which evaluates
   its input, so it is only ever run here, on the dataset's own answers) against lenient and strict,
   and the pairs where strict and the official grader differ. Without it, and in any case: the
   agreement with the only verdicts the data stores, the labelers' ratings of those completions
   (per completion, +1 = correct, -1 = wrong; 0 and unrated left out). A -1 can also be for the
   reasoning of a step whose answer is right, so no grader reaches 100% there.
2. ProcessBench gsm8k + math: the entries whose problem has a reference answer in GSM8K test /
   MATH500 (matched on the problem text), graded by each setting against `final_answer_correct`.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import types
from collections import Counter
from pathlib import Path

from hiprm.data.prm800k import read_prm800k
from hiprm.data.problems import read_gsm8k, read_math500
from hiprm.data.processbench import read_processbench
from hiprm.grading import extract_answer, grade, is_equivalent

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHASE1 = ("prm800k/phase1_train.reconstructed.jsonl", "prm800k/phase1_test.jsonl")
SETTINGS = {  # name -> keyword arguments of `grade`
    "lenient": {},
    "lenient+fallback": {"fallback": True},
    "strict": {"mode": "strict"},
    "strict+fallback": {"mode": "strict", "fallback": True},
}
OFFICIAL_SECONDS = 10  # sympy.simplify can hang; an overrun counts as the official grader's False


def load_official(folder: Path):
    """The official `grade_answer`; grader.py imports `grading.math_normalize`, so `folder` is
    registered as the package `grading`."""
    if not (folder / "grader.py").is_file() or not (folder / "math_normalize.py").is_file():
        sys.exit(f"{folder}: expected grader.py and math_normalize.py (openai/prm800k prm800k/grading)")
    package = types.ModuleType("grading")
    package.__path__ = [str(folder)]
    sys.modules["grading"] = package
    spec = importlib.util.spec_from_file_location("grading.grader", folder / "grader.py")
    grader = importlib.util.module_from_spec(spec)
    sys.modules["grading.grader"] = grader
    try:
        spec.loader.exec_module(grader)
    except ModuleNotFoundError as error:  # pylatexenc, which hiprm itself does not need
        sys.exit(f"{folder / 'grader.py'}: {error}; install it with `.venv/bin/pip install {error.name}`")
    return grader.grade_answer


def official_verdict(grade_answer, answer: str, reference: str) -> tuple[bool, bool]:
    """(verdict, timed out) of the official grader under an alarm."""

    def overrun(*_):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, overrun)
    signal.alarm(OFFICIAL_SECONDS)
    try:
        return bool(grade_answer(answer, reference)), False
    except TimeoutError:
        return False, True
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def phase1_answers() -> tuple[list[tuple[str, str]], Counter]:
    """Distinct (answer, reference) pairs in first-seen order, and (pair, rating) counts."""
    pairs: dict[tuple[str, str], None] = {}
    ratings: Counter = Counter()
    for name in PHASE1:
        for solution in read_prm800k(DATA / name):
            for step in solution.steps:
                for completion in step.completions:
                    if "# Answer" not in completion.text:
                        continue
                    answer = extract_answer(completion.text)
                    if answer is None:
                        continue
                    pair = (answer, solution.reference_answer)
                    pairs.setdefault(pair)
                    ratings[pair, completion.rating] += 1
    return list(pairs), ratings


def percent(agree: int, total: int) -> str:
    return f"{agree}/{total} ({100 * agree / total:.1f}%)" if total else "-"


def prm800k_report(grade_answer) -> None:
    pairs, ratings = phase1_answers()
    modes = ("lenient", "strict")
    verdicts = {m: {p: is_equivalent(*p, mode=m) for p in pairs} for m in modes}
    print(f"PRM800K phase 1: {len(pairs)} distinct (answer, reference) pairs")
    if grade_answer is not None:
        official, overruns = {}, 0
        for pair in pairs:
            official[pair], timed_out = official_verdict(grade_answer, *pair)
            overruns += timed_out
        print(f"  official grader: {sum(official.values())} correct, {overruns} over {OFFICIAL_SECONDS}s")
        for mode in modes:
            agree = sum(verdicts[mode][p] == official[p] for p in pairs)
            only = Counter(verdicts[mode][p] for p in pairs if verdicts[mode][p] != official[p])
            print(f"  {mode:<8} vs official: {percent(agree, len(pairs))}; "
                  f"hiprm-only correct {only[True]}, official-only correct {only[False]}")  # fmt: skip
        print("  strict != official (hiprm strict verdict, human ratings +1/0/-1, answer | reference):")
        for pair in pairs:
            if verdicts["strict"][pair] != official[pair]:
                seen = "/".join(str(ratings[pair, r]) for r in (1, 0, -1))
                print(f"    {verdicts['strict'][pair]!s:<5} {seen:<7} {pair[0]!r} | {pair[1]!r}")
    rated = [(p, r, n) for (p, r), n in ratings.items() if r in (1, -1)]
    total = sum(n for _, _, n in rated)
    for mode in modes:
        agree = sum(n for p, r, n in rated if verdicts[mode][p] == (r == 1))
        print(f"  {mode:<8} vs labelers' +1/-1 ratings of answer steps: {percent(agree, total)}")
    if grade_answer is not None:
        agree = sum(n for p, r, n in rated if official[p] == (r == 1))
        print(f"  official vs labelers' +1/-1 ratings of answer steps: {percent(agree, total)}")


def _squash(text: str) -> str:
    return " ".join(text.split())


def processbench_report() -> None:
    references = {
        "gsm8k": {_squash(p.question): p.answer for p in read_gsm8k(DATA / "gsm8k" / "test.jsonl")},
        "math": {_squash(p.question): p.answer for p in read_math500(DATA / "math500" / "test.jsonl")},
    }
    agree: Counter = Counter()
    matched: Counter = Counter()
    for split, refs in references.items():
        for entry in read_processbench(DATA / "processbench" / f"{split}.json"):
            ref = refs.get(_squash(entry.question))
            if ref is None:
                continue
            matched[split] += 1
            text = "\n\n".join(entry.steps)
            for name, kwargs in SETTINGS.items():
                agree[split, name] += grade(text, ref, **kwargs) == entry.final_answer_correct
    total = sum(matched.values())
    print(
        f"ProcessBench vs final_answer_correct ({matched['gsm8k']} gsm8k + {matched['math']} math entries):"
    )
    for name in SETTINGS:
        per_split = ", ".join(f"{s} {percent(agree[s, name], matched[s])}" for s in references)
        print(f"  {name:<16} {percent(sum(agree[s, name] for s in references), total)}  ({per_split})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--official", type=Path, help="folder with the official grader.py and math_normalize.py"
    )
    args = parser.parse_args()
    grade_answer = load_official(args.official) if args.official else None
    prm800k_report(grade_answer)
    processbench_report()


if __name__ == "__main__":
    main()
