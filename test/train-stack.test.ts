/**
 * `kaos train info`, `get`, `kill` and `compare` with `--stack`, end to end
 * with the built CLI: on a second local stack, through its backend; on a
 * kubernetes stack, what pachd's API can say (a job, where its outputs are)
 * and, for what it cannot do, which pachctl command does it.
 */
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { FakePachd } from "./fixtures/kubernetes/fake-pachd.js";
import { trainingProject, type ListedJob } from "./helpers/jobs.js";
import { fileContent, makeProject, runKaos, runKaosOk, startKaos, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() => {
  for (const project of projects) project.remove();
});

function project(grid: unknown, extra: Record<string, string> = {}): Project {
  const made = makeProject(trainingProject({ grid: grid as Record<string, unknown>, extra }));
  projects.push(made);
  return made;
}

function kaos(made: Project, args: string[], env: Record<string, string> = {}) {
  return runKaosOk(args, { cwd: made.dir, env });
}

async function trainJobs(made: Project, stack: string): Promise<ListedJob[]> {
  const listed = JSON.parse((await kaos(made, ["train", "list", "--stack", stack, "--json"])).stdout) as ListedJob[];
  return listed.filter((job) => job.stage === "train");
}

describe("train info, get, kill and compare --stack on a local stack (built CLI, real processes)", () => {
  const LOCAL_STACK = { "stacks/other.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local" });\n` };

  it("show, rank and copy the jobs of the stack's sweep, and refuse to kill a job that ended", async () => {
    const made = project({ score: [1, 2] }, LOCAL_STACK);
    await kaos(made, ["up", "--stack", "other"]);
    const jobs = await trainJobs(made, "other");
    expect(jobs).toHaveLength(2);
    const best = jobs.find((job) => job.params.score === 2)!;

    const info = await kaos(made, ["train", "info", best.id, "--stack", "other", "-s", "score"]);
    expect(info.stdout).toContain(`job ${best.id}  p train  succeeded`);
    expect(info.stdout).toContain("sweep (2 combinations, by score)");
    const infoJson = JSON.parse((await kaos(made, ["train", "info", best.id, "--stack", "other", "--json"])).stdout) as {
      id: string;
      metrics: Record<string, unknown>;
      sweep: { id: string }[];
    };
    expect(infoJson.id).toBe(best.id);
    expect(infoJson.metrics.score).toBe(2);
    expect(infoJson.sweep.map((row) => row.id).sort()).toEqual(jobs.map((job) => job.id).sort());

    const compare = JSON.parse((await kaos(made, ["train", "compare", "--stack", "other", "-s", "score", "--json"])).stdout) as {
      sweep: { id: string; state: string }[];
    };
    expect(compare.sweep.map((row) => [row.id, row.state])).toEqual([
      [best.id, "succeeded"],
      [jobs.find((job) => job.id !== best.id)!.id, "succeeded"],
    ]);

    const get = await kaos(made, ["train", "get", "--best", "score", "--stack", "other", "-o", "best", "--params"]);
    expect(get.stdout).toBe(`copied job ${best.id} to ${made.path("best")}\n`);
    expect(JSON.parse(readFileSync(made.path("best/out/metrics/m.json"), "utf8"))).toMatchObject({ score: 2 });
    expect(JSON.parse(readFileSync(made.path("best/params.json"), "utf8"))).toEqual({ score: 2 });

    const kill = await runKaos(["train", "kill", best.id, "--stack", "other"], { cwd: made.dir });
    expect(kill.code).toBe(1);
    expect(kill.stderr).toContain(`job ${best.id} is succeeded; only a queued or running job can be killed`);
    const missing = await runKaos(["train", "info", "zzzz", "--stack", "other"], { cwd: made.dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no job matches 'zzzz'");
  });

  it("train kill --stack stops a running job of that stack; it is recorded as cancelled", async () => {
    const made = project({ sleep: 60 }, LOCAL_STACK);
    mkdirSync(made.path("pids"));
    const up = startKaos(["up", "--stack", "other"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids") } });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    const [job] = await trainJobs(made, "other");
    // The script writes its pid first thing: once the file is there, it runs.
    await fileContent(made.path("pids", job!.id));
    const kill = await kaos(made, ["train", "kill", job!.id, "--stack", "other"]);
    expect(kill.stdout).toBe(`cancelled job ${job!.id}\n`);
    expect((await up.exited).code).toBe(1);
    const [after] = await trainJobs(made, "other");
    expect(after?.state).toBe("cancelled");
  });
});

describe("train info, get, kill and compare --stack on a kubernetes stack (built CLI, pachd's API on 127.0.0.1)", () => {
  const KEY_1 = "3f".repeat(32);
  const KEY_2 = "9c".repeat(32);
  let pachd: FakePachd;
  let made: Project;

  beforeEach(async () => {
    pachd = new FakePachd();
    const address = await pachd.start();
    made = project(
      { lr: [0.1, 0.2] },
      {
        "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ workspace: "mnist", pipelines: { p: { source: "src", data: "data", hyperparams: "grid.json" } } });\n`,
        "stacks/cluster.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "kubernetes", namespace: "pachyderm", pachyderm: { address: "${address}" }, registry: { url: "registry.example.com/ml" } });\n`,
      },
    );
    pachd.seedCommit("default", "mnist-p-params", {
      id: "c1",
      files: new Map([
        [`/${KEY_1}.json`, Buffer.from(JSON.stringify({ lr: 0.1 }))],
        [`/${KEY_2}.json`, Buffer.from(JSON.stringify({ lr: 0.2 }))],
      ]),
    });
    // What the train script of each combination wrote under /pfs/out/<job key> of the output commit.
    pachd.seedCommit("default", "mnist-p-train", {
      id: "j1",
      files: new Map([
        [`/${KEY_1}/model.txt`, Buffer.from("model 0.1")],
        [`/${KEY_1}/metrics/m.json`, Buffer.from('{"score": 0.5}')],
      ]),
    });
    pachd.jobs = [
      {
        pipeline: "mnist-p-train",
        id: "j2",
        state: "JOB_RUNNING",
        started: "2026-01-02T00:00:00Z",
        datums: [{ id: "d2", state: "STARTING", paramsFile: `/${KEY_2}.json`, paramsRepo: "mnist-p-params", commit: "c1" }],
      },
      {
        pipeline: "mnist-p-train",
        id: "j1",
        state: "JOB_SUCCESS",
        started: "2026-01-01T00:00:00Z",
        finished: "2026-01-01T01:00:00Z",
        datums: [{ id: "d1", state: "SUCCESS", paramsFile: `/${KEY_1}.json`, paramsRepo: "mnist-p-params", commit: "c1" }],
      },
      { pipeline: "mnist-p-build", id: "b1", state: "JOB_SUCCESS", started: "2026-01-01T00:00:00Z", finished: "2026-01-01T00:05:00Z" },
    ];
  });
  afterEach(async () => {
    await pachd.stop();
  });

  it("train info shows a job as Pachyderm reports it, with the output commit that holds what it wrote", async () => {
    const info = await kaos(made, ["train", "info", KEY_1.slice(0, 8), "--stack", "cluster"]);
    expect(info.stdout.split("\n")).toEqual([
      `job ${KEY_1.slice(0, 16)}  p train  succeeded    stack cluster`,
      "started   2026-01-01T00:00:00Z    finished 2026-01-01T01:00:00Z",
      `id        ${KEY_1}`,
      "params    lr=0.1",
      `outputs   mnist-p-train@j1:/${KEY_1}`,
      "",
    ]);
    const json = JSON.parse((await kaos(made, ["train", "info", KEY_2, "--stack", "cluster", "--json"])).stdout) as unknown;
    expect(json).toEqual({
      id: KEY_2,
      pipeline: "p",
      stage: "train",
      state: "running",
      params: { lr: 0.2 },
      startedAt: "2026-01-02T00:00:00Z",
      finishedAt: null,
      exitCode: null,
      stack: "cluster",
      outputs: `mnist-p-train@j2:/${KEY_2}`,
    });
    const build = await kaos(made, ["train", "info", "mnist-p-build@b1", "--stack", "cluster"]);
    expect(build.stdout).toContain("outputs   mnist-p-build@b1:/");
    const missing = await runKaos(["train", "info", "zzzz", "--stack", "cluster"], { cwd: made.dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("error: no job 'zzzz' on stack 'cluster'");
    expect(pachd.mutatingCalls()).toEqual([]);
  });

  it("train get copies a job's files from its Pachyderm job's output commit once that job ended; nothing is changed", async () => {
    const get = await kaos(made, ["train", "get", KEY_1.slice(0, 8), "--stack", "cluster", "-o", "got", "--params"]);
    expect(get.stdout).toBe(`copied job ${KEY_1} to ${made.path("got")}\n`);
    expect(readFileSync(made.path("got/out/model.txt"), "utf8")).toBe("model 0.1");
    expect(readFileSync(made.path("got/out/metrics/m.json"), "utf8")).toBe('{"score": 0.5}');
    expect(JSON.parse(readFileSync(made.path("got/params.json"), "utf8"))).toEqual({ lr: 0.1 });
    expect(pachd.calls("GlobFile")).toHaveLength(1);
    // The params are read from the params repo as `train list` reads them; the outputs from the output commit.
    const read = pachd
      .calls("GetFile")
      .map((call) => JSON.parse(call.body) as { file: { commit: { repo: { name: string } }; path: string } });
    expect(read.filter((request) => request.file.commit.repo.name === "mnist-p-train").map((request) => request.file.path)).toEqual([
      `/${KEY_1}/metrics/m.json`,
      `/${KEY_1}/model.txt`,
    ]);

    const running = await runKaos(["train", "get", KEY_2, "--stack", "cluster"], { cwd: made.dir });
    expect(running.code).toBe(1);
    expect(running.stderr).toContain(
      `error: job ${KEY_2.slice(0, 16)} is running: Pachyderm job mnist-p-train@j2 has not ended, so its output commit may still change`,
    );
    const code = await runKaos(["train", "get", KEY_1, "--stack", "cluster", "--code", "-o", "code"], { cwd: made.dir });
    expect(code.code).toBe(1);
    expect(code.stderr).toContain("error: kaos train get --code: not supported on stack cluster, which uses the kubernetes backend");
    const full = await runKaos(["train", "get", KEY_1, "--stack", "cluster", "-o", "got"], { cwd: made.dir });
    expect(full.code).toBe(1);
    expect(full.stderr).toContain(`${made.path("got")} already exists and is not empty`);
    expect(existsSync(made.path(KEY_2.slice(0, 16)))).toBe(false);
    expect(existsSync(made.path("code"))).toBe(false);
    expect(pachd.mutatingCalls()).toEqual([]);
  });

  it("train kill says it is not supported there, and which pachctl command stops the job; nothing is changed", async () => {
    const kill = await runKaos(["train", "kill", KEY_2, "--stack", "cluster"], { cwd: made.dir });
    expect(kill.code).toBe(1);
    expect(kill.stderr).toContain(
      `error: kaos train kill: not supported on stack cluster, which uses the kubernetes backend; job ${KEY_2.slice(0, 16)} runs in Pachyderm job mnist-p-train@j2`,
    );
    expect(kill.stderr).toContain(
      "hint: stop it with pachctl: `pachctl stop job mnist-p-train@j2` (it stops every combination that Pachyderm job runs)",
    );
    expect(pachd.mutatingCalls()).toEqual([]);
    expect(existsSync(made.path(".kaos"))).toBe(false);
  });

  it("train compare, info without a job and get --best say the sweep is not read there, and what to use instead", async () => {
    for (const [args, command] of [
      [["train", "compare", "--stack", "cluster"], "kaos train compare"],
      [["train", "info", "--stack", "cluster"], "kaos train info"],
      [["train", "get", "--best", "score", "--stack", "cluster"], "kaos train get --best"],
    ] as const) {
      const result = await runKaos([...args], { cwd: made.dir });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `error: ${command} reads the local backend's state; stack cluster uses the kubernetes backend, whose jobs' metrics kaos does not read`,
      );
      expect(result.stderr).toContain("hint: `kaos train list --stack cluster` lists its jobs");
    }
    expect(pachd.requests).toEqual([]);
  });
});
