"""SOURCE of an export: a local model folder, or a Hugging Face hub id fetched into the hub cache.

Torch-free: everything here is checked before the model is loaded, so bad input fails fast and leaves
every file as it was.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from .kinds import ModelKind, detect

#: Files fetched from the hub besides the weights (``*.py``: model code of trust_remote_code models).
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "preprocessor_config.json", "*.py")
_SAFETENSORS = ("*.safetensors", "*.safetensors.index.json")
_PICKLED = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Source:
    """A model folder ready to export: its family, its ``config.json`` and where it came from.

    ``revision`` is the hub commit the files come from (None for a local folder).
    """

    folder: Path
    name: str
    repo_id: str | None
    revision: str | None
    config: dict
    kind: ModelKind
    weights: tuple[Path, ...]

    @property
    def parameter_count(self) -> int:
        """Number of stored weights, read from the safetensors headers (pickled files: size / 4)."""
        total = 0
        for path in self.weights:
            if path.suffix == ".safetensors":
                with path.open("rb") as file:
                    header = json.loads(file.read(struct.unpack("<Q", file.read(8))[0]))
                total += sum(prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
            else:
                total += path.stat().st_size // 4
        return total


def resolve_source(source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                   token: str | bool | None = None) -> Source:
    """Check SOURCE (downloading it first when it is a hub id) and say which family it is.

    Raises FileNotFoundError for a missing folder, file or hub repository (offline: how to use a local
    folder instead), UnsupportedModelError for an unknown family.
    """
    text = str(source)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise FileNotFoundError(f"SOURCE {text!r} is a file; expected a model folder or a Hugging Face hub id")
        if revision is not None:
            raise ValueError(f"revision applies to hub ids only; SOURCE {text!r} is a local folder "
                             f"(got revision={revision!r})")
        return _check_folder(local.resolve(), text, repo_id=None, revision=None)
    if not _HUB_ID.match(text) or ".." in text:
        raise FileNotFoundError(f"SOURCE {text!r} is not a folder, and not a Hugging Face hub id either "
                                "(like 'openai/clip-vit-base-patch32')")
    folder = _download(text, revision, cache_dir, token)
    return _check_folder(folder, text, repo_id=text,
                         revision=folder.name if _COMMIT.match(folder.name) else revision)


def _check_folder(folder: Path, name: str, repo_id: str | None, revision: str | None) -> Source:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"SOURCE {name!r} has no config.json; expected a Hugging Face model folder (config.json, weights, "
            "tokenizer.json, preprocessor_config.json), as save_pretrained writes it"
        )
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"SOURCE {name!r}: config.json is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"SOURCE {name!r}: config.json holds a {type(config).__name__}, expected an object")
    kind = detect(config, name)
    weights = tuple(sorted(folder.glob("*.safetensors"))) or tuple(sorted(folder.glob("pytorch_model*.bin")))
    if not weights:
        raise FileNotFoundError(f"SOURCE {name!r} has no weights: expected model.safetensors (or "
                                "model-*.safetensors shards, or pytorch_model.bin)")
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"SOURCE {name!r} has no tokenizer.json, the fast-tokenizer file the ONNX encoder reads. If the folder "
            "has the slow tokenizer files (vocab.json and merges.txt, or vocab.txt), write one with "
            "transformers: AutoTokenizer.from_pretrained(SOURCE).save_pretrained(SOURCE)"
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(
            f"SOURCE {name!r} has no preprocessor_config.json (image resize, crop, mean and std); copy the one "
            "of the model it was fine-tuned from"
        )
    return Source(folder, name, repo_id, revision, config, kind, weights)


def _download(repo_id: str, revision: str | None, cache_dir, token) -> Path:
    """Fetch config, tokenizer, preprocessor config, model code and weights of ``repo_id`` (safetensors
    when the repository has them, else the pickled weights) into the hub cache."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError as error:
        raise ImportError(f"exporting the hub model {repo_id!r} needs huggingface_hub: pip install "
                          "'gapcal[onnx]', or pass a local model folder as SOURCE") from error

    def fetch(patterns: tuple[str, ...]) -> Path:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                      allow_patterns=list(patterns)))

    try:
        folder = fetch(_SMALL_FILES + _SAFETENSORS)
        if not any(folder.glob("*.safetensors")):
            folder = fetch(_SMALL_FILES + _PICKLED)
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"SOURCE {repo_id!r} is not a local folder, so it was taken as a Hugging Face hub id, but the hub "
            "cannot be reached (offline, HF_HUB_OFFLINE=1, or no network) and the model is not in the local "
            f"cache. Download it where there is network, e.g. `hf download {repo_id} --local-dir DIR`, then "
            "export the folder: `gapcal export DIR OUT_DIR` (or export_model('DIR', ...))"
        ) from error
    except RevisionNotFoundError as error:
        raise ValueError(f"revision {revision!r} does not exist in the hub repository {repo_id!r}") from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"SOURCE {repo_id!r} is neither a local folder nor a model repository on the Hugging Face hub "
            "(if it is private or gated, log in first: `hf auth login`)"
        ) from error
    return folder
