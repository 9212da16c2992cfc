"""`python -m bot redis status|stop`: the embedded redis-server under data_dir/redis, run as a service.

Mounted by bot.cli:  app.add_typer(redis_app, name="redis"). redis-py is imported when a command runs.

Exit codes of `status`: 0 running, 1 hung (alive, not answering), 3 not running (as `systemctl status`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.cli_common import EXIT_USAGE, fail, run_async, settings

if TYPE_CHECKING:
    from bot.redis_server import EmbeddedRedis

redis_app = typer.Typer(no_args_is_help=True, help="The embedded Redis server under BOT_DATA_DIR/redis: status, stop.")

EXIT_HUNG = 1
EXIT_STOPPED = 3


def _embedded(*, show_external: bool) -> tuple[EmbeddedRedis | None, str]:
    from bot.app import embedded_redis, journal_path
    from bot.redis_conn import mask_url

    cfg = settings()
    embedded = embedded_redis(cfg)
    if embedded is None:
        assert cfg.redis.url is not None
        url = mask_url(cfg.redis.url.get_secret_value())
        if not show_external:
            fail(f"nothing to stop: Redis is not embedded (BOT_REDIS__URL is {url}); stop it where it runs",
                 EXIT_USAGE)
        typer.echo(f"Redis is not embedded: BOT_REDIS__URL is {url}")
    return embedded, str(journal_path(cfg))


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""  # pragma: no cover


def _journal_line(path: Path) -> str:
    from bot.journal import SqliteJournal

    if not path.exists():
        return "journal: empty"

    async def count() -> tuple[int, int]:
        journal = await SqliteJournal.open(path)
        try:
            return await journal.count()
        finally:
            await journal.close()

    pending, dead = run_async(count())
    aside = f", {dead} set aside (cannot apply; see the log)" if dead else ""
    return f"journal: {pending} writes waiting for Redis{aside}" if pending or dead else "journal: empty"


@redis_app.command("status")
def status() -> None:
    """Is the embedded server running, who uses it, how big is its data, what waits in the journal.

    Exit code 0 running, 1 hung (alive, not answering), 3 not running (as `systemctl status`)."""
    from bot.redis_server import ServerState

    embedded, journal = _embedded(show_external=True)
    typer.echo(_journal_line(Path(journal)))
    if embedded is None:
        return
    now = embedded.status()
    where = f"embedded Redis in {embedded.directory}"
    if now.state is ServerState.STOPPED:
        typer.echo(f"{where}: not running")
    else:
        typer.echo(f"{where}: {now.state.value}, pid {now.pid}, socket {embedded.socket}")
        typer.echo(f"used by bot processes: {'yes' if now.in_use else 'no'}")
    files = [p for p in sorted(embedded.directory.glob("*")) if p.suffix in (".aof", ".rdb")]
    if files:
        typer.echo("data: " + ", ".join(f"{p.name} {_size(p)}" for p in files))
    if now.state is ServerState.HUNG:
        raise typer.Exit(EXIT_HUNG)
    if now.state is ServerState.STOPPED:
        raise typer.Exit(EXIT_STOPPED)


@redis_app.command("stop")
def stop(
    force: Annotated[
        bool, typer.Option("--force", help="Stop it even while bot processes use it, or when it is hung.")
    ] = False,
) -> None:
    """Stop the embedded server (bots stop it themselves when the last one exits)."""
    from bot.redis_server import ServerState

    embedded, _ = _embedded(show_external=False)
    assert embedded is not None
    now = embedded.status()
    if now.state is ServerState.STOPPED:
        typer.echo("the embedded Redis is not running")
        return
    if not force and now.in_use:
        fail("the embedded Redis is in use by running bot processes (the last one to exit stops it); "
             "stop them first, or use --force")
    if not force and now.state is ServerState.HUNG:
        fail(f"the embedded Redis (pid {now.pid}) does not answer; --force stops it (SIGCONT, SIGTERM, then SIGKILL)")
    embedded.stop(force=force)
    typer.echo(f"stopped the embedded Redis (pid {now.pid}); its data stays in {embedded.directory}")
