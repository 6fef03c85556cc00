"""Print the README's Performance section body (markdown) from the committed benchmark results.

Reads the json of ``benchmarks/zeroshot_inference.py`` and, when given, that of ``benchmarks/world_precision.py``;
the README quotes this output verbatim, so its figures are the files' figures.

    python benchmarks/readme_table.py benchmarks/results/zeroshot_inference_cpu.json \\
        --world benchmarks/results/world_precision.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = (("exact", "fp32 (exact)"), ("bf16", "bf16"), ("fast", "`fast`"))
ROWS = (
    ("rpn_mode_s_per_image", "`detect`, RPN mode, s/image"),
    ("gt_box_mode_s_per_image", "`detect`, GT boxes (5 per image), s/image"),
    ("stages_1000_random_boxes_s_per_image", "stages with 1000 random boxes, s/image"),
    ("text_s_per_1000_prompts", "text, s per 1000 prompts"),
)
KNOBS = (
    ("num_proposals_300", "300 proposals"),
    ("roi_sampling_ratio_2", "RoIAlign sampling ratio 2"),
    ("bf16", "bf16"),
    ("batch_regions_across_images", "region batches across images"),
    ("fast", "`fast` (all four)"),
)


def ratio(value: float | list[float]) -> str:
    """``a–b×`` for a range, ``a×`` for one figure."""
    return "–".join(f"{v:.2f}" for v in value) + "×" if isinstance(value, list) else f"{value:.2f}×"


def load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


COMPARISON_HEADER = (
    "| | official | " + " | ".join(title for _, title in COLUMNS) + " | official ÷ ours ("
    + " / ".join(title for _, title in COLUMNS) + ") |",
    "|---|---|" + "---|" * len(COLUMNS) + "---|",
)
SIDE_BY_SIDE_ROWS = (
    ("rpn", "`detect`, RPN mode (1000 proposals), s/image"),
    ("gt", "`detect`, GT boxes ({boxes} per image), s/image"),
    ("text", "text, s per 1000 prompts"),
)


def side_by_side_section(report: dict) -> list[str]:
    """The comparison table from ``benchmarks/official_side_by_side.py``: official and ours measured on this machine
    in alternating processes; ratios per pair, median (min–max)."""
    setup, loads, summary = report["setup"], report["load_average_1_5_15_min"], report["summary"]
    sizes = " and ".join(f"{h}×{w}" for h, w in setup["images"])
    pairs = max(len(row["official"]["values"]) for row in summary.values())
    commit = (setup["official_git_head"] or "unknown")[:7]
    lines = [
        "Official column: **measured on this machine**, side by side (`benchmarks/official_side_by_side.py`, "
        f"`benchmarks/results/official_side_by_side_cpu.json`): microsoft/RegionCLIP {commit} and this library on the "
        f"same generated weights (official checkpoint layout), noise images {sizes}, {setup['vocabulary']}-name "
        f"vocabulary, fp32 official vs ours; CPU ({setup['cpu']}), torch threads: {setup['threads']}, torch "
        f"{setup['ours_torch']} on both sides; {pairs} alternating pairs of processes per mode, each timing all images "
        f"once after a warm-up. Load average (1/5/15 min) {load(loads['before'])} before, "
        f"{load(loads['after']) if loads['after'] else '—'} after. Seconds: median over the pairs; ratio = official "
        "÷ ours per pair, median (min–max) (above 1: faster than the official).",
        "",
        *COMPARISON_HEADER,
    ]
    for mode, title in SIDE_BY_SIDE_ROWS:
        if mode not in summary:
            continue
        row = summary[mode]
        ours = {"exact": "fp32", "fast": "bf16"} if mode == "text" else {name: name for name, _ in COLUMNS}
        cells, ratios = [], []
        for name, _ in COLUMNS:
            key = ours.get(name, name)
            if key in row["ours"]:
                spread = row["official_over_ours"][key]
                cells.append(f"{row['ours'][key]['median']:.2f}")
                ratios.append(f"{spread['median']:.2f}× ({spread['min']:.2f}–{spread['max']:.2f})")
            else:
                cells.append("—")
                ratios.append("—")
        lines.append(f"| {title.format(boxes=setup['gt_boxes_per_image'])} | {row['official']['median']:.2f} | "
                     + " | ".join(cells) + " | " + " / ".join(ratios) + " |")
    if "text" in summary:
        lines += ["", "Text: official = its concept-embedding loop (one name at a time, 81 templates, all 77 "
                      "positions); ours = `embed_names` (no cache); `fast` encodes text in bf16."]
    return lines


def inference_section(report: dict, side_by_side: dict | None = None) -> list[str]:
    setup, loads = report["setup"], report["load_average_1_5_15_min"]
    sizes = " and ".join(f"{h}×{w}" for h, w in setup["images"])
    if side_by_side is not None:
        lines = side_by_side_section(side_by_side) + [
            "",
            f"The rest from `benchmarks/results/zeroshot_inference_cpu.json` (ours only): CPU ({setup['cpu']}), torch "
            f"threads: {setup['threads']}, torch {setup['torch']}; {setup['model']}, {setup['rpn']}; noise images "
            f"{sizes}, median of {setup['repeats']} after a warm-up. Load average (1/5/15 min) "
            f"{load(loads['before'])} before, {load(loads['after'])} after.",
        ]
        return lines + details_section(report)
    lines = [
        f"CPU ({setup['cpu']}), torch threads: {setup['threads']}, torch {setup['torch']}; {setup['model']}, "
        f"{setup['rpn']}; noise images {sizes}, {setup['vocabulary']}-name vocabulary, median of "
        f"{setup['repeats']} after a warm-up. Load average (1/5/15 min) {load(loads['before'])} before, "
        f"{load(loads['after'])} after. Official column: the figures quoted in issue 13, measured side by side on "
        "**another** 2-core machine (fp32, 2 threads), so the ratios mix two CPUs. Ratio = official ÷ ours (above 1: "
        "faster than the official).",
        "",
        *COMPARISON_HEADER,
    ]
    for key, title in ROWS:
        row = report["comparison_with_official"][key]
        official = row["official"]
        official_text = "–".join(f"{v:g}" for v in official) if isinstance(official, list) else f"{official:.1f}"
        ours = [f"{row['ours'][name]:.2f}" if name in row["ours"] else "—" for name, _ in COLUMNS]
        ratios = [ratio(row["official_over_ours"][name]) if name in row["ours"] else "—" for name, _ in COLUMNS]
        lines.append(f"| {title} | {official_text} | " + " | ".join(ours) + " | " + " / ".join(ratios) + " |")
    return lines + details_section(report)


def details_section(report: dict) -> list[str]:
    """The fast-preset knobs, the per-stage line and the text line of ``benchmarks/zeroshot_inference.py``."""
    setup = report["setup"]
    lines: list[str] = []
    detect = report["detect_rpn_mode"]
    knobs = [(name, title) for name, title in KNOBS if name in detect["s_per_image"]]
    lines += [
        "",
        f"`fast` preset, RPN mode, per knob (exact: {detect['s_per_image']['exact']:.2f} s/image, "
        f"{detect['detections_per_image_exact']:.0f} detections per image). Kept = fraction of the exact detections "
        "found again with the same class at box IoU ≥ 0.9 (≥ 0.5); on generated weights the region features are "
        "nearly parallel and the class scores nearly tied, so this is a harsh test:",
        "",
        "| knob | s/image | speed-up | kept, IoU ≥ 0.9 | kept, IoU ≥ 0.5 |",
        "|---|---|---|---|---|",
    ]
    for name, title in knobs:
        lines.append(
            f"| {title} | {detect['s_per_image'][name]:.2f} | {detect['speedup_vs_exact'][name]:.2f}× | "
            f"{detect['same_detections_vs_exact_iou_0.9'][name]:.1%} | "
            f"{detect['same_detections_vs_exact_iou_0.5'][name]:.1%} |"
        )
    gt = report["detect_gt_box_mode"]
    lines += ["", "GT-box mode keeps " + ", ".join(
        f"{gt['same_detections_vs_exact_iou_0.9'][name]:.1%} ({name})" for name in ("bf16", "fast")
    ) + " of the exact detections."]

    stages, gemm, head = report["stages_s_per_image"], report["measured_matmul_gflops"], report["region_head_vs_matmul_rate"]
    lines += ["", f"Per stage, s/image ({setup['proposals']} random boxes on the first image): " + "; ".join(
        f"{stage.removesuffix('_s')} {stages['fp32'][stage]:.2f} → {stages['bf16'][stage]:.2f}"
        for stage in stages["fp32"] if stage not in ("total_s", "trunk_under_autocast_s")
    ) + (f" (fp32 → bf16; the trunk stays fp32, under bf16 autocast it would take "
         f"{stages['bf16']['trunk_under_autocast_s']:.2f} s)" if "trunk_under_autocast_s" in stages["bf16"]
         else " (fp32 → bf16 autocast; RoIAlign stays fp32)") + ". Measured matmul rate of this CPU: " + ", ".join(
        f"{precision} {gemm[precision]:.0f} GFLOP/s (region head reaches "
        f"{head[precision]['fraction_of_measured_matmul_rate']:.0%})" for precision in ("fp32", "bf16")
    ) + f"; folding the BatchNorms makes the fp32 head {report['region_head_speedup_from_folding']:.2f}× faster."]

    text, lvis = report["text_s_per_1000_prompts"], report.get("text_lvis_81_templates_estimate", {})
    line = "Text, per 1000 prompts (LVIS names × the 81 templates): " + "; ".join(
        f"{precision} {text[precision]['trimmed_sorted_s']:.2f} s trimmed and length-sorted vs "
        f"{text[precision]['all_77_positions_s']:.2f} s over all 77 positions ({text[precision]['speedup']:.1f}×)"
        for precision in ("fp32", "bf16")
    ) + "."
    if lvis:
        first = next(iter(lvis.values()))
        line += (f" The LVIS vocabulary × 81 templates ({first['prompts_81_templates']:,} prompts), estimated from all "
                 f"names × the first {first['measured_templates']} templates (×{81 / first['measured_templates']:.2f}): "
                 + ", ".join(f"{p} ≈ {v['extrapolated_s_81_templates'] / 60:.1f} min" for p, v in lvis.items()) + ".")
    lines += ["", line]
    return lines


def world_section(report: dict) -> list[str]:
    threads, loads = report["threads"], (report["load_before"], report["load_after"])
    lines = [
        f"Accuracy on the embedded world (`benchmarks/results/world_precision.json`, torch threads: {threads}, load "
        f"{load(loads[0])} before, {load(loads[1])} after): zero-shot AP50 (all / novel), GT boxes and RPN proposals.",
        "",
        "| model | mode | fp32 | bf16 | `fast` |",
        "|---|---|---|---|---|",
    ]
    for model, results in report["inference"].items():
        for mode, title in (("gt", "GT boxes"), ("rpn", "RPN")):
            cells = [f"{results[p][mode]['all']:.2f} / {results[p][mode]['novel']:.2f}" for p in ("fp32", "bf16", "fast")]
            lines.append(f"| {model} | {title} | " + " | ".join(cells) + " |")
    speed, trained = report["training_speed"], report["trained_teachers"]
    lines += ["", (
        f"Teacher training under bf16 autocast: {speed['bf16_speedup']:.2f}× the fp32 steps per second (batch "
        f"{speed['batch_size']}); a teacher trained each way: " + "; ".join(
            f"{p} {t['train_seconds']:.0f} s, region top-1 {t['region_top1']:.3f}, AP50 GT "
            f"{t['ap50']['gt']['all']:.2f} / RPN {t['ap50']['rpn']['all']:.2f}" for p, t in trained.items()
        ) + "."
    )]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inference", type=Path, help="json of benchmarks/zeroshot_inference.py")
    parser.add_argument("--world", type=Path, help="json of benchmarks/world_precision.py")
    parser.add_argument("--official", type=Path,
                        help="json of benchmarks/official_side_by_side.py: the official column measured on this "
                             "machine, instead of the issue-13 figures from another machine")
    args = parser.parse_args()
    side_by_side = json.loads(args.official.read_text()) if args.official is not None else None
    lines = inference_section(json.loads(args.inference.read_text()), side_by_side)
    if args.world is not None:
        lines += [""] + world_section(json.loads(args.world.read_text()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
