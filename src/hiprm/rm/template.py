"""THE step formatter: the only place where (question, previous steps, current step) becomes
reward-model input text. Training, scoring, serving and evaluation all call `render` /
`render_fitted`, so separators and block headers cannot drift between them.

The default style is the HRM paper's reward-model prompt:

    Question:
    {question}

    Let's break it down step by step!

    Previous reasoning:          <- block omitted for the first step
    {step 1}\\n\\n{step 2}...

    Now, let's focus on the current step:
    {current step}

`render_fitted` makes the text fit a token budget by dropping the *oldest* previous steps first
(the model still sees the question and the steps nearest the current one); only when that is not
enough does it cut the question's tail and then the current step's tail, and it counts each cut
so callers can warn. The settings travel with a trained model (`TemplateConfig.to_dict` is saved
in the model's `config.json` under `hiprm_template`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from hiprm.config import Positive

log = logging.getLogger(__name__)

QUESTION_HEADER = "Question:\n"
INTRO = "\n\nLet's break it down step by step!\n\n"
PREVIOUS_HEADER = "Previous reasoning:\n"
CURRENT_HEADER = "Now, let's focus on the current step:\n"


@dataclass
class TemplateConfig:
    """How steps become text. `step_separator` joins previous steps (PRM800K steps are
    separated by a blank line); `max_length` is the token budget of one input."""

    step_separator: str = "\n\n"
    max_length: Positive = 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TemplateConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in known})

    @classmethod
    def from_saved(cls, raw: dict[str, Any] | None, where: Any) -> TemplateConfig:
        """The settings a checkpoint saved (`config.json`'s `hiprm_template`), defaults if none."""
        if raw is None:
            log.warning("%s: no hiprm_template in config.json; using the default template settings", where)
        return cls.from_dict(raw)


class TokenCounter(Protocol):
    """Anything with a HF-tokenizer-like `__call__` returning `input_ids`."""

    def __call__(self, text: Any, add_special_tokens: bool = ...) -> Any: ...


def render(question: str, previous_steps: list[str], current_step: str, cfg: TemplateConfig | None = None) -> str:
    """Format one (question, previous steps, current step) triple.

    >>> render("1+1?", [], "1+1=2")
    "Question:\\n1+1?\\n\\nLet's break it down step by step!\\n\\nNow, let's focus on the current step:\\n1+1=2"
    >>> render("Q", ["a", "b"], "c").count("Previous reasoning:")
    1
    """
    cfg = cfg or TemplateConfig()
    parts = [QUESTION_HEADER, question, INTRO]
    if previous_steps:
        parts += [PREVIOUS_HEADER, cfg.step_separator.join(previous_steps), "\n\n"]
    parts += [CURRENT_HEADER, current_step]
    return "".join(parts)


def parse(text: str, cfg: TemplateConfig | None = None) -> tuple[str, list[str], str]:
    """Inverse of `render` (for round-trip tests and debugging a stored input).

    Raises ValueError when `text` was not produced by `render`. Steps that themselves contain
    the separator cannot be told apart from two steps; `render` is still exact for them.
    """
    cfg = cfg or TemplateConfig()
    if not text.startswith(QUESTION_HEADER) or INTRO not in text or CURRENT_HEADER not in text:
        raise ValueError("text was not produced by hiprm.rm.template.render")
    body = text[len(QUESTION_HEADER) :]
    question, rest = body.split(INTRO, 1)
    previous: list[str] = []
    if rest.startswith(PREVIOUS_HEADER):
        prev_block, current = rest[len(PREVIOUS_HEADER) :].rsplit("\n\n" + CURRENT_HEADER, 1)
        previous = prev_block.split(cfg.step_separator)
    else:
        current = rest[len(CURRENT_HEADER) :]
    return question, previous, current


@dataclass
class FitReport:
    """What `render_fitted` had to cut to fit the budget."""

    dropped_steps: int = 0
    cut_question_tokens: int = 0
    cut_current_tokens: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.cut_question_tokens or self.cut_current_tokens)


def _n_tokens(tokenizer: TokenCounter, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_tail(tokenizer: Any, text: str, keep: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max(keep, 0)]
    return tokenizer.decode(ids)


# Tokens one join of two pieces may save against the pieces' own counts (a BPE merge across the
# boundary). With SmolLM2's tokenizer, on the 78 multi-step solutions among the first 400
# PRM800K phase-1 test records, the pieces never overcounted the whole text (0 tokens); 2 per
# step is a margin. Used only to skip counting a text that is surely over budget.
MERGE_SLACK = 2


def render_fitted(
    tokenizer: Any,
    question: str,
    previous_steps: list[str],
    current_step: str,
    cfg: TemplateConfig | None = None,
    reserve: int = 2,
    step_costs: list[int] | None = None,
) -> tuple[str, FitReport]:
    """`render`, made to fit `cfg.max_length - reserve` tokens (reserve = special tokens).

    A text that fits is returned as rendered. Otherwise the oldest previous steps go first: as
    few as the steps' own token counts say (`step_costs[k]` = tokens of step k plus its
    separator), then one more at a time while the exact count is still over. Only then are the
    question's tail and finally the current step's tail cut; the FitReport counts each cut so
    the caller can warn.

    `step_costs` lets a caller that scores every step of a long solution count each step once
    instead of once per later step: with it, a text whose pieces are surely over budget is not
    tokenized whole, so fitting all N steps of a solution costs O(N x max_length), not O(N^2).
    The result is the same with or without it.
    """
    cfg = cfg or TemplateConfig()
    budget = cfg.max_length - reserve
    report = FitReport()
    surely_over = step_costs is not None and sum(step_costs) - MERGE_SLACK * len(step_costs) > budget
    if not surely_over:
        text = render(question, previous_steps, current_step, cfg)
        if _n_tokens(tokenizer, text) <= budget:
            return text, report
    costs = step_costs if step_costs is not None else [_n_tokens(tokenizer, s + cfg.step_separator) for s in previous_steps]
    # The fixed part with the previous-steps block present (its header and closing blank line).
    head = _n_tokens(tokenizer, render(question, [""], current_step, cfg))
    remaining = sum(costs)
    while report.dropped_steps < len(costs) and head + remaining > budget:
        remaining -= costs[report.dropped_steps]
        report.dropped_steps += 1
    prev = list(previous_steps[report.dropped_steps :])
    text = render(question, prev, current_step, cfg)
    total = _n_tokens(tokenizer, text)
    while prev and total > budget:
        prev.pop(0)
        report.dropped_steps += 1
        text = render(question, prev, current_step, cfg)
        total = _n_tokens(tokenizer, text)
    if total <= budget:
        return text, report
    # Still too long with no previous reasoning: cut the question's tail, keeping at least
    # half the budget for the current step, then the current step's tail.
    q_tokens = _n_tokens(tokenizer, question)
    c_tokens = _n_tokens(tokenizer, current_step)
    fixed = total - q_tokens - c_tokens
    room = budget - fixed
    keep_q = max(min(q_tokens, room - min(c_tokens, room // 2)), 0)
    if keep_q < q_tokens:
        report.cut_question_tokens = q_tokens - keep_q
        question = _cut_tail(tokenizer, question, keep_q)
    keep_c = max(room - keep_q, 0)
    if keep_c < c_tokens:
        report.cut_current_tokens = c_tokens - keep_c
        current_step = _cut_tail(tokenizer, current_step, keep_c)
    text = render(question, prev, current_step, cfg)
    return text, report


def fitted_texts(
    tokenizer: Any, inputs: Sequence[tuple[str, list[str], str]], cfg: TemplateConfig
) -> tuple[list[str], list[FitReport]]:
    """`render_fitted` of each (question, previous steps, current step) input, with each distinct
    step counted once for the whole call (its `step_costs`): fitting the N steps of a long
    solution is then linear in N, not quadratic. What the in-process and the remote scorer send."""
    sep = cfg.step_separator
    distinct = list(dict.fromkeys(s for _, prev, _ in inputs for s in prev))
    counts = tokenizer([s + sep for s in distinct], add_special_tokens=False)["input_ids"] if distinct else []
    cost = {s: len(ids) for s, ids in zip(distinct, counts, strict=True)}
    texts, reports = [], []
    for q, prev, cur in inputs:
        text, report = render_fitted(tokenizer, q, list(prev), cur, cfg, step_costs=[cost[s] for s in prev])
        texts.append(text)
        reports.append(report)
    return texts, reports
