"""Directories and files only the bot's own user may read: conversations and prompts live there."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700, and tighten it if it already exists and is ours.

    The working directory and the home directory are left alone: pointing `data_dir` at them must not
    lock other programs out of them. A path that cannot be a directory is a ConfigError naming it.
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    except OSError as exc:
        from bot.errors import ConfigError

        why = "a file is in the way" if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror
        raise ConfigError(f"cannot create the data directory {path} ({why}): check BOT_DATA_DIR") from exc
    resolved = path.resolve()
    if resolved in (Path.cwd().resolve(), Path.home().resolve()):
        return path
    info = resolved.stat()
    if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
        resolved.chmod(DIR_MODE)
    return path


def tighten_files(directory: Path) -> None:
    """Make the regular files directly in `directory` that we own 0600 (files from older versions)."""
    for entry in directory.iterdir():
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            entry.chmod(FILE_MODE)


def private_file(path: Path) -> Path:
    """Create `path` empty as 0600 if missing (so whatever opens it next inherits the mode)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE)
    os.close(fd)
    if path.stat().st_uid == os.getuid():
        path.chmod(FILE_MODE)
    return path
