// The pack's nodes on the real frontend's classic canvas (headless Chromium): which widgets a fresh node
// shows, what connecting and disconnecting ELITE Conditioning's second concept does, the node menu's
// advanced entry, and what each given UI workflow shows once loaded (with the prompt the frontend builds).
// Usage: node calm_widgets.js <server url> <chromium path> <workflow.json>...   (JSON report on stdout)
const fs = require('fs');
const path = require('path');
const { openBrowser } = require('./headless.js');

async function main() {
  const [url, executablePath, ...files] = process.argv.slice(2);
  const { browser, page } = await openBrowser(executablePath);
  try {
    let errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    await page.waitForTimeout(2000);
    errors = [];  // start-up noise (a fresh user folder, the offline template index) is not the pack's
    const report = await page.evaluate(() => {
      const app = window.app;
      const shown = (node) => (node.widgets || []).filter((w) => node.isWidgetVisible(w)).map((w) => w.name);
      const menu = (node) => app.canvas.getNodeMenuOptions(node).filter(Boolean).map((o) => o.content);
      app.graph.clear();
      const add = (type, x) => {
        const node = window.LiteGraph.createNode(type);
        node.pos = [x, 100];
        app.graph.add(node);
        return node;
      };
      const encoder = add('ELITEEncoder', 50);
      const conditioning = add('ELITEConditioning', 450);
      const patch = add('ELITELocalAttnPatch', 900);
      const out = {
        extensions: app.extensions.map((e) => e.name),
        fresh: { ELITEConditioning: shown(conditioning), ELITELocalAttnPatch: shown(patch), ELITEEncoder: shown(encoder) },
        patch_menu: menu(patch),
      };
      const slot = conditioning.inputs.findIndex((i) => i.name === 'concept_2');
      encoder.connect(0, conditioning, slot);
      out.second_connected = shown(conditioning);
      conditioning.disconnectInput(slot);
      out.second_disconnected = shown(conditioning);
      patch.toggleAdvanced();
      out.patch_advanced_shown = shown(patch);
      return out;
    });
    report.loaded = {};
    for (const file of files) {
      const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
      await page.evaluate(async (w) => { await window.app.loadGraphData(w); }, workflow);
      await page.waitForTimeout(500);
      report.loaded[path.basename(file, '.json')] = await page.evaluate(async () => {
        const nodes = {};
        for (const node of window.app.graph._nodes) {
          nodes[node.id] = { type: node.type,
                             shown: (node.widgets || []).filter((w) => node.isWidgetVisible(w)).map((w) => w.name) };
        }
        return { nodes, prompt: (await window.app.graphToPrompt()).output };
      });
    }
    report.errors = errors;
    process.stdout.write(JSON.stringify(report));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
