"""What `get_model_info` and utter's /health report: the models, the attention kernels, the GPU."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from utter_tts.compat.languages import LANGUAGES
from utter_tts.engine.runner import attention_backend


def model_info(service: Any) -> dict[str, Any]:
    """The original's fields (model_id, model_name, attention_implementation, gpu, gpu_memory_gb,
    supported_languages), then ours; `service` is a CompatService."""
    names, cache = service.names, service.cache
    gpu = service.gpu or _gpu_name()
    return {
        "model_id": names.base,
        "model_name": model_name(names.base),
        "attention_implementation": attention_implementation(service.base or service.design_model),
        "gpu": gpu or "none",
        "gpu_memory_gb": _gpu_memory_gb() if gpu else 0,
        "supported_languages": list(LANGUAGES),
        "model": names.base,
        "models": {"clone": names.base, "design": names.design},
        "loaded": {"clone": service.base is not None, "design": service.design_model is not None},
        "languages": list(LANGUAGES),
        "default_language": "Auto",
        "sample_rate": service.sample_rate,
        "limits": asdict(service.limits),
        "prompt_cache": {
            "size": cache.size,
            "entries": len(cache),
            "hits": cache.hits,
            "misses": cache.misses,
        },
    }


def attention_implementation(model: Any) -> str:
    """The attention kernels `model` (a TTS) runs, and whether flash-attn is installed beside them."""
    if model is None:
        return "unloaded"
    engine = getattr(model, "engine", None)
    if engine is not None and engine.runner.fused is not None:
        backend = "triton (fused decode attention over the static KV cache)"
        if engine.runner.fused.prefill_attention == "flash-attention-2":
            backend += "; packed prefill: FlashAttention-2 (as PyTorch ships it)"
    else:  # the plain pipeline, or an engine without the kernels: PyTorch's SDPA
        backend = attention_backend(model.device)
    try:
        import flash_attn  # noqa: F401

        return f"{backend}; flash-attn {flash_attn.__version__} installed"
    except Exception:  # not installed, or built for another torch: PyTorch's own SDPA serves
        return backend


def model_name(model_id: str) -> str:
    """The original's MODEL_NAME: the last part of a hub id ("Qwen3-TTS-12Hz-1.7B-Base") or of a folder."""
    return str(model_id).rstrip("/").rsplit("/", 1)[-1]


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def _gpu_memory_gb() -> float:
    try:
        import torch

        return torch.cuda.get_device_properties(0).total_memory / 1e9
    except Exception:
        return 0
