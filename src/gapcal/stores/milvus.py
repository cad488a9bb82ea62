"""MilvusStore: the MixedIndex contract (add / search / remove / len) on a Milvus collection."""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

try:
    from pymilvus import DataType, MilvusClient, MilvusException
    from tqdm.auto import tqdm
except ImportError as exc:  # the optional extra is missing
    raise ImportError(f"gapcal.stores needs the milvus extra ({exc.name} is missing): "
                      "pip install 'gapcal[milvus]'") from exc

from .. import __version__
from .._checks import MODALITIES, as_matrix, check_modality
from .._search import SearchResult, check_calibrator, check_ids, check_k, merge_ranked

FORMAT = "gapcal.MilvusStore"
FORMAT_VERSION = 1
META_KEY = "gapcal.store"  # collection property holding the metadata JSON
DESCRIPTION_PREFIX = "gapcal calibrated text-image store "  # the description holds it too (see _read_meta)

MAX_TOPK = 16384  # Milvus refuses a search limit (top-k) or a batch of queries above this
_HITS_PER_REQUEST = 1 << 20  # queries per search request are capped so that one reply holds at most this many hits
_ID_CHUNK = 4096  # ids per "id in [...]" expression (existence checks, deletes)
_ID_SPACE = 1 << 62  # ids=None draws ids uniformly from [0, 2**62)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_RESERVED = ("id", "vector", "modality")
_INDEX_KEYS = ("index_type", "metric_type", "params")


@dataclass(frozen=True)
class StoreResult(SearchResult):
    """A ``SearchResult`` plus the payload fields asked for with ``output_fields``.

    ``fields[name]`` is an (n_queries, k) object array of that field's values (None where the item has no
    such field or where no item was found).
    """

    fields: dict = field(default_factory=dict)


def _check_index_params(index_params) -> dict | None:
    """``{"index_type": ..., "params": {...}}`` for Milvus, or None when not given; the metric must be IP."""
    if index_params is None:
        return None
    if not isinstance(index_params, Mapping):
        raise TypeError(f"index_params must be a dict like {{'index_type': 'HNSW', 'params': {{'M': 16}}}}, got "
                        f"{type(index_params).__name__}")
    unknown = sorted(set(index_params) - set(_INDEX_KEYS))
    if unknown:
        raise ValueError(f"index_params keys must be among {_INDEX_KEYS}, got {unknown}")
    index_type = index_params.get("index_type", "FLAT")
    if not isinstance(index_type, str) or not index_type:
        raise ValueError(f"index_params['index_type'] must be a Milvus index type such as 'FLAT', 'HNSW' or "
                         f"'IVF_FLAT', got {index_type!r}")
    metric = index_params.get("metric_type", "IP")
    if metric != "IP":
        raise ValueError("index_params['metric_type'] must be 'IP': the calibrated score is an inner product plus a "
                         "constant, which COSINE (re-normalises the calibrated vectors) and L2 (ranks by distance) "
                         f"do not preserve; got {metric!r}")
    params = index_params.get("params", {})
    if not isinstance(params, Mapping):
        raise TypeError(f"index_params['params'] must be a dict of build parameters, got {type(params).__name__}")
    return {"index_type": index_type.upper(), "params": dict(params)}


def _check_payload(payload, n: int) -> dict:
    """Payload columns as plain lists of JSON values, one per vector."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must map field names to sequences of one value per vector, got "
                        f"{type(payload).__name__}")
    columns = {}
    for name, values in payload.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in _RESERVED or name.startswith("$"):
            raise ValueError("payload field names must be identifiers (a letter or underscore, then letters, digits "
                             f"or underscores) other than {_RESERVED}, got {name!r}")
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
            raise TypeError(f"payload[{name!r}] must hold JSON values (str, int, float, bool, lists, dicts; Milvus "
                            f"keeps them in the collection's dynamic field): {exc}") from None
        columns[name] = column
    return columns


def _read_meta(desc: dict):
    """The gapcal metadata of a described collection, or None when it has none.

    It is written to both the collection's properties and its description because servers differ:
    Milvus Standalone/Distributed keep both, Milvus Lite 2.x keeps only the description, 3.x only
    the properties.
    """
    text = (desc.get("properties") or {}).get(META_KEY)
    description = desc.get("description") or ""
    if text is None and description.startswith(DESCRIPTION_PREFIX):
        text = description[len(DESCRIPTION_PREFIX):]
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("format_version"), int):
        raise ValueError(f"collection {desc.get('collection_name')!r} has unreadable gapcal metadata: {text[:200]!r}")
    return meta


class MilvusStore:
    """Text and image embeddings in one Milvus collection, searched as one list ranked by calibrated score.

    The ``gapcal.MixedIndex`` contract on Milvus: ``add`` takes raw model embeddings and stores
    ``calibrator.transform`` of them (with their modality and optional payload as scalar fields),
    ``search`` returns items of both modalities (or one) ordered by ``calibrator.similarity``, and
    ``remove`` and ``len`` work on the collection. Exact with the default FLAT index (equal to MixedIndex
    and to brute force, up to float32 rounding: items whose scores tie within ~1e-5 may swap places).
    ANN indexes (``index_params={"index_type": "HNSW", "params": {"M": 16}}``; whatever the server
    offers, Milvus Lite 2.x only FLAT and IVF_FLAT) are as approximate as Milvus makes them, tuned per
    call with ``search_params``.

    One code for every deployment; only ``uri`` (and ``token``) change::

        store = MilvusStore("./gapcal.db", "media", cal)                  # Milvus Lite, a local file
        store = MilvusStore("http://host:19530", "media", cal)            # Milvus Standalone / Distributed
        store = MilvusStore("http://host:19530/mydb", "media", cal,       # a database, with authentication
                            token="user:password")                        # (or an API key on Zilliz Cloud)

    How it ranks: within one (query modality, item modality) pair the calibrated score is a strictly
    increasing function of an inner product, so a Milvus IP search restricted to that item modality (the
    filter expression ``modality == "image"``) returns its exact top-k; the query vector and the score map
    differ between item modalities, so no single search ranks both. ``search`` runs one filtered search
    per item modality, maps the scores (``calibrator.map_scores``) and merges the lists by score. The
    metric is therefore always IP.

    The collection: INT64 primary key ``id``, FLOAT_VECTOR ``vector`` of width ``calibrator.output_dim_``,
    VARCHAR ``modality``, dynamic fields for the payload, consistency level Strong (a search sees every
    finished ``add``). It records the calibrator's fingerprint: reopening it with another calibrator, or
    one of another dimension, raises ValueError, because the stored vectors only mean something to
    the calibrator that made them.

    Writes: ``add`` checks everything (vectors, modality, ids, payload) before writing, inserts in
    batches of ``batch_size`` rows with a progress bar (``show_progress``: None shows it when stderr is
    a terminal) and, if a batch fails, deletes the batches it already wrote. ``add`` and ``remove`` of
    one store are serialised by a lock; Milvus itself does not enforce unique ids, so two processes
    adding the same explicit ids at the same moment can both pass the check.
    """

    def __init__(self, uri, collection, calibrator, *, token="", index_params=None, batch_size=1000,
                 show_progress=None, timeout=10.0):
        cal = check_calibrator(calibrator)
        if not isinstance(uri, (str, os.PathLike)):
            raise TypeError(f"uri must be a local file path ending in .db (Milvus Lite) or a server address like "
                            f"'http://host:19530', got {type(uri).__name__}")
        uri = os.fspath(uri)
        if not isinstance(collection, str) or not _NAME.fullmatch(collection):
            raise ValueError("collection must be a Milvus collection name (a letter or underscore, then letters, "
                             f"digits or underscores, at most 255 characters), got {collection!r}")
        wanted_index = _check_index_params(index_params)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer (rows per insert request), got {batch_size!r}")
        if show_progress not in (None, True, False):
            raise TypeError(f"show_progress must be None (when stderr is a terminal), True or False, got "
                            f"{show_progress!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(token, str):
            raise TypeError(f"token must be a string ('user:password' or an API key), got {type(token).__name__}")
        self._cal, self._fingerprint = cal, cal.fingerprint_
        self._uri, self._name = uri, collection
        self._batch_size, self._show_progress = int(batch_size), show_progress
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()
        try:  # an alias of its own: pymilvus 2.x shares one connection per uri and close() would end it for
            # every client of that uri (3.x counts the clients of a shared connection and ignores the alias)
            self._client = MilvusClient(uri=uri, token=token, timeout=timeout, alias=f"gapcal-{secrets.token_hex(8)}")
        except MilvusException as exc:
            raise ConnectionError(f"could not connect to Milvus at uri={uri!r} (timeout {timeout:g} s): "
                                  f"{exc.message}") from exc
        try:
            if self._client.has_collection(collection):
                self._open(wanted_index)
            else:
                self._create(wanted_index or {"index_type": "FLAT", "params": {}})
        except BaseException:
            self._client.close()
            raise

    # ------------------------------------------------------------------ collection
    def _create(self, index: dict) -> None:
        cal = self._cal
        meta = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "gapcal_version": __version__,
                           "fingerprint": cal.fingerprint_, "dim": cal.dim_, "vector_dim": cal.output_dim_},
                          sort_keys=True)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True,
                                            description=DESCRIPTION_PREFIX + meta)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=cal.output_dim_)
        schema.add_field("modality", DataType.VARCHAR, max_length=16)
        params = self._client.prepare_index_params()
        params.add_index(field_name="vector", index_name="vector", index_type=index["index_type"],
                         metric_type="IP", params=index["params"])
        self._client.create_collection(self._name, schema=schema, index_params=params,
                                       consistency_level="Strong", properties={META_KEY: meta})

    def _open(self, wanted_index) -> None:
        cal, name = self._cal, self._name
        desc = self._client.describe_collection(name)
        meta = _read_meta(desc)
        if meta is None:
            raise ValueError(f"collection {name!r} at {self._uri!r} was not made by gapcal (no gapcal metadata in its "
                             "description or properties): choose another collection name")
        if meta["format_version"] > FORMAT_VERSION:
            raise ValueError(f"collection {name!r} uses gapcal store format {meta['format_version']}; this gapcal "
                             f"({__version__}) reads up to {FORMAT_VERSION}: upgrade gapcal")
        width = next((int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector"), None)
        if width != cal.output_dim_:
            raise ValueError(f"calibrator must match the dimension of collection {name!r}: it stores vectors of width "
                             f"{width} (embeddings of d={meta.get('dim')}), the calibrator makes width "
                             f"{cal.output_dim_} (d={cal.dim_})")
        if meta.get("fingerprint") != cal.fingerprint_:
            raise ValueError(f"calibrator must be the one collection {name!r} was built with (fingerprint "
                             f"{meta.get('fingerprint')}), got fingerprint {cal.fingerprint_}: its stored vectors were "
                             "calibrated by that one; load it with GapCalibrator.load, or use a new collection")
        if wanted_index is not None:
            have = self._client.describe_index(name, index_name="vector").get("index_type", "")
            if have.upper() != wanted_index["index_type"]:
                raise ValueError(f"index_params asks for a {wanted_index['index_type']} index, but collection {name!r} "
                                 f"already has a {have} index: leave index_params out to use it, or use a new "
                                 "collection")
        self._client.load_collection(name)

    # ------------------------------------------------------------------ properties
    @property
    def calibrator(self):
        return self._cal

    @property
    def collection(self) -> str:
        return self._name

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def client(self) -> MilvusClient:
        """The pymilvus client (for what the store does not cover: flush, compaction, aliases, ...)."""
        return self._client

    def count(self, modality) -> int:
        """Number of stored items of one modality."""
        check_modality("modality", modality)
        return self._count(f'modality == "{modality}"')

    def __len__(self) -> int:
        return self._count("")

    def _count(self, expr: str) -> int:
        return int(self._client.query(self._name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusStore(uri={self._uri!r}, collection={self._name!r})"

    def close(self) -> None:
        """Close the connection (a Milvus Lite file stays open until the process ends)."""
        self._client.close()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_calibrator_unchanged(self) -> None:
        if self._cal.fingerprint_ != self._fingerprint:
            raise ValueError(f"the calibrator was refitted after this store was opened (fingerprint "
                             f"{self._fingerprint} -> {self._cal.fingerprint_}), so the stored vectors no longer match "
                             "it: use a new collection for the refitted calibrator")

    # ------------------------------------------------------------------ ids
    def _existing(self, ids: np.ndarray) -> np.ndarray:
        """Those of ``ids`` that the collection holds."""
        found = []
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK].tolist()
            rows = self._client.query(self._name, filter=f"id in {chunk}", output_fields=["id"], limit=len(chunk))
            found += [row["id"] for row in rows]
        return np.asarray(found, dtype=np.int64)

    def _fresh_ids(self, n: int) -> np.ndarray:
        """``n`` random ids that the collection does not hold (like Milvus's auto_id: no counter to share)."""
        ids = np.empty(0, dtype=np.int64)
        while len(ids) < n:
            ids = np.unique(np.concatenate([ids, self._rng.integers(0, _ID_SPACE, size=n - len(ids))]))
            ids = ids[~np.isin(ids, self._existing(ids))]
        return ids

    def _delete(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), _ID_CHUNK):
            self._client.delete(self._name, ids=ids[start:start + _ID_CHUNK].tolist())

    # ------------------------------------------------------------------ changes
    def add(self, vectors, modality="image", ids=None, payload=None) -> np.ndarray:
        """Add raw embeddings of one modality; returns their ids (``ids``, or new random ones).

        ``payload`` maps field names to one JSON value per vector (e.g. ``{"url": urls}``); the fields
        can be filtered on (``search(filter=...)``) and read back (``search(output_fields=...)``).
        """
        check_modality("modality", modality)
        x = as_matrix("vectors", vectors, dim=self._cal.dim_)
        new = None if ids is None else check_ids("ids", ids, len(x))
        columns = _check_payload(payload, len(x))
        with self._lock:
            self._check_calibrator_unchanged()
            if new is None:
                new = self._fresh_ids(len(x))
            else:
                taken = self._existing(new)
                if len(taken):
                    raise ValueError(f"ids must be new, got {len(taken)} already in collection {self._name!r}: "
                                     f"{np.sort(taken)[:5].tolist()}")
            if len(x):
                self._insert(x, modality, new, columns)
        return new

    def _insert(self, x, modality, ids, columns) -> None:
        """Insert in batches with a progress bar; a failure deletes what this call already inserted."""
        disable = None if self._show_progress is None else not self._show_progress
        written = 0
        with tqdm(total=len(x), unit="vec", desc=f"{self._name} += {modality}", disable=disable) as bar:
            try:
                for start in range(0, len(x), self._batch_size):
                    stop = min(start + self._batch_size, len(x))
                    vectors = self._cal.transform(x[start:stop], modality).tolist()
                    rows = [{"id": i, "vector": v, "modality": modality} for i, v in zip(ids[start:stop].tolist(),
                                                                                         vectors)]
                    for name, column in columns.items():
                        for row, value in zip(rows, column[start:stop]):
                            row[name] = value
                    self._client.insert(self._name, rows)
                    written = stop
                    bar.update(stop - start)
            except BaseException:
                if written:
                    self._delete(ids[:written])
                raise

    def remove(self, ids) -> int:
        """Remove items by id (all must be present); returns how many were removed."""
        gone = check_ids("ids", ids)
        with self._lock:
            self._check_calibrator_unchanged()
            absent = np.setdiff1d(gone, self._existing(gone))
            if len(absent):
                raise ValueError(f"ids must all be in collection {self._name!r}, got {len(absent)} that are not: "
                                 f"{absent[:5].tolist()}")
            self._delete(gone)
        return len(gone)

    # ------------------------------------------------------------------ search
    def search(self, queries, k=10, query_modality="text", item_modality=None, *, filter=None,
               search_params=None, output_fields=None) -> StoreResult:
        """Top-k items by calibrated score for raw query embeddings.

        ``item_modality=None`` searches both modalities as one ranked list. ``filter`` is a Milvus boolean
        expression on payload fields (``'year >= 2020'``), applied within each modality's search;
        ``search_params`` passes index settings through (``{"ef": 64}`` for HNSW, ``{"nprobe": 16}`` for
        IVF); ``output_fields`` names payload fields to return in ``result.fields``.
        """
        check_modality("query_modality", query_modality)
        targets = MODALITIES if item_modality is None else (check_modality("item_modality", item_modality),)
        k = check_k(k)
        if k > MAX_TOPK:
            raise ValueError(f"k must be at most {MAX_TOPK} (Milvus's top-k limit), got {k}")
        if filter is not None and not isinstance(filter, str):
            raise TypeError(f"filter must be a Milvus boolean expression string, got {type(filter).__name__}")
        if search_params is None:
            search_params = {}
        if not isinstance(search_params, Mapping):
            raise TypeError(f"search_params must be a dict of index search settings such as {{'ef': 64}}, got "
                            f"{type(search_params).__name__}")
        names = [] if output_fields is None else output_fields
        if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(f, str) for f in names):
            raise TypeError(f"output_fields must be a list of payload field names, got {output_fields!r}")
        # rows (NaN, inf, all-zero) are checked once, by transform_queries
        q = as_matrix("queries", queries, dim=self._cal.dim_, allow_empty=False, check_rows=False)
        self._check_calibrator_unchanged()
        settings = {"metric_type": "IP", "params": dict(search_params)}
        queries_by_target = self._cal.transform_queries(q, query_modality, targets)
        parts = [self._search_one(u, query_modality, m, k, filter, settings, list(names))
                 for m, u in zip(targets, queries_by_target)]
        order, scores, ids, modalities = merge_ranked(targets, parts, k)
        fields = {name: np.take_along_axis(np.concatenate([p[2][name] for p in parts], axis=1), order, 1)
                  for name in names}
        return StoreResult(ids=ids, scores=scores, modalities=modalities, fields=fields)

    def _search_one(self, u, query_modality, modality, k, user_filter, settings, names):
        """One item modality's exact-order top-k: (scores, ids, {field: values}), each (nq, k), padded."""
        expr = f'modality == "{modality}"' + (f" and ({user_filter})" if user_filter else "")
        nq = len(u)
        ids = np.full((nq, k), -1, dtype=np.int64)
        raw = np.zeros((nq, k), dtype=np.float32)
        values = {name: np.full((nq, k), None, dtype=object) for name in names}
        step = max(1, min(MAX_TOPK, _HITS_PER_REQUEST // k))
        fields = list(dict.fromkeys(["modality", *names]))  # never empty: Milvus Lite 3 reads [] as "all fields"
        for start in range(0, nq, step):
            result = self._client.search(self._name, data=u[start:start + step], limit=k, filter=expr,
                                         search_params=settings, output_fields=fields, anns_field="vector")
            for row, hits in enumerate(result, start):
                if not len(hits):
                    continue
                ids[row, :len(hits)] = [hit["id"] for hit in hits]
                raw[row, :len(hits)] = [hit["distance"] for hit in hits]
                for name in names:
                    values[name][row, :len(hits)] = [hit["entity"].get(name) for hit in hits]
        scores = np.where(ids >= 0, self._cal.map_scores(raw, query_modality=query_modality, item_modality=modality),
                          np.float32(-np.inf)).astype(np.float32)
        return scores, ids, values
