// A screenshot of ComfyUI's template browser open on one custom-node pack's category, the dialog alone
// (no browser window or menus around it), its cards sorted alphabetically.
// Usage: node template_browser.js <server url> <chromium path> <pack folder name> <out.png>
const { openBrowser } = require('../tests/frontend/headless.js');

async function main() {
  const [url, executablePath, pack, out] = process.argv.slice(2);
  const { browser, page } = await openBrowser(executablePath);
  try {
    await page.goto(url);
    await page.waitForFunction(() => window.app && window.app.graph, null, { timeout: 120000 });
    await page.waitForTimeout(2000);
    for (let i = 0; i < 3; i += 1) {  // the first-run dialogs (a fresh user folder opens the templates)
      await page.keyboard.press('Escape');
      await page.waitForTimeout(300);
    }
    await page.evaluate(async () => {
      const manager = window.app.extensionManager;
      await manager.setting.set('Comfy.Templates.SortBy', 'alphabetical');
      await manager.command.execute('Comfy.BrowseTemplates');
    });
    const category = page.getByText(pack, { exact: true }).first();
    await category.waitFor({ timeout: 30000 });
    await category.click();
    const cards = page.locator(`[data-testid^="template-workflow-"] img`);
    await cards.first().waitFor({ timeout: 30000 });
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid^="template-workflow-"] img')]
      .every((img) => img.complete && img.naturalWidth > 0), null, { timeout: 30000 });
    await page.mouse.move(0, 0);  // no hover effect on a card
    await page.waitForTimeout(1500);
    const dialog = page.locator('[role="dialog"]').filter({ has: page.locator('[data-testid="template-workflows-content"]') });
    await dialog.first().screenshot({ path: out });
    const titles = await page.evaluate(() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')]
      .map((card) => card.getAttribute('data-testid').replace('template-workflow-', '')));
    process.stdout.write(JSON.stringify({ titles }));
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
