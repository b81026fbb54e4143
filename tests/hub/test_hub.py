"""Publishing through the real huggingface_hub client to a local Hub: create, upload (regular + LFS), a card-only
second push, download back with identical outputs; rejected tokens, dead endpoints and bad checkpoints."""
from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download

from checks import METRICS_CSV, assert_uploaded_weights, front_matter
from hubtrain.hub import HubError, batch_upload_models, push_to_hub, upload_model_to_hub

def _download(hub, repo_id, tmp_path) -> Path:
    return Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token=hub.token))


def _run_usage_snippet(readme: str, repo_id: str, folder: Path) -> dict:
    code = re.search(r"## Usage\n\n```python\n(.*?)```", readme, re.S).group(1)
    scope: dict = {}
    exec(compile(code.replace(f'"{repo_id}"', repr(str(folder))), "usage-snippet", "exec"), scope)
    return scope


def test_task_model_round_trip_through_the_hub(local_hub, classifier, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    csv = tmp_path / "metrics.csv"
    csv.write_text(METRICS_CSV)
    result = push_to_hub(classifier, "alice/digits-test", token=local_hub.token, metrics_csv=csv, datasets=["digits"])
    assert {"model.safetensors", "config.json", "README.md", "training_curves.png"} <= set(result.files)
    assert result.url.endswith("/alice/digits-test") and result.commit_oid
    sent = {(m, p) for m, p, _ in local_hub.state.requests}
    assert ("POST", "/api/models/alice/digits-test/preupload/main") in sent
    assert any(p.startswith("/lfs-objects/") for m, p in sent if m == "PUT")  # weights went through LFS

    folder = _download(local_hub, "alice/digits-test", tmp_path)
    from hubtrain.tasks.classification import ImageClassifier

    reloaded = ImageClassifier.from_pretrained(folder)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x), classifier(x))

    readme = (folder / "README.md").read_text()
    meta = front_matter(readme)
    # timm reads the folder itself, so the Hub shows timm's snippet and widget for it
    assert meta["library_name"] == "timm" and meta["license"] == "apache-2.0" and meta["datasets"] == ["digits"]
    results = meta["model-index"][0]["results"]
    reported = {m["name"]: m["value"] for r in results for m in r["metrics"]}
    assert reported == {"val/accuracy": 0.93, "val/loss": 0.38}
    assert {r["task"]["type"] for r in results} == {"image-classification"}
    assert f"{sum(p.numel() for p in classifier.parameters()):,}" in readme  # measured, not quoted
    assert "| 2 | 0.4100 | 0.9300 | 0.3800 |" in readme  # the per-epoch table
    assert (folder / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scope = _run_usage_snippet(readme, "alice/digits-test", folder)
    assert scope["outputs"].shape == (1, 3)

    # a second push that changes only the card commits only the card
    push_to_hub(classifier, "alice/digits-test", token=local_hub.token, metrics_csv=csv, datasets=["digits"],
                description="Now with a better description.", commit_message="card only")
    last = local_hub.history("alice/digits-test")[-1]
    assert last.message == "card only" and last.touched == ["README.md"], [(c.message, c.touched) for c in local_hub.history("alice/digits-test")]
    assert b"better description" in local_hub.file_bytes("alice/digits-test", "README.md")

    everything = "\n".join(r.getMessage() for r in caplog.records) + readme
    assert local_hub.token not in everything


def test_resnet_bk_push_download_and_generate(local_hub, resnet_bk, tmp_path):
    from transformers import AutoModelForCausalLM

    from hubtrain.models.resnet_bk import count_non_embedding_parameters

    push_to_hub(resnet_bk, "alice/resnet-bk-tiny", token=local_hub.token, private=True)
    assert local_hub.state.repos[("model", "alice/resnet-bk-tiny")].private
    folder = _download(local_hub, "alice/resnet-bk-tiny", tmp_path)
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, resnet_bk(ids).logits, atol=1e-6, rtol=0)
    readme = (folder / "README.md").read_text()
    assert f"| non-embedding parameters | {count_non_embedding_parameters(resnet_bk):,} |" in readme
    assert "resnet-bk" in front_matter(readme)["tags"]
    scope = _run_usage_snippet(readme, "alice/resnet-bk-tiny", folder)
    assert scope["output"].shape == (1, 28)


def test_rejected_token_is_one_line_and_never_printed(local_hub, classifier, tmp_path):
    bad = "hf_RejectedTokenShouldNeverBePrinted42"
    with pytest.raises(HubError) as info:
        push_to_hub(classifier, "alice/nope", token=bad)
    message = str(info.value)
    assert "\n" not in message and "401" in message and "alice/nope" in message and bad not in message
    folder = tmp_path / "saved"
    classifier.save_pretrained(folder)
    cli = subprocess.run([sys.executable, "-m", "hubtrain.cli.push_cmd", str(folder), "--repo-id", "alice/nope",
                          "--endpoint", local_hub.endpoint], capture_output=True, text=True,
                         env={**_clean_env(), "HF_TOKEN": bad, "HF_HUB_DISABLE_XET": "1"}, timeout=120)
    assert cli.returncode == 1
    assert cli.stderr.strip().count("\n") == 0 and "401" in cli.stderr
    assert bad not in cli.stdout + cli.stderr


def test_unreachable_endpoint_fails_fast_with_one_line(dead_endpoint, classifier, tmp_path):
    with pytest.raises(HubError, match=r"cannot reach the Hub .*check the network or HF_ENDPOINT") as info:
        push_to_hub(classifier, "alice/offline", token="hf_x", endpoint=dead_endpoint)
    assert dead_endpoint in str(info.value) and "\n" not in str(info.value)
    folder = tmp_path / "saved"
    classifier.save_pretrained(folder)
    cli = subprocess.run([sys.executable, "-m", "hubtrain.cli.push_cmd", str(folder), "--repo-id", "alice/offline",
                          "--endpoint", dead_endpoint], capture_output=True, text=True,
                         env={**_clean_env(), "HF_TOKEN": "hf_x"}, timeout=120)
    assert cli.returncode == 1 and "cannot reach the Hub" in cli.stderr and cli.stderr.strip().count("\n") == 0


def _clean_env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") or k in ("HF_HOME", "HF_HUB_CACHE")}
    return env | {"HF_HUB_OFFLINE": "0"}


def test_batch_upload_reports_each_checkpoint_and_exits_non_zero_on_failure(local_hub, resnet_bk, tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"config": resnet_bk.config.to_dict(), "state_dict": resnet_bk.state_dict()}, ckpts / "tiny_a.pt")
    resnet_bk.save_pretrained(ckpts / "tiny_b")
    (ckpts / "broken.pt").write_bytes(b"not a checkpoint at all")
    summary = batch_upload_models(ckpts, "alice/rbk", token=local_hub.token)
    assert sorted(s["repo_id"] for s in summary.succeeded) == ["alice/rbk-tiny-a", "alice/rbk-tiny-b"]
    (failed,) = summary.failed
    assert failed["repo_id"] == "alice/rbk-broken" and "cannot read checkpoint" in failed["error"]
    assert str(ckpts / "broken.pt") in failed["error"] and not summary.ok
    # the converted .pt became safetensors with the same keys (all of them) and the same weights
    assert_uploaded_weights(_download(local_hub, "alice/rbk-tiny-a", tmp_path), resnet_bk)

    cli = subprocess.run([sys.executable, "-m", "hubtrain.cli.push_cmd", "--batch", "--checkpoint_dir", str(ckpts),
                          "--repo_prefix", "alice/rbk2", "--endpoint", local_hub.endpoint], capture_output=True,
                         text=True, env={**_clean_env(), "HF_TOKEN": local_hub.token, "HF_HUB_DISABLE_XET": "1"}, timeout=300)
    assert cli.returncode == 1, cli.stderr
    assert "uploaded 2, failed 1" in cli.stdout and "FAILED" in cli.stdout and local_hub.token not in cli.stdout + cli.stderr
