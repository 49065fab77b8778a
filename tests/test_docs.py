"""Every command in the README and the manual runs as written, and every link resolves.

A checked list rather than an execution: for each command in a fenced ```bash block (and each
inline `python ...` / `bash scripts/...` span), the module or script it names must exist, each
`--flag` must be one its argparse parser (or a parser in a package module it imports) declares,
and each `--config.a.b=` key must exist in the config file it trains. Running the commands would
take minutes; a renamed flag or a moved module is what goes stale, and this catches both in
seconds. docs/lab-notes.md is a record of past runs, so its commands are not checked (its links
are).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_PAGES = [p for p in PAGES if p.name != "lab-notes.md"]
PACKAGE = "minigpt_jax"


# ---------------------------------------------------------------- reading the pages


def _fenced_bash(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each command in ```bash blocks, continuations joined."""
    out, in_bash, fence, pending, start = [], False, False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_bash = not fence and line.strip() in ("```bash", "```sh", "```shell")
            fence = not fence
            continue
        if not (fence and in_bash):
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _inline(text: str) -> list[tuple[int, str]]:
    """Inline code spans that are commands (tables and prose quote them)."""
    out, fence = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            if re.match(r"(python (-m )?(minigpt_jax|scripts/|bench/)|bash scripts/)", span):
                out.append((n, span))
    return out


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every simple command in the checked pages."""
    found = []
    for page in COMMAND_PAGES:
        text = page.read_text()
        for n, line in _fenced_bash(text) + _inline(text):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:  # an unbalanced quote is itself a broken command
                found.append((f"{page.name}:{n}", ["<unparsable>", str(e)]))
                continue
            argv: list[str] = []
            for w in [*words, "&&"]:
                if w in ("&&", ";", "|", "||"):
                    if argv:
                        found.append((f"{page.name}:{n}", argv))
                    argv = []
                else:
                    argv.append(w.strip("[]"))
    return found


# ---------------------------------------------------------------- what the code accepts


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(path: Path) -> frozenset[Path]:
    """The package's own modules that `path` imports (absolute or relative)."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(ROOT).with_suffix("").parts
    if path.name == "__init__.py":
        here = here[:-1] + ("__init__",)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    files = {_module_file(n) for n in names if n.split(".")[0] == PACKAGE}
    return frozenset(f for f in files if f is not None)


@cache
def _own_flags(path: Path) -> frozenset[str]:
    """Option strings given to add_argument in one file."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
        ):
            flags |= {
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and str(a.value).startswith("-")
            }
    return frozenset(flags)


@cache
def _flags(entry: Path) -> frozenset[str]:
    """Every option string declared in `entry` and the package modules it imports."""
    seen, todo, flags = set(), [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        flags |= _own_flags(path)
        todo.extend(_imports(path))
    return frozenset(flags)


@cache
def _config(path: str):
    spec = importlib.util.spec_from_file_location("_doc_config", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _config_key_missing(config, dotted: str) -> str | None:
    node = config
    for i, part in enumerate(dotted.split(".")):
        try:
            present = part in node.keys()
        except AttributeError:
            present = False
        if not present:
            return ".".join(dotted.split(".")[: i + 1])
        node = node[part]
    return None


def _check_train(argv: list[str]) -> list[str]:
    problems, config_file = [], "configs/small.py"
    options = [a for a in argv if a.startswith("--")]
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            config_file = argv[i + 1]
        elif a.startswith("--config="):
            config_file = a.split("=", 1)[1]
    if not (ROOT / config_file).is_file():
        return [f"config file {config_file} does not exist"]
    config = _config(config_file)
    for a in options:
        name = a.split("=", 1)[0]
        if name in ("--config", "--help"):
            continue
        if not name.startswith("--config."):
            problems.append(f"{name}: train takes --config and --config.<key>=value only")
        elif missing := _config_key_missing(config, name.removeprefix("--config.")):
            problems.append(f"{name}: no key {missing!r} in {config_file}")
    return problems


def _check_flags(entry: Path, argv: list[str]) -> list[str]:
    known = _flags(entry)
    wrong = [
        a.split("=", 1)[0]
        for a in argv
        if a.startswith("--") and a.split("=", 1)[0] not in known and a != "--help"
    ]
    return [f"{f}: not a flag of {entry.relative_to(ROOT)}" for f in wrong]


def _problems(argv: list[str]) -> list[str]:
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv and argv[0] in ("srun", "mpirun"):  # launchers: check the command they start
        argv = argv[argv.index("python"):] if "python" in argv else []
    if not argv:
        return []
    if argv[0] == "<unparsable>":
        return [f"cannot parse: {argv[1]}"]
    if argv[0] == "bash":
        script = argv[1] if len(argv) > 1 else ""
        return [] if (ROOT / script).is_file() else [f"no script {script}"]
    if argv[0] != "python" or len(argv) < 2:
        return []  # pip, source, hf download...: not ours to check
    if argv[1] == "-m":
        module = argv[2]
        if module.split(".")[0] != PACKAGE:
            return [f"no file {a}" for a in argv[3:] if a.startswith("tests/")
                    and not (ROOT / a.split("::")[0]).exists()]
        entry = _module_file(module)
        if entry is None:
            return [f"no module {module} (minigpt_jax/{module.split('.', 1)[-1]}.py)"]
        if module in (f"{PACKAGE}.train", f"{PACKAGE}.rl"):  # both take --config.<key> flags
            return _check_train(argv[3:])
        return _check_flags(entry, argv[3:])
    script = ROOT / argv[1]
    if not script.is_file():
        return [f"no script {argv[1]}"]
    return _check_flags(script, argv[2:])


COMMANDS = _commands()


def test_the_pages_hold_commands():
    """A parser that finds nothing would pass everything below."""
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert {"README.md", "BENCHMARKS.md", "data.md", "training.md", "arithmetic.md"} <= where
    assert len(COMMANDS) > 60


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_runs_as_written(where, argv):
    assert not _problems(argv), f"{where}: {' '.join(argv)}\n  " + "\n  ".join(_problems(argv))


def test_a_wrong_flag_key_or_module_is_caught():
    assert _problems(["python", "-m", "minigpt_jax.evaluate", "--run_dir", "r", "--stepz", "1"])
    assert _problems(["python", "-m", "minigpt_jax.train", "--config", "configs/small.py",
                      "--config.model=gpt2-xl"]) == []  # `model` is a key; its value is not checked
    assert _problems(["python", "-m", "minigpt_jax.train", "--config", "configs/small.py",
                      "--config.model.presett=gpt2"])
    assert _problems(["python", "-m", "minigpt_jax.no_such_command"])
    assert _problems(["python", "scripts/no_such_script.py"])
    assert _problems(["bash", "scripts/no_such.sh"])
    assert not _problems(["python", "-m", "minigpt_jax.evaluate", "--run_dir", "r", "--step", "1"])


# ---------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def _anchors(page: Path) -> frozenset[str]:
    anchors, counts, fence = set(), {}, False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.*)", line)):
            slug = _slug(m.group(1))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(anchors)


def _links() -> list[tuple[str, Path, str]]:
    out = []
    for page in PAGES:
        fence = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if not re.match(r"[a-z]+:", target):
                    out.append((f"{page.name}:{n}", page, target))
    return out


LINKS = _links()


def test_pages_link_to_each_other():
    assert len(LINKS) > 30


@pytest.mark.parametrize("where,page,target", LINKS, ids=[f"{w} {t}" for w, _, t in LINKS])
def test_link_resolves(where, page, target):
    path, _, anchor = target.partition("#")
    dest = (page.parent / path).resolve() if path else page
    assert dest.exists(), f"{where}: {target} -> {dest} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in _anchors(dest), f"{where}: no heading #{anchor} in {dest.name}"


def test_slug_matches_github():
    assert _slug("Train step") == "train-step"
    assert _slug("Generation: KV cache") == "generation-kv-cache"
    assert _slug("`init_from`: fine-tuning instead") == "init_from-fine-tuning-instead"
