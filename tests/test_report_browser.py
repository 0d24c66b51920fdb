"""The report's suspect cards in a real browser (headless Chromium,
`experiments.report_screenshot`): every card's fields and no external URL, checked in the
rendered page; and the checks fail on a card missing a field and on a page that loads a file
beside it. Skipped where no Chromium is installed (`apt-get install chromium-headless-shell`)."""

import re
import shutil

import numpy as np
import pytest

from l2rw_jax import members
from l2rw_jax.audit import figures
from l2rw_jax.audit import report
from l2rw_jax.audit import sections
from l2rw_jax.audit import suspects_section

BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium installed")

M, C, D, CARDS = 30, 3, 4, 4


def _page(trajectory: bool) -> str:
    """A report page with the suspects section only, from hand-made arrays: 4 cards, with
    the recorded weight trajectory or without."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(C), size=M)
    labels = rng.integers(0, C, M).astype(np.int32)
    mean_BxM = rng.uniform(0.0, 0.1, (4, M))
    count_BxM = np.full((4, M), 2)
    record = {
        "index": np.arange(M),
        "mean_weight": mean_BxM.mean(axis=0),
        "count": count_BxM.sum(axis=0),
        **members.weight_history_columns(mean_BxM * count_BxM, count_BxM, 20),
    }
    if not trajectory:
        record = {k: v for k, v in record.items() if not k.startswith("weight_bin")}
    res = suspects_section.suspect_cards(
        probs,
        labels,
        rng.normal(size=(M, D)),
        num_cards=CARDS,
        recorded=suspects_section.recorded_per_row(record, M),
        trajectory=suspects_section.trajectory_per_row(record, M),
    )
    for c in res["suspects"]:
        c["min_adversarial_eps"] = 0.25
    res["saliency"] = {"steps": 4}
    res["min_adversarial_eps"] = {"eps_max": 0.5, "bracket_width": 0.5 / 16}
    png = figures.image_png(rng.uniform(size=(4, 4, 1)))
    figs = {
        "images": [png] * CARDS,
        "saliency": [figures.saliency_png(rng.normal(size=(4, 4, 1)))] * CARDS,
        "neighbors": [[png] * len(c["neighbors"]) for c in res["suspects"]],
    }
    meta = {"title": "cards", "class_names": ["a", "b", "c"], "seconds": {}, "n_test": 0}
    meta["n_train"] = M
    return report.render_html(meta, [sections.Section("suspects", "Cards", res, figs, [])])


def _check(tmp_path, page: str) -> dict:
    from experiments import report_screenshot

    path = tmp_path / "report.html"
    path.write_text(page)
    return report_screenshot.check_report(str(path), BROWSER, str(tmp_path / "shot.png"), None, 900)


def test_every_card_has_its_fields_and_nothing_loads_from_outside(tmp_path):
    for trajectory in (True, False):
        got = _check(tmp_path, _page(trajectory))
        assert got["passed"], got
        dom = got["dom"]
        assert dom["cards"] == CARDS and dom["card_problems"] == []
        assert (dom["sparklines"], dom["absent_trajectory"]) == (
            (CARDS, 0) if trajectory else (0, CARDS)
        )
        # 2 images per card and its 3 neighbours', all decoded (the browser asks once per
        # distinct data: URI).
        assert dom["images"] == CARDS * (2 + 3) and dom["undecoded_images"] == 0
        assert got["requests"]["data: URIs"] >= 2
        assert got["requests"]["outside the file"] == [] and got["requests"]["the file"] == 1
        with open(tmp_path / "shot.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert got["browser"].startswith("HeadlessChrome/")


def test_the_checks_fail_on_a_missing_field_and_on_a_file_beside_the_page(tmp_path):
    page = _page(True)
    # The second card loses its draws row and its saliency map.
    cards = page.split("<div class='suspect'>")
    cards[2] = re.sub(r"<tr><td class='l'>draws</td>.*?</tr>", "", cards[2], count=1)
    cards[2] = re.sub(r'<img src="[^"]*" alt="saliency">', "", cards[2], count=1)
    got = _check(tmp_path, "<div class='suspect'>".join(cards))
    assert not got["passed"] and not got["checks"]["every card has every field"]
    assert got["dom"]["card_problems"] == [{"card": 2, "missing": ["saliency image", "row draws"]}]
    # An image and a style sheet beside the page (relative URLs: nothing leaves the machine).
    extra = '<img src="pic.png" alt="x"><link rel="stylesheet" href="style.css"></body>'
    got = _check(tmp_path, page.replace("</body>", extra))
    assert not got["passed"]
    checks = got["checks"]
    assert not checks["no external URL in the DOM or CSS"]
    assert not checks["no script/link/iframe/object/embed/base"]
    assert not checks["no request but the file and data: URIs"]
    assert checks["every card has every field"]
    outside = got["requests"]["outside the file"]
    assert sorted(u.rsplit("/", 1)[1] for u in outside) == ["pic.png", "style.css"]
