import { chmodSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { makeProject, runKaos, type Project } from "./helpers/rig.js";
import { trainingProject } from "./helpers/jobs.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

interface PlanJson {
  stack: string;
  changes: boolean;
  pipelines: {
    name: string;
    stages: Record<string, { action: "run" | "skip"; key: string | null; reason: string }>;
    keys: { env: string; source: string; data: string; hyperparams: string };
    jobs: { key: string; params: Record<string, unknown>; action: "run" | "skip"; reason: string }[];
    changes: {
      source: { added: number; changed: number; removed: number; bytesAdded: number; bytesRemoved: number; examples: string[] } | null;
      data: { added: number; changed: number; removed: number; bytesAdded: number; bytesRemoved: number; examples: string[] } | null;
      env: boolean;
      paramsAdded: Record<string, unknown>[];
      paramsRemoved: Record<string, unknown>[];
    };
  }[];
}

async function planJson(project: Project): Promise<PlanJson> {
  const result = await runKaos(["plan", "--json"], { cwd: project.dir });
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as PlanJson;
}

describe("kaos plan (built CLI)", () => {
  it("prints the plan as text, as JSON, and in colour on a terminal; --detailed-exitcode says whether anything would run", async () => {
    const project = makeProject(trainingProject({ grid: { kernel: ["linear", "poly"], C: 1 } }));
    projects.push(project);
    const text = await runKaos(["plan"], { cwd: project.dir });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^stack local: 1 pipeline, \d+ files checked/);
    expect(text.stdout).toMatch(/\n {2}build {3}run {3}environment not built yet {2}[0-9a-f]{12}\n/);
    expect(text.stdout).toMatch(/\n {4}run {3}1\/2 {5}C=1 kernel=linear {2}never ran\n/);
    expect(text.stdout).toContain("Plan: 1 stage and 2 jobs to run, 0 skipped.");
    expect(text.stdout).not.toMatch(/\u001b\[/);

    const coloured = await runKaos(["plan"], { cwd: project.dir, env: { NO_COLOR: undefined, FORCE_COLOR: "1" } });
    expect(coloured.stdout).toMatch(/\u001b\[1mp\u001b\[22m/);
    expect(coloured.stdout).toMatch(/\u001b\[33mrun /);

    const json = await planJson(project);
    expect(json.stack).toBe("local");
    expect(json.changes).toBe(true);
    const [pipeline] = json.pipelines;
    expect(pipeline?.name).toBe("p");
    expect(Object.keys(pipeline!.stages)).toEqual(["build", "train"]);
    expect(pipeline?.stages.build).toEqual({ action: "run", key: pipeline?.keys.env, reason: "environment not built yet" });
    expect(pipeline?.jobs.map((job) => job.params)).toEqual([
      { C: 1, kernel: "linear" },
      { C: 1, kernel: "poly" },
    ]);
    for (const key of [pipeline!.keys.env, pipeline!.keys.source, pipeline!.keys.data, ...pipeline!.jobs.map((job) => job.key)])
      expect(key).toMatch(/^[0-9a-f]{64}$/);

    expect((await runKaos(["plan", "--detailed-exitcode"], { cwd: project.dir })).code).toBe(2);
    expect((await runKaos(["up"], { cwd: project.dir })).code).toBe(0);
    const nothing = await runKaos(["plan", "--detailed-exitcode"], { cwd: project.dir });
    expect(nothing.code).toBe(0);
    expect(nothing.stdout).toContain("No changes: 2 jobs already succeeded.");
  });

  it("of a manifest never ingested, says how many entries it will download and what their stated sizes come to", async () => {
    const line = (name: string, size?: number) => JSON.stringify({ url: `https://data.example.com/${name}`, path: name, size });
    const project = makeProject(
      trainingProject({ extra: { "m.jsonl": `${[line("a.csv", 1536), line("b.csv", 512), line("c.csv")].join("\n")}\n` } }),
    );
    projects.push(project);
    writeFileSync(
      project.path("kaos.config.ts"),
      readFileSync(project.path("kaos.config.ts"), "utf8").replace(`"data":"data"`, `"manifest":"m.jsonl"`),
    );
    const text = await runKaos(["plan"], { cwd: project.dir });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain("\n  ingest  run   3 of 3 entries not downloaded yet (2.0 KiB, and 1 of unknown size)\n");
    expect(text.stdout).toContain("\n          manifest: 3 entries, 3 to download (2.0 KiB, and 1 of unknown size)\n");
    const json = await planJson(project);
    expect(json.pipelines[0]?.stages["ingest"]).toEqual({
      action: "run",
      key: null,
      reason: "3 of 3 entries not downloaded yet (2.0 KiB, and 1 of unknown size)",
    });

    writeFileSync(project.path("m.jsonl"), `${[line("a.csv", 1536), line("b.csv", 512)].join("\n")}\n`);
    expect((await planJson(project)).pipelines[0]?.stages["ingest"]?.reason).toBe("2 of 2 entries not downloaded yet (2.0 KiB)");
  });

  it("a job key does not depend on the order params are written in, nor on where the project lives", async () => {
    const one = makeProject(trainingProject({ grid: { a: [1, 2], b: "x" } }));
    const two = makeProject(trainingProject({ grid: { b: "x", a: [1, 2] } }));
    projects.push(one, two);
    const [first, second] = [await planJson(one), await planJson(two)];
    expect(first.pipelines[0]?.jobs.map((job) => job.key)).toEqual(second.pipelines[0]?.jobs.map((job) => job.key));
    expect(first.pipelines[0]?.keys).toEqual(second.pipelines[0]?.keys);
  });

  it("explains what changed since the last up: files added, changed, removed with sizes, mode changes, params added and removed", async () => {
    const project = makeProject(trainingProject({ grid: { n: [1, 2] }, extra: { "data/old.csv": "0123456789", "data/keep.csv": "k" } }));
    projects.push(project);
    expect((await runKaos(["up"], { cwd: project.dir })).code).toBe(0);
    writeFileSync(project.path("data/new.csv"), "x".repeat(2048));
    writeFileSync(project.path("data/keep.csv"), "K");
    rmSync(project.path("data/old.csv"));
    writeFileSync(project.path("src/model/helper.py"), "print(1)\n");
    chmodSync(project.path("src/model/requirements.txt"), 0o755);
    writeFileSync(project.path("grid.json"), JSON.stringify({ n: [2, 3] }));
    const plan = await planJson(project);
    const [pipeline] = plan.pipelines;
    expect(pipeline?.changes.data).toMatchObject({ added: 1, changed: 1, removed: 1, bytesAdded: 2048, bytesRemoved: 10 });
    expect(pipeline?.changes.data?.examples).toEqual(["+new.csv", "~keep.csv", "-old.csv"]);
    expect(pipeline?.changes.source).toMatchObject({ added: 1, changed: 1, removed: 0 });
    expect(pipeline?.changes.paramsAdded).toEqual([{ n: 3 }]);
    expect(pipeline?.changes.paramsRemoved).toEqual([{ n: 1 }]);
    expect(pipeline?.stages.build?.action).toBe("skip");
    expect(pipeline?.jobs.map((job) => job.reason)).toEqual([
      "source: 1 added, 1 changed; data: 1 added, 1 changed, 1 removed",
      "new combination",
    ]);
    const text = await runKaos(["plan"], { cwd: project.dir });
    expect(text.stdout).toContain("data: 1 added (2.0 KiB), 1 changed, 1 removed (10 B)  [+new.csv ~keep.csv -old.csv]");
    expect(text.stdout).toContain("params: 1 combination added, 1 removed");
  });

  it("an editor's swap and lock files beside the bundles' files change nothing", async () => {
    const project = makeProject(trainingProject({ extra: { "data/a.csv": "1" } }));
    projects.push(project);
    expect((await runKaos(["up"], { cwd: project.dir })).code).toBe(0);
    writeFileSync(project.path("src/model/.train.swp"), "vim has train open");
    writeFileSync(project.path("data/.a.csv.swp"), "vim has a.csv open");
    writeFileSync(project.path("data/.DS_Store"), "finder");
    const plan = await planJson(project);
    expect(plan.changes).toBe(false);
    // A file that only looks like one near the name is data.
    writeFileSync(project.path("data/a.csv~"), "1");
    expect((await planJson(project)).pipelines[0]?.changes.data?.examples).toEqual(["+a.csv~"]);
  });

  it("a rename is a removal and an addition; a file moved back restores the old keys", async () => {
    const project = makeProject(trainingProject({ extra: { "data/a.csv": "same" } }));
    projects.push(project);
    const before = await planJson(project);
    expect((await runKaos(["up"], { cwd: project.dir })).code).toBe(0);
    renameSync(project.path("data/a.csv"), project.path("data/b.csv"));
    const renamed = await planJson(project);
    expect(renamed.pipelines[0]?.changes.data).toMatchObject({ added: 1, removed: 1, changed: 0 });
    expect(renamed.pipelines[0]?.keys.data).not.toBe(before.pipelines[0]?.keys.data);
    renameSync(project.path("data/b.csv"), project.path("data/a.csv"));
    const back = await planJson(project);
    expect(back.pipelines[0]?.keys.data).toBe(before.pipelines[0]?.keys.data);
    expect(back.changes).toBe(false);
  });
});
