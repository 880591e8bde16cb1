"""Generated text -> steps: split a finished solution, clean step-search chunks, detect the end.

Two ways a solution comes in:
- whole (best-of-N): one text up to `# END!`; `split_solution` cuts it where step-level
  search would have stopped, never inside the `# Answer` block;
- chunk by chunk (step-level search): each generated chunk is one step; `step_texts` strips the
  next step's header that ended a chunk (`# Step 3`) and moves it to the step it begins, and drops
  `# END!`, so the reward model sees the same steps as it would for the whole text.
Answers are found by the shared grader (`hiprm.grading.extract_answer`).
"""

from __future__ import annotations

from hiprm.grading import extract_answer
from hiprm.policy.prompts import PromptStyle

ANSWER_MARK = "# Answer"


def solution_text(text: str, style: PromptStyle) -> str:
    """The text before the end marker (`# END!` and anything after it dropped)."""
    i = text.find(style.end_stop) if style.end_stop else -1
    return text if i < 0 else text[:i]


def split_solution(text: str, style: PromptStyle) -> list[str]:
    """Split a complete generated solution into steps, exactly where step-level search would
    have stopped (after `\\]\\n\\n`, before `# Step k`, ...), but never inside the final
    `# Answer` block, which stays with the text it follows.

    >>> from hiprm.policy.prompts import STYLES
    >>> split_solution("# Step 1\\na=1\\n\\n# Step 2\\nb=2\\n\\n# Answer\\n\\n3\\n# END!", STYLES["step"])
    ['# Step 1\\na=1', '# Step 2\\nb=2\\n\\n# Answer\\n\\n3']
    >>> split_solution("\\\\[x=1\\\\]\\n\\nso \\\\(y=2\\\\)\\n\\nDone.", STYLES["formula"])
    ['\\\\[x=1\\\\]', 'so \\\\(y=2\\\\)', 'Done.']
    """
    text = solution_text(text, style)
    i = text.find(ANSWER_MARK)
    body = text if i < 0 else text[:i]
    cuts = {0, len(text)}
    for stop in style.step_stops:
        if "{n}" in stop:
            continue
        start = body.find(stop)
        while start >= 0:
            cuts.add(start + len(stop))
            start = body.find(stop, start + len(stop))
    pattern = style.header_pattern()
    if pattern is not None:
        cuts.update(m.start() for m in pattern.finditer(body))
    bounds = sorted(cuts)
    steps = [text[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)]
    return [s for s in steps if s]


def step_texts(chunks: list[str], style: PromptStyle) -> list[str]:
    """Reward-model step texts for chunks produced by step-level search (one chunk = one step).

    >>> from hiprm.policy.prompts import STYLES
    >>> step_texts(["# Step 1\\na=1\\n\\n# Step 2", "\\nb=2\\n\\n# Answer\\n\\n3\\n# END!"], STYLES["step"])
    ['# Step 1\\na=1', '# Step 2\\nb=2\\n\\n# Answer\\n\\n3']
    """
    out: list[str] = []
    carry = ""
    for chunk in chunks:
        text, carry = split_trailing_header(solution_text(carry + chunk, style), style)
        out.append(text.strip())
    return out


def split_trailing_header(text: str, style: PromptStyle) -> tuple[str, str]:
    r"""(text before, header) when `text` ends with the next step's header (the stop that ended a
    step, `# Step 3`), else (text, ""). A header that is the whole text is kept as text.

    >>> from hiprm.policy.prompts import STYLES
    >>> split_trailing_header("# Step 1\na=1\n\n# Step 2", STYLES["step"])
    ('# Step 1\na=1\n\n', '# Step 2')
    """
    pattern = style.header_pattern()
    if pattern is None:
        return text, ""
    tail = text.rstrip()
    last = None
    for m in pattern.finditer(tail):
        last = m
    if last is not None and last.end() == len(tail) and last.start() > 0:
        return text[: last.start()], tail[last.start() :]
    return text, ""


def is_final(chunk: str, style: PromptStyle) -> bool:
    r"""A step that ends the solution, by the prompt style's own terminal rule: it writes the
    answer marker (`# Answer`, every built-in style asks for it) or reaches the end marker
    (`# END!`). Mentioning an answer is not the end of a solution ("To see what the answer is,
    first ...", "The answer is not 4, since ...", an intermediate \boxed{5}), as in the paper's
    search.

    >>> from hiprm.policy.prompts import STYLES
    >>> [is_final(c, STYLES["paragraph"]) for c in ["The answer is not 4, since 2+3=5.", "So \\boxed{5}.", "# Answer\n\n5"]]
    [False, False, True]
    """
    if style.end_stop and style.end_stop in chunk:
        return True
    return ANSWER_MARK in chunk


def final_answer(text: str, style: PromptStyle) -> str | None:
    """The answer a complete solution gives (None when it gives none)."""
    return extract_answer(solution_text(text, style)) or None
