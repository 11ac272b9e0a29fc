/**
 * Comparing the jobs of a sweep, end to end with the built CLI: a pipeline's
 * sweep is every combination its grid names now, with the job last recorded
 * for it in whichever run (reused jobs included), as `train info`, `train
 * compare`, `train get --best` and `train list` show it.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { trainingProject, type ListedJob } from "./helpers/jobs.js";
import { makeProject, runKaos, startKaos, type Project } from "./helpers/rig.js";

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

async function kaos(made: Project, args: string[], env: Record<string, string> = {}) {
  const result = await runKaos(args, { cwd: made.dir, env });
  expect(result.code, `kaos ${args.join(" ")}\n${result.stderr}`).toBe(0);
  return result;
}

async function trainJobs(made: Project): Promise<ListedJob[]> {
  const listed = JSON.parse((await kaos(made, ["train", "list", "--json"])).stdout) as ListedJob[];
  return listed.filter((job) => job.stage === "train");
}

interface SweepEntry {
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
});
