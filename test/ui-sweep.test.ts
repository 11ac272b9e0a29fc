/**
 * `kaos ui` over a sweep of 10,000 jobs in a real browser (Debian's chromium
 * through playwright-core, as test/ui.test.ts): the sweep page shows a page of
 * it at a time, sorted and filtered by the server, keeps the page and the
 * order in its address, and redraws only the row of a job that changes.
 * Every wait is on the page, never on time.
 */
import { existsSync } from "node:fs";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIG_JOBS, bigSweepProject, failsAt, finishBigSweepJob, scoreOf, type BigSweep } from "./helpers/big-sweep.js";
import { startKaos, type LiveKaos } from "./helpers/rig.js";

const CHROMIUM = "/usr/bin/chromium";
const PAGE = 50;
/** The combination whose job is still running when the page opens: the first row of the grid. */
const RUNNING = 0;

/** In the page: marks the sweep's rows drawn so far, and counts in `window.rowsDrawn` every row drawn from now on. */
const MARK_AND_COUNT_ROWS = `{
  const table = document.getElementById("sweep");
  for (const tr of table.querySelectorAll("tbody tr")) tr.setAttribute("data-drawn-before", "");
  window.rowsDrawn = 0;
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) {
        if (node.nodeName === "TR") window.rowsDrawn += 1;
        else if (node.querySelectorAll) window.rowsDrawn += node.querySelectorAll("tr").length;
      }
    }
  }).observe(table, { childList: true, subtree: true });
}`;

function scoreCells(page: Page): Promise<number[]> {
  return page
    .locator('#sweep tbody td[data-metric="score"]')
    .allTextContents()
    .then((cells) => cells.map(Number));
}

describe.skipIf(!existsSync(CHROMIUM))("kaos ui: a sweep of 10,000 jobs in a browser", () => {
  let sweep: BigSweep;
  let ui: LiveKaos;
  let url: string;
  let browser: Browser;
  let page: Page;
  /** Every score a finished job wrote, highest first: what the sweep sorted by score shows. */
  let ranked: number[];

  beforeAll(async () => {
    sweep = await bigSweepProject({ running: [RUNNING] });
    ranked = [...Array(BIG_JOBS).keys()]
      .filter((index) => index !== RUNNING && !failsAt(index))
      .map(scoreOf)
      .sort((a, b) => b - a);
    ui = startKaos(["ui", "--port", "0"], { cwd: sweep.project.dir });
    url = /kaos ui: (http:\/\/\S+)/.exec(await ui.waitFor(/kaos ui: http:\/\/\S+\n/))![1]!;
    browser = await chromium.launch({ executablePath: CHROMIUM });
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  }, 300_000);

  afterAll(async () => {
    await browser?.close();
    await ui?.stop();
    sweep?.project.remove();
  });

  it("shows the first page, sorts by a metric and by state, pages through, and keeps the view in its address", async () => {
    await page.goto(`${url}#/pipelines/p`);
    await page.locator("#sweep tbody tr").first().waitFor({ timeout: 120_000 });
    expect(await page.locator("#sweep tbody tr").count()).toBe(PAGE);
    expect(await page.locator("#shown").textContent()).toBe(`${BIG_JOBS} of ${BIG_JOBS} jobs`);
    expect(await page.locator("#page-info").textContent()).toBe(`rows 1–${PAGE} of ${BIG_JOBS} · page 1 of ${BIG_JOBS / PAGE}`);
    // The grid's order: the first row is the first combination.
    expect(await page.locator("#sweep tbody tr").first().getAttribute("data-index")).toBe("0");

    // A metric sorts highest first, over the whole sweep, not the page shown.
    await page.locator('#sweep th[data-column="score"]').click();
    await page.locator('#sweep th[data-column="score"].sorted-desc').waitFor();
    await expect.poll(() => scoreCells(page)).toEqual(ranked.slice(0, PAGE));
    await page.locator("#page-next").click();
    await expect.poll(() => page.locator("#page-info").textContent()).toContain("page 2 of");
    expect(await scoreCells(page)).toEqual(ranked.slice(PAGE, 2 * PAGE));
    expect(page.url()).toMatch(/#\/pipelines\/p\?page=2&sort=score&order=desc$/);

    // A reload shows the same view.
    await page.reload();
    await page.locator('#sweep th[data-column="score"].sorted-desc').waitFor({ timeout: 60_000 });
    await expect.poll(() => scoreCells(page)).toEqual(ranked.slice(PAGE, 2 * PAGE));
    expect(await page.locator("#page-info").textContent()).toContain("page 2 of");

    // The last page holds the rows without a score: the failed jobs and the running one, after every scored row.
    await page.locator("#page-last").click();
    await expect.poll(() => page.locator("#page-info").textContent()).toContain(`page ${BIG_JOBS / PAGE} of`);
    const lastStates = await page
      .locator("#sweep tbody [data-state]")
      .evaluateAll((cells) => cells.map((cell) => cell.getAttribute("data-state")));
    expect(lastStates.slice(-3)).toEqual(["failed", "failed", "failed"]);

    // By state, from the first page again: failed, then running, then succeeded.
    await page.locator('#sweep th[data-column="state"]').click();
    await page.locator('#sweep th[data-column="state"].sorted-asc').waitFor();
    await expect.poll(() => page.locator("#page-info").textContent()).toContain("page 1 of");
    const failed = [...Array(BIG_JOBS).keys()].filter(failsAt).length;
    const states = await page
      .locator("#sweep tbody [data-state]")
      .evaluateAll((cells) => cells.map((cell) => cell.getAttribute("data-state")));
    expect(states).toEqual(Array(PAGE).fill("failed"));
    await page.locator("#page-next").click();
    await page.locator("#page-next").click();
    await expect.poll(() => page.locator("#page-info").textContent()).toContain("page 3 of");
    const third = await page
      .locator("#sweep tbody [data-state]")
      .evaluateAll((cells) => cells.map((cell) => cell.getAttribute("data-state")));
    expect(third.slice(0, failed - 2 * PAGE + 1)).toEqual([...Array(failed - 2 * PAGE).fill("failed"), "running"]);

    // A filter keeps the rows it names, counted over the whole sweep.
    await page.locator("#filter").fill("a=3 score>=50");
    const matching = [...Array(BIG_JOBS).keys()].filter(
      (i) => Math.floor(i / 100) === 3 && i !== RUNNING && !failsAt(i) && scoreOf(i) >= 50,
    );
    await expect.poll(() => page.locator("#shown").textContent()).toBe(`${matching.length} of ${BIG_JOBS} jobs`);
    expect(page.url()).toContain("filter=a%3D3+score%3E%3D50");

    // The chart plots every row the filter keeps: clear it, and the scatter of a param against the score is drawn.
    await page.locator("#filter").fill("");
    await expect.poll(() => page.locator("#shown").textContent()).toBe(`${BIG_JOBS} of ${BIG_JOBS} jobs`);
    await page.locator("#x-param").selectOption("a");
    await page.locator("#y-metric").selectOption("score");
    await expect.poll(() => page.locator("#scatter .u-title").textContent()).toBe("score by a");
    expect((await page.locator("#scatter canvas").boundingBox())?.width).toBeGreaterThan(100);

    // The job links lead to the job.
    const id = await page.locator("#sweep tbody tr[data-job]").first().getAttribute("data-job");
    await page.locator(`#sweep a[href="#/jobs/${id}"]`).click();
    await page.locator("#job-state [data-state]").waitFor();
    expect(await page.locator("h1 .mono").textContent()).toBe(id);
  });

  it("redraws only the row of a job that finishes while the sweep is shown", async () => {
    await page.goto(`${url}#/pipelines/p`);
    const row = page.locator(`#sweep tbody tr[data-index="${RUNNING}"]`);
    await row.locator("[data-state=running]").waitFor({ timeout: 120_000 });
    await expect.poll(() => page.locator("#live").textContent()).toBe("live");
    // Every row drawn now is marked, and every row drawn from now on counted.
    await page.evaluate(MARK_AND_COUNT_ROWS);

    finishBigSweepJob(sweep, RUNNING);
    await row.locator("[data-state=succeeded]").waitFor({ timeout: 60_000 });
    expect(await row.locator('td[data-metric="score"]').textContent()).toBe(String(scoreOf(RUNNING)));
    expect(await page.evaluate("window.rowsDrawn")).toBe(1);
    expect(await page.locator("#sweep tbody tr[data-drawn-before]").count()).toBe(PAGE - 1);
    expect(await row.getAttribute("data-drawn-before")).toBeNull();
  });
});
