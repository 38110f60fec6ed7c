"""One member runner under the sweep and the search: a method config, built once per member.

A sweep's grid point and a search's trial are both "the method of this config, with these
options": `MemberRunner` loads the config (`r3h.methods.configs`, exactly as `fusion_bench
method=<name>`), refuses options that are not the method's or that the caller sets itself,
builds each member's config (the caller's SVD-cache folder and output folder on top), picks
the SVD-cache folder, and hands the member the program's Fabric.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

from r3h.io.plain import to_container
from r3h.methods.configs import build_method, declares, load_method_config, method_class, option_names

__all__ = ["MemberRunner"]


class MemberRunner:
    """The members of one method config.

    Args:
        method: a method config name (`r_tsvm`, as for `method=`) or a config with `_target_`.
        options: options fixed for every member, on top of the config.
        caller: `sweep` or `search`, for the errors (a sweep cannot sweep a sweep ...).
    """

    def __init__(self, method, options: Optional[Mapping[str, Any]] = None, caller: str = "sweep"):
        self.config: Dict[str, Any] = load_method_config(method)
        if caller == "search" and str(self.config["_target_"]).endswith(".MergeSearch"):
            raise ValueError("a search cannot search a search")
        self.cls = method_class(self.config)
        self.options: Dict[str, Any] = dict(to_container(options) or {})
        self.caller = caller
        self._known = None

    @property
    def target(self) -> str:
        return str(self.config["_target_"])

    @property
    def uses_svd_cache(self) -> bool:
        return declares(self.cls, "uses_svd_cache")

    def declares(self, capability: str) -> bool:
        return declares(self.cls, capability)

    def known_options(self):
        """The method's options (built once with the fixed options, progress bars off)."""
        if self._known is None:
            probe = build_method({**self.config, **self.options},
                                 **({"progress": False} if "progress" in self.config else {}))
            self._known = option_names(probe)
        return self._known

    # -- checks --------------------------------------------------------------------------
    def check_options(self, groups: Iterable[Tuple[str, Iterable[str]]], owned: Sequence[str] = (),
                      own_options: Sequence[str] = (), known: bool = True) -> None:
        """Each (where, option names) of `groups` names none of `owned` (the caller sets them;
        `own_options`: those it takes as its own options) and, with `known`, only options of
        the method."""
        groups = [(where, list(keys)) for where, keys in groups]
        for where, keys in groups:
            for k in keys:
                if k in owned:
                    hint = f" (its own `{k}` option)" if k in own_options else ""
                    raise ValueError(f"{where}: '{k}' is set by the {self.caller} itself{hint}")
        if not known:
            return
        known = self.known_options()
        for where, keys in groups:
            for k in keys:
                if k not in known:
                    raise ValueError(f"{where}: '{k}' is not an option of {self.target} "
                                     f"(options: {', '.join(known)})")

    # -- members -------------------------------------------------------------------------
    def member_config(self, values: Mapping[str, Any], svd_cache: Optional[str] = None,
                      out_dir: Optional[str] = None, quiet: bool = False) -> Dict[str, Any]:
        """The config of the member with `values`: the method config, the fixed options,
        `values`, then what the caller decides: the SVD-cache folder (methods that use one),
        the member's output folder, progress bars off (`quiet`)."""
        cfg = {**self.config, **self.options, **values}
        if quiet and "progress" in cfg:
            cfg["progress"] = False
        if svd_cache is not None and self.uses_svd_cache:
            cfg["svd_cache"] = svd_cache
        if out_dir is not None:
            cfg["out_dir"] = out_dir
        return cfg

    @staticmethod
    def build(cfg: Mapping[str, Any], fabric=None, modelpool=None):
        """The member of `cfg`, on the caller's Fabric (when it has one), checked against
        `modelpool` (`prepare`, no tensor read) when given."""
        m = build_method(cfg)
        if fabric is not None and hasattr(m, "_fabric_instance"):
            m._fabric_instance = fabric
        if modelpool is not None and hasattr(m, "prepare"):
            m.prepare(modelpool)
        return m

    @staticmethod
    def svds(member, model) -> Optional[int]:
        """The SVDs a member's merge ran (its SVD-cache report), None when it reports none."""
        report = getattr(member, "last_report", None) or {}
        cache_rep = report.get("svd_cache") if isinstance(report, Mapping) else None
        if isinstance(cache_rep, Mapping) and "svds" in cache_rep:
            return int(cache_rep["svds"])
        info = getattr(model, "r3h_merge_info", None) or {}
        return (info.get("svd_cache") or {}).get("svds")

    # -- the SVD cache -------------------------------------------------------------------
    def cache_folder(self, requested, default: Optional[str] = None, fabric=None,
                     parent: Optional[str] = None) -> Tuple[Optional[str], bool]:
        """(folder, temporary) of the members' shared SVD cache: None when the method uses
        none or `requested` is false; `requested` when it is a folder; else `default` (made
        here); else None when the method config names its own folder; else a temporary
        folder under `parent`, made on rank 0 and broadcast to the others."""
        if not self.uses_svd_cache or requested is False:
            return None, False
        if requested is not None:
            return os.path.abspath(os.path.expanduser(str(requested))), False
        if default is not None:
            os.makedirs(default, exist_ok=True)
            return default, False
        if self.options.get("svd_cache") or self.config.get("svd_cache"):
            return None, False
        parent = self.options.get("tmp_dir") or self.config.get("tmp_dir") or parent
        path = None
        if fabric is None or fabric.global_rank == 0:
            if parent:
                os.makedirs(parent, exist_ok=True)
            path = tempfile.mkdtemp(prefix=".r3h-svd-cache-", dir=parent or None)
        if fabric is not None and fabric.world_size > 1:
            path = fabric.broadcast(path, src=0)
        return path, True
