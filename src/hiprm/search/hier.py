"""`hier`: HRM's view at inference, what none of search-and-learn, its_hub or OpenR has.

HRM is trained on single steps and on consecutive pairs merged into one step, so it can judge a
step that repairs its predecessor as the pair. `prm-hier` / `hrm-hier` is the paper's greedy step
search (keep the best of N candidate next steps, `hiprm.search.dvts` with one subtree of width N)
in which each candidate after the first step is scored merged with the step before it:

    reward(candidate | steps s_0..s_{k-1}) = RM(question, s_0..s_{k-2}, s_{k-1} + "\\n\\n" + candidate)

(`hiprm.search.rounds.hier_inputs`), against `prm-step` / `hrm-step`, which score the candidate
alone after all previous steps. Any reward model works; the measurement that matters is HRM's.
"""

from __future__ import annotations

from hiprm.search.dvts import DVTS
from hiprm.search.rounds import hier_inputs


def hier_search(n: int, max_steps: int) -> DVTS:
    """The greedy best-of-`n` step search that `hier` scores with `hier_inputs`.

    >>> s = hier_search(4, 5); (len(s.trees), s.width, s.how)
    (1, 4, 'last')
    """
    return DVTS(n, n, "last", max_steps)


__all__ = ["hier_inputs", "hier_search"]
