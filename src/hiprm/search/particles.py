"""Particle filtering over steps, as its_hub defines it (`its_hub/algorithms/particle_gibbs.py`,
`ParticleFiltering`), with the resampling temperature of the paper's code (Puri et al. 2025).

N particles start empty. Each round every particle that has not stopped gets one sampled next
step, and its weight becomes logit(r) / temperature, r its aggregated step reward (not multiplied
across rounds: the reward model already sees the whole prefix); a stopped particle keeps its last
weight. Then all N are resampled, multinomially with replacement, with probabilities
softmax(weights), i.e. proportional to (r / (1 - r)) ** (1 / temperature): finished particles
stay in the pool and their copies stay finished. The answer: the particle with the highest
weight after the last round (the first on ties). `temperature=1` is its_hub's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hiprm.search.aggregate import best_index
from hiprm.search.rounds import Chunk, Prefix, TreeSearch

CLIP = 1e-7  # its_hub clips rewards to [1e-7, 1 - 1e-7] before the logit


def log_weight(reward: float, temperature: float = 1.0) -> float:
    """logit(r) / temperature, r clipped away from 0 and 1.

    >>> round(log_weight(0.9), 3), log_weight(0.5), round(log_weight(0.9, 0.5), 3)
    (2.197, 0.0, 4.394)
    """
    r = min(max(reward, CLIP), 1 - CLIP)
    return math.log(r / (1 - r)) / temperature


def resampling_probs(log_weights: Sequence[float]) -> list[float]:
    """softmax(log_weights). Worked example (its_hub, N=4): rewards [.9, .5, .2, .7] give odds
    [9, 1, .25, 2.33] and probabilities [.715, .079, .020, .185].

    >>> [round(p, 3) for p in resampling_probs([log_weight(r) for r in (.9, .5, .2, .7)])]
    [0.715, 0.079, 0.02, 0.185]
    """
    top = max(log_weights)
    e = [math.exp(w - top) for w in log_weights]
    s = sum(e)
    return [x / s for x in e]


def resample(log_weights: Sequence[float], rng: np.random.Generator) -> list[int]:
    """N draws with replacement from softmax(log_weights): the indices of the new particles."""
    n = len(log_weights)
    return [int(i) for i in rng.choice(n, size=n, replace=True, p=np.asarray(resampling_probs(log_weights)))]


class ParticleFilter(TreeSearch):
    def __init__(self, n: int, how: str, max_steps: int, temperature: float, seed: Sequence[int]):
        super().__init__(n, how, max_steps)
        self.temperature = temperature
        self.rng = np.random.default_rng(list(seed))
        self.particles: list[Prefix] = [() for _ in range(n)]
        self.stopped = [False] * n
        self.logw = [0.0] * n
        self._moving: list[int] = []
        self._ended: list[bool] = []

    def expand(self) -> list[Prefix]:
        self._moving = [i for i in range(self.n) if not self.stopped[i]]
        return [self.particles[i] for i in self._moving]

    def receive(self, chunks: list[Chunk]) -> list[Prefix]:
        self._ended = []
        for i, c in zip(self._moving, chunks, strict=True):
            self.particles[i] = (*self.particles[i], c.text)
            self._ended.append(self.ends(c, len(self.particles[i])))
        return [self.particles[i] for i in self._moving]

    def judge(self, scores: list[float]) -> None:
        self.rounds.append(list(scores))
        for i, ended, r in zip(self._moving, self._ended, scores, strict=True):
            self.logw[i] = log_weight(r, self.temperature)
            self.stopped[i] = ended
        picks = resample(self.logw, self.rng)
        self.kept.append(picks)
        self.particles = [self.particles[i] for i in picks]
        self.stopped = [self.stopped[i] for i in picks]
        self.logw = [self.logw[i] for i in picks]
        self.done = all(self.stopped)

    def outcome(self) -> tuple[Prefix, float]:
        k = best_index(self.logw)
        w = self.logw[k] * self.temperature
        return self.particles[k], 1 / (1 + math.exp(-w))
