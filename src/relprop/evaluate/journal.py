"""``progress.jsonl``: what ``relprop evaluate`` has measured, written batch by batch as it
goes, so that a run killed half-way (SIGKILL, Ctrl+C, a lost node) continues where it stopped.

The first line is the run's header (model, data, methods, settings); each further line is one
finished batch: the images it covered (skipped ones included) and its rows, curve sums and
counts, as the batch's :class:`~relprop.evaluate.run.Result`. A line is appended whole, then
flushed and synced; a torn last line (the kill came mid-write) is ignored. Reading the batches
back in order gives the same sums as the run that wrote them, so a resumed run (one process,
the same command) writes the same metrics.json as one that was never interrupted.

Under torchrun each process keeps its own file (``progress.rank{R}.jsonl``); a resumed run
skips the images of every file, whatever the number of processes now (its figures then equal
the uninterrupted run's up to the order of the sums, not bit for bit).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

NAME = "progress.jsonl"


class SettingsDiffer(ValueError):
    """The folder holds a run with other settings."""


def path_for(out: Path, rank: int, size: int) -> Path:
    return out / (NAME if size == 1 else f"progress.rank{rank}.jsonl")


def existing(out: Path) -> list[Path]:
    out = Path(out)
    return sorted([out / NAME] * (out / NAME).exists() + list(out.glob("progress.rank*.jsonl")))


def _plain(header: dict) -> dict:
    return json.loads(json.dumps(header))  # tuples become lists, as they are read back


def read(out: Path, header: dict, files: dict) -> list[dict]:
    """The finished batches in the folder's journals that belong to this run: ``files`` maps
    each of its images' index to its file. SettingsDiffer names what changed since they were
    written: a setting, or the data (an index that now names another file). A journal without
    a finished batch (a run that failed before its first) is passed over."""
    batches, seen = [], set()
    for path in existing(out):
        lines = path.read_text().splitlines()
        found = []
        for line in lines[1:]:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the torn last line of a killed run
        if not found:
            continue
        written, now = json.loads(lines[0]), _plain(header)
        changed = sorted(k for k in set(written) | set(now) if written.get(k) != now.get(k))
        if changed:
            raise SettingsDiffer(", ".join(changed))
        for batch in found:
            if any(files.get(i, f) != f for i, f in zip(batch["indices"], batch["files"])):
                raise SettingsDiffer("the data's files")
            indices = set(batch["indices"])
            # a smaller --limit leaves some out; an image measured twice counts once
            if indices <= files.keys() and not indices & seen:
                batches.append(batch)
                seen |= indices
    return batches


def result_of(batch: dict, result_type):
    """A journal line back as a Result (curve sums in their original dtype, bit for bit)."""
    result = result_type(rows=batch["rows"], skipped=batch["skipped"])
    for key, total, count, dtype in batch["curves"]:
        result.add_curves(tuple(key), torch.tensor(total, dtype=getattr(torch, dtype)), count)
    return result


class Journal:
    """Appends finished batches to one file."""

    def __init__(self, path: Path, header: dict, fresh: bool):
        self.path = path
        kept = [json.dumps(_plain(header))]
        if not fresh and path.exists():  # keep the whole lines; drop a torn last one
            for line in path.read_text().splitlines()[1:]:
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    break
                kept.append(line)
        partial = path.with_suffix(".partial")
        partial.write_text("\n".join(kept) + "\n")
        partial.replace(path)

    def record(self, items: list, result) -> None:
        """Append one finished batch: its ``items`` (index and file of each image it covered,
        skipped ones included) and their figures."""
        line = {"indices": [item.index for item in items],
                "files": [str(item.path) for item in items],
                "rows": result.rows, "skipped": result.skipped,
                "curves": [[list(key), total.tolist(), result.counts[key],
                            str(total.dtype).removeprefix("torch.")]
                           for key, total in result.curves.items()]}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
