"""examples/quickstart.ipynb runs from top to bottom (nbclient, a real kernel) and shows what it
promises: L2RW above ERM on the noisy digits, the flipped labels at the head of the suspects,
the audit report inline, the trusted-set ranking and the transition-matrix heat maps."""

import csv
import os
import re

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _rich(nb, mime: str) -> list:
    """Every display output of `mime` in the code cells, in order."""
    return [
        o["data"][mime]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and mime in o.get("data", {})
    ]


def test_notebook_is_saved_without_outputs():
    # Saved cleared: small diffs, and no stale numbers that the code no longer produces.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "WORKDIR = " in params[0].source
    workdir = str(tmp_path_factory.mktemp("notebook"))
    params[0].source = params[0].source.replace(
        'WORKDIR = "workdirs/quickstart_notebook"', f"WORKDIR = {workdir!r}"
    )
    # The kernel starts in the repository root, so it imports this checkout's l2rw_jax.
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    ).execute()
    return nb, workdir


def test_notebook_trains_ranks_and_audits(executed):
    nb, workdir = executed
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    erm = float(re.search(r"ERM test accuracy: ([0-9.]+)", text).group(1))
    l2rw = float(re.search(r"L2RW test accuracy: ([0-9.]+)", text).group(1))
    # Measured 0.6877 vs 0.9370 (deterministic on CPU): ERM has fitted the 40% flips by then.
    assert l2rw > erm + 0.1
    found = re.search(r"(\d+) training labels ranked, (\d+) of them", text)
    ranked, flipped = int(found.group(1)), int(found.group(2))
    assert ranked == 1400 - 100 and flipped == round(0.4 * ranked)  # 100 clean; 40% of the rest
    assert float(re.search(r"precision@\d+: ([0-9.]+)", text).group(1)) > 0.8  # measured 0.942
    # The report, inline: the audit cell's rich output is the whole page (figures embedded).
    (html,) = _rich(nb, "text/html")
    assert "Finding mislabeled examples" in html and "data:image/png;base64," in html
    audit_dir = os.path.join(workdir, "l2rw", "audit")
    with open(os.path.join(audit_dir, "label_issues.csv")) as f:
        assert len(f.readlines()) == 1 + ranked
    assert os.path.exists(os.path.join(audit_dir, "audit.json"))


def test_notebook_shows_the_trusted_set_and_the_noise_estimate(executed):
    nb, workdir = executed
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    audit_dir = os.path.join(workdir, "l2rw", "audit")
    with open(os.path.join(audit_dir, "trusted_set.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    # The table: its header, then the CSV's first 8 rows (rank, source_index, given, predicted).
    head = re.search(
        r"rank +source_index +given +predicted +loss +influence +flagged\n((?:.*\n){8})", text
    )
    assert head, text
    shown = [line.split() for line in head.group(1).splitlines()]
    want = [
        [r[k] for k in ("rank", "source_index", "given_label", "predicted_label")] for r in rows
    ]
    assert [s[:4] for s in shown] == want[:8] and [s[0] for s in shown] == list("12345678")
    found = re.search(r"(\d+) of (\d+) clean labels flagged", text)
    assert (int(found.group(1)), int(found.group(2))) == (
        sum(r["flagged"] == "1" for r in rows),
        len(rows),
    )
    # 10 per class, drawn with their true labels: the markdown says nothing should be flagged
    # (measured: 0; the 4 the model disputes keep p(given) >= 0.2, far above the 5% bar).
    assert len(rows) == 100 and found.group(1) == "0"
    # The noise section: each estimate's error printed, the heat maps shown as an image.
    assert re.search(r"glc: mean \|T̂ - T\| = [0-9.]+", text)
    assert re.search(r"confident_learning: mean \|T̂ - T\| = [0-9.]+", text)
    (png,) = _rich(nb, "image/png")
    assert len(png) > 1000  # base64 of a real picture, not an empty figure
