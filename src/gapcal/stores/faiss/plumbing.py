"""FAISS plumbing for MixedIndex: building sub-indexes, per-call search parameters, stored ids.

Everything that knows faiss class names lives here, so ``index.py`` and ``backends.py`` read as numpy
plus a handful of calls.
"""

from __future__ import annotations

import functools

import faiss
import numpy as np

# PQ-style codes need the vector width to be a multiple of their sub-quantizer count. The calibrated
# width (d, plus one hubness column) rarely is, so it is rounded up to the first multiple of these
# steps that the factory string accepts; zero columns leave every inner product unchanged.
_PAD_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# How far above its centroid's score the best items of an inverted list are taken to reach, in units of the
# items' spread along the query; MixedIndex ranks the lists of both modalities by it (see its notes on IVF).
# Chosen on COCO-derived data (bench/index_speed.py): 0 under-probes the modality whose scores spread more,
# 3 over-probes it; 1 to 2 recall best at equal nprobe.
LIST_OPTIMISM = 1.5

# Search-time settings that ``search(..., params=...)`` passes through, and the structure each needs.
SEARCH_SETTINGS = {"efSearch": "hnsw", "nprobe": "ivf"}

_METRIC_NAMES = {getattr(faiss, name): name for name in dir(faiss) if name.startswith("METRIC_")}


def faiss_message(exc: BaseException) -> str:
    """The readable tail of a faiss C++ error ("Error in ... at file:line: Error: '...' failed: why")."""
    text = " ".join(str(exc).split())
    return text.rsplit("Error: ", 1)[-1] if "Error: " in text else text


def metric_name(metric: int) -> str:
    return "faiss." + _METRIC_NAMES.get(metric, f"metric {metric}")


def check_inner_product(name: str, index) -> None:
    """Calibrated scores are inner products plus a constant; other metrics rank differently."""
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{name} must use faiss.METRIC_INNER_PRODUCT: calibrated scores are inner products "
                         f"(plus a constant), which {metric_name(index.metric_type)} does not rank by; "
                         f"got {metric_name(index.metric_type)}")


def build_from_spec(spec: str, dim: int):
    """An empty inner-product index from a factory string and its width (``dim``, zero-padded if needed)."""
    first_error = None
    for width in sorted({-(-dim // step) * step for step in _PAD_STEPS}):
        try:
            return faiss.index_factory(width, spec, faiss.METRIC_INNER_PRODUCT), width
        except RuntimeError as exc:
            first_error = first_error or exc
    raise ValueError(f"index must be a faiss index_factory string that builds an index for {dim}-d vectors, "
                     f"got {spec!r}: {faiss_message(first_error)}")


def clone_template(index, dim: int):
    """A private copy of a user's empty index object, checked to be able to hold calibrated vectors."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        raise TypeError("index must be a bare faiss structure without an IndexIDMap (MixedIndex maps ids "
                         f"itself), got {type(index).__name__}")
    check_inner_product("index", index)
    if index.ntotal:
        raise ValueError(f"index must be empty (MixedIndex stores calibrated vectors, not raw ones), got one "
                         f"holding {index.ntotal} vectors: use MixedIndex.wrap for an index of raw embeddings")
    if index.d < dim:
        raise ValueError(f"index must have dimension >= {dim} (the calibrator's output_dim_: the embedding "
                         f"dimension plus its hubness column), got d={index.d}")
    try:
        return faiss.clone_index(index)
    except RuntimeError as exc:
        raise TypeError(f"index must be a faiss index type that can be cloned (one copy per modality), got "
                        f"{type(index).__name__}: {faiss_message(exc)}") from None


def inverted_lists(index):
    """The IVF structure inside ``index`` and the vector transforms applied before it, or (None, [])."""
    index = faiss.downcast_index(index)
    chain = []
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
        index = faiss.downcast_index(index.index)
    return (index, chain) if isinstance(index, faiss.IndexIVF) else (None, [])


def split_lists(index, nlist: int) -> None:
    """Give the untrained IVF structure inside ``index`` ``nlist`` inverted lists (it trains that many)."""
    ivf, _ = inverted_lists(index)
    lists = faiss.ArrayInvertedLists(nlist, ivf.code_size)
    ivf.nlist = nlist
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the IVF index owns and frees it


def check_coarse_metric(name: str, index) -> None:
    """Lists of both modalities are ranked by inner product with their centroids: the quantizer must give it."""
    ivf, _ = inverted_lists(index)
    if ivf is not None and ivf.quantizer.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError(f"{name} must have an inner-product coarse quantizer (faiss.METRIC_INNER_PRODUCT), by which "
                         f"MixedIndex ranks the inverted lists of both modalities; got "
                         f"{metric_name(ivf.quantizer.metric_type)}")


def before_lists(chain, x: np.ndarray) -> np.ndarray:
    """``x`` as the IVF structure sees it: through the index's vector transforms (PCA, OPQ, ...)."""
    for transform in chain:
        x = transform.apply(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def list_spread(index, x: np.ndarray) -> float:
    """Mean squared distance of vectors ``x`` (as added to ``index``) to their nearest centroid."""
    ivf, chain = inverted_lists(index)
    xt = before_lists(chain, x)
    _, nearest = ivf.quantizer.search(xt, 1)
    centroids = ivf.quantizer.reconstruct_batch(nearest[:, 0])
    return float(np.mean(np.sum((xt - centroids) ** 2, axis=1, dtype=np.float64)))


@functools.lru_cache(maxsize=64)
def _list_parameters(nprobe: int, max_codes: int):
    """Shared, never changed after creation, so safe across threads (building one costs ~20 us)."""
    params = faiss.SearchParametersIVF()
    params.nprobe, params.max_codes = nprobe, max_codes
    return params


def search_lists(ivf, x, k, lists, centroid_scores, sel=None):
    """faiss ``search_preassigned`` with an ID selector: scan the given lists (-1 = skip) for each query."""
    if sel is None:
        params = _list_parameters(lists.shape[1], ivf.max_codes)
    else:
        params = faiss.SearchParametersIVF()
        params.nprobe, params.max_codes, params.sel = lists.shape[1], ivf.max_codes, sel
    x = np.ascontiguousarray(x, dtype=np.float32)  # faiss reads the raw buffer
    n = len(x)
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    centroid_scores = np.ascontiguousarray(centroid_scores, dtype=np.float32)
    ivf.search_preassigned_c(n, faiss.swig_ptr(x), k, faiss.swig_ptr(lists), faiss.swig_ptr(centroid_scores),
                             faiss.swig_ptr(scores), faiss.swig_ptr(ids), False, params)
    return scores, ids


def with_ids(index):
    """``index`` ready for ``add_with_ids``: IVF indexes keep ids in their lists, others get an IndexIDMap2."""
    return index if faiss.try_extract_index_ivf(index) is not None else faiss.IndexIDMap2(index)


def reserve(index, n: int) -> None:
    """Make room for ``n`` more vectors in a flat-codes storage (Flat, PQ, SQ) before adding them in chunks.

    faiss appends each chunk to a std::vector; growing it chunk by chunk reallocated and copied the codes
    again and again. Resizing up then back keeps the capacity.
    """
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    if isinstance(index, faiss.IndexFlatCodes):
        size = index.codes.size()
        index.codes.resize(size + n * index.code_size)
        index.codes.resize(size)


def can_remove(index) -> bool:
    """Whether faiss can delete from ``index`` (HNSW cannot); probed with an empty selection."""
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.empty(0, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def structures(index) -> set:
    """Which searchable structures (``"hnsw"``, ``"ivf"``) ``index`` contains, looking through wrappers."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        return structures(index.index)
    if isinstance(index, faiss.IndexIVF):
        return {"ivf"}
    if isinstance(index, faiss.IndexHNSW):
        return {"hnsw"}
    return set()


def describe(index) -> str:
    """A factory-style name for messages."""
    from faiss.contrib.factory_tools import reverse_index_factory
    try:
        return reverse_index_factory(index)
    except (NotImplementedError, AssertionError):  # what it raises for types it cannot name
        return type(faiss.downcast_index(index)).__name__


def search_parameters(index, sel=None, settings=None):
    """Per-call SearchParameters for ``index`` carrying ``sel`` and ``settings``, or None when none are needed.

    A SearchParameters object replaces all of an index's search settings, so the ones not given are copied
    from the index. Returns ``(params, keep)``: ``keep`` holds the objects faiss only points to.
    """
    if sel is None and not settings:
        return None, []
    settings = settings or {}
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):  # it translates ``sel`` from user ids to positions itself
        return search_parameters(index.index, sel, settings)
    if isinstance(index, faiss.IndexPreTransform):
        inner, keep = search_parameters(index.index, sel, settings)
        if inner is None:
            return None, []
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        return params, keep + [inner]
    if isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(settings.get("nprobe", index.nprobe))
        params.max_codes = index.max_codes
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(settings.get("efSearch", index.hnsw.efSearch))
        params.check_relative_distance = index.hnsw.check_relative_distance
    else:
        params = faiss.SearchParameters()
    if sel is not None:
        params.sel = sel
    return params, [sel]


def selector_error(index):
    """None if ``index`` searches through ID selectors, else faiss's reason (IndexPQ, for one, refuses them)."""
    params, keep = search_parameters(index, faiss.IDSelectorBatch(np.empty(0, dtype=np.int64)))
    try:
        index.search(np.zeros((1, index.d), dtype=np.float32), 1, params=params)
    except RuntimeError as exc:
        return faiss_message(exc)
    finally:
        del keep
    return None


def stored_ids(index) -> np.ndarray:
    """Every id ``index`` holds (int64, storage order): IndexIDMap's map, IVF list ids, else positions."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return np.arange(index.ntotal, dtype=np.int64)
    lists = ivf.invlists
    parts = [np.empty(0, dtype=np.int64)]
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            ptr = lists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            lists.release_ids(list_no, ptr)
    return np.concatenate(parts)


class Reconstructor:
    """Raw vectors of a user's index by id, without changing what the index stores.

    IndexIDMap cannot reconstruct by id, so its inner index is read at the id's position; IVF indexes
    need a direct map, so one (a hash table, for arbitrary ids) is added if the index has none.
    """

    def __init__(self, index):
        top = faiss.downcast_index(index)
        self._positions = None
        self._index = top
        if isinstance(top, faiss.IndexIDMap) and not isinstance(top, faiss.IndexIDMap2):
            self._index = faiss.downcast_index(top.index)
            self._id_map = top
        ivf = faiss.try_extract_index_ivf(top)
        if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)

    def refresh(self) -> None:
        """Forget the id -> position table after the index changed."""
        self._positions = None

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if hasattr(self, "_id_map"):
            if self._positions is None:
                id_map = stored_ids(self._id_map)
                order = np.argsort(id_map, kind="stable")
                self._positions = (id_map[order], order)
            sorted_ids, order = self._positions
            ids = order[np.searchsorted(sorted_ids, ids)].astype(np.int64)
        try:
            return self._index.reconstruct_batch(ids)
        except RuntimeError as exc:
            raise ValueError(f"the wrapped index ({describe(self._index)}) cannot give back its vectors by id, "
                             f"which re-scoring needs: {faiss_message(exc)}") from None


def settings_of(params) -> dict:
    """The settings a faiss SearchParameters object carries, as MixedIndex's ``params`` dict."""
    if getattr(params, "sel", None) is not None:
        raise ValueError("params must not carry an ID selector: MixedIndex searches each modality through its own")
    if isinstance(params, faiss.SearchParametersPreTransform):
        return settings_of(params.index_params)
    if isinstance(params, faiss.SearchParametersHNSW):
        return {"efSearch": int(params.efSearch)}
    if isinstance(params, faiss.SearchParametersIVF):
        return {"nprobe": int(params.nprobe)}
    raise TypeError(f"params must be a faiss.SearchParametersHNSW or SearchParametersIVF (or a dict), got "
                    f"{type(params).__name__}")


def graph_of(index):
    """The IndexHNSW inside ``index`` (directly or through an IndexIDMap, whose positions are its nodes), or None."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def flat_graph(index):
    """``graph_of(index)`` when its vectors are stored flat, else None."""
    graph = graph_of(index)
    return graph if graph is not None and isinstance(faiss.downcast_index(graph.storage), faiss.IndexFlat) else None


def link_level0(graph, src: np.ndarray, dst: np.ndarray) -> tuple[int, int]:
    """Add the edges src[i] -> dst[i] (graph node numbers) to free slots of the level-0 neighbour lists, in the
    order given; an edge already there (or earlier in the list), or one whose source list is full, is left out.
    Returns (added, refused for a full list). Vectorised: a few numpy passes, whatever the number of edges."""
    hnsw = graph.hnsw
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if not len(src):
        return 0, 0
    neighbors = faiss.vector_to_array(hnsw.neighbors)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    levels = faiss.vector_to_array(hnsw.cum_nneighbor_per_level)
    begin, width = int(levels[0]), int(levels[1] - levels[0])
    nodes, row_of = np.unique(src, return_inverse=True)
    cells = (offsets[nodes] + begin)[:, None] + np.arange(width)  # each source's level-0 slots
    rows = neighbors[cells]
    _, first = np.unique(src * (int(dst.max()) + 1) + dst, return_index=True)
    new = np.zeros(len(src), dtype=bool)
    new[first] = True  # the first of repeated edges
    new &= ~(rows[row_of] == dst[:, None]).any(axis=1)  # not in the list already
    row_of, dst = row_of[new], dst[new]
    order = np.argsort(row_of, kind="stable")  # per source, in the order given
    grouped = row_of[order]
    rank = np.arange(len(grouped)) - np.searchsorted(grouped, grouped)
    free = rows < 0
    fits = rank < free.sum(axis=1)[grouped]
    free_slots = np.argsort(~free, axis=1, kind="stable")  # each row's free slots first, in order
    slot = free_slots[grouped[fits], rank[fits]]
    neighbors[cells[grouped[fits], slot]] = dst[order][fits]
    faiss.copy_array_to_vector(neighbors, hnsw.neighbors)
    return int(fits.sum()), int((~fits).sum())
