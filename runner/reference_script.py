"""The reference project's PyTorch script as a row of `compare.py bench` (`--reference-script PATH`).

The reference project (altosaar/variational-autoencoder, now jaanli/variational-autoencoder) trains its VAE with
`train_variational_autoencoder_pytorch.py`. To say how our backends compare with it, the bench runs that script
itself, unmodified, from the user's own checkout (this project ships none of its code), as one more row in each
round's rotation, in a fresh process like every row:

    python train_variational_autoencoder_pytorch.py --variational mean-field --latent_size L --batch_size B
        --max_iterations (W + 1)·S + 1 --log_interval S --n_samples 1 --data_dir ROUND --train_dir ROUND/...

The script prints "Speed: … examples/s" every S steps, timed by its own clock. The first two prints are its
warm-up (one step; then the window that holds its step-0 evaluation), the next W are the row's windows. Its loop
times each window from the top of its previous log step, so every window also holds one pass of its evaluation
over the 10,000 validation images, here with one sample (--n_samples 1): a few forward passes, against the
hundreds of training steps of a window (S defaults to 500). The row's process probes outside load per window
from the script's own prints, as every row does.

Its architecture is fixed: ReLU, two hidden layers of 2L in the encoder and the decoder, a mean-field Gaussian
posterior, centered RMSprop. The row runs only in bench configurations of that shape (mean-field, H = 2L, ReLU).
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np

from common.metrics import LoadProbe
from common.spec import Spec

ROW = "reference-script"
SCRIPT_NAME = "train_variational_autoencoder_pytorch.py"
SPEED = re.compile(r"Speed:\s*([0-9.eE+-]+)\s*examples/s")


def matches(spec: Spec) -> bool:
    """Whether a bench configuration is the script's architecture."""
    wide = 2 * spec.latent_size
    return (spec.model == "vae" and spec.variational == "mean-field" and spec.activation == "relu"
            and tuple(spec.encoder) == (wide, wide) and tuple(spec.decoder) == (wide, wide)
            and spec.objective == "elbo" and spec.train_k == 1)


def check_script(path: Path) -> str | None:
    """None if path looks like the reference project's PyTorch script, else why not (one line)."""
    if not path.is_file():
        return f"--reference-script {path}: no such file"
    text = path.read_text(errors="replace")
    if "Speed:" not in text or "--log_interval" not in text or "--n_samples" not in text:
        return (f"--reference-script {path}: not the reference project's {SCRIPT_NAME} "
                "(it prints no 'Speed:' or takes no --log_interval/--n_samples)")
    if not (path.parent / "data.py").is_file():
        return f"--reference-script {path}: its data.py is not beside it (give the script in its own checkout)"
    try:
        import h5py  # noqa: F401  (the script reads its data from an HDF5 file)
    except ImportError:
        return "--reference-script needs h5py, which the script reads its data with (pip install h5py)"
    return None


def script_argv(spec: Spec, windows: int, window_steps: int, folder: Path) -> list[str]:
    return ["--variational", "mean-field", "--latent_size", str(spec.latent_size), "--batch_size",
            str(spec.batch_size), "--max_iterations", str((windows + 1) * window_steps + 1), "--log_interval",
            str(window_steps), "--n_samples", "1", "--seed", str(spec.seed), "--data_dir", str(folder),
            "--train_dir", str(folder)]


def write_data(folder: Path) -> Path:
    """The data set as the script reads it: binary_mnist.h5 with float32 train/valid/test, from our files."""
    import h5py

    from common import data

    dataset = data.load()
    path = folder / "binary_mnist.h5"
    with h5py.File(path, "w") as f:
        for split in ("train", "valid", "test"):
            f.create_dataset(split, data=getattr(dataset, split).astype(np.float32))
    return path


class WindowClock(io.TextIOBase):
    """Stands in for stdout while the script runs: passes its output on, and at every "Speed:" line records
    the rate it printed and what other processes took of the machine since the previous one."""

    def __init__(self, out) -> None:
        self.out, self.buffer, self.prints = out, "", []
        self.probe = LoadProbe()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.out.write(text)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            m = SPEED.search(line)
            if m:
                self.prints.append(dict(examples_per_s=float(m.group(1)), **self.probe.stop()))
                self.probe.start()
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def windows_from_prints(prints: list[dict], windows: int, window_steps: int, batch_size: int) -> list[dict]:
    """The row's timed windows from the script's prints: the first two are its warm-up (one step, then the window
    holding its step-0 evaluation); the next `windows` are timed windows of `window_steps` steps."""
    if len(prints) < windows + 2:
        raise RuntimeError(f"the script printed {len(prints)} speeds; {windows + 2} were expected")
    out = []
    for p in prints[2:windows + 2]:
        rate = p["examples_per_s"]
        out.append(dict(seconds=window_steps * batch_size / rate, examples_per_s=rate,
                        outside_load=p["outside_load"], steal=p["steal"], finite=bool(np.isfinite(rate))))
    return out


def time_configuration(spec: Spec, job: dict, folder: Path, config: str) -> dict:
    """Run the script once for one configuration, in this process (so its windows are probed like every row's)."""
    from common.models import family

    script = Path(job["reference_script"]).resolve()
    work = folder / f"{ROW}-{config.replace(' ', '-')}"
    work.mkdir(parents=True, exist_ok=True)
    write_data(work)
    clock = WindowClock(sys.stdout)
    argv = [str(script), *script_argv(spec, job["windows"], job["window_steps"], work)]
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = argv
    sys.path.insert(0, str(script.parent))  # the script imports its data.py and flow.py
    try:
        with contextlib.redirect_stdout(clock):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        shutil.rmtree(work, ignore_errors=True)  # its data file and the state it saved: not results
    timed = windows_from_prints(clock.prints, job["windows"], job["window_steps"], spec.batch_size)
    model = family(spec)
    warmup = job["window_steps"] * spec.batch_size / clock.prints[1]["examples_per_s"]  # its first full window
    return dict(config=config, gemm={}, warmup_seconds=warmup, windows=timed, evals=[],
                train_flops_per_example=model.flops_per_example(spec, 1, training=True), eval_flops_per_sample=None,
                command=f"python {script.name} " + " ".join(argv[1:]))


def provenance(path: Path, spec: Spec, windows: int, window_steps: int) -> dict:
    """What was timed: the script's file hash, its checkout's commit (None outside a git checkout) and whether
    that checkout had changes, and the command the row runs for the first configuration of its shape."""
    import hashlib
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(path.parent), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    argv = script_argv(spec, windows, window_steps, Path("ROUND"))
    return dict(script=path.name, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), commit=commit,
                clean=None if status is None else status == "", command=f"python {path.name} " + " ".join(argv))
