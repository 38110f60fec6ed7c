"""Generate docs/configs.md, the configuration reference, from the YAML files under config/.

    python docs/gen_config_reference.py           # (re)write docs/configs.md
    python docs/gen_config_reference.py --check   # exit 1 if docs/configs.md is out of date

For every method, modelpool and taskpool config it writes the config's leading comment, its
`_target_` class, the config it is based on (Hydra `defaults`) and one row per option: the
dotted name to override on the command line, the default, and the comment written beside or
above the option in the YAML file. tests/test_docs.py checks that the page is up to date.
It needs only PyYAML (no r3h, no torch).
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


def escape_prose(text: str) -> str:
    """Markdown-escape comment text outside `code spans`: _, *, <, > and | (tables)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        p = parts[i].replace("\\", "\\\\")
        for ch in "_*":
            p = p.replace(ch, "\\" + ch)
        p = p.replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = p
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


def shared_blocks(path: str, data: dict) -> List[str]:
    """The files of the `_`-named blocks (`search/_base.yaml`) that `data`'s Hydra `defaults`
    pull in, first to last; the other defaults (other configs, groups) are named, not inlined."""
    out = []
    for d in data.get("defaults") or []:
        if not isinstance(d, str) or d == "_self_":
            continue
        rel = d.split("@")[0]
        file = os.path.join(CONFIG, rel.lstrip("/")) if rel.startswith("/") else \
            os.path.join(os.path.dirname(path), rel)
        if os.path.basename(file).startswith("_") and os.path.isfile(file + ".yaml"):
            out.append(file + ".yaml")
    return out


def read_config(path: str) -> Tuple[dict, List[str], Dict[str, str], List[str]]:
    """(options, header, comments, shared blocks) of a config file, its shared blocks
    (`shared_blocks`) merged in first, as Hydra composes them (the file's own options win)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    own = yaml.safe_load(text) or {}
    header, own_comments = parse_comments(text)
    blocks = shared_blocks(path, own)
    if not blocks:
        return own, header, own_comments, []
    shared: dict = {}
    comments: Dict[str, str] = {}
    for block in blocks:
        bdata, _, bcomments, _ = read_config(block)
        shared.update({k: v for k, v in bdata.items() if k != "defaults"})
        comments.update(bcomments)
    # the file's own options first (the space), then the shared ones, the file's values winning
    data = {k: v for k, v in own.items() if k != "defaults" and k not in shared}
    data.update({k: own.get(k, v) for k, v in shared.items()})
    comments.update(own_comments)
    rest = [d for d in own.get("defaults") or [] if d != "_self_" and not (
        isinstance(d, str) and d.split("@")[0].rsplit("/", 1)[-1].startswith("_"))]
    if rest:
        data["defaults"] = rest
    return data, header, comments, [os.path.relpath(b, CONFIG).replace(os.sep, "/") for b in blocks]


def render_config(group: str, prefix: str, name: str, path: str) -> List[str]:
    data, header, comments, blocks = read_config(path)
    out = [f"### `{name}`", ""]
    facts = [f"`config/{group}/{name}.yaml`"]
    if "_target_" in data:
        facts.append(f"class `{data['_target_']}`")
    defaults = data.get("defaults")
    if defaults:
        bases = [d.split("@")[0] if isinstance(d, str) else format_value(d) for d in defaults if d != "_self_"]
        facts.append("based on " + ", ".join(f"`{b}`" for b in bases) + " (options below override it)")
    if blocks:
        facts.append("shared options from " + ", ".join(f"`config/{b}`" for b in blocks)
                     + " (Hydra `defaults`; included below)")
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
        "YAML files.",
        "",
    ]
    for group, prefix, title, intro in GROUPS:
        out += [f"## {title}", "", intro, ""]
        for name, path in config_files(group):
            out += render_config(group, prefix, name, path)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/configs.md differs from the generated page")
    ap.add_argument("--output", default=OUTPUT)
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.output} is out of date: run python docs/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
