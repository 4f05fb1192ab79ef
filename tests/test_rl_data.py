"""Prompt data for RL: the three sources, deterministic batches, rank shards that partition each batch, resumption
from `state_dict` that continues exactly where an uninterrupted run would, and clear errors for bad sources."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from rl_policy.data import PromptDataModule, PromptRecord, PromptStream, load_prompts, write_prompts_csv


def test_dataset_dir_prompts_carry_oracle_metadata(small_dataset):
    frame = pd.read_parquet(small_dataset / "pairs.parquet")
    records = load_prompts(small_dataset, "train")
    assert [r.prompt for r in records] == frame.loc[frame["split"] == "train", "prompt"].tolist()
    assert all(r.metadata and r.metadata["relations"] and r.metadata["colours"] for r in records)
    assert len({r.prompt_id for r in records}) == len(records)


def test_text_and_csv_sources_round_trip(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# comment\na red disc left of a blue square\n\nthe green star is above\n")
    records = load_prompts(text)
    assert [r.prompt for r in records] == ["a red disc left of a blue square", "the green star is above"]
    assert [r.prompt_id for r in records] == ["prompts-2", "prompts-4"]
    with_meta = [PromptRecord("a", "one, with a comma", {"colours": ["red"]}), PromptRecord("b", "two")]
    write_prompts_csv(with_meta, tmp_path / "p.csv")
    assert load_prompts(tmp_path / "p.csv") == with_meta


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "no_prompt.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompts(tmp_path / "no_prompt.csv")
    (tmp_path / "bad_meta.csv").write_text("prompt,metadata\nhello,{not json\n")
    with pytest.raises(ValueError, match="line 2: the metadata column is not JSON"):
        load_prompts(tmp_path / "bad_meta.csv")


def take(stream, count):
    return list(itertools.islice(iter(stream), count))


def test_batches_are_deterministic_cover_epochs_and_ranks_partition_them():
    records = [PromptRecord(str(i), f"p{i}") for i in range(10)]
    first = take(PromptStream(records, 4, seed=1, start=0, rank=0, world_size=1), 6)
    again = take(PromptStream(records, 4, seed=1, start=0, rank=0, world_size=1), 6)
    assert [b.prompt_ids for b in first] == [b.prompt_ids for b in again]
    assert [b.index for b in first] == list(range(6))
    epoch = first[0].prompt_ids + first[1].prompt_ids  # 2 batches per epoch of 10 prompts: 8 distinct prompts
    assert len(set(epoch)) == 8
    ranks = [take(PromptStream(records, 4, seed=1, start=0, rank=r, world_size=2), 6) for r in (0, 1)]
    for whole, share0, share1 in zip(first, *ranks, strict=True):
        assert sorted(share0.prompt_ids + share1.prompt_ids) == sorted(whole.prompt_ids)
        assert not set(share0.prompt_ids) & set(share1.prompt_ids)


def test_resume_continues_with_the_next_batch(small_dataset):
    straight = PromptDataModule(small_dataset, prompts_per_step=4, seed=5)
    straight.setup("fit")
    batches = take(straight.train_dataloader(), 7)

    interrupted = PromptDataModule(small_dataset, prompts_per_step=4, seed=5)
    interrupted.setup("fit")
    for batch in take(interrupted.train_dataloader(), 3):
        interrupted.mark_served(batch)
    resumed = PromptDataModule(small_dataset, prompts_per_step=4, seed=5)
    resumed.setup("fit")
    resumed.load_state_dict(interrupted.state_dict())
    rest = take(resumed.train_dataloader(), 4)
    assert [b.prompt_ids for b in rest] == [b.prompt_ids for b in batches[3:]]
    frame = pd.read_parquet(small_dataset / "pairs.parquet")
    assert [r.prompt for r in resumed.eval_records] == frame.loc[frame["split"] == "test", "prompt"].tolist()
