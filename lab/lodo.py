"""Train one leave-one-domain-out run, then score its unseen domain: ``training.train``, then ``lab.heldout``.

    python -m lab.lodo --config shipped --data amibr=../shared/data/ami-br --leave-out-domain TUPAC16 \\
        --seed 0 --out runs/lodo/TUPAC16-shipped-s0

Takes exactly ``training.train``'s flags. ``training`` only holds the domain back (it never trains on it nor
selects on it); this study's report is written when the run ends, by the rank-0 process: OUT/heldout.json
(``lab.heldout.held_out_report`` with the run's ``--eval-tta`` and ``--eval-other-model``, an --all-figures run
at its ``--threshold-from`` cross-fit's threshold), and its summary as ``held_out`` in OUT/summary.json.
Without ``--leave-out-domain`` it is ``training.train``. ``lab.sweep`` and ``lab.born_again`` run their
leave-one-domain-out trainings through it.
"""

from __future__ import annotations

import json
import os
import sys

from training import train

from .heldout import report_run, summary_line


def held_out_summary(report: dict) -> dict:
    """What summary.json keeps of the report (lab.sweep's table and training.records read it)."""
    return {"domain": report["domain"], "selected_model": report["selected_model"], "threshold": report["threshold"],
            "roc_auc": report["test_at_threshold"]["pooled"]["roc_auc"]}


def train_and_report(args) -> dict:
    """``training.train.main(args)``, then (rank 0, a --leave-out-domain run) OUT/heldout.json and the summary's
    ``held_out``; returns the summary."""
    summary = train.main(args)
    if not args.leave_out_domain or int(os.environ.get("RANK", "0")) != 0:
        return summary
    report = report_run(args.out, args.eval_tta, args.eval_other_model, device_name=args.device)
    (args.out / "heldout.json").write_text(json.dumps(report, indent=1) + "\n")
    summary["held_out"] = held_out_summary(report)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(summary_line(report, f"tta {args.eval_tta}", args.out / "heldout.json"), flush=True)
    return summary


def main(argv: list[str] | None = None) -> dict:
    return train_and_report(train.parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
