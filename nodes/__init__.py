"""ComfyUI node classes of the ELITE pack: thin schemas that call elite_core."""

from .nodes_attention_map import ELITEAttentionMap
from .nodes_attn_patch import ELITELocalAttnPatch
from .nodes_catversion import CatVersionApply, CatVersionLoader, CatVersionTrain
from .nodes_concepts import ELITELoadConcept, ELITESaveConcept
from .nodes_conditioning import ELITEConditioning
from .nodes_encoder import ELITEEncoder
from .nodes_example_concept import ELITEExampleConcept
from .nodes_mapper_loader import ELITEGlobalMapperLoader, ELITELocalMapperLoader
from .nodes_prepare import ELITEPrepareConcept
from .nodes_score import ELITEScore, ELITEScoreOldId

ELITE_NODES = [
    ELITEGlobalMapperLoader,
    ELITELocalMapperLoader,
    ELITEExampleConcept,
    ELITEPrepareConcept,
    ELITEEncoder,
    ELITEConditioning,
    ELITELocalAttnPatch,
    ELITEAttentionMap,
    ELITESaveConcept,
    ELITELoadConcept,
    ELITEScore,
    ELITEScoreOldId,
    CatVersionLoader,
    CatVersionApply,
    CatVersionTrain,
]
