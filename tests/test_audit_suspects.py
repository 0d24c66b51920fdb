"""The card per suspect on hand-made arrays: the ranking's head, brute-force neighbours, the
recorded statistics (absent, not 0), the config check and the cards' HTML."""

import re

import numpy as np
import pytest

from l2rw_jax.audit import figures
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import renderers
from l2rw_jax.audit import suspects_section

M, C, D = 40, 4, 5


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=M)
    labels = rng.integers(0, C, M).astype(np.int32)
    feats = rng.normal(size=(M, D))
    return probs, labels, feats


def _brute_force_neighbors(feats, row, k):
    d = np.linalg.norm(feats - feats[row], axis=1)
    d[row] = np.inf  # the suspect itself is not its own neighbour
    nn = np.argsort(d, kind="stable")[:k]
    return nn, d[nn]


def test_cards_are_the_head_of_the_ranking_they_name():
    probs, labels, feats = _arrays()
    loss = -np.log(probs[np.arange(M), labels])
    # Nothing recorded: the final loss, highest first; mean weight and share None, not 0.
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=7)
    assert res["ranked_by"] == "final_loss"
    assert [c["train_row"] for c in res["suspects"]] == np.argsort(-loss)[:7].tolist()
    assert res["recorded"] == {k: False for k in suspects_section.RECORDED}
    for j, c in enumerate(res["suspects"], 1):
        assert c["position"] == c["ranks"]["final_loss"] == j
        assert c["mean_weight"] is None and c["nonzero_share"] is None and c["draws"] is None
        r = c["train_row"]
        assert c["given_label"] == labels[r] and c["given_prob"] == probs[r, labels[r]]
        assert c["predicted_label"] == probs[r].argmax()
        assert c["predicted_prob"] == probs[r].max()
        assert [t["class"] for t in c["top3"]] == np.argsort(-probs[r])[:3].tolist()
        assert c["true_label"] is None and c["is_noisy"] is None
    # A recorded weight (distinct values): lowest weight first. Row 5 has the lowest weight
    # but was never drawn (count 0): no score, ranked last, and its card says so.
    w = np.random.default_rng(1).permutation(M) / M
    w[5] = -1.0
    count = np.full(M, 3)
    count[5] = 0
    record = {
        "index": np.arange(M),
        "mean_weight": w,
        "count": count,
        "weight_sum": 3 * w,
        "weight_sq_sum": 3 * w**2,
        "nonzero_count": np.where(np.arange(M) % 2 == 0, 3, 1) * (count > 0),
    }
    recorded = suspects_section.recorded_per_row(record, M)
    res = suspects_section.suspect_cards(
        probs, labels, feats, num_cards=M, recorded=recorded, true_labels_M=labels
    )
    assert res["ranked_by"] == "l2rw_weight"
    want = [r for r in np.argsort(w) if r != 5] + [5]
    assert [c["train_row"] for c in res["suspects"]] == want
    assert [c["ranks"]["l2rw_weight"] for c in res["suspects"]] == list(range(1, M + 1))
    first, last = res["suspects"][0], res["suspects"][-1]
    assert first["mean_weight"] == w[want[0]] and first["draws"] == 3
    assert first["nonzero_share"] == (1.0 if want[0] % 2 == 0 else 1 / 3)
    assert last["mean_weight"] is None and last["draws"] == 0 and last["nonzero_share"] is None
    # Every ranking's place of the first card, as label_issues ranks every row.
    for name in ("final_loss", "confident_learning"):
        order, _ = label_issues.rank_label_issues(
            loss,
            mean_weight_N=recorded["mean_weight"],
            flags_N=label_issues.confident_learning_flags(probs, labels),
            ranked_by=name,
        )
        assert first["ranks"][name] == int(np.flatnonzero(order == want[0])[0]) + 1
    # More cards than rows: one per row.
    assert len(suspects_section.suspect_cards(probs, labels, feats, num_cards=99)["suspects"]) == M


def test_neighbours_equal_brute_force_and_leave_out_the_suspect():
    probs, labels, feats = _arrays(2)
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=6, num_neighbors=3)
    rows = [c["train_row"] for c in res["suspects"]]
    feats[rows[1] + 1 if rows[1] + 1 < M else 0] = feats[rows[1]]  # an exact duplicate
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=6, num_neighbors=3)
    for c in res["suspects"]:
        nn, d = _brute_force_neighbors(feats, c["train_row"], 3)
        assert [n["train_row"] for n in c["neighbors"]] == nn.tolist()
        assert [n["given_label"] for n in c["neighbors"]] == labels[nn].tolist()
        np.testing.assert_allclose([n["distance"] for n in c["neighbors"]], d, atol=1e-6)
    assert res["suspects"][1]["neighbors"][0]["distance"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "num_cards, num_neighbors, match",
    [
        (0, 3, r"^num_cards must be an integer >= 1, got 0\.$"),
        (2.5, 3, r"^num_cards must be an integer >= 1, got 2\.5\.$"),
        (True, 3, r"^num_cards must be an integer >= 1, got True\.$"),
        (12, 0, r"^card_neighbors must be an integer in \[1, 39\]"),
        (12, 40, r"^card_neighbors must be an integer in \[1, 39\] .*got 40\.$"),
    ],
)
def test_bad_card_settings_are_one_line_errors(num_cards, num_neighbors, match):
    probs, labels, feats = _arrays()
    with pytest.raises(ValueError, match=match):
        suspects_section.suspect_cards(
            probs, labels, feats, num_cards=num_cards, num_neighbors=num_neighbors
        )


def _cards_html(res, names):
    png = figures.image_png(np.zeros((2, 2, 1)))
    figs = {
        "images": [png] * len(res["suspects"]),
        "neighbors": [[png] * len(c["neighbors"]) for c in res["suspects"]],
    }
    _, body = renderers.RENDERERS["suspects"](res, figs, names)
    page = "".join(body)
    return page, page.split("<div class='suspect'>")[1:]


def test_the_html_has_one_card_per_suspect_with_its_labels():
    probs, labels, feats = _arrays(3)
    names = ["cat", "dog", "<fox>", "emu"]
    res = suspects_section.suspect_cards(
        probs, labels, feats, num_cards=5, true_labels_M=(labels + 1) % C
    )
    page, cards = _cards_html(res, names)
    assert len(cards) == 5 and page.count("<div class='suspect'>") == 5
    for c, card in zip(res["suspects"], cards):
        given = re.search(r"given</td><td class='l'><b>([^<]*)</b>", card).group(1)
        pred = re.search(r"predicted</td><td class='l'><b>([^<]*)</b>", card).group(1)
        esc = lambda k: names[k].replace("<", "&lt;").replace(">", "&gt;")
        assert (given, pred) == (esc(c["given_label"]), esc(c["predicted_label"]))
        assert f"index <b>{c['source_index']}</b>" in card
        assert f"true label {esc(c['true_label'])}: the given label is wrong" in card
        assert card.count("mean weight</td><td class='l'>not recorded") == 1
        assert card.count("<figcaption>") == 3
    assert "<fox>" not in page
    # Recorded, but one row never drawn: it comes last and its card says so (not 0).
    w = np.linspace(0.0, 1.0, M)
    w[0] = np.nan
    recorded = suspects_section.recorded_per_row({"index": np.arange(M), "mean_weight": w}, M)
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=M, recorded=recorded)
    page, cards = _cards_html(res, names)
    assert res["suspects"][-1]["train_row"] == 0 and len(cards) == M
    never = ["mean weight</td><td class='l'>never drawn" in card for card in cards]
    assert never == [False] * (M - 1) + [True]
    assert "#1 · index <b>1</b>" in cards[0]  # w[1] = 1 / 39, the lowest recorded weight
    assert "mean weight</td><td class='l'>0.0256" in cards[0]
    # Without the truth no verdict is printed.
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=2)
    page, cards = _cards_html(res, names)
    assert len(cards) == 2 and not [card for card in cards if "given label is" in card]


def test_the_html_shows_each_cards_saliency_and_min_eps():
    probs, labels, feats = _arrays(5)
    res = suspects_section.suspect_cards(probs, labels, feats, num_cards=4)
    eps = [0.0625, None, 0.5, 1 / 3]  # None: PGD found no fooling image within eps_max
    for c, e in zip(res["suspects"], eps):
        c["min_adversarial_eps"] = e
    res["saliency"] = {"steps": 16}
    res["min_adversarial_eps"] = {"eps_max": 0.5, "bracket_width": 0.5 / 2**6}
    rng = np.random.default_rng(6)
    sal = [figures.saliency_png(rng.normal(size=(3, 2, 1))) for _ in range(4)]
    png = figures.image_png(np.zeros((2, 2, 1)))
    figs = {
        "images": [png] * 4,
        "saliency": sal,
        "neighbors": [[png] * len(c["neighbors"]) for c in res["suspects"]],
    }
    _, body = renderers.RENDERERS["suspects"](res, figs, ["a", "b", "c", "d"])
    page = "".join(body)
    cards = page.split("<div class='suspect'>")[1:]
    assert len(cards) == 4 and "integrated gradients for the <b>predicted</b> label" in page
    for card, s, shown in zip(cards, sal, ["0.0625", "none found", "0.5", "0.3333"]):
        assert card.count('alt="saliency"') == 1 and f'base64,{s}" alt="saliency"' in card
        assert f"min adv. eps</td><td class='l'>{shown}</td>" in card


def test_saliency_png_is_the_bwr_map_of_the_channel_sum():
    import base64
    import io

    from matplotlib import colormaps
    from PIL import Image

    attr = np.zeros((2, 3, 3))
    attr[0, 0] = [1.0, 1.0, 0.0]  # sum 2: the largest |value|, saturated red
    attr[1, 2] = [-0.5, -0.5, 0.0]  # sum -1: half-way to blue
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(figures.saliency_png(attr)))))
    want = np.round(colormaps["bwr"](np.array([[1.0, 0.5, 0.5], [0.5, 0.5, 0.25]]))[..., :3] * 255)
    np.testing.assert_array_equal(back, want.astype(np.uint8))
    with pytest.raises(ValueError, match=r"H x W x C, got shape \(4, 4\)"):
        figures.saliency_png(np.zeros((4, 4)))


def test_image_png_keeps_every_pixel():
    import base64
    import io

    from PIL import Image

    rng = np.random.default_rng(4)
    for img in (rng.integers(0, 256, (5, 7, 1)), rng.integers(0, 256, (4, 3, 3))):
        png = base64.b64decode(figures.image_png(img / 255.0))
        back = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(back.reshape(img.shape), img)
    with pytest.raises(ValueError, match=r"C in \(1, 3\), got shape \(4, 4, 2\)"):
        figures.image_png(np.zeros((4, 4, 2)))


def test_sparkline_by_hand():
    from l2rw_jax.audit import html_parts

    # 4 bins, the second never drawn: a dot (bin 0 alone) and a line (bins 2-3), no point at
    # bin 1. x = 2 + b * 92 / 3; y = 22 - v / 0.75 * 20 (scale 0..0.75, 2 px padding).
    svg = html_parts.sparkline([0.5, None, 0.25, 0.75], "t<")
    assert svg.startswith("<svg class='spark' width='96' height='24'") and svg.endswith("</svg>")
    assert "<circle cx='2.0' cy='8.7' r='1.5'" in svg
    assert "<polyline points='63.3,15.3 94.0,2.0'" in svg and svg.count("<polyline") == 1
    assert "<line x1='0' y1='22.0' x2='96' y2='22.0'" in svg  # the zero baseline
    assert "<title>t&lt;</title>" in svg and "http" not in svg and "href" not in svg
    assert html_parts.sparkline([None, None], "t") == ""
    # Below 0: the scale starts at the lowest value, the baseline sits at 0.
    svg = html_parts.sparkline([-1.0, 1.0], "t")
    assert "<polyline points='2.0,22.0 94.0,2.0'" in svg and "y1='12.0'" in svg


def test_cards_show_the_weight_trajectory_or_say_it_is_absent():
    from l2rw_jax import members

    probs, labels, feats = _arrays(7)
    # Row r's weights: 3 draws in each of 4 bins, mean (r + b) / 100 in bin b; row 0 never
    # drawn in bin 1, row 1 in no bin at all.
    mean_BxM = (np.arange(M)[None, :] + np.arange(4)[:, None]) / 100.0
    count_BxM = np.full((4, M), 3)
    count_BxM[1, 0] = 0
    count_BxM[:, 1] = 0
    record = {
        "index": np.arange(M),
        "mean_weight": np.linspace(0.0, 1.0, M),
        "count": count_BxM.sum(axis=0),
        **members.weight_history_columns(mean_BxM * count_BxM, count_BxM, 40),
    }
    traj = suspects_section.trajectory_per_row(record, M)
    res = suspects_section.suspect_cards(
        probs,
        labels,
        feats,
        num_cards=M,
        recorded=suspects_section.recorded_per_row(record, M),
        trajectory=traj,
    )
    assert res["weight_trajectory_edges"] == [0, 10, 20, 30, 40]
    page, cards = _cards_html(res, ["a", "b", "c", "d"])
    assert len(cards) == M and "4 equal step bins of the 40 weighing steps" in page
    for c, card in zip(res["suspects"], cards):
        r = c["train_row"]
        want = [
            None if count_BxM[b, r] == 0 else pytest.approx(mean_BxM[b, r], rel=1e-6)
            for b in range(4)
        ]
        assert c["weight_trajectory"] == want
        if r == 1:
            assert "weight over training</td><td class='l'>never drawn" in card
            assert "<svg" not in card
            continue
        assert card.count("<svg class='spark'") == 1 and "no weight history" not in card
        shown = ", ".join("—" if v is None else f"{v:.3g}" for v in c["weight_trajectory"])
        assert f"<title>mean weight per step bin: {shown}</title>" in card
        known = [v for v in c["weight_trajectory"] if v is not None]
        assert f"</svg> {known[0]:.3g} → {known[-1]:.3g}</td>" in card
        # Row 0's bin 1 is a gap: a dot for bin 0, a line for bins 2-3.
        assert (card.count("<circle"), card.count("<polyline")) == ((1, 1) if r == 0 else (0, 1))
    # A record without the trajectory (written before it was kept): absent, not flat or 0.
    old = {k: v for k, v in record.items() if not k.startswith("weight_bin")}
    assert suspects_section.trajectory_per_row(old, M) is None
    res = suspects_section.suspect_cards(
        probs,
        labels,
        feats,
        num_cards=3,
        recorded=suspects_section.recorded_per_row(old, M),
        trajectory=None,
    )
    assert res["weight_trajectory_edges"] is None
    page, cards = _cards_html(res, ["a", "b", "c", "d"])
    assert "<svg" not in page and "the run recorded no weight trajectory" in page
    for c, card in zip(res["suspects"], cards):
        assert c["weight_trajectory"] is None
        assert "weight over training</td><td class='l'>no weight history in this run</td>" in card
    with pytest.raises(ValueError, match=r"trajectory\['mean'\] must be 40 x B"):
        suspects_section.suspect_cards(
            probs, labels, feats, trajectory={"mean": traj["mean"][:5], "edges": traj["edges"]}
        )
