"""Tests for hiprm.grading: extraction forms, normalisation families, adversarial input, and
agreement with ProcessBench's final-answer labels on real data from ../shared/data."""

from __future__ import annotations

import doctest
import json
import threading
import time
from pathlib import Path

import pytest

from hiprm.grading import equivalence, extract, extract_answer, grade, is_equivalent, normalize, strict
from hiprm.grading.normalize import as_number, canonical, clean, split_container
from hiprm.grading.symbolic import _worker, too_costly

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("module", [extract, normalize, equivalence, strict])
def test_docstring_examples(module) -> None:
    assert doctest.testmod(module).failed == 0


# --- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PRM800K final step, and the HRM policy prompt's format with "# END!".
        ("So the total is 12.\n\n# Answer\n\n12", "12"),
        ("Adding up, 2+4 = 6.\n\n# Answer  \n\n6\n# END!", "6"),
        ("# Answer\n\n\\frac{3}{4}\n\n  ", "\\frac{3}{4}"),
        ("# Answer\n\n$\\boxed{6}$", "6"),
        # Boxed: nested braces, the last complete box, \fbox, the unbraced "\boxed 5" form.
        ("First \\boxed{1}, finally $\\boxed{\\frac{\\sqrt{2}}{2}}$.", "\\frac{\\sqrt{2}}{2}"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\fbox{7}", "7"),
        ("so $\\boxed 5$", "5"),
        ("\\boxed{4} then a cut-off \\boxed{5", "4"),
        ("The answer is \\(\\boxed{3, -5}\\).", "3, -5"),
        # GSM8K reference solutions.
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("#### 1,000", "1,000"),
        # "The answer is" phrases, with $...$, period and trailing chatter stripped.
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Final Answer: The final answer is 2.25. I hope it is correct.", "2.25"),
        ("Therefore the final answer is: 42", "42"),
        # The marker written last wins.
        ("\\boxed{3} was wrong.\n\n# Answer\n\n4", "4"),
    ],
)
def test_extract_answer_forms(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", "no answer here, just 3 and 4", "\\boxed{}", "# Answer\n\n", None]
)
def test_extract_answer_none(text: str | None) -> None:
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Therefore, Verna received $7.00 in change.", "7.00"),
        ("Thus, \\( b = 3 \\).", "3"),
        ("Therefore, $\\cos \\angle RPS = -\\frac{24}{25}$.", "-\\frac{24}{25}"),
        ("The least possible sum is **14**.", "14"),
        ("Step one.\n\nSo Josh made a profit of $195,000.", "195,000"),
    ],
)
def test_extract_answer_fallback_reads_unmarked_final_sentence(text: str, expected: str) -> None:
    assert extract_answer(text) is None
    assert extract_answer(text, fallback=True) == expected


# --- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("$5$", "5"),
        ("\\$1,000.50", "1000.50"),
        ("10,\\!080", "10080"),
        ("12 dollars", "12"),
        ("5 \\text{ cm}^2", "5"),
        ("3\\text{ square feet}", "3"),
        ("12 tomatoes", "12"),
        ("45^\\circ", "45"),
        ("45^{\\circ}", "45"),
        ("25\\%", "25"),
        ("x = \\dfrac{3}{4}", "\\frac{3}{4}"),
        ("\\tfrac{1}{2}", "\\frac{1}{2}"),
        ("\\left( 1, 2 \\right)", "( 1, 2 )"),
        ("\\text{Monday}", "Monday"),
        ("\\boxed{7}", "7"),
        ("\\15", "15"),
    ],
)
def test_clean(raw: str, cleaned: str) -> None:
    assert clean(raw) == cleaned


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("\\frac12", "\\frac{1}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("3/4", "\\frac{3}{4}"),
        (".5", "0.5"),
        ("18.90", "18.9"),
        ("5.0", "5"),
        ("(B)", "b"),
        ("{{5}}", "5"),
        ("2 \\pi r", "2\\pir"),
    ],
)
def test_canonical(raw: str, key: str) -> None:
    assert canonical(raw) == key


def test_as_number_is_exact_and_bounded() -> None:
    assert as_number("\\frac{3}{4}") == as_number("0.75")
    assert as_number("-\\frac{1}{2}") == as_number("-0.5")
    assert as_number("\\frac{1}{0}") is None
    assert as_number("x") is None
    assert as_number("1" * 5000) is None  # beyond int parsing limits: left to the symbolic path


def test_split_container_kinds() -> None:
    assert split_container("[1, 2)").brackets == "[)"
    assert split_container("(1,2),3") is not None and split_container("(1,2),3").items == ("(1,2)", "3")
    assert split_container("\\{1, 2\\}").kind == "set"
    assert split_container("(-\\infty, 1) \\cup (2, \\infty)").kind == "union"
    matrix = split_container("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}")
    assert matrix.kind == "matrix" and matrix.shape == (2, 2) and matrix.items == ("1", "2", "3", "4")
    assert split_container("\\pm 8").items == ("8", "-8")
    assert split_container("5") is None and split_container("(5)") is None


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "1/2"),
        ("\\tfrac{3}{4}", "0.75"),
        ("\\sqrt2/2", "\\frac{\\sqrt{2}}{2}"),
        ("2\\sqrt{3}", "\\sqrt{12}"),
        ("5 \\text{ cm}", "5"),
        ("12 dollars", "\\$12.00"),
        ("25\\%", "25"),
        ("1,000", "1000"),
        ("33,800,000", "33,\\!800,\\!000"),
        ("90^\\circ", "90"),
        ("\\left(3, -5\\right)", "(3,-5)"),
        ("[-2, 7)", "\\left[ -2, 7 \\right)"),
        ("(-\\infty, 1) \\cup (2, \\infty)", "(-\\infty,1)\\cup(2,\\infty)"),
        ("3, -5", "-5, 3"),
        ("\\{1, 2, 3\\}", "3, 2, 1"),
        ("\\pm 8, \\pm 1", "8,1,-1,-8"),
        ("2 \\pm \\sqrt{3}", "2-\\sqrt{3}, 2+\\sqrt{3}"),
        ("\\begin{pmatrix} 1/2 \\\\ 2 \\end{pmatrix}", "\\begin{bmatrix}0.5\\\\2\\end{bmatrix}"),
        ("\\pi/2", "\\frac{\\pi}{2}"),
        ("x = 5", "5"),
        ("k=\\frac{1}{2}", "0.5"),
        (".5", "0.5"),
        ("\\text{(D) a non-horizontal line}", "\\text{(D)}"),
        ("(B)", "B"),
        ("\\text{east}", "East"),
        ("-\\frac{1+5i}{13}", "-\\frac{1}{13} - \\frac{5}{13}i"),
        ("4+\\sqrt{-1}, 4-\\sqrt{-5}", "4 - i \\sqrt{5}, 4 + i"),
        ("x^2+2x+1", "(x+1)^2"),
        ("\\frac{1}{\\sin x \\cos x} - \\tan x", "\\cot x"),
    ],
)
def test_equivalent(pred: str, ref: str) -> None:
    assert is_equivalent(pred, ref)


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        ("1/2", "2"),
        ("0.5", "5"),
        ("(1,2)", "(2,1)"),
        ("[1,2)", "[1,2]"),
        ("(1,2)", "[1,2]"),
        ("1, 2", "[1, 2]"),
        ("3, -5", "3"),
        ("\\pm 8", "8"),
        ("0.333", "\\frac{1}{3}"),
        ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("LXQS", "LQSX"),
        ("west", "\\text{east}"),
        ("(E)", "D"),
        ("x+1", "x+2"),
        ("\\sqrt{2}", "1.414"),
        ("10", "100"),
    ],
)
def test_not_equivalent(pred: str, ref: str) -> None:
    assert not is_equivalent(pred, ref)
    assert not is_equivalent(pred, ref, mode="strict")  # strict only ever takes verdicts away


# --- strict mode: the official PRM800K grader's form rules --------------------------------------
# Pairs from PRM800K phase 1 (answer, reference) unless marked. The official grader's verdict on
# each was read with `benchmarks/grading_agreement.py --official` (openai/prm800k's grader.py).


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        # "Express your answer as a common fraction": unreduced fractions (official: False).
        ("72/375", "\\frac{24}{125}"),
        ("\\frac{72}{375}", "\\frac{24}{125}"),
        ("\\frac{7}{1183}", "\\frac{1}{169}"),
        ("y = -\\frac{145}{20} - \\frac{5}{2} x", "y = -\\frac{5}{2} x - \\frac{29}{4}"),
        # Unevaluated expressions for a number (official: False).
        ("\\frac{7!}{16}", "315"),
        ("2^9 + 2", "514"),
        ("5+50\\times7\\times11\\times13", "50055"),
        ("\\dfrac{-33}{3}", "-11"),
        ("\\left(\\dfrac{1.5}{3},\\dfrac{24.6}{41}\\right)", "(0.5,0.6)"),  # "an ordered pair of decimals"
        # "Expressed as a fraction": official True, labelers -1 (3 of 3).
        ("\\frac{31.95}{2}", "\\frac{639}{40}"),
        # Unrationalised denominators (official: False; "Simplify and rationalize the denominator").
        ("\\frac{2}{\\sqrt{3}+1}", "\\sqrt{3}-1"),
        ("\\frac{4}{3\\sqrt{3}}", "\\frac{4 \\sqrt{3}}{9}"),
        ("\\sqrt{\\frac{3-\\sqrt{5}}{2}}", "\\frac{\\sqrt{5} - 1}{2}"),
        # "Enter ... Ax + By + Cz + D = 0 where A > 0": the sign is part of the answer (official: False).
        ("-5x+7y-11z-4=0", "5x - 7y + 11z + 4 = 0"),
        # "Express your answer as a single fraction" (official: False).
        ("-\\frac{7x}{6}+\\frac{4}{3}", "\\frac{8-7x}{6}"),
        # "Express your answer as an ordered pair" (official: False; labelers: -1 on all 6).
        ("5,7", "(5,7)"),
    ],
)
def test_strict_rejects_what_lenient_accepts(pred: str, ref: str) -> None:
    assert is_equivalent(pred, ref)
    assert not is_equivalent(pred, ref, mode="strict")


@pytest.mark.parametrize(
    ("pred", "ref"),
    [
        # Unordered solution lists and ± forms of "enter all solutions": the official grader says
        # False only because it cannot compare lists; PRM800K's labelers rated 14 of 18 such +1.
        ("-8, -1, 1, 8", "8,1,-1,-8"),
        ("-1, 0, 3, 4", "0, 3, -1, 4"),
        ("1, i, -1, -i", "1,-1,i,-i"),
        ("\\pm 8, \\pm 1", "8,1,-1,-8"),
        ("1 + \\sqrt{19}, 1 - \\sqrt{19}", "1 \\pm \\sqrt{19}"),
        (
            "4+\\sqrt{-1}, 4-\\sqrt{-1}, 4+\\sqrt{-5}, 4-\\sqrt{-5}",
            "4 + i, 4 - i, 4 + i \\sqrt{5}, 4 - i \\sqrt{5}",
        ),
        # Same equation, terms reordered (official: False, it cannot parse "=").
        ("y^2-6y-4x+9=0", "y^2 - 4x - 6y + 9 = 0"),
        ("\\frac{-7x+8}{6}", "\\frac{8-7x}{6}"),  # official: False (its LaTeX-to-text drops the brackets)
        # Forms the official grader also accepts.
        ("0.192", "\\frac{24}{125}"),  # made up: a decimal for a fraction
        ("6\\frac{1}{4}", "\\frac{25}{4}"),  # a mixed number
        ("-\\frac{24}{125}", "\\frac{-24}{125}"),  # made up
        ("514.0", "514"),  # made up
        (
            "\\left( -\\frac{1}{2}, 3, -\\frac{5}{2} \\right)",
            "\\left(-\\frac{1}{2}, 3, -\\frac{5}{2}\\right)",
        ),
        ("x^2+2x+1", "(x+1)^2"),  # made up: no form rule applies, the values decide
    ],
)
def test_strict_accepts(pred: str, ref: str) -> None:
    assert is_equivalent(pred, ref)
    assert is_equivalent(pred, ref, mode="strict")


def test_strict_grade_and_bad_mode() -> None:
    assert grade("So it is 514.\n\n# Answer\n\n2^9+2", "514")
    assert not grade("So it is 514.\n\n# Answer\n\n2^9+2", "514", mode="strict")
    assert grade("So it is 514.\n\n# Answer\n\n514", "514", mode="strict")
    with pytest.raises(ValueError, match="grading mode"):
        is_equivalent("1", "1", mode="exact")  # type: ignore[arg-type]


def test_grade_is_extract_then_compare() -> None:
    assert grade("So it is 6.\n\n# Answer\n\n6\n# END!", "6")
    assert not grade("So it is 6.\n\n# Answer\n\n7\n# END!", "6")
    assert not grade("no final answer", "6")
    assert grade("Therefore, it costs $6.", "6", fallback=True)


def test_symbolic_step_can_be_turned_off() -> None:
    assert is_equivalent("x^2+2x+1", "(x+1)^2", timeout=3.0)
    assert not is_equivalent("x^2+2x+1", "(x+1)^2", timeout=0)
    assert is_equivalent("\\frac{1}{2}", "0.5", timeout=0)  # exact rationals need no sympy


def test_works_from_worker_threads() -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(
            target=lambda i=i: results.append(is_equivalent(f"\\sqrt{{{4 * i * i}}}", f"{2 * i}"))
        )
        for i in range(1, 5)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 4


# --- adversarial input: quick, never raises, never runs code ---------------------------------

_HUGE = "x" * 100_000
ADVERSARIAL = [
    ("10^{10^{10}}", "1"),
    ("9^{9^{9^9}}", "9^{9^{9^{9}}}"),
    ("(10^{10})!", "1"),
    ("100000!", "1"),
    ("2^{1000000000}", "1"),
    ("{" * 10_000 + "1" + "}" * 10_000, "1"),
    ("\\boxed{" * 3_000 + "1" + "}" * 3_000, "1"),
    ("\\frac{" * 2_000 + "1", "1"),
    ("{{{", "}}}"),
    ("\\frac{1}{", "\\frac{1}{2}"),
    (_HUGE, _HUGE + "y"),
    ("1" * 10_000, "1" * 9_999 + "2"),
    ("1 " * 9_000, "1"),
    ("(" + "1," * 5_000 + "1)", "(" + "1," * 5_000 + "2)"),
    (", ".join(["x"] * 60), ", ".join(["y"] * 60)),
    ("", ""),
    ("   ", "1"),
    (None, "1"),
    ("1", None),
]


@pytest.mark.parametrize(("pred", "ref"), ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_inputs_are_fast_and_safe(pred: str | None, ref: str | None) -> None:
    start = time.monotonic()
    assert is_equivalent(pred, ref) is False
    extract_answer(pred)
    extract_answer(pred, fallback=True)
    extract_answer(None if pred is None else f"\\boxed{{{pred}}}\n\n# Answer\n\n{pred}")
    assert time.monotonic() - start < 5.0


def test_answer_text_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    start = time.monotonic()
    assert not is_equivalent(payload, "0")
    assert not is_equivalent("0", payload)
    assert not grade(f"\\boxed{{{payload}}}", "0")
    assert not marker.exists()
    assert time.monotonic() - start < 5.0


def test_hard_time_limit_kills_a_runaway_check() -> None:
    # Bypass the cheap "too costly" screen so the child really starts a huge power.
    assert too_costly("9^{9^{9^{9}}}")
    start = time.monotonic()
    assert _worker().check("9^{9^{9^{9}}}", "1", timeout=1.0) is None
    assert time.monotonic() - start < 3.0
    assert is_equivalent("\\sqrt{8}", "2\\sqrt{2}")  # a fresh child takes over


# --- agreement with ProcessBench labels -----------------------------------------------------

# Entries whose ProcessBench `final_answer_correct` we judge wrong by reading the solution.
LABEL_NOISE = {
    "gsm8k-70": "boxed 59 equals the GSM8K answer 59 (right number, wrong reasoning); labelled incorrect",
    "gsm8k-319": "answer '4 blue and 6 red shoe boxes' gives no total; reference is 10; labelled correct",
    "math-392": "1/(sin x cos x) - tan x is identically cot x; labelled incorrect because it is unsimplified",
}
# Entries our grader gets wrong, kept so the figure stays honest.
GRADER_LIMITS = {
    "gsm8k-238": "no marker; the fallback reads '4' from 'in 4 weeks' after the real answer 34",
}
MIN_AGREEMENT = 0.97


def _squash(text: str) -> str:
    return " ".join(text.split())


def _references() -> dict[str, dict[str, str]]:
    gsm8k = {}
    for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        gsm8k[_squash(record["question"])] = record["answer"].split("####")[-1].strip()
    math = {}
    for line in (DATA / "math500" / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        math[_squash(record["problem"])] = record["answer"]
    return {"gsm8k": gsm8k, "math": math}


def test_processbench_final_answer_agreement() -> None:
    """Grade each ProcessBench solution against the GSM8K / MATH500 reference answer.

    The solutions are free-form chat outputs, a few without any answer marker, so the
    final-sentence fallback is on (without it, 391/406 agree: entries with no marker count as
    wrong). Agreement counts every matched entry, noise included; strict mode gives the same
    verdicts here."""
    references = _references()
    totals = {"matched": 0, "agree": 0}
    disagreements: set[str] = set()
    strict_differs: set[str] = set()
    for split in ("gsm8k", "math"):
        entries = json.loads((DATA / "processbench" / f"{split}.json").read_text())
        matched = agree = 0
        for entry in entries:
            ref = references[split].get(_squash(entry["problem"]))
            if ref is None:
                continue
            matched += 1
            verdict = grade("\n\n".join(entry["steps"]), ref, fallback=True)
            if grade("\n\n".join(entry["steps"]), ref, fallback=True, mode="strict") != verdict:
                strict_differs.add(entry["id"])
            if verdict == entry["final_answer_correct"]:
                agree += 1
            else:
                disagreements.add(entry["id"])
        print(
            f"ProcessBench {split}: {agree}/{matched} = {agree / matched:.3f} agreement ({len(entries)} entries)"
        )
        assert matched > 0 and agree / matched >= MIN_AGREEMENT
        totals["matched"] += matched
        totals["agree"] += agree
    overall = totals["agree"] / totals["matched"]
    print(f"ProcessBench overall: {totals['agree']}/{totals['matched']} = {overall:.3f}")
    assert overall >= MIN_AGREEMENT
    # Every disagreement is one we have read and explained; a new one means a regression.
    assert disagreements <= set(LABEL_NOISE) | set(GRADER_LIMITS), (
        disagreements - set(LABEL_NOISE) - set(GRADER_LIMITS)
    )
    assert not strict_differs, strict_differs


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_reference_solutions_grade_as_correct(mode: str) -> None:
    """The boxed answer of every MATH500 solution and the '####' of every GSM8K solution match
    their dataset answer field: one check across every answer format those sets use (and strict
    mode's form rules never reject a reference solution's own way of writing its answer)."""
    for line in (DATA / "math500" / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert grade(record["solution"], record["answer"], mode=mode), record["unique_id"]
    for line in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert grade(record["answer"], record["answer"].split("####")[-1], mode=mode), record["question"][:60]


# --- where verdicts become training labels, strict is the default ------------------------------


@pytest.mark.parametrize("grading", ["strict", "lenient"])
def test_mcts_leaves_are_graded_in_the_configured_mode(grading: str) -> None:
    from hiprm.annotate.grow import GrowSettings, grow_trees
    from hiprm.annotate.run import AnnotateConfig, grow_settings
    from hiprm.policy.prompts import STYLES
    from hiprm.policy.scripted import ScriptedPolicy
    from hiprm.records import Problem

    assert grow_settings(AnnotateConfig()).grading == "strict"
    texts = {"2^9+2": ["# Step 1\n2^9 = 512.\n\n# Answer\n\n2^9+2\n# END!"]}
    problem = Problem("p0", "What is 2^9+2?", "514", source="t:1")
    settings = GrowSettings(mode="bfs", children=1, max_depth=3, grading=grading)
    (tree,) = grow_trees([problem], ScriptedPolicy(texts), STYLES["step"], settings)
    outcomes = [n.outcome for n in tree.nodes if n.outcome]
    assert outcomes == ["wrong" if grading == "strict" else "correct"]


def test_orm_labels_are_graded_strictly_by_default() -> None:
    from hiprm.config import ConfigError, load_config
    from hiprm.data.build import BuildConfig, _grader

    assert BuildConfig().grading == "strict"
    assert load_config(BuildConfig, None, ["grading=lenient"]).grading == "lenient"
    with pytest.raises(ConfigError, match="grading"):
        load_config(BuildConfig, None, ["grading=exact"])
    text = "So x = 24/125.\n\n# Answer\n\n72/375"
    assert _grader("strict")(text, "\\frac{24}{125}") is False
    assert _grader("lenient")(text, "\\frac{24}{125}") is True
    assert _grader("strict")("no answer stated", "1") is None
