"""Every node of the pack refuses an input of the wrong Python type at its entry, naming the node, the
input and what it received, instead of failing deep inside ComfyUI or torch ("'str' object has no
attribute 'tokenize'") or silently using it (a uint8 IMAGE).

Each node's ``execute`` is called with good objects of every socket type (the tiny models, the tiny
mapper files) and one input replaced; the inputs come from the node's own V3 schema, so a new node or
input is covered without editing this file.
"""

from __future__ import annotations

import pytest
import torch

import nodes as comfy_nodes

from comfyui_elite.elite_core.catversion.prefix import CatVersionPrefix
from comfyui_elite.elite_core.comfyui.socket_checks import check_node_inputs
from comfyui_elite.elite_core.common.checks import InputError, check_image, check_mask
from comfyui_elite.elite_core.elite.concept import ELITEConcept
from comfyui_elite.nodes import ELITE_NODES
from comfyui_elite.nodes.nodes_attn_patch import ELITELocalAttnPatch
from comfyui_elite.nodes.nodes_conditioning import ELITEConditioning
from comfyui_elite.nodes.nodes_encoder import ELITEEncoder
from comfyui_elite.nodes.nodes_prepare import ELITEPrepareConcept
from elite_test_pack import tiny_models
from elite_test_pack.in_process import submit
from elite_test_pack.workflows import add_node, node_id, tiny_prompt

WIDGETS = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}
WRONG = [("str", "hello"), ("int", 7), ("dict", {"a": 1})]
# What the user reads each socket wants (a new socket type needs its line here).
EXPECTED = {
    "MODEL": "a MODEL", "CLIP": "a CLIP", "VAE": "a VAE", "CLIP_VISION": "a CLIP_VISION",
    "CONDITIONING": "a CONDITIONING", "IMAGE": "an IMAGE", "MASK": "a MASK", "LATENT": "a LATENT",
    "ELITE_GLOBAL_MAPPER": "an ELITE global mapper", "ELITE_LOCAL_MAPPER": "an ELITE local mapper",
    "ELITE_CONCEPT": "an ELITE concept", "CATVERSION_ADAPTER": "a CatVersion adapter",
}


def type_name(item) -> str:
    return str(item.get_io_type())


def schema_inputs(node) -> list:
    return list(node.define_schema().inputs)


def display_name(node) -> str:
    return node.define_schema().display_name


def socket_inputs(required_only: bool) -> list[tuple[type, str, str]]:
    """(node, input id, socket type) of every socket (non-widget) input of every pack node."""
    found = []
    for node in ELITE_NODES:
        for item in schema_inputs(node):
            if type_name(item) not in WIDGETS and not (required_only and item.optional):
                found.append((node, item.id, type_name(item)))
    return found


REQUIRED_SOCKETS = socket_inputs(required_only=True)
OPTIONAL_SOCKETS = [entry for entry in socket_inputs(required_only=False) if entry not in REQUIRED_SOCKETS]


def test_the_pack_has_socket_inputs_to_check():
    # guards the parametrisations below against an empty node list
    assert len(REQUIRED_SOCKETS) >= 15 and len(OPTIONAL_SOCKETS) >= 8


@pytest.fixture(scope="module")
def good(tiny_model, tiny_clip, tiny_clip_vision, global_mapper, local_mapper) -> dict:
    """A usable object of every socket type the pack's nodes take."""
    return {
        "MODEL": tiny_model,
        "CLIP": tiny_clip,
        "VAE": tiny_models.build_tiny_vae(),
        "CLIP_VISION": tiny_clip_vision,
        "CONDITIONING": [[torch.zeros(1, 77, 768), {"pooled_output": None}]],
        "IMAGE": torch.rand(1, 8, 8, 3),
        "MASK": torch.ones(1, 8, 8),
        "LATENT": {"samples": torch.zeros(1, 4, 8, 8)},
        "ELITE_GLOBAL_MAPPER": global_mapper,
        "ELITE_LOCAL_MAPPER": local_mapper,
        "ELITE_CONCEPT": ELITEConcept(words=torch.zeros(1, 5, global_mapper.widths.output_dim),
                                      global_kv=global_mapper.kv),
        "CATVERSION_ADAPTER": CatVersionPrefix(layers=(9, 10, 11), keys=torch.zeros(3, 2, 768),
                                               values=torch.zeros(3, 2, 768)),
    }


def widget_value(item):
    if type_name(item) == "COMBO":
        return item.default if item.default is not None else (item.options[0] if item.options else "")
    if item.default is not None:
        return item.default
    return {"STRING": "", "INT": 0, "FLOAT": 0.0, "BOOLEAN": False}[type_name(item)]


def good_inputs(node, good: dict) -> dict:
    return {item.id: widget_value(item) if type_name(item) in WIDGETS else good[type_name(item)]
            for item in schema_inputs(node)}


def refusal(node, good: dict, **changed) -> str:
    """The node's message for its good inputs with ``changed`` ones; fails unless it is the pack's
    InputError (not an AttributeError or TypeError from inside)."""
    with pytest.raises(InputError) as caught:
        node.execute(**{**good_inputs(node, good), **changed})
    return str(caught.value)


@pytest.mark.parametrize("node", ELITE_NODES, ids=lambda node: node.__name__)
def test_good_objects_of_every_socket_type_pass(node, good):
    check_node_inputs(node, good_inputs(node, good))  # raises on a refusal


@pytest.mark.parametrize("node", ELITE_NODES, ids=lambda node: node.__name__)
def test_optional_inputs_may_be_left_empty(node, good):
    values = good_inputs(node, good)
    values.update({item.id: None for item in schema_inputs(node) if item.optional})
    check_node_inputs(node, values)


@pytest.mark.parametrize("wrong_type, wrong", WRONG, ids=[name for name, _ in WRONG])
@pytest.mark.parametrize("node, name, socket", REQUIRED_SOCKETS,
                         ids=[f"{node.__name__}-{name}" for node, name, _ in REQUIRED_SOCKETS])
def test_wrong_python_type_in_a_socket_is_named(node, name, socket, wrong_type, wrong, good):
    shown = refusal(node, good, **{name: wrong})
    assert shown.startswith(f"{display_name(node)}: input '{name}' should be {EXPECTED[socket]} (from "), shown
    assert f"but it received a {wrong_type} (" in shown or f"but it received an {wrong_type} (" in shown, shown
    assert shown.endswith("Check what is wired into it."), shown


@pytest.mark.parametrize("node, name, socket", OPTIONAL_SOCKETS,
                         ids=[f"{node.__name__}-{name}" for node, name, _ in OPTIONAL_SOCKETS])
def test_wrong_python_type_in_an_optional_socket_is_named(node, name, socket, good):
    shown = refusal(node, good, **{name: "hello"})
    assert shown.startswith(f"{display_name(node)}: input '{name}' should be {EXPECTED[socket]} (from "), shown
    assert "but it received a str ('hello')." in shown, shown


@pytest.mark.parametrize("node, name, socket", REQUIRED_SOCKETS[:3] + REQUIRED_SOCKETS[-3:],
                         ids=[f"{node.__name__}-{name}" for node, name, _ in REQUIRED_SOCKETS[:3] + REQUIRED_SOCKETS[-3:]])
def test_nothing_in_a_required_socket_is_named(node, name, socket, good):
    shown = refusal(node, good, **{name: None})
    assert f"input '{name}' should be {EXPECTED[socket]}" in shown and "but it received nothing (None)." in shown


def test_the_message_reads_as_the_issue_asks(good):
    assert refusal(ELITEConditioning, good, clip="hello") == (
        "ELITE Conditioning: input 'clip' should be a CLIP (from Load Checkpoint or Load CLIP), but it received a "
        "str ('hello'). Check what is wired into it.")


def test_uint8_image_is_refused(good):
    pixels = (torch.rand(1, 8, 8, 3) * 255).to(torch.uint8)
    shown = refusal(ELITEEncoder, good, image=pixels)
    assert "ELITE Encoder: input 'image' should be an IMAGE" in shown
    assert "a uint8 tensor of shape (1, 8, 8, 3): IMAGE values must be floats in 0..1" in shown


def test_image_without_its_batch_dimension_is_refused(good):
    shown = refusal(ELITEPrepareConcept, good, image=torch.rand(8, 8, 3))
    assert "ELITE Prepare Concept: input 'image' should be an IMAGE" in shown
    assert "a float32 tensor of shape (8, 8, 3): an IMAGE is a batch (batch, height, width, channels)" in shown


def test_image_with_channels_first_is_refused(good):
    shown = refusal(ELITEEncoder, good, image=torch.rand(1, 3, 8, 8))
    assert "(1, 3, 8, 8)" in shown and "with 3 or 4 channels" in shown


@pytest.mark.parametrize("mask", [torch.ones(1, 1, 8, 8), torch.ones(8)], ids=["4d", "1d"])
def test_mask_of_the_wrong_rank_is_refused(good, mask):
    shown = refusal(ELITEPrepareConcept, good, mask=mask)
    assert f"ELITE Prepare Concept: input 'mask' should be a MASK (from Load Image or ELITE Prepare Concept), but it " \
           f"received a float32 tensor of shape {tuple(mask.shape)}: a MASK is (height, width) or (batch, height, " \
           "width)" in shown


def test_two_dimensional_mask_is_accepted(good):
    check_node_inputs(ELITEPrepareConcept, {**good_inputs(ELITEPrepareConcept, good), "mask": torch.ones(8, 8)})


def test_boolean_mask_is_refused(good):
    shown = refusal(ELITEEncoder, good, mask=torch.ones(1, 8, 8, dtype=torch.bool))
    assert "a bool tensor of shape (1, 8, 8): MASK values must be floats in 0..1" in shown


BAD_LAYOUTS = [
    ("IMAGE", (torch.rand(1, 8, 8, 3) * 255).to(torch.uint8)), ("IMAGE", torch.rand(8, 8, 3)),
    ("IMAGE", torch.rand(1, 3, 8, 8)), ("MASK", torch.ones(1, 1, 8, 8)), ("MASK", torch.ones(1, 8, 8, dtype=torch.bool)),
]


@pytest.mark.parametrize("socket, value", BAD_LAYOUTS, ids=["uint8", "no-batch", "channels-first", "4d-mask", "bool-mask"])
def test_the_value_checks_refuse_a_bad_layout_with_the_entry_checks_reason(good, socket, value):
    """One IMAGE / MASK rule: what the entry check refuses, the value checks the command lines and the
    nodes' later steps run (common.checks) refuse too, with the same reason."""
    node, name = (ELITEEncoder, "image") if socket == "IMAGE" else (ELITEPrepareConcept, "mask")
    entry = refusal(node, good, **{name: value})
    check = check_image if socket == "IMAGE" else check_mask
    with pytest.raises(InputError) as refused:
        check(value)
    reason = entry.split(": ", 2)[-1].split(". Check what")[0]  # after "...received a <dtype> tensor of shape (...)"
    assert reason in str(refused.value), (reason, str(refused.value))


def test_malformed_conditioning_names_the_bad_item(good):
    shown = refusal(ELITELocalAttnPatch, good, positive=[[torch.zeros(1, 77, 768), {}], ["hello", {}]])
    assert "input 'positive' should be a CONDITIONING" in shown
    assert "CONDITIONING is a list of [tensor, dict] pairs, and its item 1 is a list of 2 items, the first a str" in shown


def test_latent_without_samples_is_refused(good):
    from comfyui_elite.nodes.nodes_attention_map import ELITEAttentionMap

    shown = refusal(ELITEAttentionMap, good, samples={"noise_mask": torch.ones(8, 8)})
    assert "input 'samples' should be a LATENT" in shown and "a LATENT is a dict whose 'samples' is a tensor" in shown


def test_the_other_mapper_kind_is_named(good):
    shown = refusal(ELITEEncoder, good, global_mapper=good["ELITE_LOCAL_MAPPER"])
    assert ("input 'global_mapper' should be an ELITE global mapper (from ELITE Global Mapper Loader), but it "
            "received an ELITE local mapper (") in shown
    shown = refusal(ELITEEncoder, good, local_mapper=good["ELITE_GLOBAL_MAPPER"])
    assert "input 'local_mapper' should be an ELITE local mapper" in shown and "received an ELITE global mapper" in shown


def test_comfyui_object_in_the_wrong_socket_is_named(good):
    shown = refusal(ELITEConditioning, good, clip=good["MODEL"])
    assert "input 'clip' should be a CLIP" in shown and "but it received a MODEL." in shown


def test_linked_widget_value_of_the_wrong_type_is_named(good):
    shown = refusal(ELITEConditioning, good, text=torch.zeros(3))
    assert "ELITE Conditioning: input 'text' should be a text (STRING), but it received a float32 tensor" in shown
    shown = refusal(ELITELocalAttnPatch, good, strength="0.8")
    assert "input 'strength' should be a number (FLOAT), but it received a str ('0.8')" in shown
    shown = refusal(ELITELocalAttnPatch, good, global_kv=1)
    assert "input 'global_kv' should be true or false (BOOLEAN), but it received an int (1)" in shown


def test_objects_that_act_like_comfyuis_are_accepted(good):
    """Other packs wrap ComfyUI's objects: what has the methods the pack calls passes."""

    class WrappedClip:
        def tokenize(self, text):
            return text

        def encode_from_tokens(self, tokens):
            return tokens

    check_node_inputs(ELITEConditioning, {**good_inputs(ELITEConditioning, good), "clip": WrappedClip()})


# --------------------------------------------------------------------------- through ComfyUI's executor


def misbehaving_node(output_type: str, value) -> type:
    """A node that declares ``output_type`` but returns ``value``, as a broken custom node would."""

    class Misbehaving:
        RETURN_TYPES = (output_type,)
        FUNCTION = "run"
        CATEGORY = "testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def run(self):
            return (value,)

    return Misbehaving


@pytest.mark.parametrize("node_class, socket, output_type, value, fragments", [
    ("ELITEConditioning", "clip", "CLIP", "hello",
     ["ELITE Conditioning: input 'clip' should be a CLIP (from Load Checkpoint or Load CLIP), but it received a str "
      "('hello')."]),
    ("ELITEEncoder", "image", "IMAGE", torch.zeros(1, 8, 8, 3, dtype=torch.uint8),
     ["ELITE Encoder: input 'image' should be an IMAGE", "a uint8 tensor of shape (1, 8, 8, 3): IMAGE values must be "
      "floats in 0..1"]),
], ids=["str-as-clip", "uint8-image"])
def test_the_message_reaches_the_user_through_comfyui(monkeypatch, node_class, socket, output_type, value, fragments):
    monkeypatch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, "ELITETestMisbehaving", misbehaving_node(output_type, value))
    prompt = tiny_prompt("02_elite_global_local")
    prompt[node_id(prompt, node_class)]["inputs"][socket] = [add_node(prompt, "ELITETestMisbehaving"), 0]
    executor, refusal_ = submit(prompt)
    assert executor is not None, refusal_
    assert not executor.success
    (failure,) = [data for event, data in executor.status_messages if event == "execution_error"]
    assert failure["node_type"] == node_class and failure["exception_type"].endswith("InputError"), failure
    for fragment in fragments:
        assert fragment in failure["exception_message"], failure["exception_message"]
