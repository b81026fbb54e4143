"""ResNet-BK and hubtrain with the Hugging Face ecosystem, offline: transformers, the Hub, ONNX and TensorRT.

    python examples/hf_integration_demo.py --demo all        # everything below, in order
    python examples/hf_integration_demo.py --demo hf         # config, Auto classes, save/load, generation
    python examples/hf_integration_demo.py --demo hub        # push, upload a checkpoint, batch upload, download back
    python examples/hf_integration_demo.py --demo onnx       # verified ONNX export, decode step, onnxruntime generation
    python examples/hf_integration_demo.py --demo tensorrt   # TensorRT engine + speedup (skips without a CUDA GPU)

Nothing here touches the network: the Hub demo starts a local Hub-compatible server on 127.0.0.1 (the test
server in tests/hub/hub_server.py) and points huggingface_hub at it, exactly as HF_ENDPOINT would.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=256)  # the 1M preset with a byte-sized vocabulary keeps every demo to seconds


def demo_hf(workdir: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubtrain.models.resnet_bk import ResNetBKConfig, create_resnet_bk_for_hf

    print("== transformers ==")
    model = create_resnet_bk_for_hf("1M", **SMALL).eval()
    print(f"ResNetBKForCausalLM 1M preset: {sum(p.numel() for p in model.parameters()):,} parameters")
    folder = workdir / "resnet-bk-1m"
    model.save_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    assert isinstance(config, ResNetBKConfig)
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(model(ids).logits, reloaded(ids).logits)
        out = reloaded.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    print(f"saved to {folder} (safetensors + auto_map); reloaded via AutoModelForCausalLM, identical logits: {same}")
    print(f"greedy continuation: {out[0, 16:].tolist()}")


def demo_hub(workdir: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "hub"))
    from hub_server import LocalHubServer, patch_client_endpoint
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM

    from hubtrain.hub import batch_upload_models, push_to_hub, upload_model_to_hub
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    print("== Hub (local server) ==")
    token = "hf_DemoTokenForTheLocalHubOnly000000"
    model = create_resnet_bk_for_hf("1M", **SMALL).eval()
    with LocalHubServer(tokens={token: "demo"}) as hub, patch_client_endpoint(hub.endpoint):
        result = push_to_hub(model, "demo/resnet-bk-1m", token=token)
        print(f"push_to_hub: {len(result.files)} files -> {result.url}")
        ckpts = workdir / "checkpoints"
        ckpts.mkdir(exist_ok=True)
        torch.save(model.state_dict(), ckpts / "resnet_bk_1m.pt")  # the seed's checkpoint layout, read weights-only
        single = upload_model_to_hub(ckpts / "resnet_bk_1m.pt", "demo/resnet-bk-1m-ckpt", model_size="1M", token=token)
        print(f"upload_model_to_hub: {single.url}")
        model.save_pretrained(ckpts / "resnet_bk_1m_folder")
        summary = batch_upload_models(ckpts, "demo/batch", token=token)
        print(f"batch_upload_models: {summary}")
        folder = Path(snapshot_download("demo/resnet-bk-1m", cache_dir=workdir / "hf-cache", token=token))
        back = AutoModelForCausalLM.from_pretrained(folder).eval()
        ids = torch.randint(0, 256, (1, 12))
        with torch.no_grad():
            print(f"downloaded {sorted(p.name for p in folder.iterdir())}; identical logits: "
                  f"{torch.equal(back(ids).logits, model(ids).logits)}")


def demo_onnx(workdir: Path) -> None:
    from hubtrain.export import (
        OnnxGenerator,
        export_decode_step_to_onnx,
        export_to_onnx,
        onnx_op_types,
        optimize_onnx_model,
        verify_onnx_model,
    )
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    print("== ONNX ==")
    model = create_resnet_bk_for_hf("1M", **SMALL).eval()
    path = export_to_onnx(model, workdir / "resnet_bk_1m.onnx", verify=True)  # the seed's one-liner
    check = verify_onnx_model(model, path, [(torch.randint(0, 256, (2, 300)),)])
    print(f"{path.name}: dynamic batch and length, scan as {'Scan' if 'Scan' in onnx_op_types(path) else '?'}; "
          f"at length 300 max abs error {check.max_abs_error:.1e}, argmax identical: {check.argmax_match}")
    optimized = optimize_onnx_model(path, level="extended")
    print(f"optimised: {optimized.name}")
    decode, report = export_decode_step_to_onnx(model, workdir / "resnet_bk_1m_decode.onnx")
    prompt = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    ours = OnnxGenerator(decode).generate(prompt.numpy(), max_new_tokens=20)
    with torch.no_grad():
        ref = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False).numpy()
    print(f"{decode.name}: 20 tokens with onnxruntime alone match PyTorch's greedy generate: {(ours == ref).all()}")


def demo_tensorrt(workdir: Path) -> None:
    from hubtrain.export import benchmark_speedup, export_to_onnx, export_to_tensorrt, tensorrt_unavailable_reason
    from hubtrain.models.resnet_bk import create_resnet_bk_for_hf

    print("== TensorRT ==")
    reason = tensorrt_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    model = create_resnet_bk_for_hf("1M", **SMALL).eval()
    onnx_path = export_to_onnx(model, workdir / "resnet_bk_1m.onnx")
    engine = export_to_tensorrt(onnx_path, workdir / "resnet_bk_1m.trt", fp16=True, max_batch_size=8, max_seq_len=512)
    rows = benchmark_speedup(model, onnx_path, engine, batch_sizes=(1, 8), seq_lens=(128,))
    for r in rows:
        print(f"{r['backend']:12s} batch {r['batch_size']} N={r['seq_len']}: {r['median_ms']:.2f} ms (x{r['speedup']:.2f})")


DEMOS = {"hf": demo_hf, "hub": demo_hub, "onnx": demo_onnx, "tensorrt": demo_tensorrt}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", choices=["all", *DEMOS], default="all")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="hubtrain-demo-") as tmp:
        for name in DEMOS if args.demo == "all" else [args.demo]:
            DEMOS[name](Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
