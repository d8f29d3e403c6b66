// Calmer ELITE nodes on ComfyUI's classic canvas.
//
// 1. Expert settings fold away. The pack marks them "advanced" in object_info (nodes/elite_types.py,
//    expert()). The frontend's Nodes 2.0 view folds such widgets already; its classic canvas draws
//    them unless the widget itself is flagged, so they are flagged here. The node's right-click
//    menu then has "Show Advanced" / "Hide Advanced"; a saved node whose expert setting differs from
//    its default opens with them shown.
// 2. ELITE Conditioning shows the second concept's placeholder only while a second concept is
//    connected (or its placeholder was changed), so a one-concept graph shows one placeholder. (Nodes
//    2.0 does not redraw a widget hidden after it was built: there the placeholder stays among the
//    advanced inputs, where the pack puts it.)
//
// Nothing here changes a value or the order of the widgets: workflows save and run exactly as before.
import { app } from "../../../scripts/app.js";  // served as /extensions/<pack folder>/js/elite_widgets.js

const SECOND_CONCEPT = { node: "ELITEConditioning", input: "concept_2", widget: "placeholder_2" };

function isEliteNode(nodeData) {
  const category = nodeData?.category ?? "";
  return category === "ELITE" || category.startsWith("ELITE/");
}

function inputDefaults(nodeData) {
  const defaults = {};
  for (const group of ["required", "optional"]) {
    for (const [name, spec] of Object.entries(nodeData?.input?.[group] ?? {})) {
      const options = Array.isArray(spec) ? spec[1] : undefined;
      if (options && "default" in options) defaults[name] = options.default;
    }
  }
  return defaults;
}

function fit(node) {
  // Grow or shrink to the visible widgets, keeping the width; not while a saved graph is loading.
  if (app.configuringGraph || typeof node.computeSize !== "function") return;
  const wanted = node.computeSize();
  node.setSize([Math.max(node.size[0], wanted[0]), wanted[1]]);
  node.setDirtyCanvas?.(true, true);
}

function foldExpertWidgets(node, followsLink) {
  for (const widget of node.widgets ?? []) {
    if (widget.name === followsLink) widget.advanced = false;  // shown or hidden with its concept's link
    else if (widget.options?.advanced) widget.advanced = true;
  }
}

function showChangedExpertWidgets(node, defaults, followsLink) {
  const changed = (node.widgets ?? []).some(
    (w) => w.advanced && w.name !== followsLink && w.name in defaults && w.value !== defaults[w.name]);
  if (changed) node.showAdvanced = true;
}

function syncSecondConcept(node, defaults) {
  const widget = node.widgets?.find((w) => w.name === SECOND_CONCEPT.widget);
  const slot = node.inputs?.find((i) => i.name === SECOND_CONCEPT.input);
  if (!widget || !slot) return;
  const hide = slot.link == null && widget.value === defaults[SECOND_CONCEPT.widget];
  if (Boolean(widget.hidden) === hide) return;
  widget.hidden = hide;
  fit(node);
}

function chain(prototype, method, after) {
  const before = prototype[method];
  prototype[method] = function (...args) {
    const result = before?.apply(this, args);
    after(this);
    return result;
  };
}

app.registerExtension({
  name: "comfyui-elite.calm-widgets",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!isEliteNode(nodeData)) return;
    const defaults = inputDefaults(nodeData);
    const second = nodeData.name === SECOND_CONCEPT.node;
    const followsLink = second ? SECOND_CONCEPT.widget : null;
    chain(nodeType.prototype, "onNodeCreated", (node) => {
      foldExpertWidgets(node, followsLink);
      if (second) syncSecondConcept(node, defaults);
      fit(node);
    });
    chain(nodeType.prototype, "onConfigure", (node) => {
      foldExpertWidgets(node, followsLink);
      showChangedExpertWidgets(node, defaults, followsLink);
      if (second) syncSecondConcept(node, defaults);
    });
    if (second) chain(nodeType.prototype, "onConnectionsChange", (node) => syncSecondConcept(node, defaults));
  },
});
