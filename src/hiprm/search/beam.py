"""Beam search over steps, as search-and-learn defines it (`sal/search/beam_search.py`).

N beams start empty. Each round every active beam gets one sampled next step; the beams that
finish (an answer, the end marker, an empty step, or `max_steps`) leave for the completed list in
the order they finish; of the others the global top N/M by aggregated step reward survive
(`select_beams`), and the survivors are tiled back to N copies (`[a, b] -> [a, b, a, b]`), so
each is continued about M times with independent samples. `filter_duplicates` drops a beam whose
text repeats an earlier one's before the cut. The answer: of the first N beams to finish, the one
with the highest aggregated reward (the first on ties).

Differences from search-and-learn, on purpose: its last round drops the step delimiter and
samples every remaining beam to the end, where here a beam still open at `max_steps` ends there
(truncated, without an answer); its `lookahead` is generated but never scored in beam search
(only in DVTS), where here both score the candidate with its greedy lookahead steps. A partial
beam's reward is read at its last real step (search-and-learn's PRM inputs end with an empty step
after the trailing delimiter).
"""

from __future__ import annotations

from collections.abc import Sequence

from hiprm.search.rounds import Chunk, Prefix, TreeSearch


def select_beams(scores: Sequence[float], keep: int) -> list[int]:
    """Indices (ascending) of the `keep` highest scores: search-and-learn's
    `np.argsort(scores)[-keep:]` with a stable sort, so on a tie the later index wins; `keep == 0`
    (N < M) keeps every beam, as its `[-0:]` slice does.

    Worked example (N=4, M=2, keep 2): scores [.6, .9, .3, .7] keep beams 1 and 3; a three-way
    tie [.5, .5, .5] keeps 1 and 2.

    >>> select_beams([.6, .9, .3, .7], 2), select_beams([.5, .5, .5], 2), select_beams([.2, .1], 0)
    ([1, 3], [1, 2], [0, 1])
    """
    order = sorted(range(len(scores)), key=lambda i: scores[i])  # stable: equal scores keep index order
    return sorted(order[-keep:]) if keep > 0 else list(range(len(scores)))


def tile(items: Sequence[Prefix], n: int) -> list[Prefix]:
    """`items` repeated cyclically to length n (search-and-learn's `(active * k)[:n]`).

    >>> tile([("a",), ("b",), ("c",)], 4)
    [('a',), ('b',), ('c',), ('a',)]
    """
    return [items[i % len(items)] for i in range(n)] if items else []


class BeamSearch(TreeSearch):
    def __init__(self, n: int, width: int, how: str, max_steps: int, filter_duplicates: bool = False):
        super().__init__(n, how, max_steps)
        self.width = width
        self.filter_duplicates = filter_duplicates
        self.active: list[Prefix] = [() for _ in range(n)]
        self.completed: list[tuple[Prefix, float]] = []
        self._cands: list[Prefix] = []
        self._ended: list[bool] = []

    def expand(self) -> list[Prefix]:
        return list(self.active)

    def receive(self, chunks: list[Chunk]) -> list[Prefix]:
        self._cands = [(*p, c.text) for p, c in zip(self.active, chunks, strict=True)]
        self._ended = [self.ends(c, len(p) + 1) for p, c in zip(self.active, chunks, strict=True)]
        return self._cands

    def judge(self, scores: list[float]) -> None:
        self.rounds.append(list(scores))
        open_: list[tuple[Prefix, float]] = []
        for path, ended, score in zip(self._cands, self._ended, scores, strict=True):
            (self.completed if ended else open_).append((path, score))
        if self.filter_duplicates:
            seen: set[Prefix] = set()
            open_ = [(p, s) for p, s in open_ if not (p in seen or seen.add(p))]
        keep = select_beams([s for _, s in open_], self.n // self.width)
        self.kept.append(keep)
        self.active = tile([open_[i][0] for i in keep], self.n)
        # Only the first N to finish can be chosen: once N have, later rounds change nothing.
        self.done = not self.active or len(self.completed) >= self.n

    def outcome(self) -> tuple[Prefix, float]:
        first = self.completed[: self.n]
        return max(first, key=lambda ps: ps[1]) if first else ((), float("nan"))
