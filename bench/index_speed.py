"""MixedIndex versus bare faiss on the same vectors: build time, memory, search time, recall@10.

Data: COCO-500 CLIP ViT-B/16 embeddings (bundled) expanded to N vectors per run, half captions and half
images, by one of two generators (``--data``); queries come from the same generator with other seeds
(half each modality); the calibrator is fitted on the 500 real pairs.

- ``mixtures`` (default): each vector mixes two real vectors of its modality (weight 0.6-1 on the first)
  plus Gaussian noise (0.02 per coordinate), L2-normalised: 500 tight clusters per modality, easy for
  same-modal search and hard for cross-modal search (the query's best items of the other modality sit
  in a cluster, nearly tied).
- ``gaussian``: pairs drawn from one Gaussian with the mean and covariance of the 500 real (text, image)
  unit pairs, plus isotropic noise (NOISE in all), each side L2-normalised; items of a modality are one
  side of independent draws. Continuous, with the real pairs' second moments (matched cosine ~0.29,
  unrelated text-image ~0.15, text-text ~0.48): harder same-modal search, milder cross-modal penalty.
Neither is real data at scale (none ships here); where the two disagree, so may real embeddings.

"bare" is one faiss index (same factory string, inner product) over the raw vectors of both modalities;
"mixed" is ``gapcal.MixedIndex`` over the same vectors, searching both modalities for every query with
the same k and search settings. Recall@10 is against exact ranking: raw cosine for bare, calibrated score
for mixed (ground truth from flat indexes over the same vectors).

IVF: MixedIndex shares the spec's lists out between the modalities and ``nprobe`` counts lists in total, so
both sides compare against as many centroids and scan about as many items; recall at equal nprobe is lower
for mixed because its top 10 spans both modalities' lists while a raw top 10 sits in one modality's.

Equal recall (HNSW, IVF): for recall@10 targets 0.90 / 0.95 / 0.99, the cheapest setting of a ladder that
reaches the target (mean of both query modalities; bare against the raw ranking, mixed against the
calibrated one) and its batch time: bare faiss, MixedIndex with one setting for both walks (``params``), and
MixedIndex with the settings ``MixedIndex.tune`` chose and stored (one efSearch or nprobe per query and
item modality) from separate tuning queries. The "floor" line times both at the ladder's
cheapest setting: where bare reaches a target there, the ratio at equal recall cannot fall below it.

"bare cross-modal" is what faiss alone pays to find cross-modal results at all: a bare index of the same
spec over ONE modality's raw vectors, searched with the other modality's raw queries (CLIP text-to-image
search without gapcal), recall@10 against its own exact raw ranking. The bare row's top 10 are nearly all
of the query's own modality (its "image share" line), so the bare row never pays for a cross-modal walk;
a mixed search must. "bare + cross" adds the two (each at its cheapest setting reaching the target): the
faiss-only cost of a same-modal and a cross-modal top 10, the reference for mixed search's own cost.

Run: ``python bench/index_speed.py`` (about 15 minutes on 2 cores; ``--quick`` for a smaller run,
``--only ivf`` (or flat, hnsw) for one configuration).
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from gapcal.calibration import GapCalibrator
from gapcal.data import load_coco500
from gapcal.stores.faiss import MixedIndex

K = 10
TARGETS = (0.90, 0.95, 0.99)
LINK_QUERIES = 10_000
NOISE = 0.3
LADDERS = {"efSearch": (10, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048),
           "nprobe": (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)}


def synthesize(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n unit vectors near the span of ``base``'s rows: two-row mixtures plus noise."""
    rng = np.random.default_rng(seed)
    base = base / np.linalg.norm(base, axis=1, keepdims=True)
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        a = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
        x = a * base[rng.integers(0, len(base), m)] + (1 - a) * base[rng.integers(0, len(base), m)]
        x += rng.normal(0.0, 0.02, x.shape).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def joint_gaussian(text: np.ndarray, image: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n (text, image) unit pairs from the Gaussian of the real unit pairs' mean and covariance, plus
    isotropic noise of total norm NOISE (500 pairs span 499 directions; the noise fills the rest)."""
    rng = np.random.default_rng(seed)
    pairs = np.hstack([text / np.linalg.norm(text, axis=1, keepdims=True),
                       image / np.linalg.norm(image, axis=1, keepdims=True)])
    mean, centred = pairs.mean(axis=0), pairs - pairs.mean(axis=0)
    d = text.shape[1]
    out = np.empty((2, n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        x = mean + (rng.standard_normal((m, len(pairs))) / np.sqrt(len(pairs))) @ centred
        x += rng.normal(0.0, NOISE / np.sqrt(d), x.shape)
        for side in range(2):
            v = x[:, side * d:(side + 1) * d]
            out[side, start:start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out[0], out[1]


def generate(data: str, text: np.ndarray, image: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n texts and n images of the ``--data`` generator (for gaussian: sides of independent draws)."""
    if data == "mixtures":
        return synthesize(text, n, seed), synthesize(image, n, seed + 1)
    return joint_gaussian(text, image, n, seed)[0], joint_gaussian(text, image, n, seed + 1)[1]


def serialized_bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def mixed_bytes(mixed: MixedIndex) -> int:
    ids = sum(mixed._backend.live[m].nbytes + mixed._backend.hidden[m].nbytes for m in ("text", "image"))
    return sum(serialized_bytes(mixed.faiss_index(m)) for m in ("text", "image")) + ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def best_of(repeats: int, run) -> float:
    """Least disturbed wall time of ``run()`` (the machine may be shared)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(spec, n, cal, text_items, image_items, queries, settings, train_points, repeats, singles, tuning):
    """Build bare and mixed indexes over the same n vectors; time and score searches at each setting."""
    half = n // 2
    text_items, image_items = text_items[:half], image_items[:half]
    raw = np.vstack([text_items, image_items])
    q_text, q_image = queries
    nq = len(q_text) + len(q_image)
    rng = np.random.default_rng(1)

    start = time.perf_counter()
    bare = faiss.index_factory(raw.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not bare.is_trained:
        bare.train(raw[rng.choice(n, min(n, train_points), replace=False)])
    bare.add(raw)
    bare_build = time.perf_counter() - start

    start = time.perf_counter()
    mixed = MixedIndex(cal, spec)
    for m, items in (("text", text_items), ("image", image_items)):
        if not mixed.faiss_index(m).is_trained:
            mixed.train(items[rng.choice(half, min(half, train_points // 2), replace=False)], modality=m)
    mixed.add(text_items, modality="text", ids=np.arange(half))
    mixed.add(image_items, modality="image", ids=np.arange(half, n))
    mixed_build = time.perf_counter() - start
    memory = serialized_bytes(bare), mixed_bytes(mixed)

    exact_raw = faiss.IndexFlatIP(raw.shape[1])
    exact_raw.add(raw)
    raw_truth = exact_raw.search(q_text, K)[1], exact_raw.search(q_image, K)[1]
    del exact_raw
    exact_cal = mixed if spec == "Flat" else MixedIndex(cal, "Flat")
    if exact_cal is not mixed:
        exact_cal.add(text_items, modality="text", ids=np.arange(half))
        exact_cal.add(image_items, modality="image", ids=np.arange(half, n))
    cal_truth = exact_cal.search(q_text, K, query_modality="text").ids, exact_cal.search(q_image, K, query_modality="image").ids
    del exact_cal

    runs = []
    for params in settings:
        for name, value in (params or {}).items():
            faiss.ParameterSpace().set_index_parameter(bare, name, value)

        def bare_search():
            return bare.search(q_text, K)[1], bare.search(q_image, K)[1]

        def mixed_search(params=params):
            return (mixed.search(q_text, K, params=params, query_modality="text").ids,
                    mixed.search(q_image, K, params=params, query_modality="image").ids)

        bare_batch, mixed_batch = [], []
        for _ in range(repeats):  # interleaved, so load from other processes hits both alike
            bare_batch.append(best_of(1, bare_search))
            mixed_batch.append(best_of(1, mixed_search))
        bare_found, mixed_found = bare_search(), mixed_search()
        runs.append({"params": params, "batch": (min(bare_batch) / nq, min(mixed_batch) / nq),
                     "recall": [(recall(bare_found[j], raw_truth[j]), recall(mixed_found[j], cal_truth[j]))
                                for j in range(2)],
                     "image_share": [((bare_found[j] >= half).mean(), (mixed_found[j] >= half).mean())
                                     for j in range(2)]})
    # single-query latency at the first setting
    for name, value in (settings[0] or {}).items():
        faiss.ParameterSpace().set_index_parameter(bare, name, value)
    bare_one = best_of(repeats, lambda: [bare.search(q_text[i:i + 1], K) for i in range(singles)])
    mixed_one = best_of(repeats, lambda: [mixed.search(q_text[i:i + 1], K, params=settings[0], query_modality="text")
                                          for i in range(singles)])
    in_faiss = faiss_time(mixed, lambda: [mixed.search(q_text[i:i + 1], K, params=settings[0], query_modality="text")
                                          for i in range(singles)], repeats)
    equal, cross_one = None, None
    if spec != "Flat":
        cross = cross_modal(spec, {"text": text_items, "image": image_items}, queries, train_points, rng)
        image_only = cross[0]["image"]
        for name, value in (settings[0] or {}).items():
            faiss.ParameterSpace().set_index_parameter(image_only, name, value)
        cross_one = best_of(repeats, lambda: [image_only.search(q_text[i:i + 1], K) for i in range(singles)]) / singles
        equal = equal_recall(bare, mixed, queries, tuning, raw_truth, cal_truth, repeats, cross,
                             (text_items, image_items) if spec.startswith("HNSW") else None)
    return {"spec": spec, "n": n, "build": (bare_build, mixed_build), "memory": memory, "runs": runs,
            "single": (bare_one / singles, mixed_one / singles, singles, settings[0]), "cross_one": cross_one,
            "overhead": (in_faiss[1] - in_faiss[0]) / singles, "equal": equal}


def cross_modal(spec, items, queries, train_points, rng):
    """Bare faiss indexes of ``spec`` over each modality's raw vectors, with the exact raw top K of the
    other modality's queries in them: (indexes, truth), keyed by item modality."""
    indexes, truth = {}, {}
    for m, q in zip(("image", "text"), queries):  # text queries search the image index, and back
        index = faiss.index_factory(items[m].shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(items[m][rng.choice(len(items[m]), min(len(items[m]), train_points // 2), replace=False)])
        index.add(items[m])
        exact = faiss.IndexFlatIP(items[m].shape[1])
        exact.add(items[m])
        indexes[m], truth[m] = index, exact.search(q, K)[1]
    return indexes, truth


def equal_recall(bare, mixed, queries, tuning, raw_truth, cal_truth, repeats, cross, link_items=None):
    """Per recall target: the cheapest ladder setting reaching it for bare, for bare cross-modal walks
    (``cross``: see ``cross_modal``), for mixed with one setting and mixed with tuned, stored settings:
    (setting, ms/query, recall) each; for HNSW also after ``MixedIndex.link`` with up to LINK_QUERIES
    stored items of each modality as sample queries."""
    name = "nprobe" if "IVF" in mixed.spec else "efSearch"
    q_text, q_image = queries
    nq = len(q_text) + len(q_image)

    def measured(search, truth):
        times = [best_of(1, search) for _ in range(repeats)]
        found = search()
        return min(times) / nq * 1e3, float(np.mean([recall(found[j], truth[j]) for j in range(2)]))

    def bare_at(value):
        faiss.ParameterSpace().set_index_parameter(bare, name, value)
        return measured(lambda: (bare.search(q_text, K)[1], bare.search(q_image, K)[1]), raw_truth)

    def cross_at(value):
        indexes, truth = cross
        for index in indexes.values():
            faiss.ParameterSpace().set_index_parameter(index, name, value)
        return measured(lambda: (indexes["image"].search(q_text, K)[1], indexes["text"].search(q_image, K)[1]),
                        (truth["image"], truth["text"]))

    def mixed_at(params):
        return measured(lambda: (mixed.search(q_text, K, query_modality="text", params=params).ids,
                                 mixed.search(q_image, K, query_modality="image", params=params).ids), cal_truth)

    def cheapest(run):
        out = {}
        for value in LADDERS[name]:
            ms, r = run(value)
            for t in TARGETS:
                if t not in out and r >= t:
                    out[t] = (value, ms, r)
            last = (value, ms, r)
            if len(out) == len(TARGETS):
                break
        return {t: out.get(t, (f">{last[0]}", None, last[2])) for t in TARGETS}

    def tuned():
        out = {}
        for t in TARGETS:
            for qm, q in zip(("text", "image"), tuning):
                mixed.tune(q, query_modality=qm, target_recall=t)
            ms, r = mixed_at(None)
            out[t] = (mixed.search_defaults, ms, r)
        return out

    lowest = LADDERS[name][0]
    rows = {"floor": (lowest, bare_at(lowest), mixed_at({name: lowest})),
            "bare": cheapest(bare_at), "cross": cheapest(cross_at), "uniform": cheapest(lambda v: mixed_at({name: v})),
            "tuned": tuned()}
    if link_items is not None:
        rng = np.random.default_rng(2)
        start = time.perf_counter()
        for qm, items in zip(("text", "image"), link_items):
            mixed.link(items[rng.choice(len(items), min(len(items), LINK_QUERIES), replace=False)], query_modality=qm)
        rows["link_seconds"] = time.perf_counter() - start
        rows["linked"] = tuned()
    mixed.set_search_defaults({})
    return name, rows


def faiss_time(mixed, run, repeats):
    """(seconds inside the faiss search calls a run makes, the run's total): the least disturbed of ``repeats``.
    The calls are timed by wrapping the search methods of the sub-indexes' faiss classes (and, for IVF, of
    its quantizer and its list scan) for the run."""
    indexes = [mixed.faiss_index(m) for m in ("text", "image")]
    ivfs = [faiss.extract_index_ivf(i) for i in indexes if faiss.try_extract_index_ivf(i) is not None]
    classes = {type(i) for i in indexes} | {type(i) for i in ivfs} | {type(i.quantizer) for i in ivfs}
    # the methods the search paths call: search (flat, HNSW, the IVF quantizer), search_preassigned_c (IVF lists)
    names = ("search", "search_preassigned", "search_preassigned_c")
    originals = {(cls, name): getattr(cls, name) for cls in classes for name in names if hasattr(cls, name)}
    spent = [0.0]

    def timed(original):
        def search(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return search

    best = None
    try:
        for (cls, name), original in originals.items():
            setattr(cls, name, timed(original))
        for _ in range(repeats):
            spent[0] = 0.0
            start = time.perf_counter()
            run()
            total = time.perf_counter() - start
            if best is None or total < best[1]:
                best = (spent[0], total)
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)
    return best


def _ratio_line(label, bare, mixed, digits):
    verdict = "ok" if mixed / bare <= 1.10 else "over"
    return (f"  {label:44s} bare {bare:9.{digits}f}  mixed {mixed:9.{digits}f}  ratio {mixed / bare:5.2f}  "
            f"{verdict} (target <= 1.10)")


def _ms(value) -> str:
    return "   (not reached)" if value is None else f"{value:.4f} ms"


def _x(mixed, bare) -> str:
    return "" if mixed is None or bare is None else f"= {mixed / bare:.2f}x bare"


def _tuned(defaults, name) -> str:
    """Stored settings compactly: text->text, text->image, image->text, image->image (or one shared)."""
    return f"{name}=" + ", ".join(f"{q[0]}->shared {defaults[q]['shared'][name]}" if "shared" in defaults[q] else
                                  ", ".join(f"{q[0]}->{m[0]} {defaults[q][m][name]}" for m in ("text", "image"))
                                  for q in ("text", "image"))


def _setting(params) -> str:
    return " " + ",".join(f"{k}={v}" for k, v in params.items()) if params else ""


def report(r) -> None:
    print(f"\n{r['spec']}  ({r['n']:,} vectors, k={K})")
    print(_ratio_line("build time (s)", *r["build"], 1))
    print(_ratio_line("memory (MB)", *(b / 2**20 for b in r["memory"]), 1))
    for run in r["runs"]:
        print(_ratio_line(f"search{_setting(run['params'])}, batch (ms/query)", *(t * 1e3 for t in run["batch"]), 4))
        for qm, (bare_r, mixed_r), (bare_s, mixed_s) in zip(("text", "image"), run["recall"], run["image_share"]):
            print(f"      {qm:5s} queries: recall@10 bare {bare_r:.3f} (vs raw ranking), mixed {mixed_r:.3f} "
                  f"(vs calibrated): {mixed_r - bare_r:+.3f} (target >= -0.02); image share of top 10: bare "
                  f"{bare_s:.2f}, mixed {mixed_s:.2f}")
    bare_one, mixed_one, singles, params = r["single"]
    print(_ratio_line(f"search{_setting(params)}, one query at a time (ms)", bare_one * 1e3, mixed_one * 1e3, 4)
          + f"  [{singles} text queries]")
    print(f"      of which outside the faiss calls it makes: {r['overhead'] * 1e3:.4f} ms per query (target <= 0.05)")
    if r["cross_one"] is not None:
        both = bare_one + r["cross_one"]
        print(f"      bare cross-modal walk alone (text query, image-only index, same setting) {r['cross_one'] * 1e3:.4f} ms; "
              f"bare + cross {both * 1e3:.4f} ms: mixed is {mixed_one / both:.2f}x that")
    if r["equal"]:
        name, rows = r["equal"]
        print(f"  equal recall@10 (mean of text and image queries), batch ms/query, cheapest {name} reaching it:")
        for t in TARGETS:
            bare_v, bare_ms, bare_r = rows["bare"][t]
            cross_v, cross_ms, cross_r = rows["cross"][t]
            both = None if bare_ms is None or cross_ms is None else bare_ms + cross_ms
            print(f"    {t:.2f}: bare {name}={bare_v} {_ms(bare_ms)} (recall {bare_r:.3f}) | bare cross-modal "
                  f"{name}={cross_v} {_ms(cross_ms)} (recall {cross_r:.3f}) {_x(cross_ms, bare_ms)} | bare + cross "
                  f"{_ms(both)}")
            mixed_rows = [("one " + name + "=" + str(rows["uniform"][t][0]), rows["uniform"][t]),
                          ("tuned " + _tuned(rows["tuned"][t][0], name), rows["tuned"][t])]
            if "linked" in rows:
                mixed_rows.append(("linked + tuned " + _tuned(rows["linked"][t][0], name), rows["linked"][t]))
            for label, (_, ms, r) in mixed_rows:
                print(f"          mixed, {label} {_ms(ms)} (recall {r:.3f}) {_x(ms, bare_ms)}"
                      + ("" if ms is None or both is None else f", {ms / both:.2f}x bare + cross"))
        lowest, (bare_ms, bare_r), (mixed_ms, mixed_r) = rows["floor"]
        print(f"    floor: at the ladder's cheapest setting, {name}={lowest}, mixed costs {mixed_ms / bare_ms:.2f}x bare "
              f"({_ms(mixed_ms)} vs {_ms(bare_ms)}; recall {mixed_r:.3f} vs {bare_r:.3f}): no mixed setting costs less")
        if "linked" in rows:
            print(f"    (linking: {LINK_QUERIES} stored items of each modality as sample queries, "
                  f"{rows['link_seconds']:.1f} s on top of the build)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors for Flat and IVF (default 1,000,000)")
    parser.add_argument("--hnsw-n", type=int, default=200_000,
                        help="vectors for HNSW32 (default 200,000: a 1M HNSW32 build takes ~5 min here, twice)")
    parser.add_argument("--queries", type=int, default=1000, help="queries, half of each modality")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100k vectors, 50k for HNSW, IVF1024")
    parser.add_argument("--data", choices=["mixtures", "gaussian"], default="mixtures",
                        help="vector generator (see the module docstring; default mixtures)")
    parser.add_argument("--only", choices=["flat", "hnsw", "ivf"], action="append",
                        help="run only this configuration (repeatable; default: all three)")
    args = parser.parse_args(argv)
    n, hnsw_n, ivf = args.n, args.hnsw_n, "IVF4096,Flat"
    if args.quick:
        n, hnsw_n, ivf = 100_000, 50_000, "IVF1024,Flat"
    text, image = load_coco500()
    cal = GapCalibrator().fit(text, image)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; calibrator: "
          f"{next(line for line in cal.summary().splitlines() if 'mean shift:' in line).strip()}")
    print(f"queries: {args.queries} ({args.queries // 2} per modality); timings: best of {args.repeats} "
          "interleaved runs")
    big = max(n, hnsw_n) // 2
    print(f"data: {args.data} (see the module docstring)")
    text_items, image_items = generate(args.data, text, image, big, 10)
    queries = generate(args.data, text, image, args.queries // 2, 20)
    tuning = generate(args.data, text, image, 300, 30)  # other queries than the measured ones
    runs = [("Flat", n, [None], 0, 20),
            ("HNSW32", hnsw_n, [{"efSearch": 64}, {"efSearch": 16}, {"efSearch": 256}], 0, 200),
            (ivf, n, [{"nprobe": 16}, {"nprobe": 64}], 100_000, 200)]
    if args.only:
        runs = [r for r in runs if r[0].split(",")[0].rstrip("0123456789").lower() in args.only]
    for spec, size, settings, train_points, singles in runs:
        start = time.perf_counter()
        report(bench(spec, size, cal, text_items, image_items, queries, settings, train_points, args.repeats,
                     min(singles, args.queries // 2), tuning))
        print(f"  (this configuration took {time.perf_counter() - start:.0f} s)")
    print("\nIVF: the bare index trains on 100,000 sampled vectors; MixedIndex trains each modality's index on "
          "50,000 of that modality (same total).")
    print("Memory: serialized faiss index sizes (plus MixedIndex's id arrays).")


if __name__ == "__main__":
    main()
