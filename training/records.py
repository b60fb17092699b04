"""Records: the small files of a finished training run that a study reads, kept in the repository.

    python -m training.records runs/procedures/TUPAC16-current-s0 [RUN ...] --into records/procedures
    python -m training.records RUN --into records/procedures --update   # add the run's newer reports
    python -m lab.sweep ... --record records/procedures   # every finished run recorded; recorded runs skipped

A study that takes more CPU than one session has (docs/experiments.md §32: about 28 hours) is run over
several sessions and machines, and ``runs/`` does not outlive them: a CPU session's machine may not come
back. What the study's later steps and its report read is small: the unseen domain's report
(``heldout.json``, and ``lab.heldout``'s further ``heldout-*.json``), the validation scores
(``val_scores.json``), the summary, the resolved flags and the per-epoch history. A *record* is those
files (re-written without indentation, same content) in RECORDS/<run name>/, with ``record.json``: when and
at which commit it was recorded (the sweep records a run as it ends), on which machine (CPU model, native
bf16 or not, torch) and in how long it ran (wall time, pauses included).
``lab.compare``, ``training.oof`` and ``lab.procedures`` read a record folder as they read the
run's. Networks are not recorded: a step that needs them (an ensemble exported as a distillation
teacher) trains them again where they are gone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path

from .provenance import git_commit, machine

FORMAT = 1
RECORD = "record.json"
# summary.json first: training.train writes it last, so it marks a finished run.
RECORDED = ("summary.json", "heldout.json", "val_scores.json", "config.json", "history.json")
# lab.heldout's further reports of the run (other TTA, stack-norm, another threshold)
ALSO = "heldout-*.json"


def recorded_files(run: Path) -> list[str]:
    """The files of ``run`` a record keeps, in order."""
    return [f for f in RECORDED if (run / f).is_file()] + sorted(p.name for p in run.glob(ALSO) if p.is_file())


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None


def write_compact(path: Path, payload) -> None:
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")


def is_recorded(into: Path, name: str) -> bool:
    return (Path(into) / name / RECORD).is_file()


def resumed_at(run: Path, summary: dict | None = None) -> list[int]:
    """The epochs at which ``training.train --resume`` continued the run: its ``summary.json``'s
    ``resumed_at_epochs`` (written since 2026-12-06), with its ``train.log``'s "resumed from ... at epoch N"
    lines for what a checkpoint written before then could not carry (a run finished before then has only those)."""
    epochs = {int(epoch) for epoch in (summary or {}).get("resumed_at_epochs", [])}
    log = Path(run) / "train.log"
    if log.is_file():
        epochs |= {int(m.group(1)) for m in re.finditer(r"^resumed from .* at epoch (\d+)$",
                                                        log.read_text(errors="replace"), flags=re.M)}
    return sorted(epochs)


def record_run(run: Path, into: Path, *, name: str | None = None, wall_s: float | None = None,
               argv: list[str] | None = None, force: bool = False, note: str | None = None) -> Path:
    """Copy a finished run's small files to INTO/NAME (NAME: the run folder's name) with record.json.
    ValueError naming the folder for an unfinished run, a file that is not JSON, or an existing record
    (unless ``force``)."""
    run, into = Path(run), Path(into)
    name = name or run.name
    if not (run / RECORDED[0]).is_file():
        raise ValueError(f"{run}: no {RECORDED[0]}; the run has not finished (training.train writes it last)")
    dest = into / name
    if is_recorded(into, name) and not force:
        raise ValueError(f"{dest}: already recorded (--force replaces it)")
    payloads = {file: read_json(run / file) for file in recorded_files(run)}
    summary = payloads[RECORDED[0]]
    record = {
        "format": FORMAT,
        "run": name,
        "from": str(run),
        "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "files": sorted(payloads),
        # the sweep's wall time includes loading and the final scoring; the summary's is the epochs alone
        "wall_s": wall_s if wall_s is not None else summary.get("wall_s"),
        "train_wall_s": summary.get("wall_s"),
        "argv": [("python" if a == sys.executable else a) for a in argv] if argv else None,
    }
    resumed = resumed_at(run, summary)
    if resumed:
        # A resumed run's process started at the last resume: its wall time is that part alone.
        record["resumed_at_epochs"] = resumed
        if wall_s is not None:
            record["wall_s_covers"] = f"from the resume at epoch {resumed[-1]} on; train_wall_s: all the epochs"
    if note:
        record["note"] = note
    dest.mkdir(parents=True, exist_ok=True)
    for file, payload in payloads.items():
        write_compact(dest / file, payload)
    (dest / RECORD).write_text(json.dumps(record, indent=1) + "\n")  # last: marks the record complete
    return dest


def update_record(run: Path, into: Path, *, name: str | None = None) -> list[str]:
    """Add the files ``run`` has gained since it was recorded (a report of ``lab.heldout``, say) to its
    record, leaving the recorded ones and where the run was trained as they are; each addition is listed
    in record.json with when, on which commit and machine. Returns the files added."""
    run, into = Path(run), Path(into)
    name = name or run.name
    dest = into / name
    if not is_recorded(into, name):
        raise ValueError(f"{dest}: not recorded (record the run first)")
    record = read_json(dest / RECORD)
    new = [f for f in recorded_files(run) if f not in record["files"]]
    if not new:
        return []
    payloads = {file: read_json(run / file) for file in new}
    for file, payload in payloads.items():
        write_compact(dest / file, payload)
    stamp = {"recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
             "commit": git_commit(), "machine": machine()}
    record["files"] = sorted(record["files"] + new)
    record.setdefault("added", []).extend({"file": f, **stamp} for f in new)
    (dest / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return new


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="finished training run folders")
    p.add_argument("--into", type=Path, required=True, help="the records folder (e.g. records/procedures)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--force", action="store_true", help="replace existing records")
    how.add_argument("--update", action="store_true",
                     help="add the files a recorded run has gained since (lab.heldout's reports)")
    p.add_argument("--note", default=None, help="a line kept in record.json (e.g. the commit a run was trained at)")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    args = get_args_parser().parse_args(argv)
    done = []
    for run in args.runs:
        try:
            if args.update:
                added = update_record(run, args.into)
                print(f"{args.into / run.name}: " + (f"added {', '.join(added)}" if added else "nothing new"),
                      flush=True)
            else:
                done.append(record_run(run, args.into, force=args.force, note=args.note))
                print(f"recorded {run} -> {done[-1]}", flush=True)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
    return done


if __name__ == "__main__":
    main()
