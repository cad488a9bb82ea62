"""Encoding speed: OnnxClipEncoder (ONNX Runtime) against PyTorch eager on a real-size CLIP, same run.

Builds a random-weight CLIP of CLIP ViT-B/16's size (vision 768 x 12 layers, patch 16, 224 px; text
512 x 12 layers) with models/build_tiny_clip.py and exports it with the project's exporter (``gapcal export``,
fp32, and fp16 for the GPU part) into a temporary folder (never committed), then measures:

* CPU (``--threads`` cores, default 2), fp32: images/s, and texts/s at 16 and 77 tokens, for
  OnnxClipEncoder (ORT_ENABLE_ALL, intra-op threads = cores) and PyTorch eager (same threads).
  Goal: ORT >= 1.3x PyTorch.
* GPU, when ONNX Runtime really gets the CUDA provider: the fp16 graphs through the encoder's session
  (IO binding) against PyTorch eager fp16 on the same GPU, with achieved TFLOP/s, both on ready inputs
  (ORT also copies inputs in and outputs out). Goal: ORT >= 2x PyTorch. Skipped, saying why, on
  machines where no CUDA session can be created. Then the graph time alone (inputs already on the device)
  for the fp16 graphs as exported (layers fused for ONNX Runtime) and converted without fusion; with
  ``--profile`` the CUDA kernels each run spends its time in.

The CPU ORT figures are end to end (tokenisation, image preprocessing, sorting, output copies); the
PyTorch figures are the model's forward pass alone on ready tensors. ORT and PyTorch runs alternate (so load
from other processes hits both alike); rates are medians of ``--repeats`` timed runs after one warm-up,
the ratio the median of the per-pair ratios. Needs the ``export`` extra (torch, transformers, onnx). Run::

    python bench/encode_speed.py              # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gapcal.encoders import OnnxClipEncoder
from gapcal.encoders.images import ImagePreprocessor, load_image
from gapcal.encoders.session import OrtSession
from gapcal.encoders.spec import TextGraphSpec, VisionGraphSpec

ROOT = Path(__file__).resolve().parents[1]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_tiny_clip", ROOT / "models" / "build_tiny_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_vit_b16(out: Path, fp16: bool):
    """Export a random CLIP of ViT-B/16's size with ``gapcal export`` to ``out/fp32`` (and ``out/fp16``);
    return the PyTorch model and the tokenizer."""
    builder = _load_builder()
    tokenizer = builder.build_tokenizer(model_max_length=77)
    model = builder.build_model(
        seed=0, vocab_size=49408, eos_token_id=tokenizer.token_to_id("[SEP]"),
        text_hidden=512, text_layers=12, text_heads=8, text_positions=77,
        vision_hidden=768, vision_layers=12, vision_heads=12, image_size=224, patch_size=16,
        projection_dim=512, mlp_ratio=4,
    )
    builder.export_with_gapcal(model, tokenizer, out / "fp32")
    if fp16:
        builder.export_with_gapcal(model, tokenizer, out / "fp16", precision="fp16")
    return model, tokenizer


def gflop_per_item(layers: int, tokens: int, width: int, ffn: int, patch_macs: int = 0) -> float:
    """Forward-pass GFLOP (2 x multiply-adds) of a transformer tower on one input."""
    per_layer = tokens * (4 * width * width + 2 * width * ffn) + 2 * tokens * tokens * width
    return 2 * (layers * per_layer + patch_macs) / 1e9


def paired_rates(run_ort, run_torch, items: int, repeats: int) -> tuple[float, float, float]:
    """Items/s of ORT and PyTorch, and the median per-pair speed ratio.

    The two are timed alternately, ``repeats`` pairs after one warm-up call each, so that background
    load on a shared machine hits both alike. ``run_torch`` None (no CUDA torch) gives NaN for it.
    """
    run_ort()
    if run_torch is not None:
        run_torch()
    ort_times, torch_times = [], []
    for _ in range(repeats):
        ort_times.append(_timed(run_ort))
        torch_times.append(_timed(run_torch) if run_torch is not None else float("nan"))
    ratio = statistics.median(t / o for o, t in zip(ort_times, torch_times, strict=True))
    return items / statistics.median(ort_times), items / statistics.median(torch_times), ratio


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def gemm_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GEMM rate of PyTorch here: the ceiling both runtimes share on CPU."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    return 2 * size**3 / min(_timed(partial(torch.mm, a, b)) for _ in range(repeats)) / 1e9


def torch_images(model, pixels, sync: bool = False) -> None:
    model.visual_projection(model.vision_model(pixels).pooler_output)
    if sync:
        torch.cuda.synchronize()


def torch_texts(model, ids, sync: bool = False) -> None:
    model.text_projection(model.text_model(ids, attention_mask=torch.ones_like(ids)).pooler_output)
    if sync:
        torch.cuda.synchronize()


def texts_of(tokenizer, tokens: int, count: int) -> list[str]:
    """``count`` distinct texts that tokenise to exactly ``tokens`` tokens ([CLS] and [SEP] included)."""
    words = ["cat", "dog", "red", "bus", "man", "tree", "sky", "car", "two", "bed"]  # one token each
    rng = np.random.default_rng(tokens)
    texts = [" ".join(rng.choice(words, tokens - 2)) for _ in range(count)]
    assert all(len(tokenizer.encode(t).ids) == tokens for t in texts)
    return texts


def cuda_status(model_dir: Path) -> tuple[bool, str]:
    """Whether ONNX Runtime really creates a CUDA session here, and if not, its reason."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = OrtSession(model_dir / "onnx" / "text_model.onnx", "cuda")
    if session.providers[0] == "CUDAExecutionProvider":
        return True, ""
    return False, str(caught[0].message) if caught else f"session providers: {session.providers}"


def bench(args) -> None:
    threads = args.threads
    torch.set_num_threads(threads)
    cuda_ok, why_not = cuda_status(ROOT / "models" / "tiny-clip")
    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(args.images)]
    flops = {
        "images": gflop_per_item(12, 197, 768, 3072, patch_macs=196 * 768 * 3 * 16 * 16),
        16: gflop_per_item(12, 16, 512, 2048),
        77: gflop_per_item(12, 77, 512, 2048),
    }

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model, tokenizer = build_vit_b16(Path(tmp), fp16=cuda_ok)
        print(f"built and exported a random CLIP ViT-B/16-size model in {time.perf_counter() - start:.0f} s")
        texts = {n: texts_of(tokenizer, n, args.texts) for n in (16, 77)}

        encoder = OnnxClipEncoder(Path(tmp) / "fp32", providers="cpu", threads=threads)
        preprocess = ImagePreprocessor.from_config(json.loads(encoder.files.preprocessor_config.read_text()))
        pixels = torch.from_numpy(np.stack([preprocess(load_image(a)) for a in images]))
        rows = []
        with torch.inference_mode():
            rows.append(("images", *paired_rates(
                partial(encoder.encode_image, images, batch_size=len(images)),
                partial(torch_images, model, pixels), len(images), args.repeats), flops["images"]))
            for n in (16, 77):
                ids = torch.tensor([tokenizer.encode(t).ids for t in texts[n]])
                rows.append((f"texts, {n} tokens", *paired_rates(
                    partial(encoder.encode_text, texts[n], batch_size=len(texts[n])),
                    partial(torch_texts, model, ids), len(texts[n]), args.repeats), flops[n]))

        print(f"\nCPU, {threads} threads, fp32 (ORT providers: {encoder.providers}; "
              f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        _table(rows, "GFLOP/s", 1.0)
        peak = gemm_peak_gflops()
        best = max(rate * gflop for _, rate, _, _, gflop in rows)
        print(f"fp32 GEMM peak here (torch.mm 2048 x 2048, {threads} threads): {peak:.0f} GFLOP/s; "
              f"ORT's best workload reaches {100 * best / peak:.0f}% of it")
        if not cuda_ok:
            print(f"\nGPU part skipped: no CUDA provider was obtained. {why_not}")
            return

        # GPU: graph runs on ready inputs for both (inputs copied in and outputs copied out for ORT only)
        vision = OrtSession(Path(tmp) / "fp16" / "onnx" / "vision_model_fp16.onnx", "cuda")
        text = OrtSession(Path(tmp) / "fp16" / "onnx" / "text_model_fp16.onnx", "cuda")
        vision_spec = VisionGraphSpec.from_session(vision.session, vision.path)
        text_spec = TextGraphSpec.from_session(text.session, text.path)
        torch_cuda = torch.cuda.is_available()
        if torch_cuda:
            model = model.half().cuda()
        gpu_pixels = pixels.repeat(max(1, args.gpu_images // len(pixels)), 1, 1, 1)
        feeds = {vision_spec.pixel_values.name: gpu_pixels.numpy().astype(vision_spec.pixel_values.dtype)}
        rows = []
        with torch.inference_mode():
            torch_run = partial(torch_images, model, gpu_pixels.half().cuda(), sync=True) if torch_cuda else None
            rows.append(("images", *paired_rates(
                partial(vision.run, feeds, vision_spec.output.name), torch_run,
                len(gpu_pixels), args.repeats), flops["images"]))
            for n in (16, 77):
                ids = torch.tensor([tokenizer.encode(t).ids for t in texts[n]])
                ids = ids.repeat(max(1, args.gpu_texts // len(ids)), 1)
                text_feeds = {text_spec.input_ids.name: ids.numpy()}  # no padding: no mask needed
                if text_spec.attention_mask is not None:
                    text_feeds[text_spec.attention_mask.name] = np.ones_like(ids.numpy())
                torch_run = partial(torch_texts, model, ids.cuda(), sync=True) if torch_cuda else None
                rows.append((f"texts, {n} tokens", *paired_rates(
                    partial(text.run, text_feeds, text_spec.output.name), torch_run,
                    len(ids), args.repeats), flops[n]))
        print(f"\nGPU ({torch.cuda.get_device_name() if torch_cuda else 'CUDA'}), fp16 graphs with IO binding "
              f"(ORT providers: {vision.providers}) vs PyTorch eager fp16"
              + ("" if torch_cuda else " (skipped: this torch build has no CUDA)"))
        _table(rows, "TFLOP/s", 1e-3)
        if torch_cuda:
            gpu_breakdown(Path(tmp), model, feeds, text_feeds, ids.cuda(), gpu_pixels, flops, args)


def gpu_breakdown(tmp: Path, model, image_feeds, text_feeds, text_ids, pixels, flops, args) -> None:
    """Where the GPU time goes: ORT's graph time alone (inputs already on the device, output left there) for
    the fp16 graphs ``gapcal export`` writes (layers fused by ONNX Runtime's transformer optimizer) and for
    the same graphs converted without fusion, against PyTorch eager fp16; with ``--profile``, the CUDA kernels
    each spends its time in (CUPTI through torch.profiler, which records every kernel of the process, ORT's too)."""
    from gapcal.export.card import read_card
    from gapcal.export.graphs import to_fp16

    card = read_card(tmp / "fp16")
    print(f"fused by gapcal export (fp16): {card['fused_operators']}")
    variants = {"fused": {"images": tmp / "fp16" / "onnx" / "vision_model_fp16.onnx",
                          "texts": tmp / "fp16" / "onnx" / "text_model_fp16.onnx"},
                "unfused": {"images": tmp / "unfused_vision.onnx", "texts": tmp / "unfused_text.onnx"}}
    for kind, graph in (("images", "vision_model"), ("texts", "text_model")):
        copy = tmp / f"{graph}_copy.onnx"
        shutil.copyfile(tmp / "fp32" / "onnx" / f"{graph}.onnx", copy)
        to_fp16(copy, variants["unfused"][kind])
    workloads = {"images": (image_feeds, partial(torch_images, model, pixels.half().cuda(), sync=True),
                            len(pixels), flops["images"]),
                 "texts": (text_feeds, partial(torch_texts, model, text_ids, sync=True), len(text_ids), flops[77])}
    print("\nGPU graph time alone (inputs on the device, output left there), fp16; texts of 77 tokens")
    print(f"{'workload':<10}{'graph':<15}{'ORT /s':>10}{'PyTorch /s':>12}{'ORT/PyTorch':>13}{'ORT TFLOP/s':>13}")
    with torch.inference_mode():
        for kind, (feeds, torch_run, items, gflop) in workloads.items():
            for label, paths in variants.items():
                session = OrtSession(paths[kind], "cuda")
                run = resident_run(session, feeds)
                ort_rate, pt_rate, ratio = paired_rates(run, torch_run, items, args.repeats)
                print(f"{kind:<10}{label:<15}{ort_rate:>10.1f}{pt_rate:>12.1f}{ratio:>12.2f}x"
                      f"{ort_rate * gflop * 1e-3:>13.1f}")
                if args.profile:
                    kernel_table(run, f"ORT {label} {kind}")
            if args.profile:
                kernel_table(torch_run, f"PyTorch {kind}")


def resident_run(session: OrtSession, feeds: dict):
    """A call that runs the graph on copies of ``feeds`` already in GPU memory, output bound there."""
    import onnxruntime as ort

    binding = session.session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0))
    binding.bind_output(session.session.get_outputs()[0].name, "cuda", 0)
    return partial(session.session.run_with_iobinding, binding)


def kernel_table(run, label: str, runs: int = 3, top: int = 10) -> None:
    """The ``top`` CUDA kernels of ``run`` by device time (ms per run, share of the run's kernel time)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        torch.cuda.synchronize()
    events = [(e.key, getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0))
              for e in prof.key_averages()]
    events = sorted((e for e in events if e[1] > 0), key=lambda e: -e[1])
    total = sum(t for _, t in events)
    print(f"  {label}: {total / runs / 1e3:.2f} ms of kernels per run; top kernels:")
    for name, spent in events[:top]:
        print(f"    {spent / runs / 1e3:8.3f} ms {100 * spent / total:5.1f}%  {name[:90]}")


def _table(rows, unit: str, scale: float) -> None:
    print(f"{'workload':<18}{'ORT /s':>10}{'PyTorch /s':>12}{'ORT/PyTorch':>13}{'ORT ' + unit:>15}{'PT ' + unit:>14}")
    for name, ort_rate, pt_rate, ratio, gflop in rows:
        print(f"{name:<18}{ort_rate:>10.1f}{pt_rate:>12.1f}{ratio:>12.2f}x"
              f"{ort_rate * gflop * scale:>15.1f}{pt_rate * gflop * scale:>14.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU cores for both runtimes (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed ORT/PyTorch pairs per workload (median)")
    parser.add_argument("--images", type=int, default=8, help="images per CPU run (one batch)")
    parser.add_argument("--texts", type=int, default=32, help="texts per CPU run (one batch)")
    parser.add_argument("--gpu-images", type=int, default=256, help="images per GPU run (one batch)")
    parser.add_argument("--gpu-texts", type=int, default=1024, help="texts per GPU run (one batch)")
    parser.add_argument("--profile", action="store_true", help="GPU: print the top CUDA kernels of each run")
    bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
