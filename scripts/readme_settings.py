"""Rewrite the configuration table in README.md from the Settings model: python scripts/readme_settings.py"""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
table = subprocess.run([sys.executable, "-m", "bot", "config", "--markdown"], capture_output=True, text=True,
                       check=True).stdout
text = README.read_text()
block = f"<!-- settings:start -->\n{table}<!-- settings:end -->"
README.write_text(re.sub(r"<!-- settings:start -->.*<!-- settings:end -->", lambda _: block, text, flags=re.S))
