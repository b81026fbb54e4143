"""Two CPU processes (DDP over gloo) train one model: same weights on both ranks, one run folder, right step count."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SCRIPT = textwrap.dedent(
    '''
    import json, sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from hubtrain.metrics import MetricConfig, MetricManager
    from hubtrain.training import AutoTrainer


    class Net(pl.LightningModule):
        monitor = ("val/accuracy", "max")

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
            self.metrics = MetricManager([MetricConfig("accuracy", metric_class="Accuracy",
                                                       params={"task": "multiclass"}, stages=["val"])], num_classes=2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train/loss", loss, sync_dist=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.metrics.update("val", self.net(x).softmax(-1), y)
            self.metrics.log(self, "val")

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    class Dump(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            out = Path(sys.argv[1])
            torch.save(pl_module.state_dict(), out / f"rank{trainer.global_rank}.pt")
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
                {"global_step": trainer.global_step, "world_size": trainer.world_size,
                 "run_dir": str(trainer.run_dir), "backend": torch.distributed.get_backend()}))


    if __name__ == "__main__":
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 8, generator=g)
        y = (x[:, 0] + x[:, 1] > 0).long()
        train = DataLoader(TensorDataset(x, y), batch_size=16)
        val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
        trainer = AutoTrainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", seed=0,
                              default_root_dir=Path(sys.argv[1]) / "runs", callbacks=[Dump()],
                              enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Net(), train, val)
    '''
)


def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 128 samples sharded over 2 ranks = 64 each = 4 batches of 16 per epoch, 2 epochs
    assert [i["global_step"] for i in info] == [8, 8]
    assert {i["world_size"] for i in info} == {2} and {i["backend"] for i in info} == {"gloo"}
    assert info[0]["run_dir"] == info[1]["run_dir"] == str(tmp_path / "runs" / "net" / "version_0")

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0)

    runs = sorted(p.name for p in (tmp_path / "runs" / "net").iterdir())
    assert runs == ["version_0"]  # rank 1 did not open a folder of its own
    ckpts = Path(info[0]["run_dir"]) / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8
    for key in w0:
        torch.testing.assert_close(last["state_dict"][key], w0[key], rtol=0, atol=0)
    assert any(p.name.startswith("best-epoch=") and "val_accuracy=" in p.name for p in ckpts.iterdir())
