"""metrics.json as tables of formatted cells: what notebook 3 displays, what ``report.html``
shows and what the README generator writes, from one place.

Every function takes parts of a metrics.json dict (``evaluation`` writes it) and returns a
DataFrame of strings (a value with its 95% interval as ``0.950 [0.894, 0.977]``,
``metrics.format_ci``), or None when the run has nothing of the kind. ``markdown`` renders one
for a README.
"""

from __future__ import annotations

import pandas as pd

from metrics import format_ci

HEADLINE = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
            "macro_f1": "macro F1", "macro_auc": "macro AUC"}
PER_CLASS = ("precision", "recall", "specificity", "f1", "auc")


def ci(d: dict | None, key: str, digits: int = 3) -> str:
    """``d[key]`` with its interval ``d[key + "_ci"]`` (or ``_lo``/``_hi``); "n/a" when absent."""
    if not d or d.get(key) is None:
        return "n/a"
    interval = d.get(key + "_ci")
    if interval is None and d.get(key + "_lo") is not None:
        interval = (d[key + "_lo"], d[key + "_hi"])
    if interval is None or interval[0] is None:
        return f"{d[key]:.{digits}f}"
    return format_ci(d[key], interval, digits)


def num(value, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or "n/a" when there is none (e.g. a Grad-CAM score
    of a model whose maps were all constant)."""
    return "n/a" if value is None else format(value, spec)


def comparison(archs: dict, split: str = "test") -> pd.DataFrame:
    """Per model: images scored and the headline metrics with intervals."""
    return pd.DataFrame({name: {"n": r[split]["n"], **{label: ci(r[split], k)
                                                       for k, label in HEADLINE.items()}}
                         for name, r in archs.items()}).T.rename_axis("model")


def per_class(archs: dict, split: str = "test") -> pd.DataFrame:
    """Per model and class (and the macro and weighted averages): support and precision,
    recall, specificity, F1 and AUC with intervals. Rows of the confusion matrix behind it are
    true classes."""
    rows = {(name, cls): {"support": int(v["support"]), **{k: ci(v, k) for k in PER_CLASS}}
            for name, r in archs.items() for cls, v in r[split]["per_class"].items()}
    return pd.DataFrame(rows).T.rename_axis(["model", "class"])


def localization(archs: dict) -> pd.DataFrame | None:
    """Per model: the Grad-CAM layer and input size, the pointing game (with and without the
    margin) and the energy in the mask, each against chance; then the pointing game per class."""
    rows = {}
    for name, r in archs.items():
        loc = r.get("localization")
        if not loc or not loc.get("n"):
            continue
        rows[name] = {"layer": loc["layer"], "input": f"{loc['image_size']} px", "n": loc["n"],
                      "pointing game": ci(loc, "pointing_game"),
                      "(chance)": f"{loc['chance']:.3f}",
                      "without margin": ci(loc, "pointing_game_strict"),
                      "energy in mask": ci(loc, "energy_in_mask"),
                      "(chance) ": f"{loc['chance_strict']:.3f}",
                      **{f"hit, {c}": f"{v['hit']:.2f}" for c, v in loc["per_class"].items()}}
    return pd.DataFrame(rows).T.rename_axis("model") if rows else None


def audit(archs: dict) -> pd.DataFrame | None:
    """The shortcut audit per model: Grad-CAM energy in and peaks outside the lungs, accuracy
    as is / lungs only / lungs removed, each against chance, and the verdict."""
    rows = {}
    for name, r in archs.items():
        a = r.get("lung_audit")
        if not a or not a.get("as_is"):
            continue
        c = a["cam"]
        rows[name] = {"images": a["as_is"]["n"], "CAM energy in lungs": ci(c, "energy_in_lungs"),
                      "(chance)": num(c["energy_chance"]),
                      "CAM peaks outside lungs": ci(c, "peaks_outside"),
                      "(chance) ": num(c["peaks_outside_chance"]),
                      **{f"accuracy, {v.replace('_', ' ')}": ci(a[v], "accuracy")
                         for v in ("as_is", "lungs_only", "lungs_removed")},
                      "(chance)  ": f"{a['chance']:.3f}",
                      "reads outside the lungs?": "yes" if a["reads_outside_lungs"] else "no"}
    return pd.DataFrame(rows).T.rename_axis("model") if rows else None


def audit_by_class(archs: dict) -> pd.DataFrame | None:
    """The audit's Grad-CAM scores per model and true class: images, energy in the lungs
    against chance, peaks outside."""
    rows = {(name, cls): {"n": v["n"], "energy in lungs": f"{v['energy_in_lungs']:.3f}",
                          "(chance)": num(v["energy_chance"]),
                          "peaks outside": f"{v['peaks_outside']:.3f}"}
            for name, r in archs.items() if (r.get("lung_audit") or {}).get("as_is")
            for cls, v in r["lung_audit"]["cam_per_class"].items() if v["n"]}
    return pd.DataFrame(rows).T.rename_axis(["model", "class"]) if rows else None


def audit_verdicts(archs: dict) -> list[str]:
    """One sentence per audited model: does it need the lungs, and where is its evidence."""
    out = []
    for name, r in archs.items():
        a = r.get("lung_audit")
        if not a or not a.get("as_is"):
            continue
        removed, c = a["lungs_removed"], a["cam"]
        verdict = ("stays above chance: **the model reads something outside the lungs** (a "
                   "shortcut)" if a["reads_outside_lungs"] else
                   "is not above chance: the model needs the lungs")
        out.append(f"**{name}**: with the lungs removed, accuracy {ci(removed, 'accuracy')} "
                   f"against chance {a['chance']:.2f} {verdict}; {num(c['energy_in_lungs'], '.0%')} of "
                   f"its Grad-CAM energy lies in the lungs (a map blind to anatomy: "
                   f"{num(c['energy_chance'], '.0%')}), {num(c['peaks_outside'], '.0%')} of its peaks outside "
                   f"them.")
    return out


def calibration(archs: dict, split: str = "test") -> pd.DataFrame | None:
    """Per model: the validation-fitted temperature, ECE (interval) and NLL on ``split``
    before and after it; "none" where the checkpoint has no temperature."""
    rows = {}
    for name, r in archs.items():
        c = r.get("calibration")
        if not c:
            continue
        t, temp = c[split], c["temperature"]
        rows[name] = {"T (fitted on val)": "none (uncalibrated)" if temp is None else f"{temp:.3g}",
                      "ECE as trained": ci(t, "ece_before"), "ECE with T": ci(t, "ece_after"),
                      "NLL as trained": f"{t['nll_before']:.4f}",
                      "NLL with T": "n/a" if t["nll_after"] is None else f"{t['nll_after']:.4f}"}
    return pd.DataFrame(rows).T.rename_axis("model") if rows else None


def _share(d: dict | None) -> str:
    """A share with its Wilson interval and count, from ``evaluation._share``'s dict."""
    if not d or d.get("share") is None:
        return "n/a"
    return f"{format_ci(d['share'], d['ci'])} of {d['n']}"


def trust(archs: dict, split: str = "test") -> pd.DataFrame | None:
    """Per model, what its calls can be trusted with: the out-of-distribution flag (share of
    ``split`` flagged; on the internal test, its AUROC against the built-in unfamiliar images:
    non-radiographs, and the lowest over the test images turned, upside down, inverted or
    cropped to a corner) and the prediction sets (nominal and empirical coverage, mean size);
    on an external set, the accuracy on the images passed and on those flagged. None when no
    model has either record (checkpoints from before them)."""
    rows = {}
    for name, r in archs.items():
        fam, ps = r.get("familiarity"), r.get("prediction_sets")
        if not fam and not ps:
            continue
        row = {"flagged": _share(fam["flagged"]) if fam else "n/a (no record)"}
        b = (fam or {}).get("builtin")
        if b:
            row["AUROC non-radiographs"] = num(b["non_radiographs"]["auroc"])
            turned = {k: v["auroc"] for k, v in b.items() if k != "non_radiographs"}
            worst = min(turned, key=turned.get)
            row["AUROC turned/inverted/corner (lowest)"] = f"{num(turned[worst])} ({worst})"
        elif fam:
            row["accuracy, passed"] = _share(fam["accuracy_passed"])
            row["accuracy, flagged"] = _share(fam["accuracy_flagged"])
        if ps:
            row["set coverage"] = f"{ci(ps, 'coverage')} (nominal {ps['nominal']:.2f})"
            row["mean set size"] = ci(ps, "mean_size", 2)
        rows[name] = row
    return pd.DataFrame(rows).T.fillna("n/a").rename_axis("model") if rows else None


def prediction_sets_by_class(archs: dict) -> pd.DataFrame | None:
    """Per model and true class: images, the prediction sets' coverage (Wilson interval) and
    mean size; None when no model has a conformal record."""
    rows = {(name, cls): {"n": v["n"], "coverage": ci(v, "coverage"),
                          "mean set size": num(v["mean_size"], ".2f")}
            for name, r in archs.items()
            for cls, v in ((r.get("prediction_sets") or {}).get("per_class") or {}).items()}
    return pd.DataFrame(rows).T.rename_axis(["model", "class"]) if rows else None


def by_source(archs: dict) -> pd.DataFrame | None:
    """Accuracy per model and source (Wilson intervals) with the images per source."""
    rows = {(name, src or "(unknown)"): {"n": int(v["n"]), "accuracy": ci(v, "accuracy")}
            for name, r in archs.items() for src, v in (r.get("by_source") or {}).items()}
    return pd.DataFrame(rows).T.rename_axis(["model", "source"]) if rows else None


def internal_vs_external(m: dict, set_name: str) -> pd.DataFrame:
    """Each model's internal test and the external set ``set_name`` side by side: accuracy,
    balanced accuracy, macro AUC, recall per class, each with its interval, and ECE as trained
    and with the stored temperature (does calibration transfer?). Rows (model, metric); the
    internal column is "n/a" when metrics.json holds no internal results for that model."""
    ext = m["external"][set_name]["archs"]
    internal = m.get("archs") or {}
    rows = {}
    for name, r in ext.items():
        i = internal.get(name) or {}
        rows[(name, "images")] = {"internal test": str((i.get("test") or {}).get("n", "n/a")),
                                  "external": str(r["external"]["n"])}
        for key in ("accuracy", "balanced_accuracy", "macro_auc"):
            rows[(name, HEADLINE[key])] = {"internal test": ci(i.get("test"), key),
                                           "external": ci(r["external"], key)}
        for cls, v in r["external"]["per_class"].items():
            if cls in ("macro avg", "weighted avg"):
                continue
            iv = ((i.get("test") or {}).get("per_class") or {}).get(cls)
            rows[(name, f"recall, {cls}")] = {"internal test": ci(iv, "recall"),
                                              "external": ci(v, "recall")}
        ic, ec = i.get("calibration") or {}, r.get("calibration") or {}
        for key, label in (("ece_before", "ECE as trained"), ("ece_after", "ECE with T")):
            rows[(name, label)] = {"internal test": ci(ic.get("test"), key),
                                   "external": ci(ec.get("external"), key)}
        ia, ea = i.get("lung_audit") or {}, r.get("lung_audit") or {}
        if ea.get("as_is"):  # the shortcut audit, where the external set has lung masks
            rows[(name, "CAM energy in lungs")] = {"internal test": ci(ia.get("cam"),
                                                                       "energy_in_lungs"),
                                                   "external": ci(ea["cam"], "energy_in_lungs")}
            rows[(name, "accuracy, lungs removed")] = {
                "internal test": ci(ia.get("lungs_removed"), "accuracy"),
                "external": ci(ea["lungs_removed"], "accuracy")}
    return pd.DataFrame(rows).T.rename_axis(["model", "metric"])


def markdown(df: pd.DataFrame | None) -> str:
    """A table as GitHub markdown (the index as the first columns); "" for None."""
    if df is None or df.empty:
        return ""
    flat = df.reset_index()
    lines = ["| " + " | ".join(str(c).strip() for c in flat.columns) + " |",
             "|" + "---|" * len(flat.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines) + "\n"
