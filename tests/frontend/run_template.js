// Run one UI-format workflow several times through the real ComfyUI frontend (headless Chromium), as
// the Run button does, and report what the browser received while each run went.
// Usage: node run_template.js <server url> <chromium path> <workflow.json>   (JSON report on stdout)
// RUNS (a JSON file): {"runs": [{"set": {"<node type>": {"<widget>": value}}}, ...],
//                      "prompts": {"<key>": <API prompt>}, "key_by": ["<node type>", "<widget>"]}
// Before each run the given widgets are set on the graph's nodes of that type (as a user would). The
// request the frontend sends is recorded as `queued`, then forwarded with its prompt swapped for
// prompts[String(value of key_by's widget in the queued prompt)] (the same workflow on tiny test models).
// Each run is waited for; the report lists per run: prompt_id, queued, and `texts` (the progress text
// frames, {node, text}) and `executed` (the "executed" messages) the page's websocket received meanwhile.
const fs = require('fs');
const { openBrowser } = require('./headless.js');

function decodeFrame(payload) {
  // ComfyUI's binary frames: uint32 event type (3 = text), then for text: uint32 node id length, node id, text
  if (typeof payload === 'string') {
    const message = JSON.parse(payload);
    return message.type === 'executed' ? { executed: message.data } : null;
  }
  const buffer = Buffer.from(payload);
  if (buffer.length < 8 || buffer.readUInt32BE(0) !== 3) return null;
  const length = buffer.readUInt32BE(4);
  return { text: { node: buffer.subarray(8, 8 + length).toString('utf8'), text: buffer.subarray(8 + length).toString('utf8') } };
}

async function main() {
  const [url, executablePath, file] = process.argv.slice(2);
  const plan = JSON.parse(fs.readFileSync(process.env.RUNS, 'utf8'));
  const { browser, page } = await openBrowser(executablePath);
  try {
    let received = { texts: [], executed: [] };
    page.on('websocket', (ws) => ws.on('framereceived', (frame) => {
      const decoded = decodeFrame(frame.payload);
      if (decoded && decoded.text) received.texts.push(decoded.text);
      if (decoded && decoded.executed) received.executed.push(decoded.executed);
    }));
    let queued = null;
    await page.route((u) => u.pathname.endsWith('/prompt'), async (route) => {
      const request = route.request();
      if (request.method() !== 'POST') return route.continue();
      const body = JSON.parse(request.postData());
      queued = body.prompt;
      const [type, widget] = plan.key_by;
      const node = Object.values(queued).find((n) => n.class_type === type);
      body.prompt = plan.prompts[String(node.inputs[widget])];
      return route.continue({ postData: JSON.stringify(body) });
    });
    await page.goto(url);
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    await page.waitForTimeout(2000);
    const workflow = JSON.parse(fs.readFileSync(file, 'utf8'));
    await page.evaluate(async (w) => { await window.app.loadGraphData(w); }, workflow);
    await page.waitForTimeout(1000);
    const runs = [];
    for (const run of plan.runs) {
      await page.evaluate((set) => {
        for (const [type, widgets] of Object.entries(set || {})) {
          for (const node of window.app.graph.findNodesByType(type)) {
            for (const [name, value] of Object.entries(widgets)) node.widgets.find((w) => w.name === name).value = value;
          }
        }
      }, run.set);
      received = { texts: [], executed: [] };
      queued = null;
      const reply = page.waitForResponse((r) => r.request().method() === 'POST'
                                                && new URL(r.url()).pathname.endsWith('/prompt'), { timeout: 60000 });
      await page.evaluate(async () => { await window.app.queuePrompt(0, 1); });
      const promptId = (await (await reply).json()).prompt_id || null;
      for (let tries = 0; promptId && tries < 1200; tries += 1) {
        const finished = await page.evaluate(async (id) => {
          const history = await (await fetch(`/history/${id}`)).json();
          return Boolean(history[id] && history[id].status && history[id].status.completed !== undefined);
        }, promptId);
        if (finished) break;
        await page.waitForTimeout(500);
      }
      await page.waitForTimeout(500);  // the last frames of the run
      runs.push({ prompt_id: promptId, queued, texts: received.texts, executed: received.executed });
    }
    process.stdout.write(JSON.stringify({ runs }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
