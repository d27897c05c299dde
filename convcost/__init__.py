"""convcost: parameters, MACs and measured latency of convolutional networks and their cheaper variants.

Conventions used throughout (and stated in every report):
- MAC: one fused multiply-add, as fvcore counts a "flop". FLOPs = 2 x MACs.
- params: trainable parameters (``p.numel()`` summed); buffers such as BN running stats are excluded.
"""

__version__ = "0.1.0"
