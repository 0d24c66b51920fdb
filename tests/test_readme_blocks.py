"""The README and docs/ say what runs: every ```python block runs as written, every command of a
```bash block or of an inline `python -m ...` names a module and flags that exist, every
relative link points at a file, and no page carries an issue number.

The python blocks of one page run in order, each in its own interpreter, in one scratch
directory shared by all pages (README.md first: docs/audit.md audits the README example's run).
A block whose first line is ``# <name>.py ...`` is a file the next blocks import: it is written
there under that name. A block preceded by ``<!-- not run: <why> -->`` is skipped; that is only
for blocks that cannot run in CI (a download), and the comment must say why.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
# Pages other branches add; linked from the README before they land.
PENDING_LINKS = {"docs/inputs.md", "docs/your_data.md", "docs/noise.md"}

_FENCE = re.compile(r"^```(\w*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
_MODULE_FILE = re.compile(r"^#\s*([A-Za-z_]\w*\.py)\b")
_ISSUE = re.compile(r"issue[ _#-]?\d|§\s*\d+\s+of\s+(the\s+)?issue", re.IGNORECASE)


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


@functools.lru_cache(maxsize=None)
def _blocks(path: str) -> tuple:
    """(language, code, line number, reason it is not run or None) of each fenced block."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = _NOT_RUN.match(prev)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        out.append(
            (m.group(1), "\n".join(lines[i + 1 : j]), start + 1, skip.group(1) if skip else None)
        )
        i = j + 1
    return tuple(out)


# ------------------------------------------------------------------------ python blocks run


def _env(cwd: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, cwd, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    env["MPLBACKEND"] = "Agg"
    env.setdefault("L2RW_DEV_DATA", "../shared/data")  # what the docs export; read lazily
    return env


def _run_page(path: str, cwd: str) -> None:
    for lang, code, line, skip in _blocks(path):
        if lang != "python" or skip is not None:
            continue
        where = f"{_rel(path)}:{line}"
        m = _MODULE_FILE.match(code)
        if m:  # a file the next blocks import
            compile(code, where, "exec")
            with open(os.path.join(cwd, m.group(1)), "w", encoding="utf-8") as f:
                f.write(code + "\n")
            continue
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=cwd,
            env=_env(cwd),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (
            f"the python block at {where} failed:\n{code}\n--- stderr:\n{proc.stderr[-3000:]}"
        )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return {"dir": str(tmp_path_factory.mktemp("doc_blocks")), "done": set()}


def _ensure_ran(path: str, scratch) -> None:
    if path not in scratch["done"]:
        scratch["done"].add(path)
        _run_page(path, scratch["dir"])


@pytest.mark.parametrize(
    "path", [p for p in PAGES if any(b[0] == "python" for b in _blocks(p))], ids=_rel
)
def test_python_blocks_run(path, scratch):
    _ensure_ran(README, scratch)  # other pages use the README example's run
    _ensure_ran(path, scratch)


def test_not_run_blocks_say_why():
    for path in PAGES:
        for lang, _, line, skip in _blocks(path):
            if skip is not None:
                assert lang == "python" and len(skip) >= 10, (
                    f"{_rel(path)}:{line}: '<!-- not run: ... -->' needs a reason, before a "
                    "python block"
                )


def test_the_readme_example_ranks_flipped_labels_first(scratch):
    # The README's first python block trains on digits with 40% flipped labels and prints the
    # most suspect rows; they must be mostly flipped ones, or the example shows nothing.
    _ensure_ran(README, scratch)
    import numpy as np

    with np.load(os.path.join(scratch["dir"], "workdirs", "digits", "example_weights.npz")) as z:
        flipped = set(z["source_index"][z["is_noisy"]].tolist())
        assert 0.3 < len(flipped) / len(z["source_index"]) < 0.5


# --------------------------------------------------------------- commands name real flags

_PYTHON = re.compile(r"(^|/)python[0-9.]*$")


def _commands(text: str) -> list[list[str]]:
    """The `python -m <module> args...` commands of a shell text, as argument lists."""
    text = re.sub(r"\\\n", " ", text)
    cmds = []
    for raw in text.split("\n"):
        line = re.sub(r"(^|\s)#.*$", "", raw)
        for part in re.split(r"&&|\|\||;|\|", line):
            try:
                toks = shlex.split(part)
            except ValueError:
                continue
            while toks and re.match(r"^[A-Z_]+=", toks[0]):
                toks = toks[1:]
            if len(toks) >= 3 and _PYTHON.search(toks[0]) and toks[1] == "-m":
                cmds.append(toks[2:])
    return cmds


def _all_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in PAGES:
        text = open(path, encoding="utf-8").read()
        for lang, code, line, _ in _blocks(path):
            if lang in ("bash", "sh", "shell"):
                found += [(f"{_rel(path)}:{line}", c) for c in _commands(code)]
        # inline commands: `python -m experiments.x --flag ...` (may wrap over lines)
        no_blocks = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        for m in re.finditer(r"`((?:\.venv/bin/)?python3? -m [^`]+)`", no_blocks):
            found += [
                (f"{_rel(path)} (inline)", c) for c in _commands(m.group(1).replace("\n", " "))
            ]
    return [(w, c) for w, c in found if c[0].split(".")[0] in ("experiments", "benchmarks")]


def _help(module: str, config_args: tuple[str, ...]) -> tuple[int, str]:
    """The module's flag help, after parsing the given --config / --config.* flags (absl
    programs: the config file is loaded and each override checked); argparse: --help."""
    args = [sys.executable, "-m", module, *config_args, "--helpfull"]
    proc = subprocess.run(
        args, cwd=ROOT, env=_env(ROOT), capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    if "unrecognized arguments: --helpfull" in out:  # argparse
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=ROOT,
            env=_env(ROOT),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return (0 if proc.returncode == 0 else proc.returncode), proc.stdout + proc.stderr
    ok = proc.returncode == 1 and "Flags parsing error" not in out  # absl's help exits 1
    return (0 if ok else proc.returncode or 99), out


def test_documented_commands_use_real_modules_and_flags():
    commands = _all_commands()
    assert len(commands) >= 20, len(commands)
    groups: dict[tuple, list] = {}
    for where, (module, *args) in commands:
        assert os.path.exists(os.path.join(ROOT, *module.split(".")) + ".py"), (
            f"{where}: no module {module}"
        )
        config = tuple(a for a in args if a.startswith("--config=") or a.startswith("--config."))
        base = tuple(a for a in config if a.startswith("--config="))
        groups.setdefault((module, base), []).append((where, args, config))
    jobs = {}
    with futures.ThreadPoolExecutor(max_workers=4) as pool:
        for (module, base), items in groups.items():
            overrides = tuple(
                dict.fromkeys(a for _, _, cfg in items for a in cfg if a.startswith("--config."))
            )
            jobs[(module, base)] = pool.submit(_help, module, base + overrides)
    for (module, base), items in groups.items():
        rc, text = jobs[(module, base)].result()
        wheres = sorted({w for w, _, _ in items})
        assert rc == 0, f"{module} {' '.join(base)} (from {wheres}) does not parse:\n{text[-2000:]}"
        for where, args, _ in items:
            for arg in args:
                if not arg.startswith("--") or arg.startswith("--config"):
                    continue
                name, _, value = arg[2:].partition("=")
                if name == "out" and value.startswith("benchmarks/results/"):
                    assert os.path.exists(os.path.join(ROOT, value)), f"{where}: no {value}"
                assert re.search(rf"--(\[no\])?{re.escape(name)}\b", text), (
                    f"{where}: {module} has no flag --{name}"
                )


def test_ci_runs_the_readmes_second_command():
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read().strip().split("\n")[-1]
    bash = [code for lang, code, _, _ in _blocks(README) if lang == "bash"]
    first = [line for line in bash[0].split("\n") if line and not line.startswith("#")]
    assert first[1] == ci, (first, ci)
    assert first[0].endswith("-m experiments.quickstart")


# ------------------------------------------------------------------------ links, issue numbers


def test_relative_links_point_at_files():
    for path in PAGES + [os.path.join(ROOT, "CHANGELOG.md")]:
        text = open(path, encoding="utf-8").read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file = os.path.normpath(os.path.join(os.path.dirname(path), target.split("#")[0]))
            if _rel(file) in PENDING_LINKS:
                continue
            assert os.path.exists(file), f"{_rel(path)}: broken link {target}"


def test_readme_is_a_front_door():
    assert len(open(README, encoding="utf-8").read().split("\n")) <= 260


def test_no_issue_numbers_in_docs_and_code():
    files = [README] + glob.glob(os.path.join(ROOT, "docs", "*.md"))
    for top in ("l2rw_jax", "experiments"):
        files += glob.glob(os.path.join(ROOT, top, "**", "*.py"), recursive=True)
    for path in files:
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            assert not _ISSUE.search(line), f"{_rel(path)}:{n}: {line.strip()}"
