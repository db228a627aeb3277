"""`compare.py bench --reference-script`: the reference project's PyTorch script timed as a row of the bench."""

from __future__ import annotations

import io
import json
import textwrap

import numpy as np
import pytest
from helpers import compare

import backends
from common.spec import Spec
from runner import bench, reference_script

SPEED_LINE = "Step {step}\tTrain ELBO estimate: -100.0\tSpeed: {rate:.2e} examples/s\n"


def test_the_row_runs_only_in_the_scripts_architecture():
    assert reference_script.matches(Spec(encoder=(256, 256), decoder=(256, 256), latent_size=128))
    assert not reference_script.matches(Spec(encoder=(512, 512), decoder=(512, 512), latent_size=128))
    assert not reference_script.matches(Spec(variational="iaf", encoder=(256, 256), decoder=(256, 256),
                                             latent_size=128))
    assert not reference_script.matches(Spec(encoder=(256, 256), decoder=(256, 256), latent_size=128,
                                             activation="tanh"))


def test_the_clock_reads_the_scripts_speed_lines_even_when_split_across_writes():
    passed = io.StringIO()
    clock = reference_script.WindowClock(passed)
    text = SPEED_LINE.format(step=0, rate=2.34e4) + "Validation log p(x): -99\n" + SPEED_LINE.format(step=5, rate=1150)
    for piece in (text[:30], text[30:97], text[97:]):
        clock.write(piece)
    assert passed.getvalue() == text
    assert [p["examples_per_s"] for p in clock.prints] == [23400.0, 1150.0]
    assert all("outside_load" in p for p in clock.prints)


def test_the_rows_windows_are_the_prints_after_its_warm_up():
    prints = [dict(examples_per_s=r, outside_load=0.0, steal=0.0) for r in (99999.0, 50.0, 100.0, 200.0, 400.0)]
    windows = reference_script.windows_from_prints(prints, 3, 500, 128)
    assert [w["examples_per_s"] for w in windows] == [100.0, 200.0, 400.0]  # not the one step, nor its step-0 eval
    assert [w["seconds"] for w in windows] == [640.0, 320.0, 160.0]
    with pytest.raises(RuntimeError, match="printed 5 speeds; 6 were expected"):
        reference_script.windows_from_prints(prints, 4, 500, 128)


def raw_round(rates: dict[str, float]) -> dict:
    def config(name, rate):
        window = dict(seconds=1.0, examples_per_s=rate, finite=True, outside_load=0.0)
        evals = [] if name == reference_script.ROW else [dict(seconds=1.0, samples_per_s=rate * 10, outside_load=0.0)]
        return dict(config="mean-field H8", gemm={} if not evals else {"square_4096": 1e11}, warmup_seconds=2.0,
                    windows=[window] * 3, evals=evals * 3, train_flops_per_example=1e6,
                    eval_flops_per_sample=1e5 if evals else None)
    return {"round": 0, "order": list(rates), "numpy_gemm": 1e10,
            "backends": {n: {"backend": n, "configs": [config(n, r)]} for n, r in rates.items()}}


def test_every_rows_ratio_to_the_script_is_taken_within_rounds():
    """The machine halves its speed between rounds; the ratios to the script stay what they were in each round."""
    row = reference_script.ROW
    rounds = [raw_round({"jax": 3000.0, "torch": 2000.0, row: 1000.0}),
              raw_round({"jax": 1500.0, "torch": 1000.0, row: 500.0})]
    spec = Spec(encoder=(8, 8), decoder=(8, 8), latent_size=4)
    summary = bench.summarize(rounds, ["jax", "torch", row], [spec], "jax")
    rows = {r["backend"]: r for r in summary["configs"][0]["backends"]}
    assert rows["torch"]["train_ratio_to_script"]["ratio"] == 2.0
    assert rows["jax"]["train_ratio_to_script"]["ratio"] == 3.0
    assert rows[row]["eval_samples_per_s"] is None and "eval_ratio" not in rows[row]
    assert rows[row]["train_ratio"]["ratio"] == pytest.approx(1 / 3) and "train_ratio_to_script" not in rows[row]
    text = bench.markdown(dict(run="b", provenance=dict(commit="abc", clean=True), created="2026-11-23", command="c",
                               rounds=2, windows=3, window_steps=5, batch_size=8, eval_k=8, eval_examples=4,
                               summary=summary, environment=dict(cpu="cpu", cpu_count=2, gpus=["none"]),
                               reference_script=dict(command="python s.py", commit="0123456789abcdef"),
                               script_window_steps=500, specs=[spec.to_dict()]))
    assert f"| mean-field H8 | {row} | 750 " in text and "| — | — | — |" in text
    assert "| mean-field H8 | torch | x2.00 " in text and "| mean-field H8 | jax | x3.00 " in text


FAKE_SCRIPT = textwrap.dedent('''
    """Stands in for the reference project's script: takes its flags, reads its data file, prints its lines."""
    import argparse, pathlib, sys
    import h5py
    import data  # the script imports the data.py beside it

    p = argparse.ArgumentParser()
    for flag in ("--latent_size", "--batch_size", "--max_iterations", "--log_interval", "--n_samples", "--seed"):
        p.add_argument(flag, type=int)
    p.add_argument("--variational")
    p.add_argument("--data_dir", type=pathlib.Path)
    p.add_argument("--train_dir", type=pathlib.Path)
    cfg = p.parse_args()
    assert cfg.variational == "mean-field" and cfg.n_samples == 1 and cfg.latent_size == 4, cfg
    with h5py.File(cfg.data_dir / "binary_mnist.h5", "r") as f:
        assert f["train"].shape == (50000, 784) and str(f["train"].dtype) == "float32"
        assert f["valid"].shape == f["test"].shape == (10000, 784)
    (cfg.train_dir / "best_state_dict").write_bytes(b"state")
    for step in range(cfg.max_iterations):
        if step % cfg.log_interval == 0:
            print(f"Step {step}\\tSpeed: {1000.0 if step > cfg.log_interval else 7.0:<5.2e} examples/s")
    print("Total time: 0.01 minutes")
    print("Speed: in the last words too, but not a window", file=sys.stderr)
''')


def fake_checkout(tmp_path):
    folder = tmp_path / "reference"
    folder.mkdir()
    (folder / "data.py").write_text("")
    script = folder / reference_script.SCRIPT_NAME
    script.write_text(FAKE_SCRIPT + '\n# takes --log_interval and --n_samples\n')
    return script


@pytest.mark.skipif(not backends.installed("jax"), reason="needs jax")
def test_bench_runs_the_script_in_every_round_and_keeps_none_of_its_files(tmp_path):
    pytest.importorskip("h5py")
    out = tmp_path / "bench"
    result = compare("bench", "--backends", "jax", "--variational", "mean-field", "--hidden-sizes", "8,16",
                     "--latent-size", "4", "--batch-size", "8", "--rounds", "2", "--windows", "2", "--window-steps",
                     "5", "--eval-k", "8", "--eval-examples", "4", "--script-window-steps", "7",
                     "--reference-script", str(fake_checkout(tmp_path)), "--out", str(out),
                     env={"HOME": str(tmp_path / "home")}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rounds = json.loads((out / "rounds.json").read_text())
    row = reference_script.ROW
    assert [r["order"] for r in rounds] == [["jax", row], [row, "jax"]]
    for r in rounds:
        configs = r["backends"][row]["configs"]
        assert [c["config"] for c in configs] == ["mean-field H8"]  # H = 2L only
        assert [w["examples_per_s"] for w in configs[0]["windows"]] == [1000.0, 1000.0]
        assert configs[0]["windows"][0]["seconds"] == pytest.approx(7 * 8 / 1000.0)
        assert configs[0]["warmup_seconds"] == pytest.approx(7 * 8 / 7.0)
    assert sorted(p.name for p in (out / "round0").iterdir() if p.is_dir()) == []  # its data and state are gone
    job = json.loads((out / "round0" / f"{row}.job.json").read_text())
    assert not job["reference_script"].startswith("/")  # the record names no path of this machine
    saved = json.loads((out / "bench.json").read_text())
    assert saved["reference_script"]["commit"] is None and saved["reference_script"]["command"].startswith(
        f"python {reference_script.SCRIPT_NAME} --variational mean-field --latent_size 4 --batch_size 8 "
        "--max_iterations 22 --log_interval 7 --n_samples 1")
    h8 = {r["backend"]: r for r in saved["summary"]["configs"][0]["backends"]}
    clean = [v["train"] for v in (bench.round_values(r, "jax", "mean-field H8") for r in rounds) if v]
    if clean:  # a round whose windows the machine's other load took is left out
        assert h8["jax"]["train_ratio_to_script"]["ratio"] == pytest.approx(float(np.median(clean)) / 1000.0)
    assert "train_ratio_to_script" not in saved["summary"]["configs"][1]["backends"][0]  # H16: no script row
    assert "Against the reference project's script" in (out / "bench.md").read_text()


def test_a_reference_script_that_is_not_one_is_refused_in_one_line(tmp_path):
    not_it = tmp_path / "train.py"
    not_it.write_text("print('hello')\n")
    for path, words in ((tmp_path / "missing.py", "no such file"), (not_it, "not the reference project's")):
        out = tmp_path / "bench"
        result = compare("bench", "--backends", "jax", "--hidden-sizes", "256", "--reference-script", str(path),
                         "--out", str(out), timeout=120)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()
    result = compare("bench", "--backends", "jax", "--hidden-sizes", "512", "--reference-script",
                     str(fake_checkout(tmp_path)), "--out", str(tmp_path / "bench"), timeout=120)
    assert result.returncode == 2 and "no configuration has the script's architecture" in result.stderr


def test_readmes_bench_block_shows_the_script_row_and_every_rows_ratio_to_it(tmp_path):
    from report import readme

    row = reference_script.ROW
    rounds = [raw_round({"jax": 3000.0, "torch": 2000.0, row: 1000.0}),
              raw_round({"jax": 3300.0, "torch": 2100.0, row: 1000.0}),
              raw_round({"jax": 2900.0, "torch": 2050.0, row: 1000.0})]
    spec = Spec(encoder=(8, 8), decoder=(8, 8), latent_size=4)
    summary = bench.summarize(rounds, ["jax", "torch", row], [spec], "jax")
    (tmp_path / "bench.json").write_text(json.dumps(dict(
        rounds=3, summary=summary, script_window_steps=500,
        reference_script=dict(script=reference_script.SCRIPT_NAME, commit="7e8c661d1d91aa", command="python s.py"))))
    text = readme.bench(str(tmp_path))
    lines = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| mean-field H8")}
    assert lines[row].endswith("| — | — | |") and "| 1,000 [1,000, 1,000] | 0.33 " in lines[row]
    assert lines["torch"].endswith("| 2.05 [2.00, 2.10] |") and lines["jax"].endswith("| 3.00 [2.90, 3.30] |")
    assert "torch trains faster than reference-script (×2.05, 95% interval over 3 rounds [2.00, 2.10])" in text
    assert "`train_variational_autoencoder_pytorch.py` at its commit `7e8c661d1d91`" in text
