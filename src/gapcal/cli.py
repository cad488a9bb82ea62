"""The ``gapcal`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .calibration import GapCalibrator
    from .data import load_coco500
    from .evaluation import cross_fit, format_table

    text, image = load_coco500()
    print("gapcal demo: 500 MSCOCO val2017 image-caption pairs embedded with OpenAI CLIP ViT-B/16")
    print("(bundled data from Liang et al., NeurIPS 2022, MIT licence)\n")
    print("1. Fit a calibrator on all 500 pairs:\n")
    print(GapCalibrator().fit(text, image).summary())
    print(f"\n2. Mixed-pool retrieval, 2-fold cross-fit (seed {args.seed}): every held-out item queries all other")
    print("   items of both modalities; its pair is the one relevant item.\n")
    print(format_table(cross_fit(text, image, seed=args.seed)))
    print("\nown-medium@10: share of the query's own modality in its top 10 (raw CLIP: 1.0).")
    print("dup parity: how often a near-duplicate of the query's own modality outranks the same pair's other-")
    print("modality item (0.5 = the medium does not decide; 1.0 = own medium always first).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapcal", description="Fix the modality gap of CLIP-style models "
                                     "inside vector stores.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="fit and evaluate a calibrator on the bundled COCO-500 CLIP embeddings")
    demo.add_argument("--seed", type=int, default=0, help="seed of the 2-fold split (default 0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"gapcal {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
