"""Selection with a reward model: score aggregation, best-of-N over complete solutions, step-level
search, and the `hiprm eval` runner that writes samples, metrics, tables and plots.
"""
