"""metrics.json as tables of formatted cells and sentences: what notebook 3 displays, what
``report.html`` shows and what the README generator writes, computed here and only here.

Every table function takes parts of a metrics.json dict (``evaluation`` writes it) and returns a
DataFrame of strings (a value with its 95% interval as ``0.950 [0.894, 0.977]``,
``metrics.format_ci``; a chance level in brackets after the value it bounds), or None when the run
has nothing of the kind. The sentences that explain a table (``localization_note``,
``AUDIT_NOTE``, ``audit_verdict``, ``external_account``) are here too, so a verdict has one
wording. ``report.py`` (HTML), ``update_readme.py`` (``markdown``) and notebook 3 (display) only
arrange what these return.
"""

from __future__ import annotations

import pandas as pd

from metrics import format_ci

HEADLINE = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
            "macro_f1": "macro F1", "macro_auc": "macro AUC"}
PER_CLASS = {"precision": "precision", "recall": "recall", "specificity": "specificity",
             "f1": "F1", "auc": "AUC"}


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
    return pd.DataFrame({name: {f"{split} n": r[split]["n"], **{label: ci(r[split], k)
                                                       for k, label in HEADLINE.items()}}
                         for name, r in archs.items()}).T.rename_axis("model")


def per_class(archs: dict, split: str = "test") -> pd.DataFrame:
    """Per model and class (and the macro and weighted averages): support and precision,
    recall, specificity, F1 and AUC with intervals. Rows of the confusion matrix behind it are
    true classes."""
    rows = {(name, cls): {"support": int(v["support"]),
                          **{label: ci(v, k) for k, label in PER_CLASS.items()}}
            for name, r in archs.items() for cls, v in r[split]["per_class"].items()}
    return pd.DataFrame(rows).T.rename_axis(["model", "class"])


def with_chance(d: dict | None, key: str, chance, digits: int = 2) -> str:
    """``ci(d, key)`` followed by the chance level it should beat: ``0.600 [0.5, 0.7] (0.17)``."""
    return f"{ci(d, key)} ({num(chance, f'.{digits}f')})"


def localization(archs: dict) -> pd.DataFrame | None:
    """Per model: input size, Grad-CAM layer, the pointing game with and without the margin and
    the map's energy in the mask, each against chance, and the pointing game per class; a model
    without a localization record gets "n/a". None when no model has one."""
    if not any((r.get("localization") or {}).get("n") for r in archs.values()):
        return None
    rows = {}
    for name, r in archs.items():
        loc = r.get("localization") or {}
        if not loc.get("n"):
            rows[name] = {**dict.fromkeys(_LOC_COLUMNS[:2], ""),
                          **dict.fromkeys(_LOC_COLUMNS[2:5], "n/a"), _LOC_COLUMNS[5]: ""}
            continue
        cells = (f"{loc.get('image_size')} px", loc.get("layer", "?"),
                 with_chance(loc, "pointing_game", loc["chance"]),
                 with_chance(loc, "pointing_game_strict", loc["chance_strict"]),
                 with_chance(loc, "energy_in_mask", loc["chance_strict"]),
                 ", ".join(f"{c} {v['hit']:.2f}" for c, v in (loc.get("per_class") or {}).items()))
        rows[name] = dict(zip(_LOC_COLUMNS, cells))
    return pd.DataFrame(rows).T.rename_axis("model")


_LOC_COLUMNS = ("input", "Grad-CAM layer (map)", "pointing game (chance)",
                "without margin (chance)", "CAM energy in mask (chance)",
                "pointing game per class")


def localization_note(archs: dict, split: str = "test") -> str:
    """What the localization table scored: images, mask, target class, the margin; "" when no
    model has a localization record."""
    first = next((r["localization"] for r in archs.values()
                  if (r.get("localization") or {}).get("n")), None)
    if first is None:
        return ""
    mask = first["mask"].replace("_path", "").replace("_", " ")
    margin = first.get("margin")
    return (f"Localization on the {split} split ({first['n']} images with a {mask}; each map for "
            f"the image's {first.get('target', 'predicted class')}). Pointing game: is the map's "
            f"peak inside the mask"
            + (f", within the original game's margin ({margin * 299:.0f} px at 299 px)"
               if margin else "") + "? Chance: the area fraction of the (margin-grown) mask.")


AUDIT_NOTE = ("Shortcut audit on the test split: lung masks grown by 3% of the image side; "
              "Grad-CAM for the predicted class. Lungs removed: the grown lungs filled with the "
              "mean of the rest; lungs only: the rest filled with the mean of the lungs. Chance: "
              "the grown lungs' area (energy), 1 minus it (peaks), the largest class share "
              "(accuracy).")


def audit(archs: dict) -> pd.DataFrame | None:
    """The shortcut audit per model: Grad-CAM energy in and peaks outside the lungs, accuracy
    as is / lungs only / lungs removed, each against chance, and the verdict."""
    rows = {}
    for name, r in archs.items():
        a = r.get("lung_audit")
        if not a or not a.get("as_is"):
            continue
        c = a["cam"]
        rows[name] = {"CAM energy in lungs (chance)": with_chance(c, "energy_in_lungs",
                                                                  c["energy_chance"]),
                      "CAM peaks outside lungs (chance)": with_chance(c, "peaks_outside",
                                                                      c["peaks_outside_chance"]),
                      "accuracy as is": ci(a["as_is"], "accuracy"),
                      "lungs only": ci(a["lungs_only"], "accuracy"),
                      "lungs removed (chance)": with_chance(a["lungs_removed"], "accuracy",
                                                            a["chance"]),
                      "reads outside the lungs?": "yes" if a["reads_outside_lungs"] else "no"}
    return pd.DataFrame(rows).T.rename_axis("model") if rows else None


def audit_runs(runs: dict[str, dict]) -> pd.DataFrame | None:
    """``audit`` of several runs' metrics.json (``{run name: metrics}``), one block per run."""
    parts = {run: audit(m["archs"]) for run, m in runs.items()}
    parts = {run: df for run, df in parts.items() if df is not None}
    return pd.concat(parts, names=["run"]) if parts else None


def audit_by_class(archs: dict) -> pd.DataFrame | None:
    """The audit's Grad-CAM scores per model and true class: images, energy in the lungs
    against chance, peaks outside."""
    rows = {(name, cls): {"n": v["n"], "energy in lungs": f"{v['energy_in_lungs']:.3f}",
                          "(chance)": num(v["energy_chance"]),
                          "peaks outside": f"{v['peaks_outside']:.3f}"}
            for name, r in archs.items() if (r.get("lung_audit") or {}).get("as_is")
            for cls, v in r["lung_audit"]["cam_per_class"].items() if v["n"]}
    return pd.DataFrame(rows).T.rename_axis(["model", "class"]) if rows else None


def audit_verdict(a: dict | None) -> str:
    """One model's audit in a sentence: does it need the lungs, and where is its evidence
    ("" without an audit)."""
    if not a or not a.get("as_is"):
        return ""
    removed, c = a["lungs_removed"], a["cam"]
    verdict = ("stays above chance: the model reads something outside the lungs (a shortcut)"
               if a["reads_outside_lungs"] else "is not above chance: the model needs the lungs")
    return (f"With the lungs removed, accuracy {ci(removed, 'accuracy')} against chance "
            f"{a['chance']:.2f} {verdict}; {num(c['energy_in_lungs'], '.0%')} of its Grad-CAM "
            f"energy lies in the lungs (a map blind to anatomy: {num(c['energy_chance'], '.0%')}), "
            f"{num(c['peaks_outside'], '.0%')} of its peaks outside them.")


def audit_verdicts(archs: dict) -> list[str]:
    """``audit_verdict`` of each audited model, as markdown led by its name."""
    return [f"**{name}**: {audit_verdict(r['lung_audit'])}" for name, r in archs.items()
            if audit_verdict(r.get("lung_audit"))]


def calibration(archs: dict, split: str = "test") -> pd.DataFrame | None:
    """Per model: the validation-fitted temperature, ECE (interval) and NLL on ``split``
    before and after it; "none" where the checkpoint has no temperature."""
    rows = {}
    for name, r in archs.items():
        c = r.get("calibration")
        if not c:
            continue
        t, temp = c[split], c["temperature"]
        left = " (val all right: left at 1)" if (c.get("validation") or {}).get("note") else ""
        rows[name] = {"T (fitted on val)": ("none (uncalibrated)" if temp is None
                                            else f"{temp:.3g}{left}"),
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


def internal_vs_external_wide(m: dict, set_name: str) -> pd.DataFrame:
    """``internal_vs_external`` with one row per metric and two columns per model
    ("resnet18 internal", "resnet18 external")."""
    side = internal_vs_external(m, set_name)
    order = list(dict.fromkeys(side.index.get_level_values("metric")))
    models = list(dict.fromkeys(side.index.get_level_values("model")))
    cols = [(kind, mdl) for mdl in models for kind in ("internal test", "external")]
    wide = side.unstack("model").reindex(order)[cols]
    wide.columns = [f"{mdl} {kind.replace(' test', '')}" for kind, mdl in cols]
    return wide.fillna("").rename_axis("metric")


def external_account(m: dict, set_name: str) -> str:
    """What an external set was: images found and scored (per class), folders mapped onto the
    models' classes, folders skipped (a class the models do not know) and images left out as
    copies of training or validation images."""
    x = m["external"][set_name]
    info = x["images"]
    skipped = ", ".join(f"{f} ({n} images)" for f, n in info["skipped_folders"].items())
    dups = info["training_duplicates"]
    near = sum(d.get("kind") == "near" for d in dups)
    found = f"{info['found']} images found, " if info.get("found") is not None else ""
    return (f"{x['dataset']['name']}: {found}{info['scored']} scored ("
            + ", ".join(f"{c} {n}" for c, n in info["scored_by_class"].items()) + "); folders "
            + ", ".join(f"{f} -> {c}" for f, c in info["class_map"].items())
            + (f"; skipped, a class the models do not know: {skipped}" if skipped else "")
            + (f"; left out as copies of training or validation images: {len(dups)} ("
               f"{len(dups) - near} byte-identical, {near} resized, re-encoded, cropped or "
               f"re-windowed)" if dups else "") + ".")


def headline(m: dict) -> pd.DataFrame:
    """The README's one table: per model the test images, accuracy, balanced accuracy and macro
    AUC, the pointing game and the accuracy with the lungs removed against chance, and the
    accuracy on each external set (with its images)."""
    rows = {}
    external = m.get("external") or {}
    for name, r in m["archs"].items():
        t, loc, a = r["test"], r.get("localization") or {}, r.get("lung_audit") or {}
        row = {"test n": t["n"], **{HEADLINE[k]: ci(t, k)
                                    for k in ("accuracy", "balanced_accuracy", "macro_auc")},
               "pointing game (chance)": (with_chance(loc, "pointing_game", loc["chance"])
                                          if loc.get("n") else "n/a"),
               "accuracy, lungs removed (chance)": (
                   with_chance(a["lungs_removed"], "accuracy", a["chance"])
                   if a.get("as_is") else "n/a")}
        for x, ext in external.items():
            e = (ext["archs"].get(name) or {}).get("external")
            row[f"accuracy, external `{x}` (n)"] = f"{ci(e, 'accuracy')} ({e['n']})" if e else "n/a"
        rows[name] = row
    return pd.DataFrame(rows).T.rename_axis("model")


def still_improving(run: dict | None) -> bool | None:
    """Whether a training run (a ``training_summary.csv`` row) had its best validation loss in
    its last epoch: stopped by its epoch budget while still learning, not on a plateau. None
    when the row does not say (older summaries without ``best_epoch``)."""
    if not run or run.get("best_epoch") is None or run.get("epochs_run") is None:
        return None
    if run["best_epoch"] != run["best_epoch"]:  # NaN: a summary that lacks it for this row
        return None
    return int(run["best_epoch"]) >= int(run["epochs_run"])


def _runs(summary: pd.DataFrame | None) -> dict:
    """The training summary's rows by architecture (``{}`` without one)."""
    return {} if summary is None else summary.set_index("arch").to_dict(orient="index")


def architectures(archs: dict, summary: pd.DataFrame | None = None) -> pd.DataFrame:
    """The architecture comparison (``make run ARCHS=...``): per model its parameters, input
    size, seconds per epoch, epochs run with the best one and whether it was still improving
    when its epochs ran out (from ``CSVs/training_summary.csv``, ``summary``), test accuracy,
    pointing game, CAM energy in the lungs and accuracy with the lungs removed, each with its
    interval and chance."""
    runs = _runs(summary)
    rows = {}
    for name, r in archs.items():
        t, loc, a = r["test"], r.get("localization") or {}, r.get("lung_audit") or {}
        s = runs.get(name)
        improving = still_improving(s)
        rows[name] = {
            "parameters": f"{s['parameters'] / 1e6:.1f} M" if s else "",
            "input": f"{s['image_size']} px" if s else "",
            "s/epoch": f"{s['seconds_per_epoch']:.0f}" if s else "",
            "epochs (best)": (f"{s['epochs_run']}" + ("" if improving is None
                                                       else f" ({int(s['best_epoch'])})")
                              if s else ""),
            "at the last epoch": {True: "**still improving**", False: "levelled off",
                                  None: "n/a"}[improving],
            "test accuracy": ci(t, "accuracy"),
            "pointing game (chance)": (with_chance(loc, "pointing_game", loc["chance"])
                                       if loc.get("n") else "n/a"),
            "CAM energy in lungs (chance)": (with_chance(a["cam"], "energy_in_lungs",
                                                         a["cam"]["energy_chance"])
                                             if a.get("as_is") else "n/a"),
            "accuracy, lungs removed (chance)": (with_chance(a["lungs_removed"], "accuracy",
                                                             a["chance"])
                                                 if a.get("as_is") else "n/a")}
    return pd.DataFrame(rows).T.rename_axis("model")


def architectures_title(archs: dict, summary: pd.DataFrame | None = None) -> str:
    """The sentence above the architecture comparison (``architectures`` of the same
    arguments): what the budget was and which rows it left undertrained, so that a row is not
    read as a verdict on its family. Read from the training summary's rows, like the table."""
    runs = _runs(summary)
    ends = {name: still_improving(runs.get(name)) for name in archs}
    improving = [name for name, v in ends.items() if v]
    epochs = [int(runs[name]["epochs_run"]) for name in archs if name in runs]
    budget = f"at most {max(epochs)} epochs each" if epochs else "the profile's epochs"
    text = (f"Architectures compared **at the demo's training budget**, not at their best: the "
            f"same demo split and seed, {budget} from random initialisation, the demo "
            "profile's settings set once per family and not tuned (`make run ARCHS=...`; "
            "seconds per epoch on the machine of that run, named in the experiment log).")
    if improving:
        text += (f" {len(improving)} of {len(archs)} ({', '.join(improving)}) were **still "
                 "improving** when their epochs ran out (best validation loss in the last "
                 "epoch): undertrained at this budget, so their rows say what each reaches in "
                 "a few CPU minutes on 2,000 synthetic images, not how the family compares.")
    elif ends and all(v is False for v in ends.values()):
        text += " Every row had levelled off before its last epoch."
    return text


def markdown(df: pd.DataFrame | None) -> str:
    """A table as GitHub markdown (the index as the first columns); "" for None."""
    if df is None or df.empty:
        return ""
    flat = df.reset_index()
    lines = ["| " + " | ".join(str(c).strip() for c in flat.columns) + " |",
             "|" + "---|" * len(flat.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in flat.itertuples(index=False)]
    return "\n".join(lines) + "\n"
