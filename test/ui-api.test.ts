/**
 * The JSON API and event stream of `kaos ui`, through the built CLI over real
 * HTTP: pages of jobs and runs over a store filled through its own API, 404s
 * and 400s, the access token off loopback, and a job written by another
 * process reaching a listening event stream.
 */
import { rmSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StateStore } from "../src/core/state.js";
import { trainJobFields, trainingProject } from "./helpers/jobs.js";
import { makeProject, runKaos, startKaos, type LiveKaos, type Project } from "./helpers/rig.js";

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

function get(url: string, headers: Record<string, string> = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    request(url, { headers }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    })
      .on("error", reject)
      .end();
  });
}

async function getJson<T>(url: string): Promise<T> {
  const reply = await get(url);
  expect(reply.status, reply.body).toBe(200);
  return JSON.parse(reply.body) as T;
}

const JOBS = 130;

/**
 * A project whose store holds JOBS finished train jobs in runs of 20, recorded
 * through the store's API; without a config file, as `kaos train deploy` leaves one.
 */
function recordedProject(): Project {
  const project = makeProject();
  const state = StateStore.open(project.dir);
  try {
    for (let first = 0; first < JOBS; first += 20) {
      const run = state.beginRun("local", "up");
      for (let index = 0; index < Math.min(20, JOBS - first); index++) {
        const job = state.createJob({
          runId: run.id,
          stack: "local",
          pipeline: "bench",
          stage: "train",
          key: `k${first + index}`,
          params: { n: first + index },
          envKey: "e",
          sourceKey: "s",
          dataKey: "d",
          paramsKey: "p",
          sweepIndex: index,
          sweepSize: 20,
          outputDir: null,
          logFile: null,
        });
        state.finishJob(job.id, { state: "succeeded", exitCode: 0 });
      }
      state.finishRun(run.id, "succeeded");
    }
  } finally {
    state.close();
  }
  return project;
}

async function serve(project: Project, args: string[] = []): Promise<{ ui: LiveKaos; url: string }> {
  const ui = startKaos(["ui", "--port", "0", ...args], { cwd: project.dir });
  const url = /kaos ui: (http:\/\/\S+)/.exec(await ui.waitFor(/kaos ui: http:\/\/\S+\n/))![1]!;
  return { ui, url };
}

describe("kaos ui API (built CLI, real HTTP)", () => {
  let project: Project;
  let ui: LiveKaos;
  let base: string;

  beforeAll(async () => {
    project = recordedProject();
    ({ ui, url: base } = await serve(project));
  });
  afterAll(async () => {
    await ui?.stop();
    project?.remove();
  });

  it("binds loopback by default and prints the address without a token", () => {
    expect(base).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
  });

  it("pages jobs newest first with a cursor, every job once, and filters them", async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: { items: { id: string; params: { n: number } }[]; next: string | null } = await getJson(
        `${base}api/jobs?limit=50${cursor ? `&cursor=${cursor}` : ""}`,
      );
      expect(page.items.length).toBe(pages < 2 ? 50 : JOBS - 100);
      seen.push(...page.items.map((job) => job.id));
      if (pages === 0) expect(page.items[0]!.params.n).toBe(JOBS - 1);
      cursor = page.next;
      pages += 1;
    } while (cursor !== null);
    expect(pages).toBe(3);
    expect(new Set(seen).size).toBe(JOBS);

    const state = StateStore.open(project.dir, { readonly: true });
    try {
      expect(seen).toEqual(state.listJobs().map((job) => job.id));
    } finally {
      state.close();
    }
    expect((await getJson<{ items: unknown[] }>(`${base}api/jobs?state=failed`)).items).toEqual([]);
    expect((await getJson<{ items: unknown[] }>(`${base}api/jobs?pipeline=bench&limit=5`)).items).toHaveLength(5);
  });

  it("pages runs newest first, each with its job counts", async () => {
    const first = await getJson<{ items: { id: string; jobs: Record<string, number> }[]; next: string }>(`${base}api/runs?limit=4`);
    expect(first.items).toHaveLength(4);
    expect(first.items[0]!.jobs).toEqual({ succeeded: JOBS % 20 || 20 });
    const rest = await getJson<{ items: { id: string }[]; next: string | null }>(`${base}api/runs?limit=4&cursor=${first.next}`);
    expect(rest.items).toHaveLength(Math.ceil(JOBS / 20) - 4);
    expect(rest.next).toBeNull();
    expect(new Set([...first.items, ...rest.items].map((run) => run.id)).size).toBe(Math.ceil(JOBS / 20));
  });

  it("answers 404 for unknown jobs, paths and pipelines, and 400 for bad paging", async () => {
    expect((await get(`${base}api/jobs/nosuchjob`)).status).toBe(404);
    expect((await get(`${base}api/jobs/nosuchjob/log`)).status).toBe(404);
    expect((await get(`${base}api/pipelines/nosuch/sweep`)).status).toBe(404);
    expect((await get(`${base}api/nothing`)).status).toBe(404);
    expect((await get(`${base}nothing.js`)).status).toBe(404);
    expect((await get(`${base}api/jobs?limit=0`)).status).toBe(400);
    expect((await get(`${base}api/jobs?state=sleeping`)).status).toBe(400);
    expect((await get(`${base}api/jobs?cursor=bm9wZQ`)).status).toBe(400);
    expect((await get(`${base}api/jobs/%E0%A4%A`)).status).toBe(400);
  });

  it("shows the last run of a pipeline no config names as its sweep, and a job's log and series", async () => {
    const sweep = await getJson<{ source: string; items: { id: string; params: { n: number } }[] }>(`${base}api/pipelines/bench/sweep`);
    expect(sweep.source).toBe("run");
    expect(sweep.items.map((row) => row.params.n)).toEqual(Array.from({ length: JOBS % 20 }, (_, i) => JOBS - (JOBS % 20) + i));
    const id = sweep.items[0]!.id;
    expect(await getJson(`${base}api/jobs/${id}/log`)).toMatchObject({ id, offset: 0, next: 0, text: "" });
    expect(await getJson(`${base}api/jobs/${id}/series`)).toEqual({ id, series: {}, skipped: [] });
    expect(await getJson(`${base}api/jobs/${id}`)).toMatchObject({ id, params: { n: JOBS - (JOBS % 20) }, metrics: {}, outputs: [] });
  });

  it("sends a long log in pieces that end at a line, or its last piece from a line start", async () => {
    const logFile = project.path("long.log");
    const lines = Array.from({ length: 20_000 }, (_, i) => `line ${i} ${"x".repeat(30)}\n`);
    writeFileSync(logFile, lines.join(""));
    const size = Buffer.byteLength(lines.join(""));
    const state = StateStore.open(project.dir);
    let id: string;
    try {
      const run = state.beginRun("local", "up");
      id = state.createJob({ ...trainJobFields("long", run.id), logFile }).id;
    } finally {
      state.close();
    }
    const first = await getJson<{ offset: number; next: number; size: number; text: string }>(`${base}api/jobs/${id}/log`);
    expect(first).toMatchObject({ offset: 0, size });
    expect(first.next).toBeLessThanOrEqual(256 << 10);
    expect(first.text.endsWith("\n")).toBe(true);
    const second = await getJson<{ offset: number; text: string }>(`${base}api/jobs/${id}/log?offset=${first.next}`);
    expect(second.offset).toBe(first.next);
    expect(second.text.startsWith(lines[first.text.split("\n").length - 1]!)).toBe(true);
    const tail = await getJson<{ offset: number; next: number; text: string }>(`${base}api/jobs/${id}/log?tail=1`);
    expect(tail.next).toBe(size);
    expect(tail.offset).toBeGreaterThan(size - (256 << 10));
    expect(tail.text.startsWith("line ")).toBe(true);
    expect(tail.text.endsWith(lines.at(-1)!)).toBe(true);
  });

  it("cuts a line longer than a piece between characters, never inside one", async () => {
    const logFile = project.path("wide.log");
    const line = `${"é".repeat(200_000)}\n`;
    writeFileSync(logFile, `a${line}`);
    const state = StateStore.open(project.dir);
    let id: string;
    try {
      const run = state.beginRun("local", "up");
      id = state.createJob({ ...trainJobFields("wide", run.id), logFile }).id;
    } finally {
      state.close();
    }
    let text = "";
    let offset = 0;
    for (;;) {
      const piece = await getJson<{ next: number; size: number; text: string }>(`${base}api/jobs/${id}/log?offset=${offset}`);
      text += piece.text;
      if (piece.next === piece.size) break;
      expect(piece.next).toBeGreaterThan(offset);
      offset = piece.next;
    }
    expect(text).toBe(`a${line}`);
    const tail = await getJson<{ text: string }>(`${base}api/jobs/${id}/log?tail=1`);
    expect(tail.text).toMatch(/^é+\n$/);
  });

  it("serves the page and its script, and refuses a host name that is not loopback", async () => {
    const page = await get(base);
    expect(page.status).toBe(200);
    expect(page.body).toContain('<script src="/app.js">');
    expect((await get(`${base}app.js`)).status).toBe(200);
    expect((await get(`${base}api/overview`, { host: "attacker.example:80" })).status).toBe(403);
  });

  it("streams a job that another process records to a listening client", async () => {
    const events: string[] = [];
    let heard: () => void = () => {};
    const done = new Promise<void>((resolve) => (heard = resolve));
    const stream = request(`${base}api/events`, (res) => {
      res.setEncoding("utf8").on("data", (chunk: string) => {
        events.push(chunk);
        if (events.join("").includes('"pipeline":"live"')) heard();
      });
    });
    stream.end();
    // The stream is open once its first bytes arrived; then a writer records a job.
    await new Promise<void>((resolve) => stream.once("response", (res) => res.once("data", () => resolve())));
    const state = StateStore.open(project.dir);
    try {
      const run = state.beginRun("local", "up");
      state.createJob(trainJobFields("live", run.id));
    } finally {
      state.close();
    }
    await done;
    stream.destroy();
    expect(events.join("")).toMatch(/event: jobs\ndata: \[\{"id":"[0-9a-z]{10}","runId"/);
  });
});

describe("kaos ui before the first kaos up", () => {
  it("serves a project whose config does not load and has no store yet, then reads the store once a writer made it", async () => {
    const project = makeProject({
      "kaos.config.ts": 'export default { pipelines: { p: { source: "src", data: "data" } } };\n',
    });
    const { ui, url } = await serve(project);
    try {
      const overview = await getJson<{ pipelines: unknown[]; configError: string }>(`${url}api/overview`);
      expect(overview.pipelines).toEqual([]);
      expect(overview.configError).toContain("pipelines.p.source: no such directory");
      expect(await getJson(`${url}api/runs`)).toEqual({ items: [], next: null });
      // The config names bundles that do not exist: the sweep says so.
      const sweep = await get(`${url}api/pipelines/p/sweep`);
      expect(sweep.status).toBe(409);
      expect(JSON.parse(sweep.body).error).toContain("pipelines.p.source: no such directory");
      const state = StateStore.open(project.dir);
      try {
        const run = state.beginRun("local", "up");
        state.createJob(trainJobFields("p", run.id));
      } finally {
        state.close();
      }
      expect(await getJson(`${url}api/overview`)).toMatchObject({ pipelines: [{ name: "p", total: 1, jobs: { queued: 1 } }] });
      expect((await getJson<{ items: unknown[] }>(`${url}api/runs`)).items).toHaveLength(1);
    } finally {
      await ui.stop();
      project.remove();
    }
  });
});

describe("kaos ui when the store is removed under it", () => {
  it("reads the store a later writer makes in its place, and tells listening pages to start over", async () => {
    const project = recordedProject();
    const { ui, url } = await serve(project);
    let stream: ReturnType<typeof request> | undefined;
    try {
      const before = await getJson<{ items: { id: string }[] }>(`${url}api/runs?limit=500`);
      expect(before.items).toHaveLength(Math.ceil(JOBS / 20));

      let events = "";
      let heard: () => void = () => {};
      const reset = new Promise<void>((resolve) => (heard = resolve));
      const open = new Promise<void>((resolve) => {
        stream = request(`${url}api/events`, (res) => {
          res.setEncoding("utf8").on("data", (chunk: string) => {
            events += chunk;
            resolve();
            if (events.includes("event: reset\n")) heard();
          });
        });
        stream.end();
      });
      await open;

      rmSync(project.path(".kaos"), { recursive: true, force: true });
      const state = StateStore.open(project.dir);
      let runId: string;
      try {
        runId = state.beginRun("local", "up").id;
        state.createJob(trainJobFields("fresh", runId));
      } finally {
        state.close();
      }
      const after = await getJson<{ items: { id: string }[] }>(`${url}api/runs`);
      expect(after.items.map((run) => run.id)).toEqual([runId]);
      expect(await getJson(`${url}api/overview`)).toMatchObject({ pipelines: [{ name: "fresh", total: 1 }] });
      await reset;
    } finally {
      stream?.destroy();
      await ui.stop();
      project.remove();
    }
  });
});

describe("kaos ui access token", () => {
  let project: Project;
  afterAll(() => project?.remove());

  it("off loopback, every request needs the token the printed address carries", async () => {
    project = recordedProject();
    const { ui, url } = await serve(project, ["--host", "0.0.0.0"]);
    try {
      const printed = new URL(url);
      const token = printed.searchParams.get("token");
      expect(token).toMatch(/^[A-Za-z0-9_-]{20,}$/);
      const base = `http://127.0.0.1:${printed.port}/`;
      for (const path of ["", "app.js", "api/overview", "api/jobs", "api/events", "api/jobs/nosuchjob"]) {
        expect((await get(`${base}${path}`)).status, path).toBe(401);
      }
      expect((await get(`${base}api/overview?token=wrong`)).status).toBe(401);
      expect((await get(`${base}api/overview`, { authorization: "Bearer wrong" })).status).toBe(401);
      const page = await get(`${base}?token=${token}`);
      expect(page.status).toBe(200);
      // The page's own requests carry the token as the cookie it was given.
      const cookie = String(page.headers["set-cookie"]).split(";")[0]!;
      expect((await get(`${base}api/overview`, { cookie })).status).toBe(200);
      expect((await get(`${base}api/overview`, { authorization: `Bearer ${token}` })).status).toBe(200);
      expect((await get(`${base}api/overview`, { host: "anything.example", authorization: `Bearer ${token}` })).status).toBe(200);
    } finally {
      await ui.stop();
    }
  });

  it("refuses a short token", async () => {
    const result = await runKaos(["ui", "--port", "0", "--token", "short"], { cwd: project.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("--token: expected at least 8 characters, found 5");
  });

  it("a token given on loopback is required too", async () => {
    const { ui, url } = await serve(project, ["--token", "s3cret-token"]);
    try {
      expect(url).toMatch(/\?token=s3cret-token$/);
      const base = url.replace(/\?.*$/, "");
      expect((await get(`${base}api/overview`)).status).toBe(401);
      expect((await get(`${base}api/overview?token=s3cret-token`)).status).toBe(200);
    } finally {
      await ui.stop();
    }
  });
});

describe("kaos ui and a config that imports an ES module", () => {
  it("shows the sweep of the module's current text after it is edited", async () => {
    const project = makeProject(
      trainingProject({
        extra: {
          "grid.mjs": "export default { score: [1] };\n",
          "kaos.config.ts":
            'import { defineConfig } from "kaos-ml";\nimport grid from "./grid.mjs";\n\nexport default defineConfig({ pipelines: { p: { source: "src", data: "data", hyperparams: grid } } });\n',
        },
      }),
    );
    const { ui, url } = await serve(project);
    try {
      const scores = async () =>
        (await getJson<{ items: { params: { score: number } }[] }>(`${url}api/pipelines/p/sweep`)).items.map((row) => row.params.score);
      expect(await scores()).toEqual([1]);
      writeFileSync(project.path("grid.mjs"), "export default { score: [1, 2] };\n");
      // A run recorded since: the dashboard reads the config again.
      const state = StateStore.open(project.dir);
      try {
        state.beginRun("local", "up");
      } finally {
        state.close();
      }
      expect(await scores()).toEqual([1, 2]);
    } finally {
      await ui.stop();
      project.remove();
    }
  });
});
