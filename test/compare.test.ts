/**
 * Comparing the jobs of a sweep, end to end with the built CLI: a pipeline's
 * sweep is every combination its grid names now, with the job last recorded
 * for it in whichever run (reused jobs included), as `train info`, `train
 * compare`, `train get --best` and `train list` show it.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { StateStore } from "../src/core/state.js";
import { trainingProject, type ListedJob } from "./helpers/jobs.js";
import { REPO_ROOT, makeProject, runKaos, runKaosOk, startKaos, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

/**
 * Writes score/3 and 1/score as metrics and a per-step curve; a job whose
 * score is above `GATE_ABOVE` waits for the file $GATE before it ends.
 */
const TRAIN = `#!/usr/bin/env python3
import json, os, sys, time
out = sys.argv[1]
params = json.load(open(os.environ["KAOS_PARAMS_FILE"]))
gate = os.environ.get("GATE")
if gate and params["score"] > int(os.environ.get("GATE_ABOVE", "0")):
    while not os.path.exists(gate):
        time.sleep(0.02)
os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
with open(os.path.join(out, "metrics", "curve.jsonl"), "w") as f:
    for step in range(3):
        f.write(json.dumps({"step": step * 10, "lr": 0.1 / (step + 1)}) + "\\n")
with open(os.path.join(out, "metrics", "m.json"), "w") as f:
    json.dump({"score": params["score"] / 3, "loss": 1 / params["score"]}, f)
with open(os.path.join(out, "model.txt"), "w") as f:
    f.write(f"model {params['score']} {params.get('kernel')}")
`;

function project(grid: unknown): Project {
  const made = makeProject(
    trainingProject({ extra: { "grid.json": JSON.stringify(grid), "src/model/train": { content: TRAIN, mode: 0o755 } } }),
  );
  projects.push(made);
  return made;
}

function kaos(made: Project, args: string[], env: Record<string, string> = {}) {
  return runKaosOk(args, { cwd: made.dir, env });
}

async function trainJobs(made: Project): Promise<ListedJob[]> {
  const listed = JSON.parse((await kaos(made, ["train", "list", "--json"])).stdout) as ListedJob[];
  return listed.filter((job) => job.stage === "train");
}

interface SweepEntry {
  index: number;
  id: string | null;
  state: string;
  params: { score: number; kernel?: string };
  metrics: Record<string, number>;
}

async function infoSweep(made: Project, args: string[]): Promise<SweepEntry[]> {
  return (JSON.parse((await kaos(made, ["train", "info", ...args, "--json"])).stdout) as { sweep: SweepEntry[] }).sweep;
}

describe("a pipeline's sweep (built CLI, real processes)", () => {
  it("train info shows every combination of the grid now, the jobs reused from earlier runs included", async () => {
    const made = project({ score: [1, 2], kernel: ["a", "b"] });
    await kaos(made, ["up"]);
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [1, 2, 3], kernel: ["a", "b"] }));
    const up = await kaos(made, ["up"]);
    expect(up.stderr).toContain("2 succeeded, 0 failed, 0 cancelled, 4 reused");
    const jobs = await trainJobs(made);
    expect(jobs).toHaveLength(6);
    // A job of the second run: its sweep holds the four reused combinations too.
    const newest = jobs.find((job) => job.params.score === 3)!;
    const sweep = await infoSweep(made, [newest.id, "-s", "score"]);
    expect(sweep.map((row) => [row.params.score, row.params.kernel, row.state])).toEqual([
      [3, "a", "succeeded"],
      [3, "b", "succeeded"],
      [2, "a", "succeeded"],
      [2, "b", "succeeded"],
      [1, "a", "succeeded"],
      [1, "b", "succeeded"],
    ]);
    expect(new Set(sweep.map((row) => row.id))).toEqual(new Set(jobs.map((job) => job.id)));
    // Lowest first for a loss; and the same sweep without a job id.
    const byLoss = await infoSweep(made, ["-s", "loss", "--asc"]);
    expect(byLoss.map((row) => row.metrics.loss)).toEqual([1 / 3, 1 / 3, 0.5, 0.5, 1, 1]);

    // A value added and not yet run is pending.
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [1, 2, 3, 4], kernel: ["a"] }));
    const grown = await infoSweep(made, ["-s", "score"]);
    expect(grown.map((row) => [row.params.score, row.state])).toEqual([
      [3, "succeeded"],
      [2, "succeeded"],
      [1, "succeeded"],
      [4, "pending"],
    ]);
    expect(grown[3]!.id).toBeNull();
  });

  it("after Ctrl-C and a resumed up, the sweep holds the finished jobs of both runs, not the cancelled ones", async () => {
    const made = project({ score: [1, 2, 3] });
    const gate = made.path("gate");
    const env = { GATE: gate, GATE_ABOVE: "1" };
    const up = startKaos(["up"], { cwd: made.dir, env });
    await up.waitFor(/train 2\/3 \w+ .*running/);
    expect((await up.stop("SIGINT")).code).toBe(1);
    const first = await trainJobs(made);
    expect(first.map((job) => [job.params.score, job.state]).sort()).toContainEqual([2, "cancelled"]);

    writeFileSync(gate, "");
    const resumed = await kaos(made, ["up"], env);
    expect(resumed.stderr).toContain("1 reused");
    const succeeded = (await trainJobs(made)).filter((job) => job.state === "succeeded");
    expect(succeeded).toHaveLength(3);
    const ofResumed = succeeded.find((job) => job.params.score === 3)!;
    for (const args of [[ofResumed.id], [first.find((job) => job.state === "cancelled")!.id], []]) {
      const sweep = await infoSweep(made, args);
      expect(sweep.map((row) => [row.params.score, row.state])).toEqual([
        [1, "succeeded"],
        [2, "succeeded"],
        [3, "succeeded"],
      ]);
      expect(new Set(sweep.map((row) => row.id))).toEqual(new Set(succeeded.map((job) => job.id)));
    }
  });

  it("train compare shows the sweep without a job id, and train get --best fetches its best succeeded job", async () => {
    const made = project({ score: [1, 2, 3], kernel: "rbf" });
    await kaos(made, ["up"]);
    const jobs = await trainJobs(made);
    const idOf = (score: number) => jobs.find((job) => job.params.score === score)!.id;

    const compared = JSON.parse((await kaos(made, ["train", "compare", "-s", "loss", "--asc", "--json"])).stdout) as {
      pipeline: string;
      sweep: SweepEntry[];
    };
    expect(compared.pipeline).toBe("p");
    expect(compared.sweep.map((row) => [row.params.score, row.id, row.state])).toEqual([
      [3, idOf(3), "succeeded"],
      [2, idOf(2), "succeeded"],
      [1, idOf(1), "succeeded"],
    ]);
    // The dashboard's sweep gives the same rows in the same shape, in grid order.
    const ui = startKaos(["ui", "--port", "0"], { cwd: made.dir });
    try {
      const url = /kaos ui: (http:\/\/\S+)/.exec(await ui.waitFor(/kaos ui: http:\/\/\S+\n/))![1]!;
      const served = (await (await fetch(`${url}api/pipelines/p/sweep`)).json()) as { items: unknown[] };
      const inGridOrder = [...compared.sweep].sort((a, b) => a.index - b.index);
      expect(served.items).toEqual(inGridOrder);
      expect(inGridOrder.map((row) => row.index)).toEqual([0, 1, 2]);
      expect(inGridOrder[0]).toMatchObject({ key: expect.stringMatching(/^[0-9a-f]{64}$/) as string, collectedAt: null });
    } finally {
      await ui.stop();
    }
    const table = (await kaos(made, ["train", "compare", "p", "-s", "score"])).stdout.split("\n");
    expect(table[0]).toBe("sweep of p: 3 combinations (3 succeeded), by score");
    expect(table[1]).toMatch(/^kernel\s+score\s+score \(metric\)\s+loss\s+lr\s+STATE\s+ID$/);
    expect(table[2]).toMatch(new RegExp(`^rbf\\s+3\\s+1\\s+.*succeeded\\s+${idOf(3)}$`));

    // Tables round to 4 significant digits; --json is exact. Per-step fields tell how far they got.
    expect(table[4]).toMatch(/^rbf\s+1\s+0\.3333\s+1\s+0\.03333\s+succeeded/);
    expect(compared.sweep[2]!.metrics).toEqual({ score: 1 / 3, loss: 1, lr: 0.1 / 3 });
    const info = (await kaos(made, ["train", "info", idOf(1)])).stdout;
    expect(info).toContain("\n  score  0.3333\n  loss  1\n  lr  0.03333  (series: last step 20, 3 points)\n");
    const infoJson = JSON.parse((await kaos(made, ["train", "info", idOf(1), "--json"])).stdout) as { metrics: unknown; series: unknown };
    expect(infoJson.metrics).toEqual({ score: 1 / 3, loss: 1, lr: 0.1 / 3 });
    expect(infoJson.series).toEqual({ lr: { points: 3, lastStep: 20 } });

    const best = await kaos(made, ["train", "get", "--best", "score", "-o", "best"]);
    expect(best.stdout).toBe(`copied job ${idOf(3)} to ${made.path("best")}\n`);
    expect(readFileSync(made.path("best", "out", "model.txt"), "utf8")).toBe("model 3 rbf");
    const lowest = await kaos(made, ["train", "get", "--best", "loss", "--asc", "--pipeline", "p", "-o", "lowest"]);
    expect(lowest.stdout).toContain(`copied job ${idOf(3)}`);
    const highestLoss = await kaos(made, ["train", "get", "--best", "loss", "-o", "worst"]);
    expect(highestLoss.stdout).toContain(`copied job ${idOf(1)}`);

    const missing = await runKaos(["train", "get", "--best", "accuracy", "-o", "none"], { cwd: made.dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(
      'error: --best accuracy: none of the 3 succeeded jobs of pipeline p\'s sweep has a numeric metric "accuracy"; expected one of: loss, lr, score',
    );
    expect(existsSync(made.path("none"))).toBe(false);
    const neither = await runKaos(["train", "get"], { cwd: made.dir });
    expect(neither.code).toBe(1);
    expect(neither.stderr).toContain("expected a job id, or --best METRIC");
  });

  it("with several pipelines, names them; on a kubernetes stack, says it is not supported", async () => {
    const made = project({ score: [1] });
    made.write({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", data: "data", hyperparams: "grid.json" }, q: { source: "src", data: "data" } } });\n`,
      "stacks/cluster.ts": readFileSync(join(REPO_ROOT, "stacks/cluster.ts"), "utf8"),
    });
    const which = await runKaos(["train", "compare"], { cwd: made.dir });
    expect(which.code).toBe(1);
    expect(which.stderr).toContain("has 2 pipelines; name one: p, q");
    // Each hint is a command line that command takes.
    expect(which.stderr).toContain("hint: for example `kaos train compare p`\n");
    const info = await runKaos(["train", "info"], { cwd: made.dir });
    expect(info.stderr).toContain("hint: for example `kaos train info --pipeline p`\n");
    const best = await runKaos(["train", "get", "--best", "score"], { cwd: made.dir });
    expect(best.stderr).toContain("has 2 pipelines; name one: p, q");
    expect(best.stderr).toContain("hint: for example `kaos train get --best score --pipeline p`\n");
    for (const args of [
      ["train", "compare", "q", "--stack", "cluster"],
      ["train", "get", "--best", "score", "--pipeline", "q", "--stack", "cluster"],
    ]) {
      const cluster = await runKaos(args, { cwd: made.dir });
      expect(cluster.code).toBe(1);
      expect(cluster.stderr).toMatch(
        /error: kaos train (compare|get --best) reads the local backend's state; stack cluster uses the kubernetes backend/,
      );
    }
    // The second pipeline, never run, is one pending job.
    const pending = JSON.parse((await kaos(made, ["train", "compare", "q", "--json"])).stdout) as { sweep: SweepEntry[] };
    expect(pending.sweep).toEqual([
      {
        index: 0,
        key: expect.any(String) as string,
        id: null,
        runId: null,
        state: "pending",
        params: {},
        metrics: {},
        finishedAt: null,
        collectedAt: null,
      },
    ]);
  });

  it("train list filters by pipeline, state and run, pages by default, and shows the leading metric", async () => {
    const made = project({ score: [1, 2] });
    await kaos(made, ["up"]);
    const [newest, older] = await trainJobs(made);
    const listed = (await kaos(made, ["train", "list", "--pipeline", "p"])).stdout.split("\n");
    expect(listed[0]).toMatch(/^ID\s+PIPELINE\s+STAGE\s+STATE\s+N\/N\s+STARTED\s+DURATION\s+score\s+PARAMS$/);
    expect(listed[1]).toMatch(new RegExp(`^${newest!.id}\\s+p\\s+train\\s+succeeded\\s+2/2\\s.*\\s0\\.6667\\s+score=2$`));

    // Jobs of other runs, pipelines and states, recorded through the store.
    const state = StateStore.open(made.dir);
    let otherRun: string;
    try {
      const run = state.beginRun("local", "up");
      otherRun = run.id;
      for (let index = 0; index < 60; index++) {
        const job = state.createJob({
          runId: run.id,
          stack: "local",
          pipeline: "other",
          stage: "train",
          key: `${index}`.padStart(64, "0"),
          params: { index },
          envKey: null,
          sourceKey: null,
          dataKey: null,
          paramsKey: null,
          sweepIndex: index,
          sweepSize: 60,
          outputDir: null,
          logFile: null,
        });
        state.finishJob(job.id, index % 2 === 0 ? { state: "failed", exitCode: 1 } : { state: "cancelled", exitCode: null });
      }
      state.finishRun(run.id, "failed");
    } finally {
      state.close();
    }
    const page = (await kaos(made, ["train", "list"])).stdout.trimEnd().split("\n");
    const total = 1 + 2 + 60; // the build, the two train jobs of p, the sixty of "other"
    expect(page).toHaveLength(52);
    expect(page[51]).toBe(`${total - 50} more; --limit N shows more, --all every one`);
    expect((await kaos(made, ["train", "list", "--all"])).stdout.trimEnd().split("\n")).toHaveLength(total + 1);
    const limited = (await kaos(made, ["train", "list", "--limit", "3"])).stdout.trimEnd().split("\n");
    expect(limited).toHaveLength(5);
    expect(limited[4]).toBe(`${total - 3} more; --limit N shows more, --all every one`);

    const json = async (args: string[]) => JSON.parse((await kaos(made, ["train", "list", ...args, "--json"])).stdout) as ListedJob[];
    expect(await json([])).toHaveLength(total);
    expect((await json(["--state", "failed"])).map((job) => job.state)).toEqual(Array(30).fill("failed"));
    expect((await json(["--pipeline", "p", "--state", "succeeded"])).filter((job) => job.stage === "train").map((job) => job.id)).toEqual([
      newest!.id,
      older!.id,
    ]);
    expect(await json(["--run", otherRun, "--limit", "2"])).toHaveLength(2);
    expect((await json(["--run", otherRun])).every((job) => job.pipeline === "other")).toBe(true);
    expect((await kaos(made, ["train", "list", "--pipeline", "nope"])).stdout).toBe("no jobs match\n");
    const badState = await runKaos(["train", "list", "--state", "done"], { cwd: made.dir });
    expect(badState.code).toBe(1);
    expect(badState.stderr).toContain("Allowed choices are queued, running, succeeded, failed, cancelled");
  });
});
