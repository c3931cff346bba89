"""Turn the e2e model's GGUF into a Hugging Face model folder that vLLM's CPU build can load
(`make e2e-vllm`), with Gemma 3's chat format as its template.

Runs in the vLLM venv (transformers, gguf, accelerate), not the project's:
    python tests/tools/hf_model.py MODEL.gguf OUT_DIR TEMPLATE.jinja
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf: Path, out: Path, template: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers 5 keeps GGUF weights quantised, which it cannot save, unless told to unpack them
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    tokenizer.add_bos_token = True  # the GGUF asks for BOS; the conversion loses that
    tokenizer.chat_template = template.read_text()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    convert(*(Path(argument) for argument in sys.argv[1:4]))
