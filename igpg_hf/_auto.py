"""Register the IGPG configs and models with transformers' Auto classes, without importing transformers early.

``import igpg_hf`` must stay cheap (the CLI starts in milliseconds; transformers and torch take seconds), so it
only installs an import hook. Registration then happens when it is needed, never in the middle of an import:

1. Configs: when transformers' ``configuration_auto`` module has been imported, the hook arms
   ``AutoConfig.from_pretrained`` and ``AutoConfig.for_model``: their first call registers ``igpg_vqvae`` and
   ``igpg_prior`` (then the original methods are put back). The hook itself imports nothing: transformers imports
   ``configuration_auto`` and ``modeling_auto`` while its ``modeling_utils`` (or GPT-2's config module) is still
   half-initialized, and importing the IGPG config classes (GPT-2 subclasses) from there fails.
2. Models: when the first IGPG config is created (``AutoModel*.from_pretrained`` creates one through
   ``AutoConfig.from_pretrained``; ``from_config`` receives one), ``AutoModel`` / ``AutoModelForCausalLM`` learn
   `IGPGPriorModel` and ``AutoModel`` learns `IGPGVQVAEModel`.

So after ``import igpg_hf``, ``AutoModelForCausalLM.from_pretrained(prior_dir)`` returns an `IGPGPriorModel`.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# no `logging` here: importing it costs more than the rest of `import igpg_hf` (it is imported where a warning is due)

__all__ = ["install", "register_configs", "register_models"]

_CONFIG_AUTO = "transformers.models.auto.configuration_auto"
_ARMED_METHODS = ("from_pretrained", "for_model")
_lock = threading.RLock()
_done: set[str] = set()
_originals: dict[str, classmethod] = {}


def register_configs() -> None:
    """``AutoConfig`` learns the IGPG model types (idempotent; puts back the armed ``AutoConfig`` methods)."""
    with _lock:
        if "configs" in _done:
            return
        from transformers import AutoConfig

        from .configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig

        for name, method in _originals.items():
            setattr(AutoConfig, name, method)
        _originals.clear()
        for cfg in (IGPGVQVAEConfig, IGPGPriorConfig):
            AutoConfig.register(cfg.model_type, cfg, exist_ok=True)
        _done.add("configs")


def register_models() -> None:
    """``AutoModel`` / ``AutoModelForCausalLM`` learn the IGPG models (idempotent; imports the model modules)."""
    with _lock:
        if "models" in _done:
            return
        _done.add("models")  # first: configs created while the model modules import must not recurse
        try:
            register_configs()
            from transformers import AutoModel, AutoModelForCausalLM

            from .configuration_igpg import IGPGPriorConfig, IGPGVQVAEConfig
            from .modeling_prior import IGPGPriorModel
            from .modeling_vqvae import IGPGVQVAEModel

            AutoModel.register(IGPGVQVAEConfig, IGPGVQVAEModel, exist_ok=True)
            AutoModel.register(IGPGPriorConfig, IGPGPriorModel, exist_ok=True)
            AutoModelForCausalLM.register(IGPGPriorConfig, IGPGPriorModel, exist_ok=True)
        except Exception:
            _done.discard("models")  # a later config creation tries again
            raise


def _arm_auto_config() -> None:
    """Make the first ``AutoConfig.from_pretrained`` / ``for_model`` call register the IGPG configs first."""
    with _lock:
        if "configs" in _done or _originals:
            return
        auto_config = sys.modules[_CONFIG_AUTO].AutoConfig  # fully executed: read it directly, import nothing

        def armed(name: str, original: classmethod):
            @functools.wraps(original.__func__)
            def method(cls, *args, **kwargs):
                register_configs()
                return getattr(cls, name)(*args, **kwargs)

            return classmethod(method)

        for name in _ARMED_METHODS:
            _originals[name] = auto_config.__dict__[name]
            setattr(auto_config, name, armed(name, _originals[name]))


class _HookedLoader:
    """Runs ``hook`` after the wrapped loader has executed the module, then steps out of the way."""

    def __init__(self, loader, hook: Callable[[], None]):
        self._loader, self._hook = loader, hook

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        try:
            self._hook()
        except Exception:  # never break importing transformers itself
            import logging

            logging.getLogger(__name__).warning(
                "could not register igpg_hf with transformers' Auto classes", exc_info=True
            )

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _PostImportFinder:
    """Wraps the loader of the named modules so that a hook runs once they are imported."""

    def __init__(self, hooks: dict[str, Callable[[], None]]):
        self.hooks = hooks

    def find_spec(self, fullname, path, target=None):
        hook = self.hooks.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, hook)
                return spec
        return None


def install() -> None:
    """Arrange the registration (at once if transformers' ``configuration_auto`` is already imported)."""
    with _lock:
        if "installed" in _done:
            return
        _done.add("installed")
        if _CONFIG_AUTO in sys.modules:
            _arm_auto_config()
        else:
            sys.meta_path.insert(0, _PostImportFinder({_CONFIG_AUTO: _arm_auto_config}))
