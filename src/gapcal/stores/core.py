"""What every calibrated store shares, free of any engine (numpy only).

A store holds raw embeddings of two modalities as calibrated vectors in some engine (faiss, Milvus) and
answers queries with one list ranked by the calibrator's score. ``CalibratedStore`` does everything but
the engine's own steps: checking the calibrator (and that it is not refitted under the store), validating
vectors, modalities, ids and payloads, the id policy, one query vector per item modality, mapping the
engine's inner products to calibrated scores, and merging the per-modality top-k lists. An engine
supplies a ``Backend``: insert, delete, search and bookkeeping in its own terms.

Ranking is exact per modality: within one (query modality, item modality) pair the calibrated score is a
strictly increasing function of an inner product, so an engine's inner-product top-k of one modality is
that pair's calibrated top-k; the query vector and the score map differ between modalities, so each
modality is searched with its own query and the lists are merged.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple, Protocol

import numpy as np

from .._checks import MODALITIES, as_array, as_matrix, check_field_name, check_int, check_modality, check_rows
from ..calibration import GapCalibrator

_ID_SPACE = 1 << 62  # ids=None draws ids uniformly from [0, 2**62): no counter to share between writers


class _Ranked(NamedTuple):
    scores: np.ndarray
    ids: np.ndarray
    modalities: np.ndarray


class Hit(NamedTuple):
    """One result: its rank (1 = best), id, modality, calibrated score and the payload fields asked for."""

    rank: int
    id: int
    modality: str
    score: float
    payload: dict


class SearchResult(_Ranked):
    """Ranked results, best first, each (n_queries, k); unpacks like faiss's ``D, I``:
    ``scores, ids, modalities = store.search(...)``.

    ``ids`` holds the items' ids (-1 where fewer than k items were found), ``scores`` their calibrated
    scores (-inf there), ``modalities`` "text" or "image" ("" there); ``fields[name]`` is an (n_queries, k)
    object array of a payload field asked for (None where an item has no such field).
    """

    def __new__(cls, scores, ids, modalities, fields=None):
        made = super().__new__(cls, scores, ids, modalities)
        made.fields = dict(fields or {})
        return made

    @property
    def counts(self) -> np.ndarray:
        """Hits found per query (fewer than k where the store holds fewer matching items)."""
        return (self.ids >= 0).sum(axis=1)

    def hits(self, query: int) -> list:
        """The hits of query ``query`` as ``Hit`` tuples, best first."""
        query = check_int("query", query, minimum=-len(self.ids), maximum=len(self.ids) - 1)
        found = self.ids[query] >= 0
        return [Hit(int(rank) + 1, int(self.ids[query, rank]), str(self.modalities[query, rank]),
                    float(self.scores[query, rank]),
                    {name: values[query, rank] for name, values in self.fields.items()})
                for rank in np.flatnonzero(found)]

    def to_list(self) -> list:
        """Every query's hits as plain dicts (rank, id, modality, score, payload), e.g. for JSON."""
        return [[hit._asdict() for hit in self.hits(q)] for q in range(len(self.ids))]


class Backend(Protocol):
    """An engine's part of a calibrated store. Vectors it receives are validated raw rows; it stores
    ``calibrator.transform`` of them. Its searches return raw inner products of the calibrator's query
    vectors with the stored ones (the store maps them to calibrated scores)."""

    def count(self, modality: str) -> int: ...

    def taken(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` in use: stored, or reserved by an engine that cannot delete."""

    def stored(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` that are searchable items."""

    def dictated_ids(self, n: int) -> np.ndarray | None:
        """The ids the engine's structure gives the next ``n`` items (positions), or None when free."""

    def insert(self, modality: str, vectors: np.ndarray, ids: np.ndarray, payload: dict) -> None: ...

    def delete(self, ids: np.ndarray) -> None: ...

    def search_settings(self, params):
        """``params`` in the engine's vocabulary, checked (None: the engine's own settings)."""

    def search_filter(self, filter):
        """``filter`` checked, for engines that filter on payload fields (None: no filter)."""

    def search(self, queries: list, query_modality: str, targets: tuple, k: int, settings, filter,
               fields: list) -> list:
        """Per target modality: (raw inner products, ids, {field: values}), each (n_queries, k), padded
        with id -1 where fewer items match."""


class ReadWriteLock:
    """Concurrent searches, exclusive changes; a waiting change blocks new searches so it cannot starve."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._reading = _ReadLock(self)

    def read(self):
        """``with lock.read():`` a search (one shared context object: no generator per call)."""
        return self._reading

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


class _ReadLock:
    """The read side of a ReadWriteLock as a plain context manager."""

    __slots__ = ("_owner",)

    def __init__(self, owner: ReadWriteLock):
        self._owner = owner

    def __enter__(self):
        owner = self._owner
        with owner._cond:
            while owner._writing or owner._writers_waiting:
                owner._cond.wait()
            owner._readers += 1

    def __exit__(self, *exc):
        owner = self._owner
        with owner._cond:
            owner._readers -= 1
            if not owner._readers:
                owner._cond.notify_all()


# -------------------------------------------------------------------- checks shared by every store
def check_calibrator(calibrator) -> GapCalibrator:
    if not isinstance(calibrator, GapCalibrator):
        raise TypeError(f"calibrator must be a fitted gapcal GapCalibrator, got {type(calibrator).__name__}")
    if not hasattr(calibrator, "fingerprint_"):
        raise ValueError("calibrator must be fitted (call fit(text, image) first), got an unfitted GapCalibrator")
    return calibrator


def check_ids(name, ids, n=None) -> np.ndarray:
    """A 1-D int64 array of distinct non-negative ids (-1 is reserved for "no result")."""
    arr = as_array(name, ids, "(n,)")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be an array of integer ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of ids, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name} must hold one id per vector ({n}), got {len(arr)}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64 (below 2**63), got {arr.max()}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"{name} must be non-negative (-1 marks a missing result), got "
                         f"{arr[arr < 0][:5].tolist()}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} must not repeat an id, got repeats of {uniq[counts > 1][:5].tolist()}")
    return arr


def check_payload(payload, n: int) -> dict:
    """Payload columns as plain lists of JSON values, one per vector."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must map field names to sequences of one value per vector, got "
                        f"{type(payload).__name__}")
    columns = {}
    for name, values in payload.items():
        check_field_name("payload field names", name)
        if isinstance(values, np.ndarray):
            column = values.tolist()
        elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
            column = list(values)
        else:
            raise TypeError(f"payload[{name!r}] must be a list or array of one value per vector, got "
                            f"{type(values).__name__}")
        if len(column) != n:
            raise ValueError(f"payload[{name!r}] must hold one value per vector ({n}), got {len(column)}")
        try:
            json.dumps(column, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"payload[{name!r}] must hold JSON values (str, int, float, bool, lists, dicts): "
                            f"{exc}") from None
        columns[name] = column
    return columns


def check_fields(fields) -> list:
    names = [] if fields is None else fields
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(f, str) for f in names):
        raise TypeError(f"fields must be a list of payload field names, got {fields!r}")
    return list(dict.fromkeys(names))


def merge_ranked(targets, parts, k):
    """One ranked top-k from per-item-modality ones: ``parts[j] = (scores, ids)`` for ``targets[j]``, scores
    as the pair types' maps give them (any float dtype).

    Returns ``(order, scores, ids, modalities)``: float32 scores; ``order`` indexes the concatenated columns,
    for callers that carry more per-hit data. Missing hits (id -1) rank last with score -inf and modality "".
    """
    scores = np.concatenate([p[0] for p in parts], axis=1, dtype=np.float32)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    codes = _modality_codes(tuple(targets), tuple(p[1].shape[1] for p in parts))
    if ids.size and ids.min() < 0:
        missing = ids < 0
        codes = np.where(missing, len(MODALITIES), codes)
        scores[missing] = -np.inf
    if len(ids) == 1:  # one query (how services call): 1-D indexing costs less than the row-broadcast kind
        order = np.argsort(-scores[0], kind="stable")[:k]
        picked = codes[order] if codes.ndim == 1 else codes[0, order]
        return order[None], scores[0, order][None], ids[0, order][None], _LABELS[picked][None]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(ids))[:, None]
    picked = codes[order] if codes.ndim == 1 else codes[rows, order]
    return order, scores[rows, order], ids[rows, order], _LABELS[picked]


@functools.lru_cache(maxsize=64)
def _modality_codes(targets: tuple, widths: tuple) -> np.ndarray:
    """The modality code of each concatenated column (read-only: shared between calls)."""
    codes = np.repeat([MODALITIES.index(m) for m in targets], widths)
    codes.setflags(write=False)
    return codes


_LABELS = np.array([*MODALITIES, ""])


# -------------------------------------------------------------------- the store
class CalibratedStore:
    """Raw embeddings of two modalities in, one list ranked by calibrated score out; an engine's
    ``Backend`` stores and searches. Searches run concurrently; ``add`` and ``remove`` are exclusive."""

    def __init__(self, calibrator, backend):
        self._cal = check_calibrator(calibrator)
        self._fingerprint = self._cal.fingerprint_
        self._backend = backend
        self._lock = ReadWriteLock()

    @property
    def calibrator(self) -> GapCalibrator:
        return self._cal

    def count(self, modality) -> int:
        """Number of searchable items of one modality."""
        return self._backend.count(check_modality("modality", modality))

    def __len__(self) -> int:
        return sum(self._backend.count(m) for m in MODALITIES)

    def _check_calibrator_unchanged(self) -> None:
        self._check_fingerprint(self._cal.fingerprint_)

    def _check_fingerprint(self, fingerprint) -> None:
        if fingerprint != self._fingerprint:
            raise ValueError(f"the calibrator was refitted after this {type(self).__name__} was made (fingerprint "
                             f"{self._fingerprint} -> {fingerprint}), so the stored vectors no longer "
                             "match it: store the items again with the refitted calibrator")

    def _rows(self, name, vectors, allow_empty=True):
        return as_matrix(name, vectors, dim=self._cal.dim_, dtype=None, allow_empty=allow_empty, check_rows=False)

    # ------------------------------------------------------------------ changes
    def add(self, vectors, *, modality, ids=None, payload=None) -> np.ndarray:
        """Add raw embeddings of one modality; returns their ids.

        ``ids=None`` draws new random ids in [0, 2**62) (no counter to share between writers), unless the
        engine's structure dictates them. ``payload`` maps field names to one JSON value per vector
        (``{"url": urls}``); search returns the fields asked for.
        """
        check_modality("modality", modality)
        x = self._rows("vectors", vectors)
        check_rows("vectors", x)  # before any write: an engine may store part of a batch before a bad row
        new = None if ids is None else check_ids("ids", ids, len(x))
        columns = check_payload(payload, len(x))
        with self._lock.write():
            self._check_calibrator_unchanged()
            dictated = self._backend.dictated_ids(len(x))
            if new is None:
                new = dictated if dictated is not None else self._fresh_ids(len(x))
            elif dictated is not None and not np.array_equal(new, dictated):
                raise ValueError(f"ids must be the next positions {dictated[0]}..{dictated[-1]}: the engine's index "
                                 f"keeps its items by position, got {new[:5].tolist()}")
            else:
                taken = self._backend.taken(new)
                if len(taken):
                    raise ValueError(f"ids must be new, got {len(taken)} already in use (removed ids of an engine "
                                     f"that cannot delete stay reserved): {np.sort(taken)[:5].tolist()}")
            if len(x):
                self._backend.insert(modality, x, new, columns)
        return new

    def _fresh_ids(self, n: int) -> np.ndarray:
        rng = np.random.default_rng()
        ids = np.empty(0, dtype=np.int64)
        while len(ids) < n:
            ids = np.unique(np.concatenate([ids, rng.integers(0, _ID_SPACE, size=n - len(ids))]))
            ids = ids[~np.isin(ids, self._backend.taken(ids))]
        return ids

    def remove(self, ids) -> int:
        """Remove items by id (all must be present); returns how many were removed."""
        gone = check_ids("ids", ids)
        with self._lock.write():
            self._check_calibrator_unchanged()
            absent = np.setdiff1d(gone, self._backend.stored(gone))
            if len(absent):
                raise ValueError(f"ids must all be in the {type(self).__name__}, got {len(absent)} that are not: "
                                 f"{absent[:5].tolist()}")
            self._backend.delete(gone)
        return len(gone)

    # ------------------------------------------------------------------ search
    def search(self, queries, k=10, *, query_modality, item_modality=None, params=None, filter=None,
               fields=None) -> SearchResult:
        """Top-k items by calibrated score for raw query embeddings.

        ``item_modality=None`` ranks both modalities in one list. ``k`` beyond the number of stored items gives
        them all: the result has ``min(k, len(store))`` columns (at least one). ``params``: the engine's search settings
        for this call (faiss: a dict such as ``{"efSearch": 64}`` or a ``faiss.SearchParameters``; Milvus:
        ``{"ef": 64}``); ``filter``: a payload filter where the engine has one (Milvus expressions);
        ``fields``: payload fields to return in ``result.fields``.
        """
        check_modality("query_modality", query_modality)
        targets = MODALITIES if item_modality is None else (check_modality("item_modality", item_modality),)
        k = check_int("k", k, minimum=1)
        q = self._rows("queries", queries, allow_empty=False)  # plan_queries checks the rows
        names = check_fields(fields)
        settings = self._backend.search_settings(params)
        where = self._backend.search_filter(filter)
        with self._lock.read():
            plan = self._cal.plan_queries(q, query_modality=query_modality, item_modalities=targets)
            self._check_fingerprint(plan.fingerprint)
            k = max(1, min(k, sum(self._backend.count(m) for m in targets)))
            found = self._backend.search(plan.vectors, query_modality, targets, k, settings, where, names)
        parts = [(score_map(raw), ids) for score_map, (raw, ids, _) in zip(plan.maps, found, strict=True)]
        order, scores, ids, modalities = merge_ranked(targets, parts, k)
        values = {name: np.take_along_axis(np.concatenate([f[2][name] for f in found], axis=1), order, 1)
                  for name in names}
        return SearchResult(scores, ids, modalities, values)
