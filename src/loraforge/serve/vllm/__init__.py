"""The vLLM engine: loraforge's tenancy and adapter checks in front of a vLLM OpenAI server."""

from loraforge.serve.vllm.engine import VllmEngine, adapter_refusal, internal_name
from loraforge.serve.vllm.process import DEFAULT_MAX_LORA_RANK, VllmProcess, VllmSettings

__all__ = ["DEFAULT_MAX_LORA_RANK", "VllmEngine", "VllmProcess", "VllmSettings", "adapter_refusal", "internal_name"]
