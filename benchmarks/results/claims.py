"""Check the papers' claims (SPEC §4) on the records of finished `unimargin compare` runs.

    python benchmarks/results/claims.py runs/mnist1d_all runs/fashion

Reads OUT/records.json of each compare directory and prints, as Markdown, the paired
tests behind docs/RESULTS.md: lmdl SW > softmax SW; bce-u Uni > softmax Uni with SW >=
softmax; bce-u's learned threshold within 1 point of Uni at t*. Completed runs only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unimargin.report.records import RunRecord
from unimargin.report.tables import format_p, format_summary, paired_for, summary_for


def load(directory: str) -> list[RunRecord]:
    raw = json.loads((Path(directory) / "records.json").read_text())
    return [RunRecord(head=r["head"], seed=r["seed"], status=r["status"], final=r["final"],
                      runtime_s=r["runtime_s"], epochs_completed=r["epochs_completed"],
                      message=r["message"], open_set=r.get("open_set") or {}) for r in raw]


def paired_line(records, head, key, baseline="softmax") -> str:
    seeds, test = paired_for(records, head, baseline, key)
    if test.n == 0:
        return f"| {head} − {baseline} | {key} | no paired seeds | | | | |"
    scale = 100.0 if key in ("sw", "cw", "uni") else 1.0
    wins = sum(d > 0 for d in test.differences)
    return (f"| {head} − {baseline} | {key} | {format_summary(key, summary_for(records, head, key))} vs "
            f"{format_summary(key, summary_for(records, baseline, key))} | {test.mean_difference * scale:+.2f} | "
            f"{wins}/{test.n} | {format_p(test.t_p_value)} | {format_p(test.sign_flip_p)} |")


TABLE_KEYS = [("sw", "SW %"), ("cw", "CW %"), ("uni", "Uni %"), ("t_star", "t*"),
              ("learned_threshold", "t_l"), ("uni_at_learned", "Uni(t_l) %"), ("sep_auc", "sep AUC"),
              ("intra_class_cosine", "intra cos ↑"), ("inter_class_angle_min", "min angle ↑"),
              ("compactness_ratio", "intra/inter ↓"), ("centroid_margin_min", "centroid margin ↑")]
OPEN_SET_KEYS = [("verif_roc_auc", "verif AUC ↑"), ("verif_eer", "EER ↓"), ("verif_tar_at_far_1e-2", "TAR@1e-2 ↑"),
                 ("reject_auroc", "reject AUROC ↑"), ("reject_open_set_accuracy", "open-set acc % ↑"),
                 ("reject_known_accept_rate", "known accepted % ↑"), ("reject_unknown_reject_rate", "unknown rejected % ↑")]


def head_table(records, keys) -> str:
    from unimargin.report.records import heads_in_order
    from unimargin.report.stats import summarize

    lines = ["| head | ok | " + " | ".join(label for _, label in keys) + " | s/run |",
             "|" + " --- |" * (len(keys) + 3)]
    for head in heads_in_order(records):
        ok = [r for r in records if r.head == head and r.ok]
        cells = []
        for key, _ in keys:
            summary = summary_for(records, head, key)
            text = format_summary(key, summary, digits=2 if key not in ("sep_auc", "intra_class_cosine", "verif_roc_auc", "verif_eer", "reject_auroc", "verif_tar_at_far_1e-2") else 3)
            cells.append(text)
        runtime = summarize([r.runtime_s for r in ok])
        lines.append(f"| {head} | {len(ok)}/{sum(r.head == head for r in records)} | " + " | ".join(cells)
                     + f" | {runtime.mean or 0:.0f} |")
    return "\n".join(lines)


def main(directories: list[str]) -> None:
    for directory in directories:
        records = load(directory)
        heads = {r.head for r in records}
        print(f"### {directory}\n")
        print(head_table(records, TABLE_KEYS) + "\n")
        if any(r.open_set for r in records):
            print(head_table(records, OPEN_SET_KEYS) + "\n")
        print("| comparison | metric | mean ± std (head vs baseline) | mean Δ | seeds head > baseline | paired t p | sign-flip p |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for head, key in [("lmdl", "sw"), ("lmdl", "uni"), ("bce-u", "sw"), ("bce-u", "uni")]:
            if head in heads and "softmax" in heads:
                print(paired_line(records, head, key))
        if "bce-u" in heads:
            loss = summary_for(records, "bce-u", "uni_loss_learned")
            worst = max(loss.values) if loss.values else None
            print(f"\nbce-u Uni(t*) − Uni(t_l): {format_summary('uni_loss_learned', loss)} points "
                  f"(worst seed {worst * 100:.2f}); |t_l − t*| = "
                  f"{format_summary('threshold_distance', summary_for(records, 'bce-u', 'threshold_distance'))}, "
                  f"relative {format_summary('threshold_distance_rel', summary_for(records, 'bce-u', 'threshold_distance_rel'))}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
