"""Write the UI-format example workflows in example_workflows/ (run after changing a node's widgets).

Each workflow is described once below as nodes with their linked inputs and widget values; links
are derived from the inputs. The API-format twins under tests/api_workflows/ are produced from these
files by the tests' converter (elite_test_pack/workflows.py) and checked by the test suite.
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
    "ELITEExampleConcept": [("image", "IMAGE"), ("mask", "MASK")],
    "ELITEPrepareConcept": [("image", "IMAGE"), ("mask", "MASK")],
    "ELITESaveConcept": [("concept_name", "STRING")],
    "ELITELoadConcept": [("concept", "ELITE_CONCEPT")],
    "ELITEAttentionMap": [("attention", "MASK"), ("overlay", "IMAGE")],
    "SolidMask": [("MASK", "MASK")],
    "MaskComposite": [("MASK", "MASK")],
    "InvertMask": [("MASK", "MASK")],
    "LoraLoaderModelOnly": [("MODEL", "MODEL")],
    "Note": [],
}


# Rendered body size of each node type (the title bar sits above ``pos``), so nodes do not overlap.
SIZES = {
    "CheckpointLoaderSimple": [360, 100], "CLIPVisionLoader": [360, 60], "ELITEGlobalMapperLoader": [360, 60],
    "ELITELocalMapperLoader": [360, 60], "LoadImage": [360, 340], "ELITEEncoder": [360, 140],
    "ELITEConditioning": [400, 200], "CLIPTextEncode": [400, 150], "ELITELocalAttnPatch": [360, 180],
    "EmptyLatentImage": [320, 110], "KSampler": [320, 270], "VAEDecode": [200, 50], "SaveImage": [400, 420],
    "CatVersionLoader": [360, 60], "CatVersionApply": [360, 100], "CatVersionTrain": [400, 420],
    "ImageBatch": [240, 50], "ELITEExampleConcept": [300, 80], "ELITEPrepareConcept": [360, 380],
    "ELITESaveConcept": [360, 120], "ELITELoadConcept": [360, 100], "ELITEAttentionMap": [400, 420],
    "SolidMask": [260, 110], "MaskComposite": [260, 150], "InvertMask": [200, 30], "LoraLoaderModelOnly": [360, 90],
    "Note": [420, 220],
}

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # the core templates' SD1.5 file name
LCM_LORA = "lcm-lora-sdv1-5.safetensors"  # the LoRA template's example: SD1.5's LCM LoRA
# What the frontend offers to download when a file is missing (properties.models of the loader nodes).
MODELS = {
    CHECKPOINT: ("https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                 "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints"),
    "clip-vit-large-patch14.safetensors": ("https://huggingface.co/openai/clip-vit-large-patch14/resolve/main/"
                                           "model.safetensors", "clip_vision"),
    "global_mapper.pt": ("https://huggingface.co/ELITE-library/ELITE/resolve/main/checkpoints/global_mapper.pt", "elite"),
    "local_mapper.pt": ("https://huggingface.co/ELITE-library/ELITE/resolve/main/checkpoints/local_mapper.pt", "elite"),
    LCM_LORA: ("https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors",
               "loras"),
}
PACK_ID = "elite-personalize"  # the Comfy Registry id (pyproject.toml [project] name)
CORE_VERSION = "0.3.75"


def pack_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    raise ValueError("pyproject.toml has no version")


def properties(node: dict) -> dict:
    """Registry ids (the Manager installs a missing pack from them) and, on loaders, the model files."""
    if node["type"] == "Note":
        return {}
    props = {"Node name for S&R": node["type"]}
    if node["type"].startswith(("ELITE", "CatVersion")):
        props.update(cnr_id=PACK_ID, ver=pack_version())
    else:
        props.update(cnr_id="comfy-core", ver=CORE_VERSION)
    models = [{"name": w, "url": MODELS[w][0], "directory": MODELS[w][1]}
              for w in node.get("widgets", []) if isinstance(w, str) and w in MODELS]
    if models:
        props["models"] = models
    return props


def note(node_id: int, pos: list[int], text: str) -> dict:
    return dict(id=node_id, type="Note", pos=pos, widgets=[text])


def common_nodes(strength: float) -> list[dict]:
    """The graph shared by both examples; the local one adds its loader and mask below."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=[CHECKPOINT]),
        dict(id=2, type="CLIPVisionLoader", pos=[40, 220], title="Load CLIP Vision (ViT-L/14)",
             widgets=["clip-vit-large-patch14.safetensors"]),
        dict(id=3, type="ELITEGlobalMapperLoader", pos=[40, 340], widgets=["global_mapper.pt"]),
        dict(id=4, type="ELITEExampleConcept", pos=[40, 580], title="Concept (swap for Load Image + ELITE Prepare Concept)",
             widgets=["cat"]),
        dict(id=5, type="ELITEEncoder", pos=[460, 340],
             inputs=[("clip_vision", 2, 0), ("global_mapper", 3, 0), ("image", 4, 0)], widgets=[False]),
        dict(id=6, type="ELITEConditioning", pos=[880, 60], inputs=[("clip", 1, 1), ("concept", 5, 0)],
             widgets=["a photo of S on the beach", "S", "primary word", "T"]),
        dict(id=7, type="CLIPTextEncode", pos=[880, 320], title="Negative prompt (empty, as in the reference)",
             inputs=[("clip", 1, 1)], widgets=[""]),
        dict(id=8, type="ELITELocalAttnPatch", pos=[1340, 60],
             inputs=[("model", 1, 0), ("concept", 5, 0), ("positive", 6, 0)],
             widgets=[strength, 0.0, 1.0, True, False]),
        dict(id=9, type="EmptyLatentImage", pos=[880, 530], widgets=[512, 512, 1]),
        dict(id=10, type="KSampler", pos=[1760, 60],
             inputs=[("model", 8, 0), ("positive", 6, 0), ("negative", 7, 0), ("latent_image", 9, 0)],
             widgets=[42, "fixed", 50, 5.0, "lms", "normal", 1.0]),
        dict(id=11, type="VAEDecode", pos=[2140, 60], inputs=[("samples", 10, 0), ("vae", 1, 2)]),
        dict(id=12, type="SaveImage", pos=[2400, 60], inputs=[("images", 11, 0)], widgets=["ELITE"]),
    ]


# Each template's Note starts with what to change first.
FIRST_STEPS = ("Change first: the prompt in ELITE Conditioning (S stands for your object: \"a photo of S on the "
               "beach\"), then the seed. Your own object: swap ELITE Example Concept for Load Image + ELITE "
               "Prepare Concept (template 03 shows how). ELITE Conditioning feeds both the KSampler and ELITE "
               "Attention Patch's positive input: keep both links. Models: SD1.5 in models/checkpoints, CLIP "
               "ViT-L/14 in models/clip_vision, ELITE's mappers in models/elite (the frontend offers the downloads).")


def global_workflow() -> list[dict]:
    nodes = common_nodes(strength=0.8)
    return nodes + [note(30, [40, 760], "Start here: the simplest ELITE graph (the global mapper only). " + FIRST_STEPS)]


def local_workflow() -> list[dict]:
    nodes = common_nodes(strength=0.6)
    nodes.append(dict(id=13, type="ELITELocalMapperLoader", pos=[40, 460], widgets=["local_mapper.pt"]))
    encoder = nodes[4]
    encoder["inputs"] = encoder["inputs"] + [("local_mapper", 13, 0), ("mask", 4, 1)]
    return nodes + [note(30, [40, 760], FIRST_STEPS + " Then strength (λ) on ELITE Attention Patch: how much of "
                         "the object's detail the local mapper adds, 0.6 to 0.8; higher looks more like your object, "
                         "lower follows the prompt more.")]


def prepare_workflow() -> list[dict]:
    """From a photo: crop around the object (preview of the CLIP input and kept patches), encode, and
    show where the concept went."""
    nodes = [n for n in local_workflow() if n["type"] != "Note"]
    nodes[3].update(widgets=["dog"], title="Concept photo (swap for Load Image: IMAGE and MASK)")
    nodes.append(dict(id=14, type="ELITEPrepareConcept", pos=[40, 740], inputs=[("image", 4, 0), ("mask", 4, 1)],
                      widgets=[0.1, "pad", "auto"]))
    encoder = nodes[4]
    encoder["inputs"] = [("clip_vision", 2, 0), ("global_mapper", 3, 0), ("image", 14, 0), ("local_mapper", 13, 0),
                         ("mask", 14, 1)]
    nodes[7]["widgets"] = [0.6, 0.0, 1.0, True, True]  # attention_map on
    nodes.append(dict(id=15, type="ELITEAttentionMap", pos=[2400, 560],
                      inputs=[("model", 8, 0), ("samples", 10, 0), ("images", 11, 0)]))
    return nodes + [note(30, [460, 740], "Change first: the photo. Swap ELITE Example Concept for Load Image with "
                         "your photo (a cut-out PNG's MASK works as it is, mask_polarity auto), then the prompt (S) and "
                         "the seed. ELITE Prepare Concept crops the photo around its object so it fills ELITE's "
                         "224x224 CLIP input; its preview shows that input and the 16x16 patches the local branch "
                         "keeps. After a run, ELITE Attention Map shows where the concept went.")]


def saved_concept_workflow() -> list[dict]:
    """Encode once and save the concept; the muted group below loads it without encoding."""
    nodes = [n for n in local_workflow() if n["type"] != "Note"]
    nodes.append(dict(id=14, type="ELITESaveConcept", pos=[460, 560], inputs=[("concept", 5, 0), ("image", 4, 0)],
                      widgets=["elite_concept", True]))
    muted = dict(mode=2)
    nodes += [
        dict(id=15, type="ELITELoadConcept", pos=[460, 1000], inputs=[("global_mapper", 3, 0), ("local_mapper", 13, 0)],
             widgets=["elite_concept_00001.safetensors"], **muted),
        dict(id=16, type="ELITEConditioning", pos=[880, 1000], inputs=[("clip", 1, 1), ("concept", 15, 0)],
             widgets=["a photo of S in a garden", "S", "primary word", "T"], **muted),
        dict(id=17, type="ELITELocalAttnPatch", pos=[1340, 1000],
             inputs=[("model", 1, 0), ("concept", 15, 0), ("positive", 16, 0)],
             widgets=[0.6, 0.0, 1.0, True, False], **muted),
        dict(id=18, type="KSampler", pos=[1760, 1000],
             inputs=[("model", 17, 0), ("positive", 16, 0), ("negative", 7, 0), ("latent_image", 9, 0)],
             widgets=[7, "fixed", 50, 5.0, "lms", "normal", 1.0], **muted),
        dict(id=19, type="VAEDecode", pos=[2140, 1000], inputs=[("samples", 18, 0), ("vae", 1, 2)], **muted),
        dict(id=20, type="SaveImage", pos=[2400, 1000], inputs=[("images", 19, 0)], widgets=["ELITE_reused"], **muted),
    ]
    return nodes + [note(30, [40, 1000], "Change first: the name in ELITE Save Concept (the file it writes), "
                         "then the concept and prompt as in template 02. Run once: it writes models/elite_concepts/"
                         "elite_concept_00001.safetensors (and embedding:elite_concept_00001 for CLIP Text Encode). "
                         "Then unmute the lower row (select it, Ctrl+M) and pick the file in ELITE Load Concept: it "
                         "reuses the concept without encoding, with the same mapper files.")]


def two_concepts_workflow() -> list[dict]:
    """A cat at S on the left and a dog at T on the right: one conditioning, one patch per concept,
    each with its region."""
    nodes = [n for n in local_workflow() if n["type"] != "Note"]
    nodes[5]["inputs"] = [("clip", 1, 1), ("concept", 5, 0), ("concept_2", 15, 0)]
    nodes[5]["widgets"] = ["a photo of S and T sitting on the beach", "S", "primary word", "T"]
    nodes[7].update(inputs=nodes[7]["inputs"] + [("region", 18, 0)], title="ELITE Attention Patch (S: left)")
    nodes[9]["inputs"] = [("model", 20, 0), ("positive", 6, 0), ("negative", 7, 0), ("latent_image", 9, 0)]
    nodes[8]["widgets"] = [768, 512, 1]
    nodes += [
        dict(id=14, type="ELITEExampleConcept", pos=[40, 740], title="Second concept", widgets=["dog"]),
        dict(id=15, type="ELITEEncoder", pos=[460, 560],
             inputs=[("clip_vision", 2, 0), ("global_mapper", 3, 0), ("image", 14, 0), ("local_mapper", 13, 0),
                     ("mask", 14, 1)], widgets=[False]),
        dict(id=16, type="SolidMask", pos=[880, 740], widgets=[0.0, 768, 512]),
        dict(id=17, type="SolidMask", pos=[880, 900], widgets=[1.0, 384, 512]),
        dict(id=18, type="MaskComposite", pos=[1160, 740], title="Left half",
             inputs=[("destination", 16, 0), ("source", 17, 0)], widgets=[0, 0, "add"]),
        dict(id=19, type="InvertMask", pos=[1160, 940], title="Right half", inputs=[("mask", 18, 0)]),
        dict(id=20, type="ELITELocalAttnPatch", pos=[1340, 400], title="ELITE Attention Patch (T: right)",
             inputs=[("model", 8, 0), ("concept", 15, 0), ("positive", 6, 0), ("region", 19, 0)],
             widgets=[0.6, 0.0, 1.0, True, False]),
    ]
    return nodes + [note(30, [40, 960], "Change first: the two concepts (the cat goes to S, the dog to T) and the "
                         "prompt, which must name both S and T. ELITE Conditioning puts each concept's word in the "
                         "prompt; each ELITE Attention Patch adds its concept's detail where its own word is attended, "
                         "within its region (left and right halves here: change the masks to move them).")]


def lora_workflow() -> list[dict]:
    """ELITE with a LoRA on top, the LoRA after the ELITE patch. The example LoRA is SD1.5's LCM LoRA
    (a file the frontend can offer to download), sampled as its authors advise: the lcm sampler,
    8 steps, low CFG."""
    nodes = [n for n in local_workflow() if n["type"] != "Note"]
    nodes.append(dict(id=14, type="LoraLoaderModelOnly", pos=[1340, 320], title="LoRA (here: LCM, 8 steps)",
                      inputs=[("model", 8, 0)], widgets=[LCM_LORA, 1.0]))
    nodes[9]["inputs"] = [("model", 14, 0), ("positive", 6, 0), ("negative", 7, 0), ("latent_image", 9, 0)]
    nodes[9]["widgets"] = [42, "fixed", 8, 1.5, "lcm", "sgm_uniform", 1.0]
    return nodes + [note(30, [40, 760], "Change first: the LoRA. Any SD1.5 LoRA goes in models/loras and in the "
                         "LoRA loader, after ELITE Attention Patch (ELITE sets the cross-attention K/V weights; the "
                         "LoRA's changes are added on top). This one is the LCM LoRA: 8 steps with the lcm sampler and "
                         "CFG 1.5. With another LoRA, set the KSampler back to 50 steps, CFG 5, lms. Then the concept "
                         "and the prompt as in template 02.")]


def catversion_workflow() -> list[dict]:
    """The authors' teddybear adapter: prefixed CLIP for the prompt, the plain CLIP for the negative
    (the authors' unconditional embedding), DDIM 50 steps with uniform timesteps, CFG 10."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=[CHECKPOINT]),
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
        note(30, [40, 340], "Change first: the adapter in CatVersion Adapter Loader (a file in models/catversion: the "
             "authors' teddybear pytorch_adapter.bin saved as teddybear.bin, or one you trained with template 08), then "
             "the prompt: the adapter's class word where the object goes (\"teddybear on the beach\", no "
             "placeholder). The negative prompt stays on the original CLIP. The authors' settings: DDIM, 50 steps, "
             "CFG 10."),
    ]


def catversion_train_workflow() -> list[dict]:
    """Learn a concept with the paper's recipe, then use it like the official adapters: prefixed
    CLIP for the prompt, plain CLIP for the negative, DDIM 50, CFG 10. As shipped it learns the
    pack's example cat photo, so it runs without placing files; its Note says what to swap in."""
    return [
        dict(id=1, type="CheckpointLoaderSimple", pos=[40, 60], widgets=[CHECKPOINT]),
        dict(id=2, type="ELITEExampleConcept", pos=[40, 220],
             title="Photos of the concept (swap for 3-10 Load Image + Batch Images)", widgets=["cat"]),
        dict(id=3, type="CatVersionTrain", pos=[460, 60], title="CatVersion Train Concept (paper recipe; use a GPU)",
             inputs=[("images", 2, 0), ("model", 1, 0), ("clip", 1, 1), ("vae", 1, 2)],
             widgets=["cat", "my_cat", 1000, 0.01, 2, 512, True, 23, False]),
        dict(id=4, type="CatVersionApply", pos=[920, 60], inputs=[("clip", 1, 1), ("catversion", 3, 0)], widgets=[1.0]),
        dict(id=5, type="CLIPTextEncode", pos=[1340, 60], title="Prompt (the class word you trained with)",
             inputs=[("clip", 4, 0)], widgets=["cat on the beach"]),
        dict(id=6, type="CLIPTextEncode", pos=[1340, 280], title="Negative prompt (original CLIP, no prefix)",
             inputs=[("clip", 1, 1)], widgets=[""]),
        dict(id=7, type="EmptyLatentImage", pos=[1340, 500], widgets=[512, 512, 1]),
        dict(id=8, type="KSampler", pos=[1800, 60],
             inputs=[("model", 1, 0), ("positive", 5, 0), ("negative", 6, 0), ("latent_image", 7, 0)],
             widgets=[23, "fixed", 50, 10.0, "ddim", "ddim_uniform", 1.0]),
        dict(id=9, type="VAEDecode", pos=[2180, 60], inputs=[("samples", 8, 0), ("vae", 1, 2)]),
        dict(id=10, type="SaveImage", pos=[2440, 60], inputs=[("images", 9, 0)], widgets=["CatVersion"]),
    ]


TRAIN_NOTE = ("Slow: this template trains before it draws (1000 steps: minutes on a GPU, hours on a CPU), once: "
              "the next Run with the same photos, settings and checkpoint loads the adapter it saved in "
              "models/catversion (retrain, among the advanced inputs, trains anew). Change first: the photos. As "
              "shipped it learns the pack's one cat photo; swap ELITE Example Concept for 3 to 10 photos of your "
              "object (Load Image nodes joined with Batch Images). Then class_word on CatVersion Train Concept (what "
              "the object is: teddybear, mug, dog) and filename_prefix (the adapter's file name). Prompt with the same "
              "class word. Template 07's CatVersion Adapter Loader also loads the saved file.")


def with_note_below(nodes: list[dict], text: str) -> list[dict]:
    """``nodes`` and a Note under the lowest of them, at the left edge."""
    bottom = max(node["pos"][1] + SIZES[node["type"]][1] for node in nodes)
    return nodes + [note(max(node["id"] for node in nodes) + 1, [40, bottom + 80], text)]


def catversion_train_template() -> list[dict]:
    return with_note_below(catversion_train_workflow(), TRAIN_NOTE)


# The templates in the order the template browser should show them, simplest first. The browser shows
# each file's name as its card's title and sorts by nothing the pack can set (see docs/development.md,
# "Templates"): the number in front orders the cards in its Alphabetical sort and in a name-sorted listing.
TEMPLATES = (
    ("01_elite_global", global_workflow),
    ("02_elite_global_local", local_workflow),
    ("03_elite_prepare_from_photo", prepare_workflow),
    ("04_elite_saved_concept", saved_concept_workflow),
    ("05_elite_with_lora", lora_workflow),
    ("06_elite_two_concepts", two_concepts_workflow),
    ("07_catversion_teddybear", catversion_workflow),
    ("08_catversion_train_then_apply", catversion_train_template),
)


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
            "properties": properties(node),
            "widgets_values": node.get("widgets", []),
        }
        if "title" in node:
            ui["title"] = node["title"]
        if "mode" in node:
            ui["mode"] = node["mode"]
        ui_nodes.append(ui)
    return {
        "last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": ui_nodes,
        "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}},
        "version": 0.4,
    }


def main() -> None:
    for name, build in TEMPLATES:
        path = REPO / "example_workflows" / f"{name}.json"
        path.write_text(json.dumps(to_ui(build()), indent=1) + "\n")


if __name__ == "__main__":
    main()
