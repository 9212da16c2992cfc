"""A fake Discord: REST API + gateway on 127.0.0.1, recording everything the bot does.

    fake = FakeDiscord(token="test-token")
    guild = fake.add_guild("Test Server")
    general = fake.add_channel(guild, "general")
    alice = fake.add_user("alice")
    await fake.start()                       # then point the bot at fake.api_base / fake.gateway_url
    msg = await fake.post_message(alice, general, "hello", mention_bot=True)
    reply = await fake.wait_for_reply(msg)   # the bot's first message referencing it

World state (users, guilds, channels, messages) lives here; the gateway and REST halves both
read it. Every REST call is recorded in `requests`; messages the bot creates are in `sent`
with the content history of every edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from . import payloads as p
from . import rest
from .gateway import GatewaySession
from .payloads import Json
from .rest import ROUTES
from .world import Failure, Gate, Guild, Reaction, Recorded, SentMessage

WAIT_S = 15.0  # safety net for waits; tests never assert on time


class FakeDiscord:
    def __init__(self, token: str = "test-token", *, message_content_allowed: bool = True) -> None:
        self.token = token
        self.message_content_allowed = message_content_allowed  # the portal's intent switch
        self.app_id = p.snowflake()
        self.bot_user = p.user(self.app_id, "PersonaBot", bot=True)
        self.owner = p.user(p.snowflake(), "owner")
        self.users: dict[int, Json] = {self.app_id: self.bot_user}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Json] = {}
        self.messages: dict[int, Json] = {}
        self.sent: list[SentMessage] = []
        self.reactions: list[Reaction] = []  # the bot's current reactions
        self.commands: list[Json] = []
        self.interaction_responses: dict[int, list[Json]] = {}
        self.webhooks: dict[int, Json] = {}
        self.webhook_avatars: dict[int, str] = {}  # webhook id -> the uploaded avatar (a data URI)
        self.typing: list[int] = []
        self.requests: list[Recorded] = []
        self.unknown: list[Recorded] = []
        self.gateway_log: list[Json] = []
        self.identifies: list[Json] = []
        self.resumes: list[Json] = []
        self.shard_count = 1  # as the bot identified (every shard the same)
        self.session_shards: dict[str, tuple[int, int]] = {}  # session id -> (shard id, shard count)
        self.failures: list[Failure] = []  # REST faults to inject (see `fail`)
        self.gates: list[Gate] = []  # REST requests held until released (see `hold`)
        self._sessions: dict[int, GatewaySession] = {}  # the current session of each shard
        self._interactions: dict[str, Json] = {}
        self.world: dict[str, Any] = {}  # named objects of a prepared world (see harness.build_world)
        self._replay: list[tuple[str, Json]] = []
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        for gate in self.gates:
            gate.open.set()
        for session in list(self._sessions.values()):
            if not session.ws.closed:
                await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- world building -------------------------------------------------------------------------

    def add_user(self, name: str, *, bot: bool = False) -> Json:
        user = p.user(p.snowflake(), name, bot=bot)
        self.users[int(user["id"])] = user
        return user

    def add_guild(self, name: str, *, bot_permissions: int = p.BOT, shard: tuple[int, int] | None = None) -> Guild:
        """A server; `shard=(id, count)` picks an id whose events go to that shard."""
        guild_id = p.snowflake_on_shard(*shard) if shard else p.snowflake()
        guild = Guild(guild_id, name, int(self.owner["id"]))
        guild.roles.append(p.role(guild.id, "@everyone", p.MEMBER))
        bot_role = p.role(p.snowflake(), "PersonaBot", bot_permissions)
        guild.roles.append(bot_role)
        guild.members[self.app_id] = [int(bot_role["id"])]
        self.guilds[guild.id] = guild
        return guild

    def add_role(self, guild: Guild, name: str, permissions: int = 0) -> int:
        role = p.role(p.snowflake(), name, permissions)
        guild.roles.append(role)
        return int(role["id"])

    def join(self, guild: Guild, user: Json, *, roles: list[int] | None = None) -> None:
        guild.members[int(user["id"])] = roles or []

    def add_channel(self, guild: Guild, name: str) -> Json:
        channel = p.text_channel(p.snowflake(), guild.id, name)
        guild.channels.append(channel)
        self.channels[int(channel["id"])] = channel
        return channel

    def add_thread(self, parent: Json, name: str, *, thread_id: int | None = None) -> Json:
        thread = p.thread(thread_id or p.snowflake(), parent, name, self.app_id)
        self.guilds[int(parent["guild_id"])].threads.append(thread)
        self.channels[int(thread["id"])] = thread
        return thread

    def dm_channel(self, user: Json) -> Json:
        for channel in self.channels.values():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == user["id"]:
                return channel
        channel = p.dm_channel(p.snowflake(), user)
        self.channels[int(channel["id"])] = channel
        return channel

    def member_payload(self, guild: Guild, user_id: int, *, with_user: bool = True) -> Json:
        return p.member(self.users[user_id], roles=guild.members.get(user_id, []), with_user=with_user)

    def guilds_on(self, shard_id: int) -> list[Guild]:
        return [g for g in self.guilds.values() if p.shard_of(g.id, self.shard_count) == shard_id]

    def guild_payloads(self, shard_id: int = 0) -> list[Json]:
        return [
            p.guild(g.id, g.name, g.owner_id, channels=g.channels, threads=g.threads, roles=g.roles,
                    members=[self.member_payload(g, uid) for uid in g.members])
            for g in self.guilds_on(shard_id)
        ]  # fmt: skip

    def ready_payload(self, session_id: str, shard: list[int]) -> Json:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self.guilds_on(shard[0])],
            "session_id": session_id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
            "shard": shard,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
        }

    # -- gateway --------------------------------------------------------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def attach(self, session: GatewaySession) -> None:
        self._sessions[session.shard_id] = session

    def shard_for(self, data: Json) -> int:
        """The shard an event goes to: its server's, or shard 0 (direct messages)."""
        guild_id = data.get("guild_id")
        return p.shard_of(int(guild_id), self.shard_count) if guild_id else 0

    def live_shards(self) -> set[int]:
        """The shards with a connected session."""
        return {shard for shard in self._sessions if self._live(shard) is not None}

    def _live(self, shard_id: int) -> GatewaySession | None:
        session = self._sessions.get(shard_id)
        return session if session is not None and not session.ws.closed else None

    def take_replay(self) -> list[tuple[str, Json]]:
        replay, self._replay = self._replay, []
        return replay

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws, self)
        try:
            await session.run()
        finally:
            self.notify()
        return ws

    async def session(self, shard_id: int = 0) -> GatewaySession:
        """The current identified (or resumed) session of a shard, waiting for one if needed."""
        return await self.wait_until(lambda: self._live(shard_id))  # type: ignore[no-any-return]

    async def dispatch(self, event: str, data: Json, *, shard: int | None = None) -> None:
        """Send an event to the shard Discord would send it to (or to `shard`)."""
        session = await self.session(self.shard_for(data) if shard is None else shard)
        await session.dispatch(event, data)

    def echo(self, event: str, data: Json) -> None:
        """Send a gateway event soon (after the current REST response), as Discord does."""

        async def send() -> None:
            if (session := self._live(self.shard_for(data))) is not None:
                await session.dispatch(event, data)

        self._background(send())

    async def reconnect(self, *, replay: list[tuple[str, Json]] | None = None, shard: int = 0) -> None:
        """Make a shard reconnect and resume; `replay` events are redelivered on resume."""
        old = await self.session(shard)
        self._replay = list(replay or [])
        resumes = len(self.resumes)
        await old.reconnect()
        await self.wait_until(lambda: len(self.resumes) > resumes and self._live(shard) not in (None, old))
        await self._sessions[shard].ready.wait()

    # -- what users do ---------------------------------------------------------------------------

    def user_message(self, author: Json, channel: Json, content: str, *, mention_bot: bool = False,
                     reply_to: int | None = None, message_type: int = 0,
                     sent_at: float | None = None) -> Json:  # fmt: skip
        """A MESSAGE_CREATE payload from `author` (not sent yet: see `dispatch_message`); `sent_at`
        (epoch seconds) back-dates it, as a message delivered late would be."""
        if mention_bot:
            content = f"<@{self.app_id}> {content}"
        extra: Json = {"type": message_type}
        ids = {int(i) for i in re.findall(r"<@!?(\d+)>", content)}
        guild = self.guilds.get(int(channel["guild_id"])) if channel.get("guild_id") else None
        mentions = []
        for uid in ids & self.users.keys():
            mention = dict(self.users[uid])
            if guild is not None:
                mention["member"] = self.member_payload(guild, uid, with_user=False)
            mentions.append(mention)
        extra["mentions"] = mentions
        extra["mention_everyone"] = "@everyone" in content or "@here" in content
        if guild is not None:
            extra["member"] = self.member_payload(guild, int(author["id"]), with_user=False)
        if reply_to is not None:
            extra["type"] = 19
            extra["message_reference"] = {"message_id": str(reply_to), "channel_id": channel["id"],
                                          "guild_id": channel.get("guild_id")}  # fmt: skip
            extra["referenced_message"] = self.messages.get(reply_to)
        message = p.message(p.snowflake(sent_at), channel, author, content, **extra)
        self.messages[int(message["id"])] = message
        return message

    async def dispatch_message(self, message: Json) -> None:
        await self.dispatch("MESSAGE_CREATE", message)

    async def delete_user_message(self, message: Json) -> None:
        """The author deletes their message: Discord sends MESSAGE_DELETE."""
        self.messages.pop(int(message["id"]), None)
        data = {"id": message["id"], "channel_id": message["channel_id"]}
        if message.get("guild_id"):
            data["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", data)

    async def react(self, user: Json, message_id: int, emoji: str, *, add: bool = True) -> None:
        message = self.messages[message_id]
        channel = self.channels[int(message["channel_id"])]
        data = rest.reaction_event(self, channel, message_id, emoji, user)
        if not add:
            data.pop("member", None)  # Discord sends no member on removals
        await self.dispatch("MESSAGE_REACTION_ADD" if add else "MESSAGE_REACTION_REMOVE", data)

    def interaction(self, user: Json, channel: Json, command: str, *, permissions: int = p.MEMBER,
                    focused: str | None = None, **options: Any) -> Json:  # fmt: skip
        """An INTERACTION_CREATE payload for `/command [subcommand] option=value...`."""
        name, *sub = command.split()
        definition: Json = next((c for c in self.commands if c["name"] == name), {"options": []})
        opts = self._options(definition, sub, options, focused)
        data: Json = {
            "id": definition.get("id", str(p.snowflake())),
            "name": name,
            "type": 1,
            "options": opts,
        }
        interaction_id = p.snowflake()
        payload: Json = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": 4 if focused else 2,
            "token": f"interaction-token-{interaction_id}",
            "version": 1,
            "channel_id": channel["id"],
            "channel": channel,
            "data": data,
            "app_permissions": str(p.BOT),
            "attachment_size_limit": 10 * 1024 * 1024,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": channel.get("guild_id") or "0"},
        }
        if channel.get("guild_id"):
            guild = self.guilds[int(channel["guild_id"])]
            payload["guild_id"] = channel["guild_id"]
            payload["guild_locale"] = "en-US"
            payload["context"] = 0
            payload["member"] = {
                **self.member_payload(guild, int(user["id"])),
                "permissions": str(permissions),
            }
        else:
            payload["context"] = 1
            payload["user"] = user
        self.interaction_responses[interaction_id] = []
        self._interactions[payload["token"]] = payload
        return payload

    @staticmethod
    def _options(definition: Json, sub: list[str], values: dict[str, Any], focused: str | None) -> list[Json]:
        declared = definition.get("options") or []
        if sub:
            group: Json = next((o for o in declared if o["name"] == sub[0]), {"options": []})
            inner = FakeDiscord._options(group, [], values, focused)
            return [{"name": sub[0], "type": 1, "options": inner}]
        types = {o["name"]: o.get("type", 3) for o in declared}
        out = []
        for key, value in values.items():
            option: Json = {"name": key, "type": types.get(key, 3), "value": value}
            if key == focused:
                option["focused"] = True
            out.append(option)
        return out

    def interaction_by_token(self, token: str) -> Json:
        return self._interactions[token]

    async def command(self, user: Json, channel: Json, command: str, **kwargs: Any) -> Json:
        """Run a slash command and return the bot's answer: {"content", "flags", "type"}."""
        payload = self.interaction(user, channel, command, **kwargs)
        iid = int(payload["id"])
        await self.dispatch("INTERACTION_CREATE", payload)
        responses = self.interaction_responses[iid]
        await self.wait_until(lambda: responses and (responses[0].get("type") != 5 or len(responses) > 1))
        first = responses[0]
        if first.get("type") == 5:  # deferred: the answer is a follow-up or an edit of the original
            data = dict(responses[1]["data"])
            data.setdefault("flags", (first.get("data") or {}).get("flags", 0))
            return {"type": responses[1]["type"], **data}
        return {"type": first.get("type"), **(first.get("data") or {})}

    async def autocomplete(self, user: Json, channel: Json, command: str, focused: str, **options: Any) -> list[Json]:
        payload = self.interaction(user, channel, command, focused=focused, **options)
        iid = int(payload["id"])
        await self.dispatch("INTERACTION_CREATE", payload)
        responses = self.interaction_responses[iid]
        await self.wait_until(lambda: responses)
        return list(responses[0]["data"]["choices"])

    # -- what the bot did -----------------------------------------------------------------------

    def sent_in(self, channel: Json) -> list[SentMessage]:
        return [m for m in self.sent if m.channel_id == int(channel["id"]) and not m.deleted]

    def bot_reactions_on(self, message_id: int) -> list[str]:
        return [r.emoji for r in self.reactions if r.message_id == message_id and r.user_id == self.app_id]

    # -- faults -----------------------------------------------------------------------------------

    def fail(self, method: str, pattern: str, status: int = 500, *, times: int = 1, code: int = 0) -> Failure:
        """Answer the next `times` REST requests matching (method, path regex) with `status`."""
        failure = Failure(method, pattern, status, times, code)
        self.failures.append(failure)
        return failure

    def hold(self, method: str, pattern: str) -> Gate:
        """Hold REST requests matching (method, path regex) until the gate's `open` is set."""
        gate = Gate(method, pattern)
        self.gates.append(gate)
        return gate

    def delete_webhook(self, webhook_id: int) -> None:
        """Someone deletes a webhook in Discord (its messages stay)."""
        del self.webhooks[webhook_id]

    async def _held(self, record: Recorded) -> None:
        for gate in [g for g in self.gates if g.matches(record.method, record.path)]:
            gate.waiting += 1
            self.notify()
            try:
                await gate.open.wait()
            finally:
                gate.waiting -= 1

    def _injected(self, record: Recorded) -> tuple[int, Any] | None:
        failure = next((f for f in self.failures if f.matches(record.method, record.path)), None)
        if failure is None:
            return None
        failure.times -= 1
        return failure.status, {"message": f"{failure.status}: injected failure", "code": failure.code}

    # -- REST -----------------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            with contextlib.suppress(ValueError):
                body = json.loads(raw) if raw else None
        record = Recorded(request.method, path, dict(request.query), body)
        self.requests.append(record)
        await self._held(record)
        status, data = self._injected(record) or self._route(request, record)
        record.status = status
        self.notify()
        if data is None:
            return web.Response(status=status)
        # discord.py parses JSON only when the content type is exactly application/json.
        headers = {"Content-Type": "application/json"}
        return web.Response(status=status, body=json.dumps(data).encode(), headers=headers)

    def _route(self, request: web.Request, record: Recorded) -> tuple[int, Any]:
        public = record.path.startswith(("/webhooks/", "/interactions/"))
        if not public and request.headers.get("Authorization") != f"Bot {self.token}":
            return 401, {"message": "401: Unauthorized", "code": 0}
        for method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, record.path)
            if match and method == record.method:
                return handler(self, record, *match.groups())
        self.unknown.append(record)
        return 404, {"message": f"Unknown route {record.method} {record.path}", "code": 0}

    # -- waiting --------------------------------------------------------------------------------

    def notify(self) -> None:
        async def _notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._background(_notify())

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def wait_until(self, predicate: Callable[[], Any], *, within: float = WAIT_S) -> Any:
        """Wait until `predicate()` is truthy (re-checked on every request and gateway frame).

        `within` is only a safety net so a broken bot fails the test instead of hanging it.
        """
        async with asyncio.timeout(within), self._changed:
            while not (result := predicate()):
                await self._changed.wait()
            return result
