"""Render a bench report: report.json, report.md, PNG plots (matplotlib) and a rich terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import OptionsError


def write_outputs(report: dict[str, Any], out: Path) -> None:
    report["plots"] = _plots(report, out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    _print_table(report)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# torchship bench: {report['task']}",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads; torch {m['torch']}, onnxruntime {m['onnxruntime']}; "
        f"GEMM peak {report['gemm_peak_gflops']:.1f} GFLOP/s",
        "",
        "| contender | shape | median ms | p90 ms | p99 ms | items/s | GFLOP/s | % of peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["measurements"]:
        if r["series"] == "shapes":
            lines.append(
                f"| {r['contender']} | {r['batch']}x{r['seq']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['items_per_s']:.1f} | {r['gflops']:.1f} | {r['percent_of_peak']:.0f} % |"
            )
    corpus = report.get("corpus")
    if corpus:
        lines += [
            "",
            f"Corpus {corpus['file']}: {corpus['texts']} texts, buckets {corpus['bucket_edges']}",
            "",
            "| contender | seconds | texts/s | real tokens | padded tokens | padding waste | FLOPs / unpadded |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in corpus["contenders"]:
            lines.append(
                f"| {r['contender']} | {r['seconds']:.2f} | {r['texts_per_s']:.1f} | {r['real_tokens']} | "
                f"{r['padded_tokens']} | {r['padding_waste']:.1%} | {r['flops_ratio']:.3f} |"
            )
    lines += ["", *(f"- note: {n}" for n in report["notes"])]
    lines += ["", *(f"![{p}]({p})" for p in report["plots"])]
    return "\n".join(lines) + "\n"


def _plots(report: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise OptionsError("torchship bench draws plots with matplotlib: pip install 'torchship[bench]'") from e
    written = []
    for series, x, y, name, xlabel, ylabel in (
        ("seq_sweep", "seq", "median_ms", "latency_vs_seq.png", "sequence length (batch 1)", "median latency (ms)"),
        ("batch_sweep", "batch", "items_per_s", "throughput_vs_batch.png", "batch size", "throughput (items/s)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for contender in dict.fromkeys(r["contender"] for r in report["measurements"]):
            points = [
                (r[x], r[y]) for r in report["measurements"] if r["series"] == series and r["contender"] == contender
            ]
            if points:
                xs, ys = zip(*sorted(points), strict=True)
                ax.plot(xs, ys, marker="o", label=contender)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(ylabel.split(" (")[0].capitalize() + f" — {report['task']}")
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    corpus = report.get("corpus")
    if corpus:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        ax.hist(corpus["lengths"], bins=60, color="#4c72b0", alpha=0.85)
        for edge in corpus["bucket_edges"]:
            ax.axvline(edge, color="#c44e52", linewidth=1)
        ax.set_xlabel("tokens per text (red: bucket edges)")
        ax.set_ylabel("texts")
        ax.set_title(f"Length histogram — {corpus['texts']} texts")
        fig.tight_layout()
        fig.savefig(out / "lengths.png")
        plt.close(fig)
        written.append("lengths.png")
    return written


def _print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"torchship bench — {report['task']} (GEMM peak {report['gemm_peak_gflops']:.0f} GFLOP/s)")
    for column in ("contender", "shape", "median ms", "p90 ms", "p99 ms", "items/s", "% of peak"):
        table.add_column(column, justify="left" if column == "contender" else "right")
    for r in report["measurements"]:
        if r["series"] == "shapes":
            table.add_row(
                r["contender"], f"{r['batch']}x{r['seq']}", f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}",
                f"{r['p99_ms']:.2f}", f"{r['items_per_s']:.1f}", f"{r['percent_of_peak']:.0f} %",
            )  # fmt: skip
    console = Console()
    console.print(table)
    for note in report["notes"]:
        console.print(f"note: {note}")
