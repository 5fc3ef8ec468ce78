"""bench.py's subcommands run and report what they promise (the figures themselves go to
docs/benchmarks.md; no timing is asserted here)."""

import json
import os

import pytest

import bench
from conftest import SHAKESPEARE


def run_bench(argv, capsys):
    bench.main(argv)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_help_lists_every_command_with_what_it_measures(capsys):
    bench.main(["--help"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == set(bench.COMMANDS) and all(len(line.split()) > 4 for line in lines.values())
    with pytest.raises(SystemExit):
        bench.main(["gpu", "--help"])
    budget = next(line for line in capsys.readouterr().out.splitlines() if "--budget" in line)
    assert "time limit for the whole sweep" in budget and "lease" not in budget


def test_train_bench_reports_speed_memory_and_compile_time(capsys):
    r = run_bench(["train", "--steps=3", "--warmup_steps=1", "--vocab_size=100", "--tokens=5000", "--device=cpu",
                   "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--batch_size=4",
                   "--gradient_accumulation_steps=1", "--compile=False", "--dtype=float32"], capsys)
    assert r["tokens_per_step"] == 64 and r["tokens_per_sec"] > 0 and r["mfu"] is None  # no MFU on a CPU
    assert r["peak_memory_bytes"] > 0 and r["compile_seconds"] >= 0 and r["config"]["n_embd"] == 32


def test_prepare_bench_compares_workers_and_a_plain_tiktoken_loop(capsys, tmp_path):
    r = run_bench(["prepare", f"--input={SHAKESPEARE}", "--megabytes=0.3", "--repeats=1", f"--work_dir={tmp_path / 'w'}"], capsys)
    assert r["w1"]["tokens"] == r["w2"]["tokens"] > 50000
    assert 50 * 2**20 < r["peak_rss_bytes"] < 4 * 2**30  # a whole prepare.py: at least Python and numpy
    assert r["tiktoken_batch_loop"]["tokens"] == r["w1"]["tokens"]  # the same documents, the same tokens
    assert not (tmp_path / "w").exists()


def test_recipe_curves_interpolate():
    evals = [{"iter": 0, "time": 0.0, "val_loss": 4.0}, {"iter": 100, "time": 10.0, "val_loss": 2.0},
             {"iter": 200, "time": 20.0, "val_loss": 1.5}]
    assert bench.curve_at(evals, "time", 15.0) == pytest.approx(1.75)
    assert bench.curve_at(evals, "iter", 50) == pytest.approx(3.0)
    assert bench.curve_at(evals, "time", 25.0) is None
    assert bench.first_reach(evals, 1.88) == pytest.approx((124.0, 12.4))
    assert bench.first_reach(evals, 1.0) is None


def test_checkpoint_bench_measures_both_ways_and_leaves_a_folder_of_yours_as_it_was(tmp_path, capsys):
    """bench.py checkpoint at a toy shape: gathered and sharded each save and load the same state (same
    size on disk, within DCP's metadata), in a scratch folder of its own inside --work_dir."""
    from conftest import snapshot
    (tmp_path / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    bench.main(["checkpoint", "--n_layer=1", "--n_head=2", "--n_embd=32", "--vocab_size=64",
                       f"--work_dir={tmp_path}"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    gathered, sharded = r["results"]
    assert (gathered["mode"], sharded["mode"]) == ("gathered", "sharded")
    assert all(x["save_s"] > 0 and x["load_s"] > 0 and len(x["ranks"]) == 2 for x in r["results"])
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_recipes_bench_never_removes_a_folder_that_holds_more_than_a_run(tmp_path, capsys):
    """A run folder left by an earlier, unfinished call is started again; one that holds a file of the
    user's is refused in one line, with that file intact."""
    from conftest import assert_one_line_error, run_main, snapshot
    mine = tmp_path / "char" / "classic" / "1337"
    mine.mkdir(parents=True)
    (mine / "metrics.jsonl").write_text("")
    (mine / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    code, _, err = run_main(bench.main, ["recipes", "--variants=classic", "--seeds=1337", f"--out_root={tmp_path}",
                                         "--max_iters=1"], capsys)
    assert_one_line_error(code, err, "notes.txt", "not a run's file")
    assert snapshot(tmp_path) == before


def test_the_gpu_session_runs_speed_and_checks_at_a_toy_shape_into_two_files(tmp_path, capsys, monkeypatch):
    """bench.py gpu --quick on a CPU: the one command a GPU session runs, end to end. Every run is a
    process of its own; the figures land in runs.jsonl and every run's output in runs.log (a lent
    machine gives back few files), and the checks' scratch folders are gone afterwards."""
    import tempfile
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "out"
    r = run_bench(["gpu", "--quick=True", "--device=cpu", f"--out={out}", "--only", "124m-pad", "cuda-paths",
                   "torchrun", "sample-syncs", "pytest"], capsys)
    assert [x["name"] for x in r["runs"]] == ["124m-pad", "cuda-paths", "torchrun", "sample-syncs", "pytest"]
    assert sorted(os.listdir(out)) == ["runs.jsonl", "runs.log"] and os.listdir(scratch) == []
    rows = {row["name"]: row for row in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}
    assert rows["124m-pad"]["tokens_per_sec"] > 0 and "error" not in rows["124m-pad"]
    assert all(rows[n]["ok"] and rows[n]["failures"] == [] for n in ("cuda-paths", "torchrun", "sample-syncs", "pytest"))
    paths = rows["cuda-paths"]
    # float32 on a CPU: the resumed run is the uninterrupted one exactly, DDP on one process is one process
    assert paths["resume_max_train_loss_difference"] == 0.0 and paths["resume_val_loss_difference"] == 0.0
    assert rows["torchrun"]["ddp_max_train_loss_difference"] == 0.0
    assert paths["sample_chars"] > 0 and paths["eval"]["bits_per_byte"] > 0
    assert len(paths["float16_resume_losses"]) == 4 and " passed" in rows["pytest"]["summary"]
    log = (out / "runs.log").read_text()
    assert all(f"===== {n}: python bench.py" in log for n in rows) and "$ " in log


def test_a_check_names_the_command_that_failed_and_why(tmp_path):
    import math
    import gpucheck
    c = gpucheck.Check("cpu", quick=True, work_dir=str(tmp_path))
    code, _ = c.python("train.py", "--no_such_key=1", what="a mistake")
    assert code == 2 and len(c.failures) == 1
    assert c.failures[0].startswith("a mistake: exit 2: error:") and "no_such_key" in c.failures[0]
    assert gpucheck.max_difference({1: 1.0, 2: 2.0}, {1: 1.0, 2: 2.5}, [1, 2, 3]) == 0.5
    assert gpucheck.max_difference({1: float("nan")}, {1: 1.0}, [1]) == math.inf
    assert gpucheck.max_difference({1: 1.0}, {2: 1.0}, [1, 2]) is None
    c.close()
    assert os.listdir(tmp_path) == []


def test_an_unknown_check_or_sweep_name_is_one_line_naming_the_choices(capsys):
    from conftest import assert_one_line_error, run_main
    code, _, err = run_main(bench.main, ["check", "--name=cuda-path"], capsys)
    assert_one_line_error(code, err, "cuda-path", "cuda-paths")
    code, _, err = run_main(bench.main, ["gpu", "--only", "124m", "char"], capsys)
    assert_one_line_error(code, err, "'char'", "char-modern")
