"""Build components from config by import path: models, datasets, collate functions — the user's and ours alike.

A component's config section names a callable with `_target_` (Hydra's convention, torchtune's `_component_`) and
holds its keyword arguments beside it:

    model:
      _target_: my_pkg.nets.ResNet      # any callable returning an nn.Module
      width: 64

The built-in presets (conf/model/mlp.yaml, conf/data/fashion_mnist.yaml, ...) are configs of exactly this kind, so
a user's component and ours take one code path. Every way a component can be wrong — a path that does not import,
arguments its constructor rejects, a result of the wrong kind — is one `ConfigError` line naming the config key.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from codistill.errors import ConfigError


EXTRAS = {"transformers": "hf", "tokenizers": "hf", "datasets": "hf"}  # packages of an optional extra
OBJECT_KEY = "_python_object_"  # marks a component that codistill.fit received as an object, not an import path


def target_of(node: Any, where: str) -> Callable[..., Any]:
    """The callable `node._target_` names, imported; raises ConfigError when the path does not resolve."""
    if isinstance(node, (dict, DictConfig)) and node.get(OBJECT_KEY):
        raise ConfigError(
            f"{where} was given to codistill.fit as a Python object ({node[OBJECT_KEY]}), not an import path: build "
            "it yourself (a final.pt's 'model' entry is a plain state_dict for your own model)"
        )
    if not isinstance(node, (dict, DictConfig)) or not node.get("_target_"):
        raise ConfigError(f"{where} needs _target_: the import path of a callable (e.g. {where}._target_=pkg.mod.Class)")
    path = str(node["_target_"])
    try:
        return get_object(path)
    except Exception as e:  # Hydra wraps ImportError/AttributeError; the cause's first line says which part failed
        cause = e.__cause__ or e
        detail = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        extra = EXTRAS.get(path.split(".")[0])
        hint = f" (pip install 'codistill[{extra}]')" if extra and "No module named" in detail else ""
        raise ConfigError(f"{where}._target_={path} does not resolve: {detail}{hint}") from None


def kwargs_of(node: Any) -> dict[str, Any]:
    """The constructor arguments of a component node (every key but Hydra's)."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in plain.items() if not k.startswith("_")}


def check_arguments(node: Any, where: str) -> None:
    """Check that `node`'s callable accepts its arguments, without calling it (before any process group)."""
    target = target_of(node, where)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins and some C extensions have no signature: leave it to the call
        return
    kwargs = kwargs_of(node)
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}._target_={node['_target_']} rejects its arguments: {e}"
                          f"{leftover_hint(signature, kwargs, where)}") from None


EMPTY_PRESETS = {"model": "model=custom", "data": "data=custom"}  # conf/<group>/custom.yaml: a _target_ and nothing else


def leftover_hint(signature: inspect.Signature, kwargs: dict[str, Any], where: str) -> str:
    """Name the arguments the callable does not take (a preset's, left over when only _target_ was overridden) and
    the empty preset to start from instead."""
    params = signature.parameters.values()
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
        return ""
    names = {p.name for p in params}
    leftover = [k for k in kwargs if k not in names]
    if not leftover:
        return ""
    hint = f" ({where} sets {', '.join(leftover)}, which it does not take"
    empty = EMPTY_PRESETS.get(where.split(".")[0].split("[")[0])
    if empty is not None:
        hint += (f"; a preset's arguments stay when only _target_ is overridden: start from the empty preset with "
                 f"{empty} and add yours with +{where}.NAME=VALUE")
    return hint + ")"


def build(node: Any, where: str, **extra: Any) -> Any:
    """Call `node`'s callable with its arguments (and `extra`); any failure is one ConfigError line."""
    check_arguments(node, where)
    try:
        return instantiate(node, **extra, _convert_="all")
    except Exception as e:  # a constructor may raise anything; its first line is the useful one
        cause = e.__cause__ or e
        detail = str(cause).splitlines()[0] if str(cause) else ""
        raise ConfigError(
            f"{where}._target_={node['_target_']} failed: {type(cause).__name__}: {detail}".rstrip(": ")
        ) from None


def factory(node: Any, where: str) -> Callable[[], Any]:
    """A zero-argument builder of `node` (a model is built once per group, under that group's seed)."""
    check_arguments(node, where)
    return lambda: build(node, where)


def optional_build(node: Optional[Any], where: str) -> Optional[Any]:
    return None if node is None else build(node, where)
