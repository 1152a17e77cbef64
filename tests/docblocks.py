"""Commands the docs give, as the tests run them: fenced blocks marked with an info string.

Why: a command a reader copies from README.md or docs/ must be the command a test ran. A block
opened with, e.g., ```` ```sh first-run ```` is taken from the file itself, so the docs and the
test cannot drift apart; a renamed or removed block fails the test that needs it.
"""

from __future__ import annotations

import re
from pathlib import Path


def fenced(path: Path, info: str) -> list[str]:
    """The bodies of the fenced code blocks in ``path`` whose info string is exactly ``info``, in order."""
    pattern = re.compile(r"^```" + re.escape(info) + r"[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
    blocks = pattern.findall(path.read_text(encoding="utf-8"))
    assert blocks, f"{path} has no ```{info} block"
    return blocks
