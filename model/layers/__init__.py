from .cbam import CBAM, ChannelGate, SpatialGate
from .mixstyle import MixStyle
from .stack_norm import mixed_statistics, stack_norm

__all__ = ["CBAM", "ChannelGate", "SpatialGate", "MixStyle", "mixed_statistics", "stack_norm"]
