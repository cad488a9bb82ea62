"""The faiss engines behind MixedIndex: one index per item modality, or a user's index of raw embeddings.

Both keep the store's bookkeeping (searchable ids per modality, ids faiss could not delete, payload
fields) and hand the store raw inner products of the calibrator's query vectors (see ``stores.core``).
Each owns its persistence: ``state()`` and the ``files`` it writes, ``restore`` to read them back.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from ..._checks import MODALITIES, check_modality
from . import plumbing

_CHUNK = 65536
SEARCH_SETTINGS = plumbing.SEARCH_SETTINGS
SHARED = "shared"  # stored-settings key: one setting for both item modalities, as ``params`` gives it


class FaissBackend:
    """Bookkeeping shared by the faiss engines: live and hidden ids per modality, payload columns."""

    layout = ""

    def __init__(self, calibrator, live=None, hidden=None, payload=None):
        self.cal = calibrator
        empty = np.empty(0, dtype=np.int64)
        self.live = {m: np.asarray(live[m], dtype=np.int64) if live else empty for m in MODALITIES}
        self.hidden = {m: np.asarray(hidden[m], dtype=np.int64) if hidden else empty for m in MODALITIES}
        self.payload = {name: dict(values) for name, values in (payload or {}).items()}  # field -> {id: value}

    # ------------------------------------------------------------------ the Backend protocol
    def count(self, modality) -> int:
        return len(self.live[modality])

    def taken(self, ids):
        return ids[np.isin(ids, np.concatenate([*self.live.values(), *self.hidden.values()]))]

    def stored(self, ids):
        return ids[np.isin(ids, np.concatenate(list(self.live.values())))]

    def dictated_ids(self, n):
        return None

    def insert(self, modality, vectors, ids, payload) -> None:
        self._add(modality, vectors, ids)
        self.live[modality] = np.concatenate([self.live[modality], ids])
        for name, column in payload.items():
            self.payload.setdefault(name, {}).update(zip(ids.tolist(), column))
        self.refresh(modality)

    def delete(self, ids) -> None:
        for m in MODALITIES:
            drop = ids[np.isin(ids, self.live[m])]
            if not len(drop):
                continue
            if not self._remove(m, drop):
                self.hidden[m] = np.concatenate([self.hidden[m], drop])
            self.live[m] = self.live[m][~np.isin(self.live[m], drop)]
            self.refresh(m)
        for values in self.payload.values():
            for i in ids.tolist():
                values.pop(i, None)

    def search_settings(self, params) -> dict:
        """A dict (``{"efSearch": 64}``, ``{"nprobe": 16}``) or a faiss SearchParametersHNSW / IVF object."""
        if params is None:
            return {}
        if isinstance(params, faiss.SearchParameters):
            params = plumbing.settings_of(params)
        if not isinstance(params, dict):
            raise TypeError("params must be a dict of faiss search settings or a faiss.SearchParameters object, got "
                            f"{type(params).__name__}")
        have = self.structures
        for name, value in params.items():
            if name not in SEARCH_SETTINGS:
                raise ValueError(f"params keys must be among {sorted(SEARCH_SETTINGS)}, got {name!r}")
            if SEARCH_SETTINGS[name] not in have:
                raise ValueError(f"params[{name!r}] applies to {SEARCH_SETTINGS[name].upper()} indexes, "
                                 f"got a {self.spec} index")
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2 ** 31:
                raise ValueError(f"params[{name!r}] must be a positive integer below 2**31, got {value!r}")
        return dict(params)

    def search_filter(self, filter):
        if filter is not None:
            raise ValueError("filter applies to Milvus stores: a MixedIndex has no filter expressions (search one "
                             "modality with item_modality, or remove items)")
        return None

    def field_values(self, ids: np.ndarray, names) -> dict:
        """Payload values of ``ids`` (any shape; -1 and missing fields give None) per field name."""
        out = {}
        for name in names:
            column = self.payload.get(name, {})
            out[name] = np.array([column.get(i) for i in ids.ravel().tolist()] + [None], dtype=object)[:-1] \
                .reshape(ids.shape)
        return out

    def _with_fields(self, parts, names):
        return [(raw, ids, self.field_values(ids, names)) for raw, ids in parts]

    # ------------------------------------------------------------------ persistence of the bookkeeping
    def id_arrays(self) -> dict:
        return {f"{kind}_{m}": getattr(self, kind)[m] for kind in ("live", "hidden") for m in MODALITIES}

    def payload_state(self) -> dict:
        """Payload as JSON: field -> [[id, value], ...]."""
        return {name: [[i, v] for i, v in values.items()] for name, values in self.payload.items()}


class PerModality(FaissBackend):
    """One faiss index per item modality holding calibrated item vectors; IVF ones share one ``nprobe``
    budget per call (their lists are ranked together by calibrated reach) or scan their own stored numbers."""

    layout = "per-modality"

    def __init__(self, calibrator, subs: dict, width: int, spec: str, spread=None, defaults=None, **bookkeeping):
        super().__init__(calibrator, **bookkeeping)
        self.subs, self.width, self.spec = subs, width, spec
        self.removable = {m: plumbing.can_remove(subs[m]) for m in MODALITIES}
        self.structures = plumbing.structures(subs["text"])
        self._hidden_sel = {m: None for m in MODALITIES}  # selectors that skip ids faiss could not delete
        self._params = {}  # (modality, settings) -> (SearchParameters, keep): built once, read by every search
        self._maps = {}  # (query modality, item modality) -> score map (the store's calibrator never changes)
        self.defaults = self.check_defaults(defaults)  # query modality -> item modality -> settings
        self.lists = {m: plumbing.inverted_lists(subs[m]) for m in MODALITIES}  # (IVF structure, transforms)
        for ivf, _ in self.lists.values():
            if ivf is not None and ivf.parallel_mode == 0:
                ivf.parallel_mode = 3  # threads over queries inside search_preassigned too (mode 0: only in search)
        # per modality: mean squared distance of its vectors to their list's centroid (IVF only)
        self.spread = dict(spread) if spread else {m: None for m in MODALITIES}
        for m in MODALITIES:
            self.refresh(m)

    def _padded(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.shape[1] == self.width:
            return vectors
        out = np.zeros((len(vectors), self.width), dtype=np.float32)
        out[:, :vectors.shape[1]] = vectors
        return out

    def is_trained(self, modality) -> bool:
        return bool(self.subs[modality].is_trained)

    def faiss_index(self, modality):
        return self.subs[check_modality("modality", modality)]

    def train(self, modality, x) -> None:
        if self.is_trained(modality):
            raise ValueError(f"modality {modality!r}: its faiss index ({self.spec}) is already trained")
        sub = self.subs[modality]
        vectors = self._padded(self.cal.transform(x, modality=modality))
        try:
            sub.train(vectors)
        except RuntimeError as exc:
            raise ValueError(f"vectors could not train the {modality} items' index ({self.spec}): "
                             f"{plumbing.faiss_message(exc)}") from None
        if self.lists[modality][0] is not None:
            self.spread[modality] = plumbing.list_spread(sub, vectors[:_CHUNK])

    def _add(self, modality, x, ids) -> None:
        if not self.is_trained(modality):
            raise ValueError(f"the {modality} items' faiss index ({self.spec}) is not trained: call "
                             f"train(vectors, modality={modality!r}) first")
        sub = self.subs[modality]
        if len(x) > _CHUNK:
            plumbing.reserve(sub, len(x))
        for start in range(0, len(x), _CHUNK):
            chunk = self._padded(self.cal.transform(x[start:start + _CHUNK], modality=modality))
            if self.lists[modality][0] is not None and self.spread[modality] is None:  # trained by its owner
                self.spread[modality] = plumbing.list_spread(sub, chunk)
            sub.add_with_ids(chunk, ids[start:start + _CHUNK])

    def _remove(self, modality, ids) -> bool:
        if not self.removable[modality]:
            return False
        self.subs[modality].remove_ids(faiss.IDSelectorBatch(ids))
        return True

    def refresh(self, modality) -> None:
        hidden = self.hidden[modality]
        if len(hidden):
            inner = faiss.IDSelectorBatch(hidden)
            self._hidden_sel[modality] = (faiss.IDSelectorNot(inner), inner)
        else:
            self._hidden_sel[modality] = None
        self._params = {key: value for key, value in self._params.items() if key[0] != modality}

    def check_defaults(self, defaults) -> dict:
        """Stored search settings: ``{query modality: {item modality: settings}}``, each checked like ``params``;
        ``{query modality: {"shared": settings}}`` applies one setting as ``params`` does (IVF: one nprobe
        budget shared out between the modalities' lists)."""
        if not defaults:
            return {}
        if not isinstance(defaults, dict):
            raise TypeError(f"search defaults must be a dict {{query modality: {{item modality: settings}}}}, got "
                            f"{type(defaults).__name__}")
        out = {}
        for query_modality, per_item in defaults.items():
            check_modality("a search defaults key (query modality)", query_modality)
            if not isinstance(per_item, dict):
                raise TypeError(f"search defaults[{query_modality!r}] must map item modalities to settings, got "
                                f"{type(per_item).__name__}")
            keys = list(per_item)
            if SHARED in keys and len(keys) > 1:
                raise ValueError(f"search defaults[{query_modality!r}] must hold either {SHARED!r} (one setting for "
                                 f"both modalities) or item modalities, got {keys}")
            out[query_modality] = {m if m == SHARED else check_modality("an item modality of the search defaults", m):
                                   self.search_settings(settings) for m, settings in per_item.items()}
        return out

    def _search_params(self, modality, settings):
        """Per-call faiss SearchParameters for one modality. Those for explicit settings are cached (building
        them costs about as much as a short walk); without settings they copy the index's own, which may change."""
        key = (modality, tuple(sorted(settings.items())))
        found = self._params.get(key)
        if found is None:
            hidden = self._hidden_sel[modality]
            params, keep = plumbing.search_parameters(self.subs[modality], hidden and hidden[0], settings)
            found = (params, (keep, hidden))
            if settings:
                if len(self._params) >= 64:
                    self._params = {}
                self._params[key] = found
        return found  # (params, objects faiss only points to: hold them while searching)

    def search(self, queries, query_modality, targets, k, settings, where, names):
        """Raw top-k per target modality; an untrained modality holds nothing: no hits."""
        trained = [(m, u) for m, u in zip(targets, queries) if self.is_trained(m)]
        search = self._search_lists if self.lists["text"][0] is not None else self._search_each
        found = dict(zip([m for m, _ in trained], search(trained, query_modality, k, settings) if trained else []))
        if len(found) < len(targets):
            nothing = (np.full((len(queries[0]), k), -np.inf, dtype=np.float32), np.full((len(queries[0]), k), -1))
            found = {m: found.get(m, nothing) for m in targets}
        return self._with_fields([found[m] for m in targets], names)

    def _search_each(self, trained, query_modality, k, settings):
        defaults = self.defaults.get(query_modality, {})
        parts = []
        for m, u in trained:
            params, keep = self._search_params(m, settings or defaults.get(m) or defaults.get(SHARED, {}))
            parts.append(self.subs[m].search(self._padded(u), k, params=params))
            del keep
        return parts

    def _search_lists(self, trained, query_modality, k, settings):
        """IVF. One ``nprobe`` for the call (``settings``, a stored shared one, else faiss's own): the lists of
        every target modality are ranked together by calibrated reach and the best ``nprobe`` in all are
        scanned. Stored per-modality settings give each modality its own number of lists, its best by centroid."""
        defaults = self.defaults.get(query_modality, {})
        stored = {m: defaults.get(m, {}).get("nprobe") for m, _ in trained}
        shared = "nprobe" in settings or all(v is None for v in stored.values())
        if shared:
            fallback = defaults.get(SHARED, {}).get("nprobe") or max(self.lists[m][0].nprobe for m, _ in trained)
            budget = int(settings.get("nprobe", fallback))
        probes = []
        for m, u in trained:
            ivf, chain = self.lists[m]
            u = plumbing.before_lists(chain, self._padded(u))
            wanted = budget if shared else (stored[m] or ivf.nprobe)
            centroid_scores, lists = ivf.quantizer.search(u, min(wanted, ivf.nlist))
            probes.append((m, u, centroid_scores, lists))
        if shared and len(probes) > 1 and sum(p[3].shape[1] for p in probes) > budget:
            # one budget for both modalities: keep each query's best lists overall (ties: the first)
            reach = np.concatenate([self._reach(query_modality, *p) for p in probes], axis=1)
            lists = np.concatenate([p[3] for p in probes], axis=1)
            beyond = np.argsort(-reach, axis=1, kind="stable")[:, budget:]
            lists[np.arange(len(lists))[:, None], beyond] = -1
            width = probes[0][3].shape[1]
            probes = [probes[0][:3] + (lists[:, :width],), probes[1][:3] + (lists[:, width:],)]
        parts = []
        for m, u, centroid_scores, lists in probes:
            hidden = self._hidden_sel[m]
            parts.append(plumbing.search_lists(self.lists[m][0], u, k, lists, centroid_scores, hidden and hidden[0]))
        return parts

    def _reach(self, query_modality, modality, u, centroid_scores, lists):
        """Calibrated score a list's best item may reach: its centroid's score plus the modality's typical
        distance from a centroid, mapped by the pair type's score map (lists of -1: -inf)."""
        score_map = self._maps.get((query_modality, modality))
        if score_map is None:
            score_map = self._maps[query_modality, modality] = self.cal.score_map(query_modality=query_modality,
                                                                                 item_modality=modality)
        ivf = self.lists[modality][0]
        optimism = np.float32(plumbing.LIST_OPTIMISM * math.sqrt((self.spread[modality] or 0.0) / ivf.d))
        reach = score_map(centroid_scores + (optimism * np.sqrt(np.einsum("ij,ij->i", u, u)))[:, None])
        reach[lists < 0] = -np.inf
        return reach

    # ------------------------------------------------------------------ persistence
    def indexes(self) -> dict:
        """The faiss indexes to write, by file key."""
        return dict(self.subs)

    def state(self) -> dict:
        return {"layout": self.layout, "spec": self.spec, "width": self.width, "list_spread": self.spread,
                "search_defaults": self.defaults}

    @classmethod
    def restore(cls, calibrator, state: dict, indexes: dict, where: str, **bookkeeping) -> "PerModality":
        if set(indexes) != set(MODALITIES):
            raise ValueError(f"{where}: a per-modality index needs text and image files, got {sorted(indexes)}")
        width = indexes["text"].d
        if width < calibrator.output_dim_ or indexes["image"].d != width:
            raise ValueError(f"{where}: its faiss indexes have dimensions {indexes['text'].d} and "
                             f"{indexes['image'].d}, the calibrator needs {calibrator.output_dim_}")
        spread = state.get("list_spread") or {}
        for m in MODALITIES:
            ivf, _ = plumbing.inverted_lists(indexes[m])
            value = spread.get(m)
            if ivf is not None and ivf.ntotal and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                   or not np.isfinite(value) or value < 0):
                raise ValueError(f"{where}: the {m} index's list_spread entry, which IVF searches rank lists by, must "
                                 f"be a non-negative number, got {value!r}")
        for m in MODALITIES:
            check_stored(indexes[m], where, m, np.concatenate([bookkeeping["live"][m], bookkeeping["hidden"][m]]))
        backend = cls(calibrator, indexes, width, str(state.get("spec")), {m: spread.get(m) for m in MODALITIES},
                      **bookkeeping)
        try:
            backend.defaults = backend.check_defaults(state.get("search_defaults"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: its stored search defaults are invalid: {exc}") from None
        return backend


class Wrapped(FaissBackend):
    """A user's faiss index of raw embeddings, searched one item modality at a time (see MixedIndex.wrap)."""

    layout = "wrapped"

    def __init__(self, calibrator, index, candidates: int, **bookkeeping):
        super().__init__(calibrator, **bookkeeping)
        self.candidates = candidates
        self.owner = index  # the caller's Python object owns the C++ index: keep it alive
        self.index = faiss.downcast_index(index)
        self.width = self.index.d
        self.spec = plumbing.describe(self.index)
        refused = plumbing.selector_error(self.index)
        if refused:
            raise ValueError(f"index must accept faiss ID selectors, through which wrap searches one modality at a "
                             f"time; a {self.spec} index does not ({refused}): use reindex=True")
        self._reconstruct = plumbing.Reconstructor(self.index)
        self.structures = plumbing.structures(self.index)
        self._selectors = {m: None for m in MODALITIES}
        self.appends_positions = (faiss.try_extract_index_ivf(self.index) is None
                                  and not isinstance(self.index, faiss.IndexIDMap))
        for m in MODALITIES:
            self.refresh(m)

    def is_trained(self, modality) -> bool:
        return True  # wrap() refuses untrained indexes

    def faiss_index(self, modality):
        return self.owner

    def train(self, modality, x) -> None:
        raise ValueError("train applies to per-modality indexes; a wrapped index was trained by its owner")

    def dictated_ids(self, n):
        return np.arange(self.index.ntotal, self.index.ntotal + n, dtype=np.int64) if self.appends_positions else None

    def _add(self, modality, x, ids) -> None:
        x = np.ascontiguousarray(x, dtype=np.float32)  # the user's index holds raw embeddings
        if self.appends_positions:  # the store checked they are the next positions
            self.index.add(x)
        else:
            self.index.add_with_ids(x, ids)
        self._reconstruct.refresh()

    def _remove(self, modality, ids) -> bool:
        return False  # hidden through the selectors: the user's index is not rewritten

    def refresh(self, modality) -> None:
        self._selectors[modality] = faiss.IDSelectorBatch(self.live[modality])

    def _candidate_queries(self, u, modality):
        """The linear part of the calibrated score as a query on raw vectors, for candidate generation.

        Item vectors are ``normalize(normalize(x) @ P - o)`` then get a hubness column; dropping both
        normalisations and the hubness column leaves ``<u, x @ P> + const``, i.e. a query ``u @ P.T``.
        """
        q = u[:, :self.cal.dim_]
        proj = self.cal.projection_matrix(modality=modality)
        return np.ascontiguousarray(q if proj is None else q @ proj.T.astype(np.float32), dtype=np.float32)

    def search(self, queries, query_modality, targets, k, settings, where, names):
        """Raw inner products of the top k per target modality, re-scored exactly from stored vectors."""
        n_cand = k * self.candidates
        step = max(1, _CHUNK // n_cand)  # bounds the re-scored vectors held at once to about _CHUNK
        out = []
        for m, u in zip(targets, queries):
            parts = [self._search_chunk(u[s:s + step], m, k, n_cand, settings) for s in range(0, len(u), step)]
            out.append((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])))
        return self._with_fields(out, names)

    def _search_chunk(self, u, modality, k, n_cand, settings):
        params, keep = plumbing.search_parameters(self.index, self._selectors[modality], settings)
        _, ids = self.index.search(self._candidate_queries(u, modality), n_cand, params=params)
        del keep
        found = ids >= 0
        scores = np.full(ids.shape, -np.inf, dtype=np.float32)
        if found.any():
            rows = np.nonzero(found)[0]
            items = self.cal.transform(self._reconstruct(ids[found]), modality=modality)
            scores[found] = np.einsum("ij,ij->i", u[rows], items)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    # ------------------------------------------------------------------ persistence
    def indexes(self) -> dict:
        return {"shared": self.index}

    def state(self) -> dict:
        return {"layout": self.layout, "spec": self.spec, "candidates": self.candidates}

    @classmethod
    def restore(cls, calibrator, state: dict, indexes: dict, where: str, **bookkeeping) -> "Wrapped":
        index = indexes.get("shared")
        if index is None or index.d != calibrator.dim_:
            raise ValueError(f"{where}: a wrapped index needs one faiss index of dimension {calibrator.dim_}")
        candidates = state.get("candidates")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"{where}: candidates must be a positive integer, got {candidates!r}")
        check_stored(index, where, "wrapped", np.concatenate([*bookkeeping["live"].values(),
                                                              *bookkeeping["hidden"].values()]))
        return cls(calibrator, index, candidates, **bookkeeping)


def check_stored(index, where: str, what: str, expected: np.ndarray) -> None:
    """Refuse a faiss index whose ids are not the ones the store's id file lists for it."""
    stored = plumbing.stored_ids(index)
    unlisted = np.setdiff1d(stored, expected)
    if len(stored) != len(expected) or len(unlisted):
        raise ValueError(f"{where}: the {what} faiss index holds {len(stored)} items, {len(unlisted)} of them with ids "
                         f"the id file does not list for it (e.g. {unlisted[:3].tolist()}); it lists {len(expected)}")


LAYOUTS = {PerModality.layout: PerModality, Wrapped.layout: Wrapped}
