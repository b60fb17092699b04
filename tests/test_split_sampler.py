from collections import Counter

import pytest
import torch

from data.datasets import Record, load_amibr
from data.sampler import DomainBalancedBatchSampler
from data.split import (
    leave_one_domain_out,
    leave_one_domain_out_split,
    read_split,
    split_hash,
    stratified_group_split,
    write_split,
)
from tests.conftest import AMIBR, needs_amibr


def synthetic_records(n_slides=40, per_slide=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    records = []
    for s in range(n_slides):
        domain = f"D{s % 4}"
        for i in range(per_slide):
            label = int(torch.rand((), generator=g) < 0.25)
            records.append(Record(f"/x/{s}_{i}.png", label, domain, f"slide{s}"))
    return records


def _check_split(records, train, val, fraction):
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(records)
    train_groups = {records[i].group for i in train}
    val_groups = {records[i].group for i in val}
    assert train_groups.isdisjoint(val_groups), "a slide is in both parts"
    for domain in {r.domain for r in records}:
        n_dom = sum(r.domain == domain for r in records)
        n_val = sum(records[i].domain == domain for i in val)
        assert 0 < n_val < n_dom
        assert abs(n_val / n_dom - fraction) < 0.15


def test_split_is_slide_disjoint_stratified_and_seeded():
    records = synthetic_records()
    train, val = stratified_group_split(records, 0.25, seed=1)
    _check_split(records, train, val, 0.25)
    assert (train, val) == stratified_group_split(records, 0.25, seed=1)
    assert val != stratified_group_split(records, 0.25, seed=2)[1]


@needs_amibr
def test_split_on_real_amibr_is_slide_disjoint():
    records = load_amibr(AMIBR)
    train, val = stratified_group_split(records, 0.25, seed=0)
    _check_split(records, train, val, 0.25)
    pos_rate = lambda idx: sum(records[i].label for i in idx) / len(idx)  # noqa: E731
    assert abs(pos_rate(train) - pos_rate(val)) < 0.05


def test_split_file_round_trip(tmp_path):
    records = synthetic_records()
    train, val = stratified_group_split(records, 0.25)
    write_split(tmp_path / "split.json", records, train, val)
    assert read_split(tmp_path / "split.json", records) == (train, val)
    assert split_hash(records, train, val) != split_hash(records, val, train)
    with pytest.raises(ValueError, match="not in the dataset"):
        read_split(tmp_path / "split.json", records[:-5])
    # The split names figures by slide and file name, not by where the data lies.
    moved = [Record("/elsewhere/" + r.path.split("/")[-1], r.label, r.domain, r.group) for r in records]
    assert read_split(tmp_path / "split.json", moved) == (train, val)


def test_leave_one_domain_out():
    records = synthetic_records()
    train, val = leave_one_domain_out(records, "D2")
    assert {records[i].domain for i in val} == {"D2"}
    assert "D2" not in {records[i].domain for i in train}
    with pytest.raises(ValueError):
        leave_one_domain_out(records, "nope")


def test_leave_one_domain_out_split_keeps_the_domain_for_testing_only(tmp_path):
    records = synthetic_records(n_slides=48)
    train, val, test = leave_one_domain_out_split(records, "D2", 0.25, seed=0)
    assert {records[i].domain for i in test} == {"D2"} and len(test) == sum(r.domain == "D2" for r in records)
    assert "D2" not in {records[i].domain for i in train + val}
    rest = [records[i] for i in train + val]
    _check_split(rest, list(range(len(train))), list(range(len(train), len(rest))), 0.25)
    write_split(tmp_path / "split.json", records, train, val, test)
    assert read_split(tmp_path / "split.json", records) == (sorted(train), sorted(val))
    assert read_split(tmp_path / "split.json", records, part="test") == (sorted(train), sorted(test))


def test_too_few_slides_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        stratified_group_split(synthetic_records(n_slides=2), 0.25)


def test_sampler_puts_every_domain_in_every_batch():
    domains = torch.tensor([0] * 100 + [1] * 30 + [2] * 7 + [3] * 300)
    sampler = DomainBalancedBatchSampler(domains, batch_size=32, seed=0)
    batches = list(sampler)
    assert len(batches) == len(domains) // 32
    for batch in batches:
        assert len(batch) == 32
        counts = Counter(domains[batch].tolist())
        assert set(counts) == {0, 1, 2, 3} and all(c == 8 for c in counts.values())
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_sampler_ranks_partition_the_global_batch():
    domains = torch.tensor([0] * 50 + [1] * 50 + [2] * 50)
    full = list(DomainBalancedBatchSampler(domains, 12, seed=3))
    parts = [list(DomainBalancedBatchSampler(domains, 12, seed=3, rank=r, world_size=2)) for r in range(2)]
    for b, batch in enumerate(full):
        assert parts[0][b] + parts[1][b] == batch
    with pytest.raises(ValueError):
        DomainBalancedBatchSampler(domains, 13, world_size=2)


@pytest.mark.parametrize("size", [1, 4, 16])
def test_slide_stacks_cut_each_slide_into_seeded_stacks(size):
    from data.datasets import Record
    from data.split import slide_stacks

    slides = ["a"] * 37 + ["b"] * 5 + ["c"] * 16
    records = [Record(f"x{i}.png", i % 2, "d", s) for i, s in enumerate(slides)]
    stacks = slide_stacks(records, size, seed=3)
    assert sorted(i for s in stacks for i in s) == list(range(len(records)))
    assert all(1 <= len(s) <= size and len({records[i].group for i in s}) == 1 for s in stacks)
    per_slide = {g: -(-slides.count(g) // size) for g in set(slides)}  # ceil: only a slide's last is short
    assert len(stacks) == sum(per_slide.values())
    assert slide_stacks(records, size, seed=3) == stacks
    if size > 1:
        assert slide_stacks(records, size, seed=4) != stacks
    with pytest.raises(ValueError, match="stack size"):
        slide_stacks(records, 0)
