"""Cheap content fingerprints of ComfyUI's MODEL, CLIP and VAE as a computation would use them.

Hashing every weight of a 2 GB checkpoint would take seconds to minutes (and read offloaded weights
back); this reads a few megabytes. What :func:`add_patcher` covers, for one ``ModelPatcher``:

* the class of the patched model, and every key of its state dict with each tensor's dtype, shape
  and 256 evenly spaced values (``common.fingerprint``): a different checkpoint, a fine-tune or a
  merge changes them, a change confined to values between the samples is not seen. A weight that a
  loaded patch has changed in place is read from ComfyUI's backup of the original, so the same MODEL
  gives the same fingerprint whether or not it is loaded with its LoRA applied;
* the weight patches (LoRAs and other patch nodes): for each patched key, every patch's strengths,
  offset, function and tensors (sampled the same way), in order;
* the object patches: each one's key and class (and its weights, sampled, when it is a module).

Not covered: the patcher's ``model_options`` (the sampler's wrappers and attention patches, which
CatVersion training does not call), hook keyframes, the device and ComfyUI's version.
"""

from __future__ import annotations

import numbers

import torch

from ..common.fingerprint import Fingerprint
from .catversion import final_layer_clone


def add_patch_value(fingerprint: Fingerprint, value) -> None:
    """Whatever a weight or object patch holds: numbers and text as they are, tensors sampled,
    containers item by item, weight adapters by class and weights, modules by class and weights,
    functions by name, anything else by its class."""
    if isinstance(value, torch.Tensor):
        fingerprint.add_tensor_sample(value)
    elif value is None or isinstance(value, (str, bool)):
        fingerprint.add_value(value)
    elif isinstance(value, numbers.Number):
        fingerprint.add_value(float(value) if not isinstance(value, numbers.Integral) else int(value))
    elif isinstance(value, (list, tuple)):
        fingerprint.add_text(f"[{len(value)}")
        for item in value:
            add_patch_value(fingerprint, item)
    elif isinstance(value, dict):
        fingerprint.add_text(f"{{{len(value)}")
        for key in sorted(value, key=str):
            fingerprint.add_text(str(key))
            add_patch_value(fingerprint, value[key])
    elif isinstance(value, torch.nn.Module):
        fingerprint.add_text(type(value).__qualname__)
        for key, tensor in sorted(value.state_dict().items()):
            fingerprint.add_text(key)
            fingerprint.add_tensor_sample(tensor)
    elif hasattr(value, "weights") and not callable(value.weights):  # ComfyUI's weight adapters (LoRA, LoHa, ...)
        fingerprint.add_text(type(value).__qualname__)
        add_patch_value(fingerprint, value.weights)
    elif callable(value):
        fingerprint.add_text(f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}")
    else:
        fingerprint.add_text(type(value).__qualname__)


def _original_weight(patcher, key: str, tensor: torch.Tensor) -> torch.Tensor:
    backup = getattr(patcher, "backup", None) or {}
    if key in backup:
        return backup[key].weight
    hook_backup = getattr(patcher, "hook_backup", None) or {}
    if key in hook_backup:
        return hook_backup[key][0]
    return tensor


def add_patcher(fingerprint: Fingerprint, patcher) -> None:
    """A ModelPatcher's weights, weight patches and object patches (see the module's docstring)."""
    fingerprint.add_text(type(patcher.model).__qualname__)
    state = patcher.model_state_dict()
    fingerprint.add_value(len(state))
    for key in sorted(state):
        fingerprint.add_text(key)
        fingerprint.add_tensor_sample(_original_weight(patcher, key, state[key]))
    fingerprint.add_value(len(patcher.patches))
    for key in sorted(patcher.patches):
        fingerprint.add_text(key)
        add_patch_value(fingerprint, patcher.patches[key])
    fingerprint.add_value(len(patcher.object_patches))
    for key in sorted(patcher.object_patches):
        fingerprint.add_text(key)
        add_patch_value(fingerprint, patcher.object_patches[key])


def sd1_models_fingerprint(model, clip, vae, caption: str) -> str:
    """The frozen MODEL, CLIP and VAE as CatVersion training uses them: each one's patcher
    (:func:`add_patcher`), the dtypes they compute in, the latent scale, the CLIP's output layer in
    the training and the tokens of ``caption`` (textual-inversion embeddings in it included).

    The training encodes the caption at the final layer whatever CLIP Set Last Layer set on the CLIP
    (``catversion.final_layer_clone``), so the cut is left out: a cut and an uncut CLIP of the same
    checkpoint train the same adapter and find it again. The output layer is still written, as the
    None of ComfyUI's "no layer option", which keeps the fingerprints of adapters saved before."""
    fingerprint = Fingerprint("ComfyUI SD1 models v1")
    base = model.model
    fingerprint.add_text("MODEL")
    add_patcher(fingerprint, model)
    fingerprint.add_value([str(base.get_dtype()), str(getattr(base, "manual_cast_dtype", None)),
                           float(base.latent_format.scale_factor)])
    fingerprint.add_text("CLIP")
    add_patcher(fingerprint, clip.patcher)
    fingerprint.add_value(getattr(final_layer_clone(clip), "layer_idx", None))
    add_patch_value(fingerprint, clip.tokenize(caption))
    fingerprint.add_text("VAE")
    add_patcher(fingerprint, vae.patcher)
    fingerprint.add_text(str(getattr(vae, "vae_dtype", None)))
    return fingerprint.hexdigest()
