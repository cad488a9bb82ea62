"""Torch-free CLIP encoders: ONNX Runtime sessions over a jina-clip-v1-layout model folder.

Needs the ``onnx`` extra (onnxruntime-gpu, tokenizers, pillow, tqdm, huggingface_hub)::

    from gapcal.encoders import OnnxClipEncoder
    enc = OnnxClipEncoder.from_pretrained("jinaai/jina-clip-v1")
    texts = enc.encode_text(["a red cat"])          # (1, 768) float32, L2-normalised
    images = enc.encode_image(["cat.jpg"])          # (1, 768) float32, L2-normalised
"""

from .encoder import OnnxClipEncoder
from .images import ImageDecodeError

__all__ = ["OnnxClipEncoder", "ImageDecodeError"]
