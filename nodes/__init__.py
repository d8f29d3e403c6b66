"""ComfyUI node classes of the ELITE pack: thin schemas that call elite_core."""

from .nodes_attn_patch import ELITELocalAttnPatch
from .nodes_conditioning import ELITEConditioning
from .nodes_encoder import ELITEEncoder
from .nodes_mapper_loader import ELITEGlobalMapperLoader

ELITE_NODES = [ELITEGlobalMapperLoader, ELITEEncoder, ELITEConditioning, ELITELocalAttnPatch]
