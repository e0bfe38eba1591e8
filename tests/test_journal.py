"""The evaluate journal (relprop.evaluate.journal) on its own: which earlier batches a rerun
takes, and what it refuses."""
import json

import pytest
import torch

from relprop.evaluate import journal
from relprop.evaluate.data import Item
from relprop.evaluate.run import Result

HEADER = {"model": "m", "methods": ["rap"], "steps": 8, "orders": ("morf",)}


def items(n, folder="data"):
    return [Item(i, f"{folder}/{i}.png", str(i), None) for i in range(n)]


def batch_result(indices):
    result = Result(rows=[{"index": i, "method": "rap", "metric": "x", "value": 0.1 * i}
                          for i in indices])
    result.add_curves(("rap", "morf"), torch.tensor([0.5, 0.25], dtype=torch.float32) + indices[0],
                      len(indices))
    return result


def write(out, batches, header=HEADER, n=10):
    every = items(n)
    writer = journal.Journal(out / journal.NAME, header, fresh=True)
    for indices in batches:
        writer.record([every[i] for i in indices], batch_result(indices))


def files(n, folder="data"):
    return {item.index: str(item.path) for item in items(n, folder)}


def test_batches_come_back_bit_for_bit(tmp_path):
    write(tmp_path, [[0, 1], [2, 3]])
    found = journal.read(tmp_path, HEADER, files(10))
    assert [b["indices"] for b in found] == [[0, 1], [2, 3]]
    back = journal.result_of(found[1], Result)
    assert torch.equal(back.curves[("rap", "morf")], batch_result([2, 3]).curves[("rap", "morf")])
    assert back.rows == batch_result([2, 3]).rows


def test_a_smaller_limit_takes_only_its_own_images_and_none_twice(tmp_path):
    write(tmp_path, [[0, 1], [2, 3], [2]])  # image 2 measured again after a smaller --limit
    assert [b["indices"] for b in journal.read(tmp_path, HEADER, files(3))] == [[0, 1], [2]]
    assert [b["indices"] for b in journal.read(tmp_path, HEADER, files(4))] == [[0, 1], [2, 3]]


def test_other_settings_or_other_files_are_refused_by_name(tmp_path):
    write(tmp_path, [[0, 1]])
    with pytest.raises(journal.SettingsDiffer, match="steps"):
        journal.read(tmp_path, {**HEADER, "steps": 9}, files(10))
    with pytest.raises(journal.SettingsDiffer, match="data's files"):
        journal.read(tmp_path, HEADER, files(10, folder="elsewhere"))


def test_a_run_that_failed_before_its_first_batch_blocks_nothing(tmp_path):
    journal.Journal(tmp_path / journal.NAME, {**HEADER, "steps": 500}, fresh=True)
    assert journal.read(tmp_path, HEADER, files(10)) == []


def test_a_torn_last_line_is_dropped_when_the_run_goes_on(tmp_path):
    write(tmp_path, [[0, 1]])
    with open(tmp_path / journal.NAME, "a") as f:
        f.write('{"indices": [2')
    journal.Journal(tmp_path / journal.NAME, HEADER, fresh=False).record(
        items(10)[2:4], batch_result([2, 3]))
    lines = (tmp_path / journal.NAME).read_text().splitlines()
    assert [json.loads(line).get("indices") for line in lines] == [None, [0, 1], [2, 3]]
