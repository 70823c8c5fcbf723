"""The encoder-fusion detection model: encoders, fusion modules, heads, training, evaluation,
export.
"""
