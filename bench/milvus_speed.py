"""MilvusStore insert and search throughput against raw pymilvus calls on the same collection (Milvus Lite).

Issue 7: overhead ratios of gapcal's calibrated store over the pymilvus calls it makes, on 100k vectors
(d = 512: the real COCO-500 CLIP vectors, each repeated with small noise, half texts and half images).

* insert: ``store.add`` (validation, id check, calibration, batched insert) against ``client.insert`` of the
  same already-calibrated rows in the same batches, into a twin collection of the same schema.
* search: ``store.search`` over both modalities (two per-partition searches, score maps, merge) against (a) the same
  two per-partition ``client.search`` calls with already-calibrated queries, i.e. gapcal's own overhead, and
  (b) one unfiltered ``client.search``, i.e. what an uncalibrated mixed search costs.

    python bench/milvus_speed.py                      # 100k vectors, FLAT, 100 queries, k = 10
    python bench/milvus_speed.py --n 20000 --index IVF_FLAT --queries 500
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from milvus_lite.server_manager import server_manager_instance

from gapcal import GapCalibrator
from gapcal.data import load_coco500
from gapcal.stores import MilvusStore


def noisy_copies(base: np.ndarray, n: int, rng, scale=0.02) -> np.ndarray:
    """``n`` rows cycling through ``base`` plus Gaussian noise of norm about ``scale`` (float32)."""
    rows = base[np.arange(n) % len(base)]
    return rows + rng.standard_normal(rows.shape, dtype=np.float32) * np.float32(scale / np.sqrt(base.shape[1]))


def best_of(fns, repeats):
    """Fastest time of each function after one untimed warm-up call, run alternately so that a busy spell
    hits all of them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for slot, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - start)
    return [min(slot) for slot in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors in all, half of each modality")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--index", default="FLAT", help="Milvus index type (FLAT, IVF_FLAT, HNSW where supported)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    text_base, image_base = load_coco500()
    cal = GapCalibrator().fit(text_base, image_base)
    half = args.n // 2
    text, image = noisy_copies(text_base, half, rng), noisy_copies(image_base, args.n - half, rng)
    queries = noisy_copies(text_base[::-1], args.queries, rng)
    print(f"{args.n} vectors (d=512, {half} texts, {args.n - half} images), {args.index}, batches of "
          f"{args.batch_size}; pymilvus {version('pymilvus')}, milvus-lite {version('milvus-lite')}")

    folder = Path(tempfile.mkdtemp(prefix="gapcal-milvus-bench-"))
    db = str(folder / "bench.db")
    try:
        index = {"index_type": args.index}
        store = MilvusStore(cal, db, "calibrated", index_params=index, batch_size=args.batch_size,
                            show_progress=False)
        twin = MilvusStore(cal, db, "raw", index_params=index, show_progress=False)
        client = store.client

        start = time.perf_counter()
        store.add(text, modality="text", ids=np.arange(half))
        store.add(image, modality="image", ids=np.arange(half, args.n))
        ours = time.perf_counter() - start

        rows = {m: cal.transform(x, modality=m) for m, x in (("text", text), ("image", image))}  # calibrated beforehand
        start = time.perf_counter()
        next_id = 0
        for m, vectors in rows.items():
            for s in range(0, len(vectors), args.batch_size):
                batch = vectors[s:s + args.batch_size].tolist()
                client.insert("raw", [{"id": next_id + j, "vector": v, "modality": m} for j, v in enumerate(batch)],
                              partition_name=m)
                next_id += len(batch)
        raw = time.perf_counter() - start
        assert len(store) == len(twin) == args.n
        print(f"insert   MilvusStore.add {args.n / ours:9.0f} vectors/s   raw client.insert {args.n / raw:9.0f} "
              f"vectors/s   overhead ratio {ours / raw:.2f}")

        settings = {"metric_type": "IP", "params": {}}
        filtered = {m: cal.transform_query(queries, query_modality="text", item_modality=m) for m in ("text", "image")}

        def raw_per_partition():
            for m, u in filtered.items():
                client.search("calibrated", data=u, limit=args.k, partition_names=[m], search_params=settings,
                              output_fields=["modality"], anns_field="vector")

        def raw_single():
            client.search("calibrated", data=filtered["image"], limit=args.k, search_params=settings,
                          output_fields=["modality"], anns_field="vector")

        mixed, same_calls, single = best_of([lambda: store.search(queries, k=args.k, query_modality="text"),
                                             raw_per_partition, raw_single], args.repeats)
        nq = len(queries)
        print(f"search   MilvusStore.search {nq / mixed:8.1f} queries/s   same 2 per-partition client.search "
              f"{nq / same_calls:8.1f} queries/s   overhead ratio {mixed / same_calls:.2f}")
        print(f"         against 1 unfiltered client.search {nq / single:8.1f} queries/s   "
              f"ratio {mixed / single:.2f}  (k={args.k}, {nq} text queries, best of {args.repeats})")
        store.close()
        twin.close()
    finally:
        server_manager_instance.release_server(db)  # Milvus Lite writes its files at exit: stop it first
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
