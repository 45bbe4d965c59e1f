"""The official `qwen-tts` package as oracle: stand-ins for its unused imports, a checkpoint builder that
uses its classes, and its model loaded on a checkpoint folder. Tests only; the runtime never imports it."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

from utter_tts.demo import (
    checkpoint_config,
    randomize_model,
    randomize_speech_tokenizer,
    speech_tokenizer_config,
    write_side_files,
)


def install_oracle_stubs() -> None:
    """Stand-ins for modules the official package imports eagerly but its 12 Hz path never uses.

    PyPI's torchaudio does not load beside the CPU torch used here, and sox/onnxruntime serve only
    the 25 Hz tokenizer. Each stand-in needs a __spec__ or transformers' package probe fails.
    """
    names = ["torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi", "sox", "onnxruntime"]
    for name in names:
        root = name.split(".")[0]
        if root not in sys.modules and importlib.util.find_spec(root) is not None:
            continue  # the real package is there (e.g. a GPU image): use it
        if name not in sys.modules:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = mod
    if "torchaudio.compliance" in sys.modules and not hasattr(sys.modules["torchaudio"], "__file__"):
        sys.modules["torchaudio"].compliance = sys.modules["torchaudio.compliance"]
        sys.modules["torchaudio.compliance"].kaldi = sys.modules["torchaudio.compliance.kaldi"]
    _patch_transformers5_rope()


def _patch_transformers5_rope() -> None:
    """On transformers 5 (GPU images, with the unofficial qwen-tts-hf port) the port's RoPE "default"
    reads `config.rope_theta`, which Mimi's config keeps only in `rope_parameters`: fall back to it."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        return
    import qwen_tts  # noqa: F401  (registers the port's "default")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    default = ROPE_INIT_FUNCTIONS.get("default")
    if default is None or getattr(default, "_utter_patched", False):
        return

    def patched(config, device=None, seq_len=None, layer_type=None):
        if hasattr(config, "rope_theta"):
            return default(config, device, seq_len, layer_type)
        import torch

        params = config.rope_parameters
        if layer_type is not None and isinstance(params, dict) and layer_type in params:
            params = params[layer_type]
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        exps = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
        return 1.0 / (params["rope_theta"] ** exps), 1.0

    patched._utter_patched = True
    ROPE_INIT_FUNCTIONS["default"] = patched


def build_checkpoint(
    out_dir: str | Path,
    model_type: str = "base",
    shape: str = "tiny-1.7b",
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
) -> Path:
    """A random checkpoint like `utter_tts.demo.build_checkpoint`'s, but drawn and saved by the official
    classes (so parity tests compare us with the official code on weights the official code wrote)."""
    import torch
    from safetensors.torch import save_file

    install_oracle_stubs()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tiny = shape.startswith("tiny")
    gen = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)
    cfg = checkpoint_config(shape, model_type, dtype)
    with torch.device(device):
        model = Qwen3TTSForConditionalGeneration(
            Qwen3TTSConfig(**{k: v for k, v in cfg.items() if k != "dtype"})
        )
    if tiny:
        randomize_model(model, gen)
    model = model.to(getattr(torch, dtype)).eval()
    # config.json written as the hub's (the official save adds keys its own loader rejects)
    (out / "config.json").write_text(json.dumps(cfg, indent=1), "utf-8")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    del model, state

    st_cfg = speech_tokenizer_config(tiny)
    with torch.device(device):
        st = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**st_cfg))
    randomize_speech_tokenizer(st, gen)
    write_side_files(out, st_cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in st.eval().state_dict().items()}
    save_file(state, str(out / "speech_tokenizer" / "model.safetensors"), metadata={"format": "pt"})
    return out


def load_official(path: str | Path, dtype: str = "float32"):
    """The official Qwen3TTSModel wrapper on a checkpoint folder (the parity oracle)."""
    import torch

    install_oracle_stubs()
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(
        str(path), device_map="cpu", dtype=getattr(torch, dtype), attn_implementation="eager"
    )
