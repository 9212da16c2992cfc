"""The embedded Redis behaves like a service, with real processes: one server per data directory,
shared by bot processes and stopped by the last to leave, orphans adopted, hung servers reported,
dead ones restarted on the same data, private files, and `python -m bot redis status|stop`."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from bot.app import build_runtime
from bot.cli import app
from bot.domain.messages import ChatRequest, Speaker
from bot.errors import EmbeddedRedisHung
from bot.redis_server import EmbeddedRedis
from bot.settings import Settings
from tests.conftest import REPO
from tests.test_engine import Scripted

WAIT_S = 20


def servers_for(directory: Path) -> list[int]:
    """Pids of the redis-servers listening on this directory's socket."""
    socket = str(directory.resolve() / "redis.sock").encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and socket in (proc / "cmdline").read_bytes():
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def gone(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


class Client:
    """Another bot process using the directory's server (tests/embedded_client.py)."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.embedded_client", str(directory)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        word, pid = self.process.stdout.readline().split()
        assert word == "ready"
        self.server_pid = int(pid)

    def leave(self) -> str:
        out, _ = self.process.communicate("\n", timeout=WAIT_S)
        return out.strip()


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "redis"
    yield path
    for pid in servers_for(path):  # whatever a failed test left behind
        os.kill(pid, signal.SIGKILL)


def test_a_second_process_reuses_the_server_and_the_first_leaves_it_running(directory: Path) -> None:
    first = Client(directory)
    second = EmbeddedRedis(directory)
    second.start()
    try:
        assert second.pid == first.server_pid and servers_for(directory) == [first.server_pid]
        assert first.leave() == "left running", "the first process must not stop a server in use"
        client = redis.Redis.from_url(second.url)
        assert client.get("written-by") == str(first.process.pid).encode()
        client.close()
    finally:
        assert second.release(), "the last user stops it"
    assert gone(first.server_pid) and servers_for(directory) == []


def test_an_orphan_left_by_kill_9_is_adopted(directory: Path, caplog: pytest.LogCaptureFixture) -> None:
    crashed = Client(directory)
    crashed.process.kill()  # kill -9: no release, its flocks die with it, the server lives on
    crashed.process.wait(WAIT_S)
    assert not gone(crashed.server_pid)
    adopter = EmbeddedRedis(directory)
    adopter.start()
    assert adopter.pid == crashed.server_pid and servers_for(directory) == [crashed.server_pid]
    assert "adopted the embedded redis-server" in caplog.text
    client = redis.Redis.from_url(adopter.url)
    assert client.get("written-by") == str(crashed.process.pid).encode(), "the same data"
    client.close()
    assert adopter.release()
    assert gone(crashed.server_pid)


def run_cli(data_dir: Path, *args: str) -> Result:
    """`python -m bot redis ...`, in this process (the server side is real processes all the same)."""
    env = {k: None for k in os.environ if k.startswith("BOT_")}
    return CliRunner().invoke(app, ["redis", *args], env={**env, "BOT_DATA_DIR": str(data_dir)})


def test_a_hung_server_is_reported_never_duplicated_and_the_cli_manages_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = EmbeddedRedis(data / "redis")
    running.start()
    pid = running.pid
    assert pid is not None
    status = run_cli(data, "status")
    assert status.exit_code == 0 and f"running, pid {pid}" in status.stdout
    assert "used by bot processes: yes" in status.stdout
    refused = run_cli(data, "stop")
    assert refused.exit_code == 1 and "in use by running bot processes" in refused.stderr
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(EmbeddedRedisHung, match=f"pid {pid}.*does not answer"):
            EmbeddedRedis(data / "redis").start()
        assert servers_for(data / "redis") == [pid], "no second server on the same files"
        hung = run_cli(data, "status")
        assert hung.exit_code == 1 and "hung" in hung.stdout
        forced = run_cli(data, "stop", "--force")
        assert forced.exit_code == 0, forced.stderr
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)
    assert gone(pid)
    stopped = run_cli(data, "status")
    assert stopped.exit_code == 3 and "not running" in stopped.stdout
    running.release()


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until `check()` holds; for state that has no event to wait on (another process)."""
    async with asyncio.timeout(WAIT_S):
        for _ in iter(int, 1):
            if check():
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


def embedded_settings(settings: Settings) -> Settings:
    redis_settings = settings.redis.model_copy(update={"url": None, "socket_timeout": 0.5})
    return settings.model_copy(update={"redis": redis_settings})


async def test_a_dead_server_is_restarted_on_the_same_data(settings: Settings) -> None:
    async with build_runtime(embedded_settings(settings), model_provider=Scripted()) as rt:
        assert rt.embedded is not None and rt.replayer is not None
        ask = ChatRequest("c1", Speaker("alice", "Alice"), "remember the lighthouse")
        await rt.engine.reply(ask)
        first = rt.embedded.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: rt.embedded.pid not in (None, first), "the watchdog restarts the server")  # type: ignore[union-attr]
        async with asyncio.timeout(WAIT_S):
            await rt.replayer.settled()
        after = await rt.engine.reply(ChatRequest("c1", Speaker("alice", "Alice"), "what did I say?"))
        record = await rt.feedback.get(after.reply_id)
        assert record is not None and "remember the lighthouse" in str(record.prompt_messages)
    assert servers_for(settings.data_dir / "redis") == [], "the bot stopped the server it was the last to use"


async def test_data_files_are_private(settings: Settings) -> None:
    redis_dir = settings.data_dir / "redis"
    redis_dir.mkdir(parents=True, mode=0o755)
    redis_dir.chmod(0o755)
    settings.data_dir.chmod(0o755)
    old = redis_dir / "appendonly.aof"
    old.write_bytes(b"")
    old.chmod(0o644)  # left by an older version
    async with build_runtime(embedded_settings(settings), model_provider=Scripted()) as rt:
        await rt.engine.reply(ChatRequest("c1", Speaker("alice", "Alice"), "private words"))
        await rt.redis.client.save()
        for directory in (settings.data_dir, redis_dir, settings.data_dir / "journal"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        files = [p for d in (redis_dir, settings.data_dir / "journal") for p in d.iterdir() if not p.is_socket()]
        assert {"appendonly.aof", "bot.rdb", "redis.pid", "redis.log", "clients.lock"} <= {p.name for p in files}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
