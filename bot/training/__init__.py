"""Train soft prompts and LoRA adapters for a persona on the CPU (see `python -m bot train --help`)."""
