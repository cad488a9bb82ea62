"""``gapcal export``: the subcommand, added to the ``gapcal`` parser by :func:`add_export_parser`.

Importing this module is cheap (no torch); the export tools are imported when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ExportError


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``export SOURCE OUT_DIR [options]`` to ``subparsers``; its handler is ``args.func(args) -> 0``.

    User errors are raised as ValueError (ExportError and its kinds; a missing export extra or an OSError
    such as a full disk becomes one) or FileNotFoundError, for the caller to print as one line.
    """
    parser = subparsers.add_parser(
        "export", help="export a Hugging Face CLIP-family model to split, parity-checked ONNX towers",
        description="Export a CLIP-family model (transformers CLIPModel, jina-clip-v1) to onnx/text_model.onnx "
                    "and onnx/vision_model.onnx plus tokenizer, preprocessor config and gapcal_export.json, the "
                    "layout OnnxClipEncoder reads. ONNX Runtime is compared with PyTorch (sequence lengths 1, 16, "
                    "17, 77 and the max length; batch sizes 1 and 7) before OUT_DIR is written. "
                    "Needs the export extra: pip install 'gapcal[export]'.")
    parser.add_argument("source", metavar="SOURCE", help="local model folder or Hugging Face hub id")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (refused if it exists, see --overwrite)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp32 (default), or fp16 graphs (*_fp16.onnx; float32 inputs and outputs)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset, 14 to 20 (default 17)")
    parser.add_argument("--max-length", type=int, metavar="N",
                        help="longest text in tokens, verified and used for truncation (default: the model's "
                             "position limit, 77 for CLIP; 512 for jina-clip-v1)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    parser.add_argument("--revision", help="hub branch, tag or commit (hub ids only)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow running model code from the hub (needed for jina-clip-v1)")
    parser.add_argument("--exporter", choices=("auto", "optimum", "torch"), default="auto",
                        help="auto (default): optimum-onnx where it supports the model, else torch.onnx.export")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run the export described by parsed ``args``, print where it went and how it verified; return 0."""
    from . import export_model, read_card

    log = logging.getLogger("gapcal.export")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gapcal export: %(message)s"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        out = export_model(args.source, args.out_dir, precision=args.precision, opset=args.opset,
                           max_length=args.max_length, overwrite=args.overwrite, revision=args.revision,
                           trust_remote_code=args.trust_remote_code, exporter=args.exporter)
    except ImportError as error:
        raise ExportError(str(error)) from None
    except OSError as error:  # a folder that cannot be written, a disk that filled up: one line, not a traceback
        if isinstance(error, FileNotFoundError):
            raise
        raise ExportError(f"{type(error).__name__}: {error}") from error
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    print(summary(read_card(out), out))
    return 0


def summary(card: dict, out) -> str:
    """A few lines on an export: what the graphs take and give, and how closely they match PyTorch."""
    text, vision, check = card["text"], card["vision"], card["verification"]
    metric = check["metric"].replace("_", " ")
    by_length = ", ".join(f"{n}: {value:.2g}" for n, value in check["text_by_length"].items())
    precision = "" if card["precision"] == "fp32" else f", precision={card['precision']!r}"
    return "\n".join([
        f"wrote {out} ({card['family']}, {card['precision']}, opset {card['opset']}, {card['exporter']})",
        (f"  text:   {', '.join(text['inputs'])} -> {text['output']} ({text['dim']}-d, not normalised), "
         f"max length {text['max_length']}"),
        f"          {metric} vs PyTorch by sequence length: {by_length}",
        (f"  vision: {vision['input']} {vision['image_size'][0]}x{vision['image_size'][1]} -> {vision['output']} "
         f"({vision['dim']}-d, not normalised); {metric} vs PyTorch: {check['vision']:.2g}"),
        f"  use it: OnnxClipEncoder({str(out)!r}{precision})",
    ])
