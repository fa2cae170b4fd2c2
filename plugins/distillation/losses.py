"""The distillation losses, and the module that computes their weighted sum inside ``forward``.

Each loss is a plain function of tensors (testable on its own); ``build_distill_module`` wraps the
student and the learned width projections into one ``nn.Module`` whose forward returns the loss,
which is what DDP needs to synchronise every trainable parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import LossConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["attention_loss", "build_distill_module", "cosine_loss", "hidden_mse_loss", "kl_loss", "last_hidden",
           "relational_loss"]


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _hidden(output: Any) -> Any:
    return getattr(output, "hidden_states", None)


def last_hidden(output: Any) -> Any:
    """The last hidden state of a model output: ``last_hidden_state``, else the last of ``hidden_states``."""
    last = getattr(output, "last_hidden_state", None)
    if last is None and _hidden(output) is not None:
        last = output.hidden_states[-1]
    return last


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) of softened distributions, times T^2 (Hinton et al.), mean over
    samples (classifiers) or non-padded tokens (causal LMs)."""
    import torch.nn.functional as F

    t = temperature
    s_logp = F.log_softmax(student_logits.float() / t, dim=-1)
    t_logp = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    if mask is not None and per.dim() == 2:
        m = mask.to(per.dtype)
        return (per * m).sum() / m.sum().clamp(min=1.0) * t * t
    return per.mean() * t * t


def hidden_mse_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over non-padded tokens (padding carries no signal and would dilute the loss)."""
    m = mask.float().unsqueeze(-1)
    diff = (student_h.float() - teacher_h.float()) ** 2 * m
    return diff.sum() / (m.sum().clamp(min=1.0) * student_h.shape[-1])


def attention_loss(student_a: torch.Tensor, teacher_a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention rows (B, H, T, T), mean over heads and real queries."""
    eps = 1e-12
    s = student_a.float().clamp(min=eps)
    t = teacher_a.float().clamp(min=eps)
    per_row = (t * (t.log() - s.log())).sum(-1)  # B, H, T
    m = mask.to(per_row.dtype).unsqueeze(1)
    return (per_row * m).sum() / (m.sum().clamp(min=1.0) * per_row.shape[1])


def cosine_loss(student_last: torch.Tensor, teacher_last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - cosine between mean-pooled embeddings: exactly what sentence-encoder users compare."""
    import torch.nn.functional as F

    s = _mean_pool(student_last.float(), mask)
    t = _mean_pool(teacher_last.float(), mask)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def relational_loss(student_last: torch.Tensor, teacher_last: torch.Tensor, mask: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """KL(teacher || student) of each sentence's softmax over its cosine similarities to the other
    sentences in the batch (itself excluded), mean over sentences.

    The cosine loss keeps each embedding near the teacher's, but says nothing about which sentences
    end up nearest each other: errors of a few percent in many directions reorder neighbours. This
    matches the in-batch similarity structure instead (relational / similarity-preserving
    distillation: Park et al. 2019, Tung & Mori 2019), with a low temperature so the nearest
    sentences dominate, as they do in a top-k search.
    """
    import torch
    import torch.nn.functional as F

    if student_last.shape[0] < 2:
        return student_last.float().sum() * 0.0  # one sentence has no neighbours (keeps the graph for DDP)
    s = F.normalize(_mean_pool(student_last.float(), mask), dim=-1)
    t = F.normalize(_mean_pool(teacher_last.float(), mask), dim=-1)
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    s_logp = F.log_softmax((s @ s.T / temperature).masked_fill(eye, float("-inf")), dim=-1)
    t_logp = F.log_softmax((t @ t.T / temperature).masked_fill(eye, float("-inf")), dim=-1)
    per = (t_logp.exp() * (t_logp - s_logp)).masked_fill(eye, 0.0).sum(-1)
    return per.mean()


def build_distill_module(student: Any, losses: LossConfig, layer_map: dict[int, int], task: str,
                         widths: tuple[int, int]) -> nn.Module:
    """The student plus learned projections, computing the whole loss inside ``forward`` so DDP
    sees every trainable parameter in one module (projections included)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    s_width, t_width = widths

    class DistillModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.projections = nn.ModuleDict()
            if s_width != t_width:
                if losses.hidden_mse > 0:
                    for s in layer_map:
                        self.projections[f"h{s}"] = nn.Linear(s_width, t_width)
                if losses.cosine > 0 or losses.relational > 0:
                    self.projections["pool"] = nn.Linear(s_width, t_width)

        def _proj(self, key: str, h: torch.Tensor) -> torch.Tensor:
            return self.projections[key](h) if key in self.projections else h

        def forward(self, inputs: dict[str, torch.Tensor], teacher: dict[str, Any],
                    labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            out = self.student(**inputs, output_hidden_states=losses.hidden_mse > 0 or losses.cosine > 0
                               or losses.relational > 0,
                               output_attentions=losses.attention > 0)
            mask = inputs["attention_mask"]
            parts: dict[str, torch.Tensor] = {}
            if losses.kl > 0:
                kl_mask = mask if task == "text-generation" else None
                parts["kl"] = kl_loss(out.logits, teacher["logits"], losses.temperature, kl_mask)
            if losses.ce > 0:
                logits = out.logits.float()
                if task == "text-generation":  # next-token prediction on the text itself
                    target = inputs["input_ids"][:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                    parts["ce"] = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                  ignore_index=-100)
                else:
                    assert labels is not None
                    parts["ce"] = F.cross_entropy(logits, labels)
            if losses.hidden_mse > 0:
                hs = out.hidden_states
                terms = [hidden_mse_loss(self._proj(f"h{s}", hs[s + 1]), teacher["hidden_states"][t + 1], mask)
                         for s, t in layer_map.items()]
                parts["hidden_mse"] = torch.stack(terms).mean()
            if losses.attention > 0:
                terms = [attention_loss(out.attentions[s], teacher["attentions"][t], mask)
                         for s, t in layer_map.items()]
                parts["attention"] = torch.stack(terms).mean()
            if losses.cosine > 0:
                parts["cosine"] = cosine_loss(self._proj("pool", last_hidden(out)), teacher["last"], mask)
            if losses.relational > 0:
                parts["relational"] = relational_loss(self._proj("pool", last_hidden(out)), teacher["last"], mask,
                                                      losses.relational_temperature)
            total = sum(getattr(losses, k) * v for k, v in parts.items())
            return total, {k: v.detach() for k, v in parts.items()}

    return DistillModule()
