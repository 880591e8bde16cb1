"""hiprm: hierarchical process reward models (HRM + HNC) for LLM math reasoning.

Stages live in sub-packages (data, grading, policy, rm, annotate, search, selftrain, serve) and
talk through files on disk; `hiprm.cli` is the command line. Importing the package is cheap:
nothing heavy (torch, transformers) is imported until a stage that needs it is used.
"""

__version__ = "0.1.0"
