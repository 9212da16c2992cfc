"""The fake REST API: the routes discord.py uses for this bot, as (method, path regex, handler).

Handlers take the FakeDiscord, the recorded request and the path groups, and return
(status, JSON or None). They update the world and, like Discord, echo some changes over the
gateway (the bot's own messages, reactions and threads), so the bot must ignore its own events.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from . import payloads as p
from .payloads import Json
from .world import Reaction, Recorded, SentMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

Result = tuple[int, Any]
ID = r"(\d+)"


def users_me(fake: FakeDiscord, _: Recorded) -> Result:
    return 200, fake.bot_user


def application_me(fake: FakeDiscord, _: Recorded) -> Result:
    return 200, p.application(fake.app_id, fake.owner)


def gateway_bot(fake: FakeDiscord, _: Recorded) -> Result:
    limits = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
    return 200, {"url": fake.gateway_url, "shards": 1, "session_start_limit": limits}


def sync_commands(fake: FakeDiscord, record: Recorded, app_id: str, guild_id: str | None = None) -> Result:
    commands = []
    for command in record.body or []:
        command = {**command, "id": str(p.snowflake()), "application_id": app_id, "version": "1"}
        if guild_id:
            command["guild_id"] = guild_id
        commands.append(command)
    fake.commands = commands
    return 200, commands


def sync_guild_commands(fake: FakeDiscord, record: Recorded, app_id: str, guild_id: str) -> Result:
    return sync_commands(fake, record, app_id, guild_id)


def get_channel(fake: FakeDiscord, _: Recorded, channel_id: str) -> Result:
    channel = fake.channels.get(int(channel_id))
    return (200, channel) if channel else (404, {"message": "Unknown Channel", "code": 10003})


def _new_message(fake: FakeDiscord, channel: Json, author: Json, body: Json, **extra: Any) -> Json:
    message = p.message(p.snowflake(), channel, author, body.get("content") or "", **extra)
    reference = body.get("message_reference")
    if reference:
        message["type"] = 19
        message["message_reference"] = reference
        message["referenced_message"] = fake.messages.get(int(reference["message_id"]))
    fake.messages[int(message["id"])] = message
    return message


def _record_sent(fake: FakeDiscord, message: Json, body: Json, via: str, webhook_id: int | None = None) -> None:
    reference = body.get("message_reference")
    sent = SentMessage(
        id=int(message["id"]),
        channel_id=int(message["channel_id"]),
        payload=message,
        contents=[message["content"]],
        allowed_mentions=[body.get("allowed_mentions")],
        via=via,
        webhook_id=webhook_id,
        reference_id=int(reference["message_id"]) if reference else None,
        times=[time.monotonic()],
    )
    fake.sent.append(sent)


def create_message(fake: FakeDiscord, record: Recorded, channel_id: str) -> Result:
    channel = fake.channels.get(int(channel_id))
    if channel is None:
        return 404, {"message": "Unknown Channel", "code": 10003}
    body = record.body or {}
    if not (body.get("content") or "").strip():
        return 400, {"message": "Cannot send an empty message", "code": 50006}
    if len(body["content"]) > 2000:
        return 400, {"message": "Invalid Form Body: content too long", "code": 50035}
    message = _new_message(fake, channel, fake.bot_user, body)
    _record_sent(fake, message, body, "channel")
    fake.echo("MESSAGE_CREATE", message)
    return 200, message


def _sent(fake: FakeDiscord, message_id: int) -> SentMessage | None:
    return next((m for m in fake.sent if m.id == message_id), None)


def _edit(fake: FakeDiscord, message_id: int, body: Json) -> Result:
    sent = _sent(fake, message_id)
    if sent is None or sent.deleted:
        return 404, {"message": "Unknown Message", "code": 10008}
    if "content" in body:
        if not (body["content"] or "").strip() or len(body["content"]) > 2000:
            return 400, {"message": "Invalid Form Body: content", "code": 50035}
        sent.contents.append(body["content"])
        sent.times.append(time.monotonic())
        sent.payload["content"] = body["content"]
    sent.allowed_mentions.append(body.get("allowed_mentions"))
    sent.payload["edited_timestamp"] = p.now_iso()
    return 200, sent.payload


def edit_message(fake: FakeDiscord, record: Recorded, _channel_id: str, message_id: str) -> Result:
    return _edit(fake, int(message_id), record.body or {})


def delete_message(fake: FakeDiscord, _: Recorded, _channel_id: str, message_id: str) -> Result:
    sent = _sent(fake, int(message_id))
    if sent is not None:
        sent.deleted = True
    return 204, None


def get_message(fake: FakeDiscord, _: Recorded, _channel_id: str, message_id: str) -> Result:
    message = fake.messages.get(int(message_id))
    return (200, message) if message else (404, {"message": "Unknown Message", "code": 10008})


def typing(fake: FakeDiscord, _: Recorded, channel_id: str) -> Result:
    fake.typing.append(int(channel_id))
    return 204, None


def add_reaction(fake: FakeDiscord, _: Recorded, channel_id: str, message_id: str, emoji: str) -> Result:
    name = unquote(emoji)
    fake.reactions.append(Reaction(int(message_id), name, fake.app_id))
    channel = fake.channels[int(channel_id)]
    fake.echo("MESSAGE_REACTION_ADD", reaction_event(fake, channel, int(message_id), name, fake.bot_user))
    return 204, None


def remove_reaction(fake: FakeDiscord, _: Recorded, _channel_id: str, message_id: str, emoji: str) -> Result:
    name = unquote(emoji)
    fake.reactions = [r for r in fake.reactions if not (r.message_id == int(message_id) and r.emoji == name)]
    return 204, None


def reaction_event(fake: FakeDiscord, channel: Json, message_id: int, emoji: str, user: Json) -> Json:
    data: Json = {
        "user_id": user["id"],
        "channel_id": channel["id"],
        "message_id": str(message_id),
        "emoji": {"id": None, "name": emoji},
        "burst": False,
        "type": 0,
    }
    if channel.get("guild_id"):
        guild = fake.guilds[int(channel["guild_id"])]
        data["guild_id"] = channel["guild_id"]
        data["member"] = fake.member_payload(guild, int(user["id"]))
    return data


def create_thread_from_message(fake: FakeDiscord, record: Recorded, channel_id: str, message_id: str) -> Result:
    parent = fake.channels[int(channel_id)]
    # As in Discord, a thread opened on a message has the message's id.
    thread = fake.add_thread(parent, (record.body or {}).get("name") or "thread", thread_id=int(message_id))
    fake.echo("THREAD_CREATE", {**thread, "newly_created": True})
    return 201, thread


def list_webhooks(fake: FakeDiscord, _: Recorded, channel_id: str) -> Result:
    return 200, [w for w in fake.webhooks.values() if w["channel_id"] == channel_id]


def _set_avatar(fake: FakeDiscord, webhook: Json, avatar: str | None) -> None:
    """Keep an uploaded avatar (a data URI) and show its hash, as Discord does."""
    webhook["avatar"] = hashlib.md5(avatar.encode()).hexdigest() if avatar else None
    if avatar:
        fake.webhook_avatars[int(webhook["id"])] = avatar
    else:
        fake.webhook_avatars.pop(int(webhook["id"]), None)


def create_webhook(fake: FakeDiscord, record: Recorded, channel_id: str) -> Result:
    channel = fake.channels[int(channel_id)]
    webhook_id = p.snowflake()
    body = record.body or {}
    webhook = {
        "id": str(webhook_id),
        "type": 1,
        "guild_id": channel.get("guild_id"),
        "channel_id": channel_id,
        "name": body.get("name"),
        "avatar": None,
        "token": f"webhook-token-{webhook_id}",
        "application_id": str(fake.app_id),
        "user": fake.bot_user,
    }
    _set_avatar(fake, webhook, body.get("avatar"))
    fake.webhooks[webhook_id] = webhook
    return 200, webhook


def modify_webhook(fake: FakeDiscord, record: Recorded, webhook_id: str) -> Result:
    webhook = fake.webhooks.get(int(webhook_id))
    if webhook is None:
        return 404, {"message": "Unknown Webhook", "code": 10015}
    body = record.body or {}
    if "name" in body:
        webhook["name"] = body["name"]
    if "avatar" in body:
        _set_avatar(fake, webhook, body["avatar"])
    return 200, webhook


def _webhook(fake: FakeDiscord, webhook_id: str, token: str) -> Json | None:
    webhook = fake.webhooks.get(int(webhook_id))
    return webhook if webhook is not None and webhook["token"] == token else None


def execute_webhook(fake: FakeDiscord, record: Recorded, webhook_id: str, token: str) -> Result:
    body = record.body or {}
    if int(webhook_id) == fake.app_id:  # an interaction follow-up
        interaction = fake.interaction_by_token(token)
        channel = fake.channels[int(interaction["channel_id"])]
        message = _new_message(fake, channel, fake.bot_user, body, webhook_id=webhook_id)
        message["flags"] = body.get("flags", 0)
        _record_sent(fake, message, body, "followup", int(webhook_id))
        fake.interaction_responses[int(interaction["id"])].append({"type": "followup", "data": body})
        return 200, message
    webhook = _webhook(fake, webhook_id, token)
    if webhook is None:
        return 404, {"message": "Unknown Webhook", "code": 10015}
    channel = fake.channels[int(record.query.get("thread_id") or webhook["channel_id"])]
    author = p.user(int(webhook_id), body.get("username") or webhook["name"], bot=True)
    author["avatar"] = None
    message = _new_message(fake, channel, author, body, webhook_id=webhook_id)
    message["avatar_url"] = body.get("avatar_url")
    _record_sent(fake, message, body, "webhook", int(webhook_id))
    fake.echo("MESSAGE_CREATE", message)
    return 200, message


def edit_webhook_message(fake: FakeDiscord, record: Recorded, webhook_id: str, token: str, message_id: str) -> Result:
    body = record.body or {}
    if message_id == "@original":
        interaction = fake.interaction_by_token(token)
        fake.interaction_responses[int(interaction["id"])].append({"type": "edit_original", "data": body})
        return 200, p.message(p.snowflake(), fake.channels[int(interaction["channel_id"])], fake.bot_user,
                              body.get("content") or "")  # fmt: skip
    if _webhook(fake, webhook_id, token) is None:
        return 404, {"message": "Unknown Webhook", "code": 10015}
    return _edit(fake, int(message_id), body)


def delete_webhook_message(fake: FakeDiscord, _: Recorded, webhook_id: str, token: str, message_id: str) -> Result:
    if _webhook(fake, webhook_id, token) is None:
        return 404, {"message": "Unknown Webhook", "code": 10015}
    return delete_message(fake, _, "", message_id)


def interaction_callback(fake: FakeDiscord, record: Recorded, interaction_id: str, _token: str) -> Result:
    body = record.body or {}
    fake.interaction_responses.setdefault(int(interaction_id), []).append(body)
    response = {
        "interaction": {
            "id": interaction_id,
            "type": 2,
            "response_message_id": str(p.snowflake()),
            "response_message_loading": body.get("type") == 5,
            "response_message_ephemeral": bool((body.get("data") or {}).get("flags", 0) & 64),
        }
    }
    return 200, response


def open_dm(fake: FakeDiscord, record: Recorded) -> Result:
    user = fake.users[int((record.body or {})["recipient_id"])]
    return 200, fake.dm_channel(user)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", r"/users/@me", users_me),
    ("GET", r"/oauth2/applications/@me", application_me),
    ("GET", r"/gateway/bot", gateway_bot),
    ("PUT", rf"/applications/{ID}/commands", sync_commands),
    ("PUT", rf"/applications/{ID}/guilds/{ID}/commands", sync_guild_commands),
    ("GET", rf"/channels/{ID}", get_channel),
    ("POST", rf"/channels/{ID}/messages", create_message),
    ("GET", rf"/channels/{ID}/messages/{ID}", get_message),
    ("PATCH", rf"/channels/{ID}/messages/{ID}", edit_message),
    ("DELETE", rf"/channels/{ID}/messages/{ID}", delete_message),
    ("POST", rf"/channels/{ID}/typing", typing),
    ("PUT", rf"/channels/{ID}/messages/{ID}/reactions/([^/]+)/@me", add_reaction),
    ("DELETE", rf"/channels/{ID}/messages/{ID}/reactions/([^/]+)/@me", remove_reaction),
    ("POST", rf"/channels/{ID}/messages/{ID}/threads", create_thread_from_message),
    ("GET", rf"/channels/{ID}/webhooks", list_webhooks),
    ("POST", rf"/channels/{ID}/webhooks", create_webhook),
    ("POST", rf"/webhooks/{ID}/([^/]+)", execute_webhook),
    ("PATCH", rf"/webhooks/{ID}", modify_webhook),
    ("PATCH", rf"/webhooks/{ID}/([^/]+)/messages/(\d+|@original)", edit_webhook_message),
    ("DELETE", rf"/webhooks/{ID}/([^/]+)/messages/(\d+)", delete_webhook_message),
    ("POST", rf"/interactions/{ID}/([^/]+)/callback", interaction_callback),
    ("POST", r"/users/@me/channels", open_dm),
]
