"""Generate the configuration reference (docs/configs.md) and the hyperparameter tables of the
method pages (docs/methods/<name>.md) from the YAML files under config/.

    python docs/gen_config_reference.py           # (re)write docs/configs.md and the method tables
    python docs/gen_config_reference.py --check   # exit 1 if any of them is out of date

Each config is resolved as Hydra composes it (`resolve`): its `defaults` (configs of the same
folder, or `/group/name@_here_`) merged in order, `_self_` where it is listed. For every method,
modelpool and taskpool config the reference gives the config's leading comment, its `_target_`
class, the configs it is based on and one row per option of the composed config: the dotted
name to override on the command line, the default, and the comment written beside or above the
option in the YAML file (the file that sets it last). Each method page's `## Hyperparameters`
section is generated between two HTML comments from its resolved config: the YAML is the one
copy of every default and its description. tests/test_docs.py checks that both are up to date
and that each class's defaults are its resolved config's. It needs only PyYAML (no r3h, no torch).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import textwrap
from typing import Any, Dict, List, Optional, Tuple

import yaml

DOCS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DOCS)
CONFIG = os.path.join(ROOT, "config")
OUTPUT = os.path.join(DOCS, "configs.md")

# (config group, CLI prefix of its options, section title, what the section holds)
GROUPS = [
    ("method", "method", "Methods (`method=`)",
     "The merging methods, the training methods under `train/` and the diagnostics under `analysis/`."),
    ("modelpool", "modelpool", "Model pools (`modelpool=`)", "The base model and its experts."),
    ("taskpool", "taskpool", "Task pools (`taskpool=`)", "The 3H evaluation and its offline variants."),
]

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_][\w.-]*|\"[^\"]*\"|'[^']*'):(?:\s|$)(?P<rest>.*)$")


def format_value(value: Any) -> str:
    """A YAML value as one line of YAML flow style (what `yaml.safe_load` reads back)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30, sort_keys=False)
    text = text.strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    return text


LINK = re.compile(r"\]\(([^)\s]+)\)")  # the target of a Markdown link: docs-relative in the YAML comments


def escape_prose(text: str) -> str:
    """Markdown-escape comment text outside `code spans` and link targets: _, *, <, > and |
    (tables)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        bits = LINK.split(parts[i])  # odd bits are link targets, kept as they are
        for j in range(0, len(bits), 2):
            p = bits[j].replace("\\", "\\\\")
            for ch in "_*":
                p = p.replace(ch, "\\" + ch)
            bits[j] = p.replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = "".join(b if j % 2 == 0 else f"]({b})" for j, b in enumerate(bits))
    return "`".join(parts).replace("|", "\\|")


def _comment_text(line: str) -> str:
    return re.sub(r"^\s*# ?", "", line.rstrip("\n"))


def _is_separator(text: str) -> bool:
    """Section rulers such as `-- engine options --` or `------ helpfulness`."""
    return text.strip().startswith("--")


def _inline_comment(rest: str) -> str:
    """The comment after a value on a `key: value  # comment` line (not inside quotes)."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[i + 1 :].strip()
    return ""


def parse_comments(text: str) -> Tuple[List[str], Dict[str, str]]:
    """The file's leading comment lines, and comment text per dotted key path."""
    lines = text.splitlines()
    header: List[str] = []
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        if lines[i].strip():
            header.append(_comment_text(lines[i]))
        elif header:
            header.append("")
        i += 1
    comments: Dict[str, str] = {}
    stack: List[Tuple[int, str]] = []
    pending: List[str] = []
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            t = _comment_text(line)
            if not _is_separator(t):
                pending.append(t.strip())
            continue
        m = KEY_LINE.match(line)
        if not m or stripped.startswith("- "):
            pending = []
            continue
        indent = len(m.group("indent"))
        key = m.group("key").strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        parts = [" ".join(p for p in pending if p)]
        parts.append(_inline_comment(m.group("rest")))
        note = join_notes(parts)
        if note:
            comments[path] = note
        pending = []
    while header and not header[-1]:
        header.pop()
    return header, comments


def join_notes(notes: List[str]) -> str:
    """Comments from several places as one text, each ended by a full stop when it has none."""
    notes = [n.strip() for n in notes if n and n.strip()]
    return " ".join(n if n == notes[-1] or n[-1] in ".!?:;" else n + "." for n in notes)


def flatten(data: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    """Leaf options as (dotted path, value); lists and empty mappings are leaves."""
    if isinstance(data, dict) and data:
        out: List[Tuple[str, Any]] = []
        for k, v in data.items():
            out.extend(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [(prefix, data)]


def option_rows(data: dict, comments: Dict[str, str]) -> List[Tuple[str, str, str]]:
    """(option, default, description) per leaf; a mapping's own comment goes to its first leaf."""
    rows = []
    seen_parents = set()
    for path, value in flatten({k: v for k, v in data.items() if k not in ("_target_", "defaults")}):
        notes = []
        parts = path.split(".")
        for n in range(1, len(parts)):
            parent = ".".join(parts[:n])
            if parent not in seen_parents:
                seen_parents.add(parent)
                if parent in comments:
                    notes.append(comments[parent])
        if path in comments:
            notes.append(comments[path])
        rows.append((path, format_value(value), join_notes(notes)))
    return rows


def config_files(group: str) -> List[Tuple[str, str]]:
    """(config name as given on the command line, file path), top level first, then sub-folders."""
    base = os.path.join(CONFIG, group)
    top, sub = [], []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for f in sorted(filenames):
            if f.endswith(".yaml") and not f.startswith("_"):  # `_base.yaml`: a shared block, not a config
                rel = os.path.relpath(os.path.join(dirpath, f), base)
                name = rel[: -len(".yaml")].replace(os.sep, "/")
                (sub if "/" in name else top).append((name, os.path.join(dirpath, f)))
    return top + sorted(sub)


def _merge(into: dict, data: dict) -> None:
    """OmegaConf's merge of plain data: mappings merged key by key (a key keeps its first
    place), anything else replaced."""
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def resolve(path: str) -> Tuple[dict, Dict[str, str], List[str]]:
    """(the composed config, the comment per option, the configs it is based on) of the YAML
    file `path`, its Hydra `defaults` applied: an entry `name` is `name.yaml` of the file's
    folder, `/group/name` is under config/, `@_here_` merges at the top (the only package r3h's
    configs use), `_self_` is the file itself (last when not listed)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    own = yaml.safe_load(text) or {}
    _, own_notes = parse_comments(text)
    entries = own.pop("defaults", None) or []
    if "_self_" not in entries:
        entries = list(entries) + ["_self_"]
    data: dict = {}
    notes: Dict[str, str] = {}
    bases: List[str] = []
    for entry in entries:
        if entry == "_self_":
            _merge(data, own)
            notes.update(own_notes)
            continue
        if not isinstance(entry, str):
            raise ValueError(f"{path}: defaults entry {entry!r}: only config names are resolved here")
        name, _, package = entry.partition("@")
        if package not in ("", "_here_"):
            raise ValueError(f"{path}: defaults entry {entry!r}: package @{package} is not resolved here")
        base = os.path.join(CONFIG, name.lstrip("/")) if name.startswith("/") else \
            os.path.join(os.path.dirname(path), name)
        sub, sub_notes, _ = resolve(base + ".yaml")
        _merge(data, sub)
        notes.update(sub_notes)
        bases.append(name)
    return data, notes, bases


def render_header(header: List[str]) -> List[str]:
    """Leading comments: prose lines as a paragraph, indented lines (commands) as a code block."""
    out: List[str] = []
    prose: List[str] = []
    code: List[str] = []

    def flush():
        if prose:
            out.append(escape_prose(" ".join(p.strip() for p in prose)))
            out.append("")
            prose.clear()
        if code:
            out.append("```bash")
            out.extend(textwrap.dedent("\n".join(code)).splitlines())
            out.append("```")
            out.append("")
            code.clear()

    for line in header:
        if line.startswith("  ") and line.strip():
            if prose:
                flush()
            code.append(line.rstrip())
        elif not line.strip():
            flush()
        else:
            if code:
                flush()
            prose.append(line)
    flush()
    return out


def method_page(name: str) -> Optional[str]:
    path = os.path.join(DOCS, "methods", f"{name}.md")
    return f"methods/{name}.md" if os.path.exists(path) else None


def render_config(group: str, prefix: str, name: str, path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    header, _ = parse_comments(text)
    data, comments, bases = resolve(path)
    out = [f"### `{name}`", ""]
    facts = [f"`config/{group}/{name}.yaml`"]
    if "_target_" in data:
        facts.append(f"class `{data['_target_']}`")
    elif name.split("/")[-1].startswith("_"):
        facts.append("not a config to run: other configs pull it in with `defaults`")
    if bases:
        files = [b.lstrip("/") if b.startswith("/") else
                 os.path.relpath(os.path.join(os.path.dirname(path), b), CONFIG).replace(os.sep, "/") for b in bases]
        facts.append("composed from " + ", ".join(f"`config/{f}.yaml`" for f in files)
                     + " (Hydra `defaults`; the table lists the composed options)")
    if group == "method" and method_page(name):
        facts.append(f"page: [{name}]({method_page(name)})")
    out += ["; ".join(facts) + ".", ""]
    out += render_header(header)
    rows = option_rows(data, comments)
    if rows:
        out += [f"| option (`{prefix}.…`) | default | description |", "|---|---|---|"]
        for opt, value, note in rows:
            out.append(f"| `{opt}` | `{value}` | {escape_prose(note)} |")
        out.append("")
    return out


# -- the method pages' hyperparameter tables -------------------------------------------------

BEGIN = "<!-- generated by docs/gen_config_reference.py from config/method/{name}.yaml: edit the YAML, not this table -->"
END = "<!-- end of the generated table -->"
ENGINE = os.path.join(CONFIG, "method", "_engine.yaml")


def method_table(name: str) -> str:
    """The `## Hyperparameters` section of docs/methods/<name>.md: every option of the resolved
    config (the method's own first, then the engine options), its default and description."""
    data, comments, bases = resolve(os.path.join(CONFIG, "method", f"{name}.yaml"))
    engine = list(resolve(ENGINE)[0]) if "_engine" in bases else []
    options = [k for k in data if k != "_target_" and k not in engine] + [k for k in engine if k in data]
    intro = (f"Defaults of `config/method/{name}.yaml` (the class `{data['_target_']}` has the same). Override any "
             "of them with `method.<option>=<value>`.")
    if engine:
        intro += (f" `{engine[0]}` … `{engine[-1]}` are the engine options every method takes "
                  "(`config/method/_engine.yaml`, [Engine](../engine.md)).")
    out = [BEGIN.format(name=name), "", intro, "", "| option | default | description |", "|---|---|---|"]
    for k in options:
        note = LINK.sub(lambda m: "](" + (m.group(1) if "://" in m.group(1) else "../" + m.group(1)) + ")",
                        comments.get(k, ""))
        out.append(f"| `{k}` | `{format_value(data[k])}` | {note.replace('|', chr(92) + '|')} |")
    out += ["", END]
    return "\n".join(out)


SECTION = re.compile(r"(^## Hyperparameters\n\n)(.*?)(\n\n)(?=^## |\Z)", re.S | re.M)


def method_pages() -> Dict[str, str]:
    """{path: text} of every docs/methods/<name>.md with its generated table in place."""
    pages = {}
    folder = os.path.join(DOCS, "methods")
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".md"):
            continue
        path = os.path.join(folder, f)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        name = f[: -len(".md")]
        if "_engine" not in resolve(os.path.join(CONFIG, "method", f"{name}.yaml"))[2]:
            continue  # a config not composed from _engine yet keeps its hand-written table (test_docs checks it)
        if not SECTION.search(text):
            raise ValueError(f"{path}: no '## Hyperparameters' section")
        pages[path] = SECTION.sub(lambda m: m.group(1) + method_table(name) + m.group(3), text, count=1)
    return pages


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by docs/gen_config_reference.py from config/*.yaml: do not edit by hand;",
        "     run `python docs/gen_config_reference.py` after changing a config. -->",
        "",
        "Every config under `config/` that the `fusion_bench` command finds (r3h's configs come",
        "before fusion_bench's own on the search path; see [CLI and configs](cli.md)). Pick one with",
        "`method=<name>`, `modelpool=<name>` or `taskpool=<name>` and override any option with its",
        "dotted name, e.g. `method.density=0.3` or `taskpool.generation.backend=hf`. A default of `???`",
        "must be given; `${...}` is an OmegaConf interpolation. Descriptions are the comments of the",
        "YAML files. Configs are composed with Hydra `defaults`: every merging method pulls in the",
        "engine options of `config/method/_engine.yaml`, and an ablation such as `r_tsvm_no_rank` is",
        "`r_tsvm` plus one line; each table lists the composed options.",
        "",
    ]
    for group, prefix, title, intro in GROUPS:
        out += [f"## {title}", "", intro, ""]
        for name, path in config_files(group):
            out += render_config(group, prefix, name, path)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def outputs(output: str = OUTPUT) -> Dict[str, str]:
    """{path: text} of every file this script writes."""
    return {output: render(), **method_pages()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if docs/configs.md or a method page's table differs from the generated text")
    ap.add_argument("--output", default=OUTPUT)
    args = ap.parse_args(argv)
    stale = []
    for path, text in outputs(args.output).items():
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            print(f"wrote {os.path.relpath(path, ROOT)}")
    if args.check and stale:
        for path in stale:
            print(f"{os.path.relpath(path, ROOT)} is out of date: run python docs/gen_config_reference.py",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
