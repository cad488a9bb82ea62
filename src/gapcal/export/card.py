"""The export card: a small JSON file beside the graphs saying what they are and how they were made."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

CARD_NAME = "gapcal_export.json"
_TOOLS = ("gapcal", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "tokenizers")


def tool_versions() -> dict[str, str | None]:
    """Versions of the packages an export uses (None: not installed)."""
    versions = {name: _version(name) for name in _TOOLS}
    versions["onnxruntime"] = _version("onnxruntime-gpu") or _version("onnxruntime")
    return versions


def write_card(folder: Path, card: dict) -> Path:
    path = folder / CARD_NAME
    path.write_text(json.dumps({"gapcal_export": 1, "created": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), **card, "tools": tool_versions()}, indent=2) + "\n")
    return path


def read_card(folder: str | Path) -> dict:
    """The card of an export folder."""
    return json.loads((Path(folder) / CARD_NAME).read_text())


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
