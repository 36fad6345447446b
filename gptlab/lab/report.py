"""A lesson's report: Markdown, a self-contained HTML page and PNG plots, all recomputed from the cell files.

The report is a list of blocks (heading, paragraph, table, list, image) rendered twice, so the Markdown and the
HTML always say the same thing.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gptlab.document import Block, fmt, fmt_p, to_html, to_markdown  # noqa: E402
from gptlab.io import atomic_write_text  # noqa: E402
from gptlab.lab import stats  # noqa: E402
from gptlab.lab.calibrate import SOURCES, calibration_blocks  # noqa: E402
from gptlab.lab.lesson import Lesson  # noqa: E402
from gptlab.lab.literature import literature_blocks  # noqa: E402
from gptlab.lab.plots import colors, write_figure  # noqa: E402
from gptlab.lab.results import Results, load_results  # noqa: E402
from gptlab.lab.scale import scale_blocks  # noqa: E402


# -- plots -------------------------------------------------------------------------------------------------------
def plot_curves(results: Results, lesson: Lesson, path: Path) -> None:
    """Val loss over training per condition: the mean over seeds with its 95 % CI band, one colour per variant."""
    n = len(results.conditions)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), dpi=110, squeeze=False)
    palette = colors(results.variants)
    for ax, condition in zip(axes.flat, results.conditions):
        for variant in results.variants:
            steps, mean, low, high = results.curve_band(condition, variant)
            if len(steps) == 0:
                continue
            ax.plot(steps, mean, color=palette[variant], label=variant, lw=1.6)
            ax.fill_between(steps, low, high, color=palette[variant], alpha=0.2, lw=0)
        ax.set_title(condition, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(lesson.metric_label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes.flat:  # the first panel with curves carries the legend
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    fig.suptitle(f"{lesson.title}: {lesson.metric_label} during training (mean, 95 % CI band over seeds)", fontsize=11)
    write_figure(fig, path)


def plot_final(results: Results, lesson: Lesson, path: Path) -> None:
    """Final metric per variant, one panel (own y scale) per condition: the mean with its 95 % CI, seeds as dots."""
    n = len(results.conditions)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    k = len(results.variants)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2, 0.9 * k + 1.5) * cols, 3.2 * rows), dpi=110,
                             squeeze=False)
    palette = colors(results.variants)
    for ax, condition in zip(axes.flat, results.conditions):
        for j, variant in enumerate(results.variants):
            values = results.values(condition, variant, lesson.metric)
            if not values:
                continue
            s = stats.summarize(values)
            ax.scatter([j] * len(values), values, color=palette[variant], alpha=0.3, s=10)
            err = [[s.mean - s.ci_low], [s.ci_high - s.mean]] if not math.isnan(s.ci_low) else None
            ax.errorbar([j], [s.mean], yerr=err, fmt="o", color=palette[variant], capsize=4)
        ax.set_xticks(range(k), results.variants, rotation=25, ha="right", fontsize=8)
        ax.set_xlim(-0.6, k - 0.4)
        ax.set_title(condition, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].set_ylabel(f"final {lesson.metric_label}")
    fig.suptitle(f"{lesson.title}: final {lesson.metric_label} (mean and 95 % CI; dots are seeds)", fontsize=11)
    write_figure(fig, path)


def _interrupted(history: list[dict]) -> str:
    n = sum(1 for h in history if "finished" not in h)
    return f", {n} of them interrupted and counted up to their last finished cell" if n else ""


# -- the blocks --------------------------------------------------------------------------------------------------
def build_blocks(results: Results, lesson: Lesson) -> list[Block]:
    meta, grid = results.meta, results.meta.get("grid", {})
    blocks = [Block("h1", f"Lesson: {lesson.title}"), Block("p", lesson.question)]

    history = [h for h in meta.get("history", []) if "wall_s" in h]
    wall = sum(h["wall_s"] for h in history)
    compute = sum(c.summary.get("wall_s", 0.0) for c in results.cells)
    blocks.append(Block("h2", "The grid"))
    blocks.append(Block("p", f"Profile {meta.get('profile')!s}: {len(grid.get('conditions', []))} conditions × "
                             f"{len(grid.get('variants', []))} variants × {len(grid.get('seeds', []))} seeds; "
                             f"{len(results.cells)} cells finished, {results.missing()} missing. "
                             f"Wall time {wall / 60:.1f} min over {len(history)} invocation(s)"
                             f"{_interrupted(history)} "
                             f"({compute / 60:.1f} min of cell time). "
                             f"Extra settings: {', '.join(meta.get('set', [])) or 'none'}."))
    rows = [["", "name", "settings"]]
    rows += [["condition", c["name"], f"{c['dataset']}; " + _settings(c["overrides"])] for c in grid.get("conditions", [])]
    rows += [["variant", v["name"], (v.get("label") or "") + ("; " if v.get("label") else "") + _settings(v["overrides"])]
             for v in grid.get("variants", [])]
    rows += [["all cells", "", _settings(grid.get("base", {}))]]
    blocks.append(Block("table", items=rows))

    blocks.append(Block("h2", "Results"))
    units = results.text_units()
    if units and "loss" in lesson.metric_label:
        blocks.append(Block("p", "Losses are in nats per token. In bits per byte (comparable across tokenizers): "
                                 + "; ".join(f"on {key}'s validation text, 1 nat/token = "
                                             f"{1 / (math.log(2) * u['bytes_per_token']):.4f} bits/byte "
                                             f"({u['bytes_per_token']:.3f} bytes per token)"
                                             for key, u in units.items()) + "."))
    header = ["condition", "variant", "n", f"{lesson.metric_label} (mean ± 95 % CI)", "SD"]
    header += [label for _, label, _ in lesson.table_metrics]
    rows = [header]
    for condition in results.conditions:
        for variant in results.variants:
            s = results.summary(condition, variant, lesson.metric)
            if s.n == 0:
                continue
            ci = "" if math.isnan(s.ci_low) else f" ± {s.half_width:.4f}"
            row = [condition, variant, str(s.n), f"{fmt(s.mean)}{ci}", fmt(s.std)]
            for key, _, pattern in lesson.table_metrics:
                vals = results.values(condition, variant, key)
                row.append(pattern.format(sum(vals) / len(vals)) if vals else "n/a")
            rows.append(row)
    blocks.append(Block("table", items=rows))

    if meta.get("profile") in SOURCES:  # one arm, many seeds: the pipeline's calibration instead of verdicts
        blocks += calibration_blocks(results, lesson, results.directory)
        return blocks + plot_blocks(lesson)
    if not lesson.comparisons():  # a lesson that decides in its own way (gptlab ab: a sequential test)
        blocks += [Block("p", text) for text in lesson.discussion(results)]
        return blocks + plot_blocks(lesson) + lesson.extra_blocks(results, results.directory)
    comparisons = results.compare(lesson.comparisons(), lesson.metric, lesson.equivalence_margin)
    blocks.append(Block("h2", "Comparisons"))
    blocks.append(Block("p", f"Difference = mean(other) − mean(baseline) in {lesson.metric_label}; paired t-test on "
                             "the seeds both arms ran (matched by seed id: same seed, same batches), else Welch. "
                             f"One Holm family: all {len(comparisons)} comparisons of this table; each CI is at the "
                             "level consistent with its Holm-adjusted p (it excludes 0 exactly when Holm p < 0.05). "
                             f"Equivalence: two one-sided tests against ±{lesson.equivalence_margin:g}, Holm-adjusted "
                             "in the same way. MDE: the smallest difference these seeds detect with 80 % power at "
                             "the family's corrected level (α/m, Holm's strictest step). "
                             f"Bootstrap CIs only from {stats.BOOTSTRAP_MIN_N} seeds per arm (fewer undercover)."))
    rows = [["condition", "baseline → other", "difference", "CI (Holm-consistent)", "p", "Holm p",
             f"TOST ±{lesson.equivalence_margin:g} (Holm)", "MDE", "g", "test"]]
    for condition, c in comparisons:
        boot = "" if math.isnan(c.boot_low) else f"; bootstrap {fmt(c.boot_low)} to {fmt(c.boot_high)}"
        rows.append([condition, f"{c.a} → {c.b}", f"{c.diff:+.4f}",
                     f"{fmt(c.ci_low)} to {fmt(c.ci_high)} ({100 * c.ci_level:.2f} %){boot}", fmt_p(c.p),
                     fmt_p(c.p_adjusted), fmt_p(c.p_equivalent_adjusted), fmt(c.mde), fmt(c.hedges_g, 2),
                     c.test + (f", {c.dropped} unpaired runs left out" if c.dropped else "")])
    blocks.append(Block("table", items=rows))
    pairs = lesson.comparisons()
    same = [f"{condition}: {why}" for condition in results.conditions for pair in pairs
            if results.arm(condition, pair[0]) and results.arm(condition, pair[1])
            and (why := results.duplicate(condition, pairs, pair))]
    if same:
        blocks.append(Block("p", "Left out of the tests (and of Holm's family) because they would repeat a test on "
                                 "the same runs: " + "; ".join(same) + "."))
    blocks.append(Block("h2", "Verdicts"))
    blocks.append(Block("ul", items=[f"{condition}: " + stats.verdict(c, lesson.metric_label, lesson.lower_is_better)
                                     for condition, c in comparisons]))
    discussion = lesson.discussion(results)
    if discussion:
        blocks.append(Block("h2", "Reading the results"))
        blocks += [Block("p", text) for text in discussion]
    blocks += scale_blocks(results, lesson.scale_comparisons(), list(lesson.scale_metrics) or [(lesson.metric,
                           lesson.metric_label)], lesson.equivalence_margin, results.directory)
    blocks += literature_blocks(lesson.name, results, lesson.equivalence_margin)
    return blocks + plot_blocks(lesson) + lesson.extra_blocks(results, results.directory)


def plot_blocks(lesson: Lesson) -> list[Block]:
    """The two figures every report has (write_report draws them)."""
    return [Block("h2", "Plots"), Block("img", "curves.png", items=[f"{lesson.metric_label} during training"]),
            Block("img", "final.png", items=[f"final {lesson.metric_label}"])]


def _settings(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "—"


def write_report(directory: str | Path, lesson: Lesson | None = None) -> Path:
    """Rebuild DIR/report.md, report.html, curves.png and final.png from DIR's cell files; returns report.md."""
    from gptlab.errors import GptlabError
    from gptlab.lab.lessons import get_lesson

    directory = Path(directory)
    results = load_results(directory)
    lesson = lesson or get_lesson(results.meta["lesson"])
    if not results.cells:
        raise GptlabError(f"{directory} has no finished cells yet; run `gptlab lab run {lesson.name} --out {directory}`")
    plot_curves(results, lesson, directory / "curves.png")
    plot_final(results, lesson, directory / "final.png")
    blocks = build_blocks(results, lesson)
    atomic_write_text(directory / "report.md", to_markdown(blocks))
    atomic_write_text(directory / "report.html", to_html(blocks, directory))
    return directory / "report.md"
