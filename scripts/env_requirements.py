"""Print the pip requirements of environment.yml, so that the venv path of `make setup`
reads the same single source of truth as conda does.

    python scripts/env_requirements.py            # the `pip:` list (one per line)
    python scripts/env_requirements.py --no-deps  # the packages marked `# no-deps:`
"""

import re
import sys
from pathlib import Path

text = Path(__file__).resolve().parent.parent.joinpath("environment.yml").read_text()
if "--no-deps" in sys.argv:
    for m in re.finditer(r"^#\s*no-deps:\s*(\S+)", text, re.M):
        print(m.group(1))
else:
    block = re.search(r"^\s+- pip:\s*\n((?:\s{6,}(?:- |#).*\n)+)", text, re.M)
    for line in block.group(1).splitlines():
        if line.strip().startswith("- "):
            print(line.strip()[2:].strip())
