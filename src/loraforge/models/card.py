"""The base card: what `loraforge models show` prints about a base."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loraforge.models.base import LoadedBase, context_length
from loraforge.models.lora import linear_module_names


@dataclass(frozen=True)
class BaseCard:
    spec: str
    model_dir: str
    architecture: str
    parameters: int
    layers: int
    hidden_size: int
    vocab_size: int
    context_length: int
    linear_modules: list[str]
    dtype: str
    chat_template_head: str
    fingerprint: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def base_card(base: LoadedBase, template_lines: int = 6) -> BaseCard:
    config = base.model.config
    template = base.chat_template or "(none: set data.template to a Jinja file)"
    return BaseCard(
        spec=base.spec,
        model_dir=str(base.model_dir),
        architecture=(getattr(config, "architectures", None) or [type(base.model).__name__])[0],
        parameters=sum(p.numel() for p in base.model.parameters()),
        layers=int(getattr(config, "num_hidden_layers", 0)),
        hidden_size=int(getattr(config, "hidden_size", 0)),
        vocab_size=int(getattr(config, "vocab_size", 0)),
        context_length=context_length(config),
        linear_modules=linear_module_names(base.model),
        dtype=str(base.dtype).removeprefix("torch."),
        chat_template_head="\n".join(template.splitlines()[:template_lines]),
        fingerprint=base.fingerprint,
    )
