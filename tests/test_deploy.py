"""Deploy files agree with the code: docker-compose vs adapters/ and settings, setup.sh's torch
choice, and no link in a shipped file points at a file that does not exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bot.adapters.spec import read_adapter
from bot.personas.loader import load_directory
from bot.settings import setting_rows

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def vllm_args() -> list[str]:
    return [str(a) for a in COMPOSE["services"]["vllm"]["command"]]


def served_loras() -> dict[str, str]:
    args = vllm_args()
    modules = args[args.index("--lora-modules") + 1 :]
    return dict(m.split("=", 1) for m in modules if not m.startswith("--"))


def bot_env() -> dict[str, Any]:
    return dict(COMPOSE["services"]["bot"]["environment"])


def test_vllm_serves_every_shipped_lora_under_the_name_the_bot_requests() -> None:
    loras = served_loras()
    assert loras, "the vllm profile serves no LoRA"
    mount = next(v for v in COMPOSE["services"]["vllm"]["volumes"] if v.startswith("./adapters:"))
    container_root = mount.split(":")[1]
    for name, path in loras.items():
        assert path.startswith(container_root + "/")
        local = REPO / "adapters" / path.removeprefix(container_root + "/")
        assert read_adapter(local, load_weights=False).kind == "lora", f"{local} is not a LoRA adapter"
        assert name == local.name, "the bot requests a LoRA by its directory name (ModelProvider.served_name)"
    personas = load_directory(REPO / "personas").personas.values()
    shipped = {Path(p.adapter).name for p in personas if p.adapter and
                read_adapter(REPO / p.adapter, load_weights=False).kind == "lora"}
    assert shipped <= set(loras), f"LoRA personas whose adapter vllm does not serve: {shipped - set(loras)}"


def test_the_bot_requests_the_served_base_model_and_the_switch_is_one_variable() -> None:
    served = next(a.split("=", 1)[1] for a in vllm_args() if a.startswith("--served-model-name="))
    env = bot_env()
    assert env["BOT_MODEL__OPENAI_MODEL"] == served
    assert env["BOT_MODEL__OPENAI_BASE_URL"].startswith("http://vllm:8000/")
    assert env["BOT_MODEL__BACKEND"] == "${BOT_MODEL__BACKEND:-local}", "one variable switches to vLLM"
    assert "BOT_MODEL__BACKEND=openai docker compose --profile vllm up -d" in (REPO / "README.md").read_text()


def test_compose_sets_only_real_settings_and_mounts_what_they_name() -> None:
    known = {env for env, _, _ in setting_rows()}
    env = bot_env()
    assert set(env) <= known, f"unknown settings in docker-compose.yml: {set(env) - known}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in COMPOSE["services"]["bot"]["volumes"]}
    assert mounts[env["BOT_PERSONAS_DIR"]] == "./personas"
    assert mounts[env["BOT_ADAPTERS_DIR"]] == "./adapters"


def test_setup_installs_the_cpu_torch_build_on_linux() -> None:
    script = (REPO / "scripts" / "setup.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")]).returncode == 0
    assert "torch==$TORCH_VERSION+cpu" in script and "--extra-index-url \"$TORCH_INDEX\"" in script
    assert "https://download.pytorch.org/whl/cpu" in script
    assert "--index-url https://download.pytorch.org/whl/cpu" in (REPO / "Dockerfile").read_text()


def test_the_image_has_a_c_compiler_for_the_local_kernels() -> None:
    # bot/models/cbuild.py looks for cc, gcc or clang; python:*-slim ships none of them.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"apt-get install [^\n]*\bgcc\b", dockerfile)


SHIPPED = [
    "README.md", "BENCHMARKS.md", "docker-compose.yml", "Dockerfile", "adapters/README.md",
    *(str(p.relative_to(REPO)) for p in sorted((REPO / "docs").glob("*.md"))),
    *(str(p.relative_to(REPO)) for p in sorted((REPO / "personas").rglob("*.yaml"))),
    *(str(p.relative_to(REPO)) for p in sorted((REPO / "scripts").glob("*"))),
]
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
#: A document named in a comment or in prose ("see docs/adapters.md"): a link by another name.
DOC_MENTION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w.-]+\.md)\b")


def test_no_dead_links_in_shipped_files() -> None:
    dead = []
    for name in SHIPPED:
        file = REPO / name
        text = file.read_text()
        links = [(m, file.parent) for m in MARKDOWN_LINK.findall(text)]
        links += [(m, REPO) for m in DOC_MENTION.findall(text)]
        for target, base in links:
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # URLs and anchors
            path = target.split("#", 1)[0]
            if re.search(r"[A-Z]{3,}|<|\*|\{", path) or not path:
                continue  # placeholders: adapters/NAME, personas/<id>.yaml
            if not ((base / path).exists() or (REPO / path).exists()):
                dead.append(f"{name}: {target}")
    assert dead == []
