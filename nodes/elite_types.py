"""Socket types shared by the ELITE nodes, and schema helpers guarded by ComfyUI feature."""

import inspect
import json

from comfy_api.latest import io

GlobalMapperType = io.Custom("ELITE_GLOBAL_MAPPER")
LocalMapperType = io.Custom("ELITE_LOCAL_MAPPER")
ConceptType = io.Custom("ELITE_CONCEPT")

CATEGORY = "ELITE"

CatVersionType = io.Custom("CATVERSION_ADAPTER")
CATVERSION_CATEGORY = "ELITE/CatVersion"


# Newer ComfyUI releases read search aliases; 0.3.75 does not. The frontend folds "advanced" (expert)
# inputs away; 0.33.0 takes the flag as an argument, 0.3.75 passes it on through an input's extra_dict.
_SCHEMA_FIELDS = set(inspect.signature(io.Schema).parameters)
_INPUT_TAKES_ADVANCED = "advanced" in inspect.signature(io.Float.Input).parameters
SUPPORTS_SEARCH_ALIASES = "search_aliases" in _SCHEMA_FIELDS


def schema(search_aliases: list[str] | None = None, **fields) -> io.Schema:
    """io.Schema with ``search_aliases`` where the running ComfyUI supports them."""
    if search_aliases and SUPPORTS_SEARCH_ALIASES:
        fields["search_aliases"] = search_aliases
    return io.Schema(**fields)


def expert(item: io.Input) -> io.Input:
    """Marks an input as an expert setting: object_info says ``"advanced": true`` on every supported
    ComfyUI, and the frontend shows it only when the node's advanced inputs are shown (Nodes 2.0 by
    itself, the classic canvas with web/js/elite_widgets.js)."""
    if _INPUT_TAKES_ADVANCED:
        item.advanced = True
    elif isinstance(getattr(item, "extra_dict", None), dict):
        item.extra_dict["advanced"] = True
    return item


# --------------------------------------------------------------------------- widget values
#
# ComfyUI converts a widget's value before any check (bool("false") is True, int(3.7) is 3, int("12") is 12),
# and for a node whose validate_inputs takes **kwargs it skips its own min/max and option checks. The pack
# checks both itself: the type of what was sent, in an on_prompt handler that sees the prompt as posted
# (refuse_wrong_widget_types), and the range and options of what validate_inputs receives
# (check_widget_values).

WIDEST_INT = 0xFFFFFFFFFFFFFFFF  # ComfyUI's widest INT widget (a seed's 64 bits), for an INT without a max


def _shown(value) -> str:
    kind = {bool: "a boolean", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)
    text = json.dumps(value) if isinstance(value, (bool, int, float, str, type(None))) else repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _widget_kind(item: io.Input) -> str | None:
    for kind, cls in (("COMBO", io.Combo.Input), ("BOOLEAN", io.Boolean.Input), ("INT", io.Int.Input),
                      ("FLOAT", io.Float.Input), ("STRING", io.String.Input)):
        if isinstance(item, cls):
            return kind
    return None


def _bounds(item: io.Input, kind: str) -> tuple:
    low, high = getattr(item, "min", None), getattr(item, "max", None)
    if kind == "INT":
        low, high = -WIDEST_INT if low is None else low, WIDEST_INT if high is None else high
    return low, high


def _expected(item: io.Input, kind: str) -> str:
    if kind == "BOOLEAN":
        return "true or false (a JSON boolean, not a string or a number)"
    if kind == "STRING":
        return "text (a string)"
    if kind == "COMBO":
        options = list(item.options or [])
        listed = ", ".join(json.dumps(o) for o in options[:20]) + (f", ... ({len(options)} in all)" if len(options) > 20 else "")
        return f"one of {listed}" if options else "one of the node's choices (there are none)"
    low, high = _bounds(item, kind)
    span = " from {} to {}".format(low, high) if low is not None and high is not None else \
        (f" of at least {low}" if low is not None else (f" of at most {high}" if high is not None else ""))
    return ("a whole number" if kind == "INT" else "a number") + span


def widget_type_problem(item: io.Input, value) -> str | None:
    """Why ``value`` is not of the type widget ``item`` takes (a real bool, a whole number, a
    number, a string), or None. Combos are left to :func:`widget_value_problem`."""
    kind = _widget_kind(item)
    if kind == "BOOLEAN":
        wrong = type(value) is not bool
    elif kind == "INT":
        wrong = isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer())
    elif kind == "FLOAT":
        wrong = isinstance(value, bool) or not isinstance(value, (int, float))
    elif kind == "STRING":
        wrong = not isinstance(value, str)
    else:
        return None
    return f"{item.id}: received {_shown(value)}; expected {_expected(item, kind)}." if wrong else None


def widget_value_problem(item: io.Input, value) -> str | None:
    """Why ``value`` cannot be widget ``item``'s value: its type, a number outside the widget's
    min/max (an INT without them: ComfyUI's 64-bit bounds), a combo value not among the options."""
    kind = _widget_kind(item)
    problem = widget_type_problem(item, value)
    if problem or kind is None:
        return problem
    if kind == "COMBO":
        options = list(item.options or [])
        ok = not options or isinstance(value, str) and value in options  # an empty list: a name the node checks
    elif kind in ("INT", "FLOAT"):
        low, high = _bounds(item, kind)
        ok = not ((low is not None and value < low) or (high is not None and value > high))  # NaN: the node's check
    else:
        ok = True
    return None if ok else f"{item.id}: received {_shown(value)}; expected {_expected(item, kind)}."


def widget_inputs(node_cls) -> list[io.Input]:
    return [item for item in node_cls.define_schema().inputs if _widget_kind(item) is not None]


def check_widget_values(node_cls, values: dict) -> bool | str:
    """For a ``validate_inputs(**kwargs)``: ComfyUI has skipped the node's range and option checks,
    so every widget value received is checked here (None: linked, known only when the node runs; a
    :class:`RefusedWidgetValue`: ComfyUI has reported it already).
    True, or one message naming each wrong input, the value received and what it takes."""
    problems = [problem for item in widget_inputs(node_cls)
                if values.get(item.id) is not None and not isinstance(values[item.id], RefusedWidgetValue)  # reported
                for problem in [widget_value_problem(item, values[item.id])] if problem]
    return " ".join(problems) if problems else True


class RefusedWidgetValue(str):
    """A widget value of the wrong type, as posted (its JSON text): ComfyUI's conversion of it to
    BOOLEAN, INT, FLOAT or STRING raises with the reason, so validation refuses the node with it."""

    reason: str

    def __new__(cls, posted, reason: str):
        refused = super().__new__(cls, json.dumps(posted) if isinstance(posted, (bool, int, float, str, type(None)))
                                  else repr(posted))
        refused.reason = reason
        return refused

    def _refuse(self, *_):
        raise ValueError(self.reason)

    __bool__ = __int__ = __float__ = __index__ = __str__ = _refuse

    def __format__(self, spec: str) -> str:  # the validation error's text shows what was posted
        return format(str.__str__(self), spec)

    def __repr__(self) -> str:
        return str.__repr__(self)


def refuse_wrong_widget_types(json_data, node_classes) -> dict:
    """An on_prompt handler's work: in the posted prompt, every widget value of one of
    ``node_classes`` whose type is wrong (``"yes"`` for a BOOLEAN, ``3.5`` or ``"12"`` for an INT,
    ...) becomes a :class:`RefusedWidgetValue`, which ComfyUI's validation then refuses, naming the
    input, the value and what it takes; nothing runs."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    if not isinstance(prompt, dict):
        return json_data
    by_id = {cls.define_schema().node_id: cls for cls in node_classes}
    for node in prompt.values():
        cls = by_id.get(node.get("class_type")) if isinstance(node, dict) else None
        inputs = node.get("inputs") if cls is not None else None
        if not isinstance(inputs, dict):
            continue
        for item in widget_inputs(cls):
            if item.id not in inputs:
                continue
            posted = inputs[item.id]
            if isinstance(posted, dict) and "__value__" in posted:
                posted = posted["__value__"]
            if isinstance(posted, list) and len(posted) == 2:  # a link to another node's output
                continue
            problem = widget_type_problem(item, posted)
            if problem:
                inputs[item.id] = RefusedWidgetValue(posted, problem)
    return json_data


def register_prompt_check(node_classes) -> bool:
    """Run :func:`refuse_wrong_widget_types` on every prompt the running server receives (where
    there is one: the command lines and in-process runs have none). True when registered."""
    try:
        from server import PromptServer  # imported here: ComfyUI as a library has no server
    except ImportError:
        return False
    server = getattr(PromptServer, "instance", None)
    if server is None or not hasattr(server, "add_on_prompt_handler"):
        return False
    classes = tuple(node_classes)
    server.add_on_prompt_handler(lambda json_data: refuse_wrong_widget_types(json_data, classes))
    return True
