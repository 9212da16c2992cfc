"""The openai backend through langchain-openai against a local OpenAI-compatible server (SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.app import build_runtime
from bot.domain.messages import ChatRequest, Speaker
from bot.engine import TextDelta
from bot.errors import ModelError, PersonaNotFound
from bot.settings import Settings

PERSONA = """\
id: remote
name: Remo
system_prompt: You are Remo.
model:
  backend: openai
  name: served-model
generation:
  temperature: 0.2
  max_new_tokens: 40
  stop: ["END"]
"""


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail = False

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.fail:
            return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in ["Hello", " from", " the", " server"]:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        usage = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": body["model"], "choices": [],
                 "usage": {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}}
        await response.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        return response


@pytest.fixture
async def server(unused_tcp_port: int) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield fake, f"http://127.0.0.1:{unused_tcp_port}/v1"
    await runner.cleanup()


async def test_streams_from_an_openai_compatible_server(settings: Settings, server: tuple[FakeOpenAI, str]) -> None:
    fake, url = server
    Path(settings.personas_dir, "remote.yaml").write_text(PERSONA)
    cfg = settings.model_copy(update={"model": settings.model.model_copy(
        update={"openai_base_url": url, "openai_api_key": "sk-test-key"})})
    async with build_runtime(cfg) as rt:
        request = ChatRequest("r1", Speaker("u", "Sam"), "hi there", persona_id="remote")
        events = [e async for e in rt.engine.stream(request)]
        deltas = [e.text for e in events if isinstance(e, TextDelta)]
        assert deltas == ["Hello", " from", " the", " server"]
        record = events[-1].record  # type: ignore[union-attr]
        assert (record.backend, record.model) == ("openai", "served-model")
        assert (record.prompt_tokens, record.completion_tokens) == (17, 4)
        sent = fake.requests[0]
        assert sent["model"] == "served-model" and sent["stream"] is True
        assert sent["temperature"] == 0.2 and sent["max_completion_tokens"] == 40 and sent["stop"] == ["END"]
        assert sent["repetition_penalty"] == 1.1  # extra_body for self-hosted servers
        assert sent["messages"][0] == {"role": "system", "content": "You are Remo."}
        assert fake.headers[0]["Authorization"] == "Bearer sk-test-key"

        fake.fail = True
        with pytest.raises(ModelError):
            await rt.engine.reply(ChatRequest("r1", Speaker("u", "Sam"), "again", persona_id="remote"))


def write_adapter(directory: Path, peft_type: str) -> None:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
    save_file({"w": torch.zeros(2, 2)}, str(directory / "adapter_model.safetensors"))


async def test_lora_personas_use_the_served_adapter_and_soft_prompts_are_refused(
    settings: Settings, server: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    fake, url = server
    write_adapter(tmp_path / "adapters" / "pirate-lora", "LORA")
    write_adapter(tmp_path / "adapters" / "pirate-soft", "PROMPT_TUNING")
    for name in ("pirate-lora", "pirate-soft"):
        persona = PERSONA.replace("id: remote", f"id: {name}") + f"adapter: {tmp_path / 'adapters' / name}\n"
        Path(settings.personas_dir, f"{name}.yaml").write_text(persona)
    cfg = settings.model_copy(update={"model": settings.model.model_copy(update={"openai_base_url": url}),
                                      "adapters_dir": tmp_path / "adapters"})  # adapters must live inside it
    async with build_runtime(cfg) as rt:
        assert "soft prompts cannot be served" in rt.personas.disabled["pirate-soft"]
        done = await rt.engine.reply(ChatRequest("r", Speaker("u", "Sam"), "hi", persona_id="pirate-lora"))
        assert fake.requests[-1]["model"] == "pirate-lora"
        assert done.record.adapter_hash is not None and len(done.record.adapter_hash) == 16
        with pytest.raises(PersonaNotFound, match=r"'pirate-soft' is disabled: .*soft prompts cannot be served"):
            await rt.engine.reply(ChatRequest("r", Speaker("u", "Sam"), "hi", persona_id="pirate-soft"))
        assert (await rt.engine.reply(ChatRequest("r2", Speaker("u", "Sam"), "hi", persona_id="assistant"))).text
