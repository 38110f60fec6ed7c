"""Hydra search-path plugin: makes r3h's configs visible to the `fusion_bench` CLI.

r3h's configs (`r3h.config`, the repo's `config/`) go first. They only add names
(tests/test_fusion_bench_configs.py): every config fusion_bench ships resolves to the
same class with or without r3h, so `method=task_arithmetic` stays fusion_bench's and
r3h's is `method=r3h_task_arithmetic`. fusion_bench
uses `$CWD/config` as its primary config folder when that folder exists, which
hides its own configs (and `fabric_model_fusion`) when the command runs from a
folder such as r3h's repo root; appending fusion_bench's config package keeps
`fusion_bench method=ties modelpool=tiny_3h` working from any folder, with no flags.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class R3HSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.prepend(provider="r3h", path="pkg://r3h.config")
        search_path.append(provider="fusion_bench", path="pkg://fusion_bench_config")
