from .cbam import CBAM, ChannelGate, SpatialGate
from .mixstyle import MixStyle

__all__ = ["CBAM", "ChannelGate", "SpatialGate", "MixStyle"]
