"""/persona list | show [persona] | set <persona> [scope] | reset [scope] | reload: who speaks where.

Choosing a persona needs Manage Channels (or a configured admin role) in a server; in a DM the
user chooses for their own DM. Choices are stored in Redis and survive restarts.
"""

from __future__ import annotations

from collections.abc import Sequence

import discord
from discord import app_commands
from discord.ext import commands

from bot.domain.persona import Persona
from bot.transports.discord.permissions import NotAllowed, is_admin, require_admin
from bot.transports.discord.placement import Scope
from bot.transports.discord.places import Place, place_of
from bot.transports.discord.services import Services
from bot.transports.discord.sinks import NO_PINGS

SCOPES = [
    app_commands.Choice(name="here (this channel, or this thread)", value="here"),
    app_commands.Choice(name="this channel and its threads", value="channel"),
    app_commands.Choice(name="the whole server", value="server"),
]
WHERE = {Scope.THREAD: "in this thread", Scope.CHANNEL: "in this channel", Scope.SERVER: "in this server"}


def interaction_place(interaction: discord.Interaction) -> Place:
    return place_of(interaction.channel, interaction.user.id)


def scope_target(place: Place, choice: str | None) -> tuple[Scope, int]:
    """The override slot a command writes: ("here" | "channel" | "server") at `place`."""
    if choice == "server":
        if place.guild_id is None:
            raise NotAllowed("There is no server in a DM; choose “here”.")
        return Scope.SERVER, place.guild_id
    if (choice or "here") == "here" and place.thread_id is not None:
        return Scope.THREAD, place.thread_id
    return Scope.CHANNEL, place.channel_id


def where(scope: Scope, place: Place) -> str:
    return "in our DMs" if place.is_dm else WHERE[scope]


def problem_lines(errors: Sequence[object], limit: int = 15) -> list[str]:
    """Persona file problems for admins (file:line:column [field]: message), at most `limit`."""
    if not errors:
        return []
    shown = [f"⚠ `{str(e)[:300]}`" for e in errors[:limit]]
    more = [f"… and {len(errors) - limit} more (see the bot's log)"] if len(errors) > limit else []
    return ["", f"**Problems in persona files ({len(errors)})** — the last good versions keep serving:", *shown, *more]


def describe_persona(persona: Persona) -> str:
    lines = [f"**{persona.name}** (`{persona.id}`, version {persona.version})"]
    if persona.description:
        lines.append(persona.description)
    if persona.identity is not None:
        lines.append(f"Posts as “{persona.identity.name or persona.name}” where webhooks are allowed.")
    return "\n".join(lines)


class PersonaCommands(commands.GroupCog, group_name="persona", group_description="Choose who speaks here"):
    def __init__(self, services: Services) -> None:
        self.services = services
        self.engine = services.engine
        super().__init__()

    async def _say(self, interaction: discord.Interaction, text: str, *, ephemeral: bool) -> None:
        await interaction.response.send_message(text[:2000], ephemeral=ephemeral, allowed_mentions=NO_PINGS)

    @app_commands.command(name="list", description="List the personas")
    async def list_personas(self, interaction: discord.Interaction) -> None:
        current = await self.services.persona_at(interaction_place(interaction))
        lines = [
            f"{'▶' if p.id == current.id else '•'} **{p.name}** (`{p.id}`)"
            + (f" — {p.description}" if p.description else "")
            for p in self.engine.personas.all()
        ]
        if is_admin(interaction, self.services.settings.admin_role_ids):
            lines += problem_lines(self.engine.personas.errors)
        await self._say(interaction, "\n".join(lines) or "No personas are loaded.", ephemeral=True)

    @app_commands.command(name="reload", description="Re-read the persona files now (admins)")
    async def reload_personas(self, interaction: discord.Interaction) -> None:
        require_admin(interaction, self.services.settings.admin_role_ids, dm_ok=False)
        await interaction.response.defer(ephemeral=True, thinking=True)
        changes = await self.engine.personas.refresh()
        summary = str(changes) if changes else "no changes"
        lines = [f"Reloaded personas: {summary}.", *problem_lines(self.engine.personas.errors)]
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True, allowed_mentions=NO_PINGS)

    @app_commands.command(name="show", description="Show a persona (default: the one speaking here)")
    @app_commands.describe(persona="Persona id")
    async def show(self, interaction: discord.Interaction, persona: str | None = None) -> None:
        place = interaction_place(interaction)
        found = await self.services.placements.resolve(place)
        current = await self.services.persona_at(place)
        shown = self.engine.personas.get(persona) if persona else current
        if shown.id != current.id:
            status = f"Not speaking here (here: **{current.name}**)."
        elif found is not None and found[0] == current.id:
            status = f"Speaks here: chosen {where(found[1], place)}."
        else:
            status = "Speaks here: the default persona."
        await self._say(interaction, f"{describe_persona(shown)}\n{status}", ephemeral=True)

    @app_commands.command(name="set", description="Choose the persona that speaks here")
    @app_commands.describe(persona="Persona id", scope="Where it applies (default: here)")
    @app_commands.choices(scope=SCOPES)
    async def set_persona(
        self, interaction: discord.Interaction, persona: str, scope: app_commands.Choice[str] | None = None
    ) -> None:
        require_admin(interaction, self.services.settings.admin_role_ids, dm_ok=True)
        chosen = self.engine.personas.get(persona)
        place = interaction_place(interaction)
        target = scope_target(place, scope.value if scope else None)
        await self.services.placements.set(*target, chosen.id)
        await self._say(
            interaction, f"**{chosen.name}** (`{chosen.id}`) now speaks {where(target[0], place)}.", ephemeral=False
        )

    @app_commands.command(name="reset", description="Go back to the default persona here")
    @app_commands.describe(scope="Which choice to remove (default: here)")
    @app_commands.choices(scope=SCOPES)
    async def reset_persona(
        self, interaction: discord.Interaction, scope: app_commands.Choice[str] | None = None
    ) -> None:
        require_admin(interaction, self.services.settings.admin_role_ids, dm_ok=True)
        place = interaction_place(interaction)
        target = scope_target(place, scope.value if scope else None)
        removed = await self.services.placements.clear(*target)
        current = await self.services.persona_at(place)
        done = "Removed the persona choice" if removed else "No persona was chosen"
        await self._say(
            interaction, f"{done} {where(target[0], place)}; **{current.name}** speaks here now.", ephemeral=False
        )

    @show.autocomplete("persona")
    @set_persona.autocomplete("persona")
    async def persona_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        matches = [p for p in self.engine.personas.all() if needle in p.id or needle in p.name.lower()]
        return [app_commands.Choice(name=f"{p.name} ({p.id})"[:100], value=p.id) for p in matches[:25]]
