"""String normalisation of final answers, in the spirit of the PRM800K grader (math_normalize.py
and grader.py): answer string in, cleaned / canonical string or structured parts out.

`clean` removes what never changes an answer's value but varies between writers: math
delimiters, ``\\left``/``\\right``, spacing commands, ``\\dfrac``/``\\tfrac``, degrees, dollar and
percent signs, trailing units ("5 \\text{ cm}^2", "12 dollars"), ``\\text{}`` wrappers, an
"x = " in front, thousands separators. It keeps spaces and LaTeX so the result can still be
parsed symbolically. `canonical` then makes a comparison key: no whitespace, ``\\frac12`` ->
``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``, "3/4" -> ``\\frac{3}{4}``, ".5" -> "0.5",
"18.90" -> "18.9", "(B)" -> "b", lower case. `as_number` reads plain rationals exactly and
`split_container` splits tuples, intervals, sets, bare lists, unions and matrices into parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from hiprm.grading.extract import brace_pairs

# --- clean ----------------------------------------------------------------------------------

_MAX_UNWRAP = 8
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# A row break "\\\\" is matched first so its second backslash is not read as "\\ " spacing.
_SPACING = re.compile(r"(\\\\)|\\[,;: ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_FRAC_VARIANTS = re.compile(r"\\[dt]frac(?![A-Za-z])")
_BINOM_VARIANTS = re.compile(r"\\[dt]binom(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ(?![A-Za-z])|\\degree(?![A-Za-z])")
_CURRENCY_PERCENT = re.compile(r"\\?\$|\\?%|\\euro(?![A-Za-z])|\\pounds(?![A-Za-z])")
_TEXT_COMMANDS = (
    "text",
    "textbf",
    "textit",
    "textrm",
    "mathrm",
    "mathbf",
    "mbox",
    "textnormal",
    "operatorname",
)
_TEXT_COMMAND = re.compile(r"\\(?:" + "|".join(_TEXT_COMMANDS) + r")\s*(?=\{)")
_UNIT_WORDS = (
    "cm|centimeters?|centimetres?|mm|millimeters?|km|kilometers?|kilometres?|meters?|metres?|"
    "inch(?:es)?|ft|foot|feet|yd|yards?|mi|miles?|mph|km/h|kph|"
    "secs?|seconds?|min|mins|minutes?|hrs?|hours?|days?|weeks?|months?|years?|"
    "kg|kilograms?|grams?|mg|lbs?|pounds?|oz|ounces?|tons?|"
    "liters?|litres?|ml|milliliters?|gallons?|quarts?|pints?|cups?|"
    "dollars?|cents?|euros?|percent|degrees?|radians?|units?|"
    "people|persons?|times|ways|points?"
)
# Units after a number: "5 cm", "5 square feet", "3 \text{ cm}^2" (after \text is unwrapped).
_TRAILING_UNIT = re.compile(
    r"(?<=[\d}.])\s*(?:(?:square|sq\.?|cubic)\s+)?(?:" + _UNIT_WORDS + r")\.?(?:\s*\^\s*\{?\d\}?)?\s*$",
    re.IGNORECASE,
)
# One-letter units could be variables ("3m"), so they only count after a space: "5 m", "10 in".
_SHORT_UNIT = re.compile(r"(?<=\d)\s+(?:m|s|h|g|l|in)\.?(?:\s*\^\s*\{?\d\}?)?\s*$")
# A \text{...} that starts with a space after some value is a unit or a word note: "5\text{ cm}".
_SPACED_TEXT_TAIL = re.compile(
    r"^(.*?\S)\s*\\(?:text|mbox|mathrm)\s*\{\s+[A-Za-z][A-Za-z .,/()'-]*\}(?:\s*\^\s*\{?\d\}?)?\s*$"
)
_LHS = re.compile(r"^\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?[A-Za-z0-9]+\}?)?(?:\([A-Za-z]\))?\s*=(?!=)\s*(?=\S)")
# "12 tomatoes", "4 blue boxes": a number followed only by words is that number.
_NUMBER_THEN_WORDS = re.compile(r"^(-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z][A-Za-z '-]*$")
# "\15" is a mangled "\$15"; no LaTeX command starts with a digit ("\\2" row breaks are kept).
_BACKSLASH_DIGIT = re.compile(r"(?<!\\)\\(?=\d)")
# "\sqrt{-5}" -> "i\sqrt{5}", so it meets answers written with i (latex2sympy keeps i a symbol).
_NEGATIVE_SQRT = re.compile(r"\\sqrt\s*\{\s*-\s*(\d+)\s*\}")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_WORD_SEPARATORS = re.compile(r"\s+(?:and|or)\s+|\\text\{\s*(?:and|or|,)\s*\}")


def strip_delimiters(answer: str) -> str:
    """Remove whole-answer math delimiters: "$x$", "\\(x\\)", "\\[x\\]" -> "x"."""
    answer = answer.strip()
    changed = True
    while changed:
        changed = False
        for left, right in _DELIMITERS:
            inner = answer[len(left) : -len(right)]
            if answer.startswith(left) and answer.endswith(right) and inner and left not in inner:
                answer, changed = inner.strip(), True
    return answer


def unwrap_command(text: str, command: re.Pattern[str]) -> str:
    """Replace every "\\cmd{X}" matched by `command` (which ends before "{") with X.

    Arguments can hold another wrapped command ("\\text{\\textbf{A}}"), so this repeats, a
    bounded number of times since input may nest without end.
    """
    for _ in range(_MAX_UNWRAP):
        matches = list(command.finditer(text))
        if not matches:
            break
        closing = brace_pairs(text)
        out: list[str] = []
        pos = 0
        for match in matches:
            close = closing.get(match.end())
            if match.start() < pos or close is None:
                continue  # inside an argument already copied, or unbalanced
            out.append(text[pos : match.start()])
            out.append(text[match.end() + 1 : close])
            pos = close + 1
        out.append(text[pos:])
        unwrapped = "".join(out)
        if unwrapped == text:
            break
        text = unwrapped
    return text


def clean(answer: str) -> str:
    """Drop value-free decoration; the result is still LaTeX.

    >>> clean("\\\\$1,000.50")
    '1000.50'
    >>> clean("x = \\\\dfrac{3}{4}\\\\text{ cm}^2")
    '\\\\frac{3}{4}'
    >>> clean("45^\\\\circ")
    '45'
    """
    answer = " ".join(answer.split())  # single spaces keep the regexes below linear
    answer = strip_delimiters(answer)
    answer = _unbox(answer)
    answer = answer.replace("{,}", ",").replace("\\!", "")
    answer = _SPACING.sub(lambda m: m.group(1) or " ", answer)
    answer = _LEFT_RIGHT.sub("", answer)
    answer = _FRAC_VARIANTS.sub(r"\\frac", answer)
    answer = _BINOM_VARIANTS.sub(r"\\binom", answer)
    answer = _NEGATIVE_SQRT.sub(r"i\\sqrt{\1}", answer)
    answer = _DEGREES.sub("", answer)
    answer = _CURRENCY_PERCENT.sub("", answer)
    answer = _BACKSLASH_DIGIT.sub("", answer)
    spaced_tail = _SPACED_TEXT_TAIL.match(answer)
    if spaced_tail:
        answer = spaced_tail.group(1)
    answer = unwrap_command(answer, _TEXT_COMMAND)
    answer = _WORD_SEPARATORS.sub(", ", answer)
    answer = _strip_units(answer)
    answer = _NUMBER_THEN_WORDS.sub(r"\1", answer)
    answer = _LHS.sub("", answer, count=1) if answer.count("=") == 1 else answer
    answer = answer.strip().rstrip(".").strip()
    if _THOUSANDS.match(answer):
        answer = answer.replace(",", "")
    return answer


def _unbox(answer: str) -> str:
    match = re.match(r"^\\(?:boxed|fbox)\s*\{", answer)
    if match and brace_pairs(answer).get(match.end() - 1) == len(answer) - 1:
        return answer[match.end() : -1].strip()
    return answer


def _strip_units(answer: str) -> str:
    # Twice: "5 square feet per hour" is rare, "5 \text{cm} \text{long}" is not worth more.
    for _ in range(2):
        stripped = _SHORT_UNIT.sub("", _TRAILING_UNIT.sub("", answer)).strip()
        if not stripped or stripped == answer:
            break
        answer = stripped
    return answer


# --- canonical ------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")
_SHORT_FRAC = re.compile(r"\\frac(\d)(\d)")
_HALF_SHORT_FRAC_NUM = re.compile(r"\\frac(\d)\{")
_HALF_SHORT_FRAC_DEN = re.compile(r"\\frac(\{[^{}]*\})(\d)")
_SHORT_SQRT = re.compile(r"\\sqrt(\d)")
_INT_RATIO = re.compile(r"^(-?)(\d+)/(\d+)$")
_BARE_DECIMAL = re.compile(r"(?<![\d}])\.(\d)")
# Possessive and anchored to the start of a digit run: a 10,000-digit "number" must stay linear.
_DECIMAL = re.compile(r"(?<!\d)(\d++)\.(\d*+)")
_OPTION = re.compile(r"^\(([a-z])\)$")


def canonical(cleaned: str) -> str:
    """Comparison key of a `clean`ed answer.

    >>> canonical("\\\\frac12 + \\\\sqrt2")
    '\\\\frac{1}{2}+\\\\sqrt{2}'
    >>> canonical("18.90"), canonical(".5"), canonical("3/4"), canonical("(B)")
    ('18.9', '0.5', '\\\\frac{3}{4}', 'b')
    """
    key = _WHITESPACE.sub("", cleaned)
    key = _SHORT_FRAC.sub(r"\\frac{\1}{\2}", key)
    key = _HALF_SHORT_FRAC_NUM.sub(r"\\frac{\1}{", key)
    key = _HALF_SHORT_FRAC_DEN.sub(r"\\frac\1{\2}", key)
    key = _SHORT_SQRT.sub(r"\\sqrt{\1}", key)
    key = _INT_RATIO.sub(r"\1\\frac{\2}{\3}", key)
    key = _BARE_DECIMAL.sub(r"0.\1", key)
    key = _DECIMAL.sub(_trim_decimal, key)
    key = _strip_outer_braces(key)
    key = key.lower()
    return _OPTION.sub(r"\1", key)


def _strip_outer_braces(key: str) -> str:
    """ "{{5}}" -> "5"; "{1}{2}" is left alone."""
    if not key.startswith("{"):
        return key
    closing = brace_pairs(key)
    depth = 0
    while depth < len(key) // 2 and key[depth] == "{" and closing.get(depth) == len(key) - 1 - depth:
        depth += 1
    return key[depth : len(key) - depth]


def _trim_decimal(match: re.Match[str]) -> str:
    whole, fraction = match.group(1), match.group(2).rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


PLAIN_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")
_LATEX_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}$")
_MAX_NUMBER_CHARS = 200  # longer digit strings go to the symbolic path (and its time limit)


def as_number(key: str) -> Fraction | None:
    """Exact value of a canonical key that is a plain rational ("-3", "0.25", "\\frac{3}{4}")."""
    if len(key) > _MAX_NUMBER_CHARS:
        return None
    if PLAIN_NUMBER.match(key):
        return Fraction(key)
    fraction = _LATEX_FRACTION.match(key)
    if fraction:
        sign, numerator, denominator = fraction.groups()
        if Fraction(denominator) == 0:
            return None
        value = Fraction(numerator) / Fraction(denominator)
        return -value if sign else value
    return None


# --- structure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Container:
    """A multi-part answer. kind: "tuple" (ordered; brackets are part of the value, so "[1,2)"
    differs from "[1,2]"), "set" (unordered: "\\{1,2\\}" or a bare "1, 2"), "union" (intervals
    joined by \\cup, ordered) or "matrix" (ordered, `shape` must match)."""

    kind: str
    brackets: str
    items: tuple[str, ...]
    shape: tuple[int, int] = (0, 0)


_MATRIX = re.compile(r"^\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_OPENERS, _CLOSERS = "([{", ")]}"


def split_container(cleaned: str) -> Container | None:
    """Split a `clean`ed multi-part answer into its parts, or None for a single value.

    >>> split_container("[1, 2)")
    Container(kind='tuple', brackets='[)', items=('1', '2'), shape=(0, 0))
    >>> split_container("3, -5").kind, split_container("\\\\{1,2\\\\}").items
    ('set', ('1', '2'))
    """
    text = cleaned.strip()
    matrix = _MATRIX.match(text)
    if matrix:
        rows = [split_top_level(row, "&") for row in split_top_level(matrix.group(2), "\\\\") if row.strip()]
        width = len(rows[0]) if rows else 0
        if rows and all(len(row) == width for row in rows):
            return Container(
                "matrix", "", tuple(cell.strip() for row in rows for cell in row), (len(rows), width)
            )
        return None
    pieces = split_top_level(text, "\\cup")
    if len(pieces) > 1:
        return Container("union", "", tuple(p.strip() for p in pieces))
    if text.startswith("\\{") and text.endswith("\\}") and _encloses(text, 2, len(text) - 2):
        return Container("set", "{}", tuple(p.strip() for p in split_top_level(text[2:-2], ",")))
    if text.startswith("\\langle") and text.endswith("\\rangle"):
        inner = text[len("\\langle") : -len("\\rangle")]
        return Container("tuple", "()", tuple(p.strip() for p in split_top_level(inner, ",")))
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]" and _encloses(text, 1, len(text) - 1):
        items = split_top_level(text[1:-1], ",")
        if len(items) > 1:
            return Container("tuple", text[0] + text[-1], tuple(p.strip() for p in items))
    items = [p.strip() for p in split_top_level(text, ",")]
    expanded = _expand_plus_minus(items)
    if len(expanded) > 1:
        return Container("set", "", tuple(expanded))
    return None


_PLUS_MINUS = re.compile(r"\\(?:pm|mp)(?![A-Za-z])")


def _expand_plus_minus(items: list[str]) -> list[str]:
    """ "\\pm 8" -> "8", "-8"; "2 \\pm \\sqrt{3}" -> "2 + \\sqrt{3}", "2 - \\sqrt{3}" (one sign per item)."""
    out: list[str] = []
    for item in items:
        if len(_PLUS_MINUS.findall(item)) != 1:
            out.append(item)
            continue
        for sign in ("+", "-"):
            signed = _PLUS_MINUS.sub(sign, item).strip()
            out.append(re.sub(r"^\+?\s*(-?)\s*", r"\1", signed))  # "+ 8" -> "8", "- 8" -> "-8"
    return out


def split_top_level(text: str, separator: str) -> list[str]:
    """Split on `separator` where no bracket of any kind is open ("(1,2),3" -> ["(1,2)", "3"])."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    while i < len(text):
        if text.startswith(separator, i) and depth == 0:
            parts.append(text[start:i])
            i += len(separator)
            start = i
            continue
        char = text[i]
        if char == "\\" and not text.startswith(separator, i):
            i += 2  # an escaped bracket such as "\{" does not nest
            continue
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth = max(depth - 1, 0)
        i += 1
    parts.append(text[start:])
    return parts


def _encloses(text: str, start: int, end: int) -> bool:
    """True when text[start:end] is balanced, so the outer brackets belong together."""
    depth = 0
    i = start
    while i < end:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char in _OPENERS:
            depth += 1
        elif char in _CLOSERS:
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0
