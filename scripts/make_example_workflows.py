"""Write the UI-format example workflows in example_workflows/ (run after changing a node's widgets).

Each workflow is described once below as nodes with their linked inputs and widget values; links
are derived from the inputs. The API-format twins under tests/api_workflows/ are produced from these
files by the tests' converter (tests/comfy_test_pack/workflows.py) and checked by the test suite.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Output sockets of every node type used: name -> type, in slot order.
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "CLIPVisionLoader": [("CLIP_VISION", "CLIP_VISION")],
    "ELITEGlobalMapperLoader": [("global_mapper", "ELITE_GLOBAL_MAPPER")],
    "ELITELocalMapperLoader": [("local_mapper", "ELITE_LOCAL_MAPPER")],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "ELITEEncoder": [("concept", "ELITE_CONCEPT")],
    "ELITEConditioning": [("CONDITIONING", "CONDITIONING")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "ELITELocalAttnPatch": [("MODEL", "MODEL")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "CatVersionLoader": [("catversion", "CATVERSION_ADAPTER")],
    "CatVersionApply": [("CLIP", "CLIP")],
    "CatVersionTrain": [("catversion", "CATVERSION_ADAPTER")],
    "ImageBatch": [("IMAGE", "IMAGE")],
}


# Rendered body size of each node type (the title bar sits above ``pos``), so nodes do not overlap.
SIZES = {
    "CheckpointLoaderSimple": [360, 100], "CLIPVisionLoader": [360, 60], "ELITEGlobalMapperLoader": [360, 60],
    "ELITELocalMapperLoader": [360, 60], "LoadImage": [360, 340], "ELITEEncoder": [360, 140],
    "ELITEConditioning": [400, 200], "CLIPTextEncode": [400, 150], "ELITELocalAttnPatch": [360, 180],
    "EmptyLatentImage": [320, 110], "KSampler": [320, 270], "VAEDecode": [200, 50], "SaveImage": [400, 420],
    "CatVersionLoader": [360, 60], "CatVersionApply": [360, 100], "CatVersionTrain": [400, 420],
    "ImageBatch": [240, 50],
}


def common_nodes(strength: float) -> list[dict]:
    """The graph shared by both examples; the local one adds its loader and mask below."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=["v1-5-pruned-emaonly.safetensors"]),
        dict(id=2, type="CLIPVisionLoader", pos=[40, 220], title="Load CLIP Vision (ViT-L/14)",
             widgets=["clip-vit-large-patch14.safetensors"]),
        dict(id=3, type="ELITEGlobalMapperLoader", pos=[40, 340], widgets=["global_mapper.pt"]),
        dict(id=4, type="LoadImage", pos=[40, 580], title="Concept image (object centred, transparent background)",
             widgets=["elite_concept.png", "image"]),
        dict(id=5, type="ELITEEncoder", pos=[460, 340],
             inputs=[("clip_vision", 2, 0), ("global_mapper", 3, 0), ("image", 4, 0)], widgets=[True]),
        dict(id=6, type="ELITEConditioning", pos=[880, 60], inputs=[("clip", 1, 1), ("concept", 5, 0)],
             widgets=["a photo of S on the beach", "S", "primary word"]),
        dict(id=7, type="CLIPTextEncode", pos=[880, 320], title="Negative prompt (empty, as in the reference)",
             inputs=[("clip", 1, 1)], widgets=[""]),
        dict(id=8, type="ELITELocalAttnPatch", pos=[1340, 60],
             inputs=[("model", 1, 0), ("concept", 5, 0), ("positive", 6, 0)], widgets=[strength, 0.0, 1.0, True]),
        dict(id=9, type="EmptyLatentImage", pos=[880, 530], widgets=[512, 512, 1]),
        dict(id=10, type="KSampler", pos=[1760, 60],
             inputs=[("model", 8, 0), ("positive", 6, 0), ("negative", 7, 0), ("latent_image", 9, 0)],
             widgets=[42, "fixed", 50, 5.0, "lms", "normal", 1.0]),
        dict(id=11, type="VAEDecode", pos=[2140, 60], inputs=[("samples", 10, 0), ("vae", 1, 2)]),
        dict(id=12, type="SaveImage", pos=[2400, 60], inputs=[("images", 11, 0)], widgets=["ELITE"]),
    ]


def global_workflow() -> list[dict]:
    nodes = common_nodes(strength=0.8)
    nodes[4]["widgets"] = [False]  # no local mapper: the mask is not used
    return nodes


def local_workflow() -> list[dict]:
    nodes = common_nodes(strength=0.6)
    nodes.append(dict(id=13, type="ELITELocalMapperLoader", pos=[40, 460], widgets=["local_mapper.pt"]))
    encoder = nodes[4]
    encoder["inputs"] = encoder["inputs"] + [("local_mapper", 13, 0), ("mask", 4, 1)]
    return nodes


def catversion_workflow() -> list[dict]:
    """The authors' teddybear adapter: prefixed CLIP for the prompt, the plain CLIP for the negative
    (the authors' unconditional embedding), DDIM 50 steps with uniform timesteps, CFG 10."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=["v1-5-pruned-emaonly.safetensors"]),
        dict(id=2, type="CatVersionLoader", pos=[40, 220], title="CatVersion adapter (models/catversion)",
             widgets=["teddybear.bin"]),
        dict(id=3, type="CatVersionApply", pos=[460, 60], inputs=[("clip", 1, 1), ("catversion", 2, 0)], widgets=[1.0]),
        dict(id=4, type="CLIPTextEncode", pos=[880, 60], title="Prompt (the concept's class word)",
             inputs=[("clip", 3, 0)], widgets=["teddybear on the beach"]),
        dict(id=5, type="CLIPTextEncode", pos=[880, 280], title="Negative prompt (original CLIP, no prefix)",
             inputs=[("clip", 1, 1)], widgets=[""]),
        dict(id=6, type="EmptyLatentImage", pos=[880, 500], widgets=[512, 512, 1]),
        dict(id=7, type="KSampler", pos=[1340, 60],
             inputs=[("model", 1, 0), ("positive", 4, 0), ("negative", 5, 0), ("latent_image", 6, 0)],
             widgets=[23, "fixed", 50, 10.0, "ddim", "ddim_uniform", 1.0]),
        dict(id=8, type="VAEDecode", pos=[1720, 60], inputs=[("samples", 7, 0), ("vae", 1, 2)]),
        dict(id=9, type="SaveImage", pos=[1980, 60], inputs=[("images", 8, 0)], widgets=["CatVersion"]),
    ]


def catversion_train_workflow() -> list[dict]:
    """Learn a concept from three photos with the paper's recipe, then use it like the official
    adapters: prefixed CLIP for the prompt, plain CLIP for the negative, DDIM 50, CFG 10."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=["v1-5-pruned-emaonly.safetensors"]),
        dict(id=2, type="LoadImage", pos=[40, 220], title="Photo 1 of the concept", widgets=["concept_photo_1.png", "image"]),
        dict(id=3, type="LoadImage", pos=[40, 600], title="Photo 2 of the concept", widgets=["concept_photo_2.png", "image"]),
        dict(id=4, type="LoadImage", pos=[40, 980], title="Photo 3 of the concept", widgets=["concept_photo_3.png", "image"]),
        dict(id=5, type="ImageBatch", pos=[460, 600], inputs=[("image1", 2, 0), ("image2", 3, 0)]),
        dict(id=6, type="ImageBatch", pos=[460, 720], inputs=[("image1", 5, 0), ("image2", 4, 0)]),
        dict(id=7, type="CatVersionTrain", pos=[760, 220], title="CatVersion Train Concept (paper recipe; use a GPU)",
             inputs=[("images", 6, 0), ("model", 1, 0), ("clip", 1, 1), ("vae", 1, 2)],
             widgets=["teddybear", "my_teddybear", 1000, 0.01, 2, 512, True, 23]),
        dict(id=8, type="CatVersionApply", pos=[1220, 60], inputs=[("clip", 1, 1), ("catversion", 7, 0)], widgets=[1.0]),
        dict(id=9, type="CLIPTextEncode", pos=[1640, 60], title="Prompt (the class word you trained with)",
             inputs=[("clip", 8, 0)], widgets=["teddybear on the beach"]),
        dict(id=10, type="CLIPTextEncode", pos=[1640, 280], title="Negative prompt (original CLIP, no prefix)",
             inputs=[("clip", 1, 1)], widgets=[""]),
        dict(id=11, type="EmptyLatentImage", pos=[1640, 500], widgets=[512, 512, 1]),
        dict(id=12, type="KSampler", pos=[2100, 60],
             inputs=[("model", 1, 0), ("positive", 9, 0), ("negative", 10, 0), ("latent_image", 11, 0)],
             widgets=[23, "fixed", 50, 10.0, "ddim", "ddim_uniform", 1.0]),
        dict(id=13, type="VAEDecode", pos=[2480, 60], inputs=[("samples", 12, 0), ("vae", 1, 2)]),
        dict(id=14, type="SaveImage", pos=[2740, 60], inputs=[("images", 13, 0)], widgets=["CatVersion"]),
    ]


def to_ui(nodes: list[dict]) -> dict:
    types = {node["id"]: node["type"] for node in nodes}

    def socket_type(node_id: int, slot: int) -> str:
        return OUTPUTS[types[node_id]][slot][1]

    links, link_of_input, targets = [], {}, {}
    for node in nodes:
        for slot, (_, from_id, from_slot) in enumerate(node.get("inputs", [])):
            link_id = len(links) + 1
            links.append([link_id, from_id, from_slot, node["id"], slot, socket_type(from_id, from_slot)])
            link_of_input[(node["id"], slot)] = link_id
            targets.setdefault((from_id, from_slot), []).append(link_id)
    ui_nodes = []
    for order, node in enumerate(nodes):
        ui = {
            "id": node["id"], "type": node["type"], "pos": node["pos"], "size": SIZES[node["type"]], "flags": {},
            "order": order, "mode": 0,
            "inputs": [
                {"name": name, "type": socket_type(from_id, from_slot), "link": link_of_input[(node["id"], slot)]}
                for slot, (name, from_id, from_slot) in enumerate(node.get("inputs", []))
            ],
            "outputs": [
                {"name": name, "type": kind, "links": targets.get((node["id"], slot), []), "slot_index": slot}
                for slot, (name, kind) in enumerate(OUTPUTS[node["type"]])
            ],
            "properties": {"Node name for S&R": node["type"]},
            "widgets_values": node.get("widgets", []),
        }
        if "title" in node:
            ui["title"] = node["title"]
        ui_nodes.append(ui)
    return {
        "last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
        "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}},
        "version": 0.4,
    }


def main() -> None:
    for name, nodes in (("elite_global", global_workflow()), ("elite_global_local", local_workflow()),
                        ("catversion_teddybear", catversion_workflow()),
                        ("catversion_train_then_apply", catversion_train_workflow())):
        path = REPO / "example_workflows" / f"{name}.json"
        path.write_text(json.dumps(to_ui(nodes), indent=1) + "\n")


if __name__ == "__main__":
    main()
