"""Resident memory of one serving process: the base model alone vs + LoRA and soft-prompt personas.

    .venv/bin/python bench/memory.py [--record]

Writes 10 LoRA adapters (rank 8 on q/k/v/o, like a typical persona adapter) and 10 soft prompts
(16 virtual tokens) as PEFT directories, then, for each configuration, starts a FRESH process that
loads the base model, loads the adapters through the AdapterBank (one PeftModel for every LoRA),
serves the same 42 short requests through the batch scheduler and reports its resident set size
(VmRSS) and peak (VmHWM). Every configuration serves the same 21 personas -- 21 distinct hard
prompts, two requests each -- and differs only in how many of them also carry an adapter (the rest
run on the base model), so the prompt cache holds the same number of entries in each and the
comparison isolates what the adapters cost. Appends a section to BENCHMARKS.md with --record.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine_line, record_section  # noqa: E402
from bench.throughput import QUESTIONS, encode, load, persona_messages  # noqa: E402

CONFIGS = {
    "base model alone": (0, 0),
    "+ 1 LoRA persona": (1, 0),
    "+ 10 LoRA personas": (10, 0),
    "+ 10 soft-prompt personas": (0, 10),
    "+ 10 LoRA + 10 soft-prompt personas": (10, 10),
}
PERSONAS = 21  # distinct hard prompts served in every configuration
REQUESTS = 2 * PERSONAS


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_adapters(root: Path, data_dir: Path) -> None:
    """10 random LoRA adapters and 10 random soft prompts, saved as PEFT directories."""
    import torch
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from safetensors.torch import save_file

    loaded = load(data_dir, None)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, config, adapter_name="lora-0")
    for i in range(1, 10):
        model.add_adapter(f"lora-{i}", config)
    for name in model.peft_config:
        model.peft_config[name].base_model_name_or_path = loaded.name
    model.save_pretrained(str(root), save_embedding_layers=False)  # one folder per adapter name
    soft = get_peft_model(load(data_dir, None).model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=16),
                          adapter_name="soft-0")
    soft.peft_config["soft-0"].base_model_name_or_path = loaded.name
    soft.save_pretrained(str(root), save_embedding_layers=False)
    hidden = loaded.model.config.hidden_size
    for i in range(1, 10):
        target = root / f"soft-{i}"
        target.mkdir(exist_ok=True)
        (target / "adapter_config.json").write_text((root / "soft-0" / "adapter_config.json").read_text())
        save_file({"prompt_embeddings": torch.randn(16, hidden) * 0.1}, str(target / "adapter_model.safetensors"))


def child(root: Path, loras: int, softs: int, data_dir: Path) -> dict[str, Any]:
    """Runs in a fresh process: load, add adapters, serve REQUESTS short replies, report memory."""
    from bot.adapters import AdapterBank, BaseModelInfo
    from bot.domain.persona import GenerationParams
    from bot.models.batching import BatchScheduler, SoftPrompt

    loaded = load(data_dir, None)
    bank = AdapterBank(loaded.model, BaseModelInfo.of(loaded.model, loaded.name))
    adapters: list[dict[str, Any]] = [{}]
    for i in range(loras):
        adapters.append({"lora": bank.ensure(root / f"lora-{i}").name})
    for i in range(softs):
        adapter = bank.ensure(root / f"soft-{i}")
        adapters.append({"soft_prompt": SoftPrompt(adapter.name, adapter.prompt)})
    gc.collect()
    loaded_kb = status_kb("VmRSS")
    scheduler = BatchScheduler(
        loaded.model, loaded.tokenizer, max_batch=8, max_queue=REQUESTS, resolve_model=lambda: bank.generator
    )
    params = GenerationParams(temperature=0.0, max_new_tokens=4, repetition_penalty=1.0)

    async def serve() -> None:
        async def one(i: int) -> None:
            persona = i % PERSONAS  # its own hard prompt; an adapter too while there are adapters left
            ids, prefix = encode(loaded, persona_messages(QUESTIONS[i % len(QUESTIONS)], user=f"member {persona}"))
            adapter = adapters[persona] if persona < len(adapters) else {}
            async for _ in scheduler.submit(ids, params, prefix_len=prefix, cache_tag=str(persona), **adapter):
                pass

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))

    asyncio.run(serve())
    scheduler.close()
    gc.collect()
    cache_kb = (scheduler.prefix_cache.nbytes if scheduler.prefix_cache else 0) // 1024
    return {"loaded_kb": loaded_kb, "rss_kb": status_kb("VmRSS"), "peak_kb": status_kb("VmHWM"), "cache_kb": cache_kb,
            "adapters": len(adapters) - 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO / "data", help="converted-model cache")
    parser.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    parser.add_argument("--child", nargs=3, metavar=("ROOT", "LORAS", "SOFTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        root, loras, softs = args.child
        print(json.dumps(child(Path(root), int(loras), int(softs), args.data_dir)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--data-dir", str(args.data_dir), "--child", "-", "0", "0"],
                       check=True, capture_output=True)  # warm the page cache so the first config is not penalized
        make_adapters(root, args.data_dir)
        results = {}
        for label, (loras, softs) in CONFIGS.items():
            out = subprocess.run([sys.executable, __file__, "--data-dir", str(args.data_dir), "--child", str(root),
                                  str(loras), str(softs)], check=True, capture_output=True, text=True)
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
            print(label, results[label], flush=True)
    base, base_served = results["base model alone"]["loaded_kb"], results["base model alone"]["rss_kb"]
    rows = ["| configuration | RSS loaded | vs base | RSS after serving | vs base | of which prompt cache | peak RSS |",
            "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        rows.append(f"| {label} | {r['loaded_kb'] / 1024:.0f} MiB | **{r['loaded_kb'] / base:.3f}×** "
                    f"| {r['rss_kb'] / 1024:.0f} MiB | {r['rss_kb'] / base_served:.3f}× "
                    f"| {r['cache_kb'] / 1024:.0f} MiB "
                    f"| {r['peak_kb'] / 1024:.0f} MiB |")
    both = results["+ 10 LoRA + 10 soft-prompt personas"]
    loaded_ratio, served_ratio = both["loaded_kb"] / base, both["rss_kb"] / base_served
    verdict = "met" if loaded_ratio <= 1.1 else f"MISSED ({loaded_ratio:.2f}×)"
    served = "within" if served_ratio <= 1.1 else f"{served_ratio:.2f}×, above"
    table = "\n".join(rows)
    note = (f"Target: 10 LoRA + 10 soft-prompt personas ≤ 1.1× the memory of the base alone. With the adapters "
            f"loaded: {verdict}. After serving the same {PERSONAS} personas ({REQUESTS} replies of 4 tokens, "
            "max_batch 8) "
            f"the ratio is {served} the target; every configuration then holds {PERSONAS} persona-prompt KV entries in "
            "the prompt cache (bounded by BOT_MODEL__PROMPT_CACHE_MB). RSS includes the Python runtime and libraries "
            "(torch, transformers, peft).")
    print(table + "\n\n" + note)
    if args.record:
        record_section("Memory: LoRA and soft-prompt personas on one base model",
                       f"{machine_line()}\n\nCommand: `.venv/bin/python bench/memory.py --record` (SmolLM2-135M "
                       f"float32; LoRA r=8 on q/k/v/o_proj; soft prompts of 16 virtual tokens)\n\n{table}\n\n{note}\n")


if __name__ == "__main__":
    main()
