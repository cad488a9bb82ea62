"""Each extra installs what its modules import.

The test suite installs every extra at once, so a module importing a package of another extra would pass
unnoticed. Here each extra's modules are imported in a fresh interpreter in which every installed package
that the extra does not bring (its requirements and what they require in turn) looks absent: importing it
fails, and probing for it (importlib.util.find_spec, importlib.metadata) finds nothing.
"""

import re
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

import pytest

# what a user of each extra imports; "" is the base install
MODULES = {
    "": ["gapcal", "gapcal.calibration", "gapcal.metrics", "gapcal.evaluation", "gapcal.baselines", "gapcal.data",
         "gapcal.stores", "gapcal.stores.core", "gapcal.cli", "gapcal.pairs", "gapcal.folder"],
    "faiss": ["gapcal.stores.faiss"],
    "onnx": ["gapcal.encoders"],
    "report": ["gapcal.report"],
    "serve": ["gapcal.serve"],
    "milvus": ["gapcal.stores.milvus"],
    "export": ["gapcal.export", "gapcal.export.api", "gapcal.export.clip", "gapcal.export.graphs",
               "gapcal.export.verify"],
}
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str, extra: str | None = None) -> list:
    """(name, extras) of what ``dist`` requires, for ``extra`` (None: its base requirements)."""
    out = []
    for line in metadata.requires(dist) or []:
        spec, _, marker = line.partition(";")
        wanted = re.search(r'extra\s*==\s*"([^"]+)"', marker)
        if (wanted.group(1) if wanted else None) != extra:
            continue
        match = _NAME.match(spec.strip())
        extras = [e.strip() for e in (match.group(3) or "").split(",") if e.strip()]
        out.append((_norm(match.group(1)), extras))
    return out


@lru_cache(maxsize=None)
def _closure(dist: str) -> frozenset:
    """``dist`` and every installed distribution it requires, recursively (base requirements)."""
    seen, todo = set(), [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [req for req, _ in _requirements(name)]
    return frozenset(seen)


def _installed_by(extra: str) -> set:
    """Distributions ``pip install gapcal[extra]`` installs ("" for the base install)."""
    wanted = [req for req in _requirements("gapcal")]
    if extra:
        wanted += _requirements("gapcal", extra)
    dists = set()
    for name, extras in wanted:
        if name == "gapcal":
            for nested in extras:
                dists |= _installed_by(nested)
            continue
        dists |= _closure(name)
    return dists


def _modules_of(dists: set) -> set:
    tops = metadata.packages_distributions()
    return {module for module, owners in tops.items() if {_norm(o) for o in owners} & dists}


BLOCKER = """
import importlib.metadata, importlib.util, re, sys
BLOCKED = {blocked!r}
DISTS = {dists!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}} is not installed by this extra", name=name)
        return None
sys.meta_path.insert(0, Block())
probe = importlib.util.find_spec  # libraries probe optional packages with it: a missing one gives None
importlib.util.find_spec = lambda name, package=None: None if name.split(".")[0] in BLOCKED else probe(name, package)
def hidden(real):  # ... or with their metadata: a missing one raises PackageNotFoundError
    def look(name, *args, **kwargs):
        if re.sub(r"[-_.]+", "-", name).lower() in DISTS or name in BLOCKED:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name, *args, **kwargs)
    return look
for attribute in ("version", "distribution", "metadata"):
    setattr(importlib.metadata, attribute, hidden(getattr(importlib.metadata, attribute)))
import importlib
for module in {modules!r}:
    importlib.import_module(module)
print("ok")
"""


@pytest.mark.parametrize("extra", sorted(MODULES))
def test_each_extra_imports_with_only_what_it_installs(extra):
    everything = {_norm(d.metadata["Name"]) for d in metadata.distributions()}  # the test tools too
    allowed = _installed_by(extra) | {"gapcal", "pip", "setuptools", "wheel"}
    blocked = _modules_of(everything - allowed) - _modules_of(allowed)
    code = BLOCKER.format(blocked=sorted(blocked), dists=sorted(everything - allowed), modules=MODULES[extra])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"the [{extra or 'base'}] install cannot import its modules:\n{out.stderr[-2000:]}")


def test_the_blocker_blocks():
    """The check can fail: the base install must not reach faiss."""
    code = BLOCKER.format(blocked=["faiss"], dists=["faiss-cpu"], modules=["gapcal.stores.faiss"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "blocked: faiss" in out.stderr
