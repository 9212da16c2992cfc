"""The closed refinement loop: ratings -> dataset -> candidates -> offline gate -> canary ->
sequential decision -> promote or roll back. `python -m bot refine --help`.

Nothing is imported here: the bot imports only what it runs (the watcher), so start-up stays quick.

    dataset.py       rated replies of the current version as replay items, split by conversation
    proposers/       pluggable candidate sources: few-shot selection, instruction rewrite, adapters
    candidates.py    a candidate = a change a variant can carry + provenance + diff
    evaluation.py    replay with build_prompt (the production recipe) and pairwise judging
    judge.py         the pairwise judge (both orders) and the per-item score
    gate.py          the offline gate: test suite (no regression) + validation lift with intervals
    personafile.py   comment-preserving, validated, atomic edits of the persona file
    experiments.py   experiment state, per-conversation arms, the anytime-valid decision
    manager.py       start / check / promote / roll back, journaled
    store.py         the store port (experiment, journal, history); redis_store.py: in Redis
    pipeline.py      the offline steps with a workspace on disk
    watcher.py       the bot's supervised periodic decision task
    models.py        the optimiser and judge models from settings
    errors.py        the error tree
"""
