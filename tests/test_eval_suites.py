"""The shipped eval suites pass on the shipped model, and fail when the persona's prompt is replaced
by a plain one: they measure the persona, not the model (real SmolLM2, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.evals import EvalTarget, ModelResponder, load_suite, run_evals
from bot.evals.results import EvalResults
from bot.models.local import LocalRuntime
from bot.models.local_loader import LoadedModel
from bot.models.provider import DefaultModelProvider
from bot.personas.loader import load_directory
from bot.settings import ModelSettings

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parent.parent
PERSONAS = REPO / "personas"
PLAIN = "You are a helpful assistant."
#: `python -m bot eval`'s default threshold: a newcomer's first eval is green at it.
THRESHOLD = 0.8
#: Runs per case: the captain samples (temperature 0.7); terse is greedy, one run says it all.
REPEAT = {"captain": 2, "terse": 1}


@pytest.fixture(scope="module")
def responder(local_model: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> ModelResponder:
    runtime = LocalRuntime(local_model, ModelSettings(max_queue=64))
    return ModelResponder(DefaultModelProvider(ModelSettings(), tmp_path_factory.mktemp("d"), runtime=runtime))


async def results_for(responder: ModelResponder, persona_id: str, *, plain: bool) -> EvalResults:
    persona = load_directory(PERSONAS).personas[persona_id]
    if plain:
        # A plain assistant talks until max_new_tokens (the persona stops itself early): 40 tokens are
        # plenty to miss every case (no pirate words, over 15 words) and keep the test short.
        short = persona.generation.model_copy(update={"max_new_tokens": 40})
        persona = persona.model_copy(update={"system_prompt": PLAIN, "examples": (), "generation": short})
    suite = load_suite(PERSONAS, persona_id)
    assert len(suite.cases) >= 3
    target = EvalTarget(persona, "plain" if plain else "default", suite.cases)
    return await run_evals([target], responder, repeat=REPEAT[persona_id], concurrency=8)


@pytest.mark.parametrize("persona_id", sorted(REPEAT))
async def test_suite_passes_with_the_persona_and_fails_with_a_plain_prompt(
    responder: ModelResponder, persona_id: str
) -> None:
    shipped = await results_for(responder, persona_id, plain=False)
    assert shipped.below(THRESHOLD) == [], shipped.render(THRESHOLD)
    plain = await results_for(responder, persona_id, plain=True)
    # Every case must tell the persona from a plain assistant, not just the suite on average.
    for (_, _, case), rate in plain.by_case().items():
        assert rate.passed == 0, f"{persona_id}/{case} passes without the persona's prompt:\n{plain.render(THRESHOLD)}"
