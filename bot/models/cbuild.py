"""Build a small C library once with the system compiler, cache it, load it with ctypes.

    library = build("w8", SOURCE, FLAGS, cache_dir)     # None where it cannot be built or loaded
    kernel = load_once("gguf-blocks", SOURCE, FLAGS, cache_dir, BlockKernel)  # built and wrapped once a process

The library lands in `<cache_dir>/<name>-<hash of source and flags>.so`, written atomically, so a second
start (or a concurrent one) loads it without compiling. No compiler, a failing build, or a CPU without
AVX2/FMA: a warning, and None (the caller keeps its torch path). Kernels run on torch's own OpenMP
runtime (libgomp is already loaded by torch, same soname), with torch's thread count.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_LOCK = threading.Lock()
_LOADED: dict[tuple[str, Path], Any] = {}


def cpu_supported() -> bool:
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def find_compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(name: str, source: str, flags: list[str], cache_dir: Path) -> ctypes.CDLL | None:
    import torch  # noqa: F401  (loads torch's libgomp first, so the library shares its OpenMP runtime)

    if not cpu_supported():
        log.warning("the %s kernel needs AVX2+FMA; not using it", name)
        return None
    digest = hashlib.sha256((source + " ".join(flags)).encode()).hexdigest()[:16]
    target = cache_dir / f"{name}-{digest}.so"
    if not target.is_file():
        compiler = find_compiler()
        if compiler is None:
            log.warning("no C compiler found for the %s kernel; not using it", name)
            return None
        try:
            _compile(compiler, source, flags, target)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            log.warning("could not build the %s kernel (%s%s); not using it", name, exc,
                        f": {detail.decode(errors='replace').strip()[-500:]}" if detail else "")
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:
        log.warning("could not load the %s kernel %s (%s); not using it", name, target, exc)
        return None


def load_once(name: str, source: str, flags: list[str], cache_dir: Path, wrap: Callable[[ctypes.CDLL], T]) -> T | None:
    """`wrap` of the built library, built and wrapped once per process and cache directory (None where
    it cannot be built or loaded: the caller keeps its torch path)."""
    key = (name, cache_dir.expanduser().resolve())
    with _LOCK:
        if key not in _LOADED:
            library = build(name, source, flags, key[1])
            _LOADED[key] = None if library is None else wrap(library)
        return _LOADED[key]


def _compile(compiler: str, source: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        source_file = Path(tmp) / (target.stem + ".c")
        source_file.write_text(source)
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, str(source_file), "-o", str(built)], check=True, capture_output=True,
                       timeout=120)
        built.replace(target)  # atomic: a concurrent start never loads a half-written library
