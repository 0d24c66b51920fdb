"""The report's HTML of the sections on the data: the suspected label issues, a card per
suspect, the estimated noise and the trusted set. Each renderer takes a section's results, its
figures and the class names and returns (summary cards, HTML of the section's body);
`renderers.RENDERERS` maps the sections to them.
"""

from __future__ import annotations

import html

from l2rw_jax.audit import html_parts


def render_label_issues(li: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    cards = []
    main = li.get("suspects_ranking")
    if li["rankings"].get(main):
        first = next(iter(li["rankings"][main].values()))
        cards.append(
            html_parts.card(f"{first['precision']:.3f}", f"precision@{first['k']} ({main})")
        )
    main_quality = (li.get("ranking_quality") or {}).get(main) or {}
    if main_quality.get("auroc") is not None:
        cards.append(html_parts.card(f"{main_quality['auroc']:.3f}", f"AUROC ({main})"))
    out = []
    out.append(
        "<p class='caption'>Training examples ranked from most to least suspect: by the mean L2RW "
        "weight recorded over training (<code>l2rw_weight</code>, low first; ties by final loss), by "
        "the mean of the example's L2RW meta-gradient divided by its batch's RMS "
        "(<code>l2rw_meta_grad</code>, high first: the signal the weight is made of, before the clip "
        "at 0 and the per-batch normalisation), by the robust variant's memory of it "
        "(<code>l2rw_memory</code>, when recorded), by the final model's loss on the "
        "given label (high first; the same order as self-confidence p(given label|x) ascending), and by "
        "confident learning (Northcutt et al. 2021: examples whose confidently predicted class, with "
        "per-class thresholds = mean self-confidence of the class, differs from the given label come "
        "first, then by self-confidence). Scored against the injected-noise mask: AUROC = the share "
        "of (noisy, clean) pairs the ranking orders noisy first, AP = average precision over the "
        "ranking (both as scikit-learn computes them, on the strict order the ranking gives), "
        "precision@k = noisy among the top k / k, recall@k = noisy among the top k / all noisy. "
        "Where the truth is unknown none of these is computed. <code>label_issues.csv</code> "
        "gives every ranking's rank of each row in its <code>rank_&lt;ranking&gt;</code> "
        "column.</p>"
    )
    quality = li.get("ranking_quality")
    if quality:
        ks = list(next(iter(quality.values()))["at_k"].keys())
        header = ["ranking", "AUROC", "AP"] + [
            f"{s}@{k[2:]}" for k in ks for s in ("precision", "recall")
        ]
        out.append(
            html_parts.table(
                header,
                [
                    [name, v["auroc"], v["average_precision"]]
                    + [v["at_k"][k][s] for k in ks for s in ("precision", "recall")]
                    for name, v in quality.items()
                ],
            )
        )
        out.append(
            f"<p class='caption'>{li['n_ranked']} training examples ranked, {li.get('n_noisy')} of them "
            "noisy.</p>"
        )
    elif li["rankings"]:
        ks = list(next(iter(li["rankings"].values())).keys())
        header = ["ranking"] + [f"{s}@{k[2:]}" for k in ks for s in ("precision", "recall")]
        out.append(
            html_parts.table(
                header,
                [
                    [name] + [v[k][s] for k in ks for s in ("precision", "recall")]
                    for name, v in li["rankings"].items()
                ],
            )
        )
        out.append(
            f"<p class='caption'>{li['n_ranked']} training examples ranked, {li.get('n_noisy')} of them "
            "noisy.</p>"
        )
    out.append(
        "<div class='row'>"
        + html_parts.figure(
            figs.get("weight_hist"),
            "Mean L2RW weight of clean and noisy training examples.",
            "weights",
        )
        + html_parts.figure(
            figs.get("data_map"),
            "Data map of the L2RW weights (after Swayamdipta et al. 2020): each drawn training "
            "example at the std of its weight over its draws (x) and its mean weight (y), from "
            "the run's running sums (no history); medians per group in audit.json.",
            "weight data map",
        )
        + html_parts.figure(
            figs.get("meta_grad_hist"),
            "Mean normalised L2RW meta-gradient of clean and noisy training examples "
            "(positive = harmful to the clean loss).",
            "meta-gradients",
        )
        + "</div>"
    )
    out.append(
        html_parts.figure(
            figs.get("suspects"),
            f"Top {len(li['top_suspects'])} suspects by the "
            f"<code>{html.escape(li['suspects_ranking'])}</code> ranking, most suspect first: given and "
            "predicted label, mean weight w and (when recorded) mean normalised meta-gradient g; red = "
            "injected noise, green = clean label.",
            "suspects",
        )
    )
    return cards, out


# How a card names each ranking (label_issues.RANKINGS), in the CSV's column order.
_RANKING_NAMES = {
    "l2rw_meta_grad": "meta-gradient",
    "l2rw_memory": "memory",
    "l2rw_weight": "L2RW weight",
    "final_loss": "final loss",
    "confident_learning": "confident learning",
}


NO_TRAJECTORY = "no weight history in this run"


def _trajectory(values) -> str:
    """A card's weight trajectory: its sparkline with the first and last known bin's mean
    weight; NO_TRAJECTORY when the run recorded none (absent, not 0), "never drawn" when no
    bin drew the row."""
    if values is None:
        return NO_TRAJECTORY
    known = [v for v in values if v is not None]
    if not known:
        return "never drawn"
    title = "mean weight per step bin: " + ", ".join(
        "—" if v is None else format(v, ".3g") for v in values
    )
    return html_parts.sparkline(values, title) + f" {known[0]:.3g} → {known[-1]:.3g}"


def _suspect_card(c: dict, img: str, sal: str | None, nn_imgs: list, recorded: dict, names) -> str:
    """One suspect's card: image and saliency, labels, recorded weight statistics, minimal
    adversarial eps, truth, ranks, neighbours."""
    e = html.escape

    def rec(key, spec):  # recorded, a value is missing only where training never drew the row
        if not recorded.get(key):
            return "not recorded"
        return "never drawn" if c[key] is None else html_parts.fmt(c[key], spec)

    top3 = " · ".join(f"{e(names[t['class']])} {t['prob']:.3f}" for t in c["top3"])
    rows = [
        ("given", f"<b>{e(names[c['given_label']])}</b> (p {c['given_prob']:.3f})"),
        (
            "predicted",
            f"<b>{e(names[c['predicted_label']])}</b> (p {c['predicted_prob']:.3f})",
        ),
        ("top 3", top3),
        ("mean weight", e(rec("mean_weight", ".3g"))),
        ("non-zero share", e(rec("nonzero_share", ".3f"))),
    ]
    if c["draws"] is not None:
        rows.append(("draws", str(int(c["draws"]))))
    rows.append(("weight over training", _trajectory(c.get("weight_trajectory"))))
    if c["mean_meta_grad"] is not None:
        rows.append(("meta-gradient", f"{c['mean_meta_grad']:+.3f}"))
    if "min_adversarial_eps" in c:
        me = c["min_adversarial_eps"]
        rows.append(("min adv. eps", "none found" if me is None else f"{me:.4g}"))
    out = [
        "<div class='suspect'>",
        f"<div class='sh'>#{int(c['position'])} · index <b>{int(c['source_index'])}</b> "
        f"(training row {int(c['train_row'])})</div>",
        f"<div class='sx'>{html_parts.img(img, 'suspect')}"
        + ("" if sal is None else html_parts.img(sal, "saliency"))
        + "</div>",
        "<table>"
        + "".join(f"<tr><td class='l'>{k}</td><td class='l'>{v}</td></tr>" for k, v in rows)
        + "</table>",
    ]
    if c["true_label"] is not None or c["is_noisy"] is not None:
        noisy = c["is_noisy"] if c["is_noisy"] is not None else c["true_label"] != c["given_label"]
        truth = "" if c["true_label"] is None else f"true label {e(names[c['true_label']])}: "
        verdict = "the given label is wrong" if noisy else "the given label is right"
        out.append(
            f"<div class='truth {'noisy' if noisy else 'clean'}'>{truth}{verdict} "
            "(known: synthetic noise)</div>"
        )
    out.append(
        "<div class='sr'>rank: "
        + " · ".join(f"{_RANKING_NAMES.get(k, e(k))} {int(v)}" for k, v in c["ranks"].items())
        + "</div>"
    )
    out.append(
        "<div class='sr'>nearest training images (given label · distance):</div><div class='nn'>"
        + "".join(
            f"<figure>{html_parts.img(b64, 'neighbour')}<figcaption>{e(names[nb['given_label']])}"
            f" · d {nb['distance']:.2f}</figcaption></figure>"
            for nb, b64 in zip(c["neighbors"], nn_imgs)
        )
        + "</div></div>"
    )
    return "".join(out)


def _trajectory_caption(edges) -> str:
    if edges is None:
        return (
            "<b>weight over training</b>: the run recorded no weight trajectory (&quot;"
            + NO_TRAJECTORY
            + "&quot;: not recorded, not flat). "
        )
    return (
        f"<b>weight over training</b>: the example's mean weight in each of {len(edges) - 1} "
        f"equal step bins of the {int(edges[-1])} weighing steps, left to right (a gap where a "
        "bin did not draw it; the scale runs from 0, the grey line, or a lower bin, to the "
        "card's highest bin), with the first and last drawn bin's value. "
    )


def render_suspects(s: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    cards = s["suspects"]
    ranking = html.escape(s["ranked_by"])
    out = [
        f"<p class='caption'>The {len(cards)} training examples the <code>{ranking}</code> "
        "ranking puts first (the order of <code>label_issues.csv</code>), one card each: the "
        "image and its index in your training data (the CSV's <code>source_index</code>), the "
        "given label and the model's prediction with their probabilities, the top-3 classes, the "
        "run's mean L2RW weight and the share of its draws with a non-zero weight (when the run "
        "recorded them; &quot;not recorded&quot; is not 0), its rank under every ranking (1 = "
        "most suspect), and its "
        f"{int(s['num_neighbors'])} nearest training images in penultimate-feature space "
        "(Euclidean, every training row searched) with their given labels and distances. "
        + _trajectory_caption(s.get("weight_trajectory_edges"))
        + "Where "
        "the true label is known (synthetic noise) it is marked, red when the given label is "
        "wrong, green when it is right. Every number is in <code>audit.json</code> "
        "(<code>suspects</code>).</p>",
    ]
    if "saliency" in s:
        me = s["min_adversarial_eps"]
        out.append(
            "<p class='caption'>Next to each image: its integrated gradients for the "
            "<b>predicted</b> label's logit (from the black image, "
            f"{int(s['saliency']['steps'])} steps; red raises the logit, blue lowers it), as in "
            "the mistakes gallery. <b>min adv. eps</b>: the smallest L-inf radius (raw pixels) at "
            "which PGD moves the image out of its predicted class, searched as in the robustness "
            f"section (bracket [0, {me['eps_max']:g}], width {me['bracket_width']:.3g}); "
            "&quot;none found&quot; where PGD found none within the bracket.</p>"
        )
    out.append("<div class='suspects'>")
    sals = figs.get("saliency") or [None] * len(cards)
    for c, img, sal, nn in zip(cards, figs.get("images", []), sals, figs.get("neighbors", [])):
        out.append(_suspect_card(c, img, sal, nn, s["recorded"], names))
    out.append("</div>")
    return [], out


_ESTIMATE_NAMES = {
    "glc": "GLC (Hendrycks et al. 2018)",
    "confident_learning": "confident learning (Northcutt et al. 2021)",
}


def render_noise(nz: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    ests = nz["estimates"]
    known = "true" in nz
    cards = []
    if known:
        for key in ("glc", "confident_learning"):
            err = ests.get(key, {}).get("error") or {}
            if err.get("mean_abs_error") is not None:
                cards.append(
                    html_parts.card(
                        f"{err['mean_abs_error']:.4f}",
                        f"T̂ mean abs error ({'GLC' if key == 'glc' else 'CL'})",
                    )
                )
    out = [
        "<p class='caption'>The label noise as a transition matrix T[i, j] = P(observed label j "
        "| true label i) (rows: true class, columns: observed label), estimated two ways from the "
        "trained model: <b>GLC</b> (Gold Loss Correction, Hendrycks et al. 2018) averages the "
        "model's probabilities over the trusted (clean) examples of each class, their labels "
        "taken as the true ones; <b>confident learning</b> (Northcutt et al. 2021) counts the "
        "confident joint of the given labels and the confidently predicted classes on the "
        "training set (per-class thresholds from the training set), calibrates it to the label "
        "counts and normalises it. Both read a model trained on the noisy labels; the confident "
        "joint wants out-of-sample probabilities, and a model that memorised its training labels "
        "makes the training set look cleaner than it is; GLC wants a model never trained on the "
        "clean set (not a finetune, clean_only or oracle run). A row without examples is unknown "
        "(blank). "
        + (
            "The training set's own T (its true labels against the given ones) is the reference; "
            "the errors are over the rows both know."
            if known
            else "The true labels are unknown here: no reference, no error."
        )
        + " The test set is not used.</p>"
    ]
    rows = []
    for key, est in ests.items():
        err = est.get("error") or {}
        rows.append(
            [
                _ESTIMATE_NAMES.get(key, key),
                est["split"],
                est["n"],
                err.get("mean_abs_error"),
                err.get("max_abs_error"),
                err.get("frobenius_error"),
            ]
        )
    header = ["estimate", "from", "examples", "mean |T̂ − T|", "max |T̂ − T|", "‖T̂ − T‖_F"]
    if not known:
        header, rows = header[:3], [r[:3] for r in rows]
    out.append(html_parts.table(header, rows, left_cols=2))
    out.append(
        html_parts.figure(
            figs.get("transitions"),
            "Transition matrices on one colour scale: the estimates side by side"
            + (", then the training set's true T." if known else "."),
            "transition matrices",
        )
    )
    return cards, out


def render_trusted_set(ts: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    if not ts.get("top_suspects"):
        return [], []
    cards = [html_parts.card(f"{ts['n_flagged']} of {ts['n_clean']}", "clean labels flagged")]
    out = [
        "<p class='caption'>L2RW trusts its clean set absolutely: at the final model, with the "
        "whole training set as one batch and an SGD look-ahead, training example i gets the "
        "weight w<sub>i</sub> ∝ max(0, c<sub>i</sub>), c<sub>i</sub> = (1/M) Σ<sub>j</sub> "
        "g<sub>i</sub>·g<sub>j</sub> (Ren et al. 2018), g the output layer's per-example loss "
        "gradients (closed form). c is a mean over the M clean examples, so leaving clean "
        "example j out is exact: c<sub>i,−j</sub> = (M c<sub>i</sub> − "
        "g<sub>i</sub>·g<sub>j</sub>) / (M − 1), then clipped and normalised again into "
        "w<sub>i,−j</sub>. <b>Influence</b> = Σ<sub>i</sub> |w<sub>i,−j</sub> − w<sub>i</sub>| "
        "(0 to 2); <b>endorsement</b> = the weight j's presence adds to the training examples whose "
        "given label the model's prediction disputes. Ranked by the loss on the given label; "
        f"<b>flagged</b>: predicted ≠ given, p(given label) &lt; {ts['flag_probability']:g} "
        f"and endorsement &gt; 0. The rule gives {ts['disputed_weight']:.3f} of the weight to the "
        f"{ts['n_disputed_train']} of {ts['n_train']} training examples the model disputes; "
        f"the model disputes {ts['n_disputed_clean']} of the {ts['n_clean']} clean labels. "
        "Every clean example is in <code>trusted_set.csv</code>.</p>"
    ]
    out.append(
        html_parts.table(
            [
                "rank",
                "clean row",
                "source index",
                "given",
                "predicted",
                "confidence",
                "loss",
                "influence",
                "endorsement",
                "flagged",
            ],
            [
                [
                    s["rank"],
                    s["clean_row"],
                    s["source_index"],
                    names[s["given_label"]],
                    names[s["predicted_label"]],
                    s["confidence"],
                    s["loss"],
                    s["influence"],
                    s["endorsement"],
                    "yes" if s["flagged"] else "",
                ]
                for s in ts["top_suspects"]
            ],
        )
    )
    out.append(
        html_parts.figure(
            figs.get("scatter"),
            "Each clean example's loss on its given label against its leave-one-out influence "
            "on the training weights.",
            "trusted set",
        )
    )
    return cards, out
