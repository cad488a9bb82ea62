"""Encoding speed: OnnxClipEncoder (ONNX Runtime) against PyTorch eager on a real-size CLIP, same run.

Builds a random-weight CLIP of CLIP ViT-B/16's size (vision 768 x 12 layers, patch 16, 224 px; text
512 x 12 layers) with models/build_tiny_clip.py into a temporary folder (never committed), then measures:

* CPU (``--threads`` cores, default 2), fp32: images/s, and texts/s at 16 and 77 tokens, for
  OnnxClipEncoder (ORT_ENABLE_ALL, intra-op threads = cores) and PyTorch eager (same threads).
  Goal: ORT >= 1.3x PyTorch.
* GPU, when ONNX Runtime really gets the CUDA provider: fp16 graphs with IO binding against PyTorch
  eager fp16 on the same GPU, with achieved TFLOP/s. Goal: ORT >= 2x PyTorch. Skipped, saying why,
  on machines where no CUDA session can be created.

The ORT figures are end to end (tokenisation, image preprocessing, sorting, output copies); the PyTorch
figures are the model's forward pass alone on ready tensors. Medians of ``--repeats`` timed runs after
one warm-up run. Needs the ``export`` extra (torch, transformers, onnx). Run::

    python bench/encode_speed.py              # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gapcal.encoders import OnnxClipEncoder
from gapcal.encoders.images import ImagePreprocessor, load_image
from gapcal.encoders.session import OrtSession

ROOT = Path(__file__).resolve().parents[1]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_tiny_clip", ROOT / "models" / "build_tiny_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_vit_b16(out: Path, fp16: bool):
    """Export a random CLIP of ViT-B/16's size to ``out``; return the PyTorch model and the tokenizer."""
    builder = _load_builder()
    tokenizer = builder.build_tokenizer(model_max_length=77)
    model = builder.build_model(
        seed=0, vocab_size=49408, eos_token_id=tokenizer.token_to_id("[SEP]"),
        text_hidden=512, text_layers=12, text_heads=8, text_positions=77,
        vision_hidden=768, vision_layers=12, vision_heads=12, image_size=224, patch_size=16,
        projection_dim=512, mlp_ratio=4,
    )
    builder.export_folder(model, tokenizer, out, preprocessor="jina", fp16=fp16, save_weights=False)
    return model, tokenizer


def gflop_per_item(layers: int, tokens: int, width: int, ffn: int, patch_macs: int = 0) -> float:
    """Forward-pass GFLOP (2 x multiply-adds) of a transformer tower on one input."""
    per_layer = tokens * (4 * width * width + 2 * width * ffn) + 2 * tokens * tokens * width
    return 2 * (layers * per_layer + patch_macs) / 1e9


def median_rate(run, items: int, repeats: int) -> float:
    """Items per second: median over ``repeats`` timed calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return items / statistics.median(times)


def texts_of(tokenizer, tokens: int, count: int) -> list[str]:
    """``count`` distinct texts that tokenise to exactly ``tokens`` tokens ([CLS] and [SEP] included)."""
    words = [w for w in ("cat", "dog", "red", "bus", "man", "tree", "sky", "car", "two", "bed") if tokenizer.token_to_id(w)]
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

        encoder = OnnxClipEncoder(tmp, providers="cpu", threads=threads)
        preprocess = ImagePreprocessor.from_config(json.loads(encoder.files.preprocessor_config.read_text()))
        pixels = torch.from_numpy(np.stack([preprocess(load_image(a)) for a in images]))
        rows = []
        with torch.inference_mode():
            ort_img = median_rate(lambda: encoder.encode_image(images, batch_size=args.batch_images), len(images), args.repeats)
            pt_img = median_rate(lambda: model.visual_projection(model.vision_model(pixels).pooler_output),
                                 len(images), args.repeats)
            rows.append(("images", ort_img, pt_img, flops["images"]))
            for n in (16, 77):
                ids = torch.tensor([tokenizer.encode(t).ids for t in texts[n]])
                mask = torch.ones_like(ids)
                ort_txt = median_rate(lambda: encoder.encode_text(texts[n], batch_size=args.batch_texts), len(texts[n]), args.repeats)
                pt_txt = median_rate(
                    lambda: model.text_projection(model.text_model(ids, attention_mask=mask).pooler_output),
                    len(texts[n]), args.repeats)
                rows.append((f"texts, {n} tokens", ort_txt, pt_txt, flops[n]))

        print(f"\nCPU, {threads} threads, fp32 (ORT providers: {encoder.providers}; "
              f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads)")
        _table(rows, "GFLOP/s", 1.0)
        if not cuda_ok:
            print(f"\nGPU part skipped: no CUDA provider was obtained. {why_not}")
            return

        gpu = OnnxClipEncoder(tmp, providers="cuda", precision="fp16")
        rows = []
        have_torch_cuda = torch.cuda.is_available()
        if have_torch_cuda:
            model = model.half().cuda()
            pixels = pixels.half().cuda()
        big_images = images * max(1, 256 // len(images))
        big_texts = {n: texts[n] * max(1, 1024 // len(texts[n])) for n in (16, 77)}
        with torch.inference_mode():
            ort_img = median_rate(lambda: gpu.encode_image(big_images, batch_size=128), len(big_images), args.repeats)
            pt_img = float("nan")
            if have_torch_cuda:
                batch = pixels.repeat(max(1, 128 // len(pixels)), 1, 1, 1)

                def torch_images():
                    model.visual_projection(model.vision_model(batch).pooler_output)
                    torch.cuda.synchronize()

                pt_img = median_rate(torch_images, len(batch), args.repeats)
            rows.append(("images", ort_img, pt_img, flops["images"]))
            for n in (16, 77):
                ort_txt = median_rate(lambda: gpu.encode_text(big_texts[n], batch_size=256), len(big_texts[n]),
                                      args.repeats)
                pt_txt = float("nan")
                if have_torch_cuda:
                    ids = torch.tensor([tokenizer.encode(t).ids for t in big_texts[n][:256]]).cuda()
                    mask = torch.ones_like(ids)

                    def torch_texts():
                        model.text_projection(model.text_model(ids, attention_mask=mask).pooler_output)
                        torch.cuda.synchronize()

                    pt_txt = median_rate(torch_texts, len(ids), args.repeats)
                rows.append((f"texts, {n} tokens", ort_txt, pt_txt, flops[n]))
        print(f"\nGPU ({torch.cuda.get_device_name() if have_torch_cuda else 'CUDA'}), fp16, IO binding "
              f"(ORT providers: {gpu.providers}); PyTorch eager fp16"
              + ("" if have_torch_cuda else ": skipped, this torch build has no CUDA"))
        _table(rows, "TFLOP/s", 1e-3)


def _table(rows, unit: str, scale: float) -> None:
    print(f"{'workload':<18}{'ORT /s':>10}{'PyTorch /s':>12}{'ORT/PyTorch':>13}{'ORT ' + unit:>15}{'PT ' + unit:>14}")
    for name, ort_rate, pt_rate, gflop in rows:
        print(f"{name:<18}{ort_rate:>10.1f}{pt_rate:>12.1f}{ort_rate / pt_rate:>12.2f}x"
              f"{ort_rate * gflop * scale:>15.1f}{pt_rate * gflop * scale:>14.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU cores for both runtimes (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--images", type=int, default=16, help="images per CPU run")
    parser.add_argument("--texts", type=int, default=128, help="texts per CPU run")
    parser.add_argument("--batch-images", type=int, default=16)
    parser.add_argument("--batch-texts", type=int, default=64)
    bench(parser.parse_args(argv))


if __name__ == "__main__":
    main()
