"""THE command registry: each `hiprm` subcommand's runner module, config class, run function and
positional field. Plain strings, nothing imported: the CLI imports a runner only when its command
runs (so `hiprm --help` stays fast), and the quickstart runs stages by the same names.
"""

from __future__ import annotations

# name -> (module, config class, run function, positional field or None)
COMMANDS: dict[str, tuple[str, str, str, str | None]] = {
    "data build": ("hiprm.data.build", "BuildConfig", "run", None),
    "data stats": ("hiprm.data.stats", "DataStatsConfig", "run", "path"),
    "data export-trl": ("hiprm.data.export", "ExportConfig", "run", "path"),
    "rm train": ("hiprm.rm.train", "TrainConfig", "run", None),
    "rm score": ("hiprm.rm.score_file", "ScoreConfig", "run", None),
    "rm eval": ("hiprm.rm.evaluate", "RMEvalConfig", "run", None),
    "rm vllm-command": ("hiprm.rm.remote", "VllmCommandConfig", "vllm_command", "model"),
    "serve": ("hiprm.serve.app", "ServeConfig", "run", None),
    "eval": ("hiprm.search.run", "EvalConfig", "run", None),
    "annotate": ("hiprm.annotate.run", "AnnotateConfig", "run", None),
    "annotate stats": ("hiprm.annotate.stats", "TreeStatsConfig", "run", "path"),
    "annotate hnc": ("hiprm.annotate.hnc_run", "HNCConfig", "run", None),
    "selftrain": ("hiprm.selftrain.train", "SelftrainConfig", "run", None),
    "rl": ("hiprm.rl.train", "RLConfig", "run", None),
    "quickstart": ("hiprm.quickstart", "QuickstartConfig", "run", "plan"),
    "report": ("hiprm.report", "ReportConfig", "run", "run_dir"),
}
