"""The ``gapcal`` command line.

Exit codes: 0 success, 1 a user error (one line on stderr; ``--debug`` shows the traceback), 2 a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A problem with the user's input, reported as one line."""


def _argument_type(name: str, convert, accepts, parse_expected: str, range_expected: str):
    """An argparse type: ``convert(text)``, refused with ``expected ...`` when it fails or ``accepts`` says no."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parse_expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {range_expected}, got {value}")
        return value

    parse.__name__ = name
    return parse


# counts and search settings (0 would silently mean 'default'), seeds, fractions, ports
positive_int = _argument_type("positive_int", int, lambda v: v >= 1, "a positive integer", "a positive integer")
seed_int = _argument_type("seed_int", int, lambda v: 0 <= v < 2**32, "an integer seed",
                          "a seed from 0 to 2**32 - 1")
_fraction = _argument_type("fraction", float, lambda v: 0 < v <= 1, "a number in (0, 1]", "a number in (0, 1]")
_port = _argument_type("port", int, lambda v: 0 <= v <= 65535, "a port number", "a port from 0 to 65535")


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


def refuse_existing(path, option: str = "-o/--output") -> None:
    """Stop before replacing anything a user has: outputs are replaced only with --overwrite."""
    if Path(path).exists():
        raise UserError(f"{option}: {path} already exists; pass --overwrite to replace it")


def blas_threads(requested: int | None) -> int:
    """BLAS threads for this command: ``--threads``, else $GAPCAL_THREADS, else the cores not already busy
    (cores minus the 1-minute load average, at least 1). A BLAS pool as wide as the machine on a busy box
    spins against the other work: ``gapcal report`` on COCO-500 with two busy cores took 25 s at 2 threads
    and 7 s at 1."""
    if requested is not None:
        return requested
    env = os.environ.get("GAPCAL_THREADS", "").strip()
    if env:
        try:
            return positive_int(env)
        except argparse.ArgumentTypeError as exc:
            raise UserError(f"GAPCAL_THREADS: {exc}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, round(cores - os.getloadavg()[0]))) if hasattr(os, "getloadavg") else cores


def _encoder(args, model=None):
    try:
        from .encoders import OnnxClipEncoder
    except ImportError as exc:
        raise UserError(f"gapcal {args.command} needs the ONNX extra: pip install 'gapcal[onnx]' ({exc})") from None
    return OnnxClipEncoder(model or args.model, providers=args.providers, precision=args.precision,
                           threads=args.threads_used)


def _embed(args) -> int:
    from ._files import atomic_write
    from .pairs import list_images, read_texts

    output = Path(args.output)
    if output.suffix != ".npy":
        raise UserError(f"-o/--output must name a .npy file, got {args.output}")
    ids_path = output.with_suffix(".ids.txt")
    if not args.overwrite:
        refuse_existing(output)
        refuse_existing(ids_path, "-o/--output's ids file")
    encoder = _encoder(args)
    if args.texts is not None:
        try:
            texts = read_texts(args.texts)
        except ValueError as exc:
            raise UserError(f"--texts: {exc}") from None
        vectors = encoder.encode_text(texts, batch_size=args.batch_size)
        ids = [str(number) for number in range(1, len(texts) + 1)]
    else:
        try:
            paths = list_images(args.images)
        except ValueError as exc:
            raise UserError(f"--images: {exc}") from None
        if args.skip_errors:
            vectors, ok = encoder.encode_image(paths, batch_size=args.batch_size, on_error="skip")
            ids = [str(p) for p, good in zip(paths, ok) if good]
            if not ok.all():
                print(f"skipped {int((~ok).sum())} unreadable images", file=sys.stderr)
        else:
            vectors = encoder.encode_image(paths, batch_size=args.batch_size)
            ids = [str(p) for p in paths]
    atomic_write(output, lambda fh: np.save(fh, vectors))
    atomic_write(ids_path, lambda fh: fh.write(("\n".join(ids) + "\n").encode("utf-8")))
    print(f"wrote {len(vectors)} x {vectors.shape[1]} float32 vectors to {output} and, row by row, what each "
          f"embeds to {ids_path} (ONNX Runtime providers: {', '.join(encoder.providers)})")
    return 0


def _build(args) -> int:
    from .folder import BuildSettings, build_folder

    settings = BuildSettings(factory=args.factory, precision=args.precision, batch_size=args.batch_size,
                             target_recall=args.target_recall, skip_errors=args.skip_errors)
    if not args.overwrite:
        refuse_existing(args.output)
    out = build_folder(args.pairs, args.model, args.output, settings=settings, extra_images=args.images,
                       extra_texts=args.texts, encoder=_encoder(args), overwrite=args.overwrite)
    print(f"built {out}: search it with  gapcal search {args.output} \"some text\"  or  gapcal serve {args.output}")
    return 0


def _open_folder(args):
    try:
        from .folder import IndexFolder
    except ImportError as exc:
        raise UserError(f"gapcal {args.command} needs the FAISS extra: pip install 'gapcal[faiss]' ({exc})") from None
    return IndexFolder(args.folder, model=args.model, providers=args.providers)


def _search(args) -> int:
    import json

    if (args.text is None) == (args.image is None):
        raise UserError("give a query text (gapcal search OUT \"a red cat\") or --image PATH, not both")
    if args.image is not None and not Path(args.image).is_file():
        raise UserError(f"--image: no such file: {args.image}")
    folder = _open_folder(args)
    params = {name: value for name, value in (("nprobe", args.nprobe), ("efSearch", args.ef_search))
              if value is not None}
    found = folder.search(text=args.text, image=args.image, k=args.k, raw=args.raw, params=params or None)
    if args.json:
        print(json.dumps({"query": args.text if args.text is not None else args.image, **found}, ensure_ascii=False))
        return 0
    query = repr(args.text) if args.text is not None else args.image
    print(f"{found['modality']} query {query}: top {len(found['results'])} of {len(folder.index)} items")
    columns = [("calibrated", found["results"])] + ([("raw cosine", found["raw"])] if args.raw else [])
    width = 60 if len(columns) == 1 else 44
    print("      " + " | ".join(f"{title:<{width}}" for title, _ in columns))
    for rank in range(len(found["results"])):
        cells = []
        for _, hits in columns:
            hit = hits[rank] if rank < len(hits) else None
            cells.append(f"{_describe(hit, width - 18):<{width}}" if hit else " " * width)
        print(f"{rank + 1:4d}. " + " | ".join(cells))
    return 0


def _describe(hit: dict, room: int) -> str:
    item = hit.get("image") if hit["modality"] == "image" else hit.get("text")
    item = str(item if item is not None else f"id {hit['id']}")
    if len(item) > room:
        item = item[:room - 1] + "…"
    return f"{hit['modality']:<5s} {hit['score']:9.3f}  {item}"


def _serve(args) -> int:
    try:
        from .serve import serve
    except ImportError as exc:
        raise UserError(str(exc)) from None
    serve(_open_folder(args), host=args.host, port=args.port)
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
    if not args.overwrite:
        refuse_existing(args.output)
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

    if not args.overwrite:
        refuse_existing(args.output)
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
    if not args.overwrite:
        refuse_existing(Path(args.output) / "report.html", "-o/--output")
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


def _add_overwrite(parser):
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def _add_model_options(parser, model=True):
    if model:
        parser.add_argument("--model", required=True, help="model folder in the jina-clip-v1 ONNX layout")
    parser.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gapcal", description="Fix the modality gap of CLIP-style models "
                                     "inside vector stores.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--threads", type=positive_int, help="BLAS and ONNX Runtime threads (default: "
                        "$GAPCAL_THREADS, else the cores not already busy)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit and evaluate a calibrator on the bundled COCO-500 CLIP embeddings")
    demo.add_argument("--seed", type=seed_int, default=0, help="seed of the 2-fold split (default 0)")
    demo.set_defaults(func=_demo)

    embed = sub.add_parser("embed", help="embed images or texts with an ONNX CLIP model folder")
    source = embed.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="a folder of images, or a file listing one image path per line")
    source.add_argument("--texts", help="a UTF-8 file with one text per line")
    embed.add_argument("-o", "--output", required=True, help=".npy file to write; ids go to OUTPUT.ids.txt")
    embed.add_argument("--batch-size", type=positive_int, default=32)
    _add_model_options(embed)
    embed.add_argument("--skip-errors", action="store_true", help="skip unreadable images instead of stopping")
    _add_overwrite(embed)
    embed.set_defaults(func=_embed)

    build = sub.add_parser("build", help="pairs and a model in, a searchable calibrated index folder out")
    build.add_argument("pairs", help="a CSV/TSV with header columns image,caption (image paths relative to the "
                       "file; more columns become payload), a JSONL of such objects, or a folder of name.jpg + "
                       "name.txt")
    build.add_argument("--model", required=True, help="model folder in the jina-clip-v1 ONNX layout")
    build.add_argument("-o", "--output", required=True, help="index folder to write")
    build.add_argument("--factory", default="Flat", help="faiss index_factory string (default Flat; HNSW32, "
                       "IVF1024,Flat, ...)")
    build.add_argument("--images", help="more images for the index, not paired: a folder or a list file")
    build.add_argument("--texts", help="more texts for the index, not paired: a UTF-8 file, one per line")
    build.add_argument("--target-recall", type=_fraction, default=0.95, help="recall@10 against exact calibrated "
                       "search that the stored efSearch/nprobe must reach (default 0.95)")
    build.add_argument("--batch-size", type=positive_int, default=32)
    _add_model_options(build, model=False)
    build.add_argument("--skip-errors", action="store_true", help="leave out rows with a missing or unreadable "
                       "image (reported) instead of stopping")
    _add_overwrite(build)
    build.set_defaults(func=_build)

    search = sub.add_parser("search", help="search an index folder by a typed text or an image file")
    search.add_argument("folder", help="index folder written by gapcal build")
    search.add_argument("text", nargs="?", help="the query text")
    search.add_argument("--image", help="an image file as the query")
    search.add_argument("-k", type=positive_int, default=10, help="results (default 10)")
    search.add_argument("--raw", action="store_true", help="show the uncalibrated (raw cosine) ranking beside it")
    search.add_argument("--ef-search", type=positive_int, help="HNSW search breadth for both walks (default: the "
                        "settings stored at build)")
    search.add_argument("--nprobe", type=positive_int, help="IVF lists to visit in total (default: the settings "
                        "stored at build)")
    search.add_argument("--json", action="store_true", help="print JSON for machines")
    search.add_argument("--model", help="the model folder, if it moved since the build")
    search.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    search.set_defaults(func=_search)

    serve = sub.add_parser("serve", help="a local web page to search an index folder (text box, image upload)")
    serve.add_argument("folder", help="index folder written by gapcal build")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--model", help="the model folder, if it moved since the build")
    serve.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda", "tensorrt"))
    serve.set_defaults(func=_serve)

    fit = sub.add_parser("fit", help="fit a calibrator on paired embeddings and save it")
    _add_pairs(fit)
    fit.add_argument("-o", "--output", required=True, help="calibrator file to write (.npz)")
    _add_overwrite(fit)
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
    _add_overwrite(rep)
    rep.add_argument("--map", choices=("auto", "mds", "umap"), default="auto",
                     help="2-D map method (auto: UMAP when umap-learn is installed, else MDS)")
    rep.set_defaults(func=_report)

    index = sub.add_parser("index", help="build, extend and search a calibrated FAISS MixedIndex")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="a new index from a calibrator and optional vectors (gapcal build "
                                 "does all steps from pairs)")
    build.add_argument("--calibrator", required=True, help="calibrator file written by gapcal fit")
    build.add_argument("--factory", default="Flat", help="faiss index_factory string (default Flat; e.g. HNSW32, or "
                       "IVF1024,Flat: its lists are shared out between the modalities)")
    build.add_argument("--text", help="raw text embeddings to add (.npy or .npz[:NAME])")
    build.add_argument("--image", help="raw image embeddings to add")
    build.add_argument("-o", "--output", required=True, help="index folder to write")
    _add_overwrite(build)
    build.set_defaults(func=_index_build)
    add = index_sub.add_parser("add", help="add raw embeddings of one modality to a saved index")
    add.add_argument("index", help="index folder")
    add.add_argument("--vectors", required=True, help="raw embeddings (.npy or .npz[:NAME])")
    add.add_argument("--modality", required=True, choices=("text", "image"))
    add.set_defaults(func=_index_add)
    search = index_sub.add_parser("search", help="ranked mixed results for raw query embeddings (files)")
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
        from threadpoolctl import threadpool_limits

        args.threads_used = blas_threads(args.threads)
        with threadpool_limits(limits=args.threads_used, user_api="blas"):
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
