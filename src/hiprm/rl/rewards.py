"""A GRPO reward function built from any hiprm scorer: what TRL's `GRPOTrainer` takes in
`reward_funcs`.

    from hiprm.rm.remote import load_scorer
    reward = StepRewards(load_scorer("runs/rm/hrm/model"), aggregation="min", outcome_weight=1.0)
    GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=ds, ...)   # ds: prompt, question, answer

For each completion (a string, or TRL's conversational `[{"role": "assistant", "content": ...}]`):

    steps   = split_solution(completion, style)          # the one step splitter of hiprm
    r_rm    = aggregate(step rewards of `steps`, aggregation)     # min | last | prod | mean; 0 without steps
    correct = grade_leaf(completion, answer) == "correct"          # hiprm.grading against the reference
    reward  = rm_weight * r_rm + outcome_weight * correct

All completions of a call are scored in one `score_inputs` call (a GRPO step's completions share
their prompts' steps nowhere, but each completion's inputs are prefixes of each other, so a local
Scorer packs them into one token trie). Each call also reports, through TRL's `log_metric`, the
mean of each term, the accuracy of the sampled completions (when answers are given) and the
reward model's seconds, and appends one row per completion to `log_path` (if set), so every
reward handed to TRL can be recomputed from the file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hiprm.annotate.grow import grade_leaf
from hiprm.artifacts import append_jsonl
from hiprm.grading import GradingMode
from hiprm.policy.prompts import STYLES, PromptStyle
from hiprm.policy.steps import split_solution
from hiprm.rm.scorer import StepScorer, solution_inputs
from hiprm.search.aggregate import AGGREGATIONS, aggregate


def completion_text(completion: Any) -> str:
    """A TRL completion as text: a string as is; a conversational one's assistant content.

    >>> completion_text([{"role": "assistant", "content": "# Step 1\\nx"}])
    '# Step 1\\nx'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class StepRewards:
    """`reward(prompts=..., completions=..., question=[...], answer=[...], **kwargs) -> [float]`;
    see the module docstring. `scorer=None` with `outcome_weight > 0`: outcome-only rewards."""

    def __init__(self, scorer: StepScorer | None, aggregation: str = "min", *, rm_weight: float = 1.0,
                 outcome_weight: float = 0.0, style: PromptStyle | None = None, grading: GradingMode = "strict",
                 grade_timeout: float = 3.0, log_path: str | Path | None = None,
                 name: str = "hiprm") -> None:  # fmt: skip
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation: {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        if scorer is None and outcome_weight == 0:
            raise ValueError("a reward needs a scorer or outcome_weight > 0")
        self.scorer = scorer
        self.aggregation = aggregation
        self.rm_weight = rm_weight
        self.outcome_weight = outcome_weight
        self.style = style or STYLES["step"]
        self.grading = grading
        self.grade_timeout = grade_timeout
        self.log_path = Path(log_path) if log_path else None
        self.__name__ = name  # TRL names its metrics `rewards/<__name__>/mean`
        self.rm_seconds = 0.0
        self.calls = 0

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], question: Sequence[str] | None = None,
                 answer: Sequence[str] | None = None, log_metric: Callable[[str, float], None] | None = None,
                 trainer_state: Any = None, **kwargs: Any) -> list[float]:  # fmt: skip
        n = len(completions)
        if question is None or len(question) != n:
            raise ValueError("the dataset needs a `question` column (one per completion) for the reward model")
        if self.outcome_weight and (answer is None or len(answer) != n):
            raise ValueError("outcome_weight > 0 needs the dataset's reference `answer` column")
        texts = [completion_text(c) for c in completions]
        steps = [split_solution(t, self.style) for t in texts]
        rm = [0.0] * n
        step_rewards: list[list[float]] = [[] for _ in range(n)]
        start = time.perf_counter()
        if self.scorer is not None:
            scored = [i for i in range(n) if steps[i]]
            flat = self.scorer.score_inputs(solution_inputs([(question[i], steps[i]) for i in scored]))
            at = 0
            for i in scored:
                step_rewards[i] = [float(x) for x in flat[at : at + len(steps[i])]]
                at += len(steps[i])
                rm[i] = aggregate(step_rewards[i], self.aggregation)
        seconds = time.perf_counter() - start
        self.rm_seconds += seconds
        self.calls += 1
        correct: list[float | None] = [None] * n
        if answer is not None and len(answer) == n:
            correct = [float(grade_leaf(t, str(a), self.grade_timeout, self.grading)[0] == "correct")
                       for t, a in zip(texts, answer, strict=True)]  # fmt: skip
        rewards = [self.rm_weight * rm[i] + self.outcome_weight * (correct[i] or 0.0) for i in range(n)]
        if log_metric is not None:
            log_metric("reward_model_seconds", seconds)
            if self.scorer is not None:
                log_metric("reward/rm", sum(rm) / n)
            if correct[0] is not None:
                log_metric("accuracy", sum(c or 0.0 for c in correct) / n)
        if self.log_path is not None:
            step = getattr(trainer_state, "global_step", -1) + 1  # the optimizer step these rewards train
            for i in range(n):
                append_jsonl(self.log_path, {
                    "step": step, "question": question[i], "completion": texts[i], "steps": steps[i],
                    "step_rewards": step_rewards[i], "rm": rm[i], "correct": correct[i], "reward": rewards[i],
                })  # fmt: skip
        return rewards
