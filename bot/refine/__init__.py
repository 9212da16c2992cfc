"""The closed refinement loop: ratings -> dataset -> candidates -> offline gate -> canary ->
sequential decision -> promote or roll back. `python -m bot refine --help`.

    dataset.py       rated replies of the current version as replay items, split by conversation
    proposers/       pluggable candidate sources: few-shot selection, instruction rewrite, adapters
    candidates.py    a candidate = a change a variant can carry + provenance + diff
    evaluation.py    replay with build_prompt (the production recipe) and pairwise judging
    judge.py         the pairwise judge (both orders) and the per-item score
    gate.py          the offline gate: test suite (no regression) + validation lift with intervals
    personafile.py   comment-preserving, validated, atomic edits of the persona file
    experiments.py   experiment state, per-conversation arms, the anytime-valid decision
    manager.py       start / check / promote / roll back, journaled
    store.py         experiment, journal and history in Redis
    pipeline.py      the offline steps with a workspace on disk
    watcher.py       the bot's supervised periodic decision task
    models.py        the optimiser and judge models from settings
    errors.py        the error tree
"""

from bot.refine.candidates import Candidate, Change
from bot.refine.dataset import Dataset, ReplayItem, build_dataset
from bot.refine.errors import (
    ExperimentError,
    GateRejected,
    NotEnoughData,
    OptimizerError,
    PersonaFileChanged,
    RefineError,
)
from bot.refine.experiments import Decision, Experiment
from bot.refine.gate import GateReport, run_gate
from bot.refine.manager import ExperimentManager, ExperimentPolicy
from bot.refine.proposers import Attempt, Proposer
from bot.refine.store import JournalEntry, RedisRefineStore, RefineStore

__all__ = [
    "Attempt",
    "Candidate",
    "Change",
    "Dataset",
    "Decision",
    "Experiment",
    "ExperimentError",
    "ExperimentManager",
    "ExperimentPolicy",
    "GateRejected",
    "GateReport",
    "JournalEntry",
    "NotEnoughData",
    "OptimizerError",
    "PersonaFileChanged",
    "Proposer",
    "RedisRefineStore",
    "RefineError",
    "RefineStore",
    "ReplayItem",
    "build_dataset",
    "run_gate",
]
