"""One ONNX Runtime session: provider choice, session options, the honest providers check, IO binding.

onnxruntime-gpu lists CUDA (and TensorRT) in ``get_available_providers()`` even where the CUDA libraries
are missing, and then silently creates the session on CPU, printing only two native log lines. So the
providers a session really got are read back from ``session.get_providers()``, and the native lines
printed while a GPU provider is being set up are captured: they become the reason in our RuntimeWarning
(explicit GPU request) or a debug log record ("auto"), instead of unexplained noise on stderr. Anything
else the native code prints, and everything when no fallback happened, is written back to stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_errors

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_GPU = (TENSORRT, CUDA)
_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_PREFIX = re.compile(r"^\S+ \S+ \[[VIWEF]:onnxruntime:[^\]]*\] ")  # "date time [E:onnxruntime:...] "
_capture_lock = threading.Lock()
_dlls_preloaded = False


def resolve_providers(providers) -> tuple[list[tuple[str, dict]], bool]:
    """Turn the ``providers`` argument into ORT's (name, options) list, and say whether it was explicit.

    ``"auto"``: CUDA then CPU (TensorRT never: its engine builds take minutes and must be asked for).
    ``"cpu"``, ``"cuda"``, ``"tensorrt"``: that provider, then the ones below it, then CPU.
    A list of provider names (or aliases), or of (name, options dict) pairs, is used as given, CPU appended.
    """
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            return [(CUDA, {}), (CPU, {})], False
        if key not in _ALIASES:
            raise ValueError(
                f"providers must be 'auto', 'cpu', 'cuda', 'tensorrt' or a list of ONNX Runtime provider names; "
                f"got {providers!r}"
            )
        chain = {"cpu": [CPU], "cuda": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU]}[key]
        return [(name, {}) for name in chain], True
    if not isinstance(providers, (list, tuple)) or not providers:
        raise TypeError(
            f"providers must be a string or a non-empty list of provider names / (name, options) pairs; "
            f"got {providers!r}"
        )
    known = set(ort.get_all_providers())
    resolved = []
    for entry in providers:
        if isinstance(entry, str):
            name, options = entry, {}
        elif (isinstance(entry, (list, tuple)) and len(entry) == 2
              and isinstance(entry[0], str) and isinstance(entry[1], dict)):
            name, options = entry
        else:
            raise TypeError(f"providers entries must be names or (name, options dict) pairs; got {entry!r}")
        name = _ALIASES.get(name.lower(), name)
        if name not in known:
            raise ValueError(f"providers: unknown ONNX Runtime provider {name!r}; known: {sorted(known)}")
        resolved.append((name, dict(options)))
    if CPU not in [name for name, _ in resolved]:
        resolved.append((CPU, {}))
    return resolved, True


class OrtSession:
    """An ``onnxruntime.InferenceSession`` on the best provider it really gets, run with IO binding on GPU.

    Parameters
    ----------
    path : graph file.
    providers : see :func:`resolve_providers`.
    threads : intra-op threads for CPU execution; None lets ONNX Runtime choose (one per physical core).
    """

    def __init__(self, path: str | Path, providers="auto", threads: int | None = None):
        self.path = Path(path)
        requested, explicit = resolve_providers(providers)
        available = set(ort.get_available_providers())
        chain = [(name, opts) for name, opts in requested if name in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: hides "nodes not assigned to the preferred provider"
        if threads is not None:
            options.intra_op_num_threads = threads

        wants_gpu = any(name in _GPU for name, _ in chain)
        if wants_gpu:
            _preload_cuda_libraries()
        with _output_captured(wants_gpu) as captured:
            try:
                self.session = ort.InferenceSession(
                    str(self.path), options, providers=[name for name, _ in chain],
                    provider_options=[opts for _, opts in chain],
                )
            except (_ort_errors.InvalidProtobuf, _ort_errors.InvalidGraph, _ort_errors.NoSuchFile) as exc:
                raise ValueError(f"{self.path} is not a loadable ONNX graph ({type(exc).__name__}: "
                                 f"{str(exc)[:300]})") from None
        #: The providers this session really uses, in priority order.
        self.providers: list[str] = self.session.get_providers()
        wanted = requested[0][0]  # the head of the chain; TensorRT falling back to CUDA counts too
        if wanted == CPU or wanted in self.providers:
            captured.release()
            return
        reason = captured.summary or (
            f"{wanted} is not in this onnxruntime build (install onnxruntime-gpu)" if wanted not in available
            else "ONNX Runtime gave no reason"
        )
        message = (f"{wanted} was requested for {self.path.name} but the ONNX Runtime session runs on "
                   f"{self.providers[0]}. Reason: {reason}")
        if explicit:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
        else:
            logger.debug(message)

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] in _GPU

    def run(self, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Run the graph on ``feeds`` and return ``output`` as a host numpy array.

        On GPU, inputs are bound from host memory (one copy in) and the output is bound on the device
        and copied back once, instead of ORT's default of staging both through extra buffers.
        """
        if not self.on_gpu:
            return self.session.run([output], feeds)[0]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(output, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    @property
    def _device_id(self) -> int:
        provider_options = self.session.get_provider_options().get(self.providers[0], {})
        return int(provider_options.get("device_id", 0))


class _Captured:
    """What was printed while a session was being created: Python's stdout and native stderr."""

    stdout = ""
    stderr = ""

    @property
    def summary(self) -> str:
        """The printed lines as one line, without colours, timestamps, banners and source locations."""
        lines = (self.stdout + "\n" + self.stderr).splitlines()
        kept = [line for line in lines if line.strip() and not line.startswith("*")]  # "*** EP Error ***" banners
        return " | ".join(_LOG_PREFIX.sub("", line).strip() for line in kept)

    def release(self) -> None:
        """Print it after all: it was not the expected fallback noise."""
        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)


@contextlib.contextmanager
def _output_captured(active: bool):
    """While the block runs (when ``active``), capture ORT's native log lines on file descriptor 2 and
    the "EP Error ... Falling back" notice its Python layer prints on stdout."""
    captured = _Captured()
    with _capture_lock:  # one redirection at a time, so each restores the real stderr
        saved = _dup_stderr() if active else None
        if saved is None:
            yield captured
            return
        printed = io.StringIO()
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            failed = True
            try:
                with contextlib.redirect_stdout(printed):
                    yield captured
                failed = False
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                captured.stderr = _ANSI.sub("", sink.read().decode("utf-8", errors="replace"))
                captured.stdout = printed.getvalue()
                if failed:  # the session could not be created: its messages belong on screen
                    captured.release()


def _dup_stderr() -> int | None:
    """A duplicate of file descriptor 2, or None where there is no usable one (embedded interpreters)."""
    try:
        sys.stderr.flush()
        return os.dup(2)
    except (OSError, ValueError, AttributeError):
        return None


def _preload_cuda_libraries() -> None:
    """Let ORT find CUDA/cuDNN installed as pip wheels (``onnxruntime-gpu[cuda,cudnn]``); once per process."""
    global _dlls_preloaded
    if _dlls_preloaded or not hasattr(ort, "preload_dlls"):
        return
    _dlls_preloaded = True
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # preload_dlls prints its findings
            ort.preload_dlls()
    except Exception as error:  # noqa: BLE001 - a failed preload only means CUDA may fall back, reported later
        logger.debug("onnxruntime.preload_dlls failed: %s", error)
    if out.getvalue():
        logger.debug("onnxruntime.preload_dlls: %s", out.getvalue().strip())
