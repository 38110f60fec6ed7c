"""The documentation site (mkdocs.yml, docs/): it builds with --strict, its generated
configuration reference and method tables are up to date, every config it (or the README)
names exists, and each method class's defaults are its resolved YAML config."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import yaml

from r3h.methods import METHODS
from tests.optional import need

pytestmark = pytest.mark.docs  # the whole module: the documentation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
CONFIG = os.path.join(ROOT, "config")

# the methods with a page docs/methods/<name>.md: every registered one (r3h.methods.METHODS)
METHOD_PAGES = list(METHODS)


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", os.path.join(DOCS, "gen_config_reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_files():
    """README.md and every page under docs/."""
    files = [os.path.join(ROOT, "README.md")]
    for dirpath, _, filenames in os.walk(DOCS):
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".md")]
    return files


@pytest.mark.slow
@pytest.mark.subprocess
def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict`: no broken link or anchor, no page outside the nav, no
    docstring mkdocstrings cannot parse. Needs the docs extra: pip install -e ".[docs]"."""
    for module in ("mkdocs", "mkdocstrings", "material"):
        need(module, f"{module} (the docs extra)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", os.path.join(ROOT, "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    assert (tmp_path / "site" / "index.html").exists()
    # the API reference really rendered the docstrings (not just the headings)
    api = (tmp_path / "site" / "api" / "methods" / "index.html").read_text(encoding="utf-8")
    assert 'id="r3h.methods.RTSVM"' in api and "outlier" in api


def test_config_reference_is_up_to_date():
    """docs/configs.md and the method pages' hyperparameter tables are what
    docs/gen_config_reference.py writes from config/ today."""
    stale = []
    for path, text in _generator().outputs().items():
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                stale.append(os.path.relpath(path, ROOT))
    assert not stale, f"out of date with config/: {stale}: run  python docs/gen_config_reference.py"


@pytest.mark.slow
def test_config_reference_resolves_defaults_as_hydra_does():
    """The generator's `resolve` (PyYAML only) gives every method config exactly as Hydra composes
    it for `fusion_bench method=<name>` (r3h.methods.configs.load_config), defaults included."""
    from r3h.methods.configs import load_config

    gen = _generator()
    names = [n for n, _ in gen.config_files("method")] + ["_engine", "search/_base"]  # the blocks, too
    assert "r_tsvm_no_rank" in names and "search/tsvm" in names
    for name in names:
        data, _, _ = gen.resolve(os.path.join(CONFIG, "method", f"{name}.yaml"))
        assert data == load_config("method", name), name
    # the ablations are r_tsvm plus one line; every merging method takes the engine options from _engine
    for name, option in (("r_tsvm_no_rank", "rank_selection"), ("r_tsvm_no_outlier", "outlier_weighting")):
        want = dict(load_config("method", "r_tsvm"), **{option: False})
        assert load_config("method", name) == want
    engine = load_config("method", "_engine")
    for name in METHODS:
        assert set(engine) <= set(load_config("method", name)), name


def test_config_reference_covers_every_config():
    text = _generator().render()
    for group in ("method", "modelpool", "taskpool"):
        for dirpath, _, filenames in os.walk(os.path.join(CONFIG, group)):
            for f in filenames:
                if f.endswith(".yaml"):
                    rel = os.path.relpath(os.path.join(dirpath, f), CONFIG).replace(os.sep, "/")
                    assert f"`config/{rel}`" in text, rel


def _fusion_bench_config_dir():
    spec = importlib.util.find_spec("fusion_bench_config")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


CONFIG_REF = re.compile(r"(?<![\w.])(method|modelpool|taskpool)=([A-Za-z0-9_][\w./-]*)")


def _config_refs(text):
    # configs.md escapes _ and * in prose
    text = text.replace("\\_", "_").replace("\\*", "*")
    for m in CONFIG_REF.finditer(text):
        group, name = m.group(1), m.group(2)
        if "..." in name or "…" in name:
            continue  # placeholders such as method=train/...
        yield group, name.rstrip(".,;:/")


def test_every_named_config_exists():
    """Every `method=<name>`, `modelpool=<name>`, `taskpool=<name>` in README.md and docs/
    is a config under config/ (or one of fusion_bench's own, such as method=dummy): a renamed
    or removed config breaks this test, not the reader's command."""
    fb = _fusion_bench_config_dir()
    missing, seen = [], 0
    for path in _markdown_files():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for group, name in _config_refs(text):
            seen += 1
            if os.path.exists(os.path.join(CONFIG, group, f"{name}.yaml")):
                continue
            if fb and os.path.exists(os.path.join(fb, group, f"{name}.yaml")):
                continue
            missing.append(f"{os.path.relpath(path, ROOT)}: {group}={name}")
    assert seen > 50  # the pattern still finds the commands
    assert not missing, "configs named in the docs that do not exist:\n" + "\n".join(sorted(set(missing)))


def _defaults_table(page_text):
    """{option: YAML value} from the rows `| `option` | `default` | ... |` of the
    '## Hyperparameters' section."""
    m = re.search(r"^## Hyperparameters\n(.*?)(?=^## |\Z)", page_text, re.S | re.M)
    assert m, "no '## Hyperparameters' section"
    rows = {}
    for line in m.group(1).splitlines():
        r = re.match(r"^\| `([^`]+)` \| `([^`]*)` \|", line)
        if r:
            assert r.group(1) not in rows, f"option {r.group(1)} listed twice"
            rows[r.group(1)] = yaml.safe_load(r.group(2))
    return rows


@pytest.mark.parametrize("name", METHOD_PAGES)
def test_method_page_names_its_config(name):
    """docs/methods/<name>.md's table (generated: test_config_reference_is_up_to_date) lists the
    options of the resolved config/method/<name>.yaml; the page names the config and its class and
    is in the site's nav."""
    from r3h.methods.configs import load_config

    cfg = load_config("method", name)
    with open(os.path.join(DOCS, "methods", f"{name}.md"), encoding="utf-8") as f:
        page = f.read()
    assert _defaults_table(page) == {k: v for k, v in cfg.items() if k != "_target_"}
    assert f"method={name} " in page
    assert cfg["_target_"] in page
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        assert f"methods/{name}.md" in f.read()


def test_every_method_has_a_page():
    pages = sorted(f.removesuffix(".md") for f in os.listdir(os.path.join(DOCS, "methods")) if f.endswith(".md"))
    assert pages == sorted(METHODS)
    # r3h.methods' __all__ is computed, which griffe cannot read: the API page lists the classes
    with open(os.path.join(DOCS, "api", "methods.md"), encoding="utf-8") as f:
        api = f.read()
    for cls in METHODS.values():
        assert f"- {cls.__name__}\n" in api, f"docs/api/methods.md: add {cls.__name__} to the members"


@pytest.mark.parametrize("name", METHOD_PAGES)
def test_method_class_defaults_match_config(name):
    """The one parity test of defaults: the class's signature defaults are its resolved config's
    (`defaults` applied, as `fusion_bench method=<name>` composes it); the method pages' tables
    are generated from the same resolved config."""
    import inspect

    from r3h.methods import METHODS
    from r3h.methods.configs import load_config

    cfg = load_config("method", name)
    defaults = {}
    for klass in reversed(METHODS[name].__mro__):
        if "__init__" in vars(klass):
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    defaults[p.name] = p.default
    for option, value in cfg.items():
        if option == "_target_":
            continue
        assert option in defaults, f"{name}: {option} is not an argument of {METHODS[name].__name__}"
        default = defaults[option]
        if default is None and value == []:  # exclude_keys: None means none
            continue
        assert default == value, f"{name}.{option}: class default {default!r}, config {value!r}"


def test_study_tables_in_the_docs_are_what_the_command_prints():
    """docs/study.md and the README carry the recorded run's table and findings as
    r3h.study.tables renders them from docs/study/results.json, and the run's experts moved."""
    import json

    from r3h.study.tables import markdown_diagnostics, markdown_findings, markdown_table

    with open(os.path.join(ROOT, "docs", "study", "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(ROOT, "docs", "study.md")) as f:
        page = f.read()
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    table, findings = markdown_table(results["models"]), markdown_findings(results["findings"])
    assert table in page and findings in page and markdown_diagnostics(results["diagnostics"]) in page
    assert findings in readme
    moved = [f for f in results["findings"] if f["claim"].startswith("5. ")]
    assert len(moved) == 3 and all(f["verdict"] == "holds" and f["ci_low"] > 0 for f in moved)
    for name, m in results["models"].items():
        for key in ("Helpful_Avg", "Honest_Avg", "Harmless_Avg", "AVG"):
            assert m[key]["ci_low"] <= m[key]["score"] <= m[key]["ci_high"], (name, key)
