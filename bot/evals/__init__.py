"""Prompt test suites: declare cases next to a persona, run them against the real backend,
get pass rates per persona/variant/test and an exit code for CI (`python -m bot eval`)."""

from bot.evals.cases import EvalCase, EvalSuite
from bot.evals.loader import load_suite, load_suite_file
from bot.evals.results import CaseRun, EvalResults, PassRate
from bot.evals.runner import EvalTarget, ModelResponder, bound_judge, run_evals

__all__ = [
    "CaseRun",
    "EvalCase",
    "EvalResults",
    "EvalSuite",
    "EvalTarget",
    "ModelResponder",
    "PassRate",
    "bound_judge",
    "load_suite",
    "load_suite_file",
    "run_evals",
]
