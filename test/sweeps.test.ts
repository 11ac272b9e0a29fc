/**
 * Search spaces beyond one grid, and per-step metrics, end to end with the
 * built CLI: what `kaos plan --json` shows, what `kaos up` runs and reuses,
 * and what `kaos train info --json` reads back.
 */
import { writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { readMarks, trainingProject, type ListedJob } from "./helpers/jobs.js";
import { makeProject, runKaos, type FileMap, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

function project(hyperparams: unknown, extra: FileMap = {}): Project {
  const made = makeProject(trainingProject({ extra: { "grid.json": JSON.stringify(hyperparams, null, 2), ...extra } }));
  projects.push(made);
  return made;
}

async function kaos(made: Project, args: string[]) {
  const result = await runKaos(args, { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log") } });
  expect(result.code, result.stderr).toBe(0);
  return result;
}

interface PlannedJob {
  params: Record<string, unknown>;
  action: "run" | "skip";
  reason: string;
}

async function plannedJobs(made: Project): Promise<PlannedJob[]> {
  const plan = JSON.parse((await kaos(made, ["plan", "--json"])).stdout) as { pipelines: { jobs: PlannedJob[] }[] };
  return plan.pipelines[0]!.jobs;
}

/** The params of every job the train script started, in the order it started them. */
function started(made: Project): string[] {
  return readMarks(made.path("marks.log"))
    .filter((mark) => mark.what === "start")
    .map((mark) => mark.params);
}

describe("search spaces (built CLI, real processes)", () => {
  it("a list of grids runs their union once, and a second `up` reuses every job", async () => {
    const made = project([
      { score: [1, 2], kernel: "linear" },
      { score: [2, 3], kernel: ["linear", "poly"] },
    ]);
    const jobs = await plannedJobs(made);
    expect(jobs.map((job) => job.params)).toEqual([
      { kernel: "linear", score: 1 },
      { kernel: "linear", score: 2 },
      { kernel: "linear", score: 3 },
      { kernel: "poly", score: 2 },
      { kernel: "poly", score: 3 },
    ]);
    expect(jobs.every((job) => job.action === "run")).toBe(true);

    const up = await kaos(made, ["up"]);
    expect(up.stderr).toContain("5 succeeded, 0 failed, 0 cancelled, 0 reused");
    expect(started(made)).toHaveLength(5);
    const again = await kaos(made, ["up"]);
    expect(again.stderr).toContain("nothing to do");
    expect(started(made)).toHaveLength(5);

    // A grid added to the list runs only what no earlier grid gave.
    writeFileSync(
      made.path("grid.json"),
      JSON.stringify([
        { score: [1, 2], kernel: "linear" },
        { score: [2, 3], kernel: ["linear", "poly"] },
        { score: [1, 4], kernel: "poly" },
      ]),
    );
    expect((await plannedJobs(made)).filter((job) => job.action === "run").map((job) => job.params)).toEqual([
      { kernel: "poly", score: 1 },
      { kernel: "poly", score: 4 },
    ]);
    await kaos(made, ["up"]);
    expect(started(made).slice(5).sort()).toEqual(['{"kernel": "poly", "score": 1}', '{"kernel": "poly", "score": 4}']);
  });

  it("a random search plans the same jobs every time, reuses them, and growing `samples` runs only the new ones", async () => {
    const search = (samples: number) => ({
      search: "random",
      seed: 11,
      samples,
      space: { score: { intRange: [1, 1000] }, lr: { logUniform: [0.0001, 0.1] }, kernel: { choice: ["rbf", "poly"] }, lines: 0 },
    });
    const made = project(search(3));
    const first = await plannedJobs(made);
    expect(first).toHaveLength(3);
    expect(await plannedJobs(made)).toEqual(first);
    for (const { params } of first) {
      expect(Object.keys(params)).toEqual(["kernel", "lines", "lr", "score"]);
      expect(Number.isInteger(params.score)).toBe(true);
      expect(params.lr).toBeGreaterThanOrEqual(0.0001);
      expect(params.lr).toBeLessThanOrEqual(0.1);
    }

    await kaos(made, ["up"]);
    expect(started(made)).toHaveLength(3);
    expect((await kaos(made, ["up"])).stderr).toContain("nothing to do");
    expect(started(made)).toHaveLength(3);

    writeFileSync(made.path("grid.json"), JSON.stringify(search(5)));
    const grown = await plannedJobs(made);
    expect(grown.slice(0, 3).map((job) => job.params)).toEqual(first.map((job) => job.params));
    expect(grown.map((job) => job.action)).toEqual(["skip", "skip", "skip", "run", "run"]);
    await kaos(made, ["up"]);
    const byScore = (a: Record<string, unknown>, b: Record<string, unknown>) => Number(a.score) - Number(b.score);
    const ranNow = started(made)
      .slice(3)
      .map((params) => JSON.parse(params) as Record<string, unknown>);
    expect(ranNow.sort(byScore)).toEqual(
      grown
        .slice(3)
        .map((job) => job.params)
        .sort(byScore),
    );
  });
});

describe("a hyperparams file that names a parameter twice (built CLI)", () => {
  it("is refused with both lines, and nothing runs, rather than the first candidates dropped", async () => {
    const made = project({});
    writeFileSync(made.path("grid.json"), `{\n  "score": [1, 2],\n  "kernel": "linear",\n  "score": [3]\n}\n`);
    for (const command of ["plan", "up"]) {
      const result = await runKaos([command], { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log") } });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`${made.path("grid.json")}:4: "score": written twice in one object (first on line 2)`);
    }
    expect(started(made)).toEqual([]);
  });
});

describe("per-step metrics (built CLI, real processes)", () => {
  it("a job that appends OUT/metrics/*.jsonl gets each field's last value as a metric, a .json overriding", async () => {
    const train = `#!/usr/bin/env python3
import json, os, sys
out = sys.argv[1]
os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
with open(os.path.join(out, "metrics", "curve.jsonl"), "a") as f:
    for step, loss in enumerate([0.9, 0.5, 0.25]):
        f.write(json.dumps({"step": step * 10, "loss": loss, "accuracy": 1 - loss}) + "\\n")
        f.flush()
    f.write("not json\\n")
with open(os.path.join(out, "metrics", "final.json"), "w") as f:
    json.dump({"accuracy": 0.8}, f)
`;
    const made = project({}, { "src/model/train": { content: train, mode: 0o755 } });
    await kaos(made, ["up"]);
    const jobs = JSON.parse((await kaos(made, ["train", "list", "--json"])).stdout) as ListedJob[];
    const job = jobs.find((entry) => entry.stage === "train")!;
    const info = JSON.parse((await kaos(made, ["train", "info", job.id, "--json"])).stdout) as {
      metrics: Record<string, unknown>;
      metricsSkipped: unknown[];
    };
    expect(info.metrics).toEqual({ accuracy: 0.8, loss: 0.25 });
    expect(info.metricsSkipped).toEqual([{ file: "metrics/curve.jsonl:4", reason: expect.stringMatching(/^not valid JSON \(/) as string }]);
  });
});
