"""The report's HTML, one renderer per section: a section's results and figures -> its summary
cards and the HTML of its body, every user string escaped.

`RENDERERS` maps a section's name to its renderer; `render_generic` draws any other section
(its scalars as a table, then its figures). `report.render_html` lays them out on the page. The
renderers of the model's sections (mistakes, robustness, biases) are here, those of the data's
sections in `data_renderers`, the HTML building blocks they share in `html_parts`.
"""

from __future__ import annotations

import html
from typing import Sequence

from l2rw_jax.audit import data_renderers
from l2rw_jax.audit import html_parts

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


# One renderer per section kind: (summary cards, HTML of the section's body). A section whose
# name has no renderer here is shown by `render_generic`.
def _render_mistakes(m: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    cards = [html_parts.card(f"{m['top_k_accuracy']['top1']:.4f}", "top-1 accuracy")]
    if "top5" in m["top_k_accuracy"]:
        cards.append(html_parts.card(f"{m['top_k_accuracy']['top5']:.4f}", "top-5 accuracy"))
    bins = m["calibration"]["num_bins"]
    cards.append(html_parts.card(f"{m['calibration']['ece']:.4f}", f"ECE ({bins} bins)"))
    cards.append(
        html_parts.card(
            f"{names[m['worst_class']]}: {m['worst_class_accuracy']:.3f}", "worst class accuracy"
        )
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
        html_parts.table(
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
        + html_parts.figure(
            figs.get("per_class"), "Accuracy per class (worst in red).", "per-class accuracy"
        )
        + html_parts.figure(figs.get("confusion"), "Confusion matrix.", "confusion matrix")
        + html_parts.figure(
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
            f"{html_parts.fmt(ig.get('max_relative_completeness_error'), '.1e')}); Grad-CAM at the last conv layer when "
            f"the model has one; then the {len(m['gallery'][0]['neighbors'])} nearest training images in "
            f"penultimate-feature space (searched among {m['neighbor_pool_size']} training images) with "
            "their given labels — the example-based explanation.</p>"
        )
        for b64 in figs.get("gallery", []):
            out.append(f"<figure>{html_parts.img(b64, 'mistake')}</figure>")

    return cards, out


def _render_robustness(r: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    mid = len(r["epsilons"]) // 2
    cards = [
        html_parts.card(
            f"{r['pgd_accuracy'][mid]:.3f}", f"PGD accuracy at eps={r['epsilons'][mid]:g}"
        ),
        html_parts.card(html_parts.fmt(r["min_eps"]["median"]), "median minimal adversarial eps"),
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
        html_parts.table(
            ["eps", "FGSM accuracy", "PGD accuracy"],
            [
                [f"{e:g}", f, p]
                for e, f, p in zip(r["epsilons"], r["fgsm_accuracy"], r["pgd_accuracy"])
            ],
        )
    )
    me = r["min_eps"]
    out.append(
        html_parts.table(
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
        + html_parts.figure(figs.get("curve"), "Accuracy under attack against eps.", "curve")
        + html_parts.figure(
            figs.get("min_eps_hist"), "Distribution of the minimal adversarial eps.", "histogram"
        )
        + html_parts.figure(
            figs.get("min_eps_per_class"),
            "Median minimal adversarial eps per true class (values in audit.json).",
            "per-class eps",
        )
        + "</div>"
    )
    out.append(
        html_parts.figure(
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
        html_parts.table(
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
            html_parts.table(
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
            html_parts.figure(
                b64,
                f"class {html.escape(names[int(k)])}: median minimal eps "
                f"{html_parts.fmt(pc['class_median_min_eps'])}, MMD² of prototypes {pc['mmd2']:.4f}, "
                f"sigma {pc['mmd_sigma']:.3g}.",
                f"class {k}",
            )
        )
    out.append("</div>")

    return [], out


def render_generic(results: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    """Any other section: its scalar results as a table, then its figures."""
    rows = [[k, v] for k, v in results.items() if isinstance(v, (int, float, str)) or v is None]
    out = [html_parts.table(["", "value"], rows)] if rows else []
    pngs = [(k, v) for k, v in figs.items() if isinstance(v, str)]
    out.append(
        "<div class='row'>"
        + "".join(html_parts.figure(v, html.escape(k), k) for k, v in pngs)
        + "</div>"
    )
    return [], out


RENDERERS = {
    "mistakes": _render_mistakes,
    "robustness": _render_robustness,
    "biases": _render_biases,
    "label_issues": data_renderers.render_label_issues,
    "suspects": data_renderers.render_suspects,
    "noise": data_renderers.render_noise,
    "trusted_set": data_renderers.render_trusted_set,
}
