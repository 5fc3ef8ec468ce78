import os

import pytest
import torch

import checkpoint
from configurator import UserError
from conftest import read_metrics, tiny_train_config
from train import TrainConfig, get_lr, train


def losses(out_dir):
    return [e["loss"] for e in read_metrics(out_dir) if "loss" in e]


def test_lr_schedule_warmup_peak_and_end():
    cfg = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=1000)
    assert get_lr(0, cfg) == pytest.approx(1e-3 / 101)
    assert get_lr(50, cfg) < get_lr(99, cfg) < 1e-3
    assert get_lr(100, cfg) == pytest.approx(1e-3)
    assert get_lr(550, cfg) == pytest.approx(5.5e-4)  # half way down the cosine
    assert get_lr(1000, cfg) == pytest.approx(1e-4) and get_lr(5000, cfg) == pytest.approx(1e-4)
    assert get_lr(10, TrainConfig(decay_lr=False, learning_rate=0.5)) == 0.5


def test_training_learns(data_root, tmp_path):
    result = train(tiny_train_config(data_root, tmp_path, max_iters=60, lr_decay_iters=60, eval_interval=60,
                                     eval_iters=4))
    evals = [e for e in read_metrics(tmp_path) if "val_loss" in e]
    assert evals[0]["iter"] == 0 and evals[-1]["iter"] == 60
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert result["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert os.path.isfile(tmp_path / "ckpt.pt") and os.path.isfile(tmp_path / "best.pt")


def test_gradient_accumulation_equals_one_large_batch(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path / "a", batch_size=8, gradient_accumulation_steps=1))
    train(tiny_train_config(data_root, tmp_path / "b", batch_size=2, gradient_accumulation_steps=4))
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-5)
    a, b = (checkpoint.load(str(tmp_path / d / "ckpt.pt"))["model"] for d in "ab")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_resumed_training_equals_uninterrupted_training(data_root, tmp_path):
    # dropout on: resuming must also restore the random number generator
    full = tiny_train_config(data_root, tmp_path / "full", max_iters=12, lr_decay_iters=12, eval_interval=4,
                             dropout=0.1)
    train(full)
    part = tiny_train_config(data_root, tmp_path / "part", max_iters=8, lr_decay_iters=12, eval_interval=4,
                             dropout=0.1)
    train(part)
    overrides = {"init_from": "resume", "out_dir": str(tmp_path / "part"), "max_iters": 12}
    train(TrainConfig(**overrides), overrides)  # the rest of the config comes from the checkpoint
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # bit for bit
    assert len(losses(tmp_path / "full")) == 12
    a, b = (checkpoint.load(str(tmp_path / d / "ckpt.pt"))["model"] for d in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_done_line_of_a_resumed_run_says_both_counts(data_root, tmp_path, capsys):
    train(tiny_train_config(data_root, tmp_path, max_iters=4, lr_decay_iters=6, eval_interval=2))
    assert "done: 4 steps in " in capsys.readouterr().out
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 6}
    train(TrainConfig(**overrides), overrides)
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and done[0].startswith("done: step 6, this run 2 steps (4 -> 6) in "), done


def test_resume_errors(data_root, tmp_path):
    with pytest.raises(UserError, match="has no ckpt.pt"):
        train(tiny_train_config(data_root, tmp_path / "empty", init_from="resume"))
    train(tiny_train_config(data_root, tmp_path / "run", max_iters=5))
    with pytest.raises(UserError, match="uses tokenizer gpt2.*trained with char"):
        overrides = {"init_from": "resume", "out_dir": str(tmp_path / "run"), "dataset": "tiny_gpt2"}
        train(TrainConfig(**overrides), overrides)
    with pytest.raises(UserError, match="n_layer=3.*has n_layer=2"):
        overrides = {"init_from": "resume", "out_dir": str(tmp_path / "run"), "n_layer": 3}
        train(TrainConfig(**overrides), overrides)


def test_a_new_run_never_overwrites_a_checkpoint(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=5))
    assert not (tmp_path / "train.lock").exists()  # a clean finish takes its lock file with it
    before = open(tmp_path / "ckpt.pt", "rb").read()
    with pytest.raises(UserError, match="already holds a run's ckpt.pt.*--init_from=resume"):
        train(tiny_train_config(data_root, tmp_path, max_iters=5))
    assert open(tmp_path / "ckpt.pt", "rb").read() == before


def test_missing_dataset_and_bad_values(data_root, tmp_path):
    with pytest.raises(UserError, match="dataset folder .*nope not found.*prepare.py"):
        train(tiny_train_config(data_root, tmp_path, dataset="nope"))
    with pytest.raises(UserError, match="n_embd=30 is not a multiple of n_head=4"):
        train(tiny_train_config(data_root, tmp_path, n_embd=30, n_head=4))
    with pytest.raises(UserError, match="device=cuda"):
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        train(tiny_train_config(data_root, tmp_path, device="cuda"))


def test_checkpoints_load_without_pickle_and_pickles_are_refused(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=5))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # plain tensors and containers only
    assert ckpt["iter_num"] == 5 and ckpt["tokenizer"]["kind"] == "char"
    torch.save({"model": {}, "evil": TrainConfig()}, tmp_path / "pickled.pt")
    with pytest.raises(UserError, match="pickled Python objects.*refusing"):
        checkpoint.load(str(tmp_path / "pickled.pt"))


def test_metrics_jsonl_records_steps_and_evals(data_root, tmp_path):
    train(tiny_train_config(data_root, tmp_path, max_iters=6, eval_interval=3, log_interval=2))
    events = read_metrics(tmp_path)
    steps = [e for e in events if "loss" in e]
    assert [e["iter"] for e in steps] == [2, 4, 6]
    assert all(set(e) >= {"iter", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "time"} for e in steps)
    assert steps[0]["tokens"] == 2 * 4 * 32 and steps[0]["mfu"] is None  # no MFU on a CPU
    assert [e["iter"] for e in events if "val_loss" in e] == [0, 3, 6]


def test_wandb_offline(data_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny_train_config(data_root, tmp_path, max_iters=3, wandb_log=True))
    assert os.path.isdir(tmp_path / "wandb")


def test_modern_switches_and_muon_train_resume_and_sample(data_root, tmp_path):
    from sample import SampleConfig, sample
    switches = dict(rope=True, norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False, zero_init=True,
                    logit_softcap=15.0, optimizer="muon")
    train(tiny_train_config(data_root, tmp_path / "a", max_iters=12, lr_decay_iters=12, eval_interval=4, **switches))
    ckpt = checkpoint.load(str(tmp_path / "a" / "ckpt.pt"))
    assert {k: ckpt["model_args"][k] for k in ("rope", "norm", "mlp", "tie_embeddings")} == \
        {"rope": True, "norm": "rmsnorm", "mlp": "relu2", "tie_embeddings": False}
    evals = [e["val_loss"] for e in read_metrics(tmp_path / "a") if "val_loss" in e]
    assert evals[-1] < evals[0] - 0.3
    # resuming a Muon run is exact too
    train(tiny_train_config(data_root, tmp_path / "b", max_iters=8, lr_decay_iters=12, eval_interval=4, **switches))
    overrides = {"init_from": "resume", "out_dir": str(tmp_path / "b"), "max_iters": 12}
    train(TrainConfig(**overrides), overrides)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    texts = sample(SampleConfig(out_dir=str(tmp_path / "a"), start="ROMEO:", num_samples=1, max_new_tokens=8,
                                device="cpu"), out=__import__("io").StringIO(), info=lambda m: None)
    assert texts[0].startswith("ROMEO:")
    with pytest.raises(UserError, match="mlp='geglu'"):
        train(tiny_train_config(data_root, tmp_path / "c", mlp="geglu"))


def test_loss_png_is_written_through_the_one_writer_never_through_a_planted_symlink(data_root, tmp_path,
                                                                                     monkeypatch):
    """loss.png's temp name, planted (while the run runs) as a link to a file of the user's: the file
    stays as it was."""
    import metrics
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    out = tmp_path / "run"
    real = metrics.plot_losses

    def plant_then_plot(events, path):
        if not os.path.lexists(path + ".tmp.png"):
            os.symlink(victim, path + ".tmp.png")
        return real(events, path)
    monkeypatch.setattr(metrics, "plot_losses", plant_then_plot)
    train(tiny_train_config(data_root, out, max_iters=2, eval_interval=1, plot=True))
    assert victim.read_text() == "mine"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
