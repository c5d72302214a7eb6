import numpy as np

from pipeline.two_sample import two_sample_accuracy


def test_two_sample_accuracy_tells_different_sets_apart_and_not_alike_ones():
    rng = np.random.default_rng(0)
    smooth = rng.uniform(0.3, 0.7, (300, 1, 12, 12)).astype(np.float32)
    smooth = (smooth + np.roll(smooth, 1, axis=2) + np.roll(smooth, 1, axis=3)) / 3
    other_smooth = rng.uniform(0.3, 0.7, (300, 1, 12, 12)).astype(np.float32)
    other_smooth = (other_smooth + np.roll(other_smooth, 1, axis=2) + np.roll(other_smooth, 1, axis=3)) / 3
    noisy = rng.uniform(0.0, 1.0, (300, 1, 12, 12)).astype(np.float32)
    assert two_sample_accuracy(smooth, noisy, seed=0, epochs=4) > 0.9
    assert abs(two_sample_accuracy(smooth, other_smooth, seed=0, epochs=4) - 0.5) < 0.12
