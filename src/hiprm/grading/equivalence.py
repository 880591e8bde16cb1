"""Final-answer equivalence: (predicted answer, reference answer) in, bool out.

Order of checks, cheapest first: the PRM800K-style canonical strings are equal; both answers are
multi-part (tuple, interval, set, list, union, matrix) and agree part by part; both are plain
rationals and are exactly equal (so "0.5" == "\\frac{1}{2}" but "0.5" != "5"); otherwise
math-verify decides symbolically in a child process under a hard time limit (see `symbolic`).
`mode="strict"` also holds the prediction to the form the reference is written in (reduced
fractions, evaluated numbers, rationalised denominators, tuples in brackets, equations not
rescaled; see `strict`),
as the official PRM800K grader does; it is the mode for verdicts that become training labels.
`timeout` bounds the symbolic time of one call in total; if it runs out the answer counts as not
equal. `timeout=0` turns the symbolic step off. Never raises on odd input: None, empty or huge
strings give False.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from typing import Literal

from hiprm.grading.extract import extract_answer
from hiprm.grading.normalize import Container, as_number, canonical, clean, split_container
from hiprm.grading.strict import equation_difference, form_verdict
from hiprm.grading.symbolic import symbolic_equal

DEFAULT_TIMEOUT = 3.0
# lenient: same value. strict: same value, written in the reference's form (see `strict`).
GradingMode = Literal["lenient", "strict"]
GRADING_MODES: tuple[str, ...] = ("lenient", "strict")
MAX_ANSWER_CHARS = 20_000  # longer "answers" are compared as exact strings only
_MAX_PARTS = 64
_MIN_SYMBOLIC_SECONDS = 0.05
_CACHED_CHARS = 1_000  # only short answers are memoised, so the cache stays small
_WORD = re.compile(r"^[a-z]{2,}$")
_OPTION_PREFIX = re.compile(r"^\(([a-z])\)")
logger = logging.getLogger(__name__)


def is_equivalent(
    pred: str | None, ref: str | None, timeout: float = DEFAULT_TIMEOUT, *, mode: GradingMode = "lenient"
) -> bool:
    """True when the predicted final answer means the same as the reference.

    >>> is_equivalent("\\\\dfrac{1}{2}", "0.5"), is_equivalent("(1,2)", "(2,1)")
    (True, False)
    >>> is_equivalent("5\\\\text{ cm}", "5"), is_equivalent("[1,2)", "[1,2]")
    (True, False)
    >>> is_equivalent("72/375", "\\\\frac{24}{125}"), is_equivalent("72/375", "\\\\frac{24}{125}", mode="strict")
    (True, False)
    """
    if mode not in GRADING_MODES:
        raise ValueError(f"grading mode must be one of {GRADING_MODES}, got {mode!r}")
    if not isinstance(pred, str) or not isinstance(ref, str) or not pred.strip() or not ref.strip():
        return False
    if len(pred) > MAX_ANSWER_CHARS or len(ref) > MAX_ANSWER_CHARS:
        return pred.strip() == ref.strip()
    if len(pred) <= _CACHED_CHARS and len(ref) <= _CACHED_CHARS:
        return _cached_equivalent(pred, ref, float(timeout), mode == "strict")
    return _checked_equivalent(pred, ref, float(timeout), mode == "strict")


def grade(
    text: str | None,
    ref: str | None,
    *,
    fallback: bool = False,
    mode: GradingMode = "lenient",
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """Whether the final answer written in `text` matches `ref` (see `extract_answer` for
    `fallback`, `is_equivalent` for `mode`)."""
    return is_equivalent(extract_answer(text, fallback=fallback), ref, timeout=timeout, mode=mode)


@lru_cache(maxsize=65_536)
def _cached_equivalent(pred: str, ref: str, timeout: float, strict: bool) -> bool:
    return _checked_equivalent(pred, ref, timeout, strict)


def _checked_equivalent(pred: str, ref: str, timeout: float, strict: bool) -> bool:
    deadline = time.monotonic() + timeout
    try:
        return _equal(clean(pred), clean(ref), deadline, depth=0, strict=strict)
    except Exception:  # a labelling run wants a verdict for every row, not a crash on one odd answer
        logger.warning("grading failed; counted as not equivalent: %.80r vs %.80r", pred, ref, exc_info=True)
        return False


def _equal(pred: str, ref: str, deadline: float, depth: int, strict: bool) -> bool:
    """Equality of two `clean`ed answers, recursing into multi-part answers."""
    pred_key, ref_key = canonical(pred), canonical(ref)
    if not pred_key or not ref_key:
        return False
    if pred_key == ref_key:
        return True
    pred_parts = split_container(pred) if depth < 4 else None
    ref_parts = split_container(ref) if depth < 4 else None
    if pred_parts is not None and ref_parts is not None:
        return _containers_equal(pred_parts, ref_parts, deadline, depth, strict)
    if (pred_parts is None) != (ref_parts is None) and _structure_decides(pred_parts or ref_parts):
        return False
    if strict:
        verdict = form_verdict(pred_key, ref_key)
        if verdict is not None:
            return verdict
        pred_difference, ref_difference = equation_difference(pred), equation_difference(ref)
        if pred_difference and ref_difference:
            # math-verify calls "-5x+7y-11z-4=0" and "5x-7y+11z+4=0" equal; a problem that
            # asks for A > 0 does not, so strict compares the sides' differences as expressions.
            pred, ref = pred_difference, ref_difference
    pred_number, ref_number = as_number(pred_key), as_number(ref_key)
    if pred_number is not None and ref_number is not None:
        return pred_number == ref_number
    if _is_option(ref_key) and _OPTION_PREFIX.match(pred_key):
        return _OPTION_PREFIX.match(pred_key).group(1) == ref_key  # "(D) a line" answers "(D)"
    if _WORD.match(pred_key) or _WORD.match(ref_key):
        # Bare letter strings are words or labels ("LXQS", "east"); sympy would read them as
        # commuting products and call "LXQS" equal to "LQSX".
        return False
    remaining = deadline - time.monotonic()
    if remaining < _MIN_SYMBOLIC_SECONDS:
        return False
    return bool(symbolic_equal(pred, ref, remaining))


def _is_option(key: str) -> bool:
    return len(key) == 1 and key.isalpha()


def _structure_decides(parts: Container) -> bool:
    """A tuple, interval or matrix never equals a single value; a set or union might ("x\\in...")."""
    return parts.kind in ("tuple", "matrix")


def _containers_equal(pred: Container, ref: Container, deadline: float, depth: int, strict: bool) -> bool:
    """Part-by-part comparison; the reference's kind decides whether order matters."""
    if len(pred.items) != len(ref.items) or len(ref.items) > _MAX_PARTS:
        return False
    if pred.kind == "matrix" or ref.kind == "matrix":
        if pred.kind != ref.kind or pred.shape != ref.shape:
            return False
        return _all_equal(pred.items, ref.items, deadline, depth, strict)
    if pred.kind == "union" or ref.kind == "union":
        return pred.kind == ref.kind and _all_equal(pred.items, ref.items, deadline, depth, strict)
    if pred.kind == ref.kind == "tuple":
        # Brackets carry meaning: "[1,2)" is not "[1,2]", and "(1,2)" is not "[1,2]".
        return pred.brackets == ref.brackets and _all_equal(pred.items, ref.items, deadline, depth, strict)
    if ref.kind == "tuple" and ref.brackets != "()" or pred.kind == "tuple" and pred.brackets != "()":
        return False  # an interval against a bare list or a set
    if ref.kind == "tuple":
        # "5,7" for "(5,7)": lenient reads it as the pair; strict, like the official grader and
        # PRM800K's labelers (6 of 8 such answers rated -1), wants the pair written as one.
        return not strict and _all_equal(pred.items, ref.items, deadline, depth, strict)
    return _match_unordered(list(pred.items), list(ref.items), deadline, depth, strict)


def _all_equal(
    preds: tuple[str, ...], refs: tuple[str, ...], deadline: float, depth: int, strict: bool
) -> bool:
    return all(
        _equal(clean(p), clean(r), deadline, depth + 1, strict) for p, r in zip(preds, refs, strict=True)
    )


def _match_unordered(preds: list[str], refs: list[str], deadline: float, depth: int, strict: bool) -> bool:
    """Multiset equality: every reference part is matched by a distinct predicted part."""
    unmatched = [clean(p) for p in preds]
    for ref in (clean(r) for r in refs):
        hit = next((i for i, p in enumerate(unmatched) if _equal(p, ref, deadline, depth + 1, strict)), None)
        if hit is None:
            return False
        unmatched.pop(hit)
    return True
