// Load UI-format workflows into the real ComfyUI frontend (headless Chromium) and report, per file,
// the API-format prompt the frontend itself builds from it and any browser error raised meanwhile.
// Usage: node load_workflows.js <server url> <chromium path> <workflow.json>...   (JSON report on stdout)
// With SCREENSHOT_DIR set, each loaded graph is also fitted to the view and saved as <name>.png there
// (focus mode: the graph without the menus, cropped to its nodes).
// With QUEUE_PROMPTS set (a JSON file: workflow name -> API prompt), each such workflow is also queued
// through the frontend (app.queuePrompt, what the Run button calls). The request the frontend sends is
// recorded as `queued`, then forwarded to the server with its prompt swapped for the given one (the
// same workflow on tiny test models); the server's prompt_id is reported.
const fs = require('fs');
const path = require('path');
const { openBrowser } = require('./headless.js');

async function main() {
  const [url, executablePath, ...files] = process.argv.slice(2);
  const { browser, page } = await openBrowser(executablePath);
  try {
    let errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => {
      // A resource that failed to load is reported by the 'response' handler when it is the server's;
      // fetches of outside hosts (web fonts, news) fail here by design: this machine is offline.
      // The missing-models dialog (the templates' properties.models) asks the model host for file sizes:
      // offline, that fetch fails too.
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')
          && !m.text().startsWith('Error fetching file size')) errors.push(m.text());
    });
    page.on('response', (r) => { if (r.status() >= 400 && r.url().startsWith(url)) errors.push(`HTTP ${r.status()} ${r.url()}`); });
    const swaps = process.env.QUEUE_PROMPTS ? JSON.parse(fs.readFileSync(process.env.QUEUE_PROMPTS, 'utf8')) : {};
    let current = null;
    let queued = null;
    await page.route((u) => u.pathname.endsWith('/prompt'), async (route) => {
      const request = route.request();
      if (request.method() !== 'POST' || !(current in swaps)) return route.continue();
      const body = JSON.parse(request.postData());
      queued = body.prompt;
      body.prompt = swaps[current];
      return route.continue({ postData: JSON.stringify(body) });
    });
    await page.goto(url);
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    await page.waitForTimeout(2000);
    const report = {};
    if (process.env.SCREENSHOT_DIR) {  // the graph alone: no first-run dialog, menus or minimap
      for (let i = 0; i < 3; i += 1) {
        await page.keyboard.press('Escape');
        await page.waitForTimeout(300);
      }
      await page.evaluate(async () => {
        const manager = window.app.extensionManager;
        if (manager && manager.setting) await manager.setting.set('Comfy.Minimap.Visible', false);
        if (manager && manager.command) await manager.command.execute('Workspace.ToggleFocusMode');
      });
    }
    for (const file of files) {
      errors = [];  // start-up noise (a fresh user folder, unreachable web fonts) is not the workflow's
      const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
      await page.evaluate(async (w) => { await window.app.loadGraphData(w); }, workflow);
      await page.waitForTimeout(1000);
      const output = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
      const name = path.basename(file, '.json');
      report[name] = { output, errors };
      if (name in swaps) {
        current = name;
        queued = null;
        const reply = page.waitForResponse((r) => r.request().method() === 'POST'
                                                  && new URL(r.url()).pathname.endsWith('/prompt'), { timeout: 60000 });
        await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
        const response = await reply;
        report[name].queued = queued;
        report[name].prompt_id = (await response.json()).prompt_id || null;
        current = null;
        if (process.env.SCREENSHOT_DIR && report[name].prompt_id) {
          // a screenshot after the run shows the nodes' previews
          for (let tries = 0; tries < 600; tries += 1) {
            const finished = await page.evaluate(async (id) => {
              const history = await (await fetch(`/history/${id}`)).json();
              return Boolean(history[id] && history[id].status && history[id].status.completed !== undefined);
            }, report[name].prompt_id);
            if (finished) break;
            await page.waitForTimeout(1000);
          }
          await page.waitForTimeout(2000);
        }
      }
      if (process.env.SCREENSHOT_DIR) {
        // dialogs over the graph: the first-run templates browser, the missing-models list
        await page.evaluate(() => document.querySelectorAll('.p-dialog-mask').forEach((e) => e.remove()));
        await page.setViewportSize({ width: 2600, height: 1400 });
        await page.evaluate(async () => {  // full detail at any zoom, then fit the view to the graph
          const manager = window.app.extensionManager;
          if (manager && manager.setting) await manager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 1);
          if (manager && manager.command) await manager.command.execute('Comfy.Canvas.FitView');
        });
        await page.waitForTimeout(800);
        const clip = await page.evaluate(() => {  // the nodes' bounding box on screen, title bars included
          const canvas = window.app.canvas;
          const { scale, offset } = canvas.ds;
          const box = canvas.canvas.getBoundingClientRect();
          let [left, top, right, bottom] = [Infinity, Infinity, -Infinity, -Infinity];
          for (const node of window.app.graph._nodes || window.app.graph.nodes) {
            left = Math.min(left, node.pos[0]);
            top = Math.min(top, node.pos[1] - 40);
            right = Math.max(right, node.pos[0] + node.size[0]);
            bottom = Math.max(bottom, node.pos[1] + node.size[1]);
          }
          const pad = 24;
          const x = Math.max(0, box.left + (left + offset[0]) * scale - pad);
          const y = Math.max(0, box.top + (top + offset[1]) * scale - pad);
          return { x, y, width: Math.min(box.right, box.left + (right + offset[0]) * scale + pad) - x,
                   height: Math.min(box.bottom, box.top + (bottom + offset[1]) * scale + pad) - y };
        });
        await page.screenshot({ path: path.join(process.env.SCREENSHOT_DIR, `${name}.png`), clip });
      }
    }
    process.stdout.write(JSON.stringify(report));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
