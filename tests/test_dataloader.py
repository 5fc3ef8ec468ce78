import numpy as np
import pytest
import torch

from configurator import UserError
from dataloader import DataLoader
from shards import write_shard


@pytest.fixture
def shard_dir(tmp_path):
    # two shards of distinct tokens, so a window's first token says where it came from
    write_shard(str(tmp_path / "train_000000.bin"), np.arange(0, 1000), vocab_size=5000)
    write_shard(str(tmp_path / "train_000001.bin"), np.arange(1000, 1700), vocab_size=5000)
    return str(tmp_path)


def starts_of_epoch(loader, epoch):
    stream = loader.streams[0]
    return sorted(int(stream.shards[s][start]) for s, start in stream.windows(epoch))


def test_each_epoch_visits_every_window_once_in_a_new_order(shard_dir):
    loader = DataLoader(shard_dir, "train", batch_size=4, block_size=16, seed=0)
    n = len(loader.streams[0].windows(0))
    seen = []
    while loader.streams[0].epoch == 0:
        x, y = loader.next_batch()
        seen += x[:, 0].tolist()
        assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    assert len(seen) >= n and sorted(seen[:n]) == starts_of_epoch(DataLoader(shard_dir, "train", 4, 16), 0)
    assert len(set(seen[:n])) == n  # without replacement
    # windows are block_size apart, so an epoch covers every token once but for, per shard, the
    # tokens before the window grid's phase and after its last window (under 2 * block_size)
    assert n * 16 > 1700 - 2 * 2 * 16
    # the next epoch shifts the window grid and reorders it
    assert starts_of_epoch(loader, 1) != starts_of_epoch(loader, 0)


def test_order_is_deterministic_and_follows_the_seed(shard_dir):
    a = [DataLoader(shard_dir, "train", 4, 16, seed=1).next_batch()[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(a[0], DataLoader(shard_dir, "train", 4, 16, seed=2).next_batch()[0])


def test_state_dict_resumes_the_same_stream(shard_dir):
    ref = DataLoader(shard_dir, "train", 8, 16, seed=3)
    stream = [ref.next_batch()[0] for _ in range(30)]  # crosses an epoch boundary
    part = DataLoader(shard_dir, "train", 8, 16, seed=3)
    for _ in range(11):
        part.next_batch()
    resumed = DataLoader(shard_dir, "train", 8, 16, seed=3)
    resumed.load_state_dict(part.state_dict())
    assert all(torch.equal(resumed.next_batch()[0], s) for s in stream[11:])


def test_ranks_split_the_global_batch(shard_dir):
    single = DataLoader(shard_dir, "train", 8, 16, seed=0)
    ranks = [DataLoader(shard_dir, "train", 4, 16, seed=0, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        assert torch.equal(single.next_batch()[0], torch.cat([r.next_batch()[0] for r in ranks]))


def test_too_little_data_is_a_clear_error(tmp_path):
    write_shard(str(tmp_path / "train_000000.bin"), np.arange(10), vocab_size=50)
    with pytest.raises(UserError, match="too few for one window"):
        DataLoader(str(tmp_path), "train", 4, 16)
    with pytest.raises(UserError, match="no val shards"):
        DataLoader(str(tmp_path), "val", 4, 4)


def test_a_mistyped_dataset_name_gets_did_you_mean(tmp_path, data_root, capsys):
    from conftest import assert_one_line_error, run_main
    from dataloader import dataset_dir
    from train import main
    (tmp_path / "works_char").mkdir()
    (tmp_path / "works_char" / "meta.json").write_text("{}")
    (tmp_path / "half_done").mkdir()  # no meta.json: not a prepared dataset, never suggested
    with pytest.raises(UserError, match=r"data.*works_chr not found \(did you mean 'works_char'\?\)"):
        dataset_dir("works_chr", str(tmp_path))
    assert dataset_dir("nothing_like_it", str(tmp_path)) == str(tmp_path / "nothing_like_it")  # read_meta says
    assert dataset_dir("half_dne", str(tmp_path)) == str(tmp_path / "half_dne")
    assert dataset_dir("works_char", str(tmp_path)) == str(tmp_path / "works_char")
    code, _, err = run_main(main, ["--dataset=tiny_chr", f"--data_root={data_root}", f"--out_dir={tmp_path / 'o'}",
                                   "--device=cpu", "--compile=False"], capsys)
    assert_one_line_error(code, err, "did you mean 'tiny_char'?")
    assert not (tmp_path / "o").exists()
