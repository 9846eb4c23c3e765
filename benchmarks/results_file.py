"""The last step of a benchmark that writes a markdown results file: print it, then write it atomically."""
from __future__ import annotations

from pathlib import Path

from medscale.atomic import write_text


def publish(lines: list[str], out: Path) -> str:
    """Join `lines`, print the text and write it to `out` (its folder made if missing); returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_text(out, text)
    return text
