"""Fetch a model folder from the Hugging Face hub: only the files one precision needs, into the usual cache."""

from __future__ import annotations

from pathlib import Path

from .spec import ModelFiles

#: Optional small files fetched when the repository has them.
_OPTIONAL = ("tokenizer_config.json",)


def download(
    repo_id: str,
    precision: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Download (or find in the cache) the files of ``repo_id`` for ``precision``; return the folder.

    Graphs saved with external weights (``text_model.onnx_data`` and the like) come along. Offline, or
    when the hub cannot be reached and the files are not cached, raises OSError saying how to use a
    local folder instead.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as error:
        raise ImportError(
            "OnnxClipEncoder.from_pretrained needs huggingface_hub: pip install 'gapcal[onnx]', "
            "or pass a local model folder to OnnxClipEncoder(model_dir)."
        ) from error

    required = ModelFiles.required(precision)
    patterns = [name + "*" if name.endswith(".onnx") else name for name in required] + list(_OPTIONAL)
    try:
        folder = Path(snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, allow_patterns=patterns,
        ))
    except LocalEntryNotFoundError as error:
        raise OSError(_offline_message(repo_id, required)) from error
    if any(not (folder / name).is_file() for name in required):  # an offline cache hit can be partial
        raise OSError(_offline_message(repo_id, required))
    return folder


def _offline_message(repo_id: str, required: tuple[str, ...]) -> str:
    include = " ".join(f"--include {name!r}" for name in required)
    return (
        f"Cannot fetch {repo_id!r} from the Hugging Face hub (offline, HF_HUB_OFFLINE=1, or no network) "
        f"and its files ({', '.join(required)}) are not in the local cache. Either download them where "
        f"there is network, e.g. `hf download {repo_id} {include} --local-dir DIR`, and "
        f"use OnnxClipEncoder('DIR'), or pass the path of a folder that already holds them."
    )
