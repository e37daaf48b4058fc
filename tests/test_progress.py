"""What a run shows while it trains (progress.py): the bar by minutes or by steps, and the
notes on a run's shape."""
from types import SimpleNamespace

from progress import Progress, notices
from runs import TrainState
from train import TrainConfig


def test_a_run_says_when_it_will_make_many_epochs_or_warm_up_too_long():
    def fake_run(**settings):
        return SimpleNamespace(cfg=TrainConfig(batch_size=64, **settings), state=TrainState(step=100),
                               splits={"train": [None] * 1000})

    by_steps = notices(fake_run(max_iters=700, warmup_iters=400), elapsed_s=0.0)
    assert by_steps[0].startswith("note: 700 steps of 64 are 45 epochs of 1,000 training pairs; expect overfitting")
    assert by_steps[1].startswith("warning: warmup_iters=400 is 57% of the run (700 steps)")
    assert notices(fake_run(max_iters=10, warmup_iters=5), elapsed_s=0.0) == []  # < 1 epoch, warm-up half the run
    # A time limit: the steps that fit come from the speed so far (100 steps a minute here).
    by_time = notices(fake_run(max_iters=0, max_minutes=10, warmup_iters=100), elapsed_s=60.0)
    assert by_time == ["note: about 1,000 steps of 64 are 64 epochs of 1,000 training pairs; expect overfitting: "
                       "--patience=N stops when val loss stops improving, and the model's dropout settings regularise "
                       "(--help)"]
    both = notices(fake_run(max_iters=20_000, max_minutes=10, warmup_iters=100), elapsed_s=60.0)
    assert both[0].startswith("note: 1,000 steps of 64 are 64 epochs")  # the time limit binds first
    # The bar counts minutes whenever there is a time limit, steps otherwise.
    assert Progress(fake_run(max_iters=20_000, max_minutes=10).cfg, TrainState(), 0.0, enabled=False).by_time
    assert not Progress(fake_run(max_iters=700).cfg, TrainState(), 0.0, enabled=False).by_time


def test_the_epoch_estimate_counts_pairs_of_token_batches():
    run = SimpleNamespace(cfg=TrainConfig(batch_size=64, batch_tokens=500, max_iters=700, warmup_iters=0),
                          state=TrainState(step=100), splits={"train": [([1] * 5, [1] * 5)] * 1000})
    assert notices(run, elapsed_s=0.0)[0].startswith("note: 700 steps of 100 are 70 epochs of 1,000")

