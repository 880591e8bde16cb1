"""Final-answer grading, one copy for data building (ORM labels), MCTS annotation and search.

`extract_answer(text)` finds the final answer in a solution ("# Answer" block, \\boxed{}, "####",
"the answer is"); `is_equivalent(pred, ref)` decides whether two final answers mean the same
(PRM800K-style normalisation, then math-verify under a hard time limit), and with
`mode="strict"` also whether the prediction is written in the reference's form (reduced fractions,
evaluated numbers; see `strict`); `grade(text, ref)` is both in one call. None of them raises
on odd input or runs for longer than its time limit.
"""

from hiprm.grading.equivalence import DEFAULT_TIMEOUT, GRADING_MODES, GradingMode, grade, is_equivalent
from hiprm.grading.extract import extract_answer

__all__ = ["DEFAULT_TIMEOUT", "GRADING_MODES", "GradingMode", "extract_answer", "grade", "is_equivalent"]
