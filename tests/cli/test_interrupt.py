"""A run stopped by SIGTERM exits non-zero, says where its last good checkpoint is, and writes no Hub folder, so
`hubtrain quickstart && hubtrain export ...` stops there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch


def test_sigterm_during_quickstart_exits_non_zero_with_a_checkpoint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    exe = str(Path(sys.executable).parent / "hubtrain")
    proc = subprocess.Popen([exe, "quickstart", "--max-epochs", "50"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("runs/quickstart/version_0/checkpoints/*.ckpt")):
        time.sleep(0.5)  # let it train until the first epoch's checkpoint exists
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, (proc.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "Traceback" not in err, err[-2000:]
    path = lines[0].split("ckpt_path=")[1].strip("'")
    assert Path(path).is_file() and torch.load(path, weights_only=True, map_location="cpu")["global_step"] > 0
    assert not (tmp_path / "hubtrain-quickstart").exists()  # the Hub folder is written only by a finished run
