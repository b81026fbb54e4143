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
  hubtrain generate some-remote-code-model --trust-remote-code --prompt "x = "

Greedy decoding unless --temperature > 0. ResNet-BK decodes with an O(1) recurrent state per token."""


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
        with torch.no_grad():
            output = lm.generate(**inputs, streamer=streamer, **kwargs)
        if args.no_stream:
            print(tokenizer.decode(output[0], skip_special_tokens=True))
    except (ValueError, FileNotFoundError, TypeError, OSError) as err:
        print(f"hubtrain generate: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="hubtrain generate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
