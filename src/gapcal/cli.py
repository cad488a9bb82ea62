"""The ``gapcal`` command line.

Exit codes: 0 success, 1 a user error (one line on stderr; ``--debug`` shows the traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (counts and search settings; 0 would silently mean 'default')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    """An argparse type: a seed, an integer from 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to 2**32 - 1, got {value}")
    return value


def load_array(spec: str, role: str) -> np.ndarray:
    """An (n, d) array from ``file.npy``, ``file.npz:name``, or ``file.npz`` holding one array or one named ``role``."""
    path, _, key = spec.partition(":") if spec.count(":") == 1 and not Path(spec).exists() else (spec, "", "")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--{role}: no such file: {path}")
    try:
        data = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"--{role}: {path} is not a readable .npy/.npz file ({exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            names = data.files
            chosen = key or (role if role in names else names[0] if len(names) == 1 else None)
            if chosen not in names:
                found = f"has no array {key!r}" if key else "holds several arrays"
                raise UserError(f"--{role}: {path} {found}: it holds {names}; name one as {path}:NAME")
            try:
                data = data[chosen]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise UserError(f"--{role}: {path} is not a readable .npz file ({exc})") from None
    if data.ndim != 2:
        raise UserError(f"--{role}: expected a 2-D array (n, d), got shape {data.shape} from {spec}")
    return data


def load_groups(spec: str | None, n: int):
    """None, or one group label per pair from ``file.npy`` (a 1-D array) or a text file (one label a line)."""
    if spec is None:
        return None
    file = Path(spec)
    if not file.is_file():
        raise UserError(f"--groups: no such file: {spec}")
    if file.suffix == ".npy":
        try:
            labels = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise UserError(f"--groups: {spec} is not a readable .npy file ({exc})") from None
    else:
        try:
            labels = np.array(file.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError as exc:
            raise UserError(f"--groups: {spec} is not UTF-8 text with one label per line ({exc})") from None
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"--groups: expected one label per pair ({n}), got shape {labels.shape} from {spec}")
    return labels


def _pairs(args):
    text, image = load_array(args.text, "text"), load_array(args.image, "image")
    if len(text) != len(image):
        raise UserError(f"--text and --image must hold the same number of rows (row i of each is a pair), "
                        f"got {len(text)} and {len(image)}")
    return text, image, load_groups(getattr(args, "groups", None), len(text))


def _calibrator_options(args) -> dict:
    shift = {"auto": "auto", "on": True, "off": False}[args.mean_shift]
    return {"mean_shift": shift, "projection": args.projection, "hubness": not args.no_hubness,
            "score_norm": args.score}


def _load_calibrator(path):
    from .calibration import GapCalibrator

    return None if path is None else GapCalibrator.load(path)


def _demo(args) -> int:
    from .calibration import GapCalibrator
    from .data import load_coco500
    from .evaluation import cross_fit, default_methods, format_table

    text, image = load_coco500()
    print("gapcal demo: 500 MSCOCO val2017 image-caption pairs embedded with OpenAI CLIP ViT-B/16")
    print("(bundled data from Liang et al., NeurIPS 2022, MIT licence)\n")
    print("1. Fit a calibrator on all 500 pairs:\n")
    print(GapCalibrator().fit(text, image).summary())
    print(f"\n2. Mixed-pool retrieval, 2-fold cross-fit (seed {args.seed}): every held-out item queries all other")
    print("   items of both modalities; its pair is the one relevant item.\n")
    methods = [m for m in default_methods() if m[0] in ("raw cosine", "GR-CLIP", "per-type z", "gapcal")]
    print(format_table(cross_fit(text, image, methods, seed=args.seed)))
    print("\nown@k: the query's own pair is in its top k. bias: the share of the query's own modality among its")
    print("top 10 unrelated items minus its share among all of them (0: the medium does not decide; raw CLIP +0.5).")
    print("own-medium@10: share of the query's own modality in its top 10 (raw CLIP: 1.0). dup parity: how often a")
    print("near-duplicate of the query's own modality outranks the same pair's other-modality item (0.5 = fair).")
    try:
        from .stores.faiss import demo_rows, format_demo_rows
    except ImportError:
        print("\n(install gapcal[faiss] to see mixed-index search results)")
    else:
        order = np.random.default_rng(args.seed).permutation(len(text))
        fit_rows, held = order[:250], order[250:]
        cal = GapCalibrator().fit(text[fit_rows], image[fit_rows])
        print("\n3. One FAISS MixedIndex of the 250 held-out captions and 250 held-out images (calibrator fitted")
        print("   on the other 250 pairs); top 5 for three captions and three images, by raw cosine and calibrated:\n")
        print(format_demo_rows(demo_rows(text[held], image[held], cal, query_rows=(0, 1, 2), k=5)))
    return 0


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _image_paths(spec: str) -> list[Path]:
    """Image files of a folder (sorted), or the paths listed one per line in a file (relative to it)."""
    source = Path(spec)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not paths:
            raise UserError(f"--images: no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {spec}")
        return paths
    if not source.is_file():
        raise UserError(f"--images: no such folder or list file: {spec}")
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise UserError(f"--images: the list file {spec} names no image")
    return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]


def _embed(args) -> int:
    try:
        from .encoders import OnnxClipEncoder
    except ImportError as exc:
        raise UserError(f"gapcal embed needs the ONNX extra: pip install 'gapcal[onnx]' ({exc})") from None
    from ._files import atomic_write

    output = Path(args.output)
    if output.suffix != ".npy":
        raise UserError(f"-o/--output must name a .npy file, got {args.output}")
    encoder = OnnxClipEncoder(args.model, providers=args.providers, precision=args.precision)
    if args.texts is not None:
        source = Path(args.texts)
        if not source.is_file():
            raise UserError(f"--texts: no such file: {args.texts}")
        texts = source.read_text(encoding="utf-8").splitlines()
        vectors = encoder.encode_text(texts, batch_size=args.batch_size)
        ids = [str(number) for number in range(1, len(texts) + 1)]
    else:
        paths = _image_paths(args.images)
        if args.skip_errors:
            vectors, ok = encoder.encode_image(paths, batch_size=args.batch_size, on_error="skip")
            ids = [str(p) for p, good in zip(paths, ok) if good]
            if not ok.all():
                print(f"skipped {int((~ok).sum())} unreadable images", file=sys.stderr)
        else:
            vectors = encoder.encode_image(paths, batch_size=args.batch_size)
            ids = [str(p) for p in paths]
    ids_path = output.with_suffix(".ids.txt")
    atomic_write(output, lambda fh: np.save(fh, vectors))
    atomic_write(ids_path, lambda fh: fh.write(("\n".join(ids) + "\n").encode("utf-8")))
    print(f"wrote {len(vectors)} x {vectors.shape[1]} float32 vectors to {output} and their ids to {ids_path} "
          f"(ONNX Runtime providers: {', '.join(encoder.providers)})")
    return 0


def _open_index(path):
    try:
        from .stores.faiss import MixedIndex
    except ImportError as exc:
        raise UserError(f"gapcal index needs the FAISS extra: pip install 'gapcal[faiss]' ({exc})") from None
    return MixedIndex.load(path)


def _add_vectors(index, vectors, modality) -> np.ndarray:
    """Train the modality's faiss index on these vectors if it needs training, then add them with the next
    ids after the largest in the index (row numbers for a new one: easy to look up in the input files)."""
    if not index.is_trained(modality):
        index.train(vectors, modality=modality)
    known = np.concatenate([index.ids("text"), index.ids("image")])
    start = int(known.max()) + 1 if len(known) else 0
    return index.add(vectors, modality=modality, ids=np.arange(start, start + len(vectors)))


def _index_build(args) -> int:
    try:
        from .stores.faiss import MixedIndex
    except ImportError as exc:
        raise UserError(f"gapcal index needs the FAISS extra: pip install 'gapcal[faiss]' ({exc})") from None
    cal = _load_calibrator(args.calibrator)
    index = MixedIndex(cal, args.factory)
    for modality in ("text", "image"):
        spec = getattr(args, modality)
        if spec is not None:
            ids = _add_vectors(index, load_array(spec, modality), modality)
            print(f"added {len(ids)} {modality} items (ids {ids[0]}..{ids[-1]})" if len(ids) else
                  f"no {modality} items")
    index.save(args.output)
    print(f"saved a {args.factory} MixedIndex of {len(index)} items to {args.output}")
    return 0


def _index_add(args) -> int:
    index = _open_index(args.index)
    ids = _add_vectors(index, load_array(args.vectors, "vectors"), args.modality)
    index.save(args.index)
    print(f"added {len(ids)} {args.modality} items (ids {ids[0]}..{ids[-1]}); the index holds {len(index)}")
    return 0


def _index_search(args) -> int:
    import json

    index = _open_index(args.index)
    params = {name: value for name, value in (("nprobe", args.nprobe), ("efSearch", args.ef_search))
              if value is not None}
    result = index.search(load_array(args.queries, "queries"), k=args.k, query_modality=args.query_modality,
                          item_modality=args.item_modality, params=params or None)
    rows = result.to_list()
    if args.json:
        print(json.dumps([{"query": q, "results": r} for q, r in enumerate(rows)]))
        return 0
    for q, hits in enumerate(rows):
        print(f"query {q} ({args.query_modality}):")
        for hit in hits:
            print(f"  {hit['rank']:3d}. {hit['modality']:5s} id {hit['id']:<8d} score {hit['score']:8.3f}")
    return 0


def _fit(args) -> int:
    from .calibration import GapCalibrator

    text, image, groups = _pairs(args)
    cal = GapCalibrator(**_calibrator_options(args)).fit(text, image, groups=groups)
    cal.save(args.output)
    print(cal.summary())
    print(f"saved to {args.output} (fingerprint {cal.fingerprint_})")
    return 0


def _eval(args) -> int:
    from .baselines import RawCosine
    from .evaluation import cross_fit, default_methods, evaluate, format_table

    text, image, groups = _pairs(args)
    cal = _load_calibrator(args.calibrator)
    if cal is None:
        print("2-fold cross-fit on these pairs, split by group (fit on one half, evaluate on the other, swap, "
              "average):\n")
        methods = [m for m in default_methods() if m[0] in ("raw cosine", "GR-CLIP", "per-type z", "gapcal")]
        rows = cross_fit(text, image, methods, groups=groups, seed=args.seed)
    else:
        print(f"{args.calibrator} evaluated on these {len(text)} pairs:\n")
        rows = [("raw cosine", evaluate(RawCosine().fit(text, image), text, image, groups)),
                ("gapcal (given calibrator)", evaluate(cal, text, image, groups))]
    print(format_table(rows))
    if groups is not None:
        print("\nGroups: each item's group (its pair and siblings of both modalities) is relevant to it.")
    return 0


def _report(args) -> int:
    try:
        from .report import write_report
    except ImportError as exc:
        raise UserError(str(exc)) from None
    text, image, groups = _pairs(args)
    page = write_report(text, image, args.output, _load_calibrator(args.calibrator), map_method=args.map,
                        groups=groups)
    print(f"wrote {page} with histograms.png and map.png")
    return 0


def _add_pairs(parser, groups=True):
    parser.add_argument("--text", required=True, help="text embeddings: .npy, or .npz[:NAME]")
    parser.add_argument("--image", required=True, help="image embeddings (row i pairs with text row i)")
    if groups:
        parser.add_argument("--groups", help="one group label per pair (.npy, or a text file with one label a line): "
                            "pairs of one group (an image's captions, a product's colours) are relevant to each other")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapcal", description="Fix the modality gap of CLIP-style models "
                                     "inside vector stores.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit and evaluate a calibrator on the bundled COCO-500 CLIP embeddings")
    demo.add_argument("--seed", type=seed_int, default=0, help="seed of the 2-fold split (default 0)")
    demo.set_defaults(func=_demo)

    embed = sub.add_parser("embed", help="embed images or texts with an ONNX CLIP model folder")
    embed.add_argument("--model", required=True, help="model folder in the jina-clip-v1 ONNX layout")
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of images, or a file listing one image path per line")
    source.add_argument("--texts", help="a UTF-8 file with one text per line")
    embed.add_argument("-o", "--output", required=True, help=".npy file to write; ids go to OUTPUT.ids.txt")
    embed.add_argument("--batch-size", type=positive_int, default=32)
    embed.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    embed.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    embed.add_argument("--skip-errors", action="store_true", help="skip unreadable images instead of stopping")
    embed.set_defaults(func=_embed)

    fit = sub.add_parser("fit", help="fit a calibrator on paired embeddings and save it")
    _add_pairs(fit)
    fit.add_argument("-o", "--output", required=True, help="calibrator file to write (.npz)")
    fit.add_argument("--mean-shift", choices=("auto", "on", "off"), default="auto")
    fit.add_argument("--projection", choices=("auto", "none", "ridge", "procrustes"), default="auto")
    fit.add_argument("--no-hubness", action="store_true", help="switch the hubness correction off")
    fit.add_argument("--score", choices=("relevance", "pvalue", "tail", "zscore", "none"), default="relevance",
                     help="per pair type score map (default relevance: log-likelihood ratio of relevance)")
    fit.set_defaults(func=_fit)

    ev = sub.add_parser("eval", help="gap and mixed-pool retrieval metrics of paired embeddings")
    _add_pairs(ev)
    ev.add_argument("--calibrator", help="evaluate this saved calibrator (default: 2-fold cross-fit)")
    ev.add_argument("--seed", type=seed_int, default=0, help="seed of the 2-fold split (default 0)")
    ev.set_defaults(func=_eval)

    rep = sub.add_parser("report", help="report.html with pictures of the gap before and after calibration")
    _add_pairs(rep)
    rep.add_argument("--calibrator", help="use this saved calibrator (default: fit one on the pairs)")
    rep.add_argument("-o", "--output", required=True, help="folder to write report.html and PNGs into")
    rep.add_argument("--map", choices=("auto", "mds", "umap"), default="auto",
                     help="2-D map method (auto: UMAP when umap-learn is installed, else MDS)")
    rep.set_defaults(func=_report)

    index = sub.add_parser("index", help="build, extend and search a calibrated FAISS MixedIndex")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="a new index from a calibrator and optional vectors")
    build.add_argument("--calibrator", required=True, help="calibrator file written by gapcal fit")
    build.add_argument("--factory", default="Flat", help="faiss index_factory string (default Flat; e.g. HNSW32, or "
                       "IVF1024,Flat: its lists are shared out between the modalities)")
    build.add_argument("--text", help="raw text embeddings to add (.npy or .npz[:NAME])")
    build.add_argument("--image", help="raw image embeddings to add")
    build.add_argument("-o", "--output", required=True, help="index folder to write")
    build.set_defaults(func=_index_build)
    add = index_sub.add_parser("add", help="add raw embeddings of one modality to a saved index")
    add.add_argument("index", help="index folder")
    add.add_argument("--vectors", required=True, help="raw embeddings (.npy or .npz[:NAME])")
    add.add_argument("--modality", required=True, choices=("text", "image"))
    add.set_defaults(func=_index_add)
    search = index_sub.add_parser("search", help="ranked mixed results for raw query embeddings")
    search.add_argument("index", help="index folder")
    search.add_argument("--queries", required=True, help="raw query embeddings (.npy or .npz[:NAME])")
    search.add_argument("--query-modality", required=True, choices=("text", "image"))
    search.add_argument("--item-modality", choices=("text", "image"), help="only this modality (default both)")
    search.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    search.add_argument("--nprobe", type=positive_int, help="IVF lists to visit, in total over both modalities")
    search.add_argument("--ef-search", type=positive_int, help="HNSW search breadth")
    search.add_argument("--json", action="store_true", help="print JSON for machines")
    search.set_defaults(func=_index_search)

    from .export import add_export_parser  # the subcommand's torch imports happen only when it runs

    add_export_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        sys.stderr.close()
        return 0
    except (UserError, ValueError, TypeError, OSError, zipfile.BadZipFile) as exc:
        if args.debug:
            raise
        print(f"gapcal {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
