import json
import os

import pytest
import torch
from safetensors.torch import save_file

from pipeline.refiner_file import load_refiner
from pipeline.training import checkpoint as ckpt
from pipeline.training import train
from pipeline.training.loop import CHECKPOINT_DIR, run_local
from pipeline.training.step import build_state, train_step
from helpers.train import TINY, pools, tiny_config, write_folders


def _tensors(state):
    out = {f"r.{k}": v for k, v in state.refiner.state_dict().items()}
    out.update({f"d.{k}": v for k, v in state.discriminator.state_dict().items()})
    return out


def test_round_trip_restores_every_part_of_the_state(tmp_path):
    config = tiny_config(historical_averaging=0.1, virtual_batch_norm=True, pretrain_refiner_steps=1,
                         pretrain_discriminator_steps=3, iterations=1)
    synthetic, real = pools()
    state = build_state(config, (1, 12, 12), real)
    for _ in range(config.total_steps):
        train_step(state, config, synthetic, real)
    path = ckpt.save_checkpoint(str(tmp_path / "c.safetensors"), state, config, "digits")
    rng = torch.get_rng_state()
    torch.rand(5)  # move the global RNG on; restoring must bring it back

    fresh = build_state(config, (1, 12, 12), real)
    ckpt.restore(fresh, path, config)
    assert fresh.step == state.step == config.total_steps
    for name, value in _tensors(state).items():
        assert torch.equal(value, _tensors(fresh)[name]), name
    assert fresh.history.count == state.history.count and torch.equal(fresh.history.images, state.history.images)
    assert torch.equal(fresh.reference, state.reference)
    assert fresh.average_d.count == state.average_d.count
    for a, b in zip(state.opt_r.state.values(), fresh.opt_r.state.values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and int(a["step"]) == int(b["step"])
    assert fresh.opt_d.param_groups[0]["lr"] == config.lr_discriminator
    assert torch.equal(torch.get_rng_state(), rng)


def test_pickle_checkpoints_are_refused(tmp_path):
    config = tiny_config()
    state = build_state(config, (1, 12, 12), pools()[1])
    pickled = tmp_path / "step-00000001.safetensors"
    torch.save(state.refiner.state_dict(), pickled)
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.restore(state, str(pickled), config)
    foreign = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ckpt.CheckpointError, match="not a training checkpoint"):
        ckpt.read_checkpoint(str(foreign))
    other = tiny_config(seed=5)
    good = ckpt.save_checkpoint(str(tmp_path / "good.safetensors"), state, config, "digits")
    with pytest.raises(ckpt.CheckpointError, match="seed"):
        ckpt.restore(build_state(other, (1, 12, 12), pools()[1]), good, other)

    class Older:
        """The same config as written by a version without the newest option."""

        def __getattr__(self, name):
            return getattr(config, name)

        def to_dict(self):
            return {k: v for k, v in config.to_dict().items() if k != "label_loss_retry"}

    older = ckpt.save_checkpoint(str(tmp_path / "older.safetensors"), state, Older(), "digits")
    with pytest.raises(ckpt.CheckpointError, match=r"different options \(label_loss_retry\)"):
        ckpt.restore(build_state(config, (1, 12, 12), pools()[1]), older, config)


def test_resume_gives_the_same_weights_as_one_uninterrupted_run(tmp_path):
    # 2 + 2 + 4 = 8 steps; the interrupted run stops after 5, inside the adversarial
    # phase with a history already full (16 slots, 4 per D step).
    config = tiny_config(checkpoint_every=3, historical_averaging=0.01)
    synthetic, real = pools()
    whole = run_local(config, "digits", synthetic, real, str(tmp_path / "whole"), echo=False)
    run_local(config, "digits", synthetic, real, str(tmp_path / "split"), stop_after=5, echo=False)
    assert ckpt.latest_checkpoint(str(tmp_path / "split" / CHECKPOINT_DIR)).endswith("step-00000005.safetensors")
    torch.rand(10)  # a different global RNG position must not matter
    resumed = run_local(config, "digits", synthetic, real, str(tmp_path / "split"), echo=False)
    a, _ = ckpt.read_checkpoint(whole)
    b, meta = ckpt.read_checkpoint(resumed)
    assert meta["step"] == config.total_steps
    assert set(a) == set(b)
    for name in a:
        if name != "rng.torch":
            assert torch.equal(a[name], b[name]), name


def test_job_writes_run_outputs_resumes_and_exports_a_loadable_refiner(tmp_path, capsys):
    syn, real = write_folders(tmp_path)
    run_dir = str(tmp_path / "run")
    overrides = {**{k: v for k, v in TINY.items() if k != "model"}, "sample_every": 3, "checkpoint_every": 4}
    train(syn, real, run_dir, overrides=overrides, local=True, stop_after=6)
    # As if killed after step 6 but before its checkpoint was written.
    os.remove(os.path.join(run_dir, CHECKPOINT_DIR, "step-00000006.safetensors"))
    capsys.readouterr()
    path = train(syn, real, run_dir, overrides=overrides, local=True)
    out = capsys.readouterr().out
    assert "resuming from" in out and "step-00000004" in out
    for name in ("config.json", "metrics.jsonl", "loss_curves.png", "refiner.safetensors", "selection.json",
                 "selection.jsonl", "selection.png"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "selection.json")) as handle:
        choice = json.load(handle)
    assert choice["status"] == "passed" and choice["scores"]["collapsed"] is False
    # The last step is always scored; the resumed run redid step 6's and kept one record per step.
    assert [c["step"] for c in choice["candidates"]] == sorted({c["step"] for c in choice["candidates"]})
    assert choice["candidates"][-1]["step"] == 8
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        steps = [int(line.split('"step": ')[1].split(",")[0]) for line in handle]
    assert steps == list(range(8))  # steps 4-5, redone after the resume, appear once
    assert sorted(os.listdir(os.path.join(run_dir, "samples")))[-1] == "step-00000008.png"
    refiner, info = load_refiner(path)
    assert (info.height, info.width, info.channels, info.bit_depth, info.preset) == (12, 12, 1, 8, "digits")
    x = torch.rand(2, 1, 12, 12)
    assert refiner(x).shape == x.shape
    # A changed option refuses to mix with the existing run.
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="different options"):
        train(syn, real, run_dir, overrides={**overrides, "seed": 3}, local=True)


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    from safetensors.torch import save_file

    for pad in range(300):  # find the padding that makes the header length end in 0x80
        path = str(tmp_path / f"p{pad}.safetensors")
        save_file({"w": torch.zeros(2)}, path, metadata={"pad": "x" * pad})
        with open(path, "rb") as handle:
            if handle.read(1) == b"\x80":
                break
    else:
        raise AssertionError("no padding gave a header length ending in 0x80")
    ckpt._refuse_pickle(path)  # no error: it is safetensors
