"""Who may run admin commands: Manage Channels (or Administrator) here, or a configured admin role."""

from __future__ import annotations

from collections.abc import Collection

import discord
from discord import app_commands


class NotAllowed(app_commands.CheckFailure):
    """The caller may not run this command here; the message is shown to them."""


def is_admin(interaction: discord.Interaction, admin_role_ids: Collection[int]) -> bool:
    if interaction.guild is None:
        return False
    permissions = interaction.permissions
    if permissions.administrator or permissions.manage_channels:
        return True
    roles = getattr(interaction.user, "roles", [])
    return any(role.id in admin_role_ids for role in roles)


def require_admin(interaction: discord.Interaction, admin_role_ids: Collection[int], *, dm_ok: bool) -> None:
    """Raise NotAllowed unless the caller is an admin (or in their own DM, when `dm_ok`)."""
    if interaction.guild is None:
        if dm_ok:
            return
        raise NotAllowed("This command only works in a server.")
    if not is_admin(interaction, admin_role_ids):
        raise NotAllowed("You need the Manage Channels permission (or a bot admin role) for this.")
