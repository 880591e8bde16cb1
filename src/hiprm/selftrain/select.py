"""Pick self-training trajectories from trees and write them in the policy's own step format.

Input: `Tree`s (`hiprm.tree.read_trees`: hiprm `trees.jsonl` from `hiprm annotate`,
HNC-merged trees, or OpenR MCTS trees). Output: `Trajectory`s, then (prompt, completion) text.

Selection (paper Sec. 4.4: "trajectories whose every step has MC-score > 0.9 and whose final
answer is correct"; the reference code uses 0.95): a root-to-leaf path is kept when

- its leaf's outcome is `correct`, and
- `rule="all_steps"` (default): every step node on it (the root is no step) has mc > min_mc,
  or `rule="mean"`: the mean of its step MC-scores is > min_mc;
- (`inclusive=true` turns > into >=).

Merged nodes (HNC) are ordinary nodes here. Paths with the same step texts (after white-space
normalisation, `normalize_step`) in the same problem are kept once. `split_trajectories` splits
by problem with the one shared rule (`hiprm.data.build.split_by_problem`).

Text: the prompt is the paper's A.3 self-training prompt, `STYLES["step"].prompt_for(question,
"", render_chat)`, and the completion is what that prompt asks for and what
`hiprm.policy.steps.split_solution` cuts back into the same steps:

    # Step 1
    <step 1>

    # Step 2
    <step 2>

    # Answer

    <answer>
    # END!

Step texts may already start with their `# Step k` header (hiprm annotate keeps them) or be
bare (OpenR): any header is removed and the right one written, so each step has exactly one.
The final step usually holds `# Answer\\n\\n...` already; otherwise the leaf's answer is added
(a final step that is nothing but the answer block joins the step before it, as the parser
would read it). A path with `# Answer` in an earlier step is rejected (`answer_before_end`).

>>> from hiprm.tree import Tree, recompute
>>> t = Tree.new("p1", "1+1?", "2")
>>> a = t.add(t.root.id, "# Step 1\\nWe add.")
>>> _ = t.add(a.id, "1+1=2, so \\\\boxed{2}.", outcome="correct", answer="2")
>>> _ = t.add(a.id, "1+1=3.", outcome="wrong", answer="3")
>>> recompute(t)
>>> picked, stats = select_trajectories([t], min_mc=0.4)
>>> print(format_completion(picked[0].steps, picked[0].answer))
# Step 1
We add.
<BLANKLINE>
# Step 2
1+1=2, so \\boxed{2}.
<BLANKLINE>
# Answer
<BLANKLINE>
2
# END!
>>> stats["kept"], stats["rejected"]
(1, {'wrong_leaf': 1})
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from hiprm.data.build import split_by_problem
from hiprm.policy.prompts import END, STYLES
from hiprm.policy.steps import ANSWER_MARK
from hiprm.tree import Tree, iter_paths, normalize_step

Rule = Literal["all_steps", "mean"]
RULES = ("all_steps", "mean")
_HEADER = re.compile(r"^\s*#\s*Step\s*\d+\s*:?[ \t]*\n?", re.IGNORECASE)


@dataclass
class Trajectory:
    """One selected root-to-leaf path: step texts (as stored), their MC-scores, the leaf's answer."""

    problem_id: str
    question: str
    reference: str
    answer: str
    steps: list[str]
    mcs: list[float | None]
    source: str = ""
    node_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id, "question": self.question, "reference": self.reference,
            "answer": self.answer, "steps": self.steps, "mcs": self.mcs, "source": self.source,
            "node_ids": self.node_ids,
        }  # fmt: skip


def _passes(mcs: list[float | None], min_mc: float, rule: str, inclusive: bool) -> bool:
    if not mcs or any(m is None for m in mcs):
        return False
    vals = [float(m) for m in mcs]  # type: ignore[arg-type]
    score = min(vals) if rule == "all_steps" else sum(vals) / len(vals)
    return score >= min_mc if inclusive else score > min_mc


def select_trajectories(
    trees: Iterable[Tree], min_mc: float = 0.9, rule: Rule = "all_steps", inclusive: bool = False
) -> tuple[list[Trajectory], dict[str, Any]]:
    """Trajectories that pass the rule, deduplicated per problem; plus counts of what was dropped.

    stats: {"trees", "paths", "kept", "duplicates", "rejected": {reason: count}} with reasons
    `wrong_leaf` (leaf outcome not correct), `low_mc`, `answer_before_end`, `empty`.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not 0.0 <= min_mc <= 1.0:
        raise ValueError(f"min_mc must be in [0, 1], got {min_mc}")
    kept: list[Trajectory] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    rejected: dict[str, int] = {}
    n_trees = n_paths = duplicates = 0
    for tree in trees:
        n_trees += 1
        for path in iter_paths(tree):
            n_paths += 1
            nodes, leaf = path[1:], path[-1]
            reason = None
            if not nodes or not any(n.step.strip() for n in nodes):
                reason = "empty"
            elif leaf.outcome != "correct":
                reason = "wrong_leaf"
            elif not _passes([n.mc for n in nodes], min_mc, rule, inclusive):
                reason = "low_mc"
            elif any(ANSWER_MARK in n.step for n in nodes[:-1]):
                reason = "answer_before_end"
            if reason is not None:
                rejected[reason] = rejected.get(reason, 0) + 1
                continue
            key = (tree.problem_id, tuple(normalize_step(strip_header(n.step)) for n in nodes))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            kept.append(Trajectory(
                tree.problem_id, tree.question, tree.answer, str(leaf.answer or tree.answer),
                [n.step for n in nodes], [n.mc for n in nodes], tree.source, [n.id for n in nodes],
            ))  # fmt: skip
    stats = {"trees": n_trees, "paths": n_paths, "kept": len(kept), "duplicates": duplicates,
             "rejected": dict(sorted(rejected.items()))}  # fmt: skip
    return kept, stats


def split_trajectories(
    trajectories: list[Trajectory], val_fraction: float, seed: int
) -> tuple[list[Trajectory], list[Trajectory]]:
    """(train, val), whole problems on one side (the shared `split_by_problem` rule)."""
    val_ids = split_by_problem([t.problem_id for t in trajectories], val_fraction, seed)
    return [t for t in trajectories if t.problem_id not in val_ids], [
        t for t in trajectories if t.problem_id in val_ids
    ]


def strip_header(step: str) -> str:
    """A step without its leading `# Step k` header (and without a trailing `# END!`).

    >>> strip_header("# Step 3\\n x = 1 \\n# END!")
    'x = 1'
    """
    text = _HEADER.sub("", step, count=1)
    i = text.find(END)
    return (text if i < 0 else text[:i]).strip()


def _answer_block(text: str, answer: str) -> tuple[str, str]:
    """(body, `# Answer\\n\\n<value>`) of a final step; the value found there or `answer`."""
    i = text.find(ANSWER_MARK)
    if i < 0:
        return text.strip(), f"{ANSWER_MARK}\n\n{answer.strip()}"
    value = text[i + len(ANSWER_MARK) :].strip()
    return text[:i].strip(), f"{ANSWER_MARK}\n\n{value or answer.strip()}"


def completion_steps(steps: list[str], answer: str) -> list[str]:
    """The steps as `split_solution` returns them from `format_completion(steps, answer)`.

    >>> completion_steps(["a=1", "# Step 2\\nb=2\\n\\n# Answer\\n\\n3"], "3")
    ['# Step 1\\na=1', '# Step 2\\nb=2\\n\\n# Answer\\n\\n3']
    >>> completion_steps(["a=1", "# Answer\\n\\n3"], "3")
    ['# Step 1\\na=1\\n\\n# Answer\\n\\n3']
    """
    bodies = [strip_header(s) for s in steps]
    body, block = _answer_block(bodies[-1], answer)
    bodies = [b for b in bodies[:-1] if b] + ([body] if body else [])
    if not bodies:
        raise ValueError("a trajectory needs at least one step with text")
    out = [f"# Step {k}\n{b}" for k, b in enumerate(bodies, start=1)]
    out[-1] = f"{out[-1]}\n\n{block}"
    return out


def format_completion(steps: list[str], answer: str) -> str:
    """The policy's own answer text for these steps, ending in `# END!` (see module docstring)."""
    return "\n\n".join(completion_steps(steps, answer)) + f"\n{END}"


def training_text(trajectory: Trajectory, render_chat: Callable[[str], str] | None = None) -> tuple[str, str]:
    """(prompt, completion): the A.3 step prompt for the question, and the formatted solution."""
    prompt = STYLES["step"].prompt_for(trajectory.question, "", render_chat)
    return prompt, format_completion(trajectory.steps, trajectory.answer)
