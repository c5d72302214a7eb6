import pytest
import torch

from pipeline.training.history import HistoryBuffer
from pipeline.training.step import build_state, train_step
from helpers.train import pools, tiny_config


def _images(n, value):
    return torch.full((n, 1, 2, 2), float(value))


def test_fills_before_it_is_sampled():
    g = torch.Generator().manual_seed(0)
    buffer = HistoryBuffer(6, (1, 2, 2))
    buffer.add(_images(4, 1), g)
    assert buffer.count == 4 and not buffer.full
    with pytest.raises(RuntimeError, match="only when full"):
        buffer.sample(2, g)
    buffer.add(_images(4, 2), g)  # 2 fill the free slots, 2 replace random ones
    assert buffer.full and buffer.count == 6
    twos = int((buffer.images[:, 0, 0, 0] == 2).sum())
    # Slots 4 and 5 got the first two; the other two overwrote random slots, which may
    # include 4 or 5 again.
    assert (buffer.images[4:, 0, 0, 0] == 2).all() or 2 <= twos <= 4
    assert 2 <= twos <= 4


def test_sampling_is_without_replacement():
    g = torch.Generator().manual_seed(0)
    buffer = HistoryBuffer(8, (1, 2, 2))
    buffer.add(torch.arange(8.0)[:, None, None, None].expand(8, 1, 2, 2), g)
    for _ in range(20):
        drawn = buffer.sample(8, g)[:, 0, 0, 0]
        assert sorted(drawn.tolist()) == list(range(8))


def test_full_buffer_replaces_exactly_the_added_count_of_random_slots():
    g = torch.Generator().manual_seed(0)
    buffer = HistoryBuffer(10, (1, 2, 2))
    buffer.add(_images(10, 0), g)
    changed_slots = set()
    for _ in range(5):
        before = buffer.images.clone()
        buffer.add(_images(3, 1) + torch.rand(1), g)
        changed = (buffer.images != before).flatten(1).any(dim=1).nonzero().flatten().tolist()
        assert len(changed) == 3
        changed_slots.update(changed)
    assert len(changed_slots) > 3  # random slots, not the same three every time


def test_state_round_trip():
    g = torch.Generator().manual_seed(0)
    buffer = HistoryBuffer(5, (1, 2, 2))
    buffer.add(torch.rand(3, 1, 2, 2), g)
    copy = HistoryBuffer(5, (1, 2, 2))
    copy.load_state_dict(buffer.state_dict())
    assert copy.count == 3 and torch.equal(copy.images, buffer.images)


def test_training_adds_half_a_batch_per_discriminator_step():
    config = tiny_config(pretrain_refiner_steps=0, pretrain_discriminator_steps=3, iterations=2, k_d=2, history_size=12)
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    counts = [train_step(state, config, synthetic, real)["history_count"] for _ in range(config.total_steps)]
    # b/2 = 4 per D step: 3 pre-training steps fill 12 slots, then it stays full.
    assert counts == [4, 8, 12, 12, 12]
