"""``hubtrain generate``: stream a continuation from ResNet-BK or any causal LM folder to the terminal."""
from __future__ import annotations

import argparse
import sys

from hubtrain.cli.args import Parser, non_negative_float, positive_int, probability

DESCRIPTION = "Generate text from a causal language model folder (model + tokenizer), streaming tokens as they come."
EPILOG = """examples:
  hubtrain generate hubtrain-quickstart-lm --prompt "def main("
  hubtrain generate hubtrain-quickstart-lm --prompt "import " --max-new-tokens 200 --temperature 0.8 --top-k 40
  hubtrain generate path/to/gpt2-folder --prompt "Once upon a time" --seed 0
  hubtrain generate hubtrain-quickstart-lm --prompt "def " --backend onnx   # onnxruntime decode step
  hubtrain generate some-remote-code-model --trust-remote-code --prompt "x = "

Greedy decoding unless --temperature > 0. ResNet-BK decodes with an O(1) recurrent state per token.
--backend onnx runs the exported decode step (decode_step.onnx: --onnx FILE, the folder's own, or exported
once into a temporary folder, verified against PyTorch) with onnxruntime; it needs hubtrain[onnx] and a model
whose cache flattens to tensors (ResNet-BK)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="folder with a causal LM (config.json + safetensors) and its tokenizer")
    parser.add_argument("--prompt", default="", help="text to continue (default: the tokenizer's BOS token)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=positive_int, default=None)
    parser.add_argument("--top-p", type=probability, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true", help="allow modeling code shipped in the folder")
    parser.add_argument("--no-stream", action="store_true", help="print once at the end instead of streaming")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="torch: transformers' generate (default); onnx: the decode step in onnxruntime")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="decode_step.onnx to run with --backend onnx (default: the folder's, else exported now)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        import torch
        from transformers import TextStreamer

        from hubtrain.artifacts import load
        from hubtrain.export.spec import unwrap_causal_lm

        folder = Path(args.model)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        model = load(folder, trust_remote_code=args.trust_remote_code)
        lm = unwrap_causal_lm(model)
        if lm is None:
            kind = getattr(model, "pipeline_tag", None) or type(model).__name__
            raise TypeError(f"{folder} holds a {type(model).__name__} ({kind}), not a causal language model; "
                            "`hubtrain generate` needs a causal LM folder such as the one `hubtrain quickstart lm` writes")
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise FileNotFoundError(f"{folder} has no tokenizer files; save the tokenizer next to the model "
                                    "(tokenizer.save_pretrained(folder))")
        if args.seed is not None:
            torch.manual_seed(args.seed)
        text = args.prompt or (tokenizer.bos_token or "")
        if not text:
            raise ValueError("the tokenizer has no BOS token; give a --prompt")
        inputs = tokenizer(text, return_tensors="pt")
        sample = args.temperature > 0
        kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=sample,
                      pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        if sample:
            kwargs |= {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p)) if v}
        streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
        if args.backend == "onnx":
            output = onnx_generate_ids(lm, folder, args, inputs["input_ids"], streamer)
        else:
            with torch.no_grad():
                output = lm.generate(**inputs, streamer=streamer, **kwargs)
        if args.no_stream:
            print(tokenizer.decode(output[0], skip_special_tokens=True))
    except ImportError as err:
        print(f"hubtrain generate: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, TypeError, OSError) as err:
        print(f"hubtrain generate: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    return 0


def onnx_generate_ids(lm, folder, args: argparse.Namespace, input_ids, streamer):
    """Generate with the decode-step graph in onnxruntime; returns (1, N + new) token ids like ``generate``."""
    import tempfile
    import time
    from pathlib import Path

    import torch

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ImportError('--backend onnx needs onnxruntime: pip install "hubtrain[onnx]"') from None
    from hubtrain.export.decode import OnnxGenerator, export_decode_step_to_onnx, has_flat_cache

    path = Path(args.onnx) if args.onnx else folder / "decode_step.onnx"
    if args.onnx and not path.is_file():
        raise FileNotFoundError(f"--onnx {path}: no such file; write one with `hubtrain export {folder}`")
    with tempfile.TemporaryDirectory(prefix="hubtrain-decode-") as tmp:
        if not path.is_file():
            if not has_flat_cache(lm):
                raise TypeError(f"{type(lm).__name__} has no recurrent cache that flattens to tensors, so it has no "
                                "decode-step graph; use --backend torch")
            start = time.perf_counter()
            path, _ = export_decode_step_to_onnx(lm, Path(tmp) / "decode_step.onnx")
            print(f"[exported and verified the decode step in {time.perf_counter() - start:.1f} s; to skip this, run "
                  f"`hubtrain export {folder}` once and pass --onnx {folder}-export/decode_step.onnx]", file=sys.stderr)
        generator = OnnxGenerator(path)
        eos = lm.generation_config.eos_token_id if getattr(lm, "generation_config", None) is not None else None
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        if streamer is not None:
            streamer.put(input_ids)
        new = []
        for token in generator.stream(input_ids.numpy(), args.max_new_tokens, eos, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed):
            new.append(torch.from_numpy(token))
            if streamer is not None:
                streamer.put(new[-1])
        if streamer is not None:
            streamer.end()
    return torch.cat([input_ids, torch.stack(new, 1)], 1)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hubtrain generate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
