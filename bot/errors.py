"""The bot's error tree. Every error the bot raises on purpose is a `BotError`.

    BotError
    ├── ConfigError                  settings or environment unusable (one-line message for the CLI)
    │   └── EmbeddedRedisHung        the embedded redis-server is alive but does not answer: .pid, .directory
    ├── PersonaError
    │   ├── PersonaFileError         one problem in a file under personas/: .path, .line, .column, .field
    │   │   └── PersonaFileProblems  every problem of one file: .problems (PersonaFileError each)
    │   └── PersonaNotFound          .persona_id is not loaded
    ├── StoreError                   Redis failed (wraps the redis-py error as __cause__)
    │   ├── StoreUnavailable         Redis cannot be reached at all: .url (password masked)
    │   ├── WriteQueued              Redis is down; the request is journaled and runs when it is back: .what
    │   └── JournalError             the local write journal failed or is full: .path
    ├── ModelError                   a backend failed while generating (wraps the cause)
    │   ├── ModelLoadError           a model could not be loaded: .model
    │   └── ModelBusy                the generation queue is full; try again soon
    ├── PromptTooLong                the system prompt + new message exceed the context budget
    └── ReplyNotFound                a rating named a reply the feedback log does not know

Third-party errors are translated at the boundary (`raise StoreError(...) from exc`), so callers
catch `BotError` subclasses and never redis-py, torch or httpx errors.
"""

from __future__ import annotations

from pathlib import Path


class BotError(Exception):
    """Root of every error the bot raises on purpose."""


class ConfigError(BotError):
    """Settings or environment are unusable."""


class PersonaError(BotError):
    """A persona problem."""


class PersonaFileError(PersonaError):
    """One problem in a file under personas/ (a persona, a test suite, a lorebook...).

    Shown as `file:line:column [field]: message`; line, column and field are left out when unknown.
    """

    def __init__(
        self,
        path: Path,
        message: str,
        *,
        field: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ):
        self.path = path
        self.field = None if field is None else _one_line(field)
        self.line = line
        self.column = column
        self.message = _one_line(message)
        field = self.field
        where = _one_line(str(path))
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        what = f" [{field}]" if field else ""
        super().__init__(f"{where}{what}: {self.message}")

    def to_dict(self) -> dict[str, object]:
        return {"file": str(self.path), "line": self.line, "column": self.column, "field": self.field,
                "message": self.message}


def _one_line(text: str) -> str:
    """Text from a file (a key, a value) shown safely on one line: controls and newlines escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class PersonaFileProblems(PersonaFileError):
    """Every problem found in one file, in file order; reads as one `file:line:column` line each.

    Its own path, line, column and field are the first problem's.
    """

    def __init__(self, problems: list[PersonaFileError]):
        if not problems:
            raise ValueError("PersonaFileProblems needs at least one problem")
        first = problems[0]
        super().__init__(first.path, first.message, field=first.field, line=first.line, column=first.column)
        self.problems = tuple(problems)
        self.args = ("\n".join(str(p) for p in problems),)


class PersonaNotFound(PersonaError):
    def __init__(self, persona_id: str, known: list[str] | None = None, *, disabled: str | None = None):
        self.persona_id = persona_id
        self.disabled = disabled
        if disabled is not None:
            super().__init__(f"persona {persona_id!r} is disabled: {disabled}")
            return
        hint = f" (known: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"no persona {persona_id!r}{hint}")


class StoreError(BotError):
    """Redis failed during an operation."""


class StoreUnavailable(StoreError):
    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach Redis at {url}: {reason}")


class WriteQueued(StoreError):
    """Redis is unreachable: the request was journaled locally and is applied when Redis is back."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"Redis is unavailable: {what} is queued and will complete when it is back")


class JournalError(StoreError):
    """The local write journal cannot take a write (disk error, or full)."""

    def __init__(self, path: Path, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"write journal {path}: {reason}")


class EmbeddedRedisHung(ConfigError):
    """The embedded redis-server's process is alive but does not answer: never start a second one."""

    def __init__(self, pid: int, directory: Path):
        self.pid = pid
        self.directory = directory
        super().__init__(
            f"the embedded redis-server for {directory} (pid {pid}) is running but does not answer PING: it may be "
            f"stopped (SIGSTOP) or hung. Resume it (kill -CONT {pid}) or stop it (python -m bot redis stop --force); "
            "a second server on the same data would corrupt it"
        )


class ModelError(BotError):
    """A model backend failed while generating."""


class ModelLoadError(ModelError):
    def __init__(self, model: str, reason: str):
        self.model = model
        self.reason = reason
        super().__init__(f"cannot load model {model}: {reason}")


class ModelBusy(ModelError):
    """The generation queue is full."""


class PromptTooLong(BotError):
    def __init__(self, needed: int, budget: int):
        self.needed = needed
        self.budget = budget
        super().__init__(f"prompt needs {needed} tokens but the context budget is {budget}")


class ReplyNotFound(BotError):
    def __init__(self, reply_id: str):
        self.reply_id = reply_id
        super().__init__(f"no reply {reply_id!r} in the feedback log")
