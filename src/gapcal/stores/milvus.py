"""MilvusStore: the calibrated-store contract (add / search / remove / len) on a Milvus collection."""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

try:
    from pymilvus import DataType, MilvusClient, MilvusException
    from tqdm.auto import tqdm
except ImportError as exc:  # the optional extra is missing
    raise ImportError(f"gapcal.stores.milvus needs the milvus extra ({exc.name} is missing): "
                      "pip install 'gapcal[milvus]'") from exc

from .._checks import FIELD_NAME, MODALITIES, check_int
from .._format import check_header, new_header
from .core import CalibratedStore, check_calibrator

FORMAT = "gapcal.MilvusStore"
FORMAT_VERSION = 2  # 2: one partition per modality
META_KEY = "gapcal.store"  # collection property holding the metadata JSON
DESCRIPTION_PREFIX = "gapcal calibrated text-image store "  # the description holds it too (see _read_meta)

MAX_TOPK = 16384  # Milvus refuses a search limit (top-k) or a batch of queries above this
_HITS_PER_REQUEST = 1 << 20  # queries per search request are capped so that one reply holds at most this many hits
_ID_CHUNK = 4096  # ids per "id in [...]" expression (existence checks, deletes)
_INDEX_KEYS = ("index_type", "metric_type", "params")
# search-time settings of Milvus's vector indexes (HNSW*: ef; IVF*, SCANN: nprobe; SCANN: reorder_k; DISKANN:
# search_list; AUTOINDEX: level; refine indexes: refine_k); range-search keys are left out: they change what a
# top-k search returns
SEARCH_SETTINGS = ("ef", "nprobe", "reorder_k", "search_list", "level", "refine_k", "max_empty_result_buckets")


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
        raise ValueError("index_params['metric_type'] must be 'IP': the calibrated score is a strictly increasing map "
                         "of an inner product, whose order COSINE (re-normalises the calibrated vectors) and L2 (ranks "
                         f"by distance) do not keep; got {metric!r}")
    params = index_params.get("params", {})
    if not isinstance(params, Mapping):
        raise TypeError(f"index_params['params'] must be a dict of build parameters, got {type(params).__name__}")
    return {"index_type": index_type.upper(), "params": dict(params)}


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
    where = f"collection {desc.get('collection_name')!r}"
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{where} has unreadable gapcal metadata: {text[:200]!r}") from None
    return check_header(meta, format=FORMAT, version=FORMAT_VERSION, oldest=FORMAT_VERSION, where=where,
                        what="gapcal MilvusStore collection", remedy="store the items in a new collection")


class MilvusBackend:
    """The Milvus part of a MilvusStore: one partition per modality, calibrated vectors, payload fields."""

    def __init__(self, client, collection: str, calibrator, batch_size: int, show_progress):
        self.client, self.name, self.cal = client, collection, calibrator
        self.batch_size, self.show_progress = batch_size, show_progress

    def count(self, modality) -> int:
        rows = self.client.query(self.name, filter=f'modality == "{modality}"', output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def taken(self, ids: np.ndarray) -> np.ndarray:
        found = []
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK].tolist()
            rows = self.client.query(self.name, filter=f"id in {chunk}", output_fields=["id"], limit=len(chunk))
            found += [row["id"] for row in rows]
        return np.asarray(found, dtype=np.int64)

    stored = taken  # Milvus deletes for real: every id in use is a stored item

    def dictated_ids(self, n):
        return None

    def insert(self, modality, x, ids, payload) -> None:
        """Insert in batches with a progress bar; a failure deletes what this call already inserted."""
        disable = None if self.show_progress is None else not self.show_progress
        written = 0
        with tqdm(total=len(x), unit="vec", desc=f"{self.name} += {modality}", disable=disable) as bar:
            try:
                for start in range(0, len(x), self.batch_size):
                    stop = min(start + self.batch_size, len(x))
                    vectors = self.cal.transform(x[start:stop], modality=modality).tolist()
                    rows = [{"id": i, "vector": v, "modality": modality}
                            for i, v in zip(ids[start:stop].tolist(), vectors, strict=True)]
                    for name, column in payload.items():
                        for row, value in zip(rows, column[start:stop], strict=True):
                            row[name] = value
                    self.client.insert(self.name, rows, partition_name=modality)
                    written = stop
                    bar.update(stop - start)
            except BaseException:
                if written:
                    self.delete(ids[:written])
                raise

    def delete(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), _ID_CHUNK):
            self.client.delete(self.name, ids=ids[start:start + _ID_CHUNK].tolist())

    def search_settings(self, params) -> dict:
        """Milvus index search settings (``{"ef": 64}`` for HNSW, ``{"nprobe": 16}`` for IVF), or None."""
        if params is None:
            return {}
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of Milvus index search settings such as {{'ef': 64}}, got "
                            f"{type(params).__name__}")
        for name, value in params.items():
            if name not in SEARCH_SETTINGS:
                raise ValueError(f"params keys must be among {list(SEARCH_SETTINGS)}, got {name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not 0 < value < 2 ** 31:
                raise ValueError(f"params[{name!r}] must be a positive number below 2**31, got {value!r}")
        return {name: value.item() if isinstance(value, np.generic) else value for name, value in params.items()}

    def search_filter(self, filter):
        """A Milvus boolean expression on payload fields (``'year >= 2020'``). Each modality's search runs in
        that modality's partition, so no expression can reach items of the other one."""
        if filter is not None and not isinstance(filter, str):
            raise TypeError(f"filter must be a Milvus boolean expression string, got {type(filter).__name__}")
        return filter or ""

    def search(self, queries, query_modality, targets, k, settings, where, names):
        if k > MAX_TOPK:
            raise ValueError(f"k must be at most {MAX_TOPK} (Milvus's top-k limit), got {k}")
        return [self._search_one(u, m, k, where, {"metric_type": "IP", "params": settings}, names)
                for m, u in zip(targets, queries, strict=True)]

    def _search_one(self, u, modality, k, where, settings, names):
        """One modality's exact-order top-k: (raw inner products, ids, {field: values}), each (nq, k), padded."""
        nq = len(u)
        ids = np.full((nq, k), -1, dtype=np.int64)
        raw = np.full((nq, k), -np.inf, dtype=np.float32)
        values = {name: np.full((nq, k), None, dtype=object) for name in names}
        step = max(1, min(MAX_TOPK, _HITS_PER_REQUEST // k))
        fields = list(dict.fromkeys(["modality", *names]))  # never empty: Milvus Lite 3 reads [] as "all fields"
        for start in range(0, nq, step):
            try:
                with _QUIET.active(bool(where)):
                    result = self.client.search(self.name, data=u[start:start + step], limit=k, filter=where,
                                                search_params=settings, output_fields=fields, anns_field="vector",
                                                partition_names=[modality])
            except MilvusException as exc:
                if where:
                    raise ValueError(f"filter must be a Milvus boolean expression on this collection's fields, got "
                                     f"{where!r}: Milvus says {exc.message}") from None
                raise
            for row, hits in enumerate(result, start):
                if not len(hits):
                    continue
                ids[row, :len(hits)] = [hit["id"] for hit in hits]
                raw[row, :len(hits)] = [hit["distance"] for hit in hits]
                for name in names:
                    values[name][row, :len(hits)] = [hit["entity"].get(name) for hit in hits]
        return raw, ids, values


class _QuietFailures(logging.Filter):
    """While this thread is inside a call that turns a Milvus failure into our own one-line error (a search
    with a user filter, opening a connection), drop the traceback pymilvus and Milvus Lite log for it and keep
    the exception it names (Milvus Lite logs the real reason of a failed open, e.g. a held file lock)."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self.state, "on", False):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            self.state.reason = record.exc_info[1]
        return False

    @contextmanager
    def active(self, on: bool = True):
        self.state.on, self.state.reason = on, None
        try:
            yield self.state
        finally:
            self.state.on = False


_QUIET = _QuietFailures()
for _logger in ("pymilvus.decorators", "milvus_lite.server_manager"):
    logging.getLogger(_logger).addFilter(_QUIET)


class MilvusStore(CalibratedStore):
    """Text and image embeddings in one Milvus collection, searched as one list ranked by calibrated score.

    The ``gapcal.stores.core.CalibratedStore`` contract on Milvus: ``add`` takes raw model embeddings and
    stores ``calibrator.transform`` of them (with their modality and optional payload fields), ``search``
    returns items of both modalities (or one) ordered by ``calibrator.similarity``, ``remove`` and ``len``
    work on the collection. Exact with the default FLAT index (equal to MixedIndex and to brute force, up
    to float32 rounding). ANN indexes (``index_params={"index_type": "HNSW", "params": {"M": 16}}``;
    whatever the server offers, Milvus Lite 2.x only FLAT and IVF_FLAT) are as approximate as Milvus makes
    them, tuned per call with ``params``.

    One code for every deployment; only ``uri`` (and ``token``) change::

        store = MilvusStore(cal, "./gapcal.db", "media")                  # Milvus Lite, a local file
        store = MilvusStore(cal, "http://host:19530", "media")            # Milvus Standalone / Distributed
        store = MilvusStore(cal, "http://host:19530/mydb", "media",       # a database, with authentication
                            token="user:password")                        # (or an API key on Zilliz Cloud)

    How it ranks: each modality's items live in a partition of their own; ``search`` runs one IP search per
    item modality in its partition (so a user ``filter`` never reaches the other modality), maps the scores
    through the calibrator and merges the lists (see ``gapcal.stores.core``). The metric is always IP.

    The collection: INT64 primary key ``id``, FLOAT_VECTOR ``vector`` of width ``calibrator.output_dim_``,
    VARCHAR ``modality``, partitions "text" and "image", dynamic fields for the payload, consistency level
    Strong (a search sees every finished ``add``). It records the calibrator's fingerprint: reopening it
    with another calibrator, or one of another dimension, raises ValueError, because the stored vectors only
    mean something to the calibrator that made them.

    Writes: ``add`` checks everything (vectors, modality, ids, payload) before writing, inserts in batches
    of ``batch_size`` rows with a progress bar (``show_progress``: None shows it when stderr is a terminal)
    and, if a batch fails, deletes the batches it already wrote. ``add`` and ``remove`` of one store are
    exclusive; Milvus itself does not enforce unique ids, so two processes adding the same explicit ids at
    the same moment can both pass the check (``ids=None`` draws random 62-bit ids, which do not collide).
    """

    def __init__(self, calibrator, uri, collection, *, token="", index_params=None, batch_size=1000,
                 show_progress=None, timeout=10.0):
        cal = check_calibrator(calibrator)
        if not isinstance(uri, (str, os.PathLike)):
            raise TypeError(f"uri must be a local file path ending in .db (Milvus Lite) or a server address like "
                            f"'http://host:19530', got {type(uri).__name__}")
        uri = os.fspath(uri)
        if not isinstance(collection, str) or not FIELD_NAME.fullmatch(collection):
            raise ValueError("collection must be a Milvus collection name (a letter or underscore, then letters, "
                             f"digits or underscores, at most 255 characters), got {collection!r}")
        wanted_index = _check_index_params(index_params)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        if show_progress not in (None, True, False):
            raise TypeError(f"show_progress must be None (when stderr is a terminal), True or False, got "
                            f"{show_progress!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(token, str):
            raise TypeError(f"token must be a string ('user:password' or an API key), got {type(token).__name__}")
        self._uri, self._name = uri, collection
        try:  # an alias of its own: pymilvus 2.x shares one connection per uri and close() would end it for
            # every client of that uri (3.x counts the clients of a shared connection and ignores the alias)
            with _QUIET.active() as logged:
                client = MilvusClient(uri=uri, token=token, timeout=timeout, alias=f"gapcal-{secrets.token_hex(8)}")
        except MilvusException as exc:
            reason = f" ({type(logged.reason).__name__}: {logged.reason})" if logged.reason is not None else ""
            hint = (" (Milvus Lite lets one process open a .db file at a time: another process may hold it)"
                    if uri.endswith(".db") and not reason else "")
            raise ConnectionError(f"could not connect to Milvus at uri={uri!r} (timeout {timeout:g} s): "
                                  f"{exc.message}{reason}{hint}") from exc
        self._client = client
        try:
            if client.has_collection(collection):
                self._open(cal, wanted_index)
            else:
                self._create(cal, wanted_index or {"index_type": "FLAT", "params": {}})
        except BaseException:
            client.close()
            raise
        super().__init__(cal, MilvusBackend(client, collection, cal, batch_size, show_progress))

    # ------------------------------------------------------------------ collection
    def _create(self, cal, index: dict) -> None:
        meta = json.dumps(new_header(FORMAT, FORMAT_VERSION, fingerprint=cal.fingerprint_, dim=cal.dim_,
                                     vector_dim=cal.output_dim_), sort_keys=True)
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
        for m in MODALITIES:
            self._client.create_partition(self._name, m)

    def _open(self, cal, wanted_index) -> None:
        name = self._name
        desc = self._client.describe_collection(name)
        meta = _read_meta(desc)
        if meta is None:
            raise ValueError(f"collection {name!r} at {self._uri!r} was not made by gapcal (no gapcal metadata in its "
                             "description or properties): choose another collection name")
        width = next((int(f["params"]["dim"]) for f in desc["fields"] if f["name"] == "vector"), None)
        if width != cal.output_dim_:
            raise ValueError(f"calibrator must match the dimension of collection {name!r}: it stores vectors of width "
                             f"{width} (embeddings of d={meta.get('dim')}), the calibrator makes width "
                             f"{cal.output_dim_} (d={cal.dim_})")
        if meta.get("fingerprint") != cal.fingerprint_:
            raise ValueError(f"calibrator must be the one collection {name!r} was built with (fingerprint "
                             f"{meta.get('fingerprint')}), got fingerprint {cal.fingerprint_}: its stored vectors were "
                             "calibrated by that one; load it with GapCalibrator.load, or use a new collection")
        missing = set(MODALITIES) - set(self._client.list_partitions(name))
        if missing:
            raise ValueError(f"collection {name!r} lacks its partitions {sorted(missing)}: it was changed outside "
                             "gapcal; use a new collection")
        if wanted_index is not None:
            have = self._client.describe_index(name, index_name="vector").get("index_type", "")
            if have.upper() != wanted_index["index_type"]:
                raise ValueError(f"index_params asks for a {wanted_index['index_type']} index, but collection {name!r} "
                                 f"already has a {have} index: leave index_params out to use it, or use a new "
                                 "collection")
        self._client.load_collection(name)

    # ------------------------------------------------------------------ properties
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

    def __repr__(self) -> str:
        return f"MilvusStore(uri={self._uri!r}, collection={self._name!r})"

    def close(self) -> None:
        """Close the connection (a Milvus Lite file stays open until the process ends)."""
        self._client.close()

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
