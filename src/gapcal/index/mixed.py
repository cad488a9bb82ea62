"""MixedIndex: one searchable store of text and image embeddings, ranked by calibrated score."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import contextmanager

import faiss
import numpy as np

from .._checks import MODALITIES, as_matrix, check_modality
from .._search import SearchResult, check_calibrator, check_ids, check_k, merge_ranked
from ..calibration import GapCalibrator
from . import _faiss

_CHUNK = 65536


class _ReadWriteLock:
    """Concurrent searches, exclusive changes; a waiting change blocks new searches so it cannot starve."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class _Split:
    """One faiss index per item modality holding calibrated item vectors (see MixedIndex's notes);
    IVF ones share one ``nprobe`` budget."""

    layout = "per-modality"
    appends_positions = False

    def __init__(self, calibrator, subs: dict, width: int, spec: str, spread=None):
        self.cal, self.subs, self.width, self.spec = calibrator, subs, width, spec
        self.removable = {m: _faiss.can_remove(subs[m]) for m in MODALITIES}
        self.structures = _faiss.structures(subs["text"])
        self._hidden = {m: None for m in MODALITIES}  # selectors that skip ids faiss could not delete
        self.lists = {m: _faiss.inverted_lists(subs[m]) for m in MODALITIES}  # (IVF structure, transforms)
        for ivf, _ in self.lists.values():
            if ivf is not None and ivf.parallel_mode == 0:
                ivf.parallel_mode = 3  # threads over queries inside search_preassigned too (mode 0: only in search)
        # per modality: mean squared distance of its vectors to their list's centroid (IVF only)
        self.spread = dict(spread) if spread else {m: None for m in MODALITIES}

    def _padded(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.shape[1] == self.width:
            return vectors
        out = np.zeros((len(vectors), self.width), dtype=np.float32)
        out[:, :vectors.shape[1]] = vectors
        return out

    def is_trained(self, modality) -> bool:
        return bool(self.subs[modality].is_trained)

    def train(self, modality, x) -> None:
        sub = self.subs[modality]
        vectors = self._padded(self.cal.transform(x, modality))
        try:
            sub.train(vectors)
        except RuntimeError as exc:
            raise ValueError(f"vectors could not train the {modality} items' index ({self.spec}): "
                             f"{_faiss.faiss_message(exc)}") from None
        if self.lists[modality][0] is not None:
            self.spread[modality] = _faiss.list_spread(sub, vectors[:_CHUNK])

    def add(self, modality, x, ids) -> None:
        sub = self.subs[modality]
        if len(x) > _CHUNK:
            _faiss.reserve(sub, len(x))
        for start in range(0, len(x), _CHUNK):
            chunk = self._padded(self.cal.transform(x[start:start + _CHUNK], modality))
            if self.lists[modality][0] is not None and self.spread[modality] is None:  # trained by its owner
                self.spread[modality] = _faiss.list_spread(sub, chunk)
            sub.add_with_ids(chunk, ids[start:start + _CHUNK])

    def remove(self, modality, ids) -> bool:
        if not self.removable[modality]:
            return False
        self.subs[modality].remove_ids(faiss.IDSelectorBatch(ids))
        return True

    def refresh(self, modality, live, hidden) -> None:
        if len(hidden):
            inner = faiss.IDSelectorBatch(hidden)
            self._hidden[modality] = (faiss.IDSelectorNot(inner), inner)
        else:
            self._hidden[modality] = None

    def search(self, queries, query_modality, targets, k, settings):
        """(scores, ids) of the top k per target item modality, scores calibrated; ``queries[j]`` is the
        calibrator's query vectors for ``targets[j]``. An untrained modality holds nothing: no hits."""
        trained = [(m, u) for m, u in zip(targets, queries) if self.is_trained(m)]
        search = self._search_lists if self.lists["text"][0] is not None else self._search_each
        found = dict(zip([m for m, _ in trained], search(trained, query_modality, k, settings) if trained else []))
        if len(found) < len(targets):
            nothing = (np.full((len(queries[0]), k), -np.inf, dtype=np.float32), np.full((len(queries[0]), k), -1))
            return [found.get(m, nothing) for m in targets]
        return [found[m] for m in targets]

    def _search_each(self, trained, query_modality, k, settings):
        parts = []
        for m, u in trained:
            hidden = self._hidden[m]
            params, keep = _faiss.search_parameters(self.subs[m], hidden and hidden[0], settings)
            scores, ids = self.subs[m].search(self._padded(u), k, params=params)
            del keep
            parts.append((self.cal.map_scores(scores, query_modality=query_modality, item_modality=m), ids))
        return parts

    def _search_lists(self, trained, query_modality, k, settings):
        """IVF: rank the lists of every target modality by calibrated reach, scan the best ``nprobe`` in all."""
        budget = int(settings.get("nprobe", max(self.lists[m][0].nprobe for m, _ in trained)))
        probes = []
        for m, u in trained:
            ivf, chain = self.lists[m]
            u = _faiss.before_lists(chain, self._padded(u))
            score_map = self.cal.score_map(query_modality=query_modality, item_modality=m)
            centroid_scores, lists = ivf.quantizer.search(u, min(budget, ivf.nlist))
            optimism = np.float32(_faiss.LIST_OPTIMISM * np.sqrt((self.spread[m] or 0.0) / ivf.d))
            reach = score_map(centroid_scores + (optimism * np.sqrt(np.einsum("ij,ij->i", u, u)))[:, None])
            reach[lists < 0] = -np.inf
            probes.append((m, u, score_map, centroid_scores, lists, reach))
        if len(probes) > 1 and sum(p[4].shape[1] for p in probes) > budget:
            # one budget for both modalities: keep each query's best lists overall (ties: the first)
            lists = np.concatenate([p[4] for p in probes], axis=1)
            beyond = np.argsort(-np.concatenate([p[5] for p in probes], axis=1), axis=1, kind="stable")[:, budget:]
            lists[np.arange(len(lists))[:, None], beyond] = -1
            width = probes[0][4].shape[1]
            probes = [probes[0][:4] + (lists[:, :width],), probes[1][:4] + (lists[:, width:],)]
        parts = []
        for m, u, score_map, centroid_scores, lists, *_ in probes:
            hidden = self._hidden[m]
            scores, ids = _faiss.search_lists(self.lists[m][0], u, k, lists, centroid_scores, hidden and hidden[0])
            parts.append((score_map(scores).astype(np.float32), ids))
        return parts


class _Wrapped:
    """A user's faiss index of raw embeddings, searched one item modality at a time (see MixedIndex.wrap)."""

    layout = "wrapped"

    def __init__(self, calibrator, index, candidates: int):
        self.cal, self.candidates = calibrator, candidates
        self.owner = index  # the caller's Python object owns the C++ index: keep it alive
        self.index = faiss.downcast_index(index)
        self.width = self.index.d
        self.spec = _faiss.describe(self.index)
        refused = _faiss.selector_error(self.index)
        if refused:
            raise ValueError(f"index must accept faiss ID selectors, through which wrap searches one modality at a "
                             f"time; a {self.spec} index does not ({refused}): use reindex=True")
        self._reconstruct = _faiss.Reconstructor(self.index)
        self.structures = _faiss.structures(self.index)
        self._selectors = {m: None for m in MODALITIES}
        self.appends_positions = (faiss.try_extract_index_ivf(self.index) is None
                                  and not isinstance(self.index, faiss.IndexIDMap))

    def is_trained(self, modality) -> bool:
        return True  # wrap() refuses untrained indexes

    def add(self, modality, x, ids) -> None:
        if self.appends_positions:  # its ids are positions: MixedIndex.add checked they are the next ones
            self.index.add(x)
        else:
            self.index.add_with_ids(x, ids)
        self._reconstruct.refresh()

    def remove(self, modality, ids) -> bool:
        return False  # hidden through the selectors: the user's index is not rewritten

    def refresh(self, modality, live, hidden) -> None:
        self._selectors[modality] = faiss.IDSelectorBatch(live)

    def _candidate_queries(self, u, modality):
        """The linear part of the calibrated score as a query on raw vectors, for candidate generation.

        Item vectors are ``normalize(normalize(x) @ P - o)`` then get a hubness column; dropping both
        normalisations and the hubness column leaves ``<u, x @ P> + const``, i.e. a query ``u @ P.T``.
        """
        q = u[:, :self.cal.dim_]
        proj = self.cal.projection_matrix(modality)
        return np.ascontiguousarray(q if proj is None else q @ proj.T.astype(np.float32), dtype=np.float32)

    def search(self, queries, query_modality, targets, k, settings):
        """(scores, ids) of the top k per target item modality, scores calibrated; ``queries[j]`` is the
        calibrator's query vectors for ``targets[j]``."""
        n_cand = k * self.candidates
        step = max(1, _CHUNK // n_cand)  # bounds the re-scored vectors held at once to about _CHUNK
        out = []
        for m, u in zip(targets, queries):
            parts = [self._search_chunk(u[s:s + step], query_modality, m, k, n_cand, settings)
                     for s in range(0, len(u), step)]
            out.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
        return out

    def _search_chunk(self, u, query_modality, modality, k, n_cand, settings):
        params, keep = _faiss.search_parameters(self.index, self._selectors[modality], settings)
        _, ids = self.index.search(self._candidate_queries(u, modality), n_cand, params=params)
        del keep
        found = ids >= 0
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        if found.any():
            rows = np.nonzero(found)[0]
            items = self.cal.transform(self._reconstruct(ids[found]), modality)
            scores[found] = self.cal.map_scores(np.einsum("ij,ij->i", u[rows], items),
                                                query_modality=query_modality, item_modality=modality)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)



class MixedIndex:
    """Text and image embeddings in one FAISS-backed store, searched as one list ranked by calibrated score.

    ``MixedIndex(calibrator, "HNSW32")`` takes a faiss ``index_factory`` string or an empty
    ``faiss.Index`` (inner-product metric, width ``calibrator.output_dim_``). ``add`` takes raw model
    embeddings and stores ``calibrator.transform`` of them; ``search`` returns items of both modalities
    (or one, with ``item_modality``) ordered by ``calibrator.similarity``.

    Why one faiss index per item modality: within one (query modality, item modality) pair the calibrated
    score is a strictly increasing function of an inner product (the pair type's score map), so faiss's top-k
    is exact for it; between item modalities the query vector (its hubness weight) and the score map differ,
    so no single faiss query ranks both. Each modality's index is searched with its own query, its scores are
    mapped, and the two top-k lists are merged. Separate indexes beat one index with ID selectors (measured on
    100k vectors, k=10): a flat index keeps its BLAS path (0.66 vs 7.9 ms/query; faiss scans selector-filtered
    flat indexes row by row), and an HNSW walk that skips the other modality's nodes stops early (recall@10
    0.81 vs 0.50 at efSearch 64). Costs against bare faiss on the same vectors: flat indexes scan the same
    rows; HNSW pays a second graph walk, and its cross-modal walks (text query, image graph) are out of
    distribution, so at equal efSearch they recall less than a bare index's walk for its raw top-k.

    IVF specs share their lists out: ``"IVF4096,Flat"`` gives each modality 2048 lists (trained on that
    modality), and ``nprobe`` counts lists in total. Each query ranks the centroids of both modalities by
    calibrated reach (the pair type's score map of the centroid's inner product plus ``LIST_OPTIMISM``
    times the modality's spread of items around their centroid along the query: where the map is steep,
    as for cross-modal pairs, a list reaches further above its centroid) and scans its best ``nprobe``
    lists, so it compares as many centroids and scans as many items as a bare IVF of the same spec. At equal nprobe
    it recalls a little less than a bare index does for raw scores, whose top-k sits in one modality's
    lists (``bench/index_speed.py`` prints both). A template IVF that is already trained keeps its nlist
    in each modality.

    Thread safety: searches run concurrently; ``add``, ``remove`` and ``train`` wait for running
    searches and block new ones while they change the index.
    """

    def __init__(self, calibrator, index="Flat"):
        cal = check_calibrator(calibrator)
        dim = cal.output_dim_
        if isinstance(index, str):
            first, width = _faiss.build_from_spec(index, dim)
            second, spec = faiss.clone_index(first), index
        elif isinstance(index, faiss.Index):
            first = _faiss.clone_template(index, dim)
            second, width, spec = faiss.clone_index(first), first.d, _faiss.describe(first)
        else:
            raise TypeError(f"index must be a faiss index_factory string or an empty faiss.Index, got "
                            f"{type(index).__name__}")
        _faiss.check_coarse_metric("index", first)
        ivf, _ = _faiss.inverted_lists(first)
        if ivf is not None and not ivf.is_trained and ivf.nlist > 1:  # the spec's lists, shared out
            _faiss.split_lists(second, ivf.nlist - ivf.nlist // 2)
            _faiss.split_lists(first, ivf.nlist // 2)
        subs = {"text": _faiss.with_ids(first), "image": _faiss.with_ids(second)}
        self._setup(cal, _Split(cal, subs, width, spec))

    def _setup(self, cal, backend, live=None, hidden=None) -> None:
        self._cal = cal
        self._fingerprint = cal.fingerprint_
        self._backend = backend
        self._lock = _ReadWriteLock()
        empty = np.empty(0, dtype=np.int64)
        self._live = dict(live) if live else {m: empty for m in MODALITIES}
        self._hidden = dict(hidden) if hidden else {m: empty for m in MODALITIES}
        for m in MODALITIES:
            backend.refresh(m, self._live[m], self._hidden[m])

    # ------------------------------------------------------------------ wrapping an existing index
    @classmethod
    def wrap(cls, index, calibrator, modalities, *, reindex="auto", candidates=4) -> MixedIndex:
        """Calibrated mixed search over an existing faiss index of RAW embeddings with the user's ids.

        ``modalities`` maps "text" and "image" to the ids of that modality; together they must list
        every id in ``index`` exactly once. Nothing is re-embedded. Two paths:

        * in place (``reindex=False``): the index is searched once per item modality through an ID
          selector. The calibration's linear part moves to the query side (<u, x @ P> = <u @ P.T, x>), but
          its L2 re-normalisations and the item-side hubness column are nonlinear in the item, so this
          fetches ``candidates * k`` items per modality by the linear part and re-scores them exactly from
          their stored vectors (``reconstruct``): returned scores are exact, only the candidate set is
          approximate (COCO-500, default calibrator, flat index: recall@10 0.952 with 1 candidate per
          result, 0.9998 with 4). Needs the inner-product metric; an IVF index without a direct map gets
          a hash-table one; ``remove`` hides ids without deleting them from the user's index.
        * re-indexed (``reindex=True``): every vector is read back with ``reconstruct`` and indexed in a
          new per-modality MixedIndex of the same faiss structure: exact like a native one, any metric,
          at the cost of a rebuild. PQ/SQ codes give back approximate vectors, and those are indexed.

        ``reindex="auto"`` searches flat (exhaustive) indexes in place and re-indexes IVF, HNSW and
        selector-less ones: in a raw mixed index the modality gap keeps each modality in its own IVF
        lists and graph region, so a query filtered to the other modality barely reaches it. Measured
        recall@10 on COCO-500 (both modalities in one raw index; in place vs re-indexed): IVF16,Flat
        nprobe 4: 0.42 vs 0.92; HNSW32 efSearch 64: 0.44 vs 1.00.
        """
        cal = check_calibrator(calibrator)
        if not isinstance(index, faiss.Index):
            raise TypeError(f"index must be a faiss.Index holding raw embeddings, got {type(index).__name__}")
        if index.d != cal.dim_:
            raise ValueError(f"index must hold raw embeddings of the calibrator's dimension d={cal.dim_}, "
                             f"got an index with d={index.d}")
        if reindex not in ("auto", True, False):
            raise ValueError(f"reindex must be 'auto', True or False, got {reindex!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
            raise ValueError(f"candidates must be a positive integer (candidates per result), got {candidates!r}")
        if not index.is_trained:
            raise ValueError(f"index must be trained and hold the raw embeddings, got an untrained "
                             f"{_faiss.describe(index)}")
        live = cls._check_modalities(index, modalities)
        if reindex == "auto":
            reindex = bool(_faiss.structures(index)) or _faiss.selector_error(index) is not None
        if reindex:
            return cls._reindexed(index, cal, live)
        _faiss.check_inner_product("index", index)
        mixed = cls.__new__(cls)
        mixed._setup(cal, _Wrapped(cal, index, int(candidates)), live)
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
        stored = _faiss.stored_ids(index)
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
            read = _faiss.Reconstructor(index)  # may give an IVF index a direct map: taken off again below
            for m in MODALITIES:
                if not len(live[m]):
                    continue
                vectors = np.concatenate([read(live[m][s:s + _CHUNK]) for s in range(0, len(live[m]), _CHUNK)])
                if not mixed._backend.is_trained(m):
                    mixed.train(vectors, m)
                mixed.add(vectors, m, live[m])
        finally:
            if restore:
                ivf.set_direct_map_type(faiss.DirectMap.NoMap)
        return mixed

    # ------------------------------------------------------------------ properties
    @property
    def calibrator(self) -> GapCalibrator:
        return self._cal

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
        if self._backend.layout == "wrapped":
            return self._backend.owner
        return self._backend.subs[check_modality("modality", modality)]

    def count(self, modality) -> int:
        """Number of searchable items of one modality."""
        return len(self._live[check_modality("modality", modality)])

    def __len__(self) -> int:
        return sum(len(v) for v in self._live.values())

    def __repr__(self) -> str:
        return (f"MixedIndex({self.spec!r}, layout={self.layout!r}, text={self.count('text')}, "
                f"image={self.count('image')})")

    def _check_calibrator_unchanged(self) -> None:
        if self._cal.fingerprint_ != self._fingerprint:
            raise ValueError(f"the calibrator was refitted after this index was built (fingerprint "
                             f"{self._fingerprint} -> {self._cal.fingerprint_}), so the stored vectors no longer "
                             "match it: build a new index with the refitted calibrator")

    def _vectors(self, name, vectors, allow_empty=True, check_rows=True):
        return as_matrix(name, vectors, dim=self._cal.dim_, allow_empty=allow_empty, check_rows=check_rows)

    # ------------------------------------------------------------------ changes
    def train(self, vectors, modality) -> None:
        """Train one modality's faiss index (IVF, PQ, ...) on raw embeddings of that modality."""
        check_modality("modality", modality)
        x = self._vectors("vectors", vectors, allow_empty=False)
        with self._lock.write():
            self._check_calibrator_unchanged()
            if self._backend.layout == "wrapped":
                raise ValueError("train applies to per-modality indexes; a wrapped index was trained by its owner")
            if self._backend.is_trained(modality):
                raise ValueError(f"modality {modality!r}: its faiss index ({self.spec}) is already trained")
            self._backend.train(modality, x)

    def add(self, vectors, modality="image", ids=None) -> np.ndarray:
        """Add raw embeddings of one modality; returns their ids (``ids``, or the next free ones)."""
        check_modality("modality", modality)
        x = self._vectors("vectors", vectors)
        with self._lock.write():
            self._check_calibrator_unchanged()
            known = np.concatenate([*self._live.values(), *self._hidden.values()])
            if ids is None:
                start = int(known.max()) + 1 if len(known) else 0
                new = np.arange(start, start + len(x), dtype=np.int64)
            else:
                new = check_ids("ids", ids, len(x))
                taken = new[np.isin(new, known)]
                if len(taken):
                    raise ValueError(f"ids must be new, got {len(taken)} already in the index (removed ids of an "
                                     f"index that cannot delete stay reserved): {taken[:5].tolist()}")
            if not len(x):
                return new
            if not self._backend.is_trained(modality):
                raise ValueError(f"the {modality} items' faiss index ({self.spec}) is not trained: call "
                                 f"train(vectors, {modality!r}) first")
            backend = self._backend
            if backend.appends_positions:
                expected = np.arange(backend.index.ntotal, backend.index.ntotal + len(x))
                if not np.array_equal(new, expected):
                    raise ValueError(f"ids must continue the wrapped {self.spec} index's positions "
                                     f"({expected[0]}..{expected[-1]}): its ids are positions, got {new[:5].tolist()}...")
            backend.add(modality, x, new)
            self._live[modality] = np.concatenate([self._live[modality], new])
            backend.refresh(modality, self._live[modality], self._hidden[modality])
            return new

    def remove(self, ids) -> int:
        """Remove items by id (all must be present); returns how many were removed.

        Indexes that faiss cannot delete from (HNSW; any wrapped index) keep the vectors but never return
        them; their ids stay reserved.
        """
        gone = check_ids("ids", ids)
        with self._lock.write():
            self._check_calibrator_unchanged()
            where = {m: np.isin(gone, self._live[m]) for m in MODALITIES}
            absent = gone[~(where["text"] | where["image"])]
            if len(absent):
                raise ValueError(f"ids must all be in the index, got {len(absent)} that are not: {absent[:5].tolist()}")
            for m in MODALITIES:
                drop = gone[where[m]]
                if not len(drop):
                    continue
                if not self._backend.remove(m, drop):
                    self._hidden[m] = np.concatenate([self._hidden[m], drop])
                self._live[m] = self._live[m][~np.isin(self._live[m], drop)]
                self._backend.refresh(m, self._live[m], self._hidden[m])
            return len(gone)

    # ------------------------------------------------------------------ search
    def _check_settings(self, params) -> dict:
        if params is None:
            return {}
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of faiss search settings, got {type(params).__name__}")
        have = self._backend.structures
        for name, value in params.items():
            if name not in _faiss.SEARCH_SETTINGS:
                raise ValueError(f"params keys must be among {sorted(_faiss.SEARCH_SETTINGS)}, got {name!r}")
            if _faiss.SEARCH_SETTINGS[name] not in have:
                raise ValueError(f"params[{name!r}] applies to {_faiss.SEARCH_SETTINGS[name].upper()} indexes, "
                                 f"got a {self.spec} index")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"params[{name!r}] must be a positive integer, got {value!r}")
        return dict(params)

    def search(self, queries, k=10, query_modality="text", item_modality=None, *, params=None) -> SearchResult:
        """Top-k items by calibrated score for raw query embeddings.

        ``item_modality=None`` searches both modalities as one ranked list. ``params`` passes faiss
        search settings through per call (``{"efSearch": 64}`` for HNSW, ``{"nprobe": 16}`` for IVF);
        without it the faiss index's own settings apply.
        """
        check_modality("query_modality", query_modality)
        targets = MODALITIES if item_modality is None else (check_modality("item_modality", item_modality),)
        k = check_k(k)
        q = self._vectors("queries", queries, allow_empty=False, check_rows=False)  # transform_queries checks rows
        settings = self._check_settings(params)
        with self._lock.read():
            self._check_calibrator_unchanged()
            u = self._cal.transform_queries(q, query_modality, targets)
            parts = self._backend.search(u, query_modality, targets, k, settings)
        _, scores, ids, names = merge_ranked(targets, parts, k)
        return SearchResult(ids=ids, scores=scores, modalities=names)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the index to the directory ``path`` (see ``gapcal.index.store``); atomic, no pickle."""
        from .store import save_index

        with self._lock.read():
            self._check_calibrator_unchanged()
            save_index(self, path)

    @classmethod
    def load(cls, path, calibrator=None) -> MixedIndex:
        """Read a directory written by ``save``; with ``calibrator``, also refuse one built with another."""
        from .store import load_index

        return load_index(cls, path, calibrator)
