"""Form rules of strict grading: (predicted key, reference key) in, a verdict or None out.

Lenient grading asks only whether two answers have the same value, so "72/375" answers
"\\frac{24}{125}" and "2^9+2" answers "514". MATH problems also set a form ("express your
answer as a common fraction", "simplest radical form", "A > 0"), and the official PRM800K
grader (openai/prm800k, prm800k/grading/grader.py) enforces part of it: an integer reference
needs an integer-looking answer, and two fractions must be written alike. Strict mode keeps
lenient grading's unordered solution lists ("-8, -1, 1, 8" for "8,1,-1,-8") and "\\pm" forms,
which the official grader rejects for want of a parser and PRM800K's labelers mostly accept;
it asks, as both do, that a tuple be written in its brackets ("(5,7)", not "5,7"; see
`equivalence`), and it adds these rules, each applied to the whole answer and to every part
of a multi-part one:

- a plain-number reference (integer, decimal, integer fraction) needs a plain number: an integer
  one a plain integer or decimal ("514", not "2^9+2" or "\\frac{7!}{16}" or "\\frac{-33}{3}"),
  a fractional one a decimal, a mixed number or a fraction with the same numerator and
  denominator ("\\frac{24}{125}" or "0.192", not "72/375" or "(49/10)^2");
- no integer fraction the reference does not have may be left unreduced ("-\\frac{145}{20} - ...");
- no radical in a denominator or fraction under a radical the reference does not have
  ("\\frac{2}{\\sqrt{3}+1}", "\\sqrt{\\frac{3-\\sqrt{5}}{2}}");
- a reference that is one fraction of an expression in a variable needs one fraction
  ("\\frac{8-7x}{6}", not "-\\frac{7x}{6}+\\frac{4}{3}");
- equations are compared as lhs - rhs without rescaling, so "-5x+7y-11z-4=0" does not answer
  "5x-7y+11z+4=0" (`equation_difference`, used by `equivalence`).

`form_verdict` works on `canonical` keys (no spaces, lower case) and returns False when the
prediction breaks a rule, True when the rule alone decides (two plain numbers), None otherwise.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from hiprm.grading.extract import brace_pairs
from hiprm.grading.normalize import PLAIN_NUMBER, as_number

_INTEGER = re.compile(r"^-?\d+$")
_INTEGER_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_MIXED_NUMBER = re.compile(r"^-?(\d+)\\frac\{(\d+)\}\{(\d+)\}$")
_FRACTION_ANYWHERE = re.compile(r"\\frac\{(-?\d+)\}\{(-?\d+)\}|(?<![\d.}])(\d+)/(\d+)(?![\d.])")
_FRAC = re.compile(r"\\frac(?=\{)")
_SQRT = re.compile(r"\\sqrt(?:\[[^\]]*\])?(?=\{)")
_SLASH_RADICAL = re.compile(r"/\(?[^()/]*\\sqrt")
_COMMAND = re.compile(r"\\[a-z]+")


def form_verdict(pred: str, ref: str) -> bool | None:
    """Strict form check of two canonical keys.

    >>> form_verdict("\\\\frac{72}{375}", "\\\\frac{24}{125}"), form_verdict("0.192", "\\\\frac{24}{125}")
    (False, True)
    >>> form_verdict("2^9+2", "514"), form_verdict("\\\\frac{2}{\\\\sqrt{3}+1}", "\\\\sqrt{3}-1")
    (False, False)
    >>> form_verdict("x^2+2x+1", "(x+1)^2") is None
    True
    """
    ref_value = as_number(ref) if PLAIN_NUMBER.match(ref) or _INTEGER_FRACTION.match(ref) else None
    if ref_value is not None:
        return _number_verdict(pred, ref, ref_value)
    if unreduced_fractions(pred) - unreduced_fractions(ref):
        return False
    if radical_in_denominator(pred) and not radical_in_denominator(ref):
        return False
    if _is_single_fraction(ref) and _has_variable(ref) and not _is_single_fraction(pred):
        return False
    return None


def _number_verdict(pred: str, ref: str, ref_value: Fraction) -> bool:
    if _INTEGER.match(ref):
        # The official grader's rule: an integer reference is matched only by an integer-looking
        # answer, so an expression that evaluates to it ("2^9+2") is not an answer.
        return bool(PLAIN_NUMBER.match(pred)) and Fraction(pred) == ref_value
    if PLAIN_NUMBER.match(pred):
        return Fraction(pred) == ref_value
    mixed = _MIXED_NUMBER.match(pred)
    if mixed:  # "6\\frac{1}{4}" for 25/4: the official grader reads it as 6 + 1/4 and accepts it
        whole, numerator, denominator = (int(g) for g in mixed.groups())
        if not 0 < numerator < denominator or math.gcd(numerator, denominator) > 1:
            return False
        value = whole + Fraction(numerator, denominator)
        return (-value if pred.startswith("-") else value) == ref_value
    pred_fraction, ref_fraction = _written_fraction(pred), _written_fraction(ref)
    if pred_fraction is None:
        return False
    if ref_fraction is not None:
        return pred_fraction == ref_fraction  # "72/375" is not the common fraction 24/125
    return math.gcd(*pred_fraction) == 1 and Fraction(*pred_fraction) == ref_value


def _written_fraction(key: str) -> tuple[int, int] | None:
    """(numerator, denominator) as written, the sign moved to the numerator; None if not a fraction."""
    match = _INTEGER_FRACTION.match(key)
    if match is None or int(match.group(3)) == 0:
        return None
    sign = -1 if match.group(1) else 1
    numerator, denominator = int(match.group(2)) * sign, int(match.group(3))
    return (-numerator, -denominator) if denominator < 0 else (numerator, denominator)


def unreduced_fractions(key: str) -> set[str]:
    """Integer fractions in `key` that are not in lowest terms.

    >>> sorted(unreduced_fractions("-\\\\frac{145}{20}-\\\\frac{5}{2}x+6/10"))
    ['145/20', '6/10']
    """
    found = set()
    for match in _FRACTION_ANYWHERE.finditer(key):
        numerator, denominator = (int(g) for g in match.groups() if g is not None)
        if denominator != 0 and (math.gcd(numerator, denominator) > 1 or abs(denominator) == 1):
            found.add(f"{abs(numerator)}/{abs(denominator)}")
    return found


def radical_in_denominator(key: str) -> bool:
    r"""A root in a denominator, or a fraction under a root: the answer is not rationalised.

    >>> radical_in_denominator("\\frac{4}{3\\sqrt{3}}"), radical_in_denominator("\\frac{4\\sqrt{3}}{9}")
    (True, False)
    """
    closing = brace_pairs(key)
    for match in _FRAC.finditer(key):
        numerator_end = closing.get(match.end())
        denominator_end = closing.get(numerator_end + 1) if numerator_end is not None else None
        if denominator_end is not None and "\\sqrt" in key[numerator_end + 2 : denominator_end]:
            return True
    for match in _SQRT.finditer(key):
        end = closing.get(match.end())
        if end is not None and ("\\frac" in key[match.end() : end] or "/" in key[match.end() : end]):
            return True
    return _SLASH_RADICAL.search(key) is not None


def _is_single_fraction(key: str) -> bool:
    """ "\\frac{A}{B}" (or "-\\frac{A}{B}") spanning the whole key."""
    start = 1 if key.startswith("-") else 0
    if not key.startswith("\\frac{", start):
        return False
    closing = brace_pairs(key)
    numerator_end = closing.get(start + len("\\frac"))
    return numerator_end is not None and closing.get(numerator_end + 1) == len(key) - 1


def _has_variable(key: str) -> bool:
    """A Latin letter outside LaTeX commands: "\\frac{8-7x}{6}" is, "\\frac{\\pi}{2}" is not."""
    return re.search(r"[a-z]", _COMMAND.sub("", key)) is not None


def equation_difference(cleaned: str) -> str | None:
    """ "lhs = rhs" -> "(lhs)-(rhs)" for an answer that is one equation, else None.

    >>> equation_difference("5x - 7y + 11z + 4 = 0"), equation_difference("x \\\\le 3")
    ('(5x - 7y + 11z + 4)-(0)', None)
    """
    if cleaned.count("=") != 1 or any(c in cleaned for c in "<>,;") or "\\le" in cleaned or "\\ge" in cleaned:
        return None
    lhs, rhs = (side.strip() for side in cleaned.split("="))
    return f"({lhs})-({rhs})" if lhs and rhs else None
