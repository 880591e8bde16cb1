"""Diverse verifier tree search, as search-and-learn defines it
(`sal/search/diverse_verifier_tree_search.py`).

N/M independent subtrees. Each round, every open subtree samples M candidate next steps and keeps
the one with the highest aggregated reward (`select_candidate`); nothing is compared across
subtrees. A subtree ends when its chosen step finishes (an answer, the end marker, an empty step)
or at `max_steps`. The answer: the subtree whose chosen path scored highest at its last
expansion (the first on ties); that is search-and-learn's argmax over the M siblings of every
subtree's last expansion, since each subtree's chosen candidate is the first maximum among its
siblings. With one subtree of width N it is the paper's greedy step search.
"""

from __future__ import annotations

from collections.abc import Sequence

from hiprm.search.aggregate import best_index
from hiprm.search.rounds import Chunk, Prefix, TreeSearch


def select_candidate(scores: Sequence[float]) -> int:
    """The candidate a subtree keeps: the highest score, the first on ties (`np.argmax`).

    Worked example (N=4, M=2: two subtrees): subtree 0 scores [.7, .4] and keeps candidate 0,
    subtree 1 scores [.2, .5] and keeps candidate 1.

    >>> select_candidate([.7, .4]), select_candidate([.2, .5]), select_candidate([.5, .5])
    (0, 1, 0)
    """
    return best_index(scores)


class DVTS(TreeSearch):
    def __init__(self, n: int, width: int, how: str, max_steps: int):
        super().__init__(n, how, max_steps)
        self.width = width
        self.trees: list[Prefix] = [() for _ in range(max(1, n // width))]
        self.open = [True] * len(self.trees)
        self.last = [float("nan")] * len(self.trees)
        self._cands: list[list[Prefix]] = []
        self._ended: list[list[bool]] = []

    def expand(self) -> list[Prefix]:
        return [t for t, o in zip(self.trees, self.open, strict=True) if o for _ in range(self.width)]

    def receive(self, chunks: list[Chunk]) -> list[Prefix]:
        self._cands, self._ended = [], []
        it = iter(chunks)
        for t, o in zip(self.trees, self.open, strict=True):
            if o:
                mine = [next(it) for _ in range(self.width)]
                self._cands.append([(*t, c.text) for c in mine])
                self._ended.append([self.ends(c, len(t) + 1) for c in mine])
        return [p for group in self._cands for p in group]

    def judge(self, scores: list[float]) -> None:
        self.rounds.append(list(scores))
        at, g, kept = 0, 0, []
        for k, o in enumerate(self.open):
            if not o:
                continue
            mine = scores[at : at + self.width]
            pick = select_candidate(mine)
            kept.append(pick)
            self.trees[k] = self._cands[g][pick]
            self.last[k] = mine[pick]
            self.open[k] = not self._ended[g][pick]
            at += self.width
            g += 1
        self.kept.append(kept)
        self.done = not any(self.open)

    def outcome(self) -> tuple[Prefix, float]:
        k = best_index(self.last)
        return self.trees[k], self.last[k]
