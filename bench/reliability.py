"""Reliability sweep (issue 13): hostile files, bad input, kill -9 during saves, concurrent use.

Every probe is counted once per area as one of:
  clear error   a ValueError / TypeError / FileNotFoundError (one line on stderr for the CLI) that names the
                argument, option or file at fault; nothing was changed
  accepted      the call succeeded and its answer equals the reference (a flipped zip timestamp changes nothing)
  silent wrong  the call succeeded with another answer, or a bad call was taken, or an object/file changed
  crash         any other exception (a traceback), or an error that does not say what is wrong

    python bench/reliability.py             # the long sweep (about 30 s on 2 cores)
    python bench/reliability.py --quick     # a few of each (tests/test_reliability.py runs these in CI)

Done when every area prints 0 silent wrong and 0 crash.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gapcal import GapCalibrator
from gapcal.data import load_coco500

CLEAR = (ValueError, TypeError, FileNotFoundError)
OUTCOMES = ("clear error", "accepted", "silent wrong", "crash")
N = 200  # items per modality in the probe indexes
ROOT = Path(__file__).resolve().parents[1]


class Tally:
    """Outcome counts per area, with the first few bad cases kept for the report."""

    def __init__(self):
        self.counts = defaultdict(Counter)
        self.bad = defaultdict(list)
        self.notes = []

    def record(self, area: str, outcome: str, detail: str = "") -> None:
        self.counts[area]["tried"] += 1
        self.counts[area][outcome] += 1
        if outcome in ("silent wrong", "crash") and len(self.bad[area]) < 5:
            self.bad[area].append(detail)

    def probe(self, area: str, call, *, names, same=None, unchanged=None) -> None:
        """Run ``call``. An error is clear when it is a CLEAR type whose message contains one of ``names``; a
        result is accepted when ``same(result)`` holds (no ``same``: the input was bad, so any result is
        wrong). ``unchanged()`` must hold after an error (the object or file is as it was)."""
        try:
            result = call()
        except CLEAR as exc:
            message = f"{type(exc).__name__}: {exc}"
            if unchanged is not None and not unchanged():
                self.record(area, "silent wrong", f"changed by a refused call: {message[:300]}")
            else:
                named = any(name in str(exc) for name in names)
                self.record(area, "clear error" if named else "crash", f"names none of {names}: {message[:300]}")
            return
        except Exception as exc:  # noqa: BLE001 - counting exactly these is the point
            self.record(area, "crash", "".join(traceback.format_exception_only(exc)).strip()[:300])
            return
        try:
            ok = same is not None and bool(same(result))
        except Exception as exc:  # noqa: BLE001
            ok = False
            result = f"{result!r:.100} (comparison failed: {exc})"
        self.record(area, "accepted" if ok else "silent wrong", f"returned {result!r:.300}")

    def table(self) -> str:
        width = max(len(a) for a in self.counts) + 2
        lines = [f"{'area':{width}s}{'tried':>7s}" + "".join(f"{o:>14s}" for o in OUTCOMES)]
        for area, c in self.counts.items():
            lines.append(f"{area:{width}s}{c['tried']:7d}" + "".join(f"{c[o]:14d}" for o in OUTCOMES))
        total = sum(self.counts.values(), Counter())
        lines.append(f"{'total':{width}s}{total['tried']:7d}" + "".join(f"{total[o]:14d}" for o in OUTCOMES))
        lines += [""] + self.notes
        for area, cases in self.bad.items():
            lines += [f"\n{area}:"] + [f"  - {case}" for case in cases]
        return "\n".join(lines)

    def failures(self) -> int:
        return sum(c["silent wrong"] + c["crash"] for c in self.counts.values())


def coco_setup():
    text, image = load_coco500()
    cal = GapCalibrator().fit(text, image)
    return cal, text, image


def build_index(cal, text, image, spec):
    from gapcal.stores.faiss import MixedIndex

    index = MixedIndex(cal, spec)
    if not index.is_trained("text"):
        index.train(text, modality="text")
        index.train(image, modality="image")
    index.add(text[:N], modality="text", ids=np.arange(N))
    index.add(image[:N], modality="image", ids=np.arange(10_000, 10_000 + N))
    index.remove([3, 10_007])
    return index


def same_search(a, b, queries):
    for modality, q in queries.items():
        x, y = a.search(q, 10, query_modality=modality), b.search(q, 10, query_modality=modality)
        if not (np.array_equal(x.ids, y.ids) and np.allclose(x.scores, y.scores, atol=1e-5)):
            return False
    return True


def mutations(data: bytes, flips: int, rng):
    """(label, bytes): single-bit flips at random offsets, truncations, appended junk, an empty file."""
    for _ in range(flips):
        spot = int(rng.integers(len(data)))
        yield f"bit flip at {spot}", data[:spot] + bytes([data[spot] ^ (1 << int(rng.integers(8)))]) + data[spot + 1:]
    for cut in sorted({0, 1, len(data) // 3, len(data) // 2, len(data) - 1}):
        yield f"truncated to {cut}", data[:cut]
    yield "junk appended", data + b"\0junk"


# ------------------------------------------------------------------------------------------------ files
def calibrator_files(tally, cal, text, image, flips, rng, tmp: Path):
    area = "calibrator file"
    good = tmp / "cal.npz"
    cal.save(good)
    data = good.read_bytes()
    probe = text[400:403], image[400:420]
    want = cal.similarity(*probe, query_modality="text", item_modality="image")

    def same(loaded):
        return loaded.fingerprint_ == cal.fingerprint_ and np.allclose(
            loaded.similarity(*probe, query_modality="text", item_modality="image"), want, atol=1e-6)

    hostile = dict(mutations(data, flips, rng))
    np.savez(tmp / "pickled.npz", header=np.array([{"a": 1}], dtype=object))
    np.savez(tmp / "foreign.npz", a=np.ones(3))
    with open(tmp / "extra.npz", "wb") as fh:  # a real calibrator plus a 64 MB member nobody asked for
        arrays = dict(np.load(good))
        np.savez(fh, **arrays, junk=np.zeros(1 << 23))
    for name in ("pickled.npz", "foreign.npz", "extra.npz"):
        hostile[name] = (tmp / name).read_bytes()
    target = tmp / "hostile.npz"
    for label, content in hostile.items():
        target.write_bytes(content)
        tally.probe(area, lambda: GapCalibrator.load(target), names=["hostile.npz"], same=same)


def index_folders(tally, cal, text, image, flips, rng, tmp: Path):
    from gapcal._format import sealed
    from gapcal.stores.faiss import MixedIndex

    queries = {"text": text[450:455], "image": image[450:455]}
    for spec in ("Flat", "HNSW16", "IVF8,Flat"):
        area = f"index folder {spec}"
        original = build_index(cal, text, image, spec)
        folder = tmp / f"ix-{spec.replace(',', '_')}"
        original.save(folder)
        header = json.loads((folder / "mixed.json").read_text())
        names = ["mixed.json"] + sorted(e["file"] for e in [header["calibrator"], header["ids"], header["payload"],
                                                             *header["indexes"].values()])
        for name in names:
            path = folder / name
            data = path.read_bytes()
            for label, content in mutations(data, flips, rng):
                path.write_bytes(content)
                tally.probe(area, lambda: MixedIndex.load(folder), names=[str(folder)],
                            same=lambda ix: same_search(ix, original, queries))
            path.write_bytes(data)
        # every value in the sidecar, changed without resealing: the seal refuses each
        leaves = list(_leaves(header))
        for keys, value in leaves[: max(10, flips)]:
            changed = json.loads(json.dumps(header))
            _set(changed, keys, _other(value))
            (folder / "mixed.json").write_text(json.dumps(changed))
            tally.probe(area, lambda: MixedIndex.load(folder), names=["mixed.json"])
        # a foreign faiss file, with the sidecar's checksums rewritten to match: the recorded structure refuses it
        other = build_index(cal, text, image, "Flat" if spec != "Flat" else "HNSW16")
        other.save(tmp / "other")
        foreign = json.loads((tmp / "other" / "mixed.json").read_text())["indexes"]["text"]["file"]
        shutil.copyfile(tmp / "other" / foreign, folder / header["indexes"]["text"]["file"])
        from gapcal._format import sha256_of

        changed = json.loads(json.dumps(header))
        changed["indexes"]["text"]["sha256"] = sha256_of(folder / header["indexes"]["text"]["file"])
        (folder / "mixed.json").write_text(json.dumps(sealed(changed)))
        tally.probe(area, lambda: MixedIndex.load(folder), names=["does not match its sidecar"])
        shutil.rmtree(tmp / "other")


def _leaves(node, keys=()):
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "sha256" or keys:
                yield from _leaves(value, keys + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, keys + (i,))
    else:
        yield keys, node


def _set(node, keys, value):
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return 0


# ------------------------------------------------------------------------------------------------ inputs
BAD_ARRAYS = {
    "NaN row": lambda x: np.where(np.arange(len(x))[:, None] == 1, np.nan, x),
    "inf row": lambda x: np.where(np.arange(len(x))[:, None] == 0, np.inf, x),
    "zero row": lambda x: np.where(np.arange(len(x))[:, None] == 2, 0.0, x),
    "wrong dimension": lambda x: x[:, :-1],
    "1-D": lambda x: x[0],
    "3-D": lambda x: x[None],
    "strings": lambda x: x.astype(str),
    "booleans": lambda x: x > 0,
    "complex": lambda x: x.astype(np.complex64),
    "objects": lambda x: x.astype(object),
    "ragged list": lambda x: [list(x[0]), list(x[1][:-1])],
    "None": lambda x: None,
    "a dict": lambda x: {"rows": x},
}
GOOD_ARRAYS = {
    "float16": lambda x: x.astype(np.float16),
    "float64": lambda x: x.astype(np.float64),
    "int8 scaled": lambda x: np.clip(np.round(x * 400), -127, 127).astype(np.int8),
    "Fortran order": np.asfortranarray,
    "strided": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "reversed rows": lambda x: x[::-1],
    "read-only": lambda x: _readonly(x),
    "list of lists": lambda x: x.tolist(),
    "huge scale": lambda x: x.astype(np.float64) * 1e300,
    "tiny scale": lambda x: x.astype(np.float64) * 1e-300,
}
BAD_MODALITIES = ["Text", "image ", "", "audio", None, 1, b"text", np.array(["text"]), ["text"]]
BAD_COUNTS = [0, -1, 1.5, True, "3", None, np.float64(2.0)]


def _readonly(x):
    y = x.copy()
    y.setflags(write=False)
    return y


def entry_points(tally, cal, text, image, rounds, rng, tmp: Path):
    from gapcal.stores.faiss import MixedIndex

    index = build_index(cal, text, image, "Flat")
    before = {m: index.ids(m).copy() for m in ("text", "image")}

    def unchanged():
        return all(np.array_equal(index.ids(m), before[m]) for m in before)

    def cases():
        for round_ in range(rounds):
            rows = text[int(rng.integers(0, 400)):][:4]
            for label, make in BAD_ARRAYS.items():
                yield "bad array", label, make(rows), "text", 5
            for label, make in GOOD_ARRAYS.items():
                yield "good array", label, make(rows), "text", 5
            for modality in BAD_MODALITIES:
                yield "bad modality", repr(modality), rows, modality, 5
            for k in BAD_COUNTS:
                yield "bad k", repr(k), rows, "image", k

    stored = np.isin(np.arange(10_000, 10_000 + N), index.ids("image"))
    for kind, label, rows, modality, k in cases():
        good = kind == "good array"
        reference = (lambda r=rows: cal.similarity(np.asarray(r, dtype=np.float64), image[:N],
                                                   query_modality="text", item_modality="image")) if good else None

        def same_similarity(result, reference=reference):
            return np.allclose(result, reference(), atol=1e-4)

        names = {"bad array": ["queries", "x"], "good array": [], "bad modality": ["modality"], "bad k": ["k"]}[kind]
        if kind != "bad k":
            tally.probe("calibrator input", lambda: cal.similarity(rows, image[:N], query_modality=modality,
                                                                  item_modality="image"),
                        names=names, same=same_similarity if good else None)
        tally.probe("index search input", lambda: index.search(rows, k, query_modality=modality,
                                                               item_modality="image"),
                    names=names, unchanged=unchanged,
                    same=(lambda res, ref=reference: _top_equal(res, ref()[:, stored])) if good else None)
        if kind in ("bad array", "bad modality"):
            tally.probe("index add input", lambda: index.add(rows, modality=modality), names=["vectors", "modality"],
                        unchanged=unchanged)
    # bad ids and paths
    for ids in ([1, 1], [-5, 6], [2**63, 1], ["a", "b"], [[1], [2]], [0.5, 1.5], [0, 1]):
        tally.probe("index add input", lambda: index.add(text[:2], modality="text", ids=ids), names=["ids"],
                    unchanged=unchanged)
    for path in (None, 3, b"bytes", "nul\0byte", tmp / "missing" / "deeper", ""):
        tally.probe("paths", lambda: MixedIndex.load(path), names=["path"])
        tally.probe("paths", lambda: GapCalibrator.load(path), names=["path"])
        tally.probe("paths", lambda: cal.save(path if path != "" else tmp), names=["path"])


def _top_equal(result, scores):
    order = np.argsort(-scores, axis=1, kind="stable")[:, : result.ids.shape[1]]
    return np.allclose(result.scores, np.take_along_axis(scores, order, 1), atol=1e-4)


def cli(tally, cal, text, image, tmp: Path):
    """In-process ``gapcal`` runs (main() exactly as the console script calls it)."""
    from gapcal.cli import main

    np.save(tmp / "t100.npy", text[:100])
    np.save(tmp / "i500.npy", image)
    np.save(tmp / "t500.npy", text)
    (tmp / "corrupt.npz").write_bytes(b"PK\x03\x04" + b"\0" * 64)
    cal.save(tmp / "cal.npz")
    build_index(cal, text, image, "HNSW16").save(tmp / "ix")
    (tmp / "file.txt").write_text("x")
    readonly = tmp / "readonly"
    readonly.mkdir(exist_ok=True)
    readonly.chmod(0o500)
    t = str(tmp)
    cases = [
        (["eval", "--text", f"{t}/t100.npy", "--image", f"{t}/i500.npy"], "--text and --image"),
        (["eval", "--text", f"{t}/i500.npy", "--image", f"{t}/t100.npy"], "--text and --image"),
        (["eval", "--text", f"{t}/corrupt.npz", "--image", f"{t}/i500.npy"], "--text"),
        (["fit", "--text", f"{t}/t500.npy", "--image", f"{t}/i500.npy", "-o", f"{t}/readonly/cal.npz"], "readonly"),
        (["fit", "--text", f"{t}/t500.npy", "--image", f"{t}/i500.npy", "-o", f"{t}/nowhere/cal.npz"], "nowhere"),
        (["report", "--text", f"{t}/t500.npy", "--image", f"{t}/i500.npy", "-o", f"{t}/file.txt"], "file.txt"),
        (["index", "search", f"{t}/ix", "--queries", f"{t}/t100.npy", "--query-modality", "text", "--ef-search", "0"],
         "--ef-search"),
        (["index", "search", f"{t}/ix", "--queries", f"{t}/t100.npy", "--query-modality", "text", "--nprobe", "-1"],
         "--nprobe"),
        (["index", "search", f"{t}/ix", "--queries", f"{t}/t100.npy", "--query-modality", "text", "-k", "0"], "-k"),
        (["index", "search", f"{t}/ix", "--queries", f"{t}/t100.npy", "--query-modality", "text", "--ef-search",
          str(2**31)], "efSearch"),
        (["index", "search", f"{t}/ix", "--queries", f"{t}/t100.npy", "--query-modality", "text", "--nprobe", "4"],
         "nprobe"),
        (["index", "search", f"{t}/missing", "--queries", f"{t}/t100.npy", "--query-modality", "text"], "missing"),
        (["index", "add", f"{t}/ix", "--vectors", f"{t}/corrupt.npz", "--modality", "text"], "--vectors"),
        (["embed", "--model", f"{t}/nomodel", "--texts", f"{t}/file.txt", "-o", f"{t}/v.npy"], "nomodel"),
        (["embed", "--model", str(ROOT / "models" / "tiny-clip"), "--texts", f"{t}/file.txt", "-o", f"{t}/readonly/v.npy"],
         "readonly"),
        (["index", "build", "--calibrator", f"{t}/corrupt.npz", "--text", f"{t}/t100.npy", "-o", f"{t}/ix2"],
         "corrupt.npz"),
        (["demo", "--seed", "-1"], "--seed"),
        (["fit", "--text", f"{t}/t500.npy"], "--image"),
    ]
    if os.geteuid() == 0:  # root writes into read-only folders: those two cases test nothing
        cases = [c for c in cases if "readonly" not in c[1]]
    for argv, name in cases:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as exc:  # noqa: BLE001
            tally.record("cli", "crash", f"{argv[:2]}: {type(exc).__name__}: {exc}"[:300])
            continue
        message = err.getvalue().strip()
        last = message.splitlines()[-1] if message else ""
        if code == 0:
            tally.record("cli", "silent wrong", f"{argv}: exit 0")
        elif "Traceback" in message or name not in last:
            tally.record("cli", "crash", f"{argv[:3]}: exit {code}: {message[-300:]}")
        else:
            tally.record("cli", "clear error")
    readonly.chmod(0o700)


# ------------------------------------------------------------------------------------------------ kill -9
_SAVER = """
import sys, numpy as np
from gapcal import GapCalibrator
from gapcal.data import load_coco500
sys.path.insert(0, {bench!r})
from reliability import build_index
text, image = load_coco500()
cal = GapCalibrator.load({cal!r})
small, large = build_index(cal, text, image, "Flat"), build_index(cal, text, image, "Flat")
large.add(text[300:310], modality="text", ids=np.arange(500, 510))
cals = [GapCalibrator.load({cal!r}), GapCalibrator(mean_shift=False, projection="none").fit(text[:100], image[:100])]
print("ready", flush=True)
i = 0
while True:
    (small if i % 2 else large).save({folder!r})
    cals[i % 2].save({calfile!r})
    i += 1
"""


def kill_during_save(tally, cal, text, image, kills, rng, tmp: Path):
    from gapcal.stores.faiss import MixedIndex

    cal.save(tmp / "base.npz")
    folder, calfile = tmp / "killed", tmp / "killed.npz"
    other = GapCalibrator(mean_shift=False, projection="none").fit(text[:100], image[:100])
    fingerprints = {cal.fingerprint_, other.fingerprint_}
    code = _SAVER.format(bench=str(Path(__file__).parent), cal=str(tmp / "base.npz"), folder=str(folder),
                         calfile=str(calfile))
    build_index(cal, text, image, "Flat").save(folder)  # the version a save killed first must leave
    cal.save(calfile)
    interrupted = 0
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        if child.stdout.readline().strip() != "ready":
            tally.record("kill -9 during save", "crash", child.stderr.read()[-300:])
            continue
        time.sleep(float(rng.uniform(0.05, 0.6)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        for stream in (child.stdout, child.stderr):
            stream.close()
        interrupted += len(list(folder.iterdir())) > 6 or any(p.name.endswith(".gapcal-tmp") for p in tmp.iterdir())
        try:
            index = MixedIndex.load(folder)  # also removes what the killed save left
            loaded = GapCalibrator.load(calfile) if calfile.exists() else None
        except Exception as exc:  # noqa: BLE001
            tally.record("kill -9 during save", "crash", f"{type(exc).__name__}: {exc}"[:300])
            continue
        leftovers = sorted(p.name for p in folder.iterdir())
        cal.save(calfile)  # the next save of the calibrator clears its stale temporary file
        stray = [p.name for p in tmp.iterdir() if p.name.endswith(".gapcal-tmp")]
        ok = (len(index) in (2 * N - 2, 2 * N + 8) and len(leftovers) == 6 and not stray
              and (loaded is None or loaded.fingerprint_ in fingerprints))
        tally.record("kill -9 during save", "accepted" if ok else "silent wrong",
                     f"{len(index)} items, files {leftovers}, stray temps {stray}")
    tally.notes.append(f"kill -9: {interrupted} of {kills} kills landed inside a save (they left partial files, "
                       "which the next load or save removed)")


# ------------------------------------------------------------------------------------------------ threads
def concurrency(tally, cal, text, image, rounds, rng):
    from gapcal.stores.faiss import MixedIndex

    area = "concurrency"
    queries = text[450:470]
    for _ in range(rounds):
        # 1. similarity while partial_fit runs: the old or the new fit, never a mix
        chunks = [slice(s, s + 80) for s in range(0, 400, 80)]
        probe = text[400:404], image[400:430]
        expected = [GapCalibrator().fit(text[:c.stop], image[:c.stop]).similarity(
            *probe, query_modality="text", item_modality="image") for c in chunks]
        shared = GapCalibrator().partial_fit(text[chunks[0]], image[chunks[0]])
        seen, done = [], threading.Event()

        def read():
            while not done.is_set():
                seen.append(shared.similarity(*probe, query_modality="text", item_modality="image"))

        def write():
            for c in chunks[1:]:
                shared.partial_fit(text[c], image[c])
                time.sleep(0.03)  # let the readers see each state
            done.set()

        _threads(tally, area, "similarity during partial_fit", [read, read, write],
                 lambda: seen and all(any(np.allclose(s, e, atol=1e-5) for e in expected) for s in seen))

        # 2. eight threads searching equal one thread searching
        index = build_index(cal, text, image, "HNSW16")
        serial = [index.search(queries[i:i + 1], 10, query_modality="text") for i in range(len(queries))]
        with ThreadPoolExecutor(8) as pool:
            parallel = list(pool.map(lambda i: index.search(queries[i:i + 1], 10, query_modality="text"),
                                     range(len(queries))))
        ok = all(np.array_equal(a.ids, b.ids) and np.allclose(a.scores, b.scores) for a, b in zip(serial, parallel))
        tally.record(area, "accepted" if ok else "silent wrong", "8-thread searches differ from serial ones")

        # 3. add and remove while searching: every result holds only items stored at the time, with true scores
        flat = build_index(cal, text, image, "Flat")
        results, stop = [], threading.Event()

        def search():
            while not stop.is_set():
                results.append(flat.search(queries[:3], 5, query_modality="text", item_modality="image"))

        def churn():
            for start in range(0, 40, 4):
                ids = flat.add(image[N + start:N + start + 4], modality="image", ids=np.arange(20_000 + start,
                                                                                             20_004 + start))
                flat.remove(ids[:2])
            stop.set()

        truth = cal.similarity(queries[:3], image[:N + 40], query_modality="text", item_modality="image")
        column = {**{10_000 + i: i for i in range(N)}, **{20_000 + i: N + i for i in range(40)}}

        def consistent():
            return results and all(np.allclose(r.scores, truth[np.arange(3)[:, None],
                                                                np.vectorize(column.get)(r.ids)], atol=1e-4)
                                   for r in results)

        _threads(tally, area, "search during add/remove", [search, search, churn], consistent)

        # 4. two threads saving one folder: it loads as one of them afterwards
        with tempfile.TemporaryDirectory() as tmp:
            a, b = build_index(cal, text, image, "Flat"), build_index(cal, text, image, "Flat")
            b.add(text[300:302], modality="text", ids=[900, 901])
            _threads(tally, area, "two saves of one folder",
                     [lambda: [a.save(Path(tmp) / "ix") for _ in range(3)],
                      lambda: [b.save(Path(tmp) / "ix") for _ in range(3)]],
                     lambda: len(MixedIndex.load(Path(tmp) / "ix")) in (len(a), len(b)))


def _threads(tally, area, label, functions, check):
    with ThreadPoolExecutor(len(functions)) as pool:
        futures = [pool.submit(f) for f in functions]
        try:
            for future in futures:
                future.result()
        except Exception as exc:  # noqa: BLE001
            tally.record(area, "crash", f"{label}: {type(exc).__name__}: {exc}"[:300])
            return
    tally.record(area, "accepted" if check() else "silent wrong", label)


# ------------------------------------------------------------------------------------------------ Milvus
INJECTIONS = ['year >= 0) or (modality == "text"', 'n >= 0 or modality == "text"', '1 == 1) or (1 == 1',
              'n >= 0 || true', 'n in [1, 2]) or (n >= 0', '"text" == "text"', 'n >= 0 /*', "n >= 0 --",
              'modality == "text"', "n >= 0) and (n < 5"]


def milvus(tally, cal, text, image, tmp: Path):
    try:
        from gapcal.stores.milvus import MilvusStore
    except ImportError:
        return
    area = "milvus filters and params"
    with MilvusStore(cal, str(tmp / "m.db"), "probe", show_progress=False) as store:
        store.add(text[:N], modality="text", ids=np.arange(N), payload={"n": np.arange(N)})
        store.add(image[:N], modality="image", ids=np.arange(10_000, 10_000 + N), payload={"n": np.arange(N)})
        for expression in INJECTIONS:
            def same(result):  # only images, each with its true image score
                found = result.ids[result.ids >= 0]
                truth = cal.similarity(text[:2], image[:N], query_modality="text", item_modality="image")
                rows, cols = np.nonzero(result.ids >= 0)
                return (found >= 10_000).all() and np.allclose(result.scores[rows, cols],
                                                               truth[rows, result.ids[rows, cols] - 10_000],
                                                               atol=1e-4)
            tally.probe(area, lambda: store.search(text[:2], 30, query_modality="text", item_modality="image",
                                                   filter=expression), names=["filter"], same=same)
        for params in ({"nprobe": 4, "bogus": 1}, {"ef": 0}, {"ef": -3}, {"ef": "many"}, {"radius": 0.5}, []):
            tally.probe(area, lambda: store.search(text[:2], 5, query_modality="text", params=params),
                        names=["params"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few probes of each kind (what CI runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    flips, rounds, kills = (6, 1, 2) if args.quick else (60, 3, 20)
    tally = Tally()
    start = time.perf_counter()
    cal, text, image = coco_setup()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        calibrator_files(tally, cal, text, image, flips, rng, tmp)
        index_folders(tally, cal, text, image, flips, rng, tmp)
        entry_points(tally, cal, text, image, rounds, rng, tmp)
        cli(tally, cal, text, image, tmp)
        kill_during_save(tally, cal, text, image, kills, rng, tmp)
        concurrency(tally, cal, text, image, rounds, rng)
        milvus(tally, cal, text, image, tmp)
    print(f"gapcal reliability sweep ({'quick' if args.quick else 'long'}, seed {args.seed}, "
          f"{time.perf_counter() - start:.0f} s)\n")
    print(tally.table())
    return 1 if tally.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
