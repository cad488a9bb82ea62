"""Graph layouts for mixed HNSW search that MixedIndex does NOT use, measured against bare faiss (issue 16).

MixedIndex walks one graph per item modality and merges exactly mapped scores (``stores.faiss``). Two
alternatives meant to need one walk, or a cheaper cross-modal one, are measured here on the data of
``bench/index_speed.py --quick`` (50,000 synthetic COCO-500 mixtures, HNSW32, k=10, recall@10 against the
exact calibrated ranking, mean of 500 text and 500 image queries; bare against the raw ranking):

* one joint graph (inner product) over both modalities, vectors ``[e, level * onehot(modality),
  s * onehot(modality)]`` so that one query ``[e_q, hub weights, offsets / s]`` scores every item as its
  raw calibrated inner product plus a per-pair-type offset that lines the pair types' maps up at the
  median k-th calibrated score (an affine stand-in for the monotone maps); the walk's candidates are
  re-scored exactly (the raw score follows from the returned inner product). Variants: graph over those
  vectors; the same with RoarGraph-style cross-modal edges (each item to its 4 best items of the other
  modality, both ways); a graph built over mean-centred vectors (modalities interleaved) walked with the
  affine vectors. "oracle": the same candidates from an exact scan (the stand-in's own ceiling).
* per-modality graphs with the cross-modal walk seeded at level 0 from the other modality's top results
  (``IndexHNSW.search_level_0``): the best items, among the other modality, of the query's same-modal hits.
* per-modality graphs with the cross-modal walk led by an in-distribution proxy of the query: the query
  moved across the gap by the fitted means (``q - mean_q + mean_other``, re-normalised), its efSearch
  candidates re-scored exactly with the query itself. "oracle": the proxy's exact top 50, re-scored.

Run: ``python bench/graph_options.py`` (about 40 seconds on 2 cores).
"""

from __future__ import annotations

import time

import faiss
import numpy as np
from index_speed import best_of, recall, synthesize

from gapcal.calibration import GapCalibrator
from gapcal.data import load_coco500
from gapcal.stores.faiss import MixedIndex, plumbing

K = 10
HALF = 25_000
MODALITIES = ("text", "image")
OTHER = {"text": "image", "image": "text"}
EF = (10, 16, 32, 64)
S = 0.1  # the offset columns' stored value: small, so they barely shape the graph


class Joint:
    """One inner-product graph over both modalities' calibrated vectors plus offset columns."""

    def __init__(self, cal, vectors, kth):
        self.cal, self.vectors, self.kth = cal, vectors, kth
        self.d = vectors["text"].shape[1] - 1
        rows = []
        for j, m in enumerate(MODALITIES):
            z = np.zeros((HALF, self.d + 4), dtype=np.float32)
            z[:, :self.d] = vectors[m][:, :self.d]
            z[:, self.d + j] = vectors[m][:, self.d]
            z[:, self.d + 2 + j] = S
            rows.append(z)
        self.stored = np.vstack(rows)

    def graph(self, build_on=None):
        """HNSW32 over the stored vectors, or with the edges of a graph built over ``build_on``."""
        if build_on is None:
            graph = faiss.IndexHNSWFlat(self.stored.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
            graph.add(self.stored)
            return graph
        layout = faiss.IndexHNSWFlat(build_on.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        layout.add(build_on)
        storage = faiss.IndexFlatIP(self.stored.shape[1])
        storage.add(self.stored)
        graph = faiss.IndexHNSW(storage, 32)
        graph.hnsw = layout.hnsw
        graph.ntotal = storage.ntotal
        graph.own_fields = False
        graph.referenced_objects = [storage]  # faiss's way to keep the storage alive with the graph
        return graph

    def queries(self, q, query_modality):
        plan = self.cal.plan_queries(q, query_modality=query_modality)
        out = np.zeros((len(q), self.d + 4), dtype=np.float32)
        out[:, :self.d] = plan.vectors[0][:, :self.d]
        for j, m in enumerate(MODALITIES):
            out[:, self.d + j] = plan.vectors[j][0, self.d]
            offset = -float(plan.maps[j].inverse(np.array([self.kth[query_modality]]))[0])
            out[:, self.d + 2 + j] = offset / S
        return out, plan

    def search(self, graph, q, query_modality, ef, candidates, exact=False):
        u, plan = self.queries(q, query_modality)
        if exact:
            scores, ids = graph.search(u, candidates)
        else:
            scores, ids = graph.search(u, candidates, params=faiss.SearchParametersHNSW(efSearch=ef))
        mapped = np.full(scores.shape, -np.inf, dtype=np.float32)
        for j, m in enumerate(MODALITIES):
            mine = (ids >= HALF) if m == "image" else ((ids >= 0) & (ids < HALF))
            raw = scores - S * u[:, self.d + 2 + j][:, None]
            mapped[mine] = plan.maps[j](raw[mine])
        order = np.argsort(-mapped, axis=1, kind="stable")[:, :K]
        return np.take_along_axis(ids, order, 1)


def cross_edges(cal, vectors, raw, per_item: int):
    """Each stored item to its ``per_item`` best items of the other modality (exact), as joint-graph nodes."""
    src, dst = [], []
    for j, m in enumerate(MODALITIES):
        other = OTHER[m]
        u = cal.plan_queries(raw[m], query_modality=m, item_modalities=(other,)).vectors[0]
        flat = faiss.IndexFlatIP(vectors[other].shape[1])
        flat.add(vectors[other])
        _, best = flat.search(u, per_item)
        src.append(np.repeat(np.arange(HALF) + j * HALF, per_item))
        dst.append(best.ravel() + (1 - j) * HALF)
    return np.concatenate(src), np.concatenate(dst)


def main() -> None:
    text, image = load_coco500()
    cal = GapCalibrator().fit(text, image)
    raw = {"text": synthesize(text, HALF, 10), "image": synthesize(image, HALF, 11)}
    queries = {"text": synthesize(text, 500, 20), "image": synthesize(image, 500, 21)}
    nq = sum(len(q) for q in queries.values())
    exact = MixedIndex(cal, "Flat")
    for m in MODALITIES:
        exact.add(raw[m], modality=m, ids=np.arange(HALF) + (HALF if m == "image" else 0))
    truth = {m: exact.search(q, K, query_modality=m) for m, q in queries.items()}
    kth = {m: float(np.median(t.scores[:, -1])) for m, t in truth.items()}

    both = np.vstack([raw["text"], raw["image"]])
    bare = faiss.IndexHNSWFlat(both.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    bare.add(both)
    flat = faiss.IndexFlatIP(both.shape[1])
    flat.add(both)
    raw_truth = {m: flat.search(q, K)[1] for m, q in queries.items()}
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; {2 * HALF:,} vectors, HNSW32, k={K}; "
          f"ms per query (batches of 500), recall@10")
    bare_ms = {}
    for ef in EF:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        r = np.mean([recall(bare.search(q, K, params=params)[1], raw_truth[m]) for m, q in queries.items()])
        bare_ms[ef] = best_of(3, lambda: [bare.search(q, K, params=params) for q in queries.values()]) / nq * 1e3
        print(f"  bare faiss                      efSearch {ef:3d}: recall {r:.3f} {bare_ms[ef]:.4f} ms")

    vectors = {m: cal.transform(raw[m], modality=m) for m in MODALITIES}
    joint = Joint(cal, vectors, kth)

    def report(label, graph, candidates):
        for ef in EF:
            r = np.mean([recall(joint.search(graph, q, m, ef, candidates), truth[m].ids) for m, q in queries.items()])
            ms = best_of(3, lambda: [joint.search(graph, q, m, ef, candidates) for m, q in queries.items()]) / nq * 1e3
            print(f"  {label:31s} efSearch {ef:3d}: recall {r:.3f} {ms:.4f} ms = {ms / bare_ms[ef]:.2f}x bare "
                  f"at the same efSearch")

    scan = faiss.IndexFlatIP(joint.stored.shape[1])
    scan.add(joint.stored)
    ceiling = [np.mean([recall(joint.search(scan, q, m, 0, c, exact=True), truth[m].ids) for m, q in queries.items()])
               for c in (10, 20, 50)]
    print(f"  joint, oracle (exact scan): recall with 10 / 20 / 50 candidates re-scored "
          f"{ceiling[0]:.3f} / {ceiling[1]:.3f} / {ceiling[2]:.3f}")
    start = time.perf_counter()
    plain = joint.graph()
    print(f"  (joint graph built in {time.perf_counter() - start:.1f} s)")
    report("joint graph, 20 candidates", plain, 20)
    start = time.perf_counter()
    src, dst = cross_edges(cal, vectors, raw, 4)
    plumbing.link_level0(plain, np.concatenate([src, dst]), np.concatenate([dst, src]))
    print(f"  (cross-modal edges found and added in {time.perf_counter() - start:.1f} s)")
    report("joint + cross edges, 20 cand.", plain, 20)
    d = joint.d
    centred = np.vstack([vectors[m][:, :d] - vectors[m][:, :d].mean(axis=0) for m in MODALITIES])
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    report("joint, edges from centred, 20", joint.graph(build_on=centred), 20)

    # per-modality graphs: the cross-modal walk alone, from the top or seeded at level 0
    graphs = {}
    for m in MODALITIES:
        graphs[m] = faiss.IndexHNSWFlat(vectors[m].shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        graphs[m].add(vectors[m])
    src, dst = cross_edges(cal, vectors, raw, 2)
    means = {"text": cal.text_mean_, "image": cal.image_mean_}
    proxies = {}
    for m, q in queries.items():  # the query moved across the gap, as a vector of the other modality's graph
        moved = q - means[m] + means[OTHER[m]]
        moved /= np.linalg.norm(moved, axis=1, keepdims=True)
        proxies[m] = np.ascontiguousarray(
            cal.plan_queries(moved.astype(np.float32), query_modality=OTHER[m], item_modalities=(OTHER[m],)).vectors[0])
    best_other = {m: (dst[src // HALF == j] % HALF).reshape(HALF, 2) for j, m in enumerate(MODALITIES)}
    for m, q in queries.items():
        other = OTHER[m]
        plan = cal.plan_queries(q, query_modality=m)
        u_same, u_other = (plan.vectors[0], plan.vectors[1]) if m == "text" else (plan.vectors[1], plan.vectors[0])
        cross_truth = exact.search(q, K, query_modality=m, item_modality=other).ids % HALF
        _, same = graphs[m].search(u_same, K, params=faiss.SearchParametersHNSW(efSearch=16))
        seeds = best_other[m][same].reshape(len(q), -1).astype(np.int32)
        seed_d = -np.einsum("ij,ikj->ik", u_other, vectors[other][seeds]).astype(np.float32)  # faiss's sign
        for ef in EF:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            walked = graphs[other].search(u_other, K, params=params)[1]
            found = np.empty((len(q), K), dtype=np.int64)
            scores = np.empty((len(q), K), dtype=np.float32)
            graphs[other].search_level_0(len(q), faiss.swig_ptr(u_other), K, faiss.swig_ptr(seeds),
                                         faiss.swig_ptr(seed_d), faiss.swig_ptr(scores), faiss.swig_ptr(found),
                                         seeds.shape[1], 2, params)
            led = proxy_walk(graphs[other], vectors[other], u_other, proxies[m], ef)
            print(f"  {m}->{other} walk alone           efSearch {ef:3d}: recall {recall(walked, cross_truth):.3f} "
                  f"from the top, {recall(found, cross_truth):.3f} seeded at level 0 from {seeds.shape[1]} items, "
                  f"{recall(led, cross_truth):.3f} led by the proxy")
        scan = faiss.IndexFlatIP(vectors[other].shape[1])
        scan.add(vectors[other])
        oracle = rescored(u_other, vectors[other], scan.search(proxies[m], 50)[1])
        print(f"  {m}->{other} proxy's exact top 50 re-scored (oracle): recall {recall(oracle, cross_truth):.3f}")


def rescored(u, items, candidates):
    """The K best of each row's candidate ids by exact inner product with ``u``."""
    scores = np.einsum("ij,ikj->ik", u, items[candidates])
    return np.take_along_axis(candidates, np.argsort(-scores, axis=1)[:, :K], 1)


def proxy_walk(graph, items, u, proxy, ef):
    """Walk with ``proxy``, keep all ``ef`` candidates, re-score them with the query vectors ``u``."""
    _, candidates = graph.search(proxy, ef, params=faiss.SearchParametersHNSW(efSearch=ef))
    return rescored(u, items, candidates)


if __name__ == "__main__":
    main()
