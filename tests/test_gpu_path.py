"""The GPU training path, checked on CPU: torch.compile (inductor, which runs on CPU too) takes the
training forward and backward as one graph, train -> eval -> train compiles each mode once, bench.py's
GPU sweep runs and records failures, and checkpoints from before vocabulary padding still load."""

import json

import pytest
import torch
from torch._dynamo.utils import counters

import bench
import checkpoint
from conftest import tiny_train_config
from model import GPT, GPTConfig
from loading import load_model
from train import TrainConfig, train


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=100, pad_vocab_to=64, **kw))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def test_training_step_compiles_as_one_graph(fresh_dynamo):
    # fullgraph=True raises at the first graph break (a host sync such as int(tensor), data-dependent control flow)
    model = tiny()
    compiled = torch.compile(model, fullgraph=True)
    x, y = torch.randint(100, (4, 16)), torch.randint(100, (4, 16))
    loss = compiled(x, y, return_logits=False)[1]
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager = model(x, y, return_logits=False)[1]
    eager.backward()
    torch.testing.assert_close(loss, eager)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)


def test_train_eval_train_compiles_each_mode_once(fresh_dynamo):
    # what train.py does: training steps, an eval (eval mode, no grad), training again, another eval
    model = tiny()
    compiled = torch.compile(model)
    x, y = torch.randint(100, (4, 16)), torch.randint(100, (4, 16))
    for _ in range(2):
        for _ in range(2):
            compiled(x, y, return_logits=False)[1].backward()
        model.eval()
        with torch.no_grad():
            compiled(x, y)
        model.train()
    assert counters["stats"]["unique_graphs"] == 2  # one training graph, one eval graph: no recompiles after
    assert sum(counters["graph_break"].values()) == 0


def test_gpu_sweep_runs_each_config_in_its_own_process(tmp_path, capsys):
    out = tmp_path / "sweep"
    bench.main(["gpu", "--quick", "--device=cpu", f"--out={out}", "--only", "17m-mb64"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (r,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert r["name"] == "17m-mb64" and summary["runs"][0]["tokens_per_sec"] == r["tokens_per_sec"] > 0
    assert "error" not in r and r["sdpa_kernel"] and r["torch"] == torch.__version__ and r["peak_memory_bytes"] > 0
    assert r["vocab_rows"] == 1024 and r["config"]["batch_size"] == 64  # padded 1000 -> 1024; its micro-batch
    assert "===== 17m-mb64: python bench.py train" in (out / "runs.log").read_text()  # the run's output, headed


def test_gpu_sweep_records_a_timeout_and_goes_on(tmp_path, capsys):
    out = tmp_path / "sweep"
    bench.main(["gpu", "--quick", "--device=cpu", f"--out={out}", "--timeout=0.5", "--only", "124m", "124m-pad"])
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["error"] for r in rows] == ["timeout after 0 s"] * 2  # both ran, each stopped at its limit
    capsys.readouterr()


def test_bench_train_reports_the_attention_kernel_it_was_asked_for(capsys):
    bench.main(["train", "--steps=1", "--warmup_steps=1", "--vocab_size=100", "--tokens=5000", "--device=cpu",
                "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=2",
                "--gradient_accumulation_steps=1", "--compile=False", "--sdpa=math"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    torch.backends.cuda.enable_flash_sdp(True)  # the switches are global: back to torch's defaults
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    torch.backends.cuda.enable_cudnn_sdp(True)
    assert r["sdpa_kernel"] == "MATH" and r["vocab_rows"] == 128 and r["compile_seconds"] == 0.0


def test_a_checkpoint_from_before_vocab_padding_loads_and_resumes_unpadded(data_root, tmp_path):
    out = tmp_path / "old"
    train(tiny_train_config(data_root, out, max_iters=2, eval_interval=2, pad_vocab_to=1))
    path = str(out / "ckpt.pt")
    ckpt = checkpoint.load(path)
    del ckpt["model_args"]["pad_vocab_to"], ckpt["config"]["pad_vocab_to"]  # as written before the key existed
    checkpoint.save(ckpt, path)
    model = load_model(str(out), "cpu")[0]
    assert model.config.pad_vocab_to == 1 and model.lm_head.weight.shape[0] == model.config.vocab_size
    resume = {"init_from": "resume", "out_dir": str(out), "max_iters": 3}
    train(TrainConfig(**resume), resume)
    assert checkpoint.load(path)["model_args"]["pad_vocab_to"] == 1


def test_fsdp_with_compile_makes_one_graph_per_block_without_breaks(fresh_dynamo, monkeypatch):
    """FSDP2's hooks around each block (gather the weights, free them) sit between compiled graphs:
    distributed.wrap compiles every block on its own before sharding it. On one gloo process."""
    import socket

    import torch.distributed as dist

    import distributed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        original = torch.nn.Module.compile
        monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend="eager", **kw))
        model = distributed.wrap(tiny(), 1, fsdp=True, use_compile=True, device="cpu", dtype="float32")
        x, y = torch.randint(100, (4, 16)), torch.randint(100, (4, 16))
        for _ in range(2):  # the second step reuses the graphs: no recompiles
            model(x, y, return_logits=False)[1].backward()
        assert counters["stats"]["unique_graphs"] == 1  # both blocks share one graph (same code, same shapes)
        assert not counters["graph_break"], dict(counters["graph_break"])
    finally:
        dist.destroy_process_group()


def test_float16_resume_from_a_checkpoint_without_scaler_state(data_root, tmp_path, monkeypatch):
    """A bf16 or fp32 run saves an empty grad-scaler state: a float16 resume (its scaler on) must start
    the scale afresh, not fail on loading {}. The scaler is forced on here, as float16 needs CUDA."""
    train(tiny_train_config(data_root, tmp_path, max_iters=2))
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: real(device, enabled=True))
    overrides = {"init_from": "resume", "out_dir": str(tmp_path), "max_iters": 4}
    assert train(TrainConfig(**overrides), overrides)["iter_num"] == 4


def test_cuda_n_becomes_the_current_device(monkeypatch):
    """--device=cuda:1 on one process: what names no device (synchronize, is_bf16_supported) must act on
    GPU 1, not GPU 0; a GPU that is not there is one line."""
    import devices
    from configurator import UserError
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert devices.resolve_device("cuda:1") == "cuda:1" and chosen == [1]
    assert devices.resolve_device("cuda") == "cuda" and chosen == [1]
    with pytest.raises(UserError, match="CUDA devices 0 to 1"):
        devices.resolve_device("cuda:2")
