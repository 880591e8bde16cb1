"""Final-answer extraction: solution text in, the final answer as a short string (or None) out.

Explicit markers are read first and the one that appears last in the text wins: the PRM800K /
HRM-paper answer block ("...\\n\\n# Answer\\n\\n6", optionally followed by "# END!"),
``\\boxed{...}`` / ``\\fbox{...}`` (nested braces; the last complete one), and GSM8K's
"#### 6". Without a marker, a "the (final) answer is 6" phrase is used. With
``fallback=True`` the last number or formula of the final paragraph is taken as a last resort,
which suits free-form chat outputs but would read a truncated solution as answered, so it is off
by default. The returned string keeps its LaTeX; only delimiters (``$..$``, ``\\(..\\)``), bold
markers and a sentence-final period are stripped. Normalisation is `equivalence`'s job.
"""

from __future__ import annotations

import re

# "# Answer" heading (PRM800K / the HRM policy prompt); text may follow on the same line.
_ANSWER_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*answer\b[ \t]*:?[ \t]*", re.IGNORECASE | re.MULTILINE)
_END_MARK = re.compile(r"^[ \t]*#+[ \t]*END\b.*", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_GSM8K_MARK = re.compile(r"^[ \t]*####[ \t]*(\S[^\n]*)$", re.MULTILINE)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_PHRASE = re.compile(r"answer\s+is\s*:?[ \t]*([^\n]+)", re.IGNORECASE)

# Sentence end inside a captured phrase: a period that is not a decimal point or LaTeX "\.".
_SENTENCE_END = re.compile(r"(?<!\\)\.(?=\s|$)")
_MAX_HEADINGS = 4
_MAX_UNWRAP = 8
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


def extract_answer(text: str | None, *, fallback: bool = False) -> str | None:
    """Return the final answer written in `text`, or None if there is none.

    >>> extract_answer("So 2+4=6.\\n\\n# Answer\\n\\n6\\n# END!")
    '6'
    >>> extract_answer("Thus $x = \\\\boxed{\\\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("Natalia sold 48+24 = 72 clips.\\n#### 72")
    '72'
    """
    if not isinstance(text, str) or not text.strip():
        return None
    candidates = [c for c in (_last_answer_block(text), _last_boxed(text), _last_gsm8k(text)) if c]
    if candidates:
        _, answer = max(candidates, key=lambda c: c[0])
        return _tidy(answer) or None
    phrase = _answer_phrase(text)
    if phrase is not None:
        return phrase
    return _final_sentence_answer(text) if fallback else None


def _last_answer_block(text: str) -> tuple[int, str] | None:
    """(position, answer) of the last non-empty "# Answer" block."""
    # Only the last few headings: each costs a scan of the rest of the text.
    for match in list(_ANSWER_HEADING.finditer(text))[-_MAX_HEADINGS:][::-1]:
        body = _END_MARK.split(text[match.end() :], maxsplit=1)[0].strip()
        # The answer is the first paragraph after the heading; anything later is chatter.
        body = re.split(r"\n[ \t]*\n", body, maxsplit=1)[0]
        body = " ".join(body.split())
        # A markdown "### Answer" heading may be followed by prose: "The answer is 5."
        answer = _answer_phrase(body) if _ANSWER_PHRASE.search(body) else _tidy(body)
        if answer:
            return match.start(), answer
    return None


def _last_gsm8k(text: str) -> tuple[int, str] | None:
    matches = list(_GSM8K_MARK.finditer(text))
    if not matches:
        return None
    answer = _tidy(matches[-1].group(1))
    return (matches[-1].start(), answer) if answer else None


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(position, content) of the last complete \\boxed{...}/\\fbox{...}; truncated ones are skipped."""
    commands = list(_BOX_COMMAND.finditer(text))
    if not commands:
        return None
    closing = brace_pairs(text)
    for match in reversed(commands):
        content = _box_argument(text, match.end(), closing)
        if content is not None and content.strip():
            return match.start(), content
    return None


def _box_argument(text: str, start: int, closing: dict[int, int]) -> str | None:
    """Argument of a box command whose name ends at `start`: "{...}" with nesting, or "\\boxed 5"."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        # "\boxed 5" form: the argument runs to the next space or math delimiter.
        return re.match(r"[^\s$]*", text[i:]).group(0) if i > start else None
    close = closing.get(i)
    return None if close is None else text[i + 1 : close]


_BRACE_OR_ESCAPE = re.compile(r"\\.|[{}]", re.DOTALL)


def brace_pairs(text: str) -> dict[int, int]:
    """Map each balanced "{" index to its "}" index in one pass; escaped \\{ \\} are skipped.

    >>> brace_pairs("a{b{c}}{")
    {3: 5, 1: 6}
    """
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for token in _BRACE_OR_ESCAPE.finditer(text):
        char = token.group(0)
        if char == "{":
            stack.append(token.start())
        elif char == "}" and stack:
            pairs[stack.pop()] = token.start()
    return pairs


def _answer_phrase(text: str) -> str | None:
    """The last "answer is X" phrase, cut at the end of its sentence."""
    matches = list(_ANSWER_PHRASE.finditer(text))
    if not matches:
        return None
    phrase = _SENTENCE_END.split(matches[-1].group(1), maxsplit=1)[0]
    return _tidy(phrase) or None


def _tidy(answer: str) -> str:
    """Strip whitespace, math delimiters, bold markers and a final period; unbox a boxed answer."""
    answer = answer.strip()
    for _ in range(_MAX_UNWRAP):  # bounded: "\boxed{\boxed{...}}" may nest without end
        before = answer
        boxed = _last_boxed(answer)
        if boxed is not None:
            answer = boxed[1].strip()
        if answer.endswith(".") and not answer.endswith("\\."):
            answer = answer[:-1].rstrip()
        for left, right in _WRAPPERS:
            inner = answer[len(left) : -len(right)]
            # "$a$ and $b$" starts and ends with "$" but is not one wrapped formula.
            if answer.startswith(left) and answer.endswith(right) and inner and left not in inner:
                answer = inner.strip()
                break
        if answer == before:
            break
    return answer


# --- last-resort reading of unmarked free-form answers (fallback=True) ---------------------------

_FALLBACK_CHARS = 2000
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_BOLD = re.compile(r"\*\*([^*\n]{1,80})\*\*")
# A "$" directly before a digit is a currency sign in prose, not a math delimiter.
_CURRENCY = re.compile(r"\\?\$(?=\s?\d)")
_MATH_SPAN = re.compile(r"\\\((.+?)\\\)|\\\[(.+?)\\\]|\$\$(.+?)\$\$|\$(.+?)\$", re.DOTALL)


def _final_sentence_answer(text: str) -> str | None:
    """Last bold phrase, math span (right of its last "=") or number in the final paragraph."""
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if not paragraphs:
        return None
    # The tail is enough for a final sentence and keeps the lazy span regex linear on huge input.
    last = _CURRENCY.sub("", paragraphs[-1][-_FALLBACK_CHARS:])
    found: list[tuple[int, str]] = []
    spans = list(_MATH_SPAN.finditer(last))
    for span in spans:
        body = next(g for g in span.groups() if g is not None)
        found.append((span.end(), _right_of_equals(body)))
    for bold in _BOLD.finditer(last):
        found.append((bold.end(), bold.group(1)))
    prose = _MATH_SPAN.sub(lambda m: " " * len(m.group(0)), last)
    for number in _NUMBER.finditer(prose):
        found.append((number.end(), number.group(0)))
    for _, answer in sorted(found, key=lambda f: f[0], reverse=True):
        answer = _tidy(answer)
        if answer:
            return answer
    return None


def _right_of_equals(formula: str) -> str:
    """ "a + b = 7 \\text{ cm}" -> "7 \\text{ cm}": the value a derivation ends on."""
    depth = 0
    cut = 0
    for i, char in enumerate(formula):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "=" and depth == 0:
            cut = i + 1
    return formula[cut:].strip()
