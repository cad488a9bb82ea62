"""An index folder: pairs and a model in, a searchable calibrated MixedIndex out (``gapcal build``), and the
search side that reads it back (``gapcal search``, ``gapcal serve``).

A folder holds ``gapcal.json`` (the model, the settings, what was built and the checksums of the files),
``index/`` (a MixedIndex with payloads: each image's path, each text), and ``embeddings/`` (the raw vectors,
kept so a refit never re-embeds, and used to show the uncalibrated ranking beside the calibrated one).

A build works in a hidden sibling folder, ``.OUT.partial``, embedding in chunks it saves one by one: an
interrupted build run again with the same inputs picks up after the last saved chunk. The finished folder
is renamed into place, so ``OUT`` is either absent, the old folder, or the complete new one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ._checks import MODALITIES, check_modality
from ._files import atomic_write, check_path, read_npz
from ._format import check_checksum, check_header, check_sealed, new_header, sealed, sha256_of
from .calibration import GapCalibrator
from .pairs import Pairs, list_images, read_pairs, read_texts

FORMAT = "gapcal.IndexFolder"
FORMAT_VERSION = 1
MANIFEST = "gapcal.json"
TUNING_QUERIES = 500  # sample queries per modality that choose the stored efSearch / nprobe
LINK_QUERIES = 10_000  # stored items per modality used as sample queries for an HNSW graph's cross-modal edges
CHUNK_ITEMS = 256  # items embedded per saved chunk: what an interrupted build can lose
_ITEM_COLUMNS = {"image": "image", "text": "text"}  # the payload field holding each item itself


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """What a build was asked for; recorded in ``gapcal.json``."""

    factory: str = "Flat"
    precision: str = "fp32"
    batch_size: int = 32
    target_recall: float = 0.95
    skip_errors: bool = False


# ---------------------------------------------------------------------- building
def build_folder(pairs, model_dir, out, *, settings: BuildSettings = BuildSettings(), extra_images=None,
                 extra_texts=None, encoder=None, overwrite: bool = False, log=print,
                 show_progress: bool | None = None) -> Path:
    """Embed the pairs (and optional extra images/texts), fit a calibrator on the pairs, index everything with
    payloads, choose search settings, and write the folder ``out``; returns its path.

    ``encoder``: an ``OnnxClipEncoder`` to use instead of loading ``model_dir`` (tests, custom sessions).
    ``out`` must not exist unless ``overwrite``.
    """
    out = check_path("out", out).absolute()
    model = check_path("model_dir", model_dir).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: pass --overwrite (overwrite=True) to replace it")
    if not out.parent.is_dir():
        raise ValueError(f"out's folder does not exist: {str(out.parent)!r}")
    table = read_pairs(pairs, skip_errors=settings.skip_errors)
    for message in table.skipped:
        log(f"skipped {message}")
    images = list(dict.fromkeys(table.images))
    first_row = {path: row for row, path in reversed(list(enumerate(table.images)))}
    paired = {p.resolve() for p in images}
    extras = [] if extra_images is None else list_images(extra_images)
    images += [p for p in dict.fromkeys(extras) if p.resolve() not in paired]  # one item per file
    texts = list(table.captions) + ([] if extra_texts is None else read_texts(extra_texts))

    if encoder is None:
        from .encoders import OnnxClipEncoder

        encoder = OnnxClipEncoder(model, precision=settings.precision)
    from .stores.faiss import plumbing

    plumbing.build_from_spec(settings.factory, encoder.dim + 1)  # a bad factory string stops before any work
    work = out.with_name(f".{out.name}.partial")
    key = _inputs_key(table, images, texts, model, settings)
    _prepare_work(work, key, log)
    kept = _kept_embeddings(out, key) if out.exists() else None
    if kept is not None:
        log(f"reusing the embeddings in {out}: same pairs, images, texts and model")
        image_vectors, image_ok, text_vectors = kept
    else:
        embed = _Embedder(encoder, work / "chunks", settings, show_progress)
        image_vectors, image_ok = embed("image", images)
        text_vectors, _ = embed("text", texts)
    for path in (p for p, good in zip(images, image_ok) if not good):
        log(f"skipped unreadable image {table.relative(path)}")

    # ids: images 0.., then texts; a pair whose image could not be read is left out
    image_row = np.full(len(images), -1, dtype=np.int64)
    image_row[image_ok] = np.arange(int(image_ok.sum()))
    position = {path: n for n, path in enumerate(images)}
    pair_images = image_row[[position[p] for p in table.images]]
    usable = pair_images >= 0
    if not usable.all():
        log(f"left out {int((~usable).sum())} pairs whose image could not be read")
    pair_texts = np.flatnonzero(usable)
    pair_images = pair_images[usable]
    cal = GapCalibrator().fit(text_vectors[pair_texts], image_vectors[pair_images], groups=pair_images)
    log(cal.summary())

    from .stores.faiss import MixedIndex

    index = MixedIndex(cal, settings.factory)
    kept_images = [p for p, good in zip(images, image_ok) if good]
    image_ids = np.arange(len(kept_images), dtype=np.int64)
    text_ids = np.arange(len(kept_images), len(kept_images) + len(texts), dtype=np.int64)
    image_payload = {"image": [table.relative(p) for p in kept_images],
                     **{name: [values[first_row[p]] if p in first_row else None for p in kept_images]
                        for name, values in table.columns.items()}}
    text_payload = {"text": texts, **{name: list(values) + [None] * (len(texts) - len(table))
                                      for name, values in table.columns.items()}}
    for modality, vectors, ids, payload in (("image", image_vectors, image_ids, image_payload),
                                            ("text", text_vectors, text_ids, text_payload)):
        if len(vectors) and not index.is_trained(modality):
            index.train(vectors, modality=modality)
        index.add(vectors, modality=modality, ids=ids, payload=payload)
    items = {"image": (image_vectors, image_ids), "text": (text_vectors, text_ids)}
    links = _link(index, items)
    for report in links:
        log(f"linked {report['item_modality']}s that are top results of one {report['query_modality']} query: "
            f"{report['added']} edges from {report['queries']} sample queries")
    tuning = _tune(index, items, settings)
    for report in tuning:
        if report.get("settings"):
            log(f"search settings for {report['query_modality']} queries: {report['settings']} (recall@10 "
                f"{report['recall']:.3f} +- {report['standard_error']:.3f} against exact calibrated search, target "
                f"{report['target']} by one standard error)")

    index.save(work / "index")
    (work / "embeddings").mkdir(exist_ok=True)
    files = {}
    for name, array in (("image.npy", image_vectors), ("text.npy", text_vectors)):
        atomic_write(work / "embeddings" / name, lambda fh, a=array: np.save(fh, a))
    atomic_write(work / "embeddings" / "ids.npz", lambda fh: np.savez(
        fh, image_ids=image_ids, text_ids=text_ids, pair_texts=pair_texts, pair_images=pair_images,
        image_ok=image_ok))
    for name in ("image.npy", "text.npy", "ids.npz"):
        files[f"embeddings/{name}"] = sha256_of(work / "embeddings" / name)
    manifest = sealed(new_header(
        FORMAT, FORMAT_VERSION, model=str(model),
        pairs={"source": str(Path(pairs).absolute()), "rows": len(table), "used": int(usable.sum()),
               "skipped": list(table.skipped), "listed_images": len(images)},
        images_root=str(table.root.absolute()), settings=dataclasses.asdict(settings),
        counts={"image": len(kept_images), "text": len(texts)}, links=links, tuning=tuning, files=files,
        inputs=key))
    atomic_write(work / MANIFEST, lambda fh: fh.write(json.dumps(manifest, indent=2).encode("utf-8")))
    shutil.rmtree(work / "chunks", ignore_errors=True)
    (work / "inputs.json").unlink(missing_ok=True)
    _move_into_place(work, out)
    return out


def _inputs_key(table: Pairs, images, texts, model: Path, settings: BuildSettings) -> str:
    """A digest of everything the saved embedding chunks depend on (a resumed build must match it)."""
    def stamp(path: Path) -> str:
        info = path.stat()
        return f"{path}:{info.st_size}:{info.st_mtime_ns}"

    graphs = sorted(stamp(p) for p in model.rglob("*") if p.is_file()) if model.is_dir() else []
    stamps = [stamp(p) for p in images]
    body = json.dumps({"images": stamps, "texts": texts, "model": str(model), "graphs": graphs,
                       "precision": settings.precision}, sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _kept_embeddings(out: Path, key: str):
    """(image vectors, image ok mask, text vectors) of an existing folder built from the same inputs (a rebuild
    with other index or calibration settings), or None."""
    try:
        manifest = read_manifest(out)
        if manifest.get("inputs") != key:
            return None
        raw = read_embeddings(out, manifest)
    except (OSError, ValueError, KeyError):
        return None
    ok = raw["image_ok"]
    if ok.dtype != bool or int(ok.sum()) != len(raw["image"][0]):
        return None
    return raw["image"][0], ok, raw["text"][0]


def read_manifest(path: Path) -> dict:
    """The checked ``gapcal.json`` of an index folder."""
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not an index folder written by gapcal build (no {MANIFEST})")
    try:
        header = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{manifest_file} is not valid JSON ({exc})") from None
    manifest = check_header(header, format=FORMAT, version=FORMAT_VERSION, where=str(manifest_file),
                            what="gapcal index folder", remedy="build it again")
    check_sealed(manifest, str(manifest_file))
    return manifest


def read_embeddings(path: Path, manifest: dict) -> dict:
    """The kept raw embeddings of an index folder, checked against their recorded sha256: per modality
    (vectors, ids), and ``image_ok`` (which listed images could be read)."""
    for name, digest in manifest["files"].items():
        check_checksum(path / name, digest, str(path))
    counts = manifest["counts"]
    limit = 8 * (counts["image"] + counts["text"])
    listed = int(manifest["pairs"]["listed_images"])
    ids = read_npz(path / "embeddings" / "ids.npz", {"image_ids": limit, "text_ids": limit, "image_ok": listed},
                   str(path / "embeddings" / "ids.npz"))
    out = {m: (np.load(path / "embeddings" / f"{m}.npy", allow_pickle=False), ids[f"{m}_ids"]) for m in MODALITIES}
    return {**out, "image_ok": ids["image_ok"]}


def _prepare_work(work: Path, key: str, log) -> None:
    """Create the work folder, or keep one an interrupted build of the same inputs left; one of other inputs
    (our marker file says so) is discarded, anything else there is refused."""
    state = work / "inputs.json"
    if work.exists():
        try:
            found = json.loads(state.read_text(encoding="utf-8")).get("key")
        except (OSError, ValueError, AttributeError):
            raise FileExistsError(f"{work} exists and is not an interrupted gapcal build: move it away") from None
        if found == key:
            log(f"resuming the interrupted build in {work}")
        else:
            log(f"discarding an interrupted build of other inputs in {work}")
            shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    if not state.exists():
        atomic_write(state, lambda fh: fh.write(json.dumps({"key": key}).encode("utf-8")))


def _move_into_place(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(work, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


class _Embedder:
    """Embeds a list of items in chunks saved to ``folder``; chunks already there (an interrupted build of
    the same inputs) are read back instead of embedded again."""

    def __init__(self, encoder, folder: Path, settings: BuildSettings, show_progress):
        self.encoder, self.folder, self.settings = encoder, folder, settings
        self.chunk = max(CHUNK_ITEMS, settings.batch_size)
        self.show = sys.stderr.isatty() if show_progress is None else show_progress
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, modality: str, items: list):
        from tqdm.auto import tqdm

        vectors, ok = [], []
        with tqdm(total=len(items), unit=modality, desc=f"embedding {modality}s", disable=not self.show) as bar:
            for start in range(0, len(items), self.chunk):
                part = items[start:start + self.chunk]
                file = self.folder / f"{modality}-{start:09d}.npz"
                done = self._read(file, len(part)) if file.exists() else None
                if done is None:
                    done = self._embed(modality, part)
                    atomic_write(file, lambda fh, d=done: np.savez(fh, vectors=d[0], ok=d[1]))
                vectors.append(done[0])
                ok.append(done[1])
                bar.update(len(part))
        if not vectors:
            return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=bool)
        return np.ascontiguousarray(np.concatenate(vectors), dtype=np.float32), np.concatenate(ok)

    def _embed(self, modality, part):
        size = self.settings.batch_size
        if modality == "text":
            vectors = self.encoder.encode_text(part, batch_size=size, show_progress=False)
            return vectors, np.ones(len(part), dtype=bool)
        if self.settings.skip_errors:
            return self.encoder.encode_image(part, batch_size=size, show_progress=False, on_error="skip")
        vectors = self.encoder.encode_image(part, batch_size=size, show_progress=False)
        return vectors, np.ones(len(part), dtype=bool)

    @staticmethod
    def _read(file: Path, n: int):
        """A saved chunk, or None (re-embedded) when it does not hold what a chunk of ``n`` items should."""
        try:
            data = read_npz(file, {"vectors": n * 4 * 65536, "ok": n}, str(file))
        except (ValueError, OSError):
            return None
        if set(data) != {"vectors", "ok"} or data["ok"].dtype != bool or data["ok"].shape != (n,) \
                or data["vectors"].dtype != np.float32 or data["vectors"].ndim != 2 \
                or len(data["vectors"]) != int(data["ok"].sum()):
            return None
        return data["vectors"], data["ok"]


def _link(index, items: dict) -> list:
    """Cross-modal edges in HNSW graphs over flat vectors (``MixedIndex.link``), with up to ``LINK_QUERIES``
    stored items of each modality as the sample of queries; nothing for other structures."""
    from .stores.faiss import plumbing

    if plumbing.flat_graph(index.faiss_index("text")) is None:
        return []
    rng = np.random.default_rng(1)
    reports = []
    for modality, (vectors, _) in items.items():
        other = "text" if modality == "image" else "image"
        if len(vectors) and index.count(other) > 1:
            rows = np.sort(rng.choice(len(vectors), size=min(LINK_QUERIES, len(vectors)), replace=False))
            reports.append(index.link(vectors[rows], query_modality=modality))
    return reports


def _tune(index, items: dict, settings: BuildSettings) -> list:
    """Stored search settings for both query modalities, from a sample of the indexed items as queries (each
    query's own item is not counted)."""
    reports = []
    rng = np.random.default_rng(0)
    for modality, (vectors, ids) in items.items():
        if not len(vectors):
            continue
        rows = np.sort(rng.choice(len(vectors), size=min(TUNING_QUERIES, len(vectors)), replace=False))
        reports.append(index.tune(vectors[rows], query_modality=modality, target_recall=settings.target_recall,
                                  exclude_ids=ids[rows]))
    return reports


# ---------------------------------------------------------------------- searching
class IndexFolder:
    """A folder written by ``build_folder``, opened for searching by text, by image, or by a vector.

    The model named in ``gapcal.json`` embeds queries (``model=`` points elsewhere if it moved); it is
    loaded on first use.
    """

    def __init__(self, path, *, model=None, providers="auto"):
        self.path = check_path("path", path)
        self.manifest = read_manifest(self.path)
        from .stores.faiss import MixedIndex

        self.index = MixedIndex.load(self.path / "index")
        self.model = Path(model) if model is not None else Path(self.manifest["model"])
        self.images_root = Path(self.manifest["images_root"])
        self._providers = providers
        self._encoder = None
        self._raw = None

    def __repr__(self) -> str:
        return f"IndexFolder({str(self.path)!r}, {self.index!r})"

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoders import OnnxClipEncoder

            if not self.model.is_dir():
                raise FileNotFoundError(f"the index's model folder {str(self.model)!r} is not there: pass the "
                                        "model's folder (--model)")
            precision = self.manifest["settings"].get("precision", "fp32")
            encoder = OnnxClipEncoder(self.model, providers=self._providers, precision=precision)
            if encoder.dim != self.index.calibrator.dim_:
                raise ValueError(f"the model {str(self.model)!r} gives {encoder.dim}-d embeddings, the index holds "
                                 f"{self.index.calibrator.dim_}-d ones: pass the model it was built with")
            self._encoder = encoder
        return self._encoder

    def embed_query(self, *, text=None, image=None) -> tuple[np.ndarray, str]:
        """One raw query embedding and its modality, from a text or an image (path, bytes or PIL image)."""
        if (text is None) == (image is None):
            raise ValueError("give a query text or a query image (exactly one)")
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"the query text must be a non-empty string, got {text!r}")
            return self.encoder.encode_text([text], show_progress=False), "text"
        return self.encoder.encode_image([image], show_progress=False), "image"

    def search(self, *, text=None, image=None, k: int = 10, raw: bool = False, params=None) -> dict:
        """Ranked hits for a text or an image query: ``{"modality", "results", "raw"}``; each hit a dict of
        rank, id, modality, score and the item's payload (``image`` path or ``text``). ``raw=True`` also
        ranks by raw cosine (the uncalibrated ranking, to see the gap). ``params`` overrides the search
        settings stored at build (``{"efSearch": 128}``)."""
        vector, modality = self.embed_query(text=text, image=image)
        return self.search_vector(vector, query_modality=modality, k=k, raw=raw, params=params)

    def search_vector(self, vector, *, query_modality: str, k: int = 10, raw: bool = False, params=None) -> dict:
        """``search`` for a raw query embedding (1, d) of ``query_modality``."""
        check_modality("query_modality", query_modality)
        fields = self.fields
        result = self.index.search(vector, k, query_modality=query_modality, fields=fields, params=params)
        out = {"modality": query_modality, "results": [_flat(hit) for hit in result.to_list()[0]]}
        if raw:
            out["raw"] = self._raw_ranking(np.asarray(vector, dtype=np.float32), k, fields)
        return out

    @property
    def fields(self) -> list:
        """The payload fields the items carry (``image``, ``text`` and the pairs' extra columns)."""
        return self.index.payload_fields

    def _raw_ranking(self, vector: np.ndarray, k: int, fields) -> list:
        """Top k of both modalities by raw cosine (exact, over the kept embeddings)."""
        if self._raw is None:
            self._raw = self._read_embeddings()
        scores = np.concatenate([self._raw[m][0] @ vector[0] for m in MODALITIES])
        ids = np.concatenate([self._raw[m][1] for m in MODALITIES])
        kinds = np.repeat(MODALITIES, [len(self._raw[m][1]) for m in MODALITIES])
        live = np.isin(ids, np.concatenate([self.index.ids(m) for m in MODALITIES]))
        order = [i for i in np.argsort(-scores, kind="stable") if live[i]][:k]
        values = self.index.payload(ids[order], fields)
        return [_flat({"rank": r + 1, "id": int(ids[i]), "modality": str(kinds[i]), "score": float(scores[i]),
                       "payload": {n: values[n][r] for n in fields}}) for r, i in enumerate(order)]

    def _read_embeddings(self) -> dict:
        return read_embeddings(self.path, self.manifest)

    def image_file(self, item_id: int) -> Path | None:
        """The file of an indexed image item (for thumbnails), or None if the id is not an image here (only
        stored image items carry an ``image`` payload)."""
        if not 0 <= item_id < 2**63:
            return None
        path = self.index.payload([item_id], ["image"])["image"][0]
        if path is None:
            return None
        file = Path(path)
        return file if file.is_absolute() else self.images_root / file


def _flat(hit: dict) -> dict:
    """A hit as one flat dict: rank, id, modality, score, then the payload fields it has."""
    payload = hit.pop("payload", {}) or {}
    return {**hit, **{name: value for name, value in payload.items() if value is not None}}
