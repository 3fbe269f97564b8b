"""Old import paths of modules that moved into subpackages, kept for one release.

`import retrofit.features` (and every other path below) still works: it warns once with a
DeprecationWarning naming the new path and returns the moved module itself, so attributes and
monkeypatches reach the same object. Two old paths cannot be kept: `retrofit.edit` is the public
function `retrofit.edit` (its module is `retrofit.editing.apply`) and `retrofit.model` is now
the package of the same name, which still exports `InterpretableModel` and `load`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

REMOVED_IN = "0.3"
MOVED = {
    "retrofit.api": "retrofit.fitting.convert",
    "retrofit.attributes": "retrofit.methods.flint.attributes",
    "retrofit.bottleneck": "retrofit.fitting.bottleneck",
    "retrofit.cache": "retrofit.extraction.cache",
    "retrofit.check.am_pi": "retrofit.methods.flint.am_pi",
    "retrofit.check.mas": "retrofit.methods.flint.mas",
    "retrofit.consistency_cache": "retrofit.fitting.consistency_cache",
    "retrofit.data_parallel": "retrofit.extraction.data_parallel",
    "retrofit.data_specs": "retrofit.io.data_specs",
    "retrofit.distributed": "retrofit.extraction.distributed",
    "retrofit.edits": "retrofit.editing.parse",
    "retrofit.edits_file": "retrofit.editing.file",
    "retrofit.explanation": "retrofit.model.explanation",
    "retrofit.features": "retrofit.extraction.features",
    "retrofit.featureset": "retrofit.extraction.featureset",
    "retrofit.finetune": "retrofit.fitting.finetune",
    "retrofit.fingerprint": "retrofit.extraction.fingerprint",
    "retrofit.flint_losses": "retrofit.methods.flint.losses",
    "retrofit.flint_settings": "retrofit.methods.flint.settings",
    "retrofit.heads.base": "retrofit.methods.base",
    "retrofit.heads.dense": "retrofit.methods.dense.head",
    "retrofit.heads.flint": "retrofit.methods.flint.head",
    "retrofit.heads.prior": "retrofit.methods.prior",
    "retrofit.heads.qpm": "retrofit.methods.qpm.head",
    "retrofit.heads.qsenn": "retrofit.methods.qsenn.head",
    "retrofit.heads.sparse": "retrofit.methods.sparse.head",
    "retrofit.hf": "retrofit.model.hf",
    "retrofit.hooks": "retrofit.extraction.hooks",
    "retrofit.inputs": "retrofit.extraction.inputs",
    "retrofit.layer_fit": "retrofit.fitting.layer_fit",
    "retrofit.loaders": "retrofit.extraction.loaders",
    "retrofit.losses": "retrofit.fitting.losses",
    "retrofit.outputs": "retrofit.extraction.outputs",
    "retrofit.pooled_layers": "retrofit.extraction.pooled_layers",
    "retrofit.preprocessing": "retrofit.extraction.preprocessing",
    "retrofit.quantize": "retrofit.methods.qsenn.quantize",
    "retrofit.rank_batches": "retrofit.extraction.rank_batches",
    "retrofit.relevance": "retrofit.methods.flint.relevance",
    "retrofit.reweight": "retrofit.fitting.reweight",
    "retrofit.safe_io": "retrofit.io.files",
    "retrofit.solvers.cliques": "retrofit.methods.qpm.cliques",
    "retrofit.solvers.qpm_constants": "retrofit.methods.qpm.constants",
    "retrofit.solvers.qpm_cuts": "retrofit.methods.qpm.cuts",
    "retrofit.solvers.qpm_edit": "retrofit.methods.qpm.edit",
    "retrofit.solvers.qpm_program": "retrofit.methods.qpm.program",
    "retrofit.solvers.qpm_projection": "retrofit.methods.qpm.projection",
    "retrofit.specs": "retrofit.io.specs",
    "retrofit.state": "retrofit.io.weights",
    "retrofit.streaming": "retrofit.extraction.streaming",
    "retrofit.trust": "retrofit.io.trust",
}


# old packages: a stand-in package (so that its old submodules above import) whose names are
# read from the new module; never the new package itself, whose attributes the import system
# would overwrite with the old submodules
MOVED_PACKAGES = {"retrofit.heads": "retrofit.methods.base"}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path stops working in retrofit {REMOVED_IN}: "
        f"import {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )


class _MovedPackageLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        stand_in = ModuleType(spec.name, f"Moved: the names of {self.new}.")
        target = importlib.import_module(self.new)
        stand_in.__path__ = []  # a package, so its old submodules resolve through MOVED
        stand_in.__getattr__ = lambda name: getattr(target, name)  # type: ignore[method-assign]
        return stand_in

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the stand-in reads its names from the new module."""


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The moved module is already executed."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds each old path in MOVED and hands out the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname in MOVED_PACKAGES:
            loader: importlib.abc.Loader = _MovedPackageLoader(MOVED_PACKAGES[fullname])
            return importlib.machinery.ModuleSpec(fullname, loader, is_package=True)
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
