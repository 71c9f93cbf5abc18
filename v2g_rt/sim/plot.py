"""timeline.png: site power against setpoint and limits, EV state of charge, binding limit."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def timeline_png(rows: list[dict], path, title: str = "") -> None:
    h = [r["t_s"] / 3600 for r in rows]
    kw = lambda key: [r[key] / 1e3 for r in rows]  # noqa: E731
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2, 1.2]})
    ax1.plot(h, kw("site_w"), label="site (grid connection)", color="tab:blue")
    ax1.plot(h, kw("fleet_w"), label="EV fleet", color="tab:green")
    ax1.step(h, [r["setpoint_w"] / 1e3 if not math.isnan(r["setpoint_w"]) else math.nan for r in rows],
             where="post", label="fleet setpoint", color="black", linestyle="--")
    ax1.plot(h, kw("import_limit_w"), label="import limit", color="tab:red", linewidth=0.8)
    ax1.plot(h, [-r["export_limit_w"] / 1e3 for r in rows], label="export limit", color="tab:purple", linewidth=0.8)
    ax1.axhline(0, color="grey", linewidth=0.5)
    ax1.set_ylabel("kW (+ import / charge)")
    ax1.legend(loc="upper right", fontsize=8, ncol=3)
    ax1.set_title(title)
    ax2.fill_between(h, [r["soc_min"] for r in rows], [r["soc_max"] for r in rows], alpha=0.3,
                     color="tab:orange", label="EV SoC range")
    ax2.plot(h, [r["soc_mean"] for r in rows], color="tab:orange", label="mean SoC")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("SoC")
    twin = ax2.twinx()
    twin.plot(h, [r["evs"] for r in rows], color="grey", linewidth=0.8, label="EVs connected")
    twin.set_ylabel("EVs")
    ax2.legend(loc="upper left", fontsize=8)
    names = sorted({r["binding"] for r in rows})
    ax3.scatter(h, [names.index(r["binding"]) for r in rows], s=4, color="tab:blue")
    ax3.set_yticks(range(len(names)), names, fontsize=8)
    ax3.set_ylabel("binding")
    ax3.set_xlabel("hours")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
