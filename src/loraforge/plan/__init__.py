"""Plan a run before spending GPU hours: method advice, parameter counts, memory, time and cost."""

from loraforge.plan.advise import QUESTIONS, Advice, Answers, advise, questions_for
from loraforge.plan.estimate import Plan, plan_run
from loraforge.plan.hardware import GPU_TIERS, TIER_NAMES, Tier, get_tier
from loraforge.plan.recommend import Recommendation
from loraforge.plan.shapes import ModelShape, build_meta_model, model_shape, trainable_by_module

__all__ = [
    "GPU_TIERS",
    "QUESTIONS",
    "TIER_NAMES",
    "Advice",
    "Answers",
    "ModelShape",
    "Plan",
    "Recommendation",
    "Tier",
    "advise",
    "build_meta_model",
    "get_tier",
    "model_shape",
    "plan_run",
    "questions_for",
    "trainable_by_module",
]
