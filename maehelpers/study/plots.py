"""The study's pictures: paired differences per arm (each seed a dot), the budget curve, feature
health against the k-NN change."""
from .arms import HEADLINE
from .tables import curve_arms


def _diff_panel(ax, rows, arms, metric: str, steps: int) -> None:
    """One panel: each arm's paired differences to original on `metric` (mean pool filled, cls hollow),
    seeds as small dots, the mean with its 95 % t interval, the zero line and raw pixels' level."""
    for y, r in enumerate(arms):
        for pool, style in (("mean", dict(color="C0")), ("cls", dict(color="C1", mfc="none"))):
            p = r.get(f"{metric}_{pool}_vs_original")
            if p:
                off = -0.15 if pool == "mean" else 0.15
                ax.plot(p.get("diffs", []), [y + off] * len(p.get("diffs", [])), ".", color=style["color"],
                        alpha=0.35, ms=4)  # each seed's difference
                ax.errorbar(p["diff"], y + off, xerr=p["ci95"] or 0, fmt="o", ms=4, capsize=2,
                            label=f"{pool} pool" if y == 0 else None, **style)
    ax.axvline(0, color="k", lw=0.8)
    base, raw = (next((r for r in rows if r["steps"] == steps and r["arm"] == a), {}) for a in ("original", "raw_pixels"))
    if raw.get(f"{metric}_mean") is not None and base.get(f"{metric}_mean") is not None:
        ax.axvline(raw[f"{metric}_mean"] - base[f"{metric}_mean"], color="0.5", ls="--", lw=0.8, label="raw pixels")
    ax.grid(axis="x", alpha=0.3)
    ax.set_yticks(range(len(arms)), [f"{r['arm']} (n={len(r['seeds'])})" for r in arms], fontsize=7)
    ax.set_ylim(len(arms) - 0.5, -0.5)


def plot(rows_by_split: dict, path, steps: int) -> None:
    """The study's picture: per split (validation, held-out), each arm's paired differences to
    `original` on k-NN and the linear probe: what each arm changes, not absolute accuracies."""
    import matplotlib.pyplot as plt
    panels = {split: [r for r in rows if r["steps"] == steps and r["arm"] not in ("original", "raw_pixels")
                      and r.get("knn_top1_mean_vs_original")] for split, rows in rows_by_split.items()}
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, sum(0.32 * len(a) + 1.0 for a in panels.values()) + 0.6),
                             dpi=100, squeeze=False, gridspec_kw={"height_ratios": [len(a) + 2 for a in panels.values()]})
    for row_axes, (split, arms) in zip(axes, panels.items()):
        for ax, metric in zip(row_axes, ("knn_top1", "lp_top1")):
            _diff_panel(ax, rows_by_split[split], arms, metric, steps)
            ax.set_title(f"{split} split: {'k-NN' if metric == 'knn_top1' else 'linear probe'}, top-1 minus "
                         "original (points)", fontsize=9)
        row_axes[1].set_yticklabels([])
        row_axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{steps} steps; small dots: each seed's paired difference; whiskers: 95 % t interval over seeds "
                 "(none with one seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_budget(rows, path) -> bool:
    """k-NN (mean pool, mean over seeds) against pretraining steps for every arm run at more than one
    budget, with the raw-pixel and random-encoder levels: does the gap grow with training?"""
    import matplotlib.pyplot as plt
    arms = curve_arms(rows)
    if not arms:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, arm in enumerate(arms):
        mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["steps"])
        seeds = ", ".join(str(len(r["seeds"])) for r in mine)
        ax.plot([r["steps"] for r in mine], [r[HEADLINE] for r in mine], "o-", color=f"C{i}",
                label=f"{arm} (seeds: {seeds})")
    for name, style in (("raw_pixels", "--"), ("random", ":")):
        level = [r[HEADLINE] for r in rows if r["arm"] == name and r.get(HEADLINE) is not None]
        if level:
            ax.axhline(level[0], color="0.4", ls=style, lw=1, label=name.replace("_", " "))
    steps_axes(ax, sorted({r["steps"] for r in rows if r["arm"] in arms}),
               "pretraining steps (each its own run, cosine schedule to 0)", "mean over seeds (how many per budget in the legend)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def steps_axes(ax, ticks, xlabel: str, title: str) -> None:
    """Log steps on x with these ticks, k-NN top-1 on y, a title and a light grid."""
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("k-NN top-1, mean pool (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def health_pairs(records: dict, steps: int = 500) -> dict:
    """{arm: [(change in effective rank, change in k-NN), one per seed]}: each arm minus `original` at
    the same seed, for the runs whose records hold the feature health."""
    base = {s: r for (a, s, st), r in records.items() if a == "original" and st == steps and "effective_rank" in r}
    out = {}
    for (arm, seed, st), r in sorted(records.items()):
        if arm != "original" and st == steps and "effective_rank" in r and seed in base and r.get(HEADLINE) is not None:
            out.setdefault(arm, []).append((r["effective_rank"] - base[seed]["effective_rank"],
                                            r[HEADLINE] - base[seed][HEADLINE]))
    return out


def plot_health(records_by_split: dict, path) -> bool:
    """Does a gain come with a higher effective rank? Per split, each (arm, seed) as a point: change in
    the final encoder's effective rank against change in k-NN, both paired with `original`."""
    import matplotlib.pyplot as plt
    pairs = {split: health_pairs(r) for split, r in records_by_split.items()}
    if not any(pairs.values()):
        return False
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    for ax, (split, by_arm) in zip(axes[0], pairs.items()):
        for i, (arm, pts) in enumerate(sorted(by_arm.items())):
            ax.plot(*zip(*pts), "o", color=f"C{i % 10}", ms=5, label=arm)
        ax.axhline(0, color="k", lw=0.8)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("effective rank, arm minus original (same seed)")
        ax.set_ylabel("k-NN top-1, mean pool, arm minus original")
        ax.set_title(f"{split} split: does a gain come with a higher rank?", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_long(validation: dict, heldout: dict, path=None, steps: int = 16000):
    """The long-budget stage in one picture: each arm's k-NN monitor curve over the steps of its
    16,000-step runs (mean over seeds, validation images), raw pixels as lines, and the records as
    points: 500, 2,000 and 4,000 steps (each its own run, validation images) and 16,000 steps
    (held-out images). validation / heldout: {(arm, seed, steps): record}. Saved to `path` (then
    True), or returned as a figure without one; False / None while the stage has no record."""
    import statistics

    import matplotlib.pyplot as plt
    arms = sorted({a for (a, _, st), r in heldout.items() if st == steps and r.get("monitor")},
                  key=lambda a: ("original", "improved", "unif_umae_mean_100x").index(a)
                  if a in ("original", "improved", "unif_umae_mean_100x") else 9)
    if not arms:
        return False if path else None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, arm in enumerate(arms):
        curves = [dict((p[0], p[1]) for p in r["monitor"]) for (a, _, st), r in heldout.items() if a == arm and st == steps
                  and r.get("monitor")]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(xs, [statistics.fmean(c[x] for c in curves) for x in xs], "-", color=f"C{i}", lw=1.5,
                label=f"{arm}: monitor, {len(curves)} seed{'s' if len(curves) > 1 else ''} (validation)")
        for split, records, marker in (("validation", validation, "o"), ("held-out", heldout, "s")):
            points = {}
            for (a, _, st), r in records.items():
                if a == arm and r.get(HEADLINE) is not None and (st < steps if split == "validation" else True):
                    points.setdefault(st, []).append(r[HEADLINE])
            if points:
                ax.plot(sorted(points), [statistics.fmean(points[s]) for s in sorted(points)], marker, color=f"C{i}",
                        mfc="white" if split == "validation" else f"C{i}", ms=6, ls="none",
                        label=f"{arm}: runs of their own length ({split})")
    for records, style, split in ((validation, "--", "validation"), (heldout, ":", "held-out")):
        raw = [r[HEADLINE] for (a, _, st), r in records.items() if a == "raw_pixels" and r.get(HEADLINE) is not None]
        if raw:
            ax.axhline(statistics.fmean(raw), color="0.3", ls=style, lw=1, label=f"raw pixels ({split})")
    steps_axes(ax, [500, 1000, 2000, 4000, 8000, 16000], "pretraining steps",
               "where MAE starts to work (Fashion-MNIST, preset ablation)")
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path)
    plt.close(fig)
    return True
