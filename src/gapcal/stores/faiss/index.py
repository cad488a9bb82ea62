"""MixedIndex: text and image embeddings in faiss, searched as one list ranked by calibrated score."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np

from ..._checks import MODALITIES, check_int, check_modality
from ..._files import alive, atomic_write, check_path, read_npz, remove_stale_temps
from ..._format import check_checksum, check_header, check_sealed, new_header, sealed, sha256_of
from ...calibration import GapCalibrator
from ..core import CalibratedStore, check_calibrator, check_fields, check_ids
from . import plumbing
from .backends import LAYOUTS, PerModality, Wrapped

_CHUNK = 65536
FORMAT = "gapcal.MixedIndex"
FORMAT_VERSION = 3  # 3: the sidecar carries a checksum of itself
SIDECAR = "mixed.json"


class MixedIndex(CalibratedStore):
    """Text and image embeddings in faiss, searched as one list ranked by calibrated score.

    ``MixedIndex(calibrator, "HNSW32")`` takes a faiss ``index_factory`` string or an empty ``faiss.Index``
    (inner-product metric, width ``calibrator.output_dim_``). ``add`` takes raw model embeddings and stores
    ``calibrator.transform`` of them; ``search`` returns items of both modalities (or one, with
    ``item_modality``) ordered by ``calibrator.similarity``; ``payload`` fields are kept with the items.

    Each item modality has its own faiss index, searched with its own query vector: within one (query
    modality, item modality) pair the calibrated score is a strictly increasing function of an inner
    product, so faiss's top-k is exact for it, and the per-modality lists are merged by score (see
    ``gapcal.stores.core``). Separate indexes beat one index with ID selectors: a flat index keeps its
    BLAS path (faiss scans selector-filtered flat indexes row by row) and an HNSW walk that skips the other
    modality's nodes stops early. HNSW pays a second graph walk, and its cross-modal walks (text query,
    image graph) are out of distribution, so at equal efSearch they recall less than a bare index's walk
    for its raw top-k (``bench/index_speed.py`` measures it).

    IVF specs share their lists out: ``"IVF4096,Flat"`` gives each modality 2048 lists (trained on that
    modality), and ``nprobe`` counts lists in total. Each query ranks the centroids of both modalities by
    calibrated reach (the pair type's score map of the centroid's inner product plus ``LIST_OPTIMISM``
    times the modality's spread of items around their centroid along the query) and scans its best
    ``nprobe`` lists, so it compares as many centroids and scans as many items as a bare IVF of the same
    spec. Settings stored by ``tune`` may instead give each modality its own nprobe (its best lists by
    centroid), as they give each HNSW walk its own efSearch. A template IVF that is already trained keeps
    its nlist in each modality.

    Thread safety: searches run concurrently; ``add``, ``remove`` and ``train`` wait for running
    searches and block new ones while they change the index.
    """

    def __init__(self, calibrator, index="Flat"):
        cal = check_calibrator(calibrator)
        dim = cal.output_dim_
        if isinstance(index, str):
            first, width = plumbing.build_from_spec(index, dim)
            second, spec = faiss.clone_index(first), index
        elif isinstance(index, faiss.Index):
            first = plumbing.clone_template(index, dim)
            second, width, spec = faiss.clone_index(first), first.d, plumbing.describe(first)
        else:
            raise TypeError(f"index must be a faiss index_factory string or an empty faiss.Index, got "
                            f"{type(index).__name__}")
        plumbing.check_coarse_metric("index", first)
        ivf, _ = plumbing.inverted_lists(first)
        if ivf is not None and not ivf.is_trained and ivf.nlist > 1:  # the spec's lists, shared out
            plumbing.split_lists(second, ivf.nlist - ivf.nlist // 2)
            plumbing.split_lists(first, ivf.nlist // 2)
        subs = {"text": plumbing.with_ids(first), "image": plumbing.with_ids(second)}
        super().__init__(cal, PerModality(cal, subs, width, spec))

    # ------------------------------------------------------------------ wrapping an existing index
    @classmethod
    def wrap(cls, calibrator, index, modalities, *, reindex="auto", candidates=4) -> MixedIndex:
        """Calibrated mixed search over an existing faiss index of RAW embeddings with the user's ids.

        ``modalities`` maps "text" and "image" to the ids of that modality; together they must list
        every id in ``index`` exactly once. Nothing is re-embedded. Two paths:

        * in place (``reindex=False``): the index is searched once per item modality through an ID
          selector. The calibration's linear part moves to the query side (<u, x @ P> = <u @ P.T, x>), but
          its L2 re-normalisations and the item-side hubness column are nonlinear in the item, so this
          fetches ``candidates * k`` items per modality by the linear part and re-scores them exactly from
          their stored vectors (``reconstruct``): returned scores are exact, only the candidate set is
          approximate. Needs the inner-product metric; an IVF index without a direct map gets a hash-table
          one; ``remove`` hides ids without deleting them from the user's index.
        * re-indexed (``reindex=True``): every vector is read back with ``reconstruct`` and indexed in a
          new per-modality MixedIndex of the same faiss structure: exact like a native one, any metric,
          at the cost of a rebuild. PQ/SQ codes give back approximate vectors, and those are indexed.

        ``reindex="auto"`` searches flat (exhaustive) indexes in place and re-indexes IVF, HNSW and
        selector-less ones: in a raw mixed index the modality gap keeps each modality in its own IVF lists
        and graph region, so a query filtered to the other modality barely reaches it
        (``tests/test_index_wrap.py`` measures both paths).
        """
        cal = check_calibrator(calibrator)
        if not isinstance(index, faiss.Index):
            raise TypeError(f"index must be a faiss.Index holding raw embeddings, got {type(index).__name__}")
        if index.d != cal.dim_:
            raise ValueError(f"index must hold raw embeddings of the calibrator's dimension d={cal.dim_}, "
                             f"got an index with d={index.d}")
        if reindex not in ("auto", True, False):
            raise ValueError(f"reindex must be 'auto', True or False, got {reindex!r}")
        candidates = check_int("candidates", candidates, minimum=1)
        if not index.is_trained:
            raise ValueError(f"index must be trained and hold the raw embeddings, got an untrained "
                             f"{plumbing.describe(index)}")
        live = cls._check_modalities(index, modalities)
        if reindex == "auto":
            reindex = bool(plumbing.structures(index)) or plumbing.selector_error(index) is not None
        if reindex:
            return cls._reindexed(index, cal, live)
        plumbing.check_inner_product("index", index)
        mixed = cls.__new__(cls)
        CalibratedStore.__init__(mixed, cal, Wrapped(cal, index, candidates, live=live))
        return mixed

    @staticmethod
    def _check_modalities(index, modalities) -> dict:
        if not isinstance(modalities, Mapping):
            raise TypeError("modalities must map 'text' and 'image' to arrays of ids, got "
                            f"{type(modalities).__name__}")
        unknown = [key for key in modalities if key not in MODALITIES]
        if unknown:
            raise ValueError(f"modalities keys must be among {MODALITIES}, got {unknown}")
        live = {m: check_ids(f"modalities[{m!r}]", modalities.get(m, np.empty(0, np.int64))) for m in MODALITIES}
        both = np.intersect1d(live["text"], live["image"])
        if len(both):
            raise ValueError(f"modalities must give each id one modality, got ids in both: {both[:5].tolist()}")
        stored = plumbing.stored_ids(index)
        listed = np.concatenate([live["text"], live["image"]])
        missing = np.setdiff1d(stored, listed)
        extra = np.setdiff1d(listed, stored)
        if len(missing):
            raise ValueError(f"modalities must cover every id in the index: {len(missing)} are missing, e.g. "
                             f"{missing[:5].tolist()}")
        if len(extra):
            raise ValueError(f"modalities lists {len(extra)} ids that the index does not hold, e.g. "
                             f"{extra[:5].tolist()}")
        if len(stored) != len(np.unique(stored)):
            raise ValueError("index must hold each id once, got an index with repeated ids")
        return live

    @classmethod
    def _reindexed(cls, index, cal, live) -> MixedIndex:
        from faiss.contrib.factory_tools import reverse_index_factory

        top = faiss.downcast_index(index)
        structure = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexIDMap) else top
        try:
            spec = reverse_index_factory(structure)
        except (NotImplementedError, AssertionError):  # what it raises for types it cannot name
            raise ValueError(f"index of type {type(structure).__name__} has no faiss factory string to rebuild "
                             "it from; build MixedIndex(calibrator, spec) and add the vectors instead") from None
        mixed = cls(cal, spec)
        ivf = faiss.try_extract_index_ivf(top)
        restore = ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap
        try:
            read = plumbing.Reconstructor(index)  # may give an IVF index a direct map: taken off again below
            for m in MODALITIES:
                if not len(live[m]):
                    continue
                vectors = np.concatenate([read(live[m][s:s + _CHUNK]) for s in range(0, len(live[m]), _CHUNK)])
                if not mixed._backend.is_trained(m):
                    mixed.train(vectors, modality=m)
                mixed.add(vectors, modality=m, ids=live[m])
        finally:
            if restore:
                ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        return mixed

    # ------------------------------------------------------------------ properties
    @property
    def layout(self) -> str:
        """"per-modality" (one faiss index per item modality) or "wrapped" (a user's raw index)."""
        return self._backend.layout

    @property
    def spec(self) -> str:
        """The faiss structure, as a factory string where faiss can name it."""
        return self._backend.spec

    def faiss_index(self, modality=None):
        """The underlying faiss index: per modality for the per-modality layout, the wrapped one otherwise."""
        return self._backend.faiss_index(modality)

    def ids(self, modality) -> np.ndarray:
        """The ids of one modality's searchable items, in the order they were added (a copy)."""
        return self._backend.live[check_modality("modality", modality)].copy()

    def __repr__(self) -> str:
        return (f"MixedIndex({self.spec!r}, layout={self.layout!r}, text={self.count('text')}, "
                f"image={self.count('image')})")

    # ------------------------------------------------------------------ training
    def train(self, vectors, *, modality) -> None:
        """Train one modality's faiss index (IVF, PQ, ...) on raw embeddings of that modality."""
        check_modality("modality", modality)
        x = self._rows("vectors", vectors, allow_empty=False)
        with self._lock.write():
            self._check_calibrator_unchanged()
            self._backend.train(modality, x)

    def is_trained(self, modality) -> bool:
        """Whether one modality's faiss index can take items (IVF and PQ indexes need ``train`` first)."""
        return self._backend.is_trained(check_modality("modality", modality))

    # ------------------------------------------------------------------ payload
    @property
    def payload_fields(self) -> list:
        """Names of the payload fields stored items carry."""
        with self._lock.read():
            return sorted(self._backend.payload)

    def payload(self, ids, fields=None) -> dict:
        """Payload values of items: ``{field: [value per id]}`` (None where an item lacks the field or the id
        is not stored); ``fields=None``: every field."""
        wanted = check_ids("ids", ids)
        names = self.payload_fields if fields is None else check_fields(fields)
        with self._lock.read():
            return {name: values.tolist() for name, values in self._backend.field_values(wanted, names).items()}

    # ------------------------------------------------------------------ search settings
    @property
    def search_defaults(self) -> dict:
        """Settings a search without ``params`` uses: ``{query modality: {item modality: {"efSearch": 96}}}``, or
        ``{query modality: {"shared": {"nprobe": 16}}}`` for one setting applied as ``params`` applies it (IVF:
        one budget shared out between the modalities). ``tune`` chooses them; saved with the index. Empty:
        faiss's own settings."""
        return {q: {m: dict(v) for m, v in per.items()} for q, per in getattr(self._backend, "defaults", {}).items()}

    def set_search_defaults(self, defaults) -> None:
        """Replace the stored search settings (``{}`` or None: faiss's own)."""
        backend = self._per_modality("set_search_defaults")
        checked = backend.check_defaults(defaults)
        with self._lock.write():
            backend.defaults = checked

    def tune(self, queries, *, query_modality, target_recall=0.95, k=10, exclude_ids=None) -> dict:
        """Choose and store the cheapest efSearch or nprobe per item modality (IVF: or one shared nprobe, where
        that scans fewer items) whose recall@k against exact calibrated search reaches ``target_recall`` for
        these sample queries (raw embeddings of ``query_modality``) by one standard error of its mean, so that
        other queries like them reach it too.
        ``exclude_ids``: one id per query (-1: none) not to count, for queries that are themselves stored
        items. Returns the chosen settings, the mean recall they reached and its standard error."""
        from .tuning import tune

        backend = self._per_modality("tune")
        check_modality("query_modality", query_modality)
        q = self._rows("queries", queries, allow_empty=False)
        if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)) \
                or not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be a number in (0, 1], got {target_recall!r}")
        k = check_int("k", k, minimum=1)
        exclude = None
        if exclude_ids is not None:
            exclude = np.asarray(exclude_ids)
            if exclude.shape != (len(q),) or exclude.dtype.kind not in "iu":
                raise ValueError(f"exclude_ids must hold one integer id per query ({len(q)},), got "
                                 f"{exclude.dtype} {exclude.shape}")
            exclude = exclude.astype(np.int64)
        with self._lock.read():
            self._check_calibrator_unchanged()
        report = tune(self, q, query_modality=query_modality, target_recall=float(target_recall), k=k,
                      exclude_ids=exclude)
        if report["settings"]:
            with self._lock.write():
                backend.defaults = backend.check_defaults({**backend.defaults, query_modality: report["settings"]})
        return report

    def link(self, queries, *, query_modality, k=10) -> dict:
        """Cross-modal edges for HNSW graphs (after RoarGraph, Chen et al., VLDB 2024): for sample queries
        of ``query_modality`` (raw embeddings, e.g. a few thousand stored items of that modality or past
        queries), find their exact top ``k`` items of the other modality and link each query's best item
        with the others, both ways, in free slots of the graph's bottom layer (no edge is removed).

        A text query walking the image graph is out of distribution: the images it should find are not
        neighbours of one another, so the walk misses them. Items that are top results of one query become
        neighbours here. Results stay exact where they were; walks of every setting reach more of the true
        top k. Needs HNSW over flat vectors; saved with the index. Returns edges added per item modality."""
        from . import plumbing

        backend = self._per_modality("link")
        check_modality("query_modality", query_modality)
        q = self._rows("queries", queries, allow_empty=False)
        k = check_int("k", k, minimum=2)
        item_modality = "image" if query_modality == "text" else "text"
        graph = plumbing.flat_graph(backend.subs[item_modality])
        if graph is None:
            raise ValueError(f"link applies to HNSW indexes over flat vectors (HNSW32, HNSW32,Flat), got a "
                             f"{backend.spec} index")
        report = {"query_modality": query_modality, "item_modality": item_modality, "queries": len(q), "k": k}
        with self._lock.write():
            self._check_calibrator_unchanged()
            if graph.ntotal < 2:
                return {**report, "added": 0, "full": 0}
            plan = self.calibrator.plan_queries(q, query_modality=query_modality, item_modalities=(item_modality,))
            storage = faiss.downcast_index(graph.storage)
            _, top = storage.search(backend._padded(plan.vectors[0]), min(k, graph.ntotal))
            top = top[(top >= 0).all(axis=1)]
            src = np.repeat(top[:, 0], top.shape[1] - 1)
            dst = top[:, 1:].ravel()
            added, full = plumbing.link_level0(graph, np.concatenate([src, dst]), np.concatenate([dst, src]))
        return {**report, "added": added, "full": full}

    def _per_modality(self, what: str):
        if not hasattr(self._backend, "defaults"):
            raise ValueError(f"{what} applies to indexes MixedIndex built per modality; this one searches a wrapped "
                             "index in place (pass params to search instead)")
        return self._backend

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the index to the directory ``path``; atomic (a crash leaves the old or the new one readable),
        checksummed, no pickle.

        The directory holds ``mixed.json`` (format, layout, calibrator fingerprint, and the name and sha256
        of every other file), the faiss index file(s), the calibrator, the ids and the payload. A save writes
        a new set of files under a fresh token, flushes them, then replaces ``mixed.json`` with one atomic
        rename; files of the previous set are deleted afterwards.
        """
        folder = check_path("path", path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"path must be a directory (a MixedIndex is saved as several files), got the file "
                             f"{str(folder)!r}")
        if not folder.parent.exists():
            raise ValueError(f"path's folder does not exist: {str(folder.parent)!r}")
        with self._lock.read():
            self._check_calibrator_unchanged()
            previous = _read_sidecar(folder) if (folder / SIDECAR).exists() else None
            created = not folder.exists()
            folder.mkdir(exist_ok=True)
            _remove_orphans(folder, previous)
            token, backend, written = f"{os.getpid()}-{secrets.token_hex(6)}", self._backend, []

            def record(name):
                written.append(name)
                _fsync(folder / name)
                return {"file": name, "sha256": sha256_of(folder / name)}

            try:
                indexes = {}
                for key, index in backend.indexes().items():
                    name = f"{key}-{token}.faiss"
                    written.append(name)
                    faiss.write_index(index, str(folder / name))
                    indexes[key] = {**record(name), "ntotal": int(index.ntotal), "d": int(index.d),
                                    "type": _kind(index)}
                self._cal.save(folder / f"calibrator-{token}.npz")
                calibrator = {**record(f"calibrator-{token}.npz"), "fingerprint": self._cal.fingerprint_}
                atomic_write(folder / f"ids-{token}.npz", lambda fh: np.savez(fh, **backend.id_arrays()))
                ids = record(f"ids-{token}.npz")
                payload = json.dumps(backend.payload_state()).encode("utf-8")
                atomic_write(folder / f"payload-{token}.json", lambda fh: fh.write(payload))
                header = sealed(new_header(FORMAT, FORMAT_VERSION, dim=self._cal.dim_, backend=backend.state(),
                                    calibrator=calibrator, indexes=indexes, ids=ids,
                                    payload=record(f"payload-{token}.json"),
                                    counts={m: {"live": len(backend.live[m]), "hidden": len(backend.hidden[m])}
                                            for m in MODALITIES}))
                atomic_write(folder / SIDECAR, lambda fh: fh.write(json.dumps(header, indent=2).encode("utf-8")))
            except BaseException:
                for name in written:
                    (folder / name).unlink(missing_ok=True)
                if created:
                    folder.rmdir()
                raise
            _fsync(folder)
            for name in set(_files(previous) if previous else []) - set(written):
                (folder / name).unlink(missing_ok=True)

    @classmethod
    def load(cls, path, *, calibrator=None) -> MixedIndex:
        """Read a directory written by ``save``; with ``calibrator``, also refuse one built with another.

        Every file is checked against the checksum ``mixed.json`` recorded for it.
        """
        folder = check_path("path", path)
        if not (folder / SIDECAR).is_file():
            raise FileNotFoundError(f"path does not hold a saved MixedIndex: {str(folder / SIDECAR)!r} does not "
                                    "exist")
        header = _read_sidecar(folder)
        where = repr(str(folder))
        _remove_orphans(folder, header)
        try:
            state, dim = dict(header["backend"]), int(header["dim"])
            entries = {"calibrator": header["calibrator"], "ids": header["ids"], "payload": header["payload"],
                       **{f"index {k}": v for k, v in dict(header["indexes"]).items()}}
            for entry in entries.values():
                if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
                    raise ValueError(f"a file entry is malformed: {entry!r}")
            counts = {m: {kind: int(header["counts"][m][kind]) for kind in ("live", "hidden")} for m in MODALITIES}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{str(folder / SIDECAR)!r} is corrupt: {exc}") from None
        missing = [e["file"] for e in entries.values() if not (folder / e["file"]).is_file()]
        if missing:
            raise ValueError(f"{where} is incomplete: its sidecar names files that are not there: {missing}")
        for entry in entries.values():
            check_checksum(folder / entry["file"], entry.get("sha256"), where)
        fingerprint = entries["calibrator"].get("fingerprint")
        cal = GapCalibrator.load(folder / entries["calibrator"]["file"])
        if cal.fingerprint_ != fingerprint:
            raise ValueError(f"{where}: the calibrator file does not match the index (fingerprint "
                             f"{cal.fingerprint_}, the sidecar says {fingerprint})")
        if calibrator is not None:
            if getattr(calibrator, "fingerprint_", None) != fingerprint:
                raise ValueError(f"calibrator must be the one the index was built with (fingerprint {fingerprint}), "
                                 f"got fingerprint {getattr(calibrator, 'fingerprint_', None)}")
            cal = calibrator
        if cal.dim_ != dim:
            raise ValueError(f"{where}: the sidecar says d={dim}, its calibrator has d={cal.dim_}")
        indexes = {}
        for key, entry in header["indexes"].items():
            index = _read_faiss(folder / entry["file"])
            if index.d != entry.get("d") or index.ntotal != entry.get("ntotal") or _kind(index) != entry.get("type"):
                raise ValueError(f"{str(folder / entry['file'])!r} does not match its sidecar: it holds a {_kind(index)} "
                                 f"index of {index.ntotal} vectors of dimension {index.d}, the sidecar says a "
                                 f"{entry.get('type')} index of {entry.get('ntotal')} of dimension {entry.get('d')}")
            indexes[key] = index
        live, hidden = _read_ids(folder / entries["ids"]["file"], counts)
        payload = _read_payload(folder / entries["payload"]["file"])
        layout = LAYOUTS.get(state.get("layout"))
        if layout is None:
            raise ValueError(f"{str(folder / SIDECAR)!r} names an unknown layout {state.get('layout')!r}")
        backend = layout.restore(cal, state, indexes, where, live=live, hidden=hidden, payload=payload)
        mixed = cls.__new__(cls)
        CalibratedStore.__init__(mixed, cal, backend)
        return mixed


# ---------------------------------------------------------------------- file helpers
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_sidecar(folder: Path) -> dict:
    path = folder / SIDECAR
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not a gapcal MixedIndex sidecar (unreadable JSON: {exc})") from None
    check_header(header, format=FORMAT, version=FORMAT_VERSION, oldest=FORMAT_VERSION, where=repr(str(path)),
                 what="gapcal MixedIndex sidecar", remedy="build the index again")
    check_sealed(header, repr(str(path)))
    return header


_OWN_FILE = re.compile(r"^(text|image|shared|calibrator|ids|payload)-(?P<pid>\d+)-[0-9a-f]{12}\.(faiss|npz|json)$")


def _remove_orphans(folder: Path, header) -> None:
    """Delete files an interrupted save left behind: gapcal's own names that ``header`` does not list, written
    by processes that are gone (a save running elsewhere keeps its files), and their temporary files."""
    listed = set(_files(header)) if header else set()
    for entry in folder.iterdir():
        match = _OWN_FILE.match(entry.name)
        if match and entry.name not in listed and not alive(int(match["pid"])):
            entry.unlink(missing_ok=True)
    remove_stale_temps(folder)


def _files(header: dict) -> list:
    entries = [header.get(key) for key in ("calibrator", "ids", "payload")] + list(header.get("indexes", {}).values())
    return [e["file"] for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)]


def _kind(index) -> str:
    """The index's structure for the sidecar: class names down the id map, e.g. ``IndexIDMap2(HNSW32)``."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return f"{type(index).__name__}({plumbing.describe(index.index)})"
    return plumbing.describe(index)


def _read_faiss(path: Path):
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{str(path)!r} is not a readable faiss index (truncated or corrupt): "
                         f"{plumbing.faiss_message(exc)}") from None


def _read_ids(path: Path, counts: dict) -> tuple:
    most = 8 * sum(c for m in MODALITIES for c in counts[m].values())  # int64 ids: the sidecar bounds the file
    arrays = read_npz(path, {f"{kind}_{m}": most for kind in ("live", "hidden") for m in MODALITIES},
                      repr(str(path)))
    ids = {}
    for kind in ("live", "hidden"):
        ids[kind] = {}
        for m in MODALITIES:
            arr = arrays.get(f"{kind}_{m}")
            want = counts[m][kind]
            if arr is None or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or len(arr) != want:
                raise ValueError(f"{str(path)!r} does not match its sidecar: {kind} {m} ids should be {want}, "
                                 f"got {None if arr is None else arr.shape}")
            ids[kind][m] = arr.astype(np.int64)
    return ids["live"], ids["hidden"]


def _read_payload(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): {int(i): value for i, value in pairs} for name, pairs in data.items()}
    except (UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable payload file: {exc}") from None
