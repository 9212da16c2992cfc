"""ChatEngine: the transport-agnostic core. Persona + memory + model + feedback, via ports only.

    engine = ChatEngine(personas, memory, feedback, models, settings.memory)
    async for event in engine.stream(request):
        if isinstance(event, TextDelta): show(event.text)
        else: finished(event)          # ReplyFinished: reply id, full text, record

One conversation handles one message at a time (a lock per conversation id); different
conversations run concurrently.

Stores are reached through `JournaledStores`: a shown reply, its memory turns, its message links and
every rating are kept even while Redis is down (journaled, replayed when it is back), and a reply is
generated without remembered turns when memory cannot be loaded, rather than not at all.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage

from bot.domain.character import choose_greeting, greeting_options
from bot.domain.feedback import FailedReply, Rating, ReplyRecord, new_reply_id, prompt_hash
from bot.domain.messages import STORED_NAME_LENGTH, ChatMessage, ChatRequest, StoredTurn, clean_name
from bot.domain.persona import Persona
from bot.domain.prompt import AssembledPrompt, PromptContext, build_prompt, render
from bot.domain.ratings import MessageRating, RateOutcome
from bot.domain.text import valid_request, valid_text
from bot.domain.variants import choose_variant
from bot.domain.writes import AppendTurns
from bot.errors import BotError, ModelBusy, ModelError
from bot.journal.stores import JournaledStores
from bot.ports import BoundModel, FeedbackLog, MemoryStore, ModelProvider, PersonaRegistry
from bot.settings import MemorySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReplyFinished:
    reply_id: str
    text: str
    persona: Persona
    record: ReplyRecord
    #: Memory could not be read (Redis is down): the reply was written without the earlier conversation.
    without_memory: bool = False


ReplyEvent = TextDelta | ReplyFinished


_LANGCHAIN_KINDS: dict[str, type[BaseMessage]] = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}


@functools.lru_cache(maxsize=4096)
def _langchain_message(role: str, content: str) -> BaseMessage:
    # A prompt repeats the persona's system prompt and examples and most of the last prompt's history,
    # and a LangChain message costs several microseconds of pydantic validation to build: the same
    # message is built once and shared. Chat models treat their input messages as read-only (LangChain
    # copies before normalizing content; the local and OpenAI backends only read them).
    return _LANGCHAIN_KINDS[role](content=content)


def to_langchain(messages: list[ChatMessage]) -> list[BaseMessage]:
    return [_langchain_message(m.role, m.content) for m in messages]


def _honour_cancellation() -> None:
    """Raise CancelledError if this task was cancelled. redis-py's asyncio client can swallow a
    cancellation that lands while a command is in flight (redis/redis-py#2028): a stopped reply
    (a deleted message, /forget) must not go on to generate and be recorded anyway."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ConversationLocks:
    """One asyncio.Lock per conversation id; unused locks are garbage-collected."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def get(self, conversation_id: str) -> asyncio.Lock:
        lock = self._locks.get(conversation_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[conversation_id] = lock
        return lock

    def busy(self, conversation_id: str) -> bool:
        lock = self._locks.get(conversation_id)
        return lock is not None and lock.locked()


class ChatEngine:
    def __init__(
        self,
        personas: PersonaRegistry,
        memory: MemoryStore,
        feedback: FeedbackLog,
        models: ModelProvider,
        memory_defaults: MemorySettings,
        *,
        default_persona: str,
        bot_name: str = "",
        stores: JournaledStores | None = None,
    ) -> None:
        self.personas = personas
        self.memory = memory
        self.feedback = feedback
        #: Reads and writes of memory and feedback (journaled when the composition root gives a journal).
        self.stores = stores or JournaledStores(memory, feedback)
        self.models = models
        self.memory_defaults = memory_defaults
        self.default_persona = default_persona
        self.bot_name = bot_name
        self.locks = ConversationLocks()

    # -- public API ---------------------------------------------------------------------------

    def persona_for(self, request: ChatRequest) -> Persona:
        return self.personas.get(request.persona_id or self.default_persona)

    async def reply(self, request: ChatRequest) -> ReplyFinished:
        """Generate a whole reply (no streaming)."""
        finished: ReplyFinished | None = None
        # Run the stream to its end rather than returning at ReplyFinished: an abandoned generator
        # would release the conversation lock only when the event loop finalizes it (a thread-safe
        # wake-up and an extra task per message), after this call has already returned.
        async for event in self.stream(request):
            if isinstance(event, ReplyFinished):
                finished = event
        if finished is None:  # pragma: no cover - stream always finishes
            raise ModelError("the model stream ended without a reply")
        return finished

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Stream one reply: TextDelta events, then exactly one ReplyFinished.

        Raises BotError subclasses (PersonaNotFound, ModelError, PromptTooLong; a StoreError only when
        Redis is down and the journal cannot keep the reply either).
        """
        request = valid_request(request)  # any text in: undecodable code points never reach a store
        base = self.persona_for(request)
        variant = self.variant_for(base, request.conversation_id)
        persona = base.with_variant(variant)  # the variant's prompt, generation and adapter
        async with self.locks.get(request.conversation_id):
            bound = self.models.bind(persona)
            max_turns, max_tokens, ttl = self._memory_limits(persona)
            # Each persona remembers its own part of a conversation: after a persona switch the new
            # voice must not read the old persona's replies as its own.
            history = [
                t for t in await self.stores.history(request.conversation_id, max_turns) if t.persona_id == persona.id
            ]
            _honour_cancellation()
            without_memory = max_turns > 0 and not self.stores.memory_available
            greeting = self.greeting_index(persona, request.conversation_id, group=request.group)
            context = PromptContext(
                user_name=request.speaker.name,
                channel=request.channel_name,
                server=request.server_name,
                bot_name=self.bot_name,
            )
            prompt = build_prompt(
                persona,
                history,
                request.text,
                context,
                context_window=bound.context_window,
                count=bound.count_tokens,
                max_turns=max_turns,
                max_history_tokens=max_tokens,
                speaker_id=request.speaker.id,
                greeting=greeting,
            )
            started = time.perf_counter()
            first_token: float | None = None
            parts: list[str] = []
            usage: dict[str, int] = {}
            async for chunk in self._generate(bound, prompt, failed=self._failure(persona, variant, request)):
                if chunk.usage_metadata:
                    usage = {k: int(v) for k, v in chunk.usage_metadata.items() if isinstance(v, int)}
                text = valid_text(chunk.content) if isinstance(chunk.content, str) else ""
                if text:
                    if first_token is None:
                        first_token = time.perf_counter() - started
                    parts.append(text)
                    yield TextDelta(text)
            reply_text = "".join(parts).strip()
            record = ReplyRecord(
                reply_id=new_reply_id(),
                conversation_id=request.conversation_id,
                user_id=request.speaker.id,
                persona_id=persona.id,
                persona_version=persona.version,
                model=bound.model_name,
                backend=bound.backend,
                adapter=bound.adapter,
                adapter_hash=bound.adapter_hash,
                generation=persona.generation.model_dump(mode="json"),
                prompt_messages=[m.to_dict() for m in prompt.messages],
                reply=reply_text,
                latency_s=round(time.perf_counter() - started, 4),
                first_token_s=None if first_token is None else round(first_token, 4),
                prompt_tokens=usage.get("input_tokens", prompt.prompt_tokens),
                completion_tokens=usage.get("output_tokens", bound.count_tokens(reply_text)),
                system_prompt_hash=prompt_hash(prompt.system_prompt),
                variant=variant,
                context=dict(request.context),
                participants=sorted({t.user_id for t in history if t.user_id} | {request.speaker.id}),
                lorebook_entries=list(prompt.lore),
                greeting=greeting,
            )
            speaker = request.speaker.name[:STORED_NAME_LENGTH]
            turns = (
                StoredTurn("user", request.text, user_id=request.speaker.id, persona_id=persona.id, speaker=speaker),
                StoredTurn("assistant", reply_text, user_id=request.speaker.id, persona_id=persona.id),
            )
            remembered = AppendTurns(request.conversation_id, turns, max_turns, ttl, record.reply_id)
            # Kept either way: acknowledged by Redis (one round trip for both), or journaled.
            await self.stores.reply_shown(record, remembered if max_turns > 0 else None)
            yield ReplyFinished(record.reply_id, reply_text, persona, record, without_memory)

    def variant_for(self, persona: Persona, conversation_id: str, now: float | None = None) -> str:
        """The variant this conversation uses now: sticky for the persona's variant period, the same
        in every process (bot.domain.variants); "default" for a persona without variants."""
        weights = [(v.id, v.weight) for v in persona.variants]
        at = time.time() if now is None else now
        return choose_variant(persona.id, conversation_id, weights, period_hours=persona.variant_period_hours, now=at)

    async def rate(
        self, reply_id: str, user_id: str, value: int, *, at: float | None = None, **context: str
    ) -> RateOutcome:
        """Rate a reply (+1, -1; 0 withdraws) as of `at` (default: now). The latest event per user and
        reply wins. "queued" when Redis is down (kept, applied later); raises ReplyNotFound."""
        if value not in (-1, 0, 1):
            raise ValueError("a rating is +1, -1 or 0 (remove)")
        rating = Rating(reply_id, user_id, value, at=time.time() if at is None else at, context=context)  # type: ignore[arg-type]
        return await self.stores.rate(rating)

    async def rate_message(
        self,
        external_id: str,
        user_id: str,
        value: int,
        *,
        removed: bool = False,
        at: float | None = None,
        context: dict[str, str] | None = None,
    ) -> RateOutcome:
        """Rate the reply shown by a transport message (e.g. "discord:msg:123"): a reaction added
        (value ±1) or removed (`removed=True`: withdraws the rating only if it is `value`), as of `at`
        (when the event happened). The message is resolved to its reply when the rating is applied,
        so this works, and keeps the rating, while Redis is down ("queued")."""
        rating = MessageRating(
            external_id, user_id, value, removed, time.time() if at is None else at, dict(context or {})  # type: ignore[arg-type]
        )
        return await self.stores.rate_message(rating)

    async def link_shown(self, reply_id: str, external_ids: list[str]) -> None:
        """Remember which transport messages show a reply, so ratings on them rate it (journaled if need be)."""
        await self.stores.link(reply_id, external_ids)

    async def reset(self, conversation_id: str) -> None:
        """Forget one conversation's memory; raises WriteQueued when Redis is down (done when it is back)."""
        _langchain_message.cache_clear()
        await self.stores.reset(conversation_id)

    async def forget_user(self, user_id: str) -> tuple[int, int]:
        """Privacy: delete a user's messages and ratings everywhere, including the journal and Redis's
        files on disk. Returns (messages, records); raises WriteQueued when Redis is down (the journal
        has dropped their writes already; the rest runs when Redis is back)."""
        _langchain_message.cache_clear()  # no copy of their words stays behind in this process either
        return await self.stores.forget_user(user_id)

    async def greeting(
        self,
        persona: Persona,
        user_name: str,
        channel: str = "direct messages",
        *,
        conversation_id: str = "",
        group: bool = False,
        choice: int | None = None,
    ) -> str | None:
        """The greeting that opens a conversation, rendered: `choice` (a card index) when given, else as
        the persona's `greeting_pick` says (first, random, sticky per `conversation_id`, or a fixed one).
        `group`: the place is shared by several users, so group-only greetings may be picked too."""
        group_only = persona.group_greetings if group else ()
        options = greeting_options(persona.greeting, persona.alternate_greetings, group_only)
        index = choice if choice in options else choose_greeting(
            options, persona.greeting_pick, persona.id, conversation_id, draw=random.random()
        )
        if index is None:
            return None
        name = clean_name(user_name, persona.speakers.max_name_length)
        return render(options[index], persona, PromptContext(name, channel, bot_name=self.bot_name))

    def greeting_index(self, persona: Persona, conversation_id: str, *, group: bool = False) -> int | None:
        """The greeting this conversation opened with, when that is known without remembering it:
        every pick but `random` gives the same answer each time (`group`: as for `greeting`)."""
        options = greeting_options(persona.greeting, persona.alternate_greetings,
                                   persona.group_greetings if group else ())
        return choose_greeting(options, persona.greeting_pick, persona.id, conversation_id)

    # -- internals ----------------------------------------------------------------------------

    def _memory_limits(self, persona: Persona) -> tuple[int, int, int]:
        d, p = self.memory_defaults, persona.memory
        return (
            d.max_turns if p.max_turns is None else p.max_turns,
            d.max_tokens if p.max_tokens is None else p.max_tokens,
            d.ttl_seconds if p.ttl_seconds is None else p.ttl_seconds,
        )

    async def _generate(
        self, bound: BoundModel, prompt: AssembledPrompt, *, failed: FailedReply
    ) -> AsyncIterator[AIMessageChunk]:
        try:
            async for chunk in bound.chat_model.astream(to_langchain(prompt.messages)):
                yield chunk
        except ModelBusy:
            raise  # load, not this persona's fault: no failure noted
        except BotError as exc:
            await self.stores.reply_failed(replace(failed, kind=type(exc).__name__, at=time.time()))
            raise
        except Exception as exc:
            log.exception("model %s failed", bound.model_name)
            await self.stores.reply_failed(replace(failed, kind="ModelError", at=time.time()))
            raise ModelError(f"{bound.backend} model {bound.model_name} failed: {exc}") from exc

    @staticmethod
    def _failure(persona: Persona, variant: str, request: ChatRequest) -> FailedReply:
        return FailedReply(persona.id, persona.version, variant, request.conversation_id, kind="")
