/**
 * `kaos ui` in a real browser: a real project trained by a real `kaos up`,
 * the dashboard served by the built CLI, and Debian's chromium driven by
 * playwright-core through the runs page, a sweep, the charts and a job page,
 * and a live update while a second `kaos up` runs next to the dashboard.
 * Every wait is on the page or the processes, never on time.
 *
 * KAOS_UI_SCREENSHOT=1 also saves the sweep page to docs/ui-sweep.png.
 */
import { execFileSync } from "node:child_process";
import { appendFileSync, existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StateStore } from "../src/core/state.js";
import { trainJobFields } from "./helpers/jobs.js";
import { makeProject, REPO_ROOT, runKaos, startKaos, trivialSourceBundle, under, type LiveKaos, type Project } from "./helpers/rig.js";

const CHROMIUM = "/usr/bin/chromium";

/**
 * Writes a step series and a final score; with `gate`, first says so in its
 * log and blocks on reading the FIFO the test holds, until the test writes to it.
 */
const TRAIN = `#!/usr/bin/env python3
import json, os, sys
out = sys.argv[1]
p = json.load(open(os.environ["KAOS_PARAMS_FILE"]))
os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
if p.get("gate"):
    print("waiting for the gate", flush=True)
    open(os.environ["KAOS_TEST_GATE"]).read()
with open(os.path.join(out, "metrics", "curve.jsonl"), "w") as f:
    for step in range(5):
        f.write(json.dumps({"step": step, "loss": 1.0 / (1 + step * p["lr"] * p["depth"])}) + "\\n")
with open(os.path.join(out, "metrics", "final.json"), "w") as f:
    json.dump({"score": round(p["lr"] * p["depth"] * 10, 3)}, f)
print("trained", json.dumps(p, sort_keys=True), flush=True)
`;

const GRID = { lr: [0.1, 0.5, 1], depth: [1, 2] };

const skipWithoutChromium = !existsSync(CHROMIUM);

describe.skipIf(skipWithoutChromium)("kaos ui in a browser (built CLI, real processes, chromium)", () => {
  let project: Project;
  let ui: LiveKaos;
  let url: string;
  let browser: Browser;
  let page: Page;
  const env = () => ({ KAOS_TEST_GATE: project.path("gate") });

  beforeAll(async () => {
    project = makeProject({
      "kaos.config.ts":
        'import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n    p: { source: "src", data: "data", hyperparams: "grid.json", parallelism: 2 },\n  },\n});\n',
      "grid.json": JSON.stringify(GRID),
      "data/value.txt": "v1",
      ...under("src", trivialSourceBundle(TRAIN, { requirements: "# no requirements\n" })),
    });
    execFileSync("mkfifo", [project.path("gate")]);
    const up = await runKaos(["up"], { cwd: project.dir, env: env() });
    expect(up.code, up.stderr).toBe(0);
    ui = startKaos(["ui", "--port", "0"], { cwd: project.dir });
    url = /kaos ui: (http:\/\/\S+)/.exec(await ui.waitFor(/kaos ui: http:\/\/\S+\n/))![1]!;
    browser = await chromium.launch({ executablePath: CHROMIUM });
    page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  });

  afterAll(async () => {
    await browser?.close();
    await ui?.stop();
    project?.remove();
  });

  it("lists the run, and the pipeline links to its sweep", async () => {
    await page.goto(url);
    await page.locator("#runs tr[data-run]").first().waitFor();
    expect(await page.locator("#runs tr[data-run]").count()).toBe(1);
    await expect.poll(() => page.locator("#live").textContent()).toBe("live");
    await page.getByRole("link", { name: "p", exact: true }).click();
    await page.locator("#sweep tbody tr").first().waitFor();
    expect(page.url()).toContain("#/pipelines/p");
  });

  it("shows the sweep as a table that sorts and filters, params against a metric, and step curves", async () => {
    const rows = page.locator("#sweep tbody tr");
    expect(await rows.count()).toBe(6);
    expect(await page.locator("#shown").textContent()).toBe("6 of 6 jobs");

    // A metric sorts highest first; a second click lowest first.
    await page.locator('#sweep th[data-column="score"]').click();
    await page.locator('#sweep th[data-column="score"].sorted-desc').waitFor();
    const scores = await page.locator('#sweep tbody td[data-metric="score"]').allTextContents();
    expect(scores.map(Number)).toEqual([20, 10, 10, 5, 2, 1]);
    await page.locator('#sweep th[data-column="score"]').click();
    await page.locator('#sweep th[data-column="score"].sorted-asc').waitFor();
    expect((await page.locator('#sweep tbody td[data-metric="score"]').allTextContents()).map(Number)).toEqual([1, 2, 5, 10, 10, 20]);

    await page.locator("#filter").fill("lr=0.5");
    await expect.poll(() => page.locator("#shown").textContent()).toBe("2 of 6 jobs");
    expect(await rows.count()).toBe(2);
    await page.locator("#filter").fill("score>=5");
    await expect.poll(() => page.locator("#shown").textContent()).toBe("4 of 6 jobs");
    await page.locator("#filter").fill("");
    await expect.poll(() => page.locator("#shown").textContent()).toBe("6 of 6 jobs");

    // The scatter: one uPlot chart of a param against the metric, drawn on a canvas of some size.
    await page.locator("#x-param").selectOption("lr");
    await page.locator("#y-metric").selectOption("score");
    // The chart of the axes chosen, not the one it replaces: the earlier chart's canvas goes when the new one is drawn.
    await expect.poll(() => page.locator("#scatter .u-title").textContent()).toBe("score by lr");
    const box = await page.locator("#scatter canvas").boundingBox();
    expect(box?.width).toBeGreaterThan(100);
    expect(box?.height).toBeGreaterThan(100);

    // Step curves of the selected jobs: the x series and one line per job.
    const firstTwo = await page.locator("#sweep tbody tr").evaluateAll((trs) => trs.slice(0, 2).map((tr) => tr.getAttribute("data-job")));
    for (const id of firstTwo) await page.locator(`#sweep tr[data-job="${id}"] input[type=checkbox]`).check();
    await expect.poll(() => page.locator("#curves .u-legend .u-series").count()).toBe(3);
    expect(await page.locator("#curve-field").inputValue()).toBe("loss");
    expect((await page.locator("#curves canvas").boundingBox())?.width).toBeGreaterThan(100);

    if (process.env.KAOS_UI_SCREENSHOT) {
      await page.screenshot({ path: join(REPO_ROOT, "docs", "ui-sweep.png"), fullPage: true });
    }
  });

  it("shows a job with its params, metrics, keys, outputs, curves and log", async () => {
    const id = await page.locator('#sweep tbody tr[data-job] a[href^="#/jobs/"]').first().textContent();
    await page.locator(`#sweep a[href="#/jobs/${id}"]`).click();
    await page.locator("#job-state [data-state=succeeded]").waitFor();
    expect(await page.locator("#params").textContent()).toMatch(/lr/);
    await page.locator('#metrics tr[data-metric="score"]').waitFor();
    await page.locator('#metrics tr[data-metric="loss"]').waitFor();
    await page.getByText("metrics/curve.jsonl").waitFor();
    await page.locator("#job-curves canvas").waitFor();
    await expect.poll(() => page.locator("#log").textContent()).toMatch(/trained \{"depth": \d, "lr": [\d.]+\}/);
  });

  it("follows a job live while `kaos up` runs beside it: running, its log, then succeeded with its metric", async () => {
    // One more combination, whose job waits on the gate.
    writeFileSync(project.path("grid.json"), JSON.stringify([GRID, { lr: 2, depth: 1, gate: true }]));
    await page.goto(`${url}#/pipelines/p`);
    await page.locator("#sweep tbody tr").first().waitFor();
    const up = startKaos(["up"], { cwd: project.dir, env: env() });
    try {
      // The sweep page hears of the new job and shows it running, the others still there.
      const running = page.locator("#sweep tr[data-job]:has([data-state=running])");
      await running.waitFor({ timeout: 60_000 });
      expect(await page.locator("#sweep tbody tr").count()).toBe(7);
      const id = (await running.getAttribute("data-job"))!;

      await page.locator(`#sweep a[href="#/jobs/${id}"]`).click();
      await page.locator("#job-state [data-state=running]").waitFor();
      await expect.poll(() => page.locator("#log").textContent(), { timeout: 30_000 }).toContain("waiting for the gate");
      expect(await page.locator('#metrics tr[data-metric="score"]').count()).toBe(0);

      writeFileSync(project.path("gate"), "go\n");
      await page.locator("#job-state [data-state=succeeded]").waitFor({ timeout: 60_000 });
      await page.locator('#metrics tr[data-metric="score"]').waitFor();
      expect(await page.locator('#metrics tr[data-metric="score"] td.num').textContent()).toBe("20");
      await expect.poll(() => page.locator("#log").textContent()).toContain('trained {"depth": 1, "gate": true, "lr": 2}');

      // The dashboard read all along and held nothing up: the run finished and recorded everything.
      const result = await up.exited;
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain("1 succeeded, 0 failed, 0 cancelled, 6 reused");
    } finally {
      await up.stop();
    }
  });

  it("catches up after the dashboard restarts: a job that ended meanwhile shows its state and metric", async () => {
    writeFileSync(project.path("grid.json"), JSON.stringify([GRID, { lr: 2, depth: 1, gate: true }, { lr: 3, depth: 1, gate: true }]));
    const up = startKaos(["up"], { cwd: project.dir, env: env() });
    try {
      await page.goto(`${url}#/pipelines/p`);
      const running = page.locator("#sweep tr[data-job]:has([data-state=running])");
      await running.waitFor({ timeout: 60_000 });
      const id = (await running.getAttribute("data-job"))!;
      await page.locator(`#sweep a[href="#/jobs/${id}"]`).click();
      await page.locator("#job-state [data-state=running]").waitFor();
      await expect.poll(() => page.locator("#log").textContent(), { timeout: 30_000 }).toContain("waiting for the gate");

      // The dashboard stops; the job ends while nobody serves the page; the dashboard comes back on the same port.
      const port = new URL(url).port;
      await ui.stop();
      await expect.poll(() => page.locator("#live").textContent()).toBe("reconnecting");
      writeFileSync(project.path("gate"), "go\n");
      const result = await up.exited;
      expect(result.code, result.stderr).toBe(0);
      ui = startKaos(["ui", "--port", port], { cwd: project.dir });
      await ui.waitFor(/kaos ui: http:\/\/\S+\n/);

      await page.locator("#job-state [data-state=succeeded]").waitFor({ timeout: 30_000 });
      await page.locator('#metrics tr[data-metric="score"]').waitFor();
      expect(await page.locator('#metrics tr[data-metric="score"] td.num').textContent()).toBe("30");
      await expect.poll(() => page.locator("#log").textContent()).toContain('trained {"depth": 1, "gate": true, "lr": 3}');
      expect((await page.locator("#log").textContent())!.split("waiting for the gate").length).toBe(2);
    } finally {
      await up.stop();
    }
  });

  it("a page left before it loaded does not replace the page opened next", async () => {
    const state = StateStore.open(project.dir, { readonly: true });
    const id = state.listJobs({ stage: "train", limit: 1 })[0]!.id;
    state.close();
    await page.goto(`${url}#/runs`);
    await page.locator("#runs tr[data-run]").first().waitFor();
    // The job's own request is held until the next page is shown.
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    const jobRequest = `**/api/jobs/${id}`;
    await page.route(jobRequest, async (route) => {
      await held;
      await route.continue();
    });
    try {
      await page.goto(`${url}#/jobs/${id}`);
      await page.goto(`${url}#/environments`);
      await page.locator("h1", { hasText: "Environment builds" }).waitFor();
      // The job page goes on: its log, then (once it has drawn itself) its step series.
      const drawn = page.waitForRequest(`**/api/jobs/${id}/series`);
      release();
      await drawn;
      await page.locator("tr[data-job]").first().waitFor();
      expect(await page.locator("h1").allTextContents()).toEqual(["Environment builds"]);
    } finally {
      await page.unroute(jobRequest);
    }
  });

  it("keeps only the end of a log that grows by megabytes while the job page is open", async () => {
    const logFile = project.path("loud.log");
    writeFileSync(logFile, "first line\n");
    const state = StateStore.open(project.dir);
    let id: string;
    try {
      const run = state.beginRun("local", "up");
      const job = state.createJob({ ...trainJobFields("loud", run.id), logFile });
      id = job.id;
      state.markRunning(id, null);
    } finally {
      state.close();
    }
    await page.goto(`${url}#/jobs/${id}`);
    await expect.poll(() => page.locator("#log").textContent()).toBe("first line\n");
    await page.locator("#job-state [data-state=running]").waitFor();
    // 8 MB more, in lines, then a last one.
    const block = `${"step loss=0.1 ".repeat(7)}\n`.repeat(80_000);
    for (let i = 0; i < 8; i++) appendFileSync(logFile, block);
    appendFileSync(logFile, "the last line\n");
    await expect.poll(() => page.locator("#log").textContent(), { timeout: 60_000 }).toMatch(/the last line\n$/);
    const shown = (await page.locator("#log").textContent())!;
    expect(shown.length).toBeLessThanOrEqual(2 << 20);
    expect(shown).not.toContain("first line");
    expect(await page.locator("#log-earlier").textContent()).toMatch(/^the first \d+ bytes are not shown/);
    const writer = StateStore.open(project.dir);
    try {
      writer.finishJob(id, { state: "succeeded", exitCode: 0 });
    } finally {
      writer.close();
    }
  });

  it("opens one event stream a tab: four job pages side by side all load", async () => {
    const state = StateStore.open(project.dir, { readonly: true });
    const id = state.listJobs({ stage: "train", state: "succeeded", limit: 1 })[0]!.id;
    state.close();
    // A browser opens at most six connections to a host, shared by every tab.
    const context = await browser.newContext();
    try {
      for (let tab = 0; tab < 4; tab++) {
        const other = await context.newPage();
        await other.goto(`${url}#/jobs/${id}`);
        await other.locator("#job-state [data-state=succeeded]").waitFor();
        await expect.poll(() => other.locator("#live").textContent()).toBe("live");
      }
    } finally {
      await context.close();
    }
  });

  it("shows the environment builds with a link to their log", async () => {
    await page.goto(`${url}#/environments`);
    const build = page.locator("tr[data-job]").first();
    await build.waitFor();
    expect(await build.textContent()).toContain("build");
    await build.locator("a").click();
    await expect.poll(() => page.locator("#log").textContent()).not.toBe("");
  });
});

describe.skipIf(skipWithoutChromium)("two kaos ui with access tokens in one browser", () => {
  it("opening the second dashboard leaves the first one signed in", async () => {
    const project = makeProject({
      "kaos.config.ts": 'export default { pipelines: { p: { source: "src", data: "data" } } };\n',
    });
    const started: LiveKaos[] = [];
    const browser = await chromium.launch({ executablePath: CHROMIUM });
    try {
      const urls: string[] = [];
      for (let i = 0; i < 2; i++) {
        const ui = startKaos(["ui", "--port", "0", "--token", `token-number-${i}`], { cwd: project.dir });
        started.push(ui);
        urls.push(/kaos ui: (http:\/\/\S+)/.exec(await ui.waitFor(/kaos ui: http:\/\/\S+\n/))![1]!);
      }
      const context = await browser.newContext();
      const first = await context.newPage();
      await first.goto(urls[0]!);
      await first.locator("#runs").waitFor();
      const second = await context.newPage();
      await second.goto(urls[1]!);
      await second.locator("#runs").waitFor();
      // The first page's own requests carry its cookie: the second dashboard's must not have replaced it.
      expect(await first.evaluate(async () => (await fetch("/api/overview")).status)).toBe(200);
    } finally {
      await browser.close();
      for (const ui of started) await ui.stop();
      project.remove();
    }
  });
});
