"""The report's HTML, one renderer per section: a section's results and figures -> its summary
cards and the HTML of its body, every user string escaped.

`RENDERERS` maps a section's name to its renderer; `render_generic` draws any other section
(its scalars as a table, then its figures). `report.render_html` lays them out on the page.
"""

from __future__ import annotations

import html
from typing import Sequence

# How the robustness section names what the attacks ascend (attacks.py explains the choice). A
# result without the key predates the option and used the cross-entropy.
_OBJECTIVE_TEXT = {
    "margin": (
        "The steps ascend the logit margin max<sub>j≠y</sub> z<sub>j</sub> − z<sub>y</sub> "
        "(Carlini &amp; Wagner 2017), whose gradient does not saturate on confident predictions "
        "and whose sign, hence every result, does not change when the logits are multiplied by a "
        "positive constant. "
    ),
    "cross_entropy": (
        "The steps ascend the cross-entropy, whose float32 gradient loses its true-class part past "
        "a logit margin of about 17 and vanishes past about 88: confident predictions can look "
        "robust because the attack stalls, so these numbers may overstate robustness. "
    ),
}


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{html.escape(b64)}" alt="{html.escape(alt)}">'


def _figure(b64: str | None, caption: str, alt: str) -> str:
    if b64 is None:
        return ""
    return f"<figure>{_img(b64, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence], left_cols: int = 1) -> str:
    def cell(v, tag, i):
        cls = ' class="l"' if i < left_cols else ""
        if isinstance(v, float):
            v = f"{v:.4f}"
        return f"<{tag}{cls}>{html.escape('—' if v is None else str(v))}</{tag}>"

    head = "".join(cell(h, "th", i) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell(v, "td", i) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def _fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


# One renderer per section kind: (summary cards, HTML of the section's body). A section whose
# name has no renderer here is shown by `render_generic`.
def _render_mistakes(m: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    cards = [_card(f"{m['top_k_accuracy']['top1']:.4f}", "top-1 accuracy")]
    if "top5" in m["top_k_accuracy"]:
        cards.append(_card(f"{m['top_k_accuracy']['top5']:.4f}", "top-5 accuracy"))
    bins = m["calibration"]["num_bins"]
    cards.append(_card(f"{m['calibration']['ece']:.4f}", f"ECE ({bins} bins)"))
    cards.append(
        _card(f"{names[m['worst_class']]}: {m['worst_class_accuracy']:.3f}", "worst class accuracy")
    )
    out = []
    out.append(
        "<p class='caption'>Accuracy per class on the whole test set, the confusion matrix (rows: "
        "true class, colour: fraction of the row, numbers: counts) and calibration: the expected "
        "calibration error bins the confidence (max softmax probability) into 15 equal-width bins "
        "((m-1)/15, m/15] and averages |accuracy - confidence| weighted by the bin's share of the "
        "examples (Guo et al. 2017).</p>"
    )
    out.append(
        _table(
            ["", "value"],
            [
                *[[f"top-{k[3:]} accuracy", v] for k, v in m["top_k_accuracy"].items()],
                ["mean per-class accuracy", m["mean_class_accuracy"]],
                [f"worst class ({names[m['worst_class']]})", m["worst_class_accuracy"]],
                ["gap mean − worst", m["gap_mean_minus_worst"]],
                ["ECE", m["calibration"]["ece"]],
            ],
        )
    )
    out.append(
        "<div class='row'>"
        + _figure(figs.get("per_class"), "Accuracy per class (worst in red).", "per-class accuracy")
        + _figure(figs.get("confusion"), "Confusion matrix.", "confusion matrix")
        + _figure(
            figs.get("reliability"),
            "Reliability diagram: accuracy per confidence bin against "
            "the diagonal; below it counts per bin (log scale).",
            "reliability diagram",
        )
        + "</div>"
    )
    if m["gallery"]:
        ig = m.get("integrated_gradients", {})
        out.append("<h3>Most confident mistakes</h3>")
        out.append(
            "<p class='caption'>The test images the model got wrong with the highest confidence. Each row: "
            "the image with its true class and top-3 predictions; integrated gradients of the predicted "
            f"class logit from a black baseline ({ig.get('steps')} trapezoid steps; red = pushes towards "
            "the prediction, blue = against; the completeness error |Σ attributions − (f(x) − f(baseline))| "
            "relative to |f(x) − f(baseline)| is printed, max "
            f"{_fmt(ig.get('max_relative_completeness_error'), '.1e')}); Grad-CAM at the last conv layer when "
            f"the model has one; then the {len(m['gallery'][0]['neighbors'])} nearest training images in "
            f"penultimate-feature space (searched among {m['neighbor_pool_size']} training images) with "
            "their given labels — the example-based explanation.</p>"
        )
        for b64 in figs.get("gallery", []):
            out.append(f"<figure>{_img(b64, 'mistake')}</figure>")

    return cards, out


def _render_robustness(r: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    mid = len(r["epsilons"]) // 2
    cards = [
        _card(f"{r['pgd_accuracy'][mid]:.3f}", f"PGD accuracy at eps={r['epsilons'][mid]:g}"),
        _card(_fmt(r["min_eps"]["median"]), "median minimal adversarial eps"),
    ]
    out = []
    out.append(
        f"<p class='caption'>FGSM and PGD (L-inf, {r['pgd_steps']} steps of {r['pgd_step_size_fraction_of_eps']:g}·eps, "
        f"random start {'on' if r['random_start'] else 'off'}) on {r['n_curve_examples']} test images; "
        "eps in raw pixel units (images in [0, 1]), attacks clipped to the valid range. "
        + _OBJECTIVE_TEXT[r.get("objective", "cross_entropy")]
        + "An example "
        "counts as robust at eps only if no perturbation tried at that or any smaller eps fools it, and "
        "PGD keeps the FGSM point among its candidates, so the curves start at the clean accuracy, never "
        "rise, and PGD is never above FGSM. The minimal adversarial eps (leaving the predicted class) is "
        f"found by bisection with PGD on [0, {r['min_eps']['eps_max']:g}] to within "
        f"{r['min_eps']['bracket_width']:.4f}, on {r['n_min_eps_examples']} test images.</p>"
    )
    out.append(
        _table(
            ["eps", "FGSM accuracy", "PGD accuracy"],
            [
                [f"{e:g}", f, p]
                for e, f, p in zip(r["epsilons"], r["fgsm_accuracy"], r["pgd_accuracy"])
            ],
        )
    )
    me = r["min_eps"]
    out.append(
        _table(
            ["minimal adversarial eps", "value"],
            [
                ["median", me["median"]],
                ["mean (found only)", me["mean_of_found"]],
                ["fraction not fooled at eps_max", me["fraction_not_found"]],
            ],
        )
    )
    out.append(
        "<div class='row'>"
        + _figure(figs.get("curve"), "Accuracy under attack against eps.", "curve")
        + _figure(
            figs.get("min_eps_hist"), "Distribution of the minimal adversarial eps.", "histogram"
        )
        + _figure(
            figs.get("min_eps_per_class"),
            "Median minimal adversarial eps per true class (values in audit.json).",
            "per-class eps",
        )
        + "</div>"
    )
    out.append(
        _figure(
            figs.get("adversarial"),
            "The most fragile test images: original, the adversarial "
            "image found at the minimal eps with its new prediction, and the perturbation.",
            "adversarial examples",
        )
    )

    return cards, out


def _render_biases(b_res: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    out = []
    out.append(
        "<p class='caption'>For each class (training images, grouped by their given label, "
        + html.escape(
            ", ".join(f"{names[int(k)]}: {v}" for k, v in b_res["examples_per_class"].items())
        )
        + " per class): "
        "<b>robust</b> prototypes are the images hardest to push out of the class (largest minimal PGD "
        "eps; ties by logit margin) and criticisms the easiest; <b>MMD</b> prototypes greedily minimise "
        "MMD² to the class in penultimate-feature space, and criticisms maximise |witness| plus a "
        "log-det diversity term (Kim et al. 2016; "
        + html.escape(b_res["kernel"])
        + "). The last column is "
        "the mean image of the row. A bias shows as an attribute shared by one side only; the table "
        "gives, per attribute, the class where its rate among prototypes and criticisms differs most "
        "(ink = mean pixel intensity).</p>"
    )
    rows = [
        [
            g["attribute"],
            g["method"],
            names[g["class"]],
            g["class_rate"],
            g["prototypes"],
            g["criticisms"],
            g["prototype_minus_criticism"],
        ]
        for g in b_res["largest_over_representation"]
    ]
    out.append(
        _table(
            [
                "attribute",
                "method",
                "class",
                "class rate",
                "prototypes",
                "criticisms",
                "prototypes − criticisms",
            ],
            rows,
            left_cols=3,
        )
    )
    for name, per_class in b_res["attributes"].items():
        if name == "ink":
            continue
        gap = lambda v: max(
            abs(v.get("robust_prototype_minus_criticism") or 0.0),
            abs(v.get("mmd_prototype_minus_criticism") or 0.0),
        )
        shown = sorted(per_class, key=lambda k: -gap(per_class[k]))[:10]
        out.append(f"<h3>Attribute <code>{html.escape(name)}</code> per class</h3>")
        out.append(
            f"<p class='caption'>Rate of <code>{html.escape(name)}</code> in the class and among its "
            "prototypes and criticisms"
            + (
                f" ({len(shown)} of {len(per_class)} classes, largest difference first)"
                if len(shown) < len(per_class)
                else ""
            )
            + ".</p>"
        )
        out.append(
            _table(
                [
                    "class",
                    "class rate",
                    "robust prototypes",
                    "robust criticisms",
                    "MMD prototypes",
                    "MMD criticisms",
                ],
                [
                    [
                        names[int(k)],
                        per_class[k]["class_rate"],
                        per_class[k]["robust_prototypes"],
                        per_class[k]["robust_criticisms"],
                        per_class[k]["mmd_prototypes"],
                        per_class[k]["mmd_criticisms"],
                    ]
                    for k in sorted(shown, key=int)
                ],
            )
        )
    bias_figs = figs.get("bias_classes", {})
    if len(bias_figs) < len(b_res["per_class"]):
        out.append(
            f"<p class='caption'>Image grids for {len(bias_figs)} of {len(b_res['per_class'])} classes "
            "(those with the largest attribute differences first); all indices are in audit.json.</p>"
        )
    out.append("<div class='row'>")
    for k, b64 in bias_figs.items():
        pc = b_res["per_class"][str(k)]
        out.append(
            _figure(
                b64,
                f"class {html.escape(names[int(k)])}: median minimal eps "
                f"{_fmt(pc['class_median_min_eps'])}, MMD² of prototypes {pc['mmd2']:.4f}, "
                f"sigma {pc['mmd_sigma']:.3g}.",
                f"class {k}",
            )
        )
    out.append("</div>")

    return [], out


def _render_label_issues(li: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    cards = []
    main = li.get("suspects_ranking")
    if li["rankings"].get(main):
        first = next(iter(li["rankings"][main].values()))
        cards.append(_card(f"{first['precision']:.3f}", f"precision@{first['k']} ({main})"))
    main_quality = (li.get("ranking_quality") or {}).get(main) or {}
    if main_quality.get("auroc") is not None:
        cards.append(_card(f"{main_quality['auroc']:.3f}", f"AUROC ({main})"))
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
            _table(
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
            _table(
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
        + _figure(
            figs.get("weight_hist"),
            "Mean L2RW weight of clean and noisy training examples.",
            "weights",
        )
        + _figure(
            figs.get("data_map"),
            "Data map of the L2RW weights (after Swayamdipta et al. 2020): each drawn training "
            "example at the std of its weight over its draws (x) and its mean weight (y), from "
            "the run's running sums (no history); medians per group in audit.json.",
            "weight data map",
        )
        + _figure(
            figs.get("meta_grad_hist"),
            "Mean normalised L2RW meta-gradient of clean and noisy training examples "
            "(positive = harmful to the clean loss).",
            "meta-gradients",
        )
        + "</div>"
    )
    out.append(
        _figure(
            figs.get("suspects"),
            f"Top {len(li['top_suspects'])} suspects by the "
            f"<code>{html.escape(li['suspects_ranking'])}</code> ranking, most suspect first: given and "
            "predicted label, mean weight w and (when recorded) mean normalised meta-gradient g; red = "
            "injected noise, green = clean label.",
            "suspects",
        )
    )
    return cards, out


_ESTIMATE_NAMES = {
    "glc": "GLC (Hendrycks et al. 2018)",
    "confident_learning": "confident learning (Northcutt et al. 2021)",
}


def _render_noise(nz: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    ests = nz["estimates"]
    known = "true" in nz
    cards = []
    if known:
        for key in ("glc", "confident_learning"):
            err = ests.get(key, {}).get("error") or {}
            if err.get("mean_abs_error") is not None:
                cards.append(
                    _card(
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
    out.append(_table(header, rows, left_cols=2))
    out.append(
        _figure(
            figs.get("transitions"),
            "Transition matrices on one colour scale: the estimates side by side"
            + (", then the training set's true T." if known else "."),
            "transition matrices",
        )
    )
    return cards, out


def _render_trusted_set(ts: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    if not ts.get("top_suspects"):
        return [], []
    cards = [_card(f"{ts['n_flagged']} of {ts['n_clean']}", "clean labels flagged")]
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
        _table(
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
        _figure(
            figs.get("scatter"),
            "Each clean example's loss on its given label against its leave-one-out influence "
            "on the training weights.",
            "trusted set",
        )
    )
    return cards, out


def render_generic(results: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    """Any other section: its scalar results as a table, then its figures."""
    rows = [[k, v] for k, v in results.items() if isinstance(v, (int, float, str)) or v is None]
    out = [_table(["", "value"], rows)] if rows else []
    pngs = [(k, v) for k, v in figs.items() if isinstance(v, str)]
    out.append(
        "<div class='row'>" + "".join(_figure(v, html.escape(k), k) for k, v in pngs) + "</div>"
    )
    return [], out


RENDERERS = {
    "mistakes": _render_mistakes,
    "robustness": _render_robustness,
    "biases": _render_biases,
    "label_issues": _render_label_issues,
    "noise": _render_noise,
    "trusted_set": _render_trusted_set,
}
