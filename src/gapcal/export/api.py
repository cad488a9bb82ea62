"""export_model: SOURCE -> OUT_DIR in the jina-clip-v1 layout, verified against PyTorch, written atomically.

Everything that can be checked without torch (arguments, OUT_DIR, SOURCE files, model family, disk
space) is checked first; the graphs are then written into a temporary folder beside OUT_DIR, verified,
and renamed to OUT_DIR only when every check passed, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import uuid
import warnings
from importlib import import_module
from pathlib import Path

import numpy as np

from .._checks import check_int
from .._files import check_path, umask
from ..encoders.images import ImagePreprocessor
from ..encoders.spec import PRECISIONS
from ..encoders.text import TextBatcher, read_tokenizer_config
from .card import write_card
from .errors import ExportError, NotEnoughDiskError, ParityError
from .source import Source, resolve_source

logger = logging.getLogger("gapcal.export")

DEFAULT_OPSET = 17
#: Opsets accepted: attention needs 14; torch's TorchScript exporter writes up to 20.
OPSETS = range(14, 21)
EXPORTERS = ("auto", "optimum", "torch")
_COPIED = ("tokenizer.json", "preprocessor_config.json", "special_tokens_map.json")


def export_model(source: str | Path, out_dir: str | Path, *, precision: str = "fp32", opset: int | None = None,
                 max_length: int | None = None, overwrite: bool = False, revision: str | None = None,
                 trust_remote_code: bool = False, exporter: str = "auto", cache_dir: str | Path | None = None,
                 token: str | bool | None = None) -> Path:
    """Export a CLIP-family model to two ONNX graphs that :class:`gapcal.OnnxClipEncoder` runs; return OUT_DIR.

    OUT_DIR gets ``onnx/text_model.onnx`` and ``onnx/vision_model.onnx`` (``*_fp16.onnx`` for fp16), the
    tokenizer, the preprocessor config and ``gapcal_export.json`` (dims, max length, normalisation,
    source and revision, tool versions, the verification figures). Both graphs output unnormalised
    embeddings. Before anything is written, ONNX Runtime is compared with PyTorch (see
    :mod:`gapcal.export.verify`); a mismatch raises ParityError naming the failing lengths.

    Parameters
    ----------
    source : a local model folder (config.json, weights, tokenizer.json, preprocessor_config.json) or a
        Hugging Face hub id, downloaded into the hub cache (offline: FileNotFoundError saying how to use a
        local folder).
    out_dir : the folder to create. An existing one is refused unless ``overwrite``.
    precision : ``"fp32"``, or ``"fp16"`` (float16 weights and compute, float32 inputs and outputs).
    opset : ONNX opset, 14 to 20; default 17.
    max_length : the longest text, in tokens, the export is verified for and the encoder truncates at
        (written to tokenizer_config.json). Default: the text tower's position limit (77 for CLIP), 512 for
        jina-clip-v1 (whose own encode_text truncates there; the model allows 8192).
    revision : hub branch, tag or commit (hub ids only).
    trust_remote_code : needed for models whose code comes from the hub (jina-clip-v1): it runs that code.
    exporter : ``"auto"`` (optimum-onnx where it supports the model and is installed, else
        ``torch.onnx.export``), ``"optimum"`` or ``"torch"``.
    cache_dir, token : passed to the hub download.
    """
    _check_choice("precision", precision, tuple(PRECISIONS))
    _check_choice("exporter", exporter, EXPORTERS)
    opset = DEFAULT_OPSET if opset is None else check_int("opset", opset, minimum=OPSETS.start,
                                                          maximum=OPSETS.stop - 1)
    if max_length is not None:
        check_int("max_length", max_length, minimum=1)
    for name, flag in (("overwrite", overwrite), ("trust_remote_code", trust_remote_code)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    out = _check_out_dir(out_dir, overwrite)
    src = resolve_source(source, revision=revision, cache_dir=cache_dir, token=token)
    _check_source_fits(src, out, trust_remote_code, exporter)
    _check_disk(out, _needed_bytes(src, precision))

    module, graphs, verification = _import_export_tools(src.kind.module)
    logger.info("loading the %s model from %s", src.kind.name, src.folder)
    with _quiet():
        model = module.load(src.folder)
    towers = module.towers(model)
    max_length = _resolve_max_length(max_length, src.kind.default_max_length, towers.position_limit)
    tokenizer_config = read_tokenizer_config(src.folder / "tokenizer_config.json"
                                             if (src.folder / "tokenizer_config.json").is_file() else None)
    batcher = TextBatcher(src.folder / "tokenizer.json", max_length, tokenizer_config)
    specials = len(batcher.tokenizer.encode("").ids)
    if max_length < specials:
        raise ValueError(f"max_length must be >= {specials}, the special tokens the tokenizer puts around every "
                         f"text, got {max_length}")
    if towers.pad_id is not None and towers.pad_id != batcher.pad_id:
        raise ExportError(
            f"SOURCE {src.name!r}: the tokenizer pads with id {batcher.pad_id} but the text tower treats id "
            f"{towers.pad_id} as padding (its graph takes input_ids only); the tokenizer does not fit the model"
        )
    _check_preprocessor(src, towers.image_size)
    sampler = verification.TokenSampler.from_tokenizer(batcher.tokenizer, batcher.pad_id, towers.vocab_size)
    use_optimum = _use_optimum(exporter, src.kind, module)

    created = _create_parents(out.parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; OUT_DIR gets the usual permissions
        (tmp / "onnx").mkdir()
        text_graph, vision_graph = tmp / "onnx/text_model.onnx", tmp / "onnx/vision_model.onnx"
        with _quiet():
            if use_optimum:
                logger.info("exporting with optimum-onnx (MetaCLIP-2 split config), opset %d", opset)
                module.export_with_optimum(model, tmp / "onnx", opset, max_length)
            else:
                logger.info("exporting with torch.onnx.export, opset %d, traced at %d tokens", opset, max_length)
                ids, mask = sampler.batch(max_length, 2, np.random.default_rng(0))
                graphs.export_text(towers, text_graph, ids, mask, opset)
                graphs.export_vision(towers, vision_graph, opset)
        fused = {}
        if precision == "fp16":
            logger.info("converting to fp16%s", " (layers fused for ONNX Runtime)" if towers.fusion else "")
            halves = [graph.with_name(graph.stem + "_fp16.onnx") for graph in (text_graph, vision_graph)]
            for tower, graph, half in zip(("text", "vision"), (text_graph, vision_graph), halves):
                fused[tower] = graphs.to_fp16(graph, half, (towers.fusion or {}).get(tower))
            text_graph, vision_graph = halves

        logger.info("verifying against PyTorch at sequence lengths %s, batch sizes %s",
                    verification.sequence_lengths(max_length), verification.BATCH_SIZES)
        try:
            result = verification.verify(text_graph, vision_graph, towers, sampler, precision=precision,
                                         max_length=max_length)
        except ParityError as error:
            raise ParityError(f"{error}. The export was discarded; {str(out)!r} was not written",
                              error.failures) from None

        for name in _COPIED:
            if (src.folder / name).is_file():
                shutil.copyfile(src.folder / name, tmp / name)
        (tmp / "tokenizer_config.json").write_text(  # OnnxClipEncoder truncates at model_max_length
            json.dumps({**tokenizer_config, "model_max_length": max_length}, indent=2) + "\n")
        write_card(tmp, {
            "source": {"name": src.name, "repo_id": src.repo_id, "revision": src.revision},
            "family": src.kind.name,
            "architectures": src.config.get("architectures"),
            "exporter": "optimum-onnx (MetaCLIP-2 split ONNX config)" if use_optimum
            else "torch.onnx.export (TorchScript)",
            "precision": precision,
            "fused_operators": fused,
            "opset": opset,
            "normalized": False,
            "text": {"graph": text_graph.relative_to(tmp).as_posix(), "inputs": list(towers.text_inputs),
                     "output": "text_embeds", "dim": result.dim("text"), "max_length": max_length,
                     "pad_id": batcher.pad_id},
            "vision": {"graph": vision_graph.relative_to(tmp).as_posix(), "input": "pixel_values",
                       "output": "image_embeds", "dim": result.dim("vision"),
                       "image_size": [towers.image_size, towers.image_size]},
            "verification": result.summary(),
        })
        _publish(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            _remove_if_empty(folder)
        raise
    logger.info("wrote %s", out)
    return out


# ---------------------------------------------------------------------------------------------- checks
def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_out_dir(out_dir, overwrite: bool) -> Path:
    out = check_path("out_dir", out_dir).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise ExportError(f"OUT_DIR {str(out_dir)!r} exists and is not a folder; choose another path")
        if not overwrite:
            raise ExportError(f"OUT_DIR {str(out_dir)!r} already exists; pass overwrite=True (--overwrite) to "
                              "replace it, or choose another path")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"OUT_DIR {str(out_dir)!r} cannot be created: {str(parent)!r} is a file")
            break
    return out


def _check_source_fits(src: Source, out: Path, trust_remote_code: bool, exporter: str) -> None:
    if out.exists() and (out.resolve() == src.folder or out.resolve() in src.folder.parents):
        raise ExportError(f"OUT_DIR {str(out)!r} holds SOURCE {src.name!r}: overwriting it would delete the model")
    if src.kind.remote_code and not trust_remote_code:
        raise ExportError(
            f"SOURCE {src.name!r} is a {src.kind.name} model whose PyTorch code comes from the Hugging Face hub; "
            "exporting runs that code. Pass trust_remote_code=True (--trust-remote-code) if you trust it"
        )
    if exporter == "optimum" and not src.kind.optimum:
        raise ValueError(f"exporter='optimum' cannot export {src.kind.name} models (optimum-onnx does not know "
                         "them); use exporter='torch' or 'auto'")


def _resolve_max_length(max_length: int | None, default: int | None, limit: int) -> int:
    if max_length is None:
        return min(default or limit, limit)
    if max_length > limit:
        raise ValueError(f"max_length must be <= {limit}, the text tower's position limit "
                         f"(max_position_embeddings), got {max_length}")
    return max_length


def _check_preprocessor(src: Source, image_size: int) -> None:
    path = src.folder / "preprocessor_config.json"
    try:
        size = ImagePreprocessor.from_config(json.loads(path.read_text())).output_size
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"SOURCE {src.name!r}: preprocessor_config.json cannot be read ({error})") from None
    if size != (image_size, image_size):
        raise ExportError(f"SOURCE {src.name!r}: preprocessor_config.json makes {size[0]}x{size[1]} images but "
                          f"the vision tower takes {image_size}x{image_size}")


def _needed_bytes(src: Source, precision: str) -> int:
    """Estimated bytes OUT_DIR needs: float32 graphs (and their fp16 copies), plus 10% and the small files."""
    params = src.parameter_count
    graphs = params * 4 + (params * 2 if precision == "fp16" else 0)
    small = sum((src.folder / name).stat().st_size for name in _COPIED if (src.folder / name).is_file())
    return int(graphs * 1.1) + small + (16 << 20)


def _check_disk(out: Path, needed: int) -> None:
    existing = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise NotEnoughDiskError(f"not enough disk space for OUT_DIR {str(out)!r}: the export needs about "
                                 f"{_size(needed)}, {str(existing)!r} has {_size(free)} free")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


# ---------------------------------------------------------------------------------------------- export
def _import_export_tools(name: str):
    try:
        return (import_module(f".{name}", __package__), import_module(".graphs", __package__),
                import_module(".verify", __package__))
    except ImportError as error:
        raise ImportError(
            f"gapcal export needs torch, transformers, onnx and optimum-onnx: pip install 'gapcal[export]' "
            f"(a CPU build of torch is enough). Missing: {error}"
        ) from error


def _use_optimum(exporter: str, kind, module) -> bool:
    if exporter == "torch" or not kind.optimum:
        return False
    reason = module.optimum_unfit_reason()
    if reason and exporter == "optimum":
        raise ExportError(f"exporter='optimum' is not available: {reason}")
    if reason:
        logger.info("optimum-onnx cannot export here (%s): using torch.onnx.export", reason)
    return reason is None


@contextlib.contextmanager
def _quiet():
    """Silence Python warnings and transformers/optimum log chatter while a model loads or exports."""
    loggers = [logging.getLogger(name) for name in ("transformers", "optimum", "torch.onnx")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


# ---------------------------------------------------------------------------------------------- writing
def _create_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return the ones created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export to ``out``; an existing ``out`` is set aside first and deleted after."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.replaced-{uuid.uuid4().hex[:8]}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
