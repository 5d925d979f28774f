"""``calm demo``: the whole workflow end to end on a small corpus, sized for 2 CPU cores.

Stages, each with its own progress display: tokenize (document-level split; held-out articles are
never trained on, not even by the tokenizer) -> train the codec -> train a CALM with the energy
head and an AR baseline on the same backbone and the same token stream -> evaluate codec
reconstruction and BrierLM of both on held-out blocks -> sample continuations of held-out prompts
at T=1 and T=0.5 -> write ``report.md``, ``results.json``, ``metrics.jsonl`` and a plot.

The package: :mod:`~calm_core.demo.config` (the settings), :mod:`~calm_core.demo.stages` (the
stages and :func:`run_demo`), :mod:`~calm_core.demo.result` (what was measured) and
:mod:`~calm_core.demo.report` (the table, ``report.md`` and the other files).

What is unusual:

* Every stage calls the same library functions the separate verbs use (``write_data_dir``, the
  recipes' builders, :class:`~calm_core.training.Trainer`, ``reconstruction_report``, the Brier
  estimators, ``generate``); no subprocesses.
* Training stages have both a step count and a wall-clock budget: the step count keeps runs
  comparable, the budget keeps the demo inside its time on slow machines (a stopped stage says so
  in the report). The AR baseline trains for the steps the CALM actually took (equal tokens).
* ``--quick`` is the same pipeline with tiny budgets, for smoke tests; its numbers mean nothing.
"""

from __future__ import annotations

from calm_core.demo.config import (
    QUICK_OVERRIDES,
    DemoCodecConfig,
    DemoConfig,
    DemoEvalConfig,
    DemoLMConfig,
)
from calm_core.demo.report import next_steps, summary_table, write_outputs
from calm_core.demo.result import DemoResult, dump_json
from calm_core.demo.stages import run_demo, training_flops

__all__ = [
    "QUICK_OVERRIDES",
    "DemoCodecConfig",
    "DemoConfig",
    "DemoEvalConfig",
    "DemoLMConfig",
    "DemoResult",
    "dump_json",
    "next_steps",
    "run_demo",
    "summary_table",
    "training_flops",
    "write_outputs",
]
