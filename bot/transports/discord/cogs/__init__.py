"""The bot's cogs: chat (answering), ratings (reactions), persona commands, admin commands."""
