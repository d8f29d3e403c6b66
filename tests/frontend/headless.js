// The headless Chromium every frontend script drives: one launch recipe (offline, no sandbox, no GPU)
// and a page of the size the screenshots and checks assume.
const { chromium } = require('playwright-core');

async function openBrowser(executablePath) {
  const browser = await chromium.launch({
    executablePath,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  return { browser, page };
}

module.exports = { openBrowser };
