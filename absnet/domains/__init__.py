"""Abstract domain elements: small dataclasses of facade values."""

from absnet.domains.box import Box
from absnet.domains.zonotope import GenBlock, Zonotope

__all__ = ["Box", "GenBlock", "Zonotope"]
