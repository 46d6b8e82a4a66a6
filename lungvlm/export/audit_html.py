"""The ``lungvlm audit`` page: ``audit.html`` plus matplotlib PNGs in ``figures/``.

:func:`write_audit_page` takes the dict of :func:`lungvlm.evaluation.audit.run_audit` and
writes, each file atomically (:mod:`lungvlm.export.writer`): reliability diagrams (malignancy
before / after each calibrator, growth by 12 months, Lung-RADS top label), the risk-coverage
curve, the Lung-RADS confusion matrix, and one bar chart with 95 % bootstrap CIs per subgroup
metric. The page is static HTML with no script and no external resource.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lungvlm.export.writer import write_bytes_atomic, write_text_atomic  # noqa: E402

FIGURES_DIR = "figures"


def _save(fig, path: Path) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return f"{FIGURES_DIR}/{path.name}"


def _reliability(ax, table, label: str) -> None:
    xs = [row["mean_probability"] for row in table if row["count"]]
    ys = [row["observed"] for row in table if row["count"]]
    ax.plot(xs, ys, marker="o", label=label)


def _reliability_figure(series: Mapping[str, list], title: str, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect")
    for label, table in series.items():
        _reliability(ax, table, label)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed frequency",
           title=title)  # fmt: skip
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _ci(entry: Mapping) -> str:
    lo, hi = entry.get("ci", (None, None))
    if lo is None:
        return _fmt(entry.get("value"))
    return f"{_fmt(entry.get('value'))} [{lo:.3f}, {hi:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _subgroup_figures(table: Mapping, prefix: str, figures: Path) -> list[str]:
    out = []
    metrics = [k for k in table["overall"] if k != "n"]
    for metric in metrics:
        fig, axes = plt.subplots(1, len(table["axes"]), figsize=(3.2 * len(table["axes"]), 3.2))
        axes = list(axes) if hasattr(axes, "__len__") else [axes]
        for ax, (axis, entry) in zip(axes, table["axes"].items(), strict=True):
            names = list(entry["groups"])
            values = [entry["groups"][n][metric]["value"] for n in names]
            cis = [entry["groups"][n][metric]["ci"] for n in names]
            xs = range(len(names))
            heights = [v if v is not None else 0.0 for v in values]
            # A percentile interval need not contain the estimate (ECE is biased): clip the bars.
            low = [
                max(v - c[0], 0.0) if c[0] is not None else 0.0
                for v, c in zip(heights, cis, strict=True)
            ]
            high = [
                max(c[1] - v, 0.0) if c[1] is not None else 0.0
                for v, c in zip(heights, cis, strict=True)
            ]
            ax.bar(xs, heights, yerr=[low, high], capsize=3, color="#4c72b0")
            ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(axis, fontsize=9)
        fig.suptitle(metric, fontsize=10)
        out.append(_save(fig, figures / f"{prefix}_{metric}.png"))
    return out


def _subgroup_rows(table: Mapping) -> list[list[str]]:
    metrics = [k for k in table["overall"] if k != "n"]
    rows = [
        ["all", "all", str(table["overall"]["n"])] + [_ci(table["overall"][m]) for m in metrics]
    ]
    for axis, entry in table["axes"].items():
        for name, group in entry["groups"].items():
            rows.append(
                [axis, html.escape(name), str(group["n"])] + [_ci(group[m]) for m in metrics]
            )
    return rows


def _robustness(curves: Mapping, figures: Path) -> str:
    """Robustness table and one figure (Dice and AUROC against each perturbation's level)."""
    kinds = [k for k in curves if k != "clean"]
    clean = curves["clean"]
    rows = [["clean", "0", _fmt(clean["dice"]), _fmt(clean["malignancy_auroc"])]]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(3.4 * max(1, len(kinds)), 3.0))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for ax, kind in zip(axes, kinds, strict=False):
        points = curves[kind]
        unit = points[0]["unit"] if points else ""
        xs = [0.0] + [p["level"] for p in points]
        for metric in ("dice", "malignancy_auroc"):
            ys = [clean[metric]] + [p[metric] for p in points]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=metric)
        ax.set(xlabel=f"{kind} ({unit})", ylim=(0, 1), title=kind)
        ax.legend(fontsize=7)
        rows += [[kind, f"{p['level']:g} {unit}", _fmt(p["dice"]), _fmt(p["malignancy_auroc"])]
                 for p in points]  # fmt: skip
    img = _save(fig, figures / "robustness.png")
    return (
        "<h3>Robustness (test crops)</h3>"
        + _table(["perturbation", "strength", "crop Dice", "malignancy AUROC"], rows)
        + f"<img src='{img}' alt='robustness'>"
    )


def write_audit_page(audit: Mapping, out_dir: str | Path) -> Path:
    """Write ``out_dir/audit.html`` and its figures; returns the page's path."""
    out_dir = Path(out_dir)
    figures = out_dir / FIGURES_DIR
    sections: list[str] = []
    head = audit.get("headline", {})
    sections.append("<h2>Headline</h2>" + _table(
        ["figure", "value"], [[html.escape(k), _fmt(v) if not isinstance(v, dict) else
                               html.escape(json.dumps(v))] for k, v in head.items()],
    ))  # fmt: skip

    cal = audit["calibration"]
    malignancy = cal.get("malignancy", {})
    if "methods" in malignancy:
        series = {k: m["reliability"] for k, m in malignancy["methods"].items()}
        img = _reliability_figure(
            series, "malignancy (test)", figures / "reliability_malignancy.png"
        )
        rows = [[k, _fmt(m.get("val_ece")), _fmt(m.get("val_cv_ece")), _fmt(m.get("test_ece"))]
                for k, m in malignancy["methods"].items()]  # fmt: skip
        sections.append(
            "<h2>1. Calibration</h2><h3>Malignancy</h3>"
            + _table(["calibrator", "val ECE", "val CV ECE", "test ECE"], rows)
            + f"<p>Kept: <b>{_fmt(malignancy.get('chosen'))}</b> (lower cross-validated ECE on "
            f"validation; {malignancy['n_val']} validation, {malignancy['n_test']} test nodules)."
            f"</p><img src='{img}' alt='malignancy reliability'>"
        )
    else:
        sections.append(f"<h2>1. Calibration</h2><p>{_fmt(malignancy.get('error'))}</p>")
    growth = cal["growth_12m"]
    recal = growth.get("recalibration") or {}
    series = {"P(growth by 12 months)": growth["reliability"]}
    table = ""
    if "methods" in recal:
        series = {k: m["reliability"] for k, m in recal["methods"].items()}
        rows = [[k, _fmt(m.get("val_ece")), _fmt(m.get("val_cv_ece")), _fmt(m.get("test_ece"))]
                for k, m in recal["methods"].items()]  # fmt: skip
        table = _table(["calibrator", "val ECE", "val CV ECE", "test ECE"], rows)
        table += f"<p>Better on validation: {_fmt(recal.get('chosen'))} (not stored).</p>"
    img = _reliability_figure(series, "growth by 12 months (test)",
                              figures / "reliability_growth.png")  # fmt: skip
    sections.append(
        f"<h3>Growth by 12 months</h3><p>ECE {_fmt(growth['ece'])} on {growth['n_test']} test "
        f"nodules ({growth['positives_test']} grew).</p>{table}"
        f"<img src='{img}' alt='growth reliability'>"
    )
    lungrads = cal["lungrads"]
    img = _reliability_figure({"top label": lungrads["reliability"]}, "Lung-RADS (test)",
                              figures / "reliability_lungrads.png")  # fmt: skip
    sections.append(
        f"<h3>Lung-RADS</h3><p>Top-label ECE {_fmt(lungrads['top_label_ece'])} on "
        f"{lungrads['n_test']} test nodules.</p><img src='{img}' alt='Lung-RADS reliability'>"
    )

    brock = audit["brock"]
    if "ours" in brock:
        rows = [["Brock (nodule features)", _ci({"value": brock["brock"]["auroc"], "ci": brock["brock"]["ci"]}),
                 _fmt(brock["ece"]["brock"])],
                ["LungVLM", _ci({"value": brock["ours"]["auroc"], "ci": brock["ours"]["ci"]}),
                 _fmt(brock["ece"]["ours"])]]  # fmt: skip
        diff = brock["ours_minus_brock"]
        sections.append(
            "<h2>2. Baselines</h2>"
            + _table(["model", "AUROC [95% CI]", "ECE"], rows)
            + f"<p>{brock['n']} test nodules ({brock['positives']} malignant); AUROC difference "
            f"(ours - Brock) {_ci({'value': diff['difference'], 'ci': diff['ci']})}.</p>"
        )
    else:
        sections.append(f"<h2>2. Baselines</h2><p>{_fmt(brock.get('error'))}</p>")
    saliency = audit.get("saliency") or {}
    if saliency.get("kinds"):
        rows = [[html.escape(kind), _ci(entry["pointing_game"]), _ci(entry["mass_in_mask"])]
                for kind, entry in saliency["kinds"].items()]  # fmt: skip
        sections.append(
            "<h3>Explanations: Grad-CAM vs cross-attention</h3>"
            + _table(["heatmap", "pointing game [95% CI]", "mass in mask [95% CI]"], rows)
            + f"<p>{saliency['n']} test crops with a reference mask.</p>"
        )

    hierarchy = audit["hierarchy"]
    if "test_argmax" in hierarchy:
        keys = ["accuracy", "branch_accuracy", "mean_distance", "catastrophic_rate",
                "catastrophic_miss_rate", "catastrophic_overcall_rate", "overcall_rate"]  # fmt: skip
        rows = [[k, _fmt(hierarchy["test_argmax"][k]), _fmt(hierarchy["test_constrained"][k])]
                for k in keys]  # fmt: skip
        confusion = hierarchy["test_argmax"]["confusion"]
        cats = hierarchy["test_argmax"]["categories"]
        fig, ax = plt.subplots(figsize=(4, 3.6))
        ax.imshow(confusion, cmap="Blues")
        ax.set(xticks=range(len(cats)), yticks=range(len(cats)), xticklabels=cats,
               yticklabels=cats, xlabel="predicted", ylabel="reference")  # fmt: skip
        for i, row in enumerate(confusion):
            for j, value in enumerate(row):
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
        img = _save(fig, figures / "lungrads_confusion.png")
        sections.append(
            "<h2>3. Hierarchical Lung-RADS</h2>"
            + _table(
                ["test figure", "argmax", f"constrained (t = {hierarchy['threshold']:.3f})"], rows
            )
            + f"<p>Threshold chosen on validation for catastrophic misses &le; "
            f"{100 * hierarchy['max_miss_rate']:.0f} %.</p><img src='{img}' alt='confusion'>"
        )
    else:
        sections.append(f"<h2>3. Hierarchical Lung-RADS</h2><p>{_fmt(hierarchy.get('error'))}</p>")

    fairness = audit["fairness"]
    parts = ["<h2>4. Fairness across acquisition subgroups</h2>"]
    for key, title in (("crops", "Test crops"), ("chests", "Test chests")):
        if key not in fairness:
            continue
        table = fairness[key]
        metrics = [k for k in table["overall"] if k != "n"]
        parts.append(f"<h3>{title}</h3>" + _table(["axis", "subgroup", "n"] + metrics,
                                                  _subgroup_rows(table)))  # fmt: skip
        parts += [f"<img src='{img}' alt='{key} subgroups'>"
                  for img in _subgroup_figures(table, key, figures)]  # fmt: skip
    gaps = [[html.escape(m), _fmt(g["gap"]) if g else "n/a",
             html.escape(f"{g['axis']}: {g['high']} vs {g['low']}") if g else ""]
            for m, g in fairness["largest_gaps"].items()]  # fmt: skip
    parts.append("<h3>Largest gaps</h3>" + _table(["metric", "gap", "between"], gaps))
    if "robustness" in fairness:
        parts.append(_robustness(fairness["robustness"], figures))
    sections.append("".join(parts))

    efficiency = audit.get("data_efficiency")
    if efficiency:
        summary = efficiency["summary"]
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        rows = []
        for init, points in summary["curves"].items():
            shown = [p for p in points if p[1] is not None]
            ax.plot([100 * p[0] for p in shown], [p[1] for p in shown], marker="o", label=init)
            rows += [[html.escape(init), f"{100 * p[0]:g} %", _fmt(p[1])] for p in points]
        ax.set(xscale="log", xlabel="labelled training crops (%)", ylabel="val crop Dice")
        ax.legend()
        img = _save(fig, figures / "data_efficiency.png")
        sections.append(
            "<h2>5. Data efficiency</h2>"
            + _table(["init", "labels", "val Dice"], rows)
            + f"<p>Pretrained at 20 %: {_fmt(summary['pretrained_20'])}; scratch at 100 %: "
            f"{_fmt(summary['scratch_100'])}; matches (within {summary['tolerance']}): "
            f"{_fmt(summary['matches'])}.</p><img src='{img}' alt='data efficiency'>"
        )
    deferral = audit["deferral"]
    curve = deferral["curve"]
    fig, ax = plt.subplots(figsize=(4.2, 3.4))
    ax.plot([r["coverage"] for r in curve], [r["risk"] if r["risk"] is not None else float("nan")
                                             for r in curve], marker="o")  # fmt: skip
    ax.set(xlabel="coverage (kept sentences)", ylabel="risk (1 - precision)", title="deferral")
    img = _save(fig, figures / "risk_coverage.png")
    rows = [[_fmt(r["coverage"], 1), str(r["kept"]), _fmt(r["precision"]), _fmt(r["threshold"])]
            for r in curve]  # fmt: skip
    sections.append(
        "<h2>6. Deferral</h2>"
        + _table(["coverage", "kept", "precision", "confidence >="], rows)
        + f"<p>Precision at 80 % coverage {_fmt(deferral['precision_at_80'])} (target "
        f"{deferral['target']:.2f}) over {deferral['n_sentences']} sentences.</p>"
        f"<img src='{img}' alt='risk coverage'>"
    )
    zero = audit.get("zero_shot") or {}
    if zero:
        rows = [[html.escape(name), str(e["n"]), str(e["positives"]),
                 html.escape(" / ".join(e["prompts"])), _ci(e["zero_shot_auroc"]),
                 html.escape(e["concept"]), _ci(e["concept_head_auroc"])]
                for name, e in zero.items()]  # fmt: skip
        sections.append(
            "<h2>8. Zero-shot attributes</h2>"
            + _table(
                [
                    "attribute",
                    "n",
                    "yes",
                    "prompts",
                    "zero-shot AUROC",
                    "concept",
                    "concept-head AUROC",
                ],
                rows,
            )  # fmt: skip
        )
    for key, title in (("energy", "7. Energy"),):
        if key in audit:
            rows = [[html.escape(str(r.get("run"))), _fmt(r.get("energy_kwh"), 5),
                     _fmt(r.get("co2e_kg"), 5), html.escape(str(r.get("method")))]
                    for r in audit[key]]  # fmt: skip
            sections.append(f"<h2>{title}</h2>" + _table(["run", "kWh", "kg CO2e", "method"], rows))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;"
        "font-size:13px}img{max-width:100%;margin:6px 0}"
    )
    checkpoint = html.escape(str(audit.get("checkpoint", "")))
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>LungVLM audit</title>"
        f"<style>{style}</style></head><body><h1>LungVLM audit</h1><p>Checkpoint {checkpoint}; "
        f"{audit['n_val_crops']} validation crops, {audit['n_test_crops']} test crops, "
        f"{audit['n_test_chests']} test chests.</p>" + "".join(sections) + "</body></html>"
    )
    return write_text_atomic(out_dir / "audit.html", page)
