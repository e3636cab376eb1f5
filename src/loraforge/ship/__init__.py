"""Ship: the model card, OpenSSF model-signing signatures, the adapter registry, merge and exports.

Ship sits above train and evaluate (it reads what they wrote: the adapter directory and its
manifest) and below pipeline and serve (shared/DESIGN.md).
"""
