import { once } from "node:events";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { fileContent, makeProject, pidAlive, runKaos, startKaos, type Project } from "./helpers/rig.js";
import { processesOfJob } from "../src/backends/local/process.js";
import { maxConcurrency, readMarks, trainingProject, type ListedJob, type TrainingProjectOptions } from "./helpers/jobs.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

function project(options: TrainingProjectOptions = {}): Project {
  const made = makeProject(trainingProject(options));
  projects.push(made);
  return made;
}

async function kaos(made: Project, args: string[], env: Record<string, string> = {}) {
  return runKaos(args, { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log"), ...env } });
}

async function jobs(made: Project): Promise<ListedJob[]> {
  const result = await runKaos(["train", "list", "--json"], { cwd: made.dir });
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as ListedJob[];
}

describe("kaos up on the local backend (built CLI, real venvs and processes)", () => {
  it("builds, trains every combination, records them, and does nothing the second time", async () => {
    const made = project({ grid: { score: [1, 2, 3] }, parallelism: 2 });
    const first = await kaos(made, ["up"]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toContain("3 succeeded, 0 failed, 0 cancelled, 0 reused");
    const listed = await jobs(made);
    expect(listed.filter((job) => job.stage === "build").map((job) => job.state)).toEqual(["succeeded"]);
    const train = listed.filter((job) => job.stage === "train");
    expect(train.map((job) => job.params.score).sort()).toEqual([1, 2, 3]);
    expect(train.every((job) => job.state === "succeeded" && job.exitCode === 0 && job.startedAt && job.finishedAt)).toBe(true);

    const second = await kaos(made, ["up", "--json"]);
    expect(second.code).toBe(0);
    const result = JSON.parse(second.stdout) as {
      succeeded: boolean;
      pipelines: { stages: Record<string, { state: string }>; jobs: { reused: boolean }[] }[];
    };
    expect(result.succeeded).toBe(true);
    expect(result.pipelines[0]?.stages.build?.state).toBe("skipped");
    expect(result.pipelines[0]?.stages.train?.state).toBe("skipped");
    expect(result.pipelines[0]?.jobs.every((job) => job.reused)).toBe(true);
    expect(await jobs(made)).toHaveLength(listed.length);
    expect(readMarks(made.path("marks.log")).filter((mark) => mark.what === "start")).toHaveLength(3);
  });

  it("follows the contract: argv[1], cwd, KAOS_* environment, params, read-only data", async () => {
    const made = project({ grid: { score: 7, kernel: ["linear"] } });
    expect((await kaos(made, ["up"])).code).toBe(0);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    const jobDir = made.path(".kaos", "jobs", job!.id);
    expect(JSON.parse(readFileSync(join(jobDir, "params.json"), "utf8"))).toEqual({ kernel: "linear", score: 7 });
    expect(readFileSync(join(jobDir, "out", "data.txt"), "utf8")).toBe("v1");
    const log = readFileSync(join(jobDir, "log"), "utf8");
    expect(log).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z stdout \| params \{"kernel": "linear", "score": 7\}$/m);
    expect(log).toContain(`stderr | environment p ${join(jobDir, "source", "model")}`);
  });

  it("editing only data skips Build and reruns Train; editing requirements.txt rebuilds", async () => {
    const made = project({ grid: { score: [1, 2] } });
    expect((await kaos(made, ["up"])).code).toBe(0);
    writeFileSync(made.path("data/value.txt"), "v2");
    const plan = await kaos(made, ["plan", "--json"]);
    const parsed = JSON.parse(plan.stdout) as {
      pipelines: {
        stages: Record<string, { action: string }>;
        jobs: { action: string; reason: string }[];
        changes: { data: { changed: number } };
      }[];
    };
    expect(parsed.pipelines[0]?.stages.build?.action).toBe("skip");
    expect(parsed.pipelines[0]?.jobs.map((job) => job.action)).toEqual(["run", "run"]);
    expect(parsed.pipelines[0]?.jobs[0]?.reason).toBe("data: 1 changed");
    expect(parsed.pipelines[0]?.changes.data.changed).toBe(1);
    expect((await kaos(made, ["up"])).code).toBe(0);
    let listed = await jobs(made);
    expect(listed.filter((job) => job.stage === "build")).toHaveLength(1);
    expect(listed.filter((job) => job.stage === "train")).toHaveLength(4);
    const newest = listed.find((job) => job.stage === "train")!;
    expect(readFileSync(made.path(".kaos", "jobs", newest.id, "out", "data.txt"), "utf8")).toBe("v2");

    writeFileSync(made.path("src/model/requirements.txt"), "# pinned nothing, but changed\n");
    const rebuild = await kaos(made, ["up"]);
    expect(rebuild.code, rebuild.stderr).toBe(0);
    listed = await jobs(made);
    expect(listed.filter((job) => job.stage === "build")).toHaveLength(2);
    expect(listed.filter((job) => job.stage === "train")).toHaveLength(6);
  });

  it("adding one value to a list runs only the new combination; --force reruns everything", async () => {
    const made = project({ grid: { score: [1, 2] } });
    expect((await kaos(made, ["up"])).code).toBe(0);
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [1, 2, 3] }));
    const plan = await kaos(made, ["plan"]);
    expect(plan.stdout).toMatch(/skip\s+1\/3\s+score=1\s+identical job \w+ succeeded/);
    expect(plan.stdout).toMatch(/run\s+3\/3\s+score=3\s+new combination/);
    expect(plan.stdout).toContain("params: 1 combination added, 0 removed");
    const detailed = await kaos(made, ["plan", "--detailed-exitcode"]);
    expect(detailed.code).toBe(2);
    expect((await kaos(made, ["up"])).code).toBe(0);
    expect(
      readMarks(made.path("marks.log"))
        .filter((m) => m.what === "start")
        .map((m) => m.params)
        .sort(),
    ).toEqual(['{"score": 1}', '{"score": 2}', '{"score": 3}']);
    expect(readMarks(made.path("marks.log")).filter((m) => m.what === "start")).toHaveLength(3);
    expect((await kaos(made, ["plan", "--detailed-exitcode"])).code).toBe(0);
    const forced = await kaos(made, ["up", "--force"]);
    expect(forced.code).toBe(0);
    const listed = await jobs(made);
    expect(listed.filter((job) => job.stage === "build")).toHaveLength(2);
    expect(readMarks(made.path("marks.log")).filter((m) => m.what === "start")).toHaveLength(6);
  });

  it("a failing job does not stop the others, exits 1, and only it reruns", async () => {
    const made = project({ grid: { exit: [0, 3], score: [1, 2] }, parallelism: 2 });
    const result = await kaos(made, ["up"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("2 succeeded, 2 failed, 0 cancelled, 0 reused");
    expect(result.stderr).toMatch(/failed\s+in [\d.]+m?s\s+\(exited with code 3\)\s+see kaos train logs \w+/);
    const train = (await jobs(made)).filter((job) => job.stage === "train");
    expect(train.filter((job) => job.state === "failed").every((job) => job.exitCode === 3 && job.params.exit === 3)).toBe(true);
    const plan = await kaos(made, ["plan", "--json"]);
    const jobsPlanned = (
      JSON.parse(plan.stdout) as { pipelines: { jobs: { action: string; reason: string; params: { exit: number } }[] }[] }
    ).pipelines[0]!.jobs;
    expect(jobsPlanned.filter((job) => job.action === "run").map((job) => job.params.exit)).toEqual([3, 3]);
    expect(jobsPlanned.find((job) => job.action === "run")?.reason).toBe("previous attempt failed");
  });

  it("two pipelines with the same environment, source, data and params run each job once and share its result", async () => {
    const made = project({ grid: { exit: [0, 3] }, parallelism: 2 });
    const pipeline = { source: "src", data: "data", hyperparams: "grid.json", parallelism: 2 };
    writeFileSync(
      made.path("kaos.config.ts"),
      `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { a: ${JSON.stringify(pipeline)}, b: ${JSON.stringify(pipeline)} } });\n`,
    );
    const plan = JSON.parse((await kaos(made, ["plan", "--json"])).stdout) as {
      pipelines: { name: string; jobs: { action: string; reason: string }[] }[];
    };
    expect(plan.pipelines.map((p) => [p.name, p.jobs.map((job) => [job.action, job.reason])])).toEqual([
      [
        "a",
        [
          ["run", "never ran"],
          ["run", "never ran"],
        ],
      ],
      [
        "b",
        [
          ["run", "identical to a job of pipeline a in this plan: it runs once for both"],
          ["run", "identical to a job of pipeline a in this plan: it runs once for both"],
        ],
      ],
    ]);
    const result = await kaos(made, ["up", "--json"]);
    expect(result.code, result.stderr).toBe(1);
    type Outcome = {
      name: string;
      jobs: { id: string | null; key: string; params: { exit: number }; state: string; reused: boolean; reason: string | null }[];
    };
    const outcome = JSON.parse(result.stdout) as { pipelines: Outcome[] };
    expect(readMarks(made.path("marks.log")).filter((mark) => mark.what === "start")).toHaveLength(2);
    const all = outcome.pipelines.flatMap((p) => p.jobs.map((job) => ({ ...job, pipeline: p.name })));
    for (const exit of [0, 3]) {
      const same = all.filter((job) => job.params.exit === exit);
      expect(same).toHaveLength(2);
      expect(same[0]!.key).toBe(same[1]!.key);
      // Either pipeline may reach the key first.
      const ran = same.find((job) => !job.reused && !job.reason?.startsWith("not run"))!;
      const other = same.find((job) => job !== ran)!;
      expect(ran.reused).toBe(false);
      expect(ran.state).toBe(exit === 0 ? "succeeded" : "failed");
      if (exit === 0)
        expect(other).toMatchObject({
          id: ran.id,
          state: "succeeded",
          reused: true,
          reason: `identical job ${ran.id} of pipeline ${ran.pipeline} ran in this run`,
        });
      else
        expect(other).toMatchObject({
          id: null,
          state: "failed",
          reused: false,
          reason: `not run: identical job ${ran.id} of pipeline ${ran.pipeline} failed`,
        });
    }
    expect((await jobs(made)).filter((job) => job.stage === "train")).toHaveLength(2);
    // The failed key runs again, once, on the next up; the shared success stays shared.
    const again = await kaos(made, ["up"]);
    expect(again.code).toBe(1);
    expect(readMarks(made.path("marks.log")).filter((mark) => mark.what === "start")).toHaveLength(3);
  });

  it("kills a job that goes over its memory limit and records why, as Kubernetes does", async () => {
    const made = project({ grid: { mem: [400] }, resources: { memory: "100Mi" } });
    const result = await kaos(made, ["up"]);
    expect(result.code).toBe(1);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    expect(job?.state).toBe("failed");
    const info = await runKaos(["train", "info", job!.id, "--json"], { cwd: made.dir });
    expect((JSON.parse(info.stdout) as { reason: string }).reason).toMatch(/^OOMKilled: used [\d.]+ MiB, over the memory limit of 100Mi$/);
  });

  it("admits jobs by parallelism and by the cores they ask for (observed concurrency)", async () => {
    const made = project({
      grid: { score: [1, 2, 3, 4], sleep: 0.8 },
      parallelism: 4,
      resources: { cpu: 1 },
      extra: { "stacks/two.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", maxCpu: 2 });\n` },
    });
    const up = await kaos(made, ["up", "--stack", "two"]);
    expect(up.code).toBe(0);
    expect(maxConcurrency(readMarks(made.path("marks.log")))).toBe(2);
    // A parallelism the cores cannot reach is said, not only seen as jobs that wait.
    expect(up.stderr).toContain(
      "p train: at most 2 of its 4 jobs at once (parallelism 4): each asks for 1 core, and this machine gives kaos 2; lower the pipeline's resources.cpu, or raise maxCpu in the stack",
    );

    const wide = project({ grid: { score: [1, 2, 3], sleep: 0.5 }, parallelism: 3, resources: { cpu: 2 } });
    mkdirSync(wide.path("stacks"));
    writeFileSync(wide.path("stacks/two.ts"), `export default { backend: "local", maxCpu: 2 };\n`);
    const wideUp = await kaos(wide, ["up", "--stack", "two"]);
    expect(wideUp.code).toBe(0);
    expect(maxConcurrency(readMarks(wide.path("marks.log")))).toBe(1);
    expect(wideUp.stderr).toContain(
      "p train: at most 1 of its 3 jobs at once (parallelism 3): each asks for 2 cores, and this machine gives kaos 2;",
    );

    const narrow = project({ grid: { score: [1, 2, 3, 4], sleep: 0.5 }, parallelism: 1 });
    const narrowUp = await kaos(narrow, ["up"]);
    expect(narrowUp.code).toBe(0);
    expect(maxConcurrency(readMarks(narrow.path("marks.log")))).toBe(1);
    expect(narrowUp.stderr).not.toContain("at once");
  });

  it("refuses at plan time a job that asks for more than the machine has, running nothing", async () => {
    const made = project({ resources: { cpu: 4096 } });
    const result = await kaos(made, ["up"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/error: pipelines\.p\.resources: each job asks for 4096 cores, this machine gives kaos \d+/);
    expect(result.stderr).toContain("hint: lower the pipeline's resources");
    const plan = await kaos(made, ["plan"]);
    expect(plan.code).toBe(1);
    const gpu = project({ resources: { gpu: 1 } });
    const noGpu = await kaos(gpu, ["up"], { KAOS_GPUS: "" });
    expect(noGpu.stderr).toContain("each job asks for 1 GPU, this machine has 0");
    // No stack setting gives GPUs a machine lacks: the hint says what does.
    expect(noGpu.stderr).toContain(
      "hint: lower the pipeline's resources.gpu to what this machine has, or use a cluster stack with GPU nodes",
    );
    expect(noGpu.stderr).not.toContain("maxCpu");
  });

  it("hands GPUs out through CUDA_VISIBLE_DEVICES", async () => {
    const made = project({
      grid: { score: [1, 2] },
      parallelism: 2,
      resources: { gpu: 1 },
      extra: { "src/model/train": { content: `#!/bin/sh\necho "gpus=$CUDA_VISIBLE_DEVICES"\nsleep 0.5\nmkdir -p "$1"\n`, mode: 0o755 } },
    });
    expect((await kaos(made, ["up"], { KAOS_GPUS: "0,1" })).code).toBe(0);
    const seen = (await jobs(made))
      .filter((job) => job.stage === "train")
      .map((job) => readFileSync(made.path(".kaos", "jobs", job.id, "log"), "utf8").match(/gpus=(\S*)/)?.[1])
      .sort();
    expect(seen).toEqual(["0", "1"]);

    mkdirSync(made.path("stacks"));
    writeFileSync(made.path("stacks/four.ts"), `export default { backend: "local", maxCpu: 4 };\n`);
    const oneGpu = await kaos(made, ["up", "--force", "--stack", "four"], { KAOS_GPUS: "0" });
    expect(oneGpu.code, oneGpu.stderr).toBe(0);
    expect(oneGpu.stderr).toContain(
      "p train: at most 1 of its 2 jobs at once (parallelism 2): each asks for 1 GPU, and this machine has 1; lower the pipeline's resources.gpu, or use a cluster stack with GPU nodes",
    );
  });

  it("asks the machine for its GPUs only when a job is to run: a no-op up starts no nvidia-smi", async () => {
    const made = project();
    const bin = made.path("fake-bin");
    mkdirSync(bin);
    const asked = made.path("nvidia-smi-asked");
    writeFileSync(join(bin, "nvidia-smi"), `#!/bin/sh\necho asked >> "${asked}"\n`, { mode: 0o755 });
    const path = { PATH: `${bin}:${process.env.PATH ?? ""}` };
    expect((await kaos(made, ["up"], path)).code).toBe(0);
    expect(readFileSync(asked, "utf8")).toBe("asked\n");
    const noop = await kaos(made, ["up"], path);
    expect(noop.code).toBe(0);
    expect(noop.stderr).toContain("nothing to do");
    expect(readFileSync(asked, "utf8")).toBe("asked\n");
  });

  it("a no-op up, which checks the results it reuses, starts no thread", async () => {
    const made = project();
    expect((await kaos(made, ["up"])).code).toBe(0);
    // Preloaded into kaos: every thread started is named in `threads`.
    const threads = made.path("threads");
    const preload = made.path("count-threads.mjs");
    writeFileSync(
      preload,
      `import { createRequire, syncBuiltinESMExports } from "node:module";
import { appendFileSync } from "node:fs";
const threads = createRequire(import.meta.url)("node:worker_threads");
const Worker = threads.Worker;
threads.Worker = class extends Worker {
  constructor(...args) {
    appendFileSync(${JSON.stringify(threads)}, "thread\\n");
    super(...args);
  }
};
syncBuiltinESMExports();
`,
    );
    const noop = await kaos(made, ["up"], { NODE_OPTIONS: `--import=${pathToFileURL(preload).href}` });
    expect(noop.code).toBe(0);
    expect(noop.stderr).toContain("nothing to do");
    expect(existsSync(threads)).toBe(false);
  });

  it('trains on the snapshot that was hashed: an edit during the run does not leak in (dataViews: "copy")', async () => {
    // Views linked to the bundle's own files (the default without clones) fail the job instead: test/data-views.test.ts.
    const made = project({ grid: { sleep: 2 } });
    mkdirSync(made.path("stacks"));
    writeFileSync(
      made.path("stacks/copy.ts"),
      `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", dataViews: "copy" });\n`,
    );
    const up = startKaos(["up", "--stack", "copy"], { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log") } });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    writeFileSync(made.path("data/value.txt"), "edited while running");
    const result = await up.exited;
    expect(result.code, result.stderr).toBe(0);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "data.txt"), "utf8")).toBe("v1");
    const plan = await kaos(made, ["plan", "--detailed-exitcode", "--stack", "copy"]);
    expect(plan.code).toBe(2);
  });

  it("kaos train kill stops a running job and its children; it is recorded as cancelled", async () => {
    const made = project({ grid: { sleep: 60 } });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids") } });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    // The script writes its pid first thing: once the file is there, it runs.
    const pid = Number(await fileContent(made.path("pids", job!.id)));
    expect(pidAlive(pid)).toBe(true);
    const kill = await runKaos(["train", "kill", job!.id.slice(0, 4)], { cwd: made.dir });
    expect(kill.code, kill.stderr).toBe(0);
    expect(kill.stdout).toContain(`cancelled job ${job!.id}`);
    const result = await up.exited;
    expect(result.code).toBe(1);
    expect(pidAlive(pid)).toBe(false);
    const [after] = (await jobs(made)).filter((j) => j.stage === "train");
    expect(after?.state).toBe("cancelled");
    const again = await runKaos(["train", "kill", job!.id], { cwd: made.dir });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`job ${job!.id} is cancelled; only a queued or running job can be killed`);
  });

  it("train get of a job that has not ended is refused (--force copies what it wrote so far); of a cancelled one, it says so", async () => {
    const made = project({ grid: { sleep: 60 } });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids") } });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    await fileContent(made.path("pids", job!.id));
    const refused = await runKaos(["train", "get", job!.id, "-o", "early"], { cwd: made.dir });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(
      `error: job ${job!.id} is running: it has not ended, so its outputs may still change\n` +
        `hint: get it once it ends (\`kaos train logs -f ${job!.id}\` waits for that), or pass --force to copy what it has written so far\n`,
    );
    expect(existsSync(made.path("early"))).toBe(false);
    const forced = await runKaos(["train", "get", job!.id, "-o", "early", "--force"], { cwd: made.dir });
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stderr).toContain(`warning: job ${job!.id} is running: it has not ended, so its outputs may still change; copied`);
    expect(existsSync(made.path("early", "out"))).toBe(true);
    expect((await runKaos(["train", "kill", job!.id], { cwd: made.dir })).code).toBe(0);
    await up.exited;
    const after = await runKaos(["train", "get", job!.id, "-o", "late"], { cwd: made.dir });
    expect(after.code, after.stderr).toBe(0);
    expect(after.stderr).toBe(`note: job ${job!.id} cancelled (cancelled by kaos train kill): copied the outputs it left\n`);
  });

  it("kaos train kill of a queued job: it never starts once a place frees up", async () => {
    const made = project({ grid: { sleep: [60, 0] }, parallelism: 1 });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids"), KAOS_TEST_LOG: made.path("marks.log") } });
    await up.waitFor(/train 1\/2 \w+ .*running/);
    const train = (await jobs(made)).filter((j) => j.stage === "train");
    const running = train.find((j) => j.state === "running")!;
    const queued = train.find((j) => j.state === "queued")!;
    await fileContent(made.path("pids", running.id));
    expect((await runKaos(["train", "kill", queued.id], { cwd: made.dir })).code).toBe(0);
    // Its place frees up: the killed job must not take it.
    expect((await runKaos(["train", "kill", running.id], { cwd: made.dir })).code).toBe(0);
    expect((await up.exited).code).toBe(1);
    expect(existsSync(made.path("pids", queued.id))).toBe(false);
    const after = (await jobs(made)).find((j) => j.id === queued.id)!;
    expect(after).toMatchObject({ state: "cancelled", startedAt: null });
  });

  it("kaos train kill of a running build stops its steps at once, and nothing trains on it", async () => {
    // A package index that never answers: pip waits in the build's install step.
    let asked: () => void = () => {};
    const askedOnce = new Promise<void>((resolve) => {
      asked = resolve;
    });
    const index = createServer(() => asked());
    index.listen(0, "127.0.0.1");
    await once(index, "listening");
    const { port } = index.address() as AddressInfo;
    const made = project({ requirements: `--index-url http://127.0.0.1:${port}/simple\nkaos-never-answered\n` });
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log") } });
    try {
      await askedOnce;
      const build = (await jobs(made)).find((j) => j.stage === "build")!;
      expect(processesOfJob(build.id).length).toBeGreaterThan(0);
      const kill = await runKaos(["train", "kill", build.id], { cwd: made.dir });
      expect(kill.code, kill.stderr).toBe(0);
      expect(processesOfJob(build.id)).toEqual([]);
      const result = await up.exited;
      expect(result.code).toBe(1);
      const listed = await jobs(made);
      expect(listed.map((j) => [j.stage, j.state])).toEqual([["build", "cancelled"]]);
      expect(existsSync(made.path("marks.log"))).toBe(false);
    } finally {
      await up.stop("SIGINT");
      index.closeAllConnections();
      index.close();
    }
  });

  it("Ctrl-C cancels running jobs cleanly, and the next up reruns only what did not finish", async () => {
    // The first job is quick; the second would take long.
    const made = project({ grid: { sleep: [0, 30], score: 1 }, parallelism: 1 });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids"), KAOS_TEST_LOG: made.path("marks.log") } });
    await up.waitFor(/train 2\/2 \w+ .*running/);
    const running = (await jobs(made)).find((j) => j.stage === "train" && j.state === "running");
    await fileContent(made.path("pids", running!.id));
    const result = await up.stop("SIGINT");
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("interrupted: stopping running jobs");
    const train = (await jobs(made)).filter((job) => job.stage === "train");
    expect(train.map((job) => job.state).sort()).toEqual(["cancelled", "succeeded"]);
    for (const file of readdirSync(made.path("pids"))) expect(pidAlive(Number(readFileSync(made.path("pids", file), "utf8")))).toBe(false);
    const plan = JSON.parse((await kaos(made, ["plan", "--json"])).stdout) as {
      pipelines: { jobs: { action: string; reason: string; params: { sleep: number } }[] }[];
    };
    expect(plan.pipelines[0]?.jobs.map((job) => [job.params.sleep, job.action])).toEqual([
      [0, "skip"],
      [30, "run"],
    ]);
    expect(plan.pipelines[0]?.jobs[1]?.reason).toBe("previous attempt cancelled");
  });

  it("Ctrl-C before the plan is made stops at once, as kaos plan does: no run is recorded and nothing starts", async () => {
    const made = project({ grid: { score: [1] } });
    // An interpreter that answers kaos's version probe only once released: kaos is still planning until then.
    const python = made.path("python");
    writeFileSync(python, `#!/bin/sh\necho asked > "$KAOS_PROBED"\nwhile [ ! -f "$KAOS_GO" ]; do sleep 0.05; done\nexec python3 "$@"\n`, {
      mode: 0o755,
    });
    const env = { KAOS_PYTHON: python, KAOS_PROBED: made.path("probed"), KAOS_GO: made.path("go"), KAOS_TEST_LOG: made.path("marks.log") };
    const up = startKaos(["up"], { cwd: made.dir, env });
    await fileContent(made.path("probed"));
    up.child.kill("SIGINT");
    writeFileSync(made.path("go"), "");
    const result = await up.exited;
    expect(result.code, result.stderr).toBe(130);
    expect(result.stderr).toContain("interrupted: stopped before anything ran");
    expect(await jobs(made)).toEqual([]);
    // The lock went with it: the next up neither waits nor takes anything over.
    const again = await kaos(made, ["up"], env);
    expect(again.code, again.stderr).toBe(0);
    expect((await jobs(made)).map((job) => [job.stage, job.state])).toEqual([
      ["train", "succeeded"],
      ["build", "succeeded"],
    ]);
  });

  it("a sweep's queued jobs hang one listener on the run's interrupt, not one each, and Ctrl-C still cancels every one", async () => {
    // Node's EventTarget walks every listener it holds on each add: one per
    // job made queueing a 100,000-job sweep take minutes. A preload counts
    // the most "abort" listeners any one signal held in the kaos process.
    const jobCount = 40;
    const made = project({ grid: { score: Array.from({ length: jobCount }, (_, index) => index), sleep: 30 }, parallelism: 1 });
    mkdirSync(made.path("pids"));
    writeFileSync(
      made.path("count-listeners.mjs"),
      `import { writeFileSync } from "node:fs";
const held = new WeakMap();
let most = 0;
const { addEventListener, removeEventListener } = EventTarget.prototype;
EventTarget.prototype.addEventListener = function (type, listener, options) {
  if (type === "abort" && this instanceof AbortSignal && !this.aborted) {
    held.set(this, (held.get(this) ?? 0) + 1);
    most = Math.max(most, held.get(this));
  }
  return addEventListener.call(this, type, listener, options);
};
EventTarget.prototype.removeEventListener = function (type, listener, options) {
  if (type === "abort" && this instanceof AbortSignal) held.set(this, Math.max(0, (held.get(this) ?? 0) - 1));
  return removeEventListener.call(this, type, listener, options);
};
process.on("exit", () => writeFileSync(process.env.KAOS_TEST_LISTENERS, String(most)));
`,
    );
    const up = startKaos(["up"], {
      cwd: made.dir,
      env: {
        KAOS_TEST_PIDS: made.path("pids"),
        KAOS_TEST_LISTENERS: made.path("listeners"),
        NODE_OPTIONS: `--import ${pathToFileURL(made.path("count-listeners.mjs")).href}`,
      },
    });
    await up.waitFor(/train \d+\/40 \w+ .*running/);
    const running = (await jobs(made)).find((j) => j.stage === "train" && j.state === "running");
    await fileContent(made.path("pids", running!.id));
    const result = await up.stop("SIGINT");
    expect(result.code).toBe(1);
    const train = (await jobs(made)).filter((job) => job.stage === "train");
    expect(train).toHaveLength(jobCount);
    expect(train.every((job) => job.state === "cancelled")).toBe(true);
    expect(Number(readFileSync(made.path("listeners"), "utf8"))).toBeLessThan(10);
  });

  it("after kaos was killed mid-sweep, the next up stops what it left with a pass over the processes, not a pass per job", async () => {
    // A killed 100,000-job sweep leaves that many unfinished jobs: a pass over
    // /proc for each read every process's environment 100,000 times. A
    // preload counts the passes (listings of /proc) in the kaos that recovers.
    const jobCount = 40;
    const made = project({ grid: { score: Array.from({ length: jobCount }, (_, index) => index), sleep: 30 }, parallelism: 1 });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids") } });
    await up.waitFor(/train \d+\/40 \w+ .*running/);
    const running = (await jobs(made)).find((j) => j.stage === "train" && j.state === "running");
    const orphan = Number(await fileContent(made.path("pids", running!.id)));
    up.child.kill("SIGKILL");
    await up.exited;
    expect(pidAlive(orphan)).toBe(true);

    writeFileSync(
      made.path("count-proc-passes.mjs"),
      `import fs, { writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
let passes = 0;
const { readdirSync } = fs;
fs.readdirSync = function (path, ...rest) {
  if (path === "/proc") passes += 1;
  return readdirSync.call(this, path, ...rest);
};
syncBuiltinESMExports();
process.on("exit", () => writeFileSync(process.env.KAOS_TEST_PASSES, String(passes)));
`,
    );
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [jobCount] }));
    const again = await kaos(made, ["up"], {
      KAOS_TEST_PASSES: made.path("passes"),
      NODE_OPTIONS: `--import ${pathToFileURL(made.path("count-proc-passes.mjs")).href}`,
    });
    expect(again.code, again.stderr).toBe(0);
    expect(pidAlive(orphan)).toBe(false);
    expect(Number(readFileSync(made.path("passes"), "utf8"))).toBeLessThan(jobCount / 2);
  });

  it("logs -f follows a running job until it ends", async () => {
    const made = project({ grid: { lines: 8, line_delay: 0.25 } });
    const up = startKaos(["up"], { cwd: made.dir });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    const follow = await runKaos(["train", "logs", job!.id, "-f"], { cwd: made.dir });
    expect(follow.code).toBe(0);
    const lines = follow.stdout.trim().split("\n");
    expect(lines.filter((line) => / stdout \| line \d$/.test(line))).toHaveLength(8);
    expect(lines.at(-1)).toMatch(/stderr \| environment p /);
    expect((await up.exited).code).toBe(0);
    const build = (await jobs(made)).find((j) => j.stage === "build")!;
    const buildLog = await runKaos(["train", "logs", build.id], { cwd: made.dir });
    expect(buildLog.stdout).toMatch(/kaos {3}\| \$ .*-m venv --without-pip/);
  });

  it("logs -f exits as the followed job ended: 1 and a line with its exit code when it failed, before or after it ended; logs alone 0", async () => {
    const made = project({ grid: { lines: 4, line_delay: 0.25, exit: 3 } });
    const up = startKaos(["up"], { cwd: made.dir });
    await up.waitFor(/train 1\/1 \w+ .*running/);
    const [job] = (await jobs(made)).filter((j) => j.stage === "train");
    const told = `job ${job!.id} failed: exited with code 3; \`kaos train info ${job!.id}\` says more\n`;
    const follow = await runKaos(["train", "logs", job!.id, "-f"], { cwd: made.dir });
    expect(follow.code).toBe(1);
    expect(follow.stdout.split("\n").filter((line) => / stdout \| line \d$/.test(line))).toHaveLength(4);
    expect(follow.stderr).toBe(told);
    expect((await up.exited).code).toBe(1);
    const after = await runKaos(["train", "logs", job!.id.slice(0, 5), "--follow"], { cwd: made.dir });
    expect(after.code).toBe(1);
    expect(after.stdout).toBe(follow.stdout);
    expect(after.stderr).toBe(told);
    const plain = await runKaos(["train", "logs", job!.id], { cwd: made.dir });
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe(follow.stdout);
    expect(plain.stderr).toBe("");
  });

  it("logs -f of a job killed while followed exits 1 saying it was cancelled; Ctrl-C while following exits 130", async () => {
    const made = project({ grid: { sleep: [30, 31] }, parallelism: 2 });
    mkdirSync(made.path("pids"));
    const up = startKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_PIDS: made.path("pids") } });
    await up.waitFor(/train 2\/2 \w+ .*running/);
    const [first, second] = (await jobs(made)).filter((j) => j.stage === "train");
    await fileContent(made.path("pids", first!.id));
    const follow = startKaos(["train", "logs", first!.id, "-f"], { cwd: made.dir });
    await follow.waitFor(/stdout \| params/);
    expect((await runKaos(["train", "kill", first!.id], { cwd: made.dir })).code).toBe(0);
    const followed = await follow.exited;
    expect(followed.code).toBe(1);
    expect(followed.stderr).toBe(
      `job ${first!.id} was cancelled: cancelled by kaos train kill; \`kaos train info ${first!.id}\` says more\n`,
    );

    const interrupted = startKaos(["train", "logs", second!.id, "-f"], { cwd: made.dir });
    await interrupted.waitFor(/stdout \| params/);
    const stopped = await interrupted.stop("SIGINT");
    // Ended by the signal itself, which a shell reports as 130.
    expect(stopped.code === 130 || (stopped.code === null && stopped.signal === "SIGINT"), JSON.stringify(stopped)).toBe(true);
    await up.stop("SIGINT");
  });

  it("list, info, get: newest first, metrics, sweeps sorted by a metric, outputs with code and params", async () => {
    const made = project({ grid: { score: [3, 9, 5] }, parallelism: 3 });
    expect((await kaos(made, ["up"])).code).toBe(0);
    const listed = await jobs(made);
    expect(listed[listed.length - 1]?.stage).toBe("build");
    const text = await runKaos(["train", "list"], { cwd: made.dir });
    expect(text.stdout.split("\n")[0]).toMatch(/^ID\s+PIPELINE\s+STAGE\s+STATE\s+N\/N\s+STARTED\s+DURATION\s+score\s+PARAMS$/);
    expect(text.stdout).toMatch(/\s\d\/3\s/);
    const some = listed.find((job) => job.stage === "train")!;
    const info = await runKaos(["train", "info", some.id, "-s", "score"], { cwd: made.dir });
    expect(info.code, info.stderr).toBe(0);
    const sweep = info.stdout.slice(info.stdout.indexOf("sweep (3 combinations, by score)"));
    expect([...sweep.matchAll(/score=(\d)/g)].map((m) => m[1])).toEqual(["9", "5", "3"]);
    expect(info.stdout).toMatch(/inputs\n\s+env\s+[0-9a-f]{64}\n\s+source\s+[0-9a-f]{64}\n\s+data\s+[0-9a-f]{64}/);
    const badMetric = await runKaos(["train", "info", some.id, "-s", "accuracy"], { cwd: made.dir });
    expect(badMetric.code).toBe(1);
    expect(badMetric.stderr).toContain('-s accuracy: no job of this sweep has a numeric metric "accuracy"; expected one of: score');
    const get = await runKaos(["train", "get", some.id, "-o", "fetched", "--code", "--params"], { cwd: made.dir });
    expect(get.code, get.stderr).toBe(0);
    expect(existsSync(made.path("fetched/out/metrics/m.json"))).toBe(true);
    expect(existsSync(made.path("fetched/source/model/train"))).toBe(true);
    expect(JSON.parse(readFileSync(made.path("fetched/params.json"), "utf8"))).toEqual(some.params);
    const none = await runKaos(["train", "info", "zzzz"], { cwd: made.dir });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no job matches 'zzzz'");
  });

  it("train info of an ingest job names the data it brought in, and no environment", async () => {
    const made = project();
    made.write({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", manifest: "manifest" } } });\n`,
      "files/value.txt": "from the manifest",
      manifest: `${JSON.stringify({ url: pathToFileURL(made.path("files/value.txt")).href, path: "value.txt" })}\n`,
    });
    expect((await kaos(made, ["up"])).code).toBe(0);
    const ingest = (await jobs(made)).find((j) => j.stage === "ingest")!;
    const info = JSON.parse((await runKaos(["train", "info", ingest.id, "--json"], { cwd: made.dir })).stdout) as {
      keys: { data: string | null };
      outputDir: string;
    };
    expect(info.keys.data).toMatch(/^[0-9a-f]{64}$/);
    expect(info.outputDir).toBe(made.path(".kaos", "data", info.keys.data!));
    expect(readFileSync(join(info.outputDir, "value.txt"), "utf8")).toBe("from the manifest");
    const text = (await runKaos(["train", "info", ingest.id], { cwd: made.dir })).stdout;
    expect(text).toContain(`  data    ${info.keys.data}\n`);
    expect(text).toContain("  packages -\n");
    expect(text).toContain("  (none: an ingest job has no metrics)\n");
    expect(text).toContain(`data      ${info.outputDir}\n`);
    const get = await runKaos(["train", "get", ingest.id], { cwd: made.dir });
    expect(get.stderr).toContain(`error: job ${ingest.id} is an ingest job; expected a train job, which has outputs`);
  });

  it("train deploy runs the same engine without a config file", async () => {
    const made = project({ grid: { score: [1, 2] } });
    const dir = makeProject({}, "kaos-deploy-");
    projects.push(dir);
    const result = await runKaos(
      [
        "train",
        "deploy",
        "-s",
        made.path("src"),
        "-d",
        made.path("data"),
        "-h",
        made.path("grid.json"),
        "--cpu",
        "1",
        "--memory",
        "512Mi",
        "-p",
        "2",
      ],
      { cwd: dir.dir },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("2 succeeded, 0 failed");
    const listed = JSON.parse((await runKaos(["train", "list", "--json"], { cwd: dir.dir })).stdout) as ListedJob[];
    expect(listed.filter((job) => job.stage === "train" && job.pipeline === "deploy")).toHaveLength(2);
    // No config names a sweep: the commands that show one say so, without naming a config file that is not there.
    const compare = await runKaos(["train", "compare"], { cwd: dir.dir });
    expect(compare.code).toBe(1);
    expect(compare.stderr).toBe(
      `error: no kaos.config.ts (or .mts, .cts, .js, .mjs, .cjs) in ${dir.dir}, so no pipeline has a sweep to show\n` +
        "hint: jobs of `kaos train deploy` are shown with `kaos train info JOB`, each with the other jobs of its run\n",
    );
    const bad = await runKaos(["train", "deploy", "-s", made.path("src"), "-d", made.path("data"), "--memory", "lots"], { cwd: dir.dir });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("--memory lots: expected a size with an SI or binary suffix such as 512M or 2Gi");
    const both = await runKaos(["train", "deploy", "-s", made.path("src"), "-d", "x", "-m", "y"], { cwd: dir.dir });
    expect(both.stderr).toContain("-d/--data and -m/--manifest are exclusive");
    const missing = await runKaos(["train", "deploy", "-s", made.path("nope"), "-d", made.path("data")], { cwd: dir.dir });
    expect(missing.stderr).toContain(`-s/--source: no such directory: ${made.path("nope")}`);
    // Found by the run, not the config: still told as the flags that hold it.
    const tooBig = await runKaos(["train", "deploy", "-s", made.path("src"), "-d", made.path("data"), "--cpu", "999"], { cwd: dir.dir });
    expect(tooBig.code).toBe(1);
    expect(tooBig.stderr).toContain("error: --cpu/--memory/--gpu: each job asks for 999 cores, this machine gives kaos");
    expect(tooBig.stderr).toContain("hint: lower --cpu, --memory or --gpu");
    expect(tooBig.stderr).not.toContain("pipelines.deploy");
  });

  it("train deploy inside a project's folder: the commands run there read the deploy's state, the nearer one", async () => {
    const made = project({ grid: { score: [1, 2] } });
    const here = made.path("experiments");
    mkdirSync(here);
    const deployed = await runKaos(["train", "deploy", "-s", made.path("src"), "-d", made.path("data"), "-h", made.path("grid.json")], {
      cwd: here,
    });
    expect(deployed.code, deployed.stderr).toBe(0);
    const listed = JSON.parse((await runKaos(["train", "list", "--json"], { cwd: here })).stdout) as ListedJob[];
    expect(listed.filter((job) => job.stage === "train" && job.pipeline === "deploy")).toHaveLength(2);
    const info = await runKaos(["train", "info", listed.find((job) => job.stage === "train")?.id ?? ""], { cwd: here });
    expect(info.code, info.stderr).toBe(0);
    const du = JSON.parse((await runKaos(["du", "--json"], { cwd: here })).stdout) as { stateDir: string };
    expect(du.stateDir).toBe(join(here, ".kaos"));
    // The project itself, which never ran, still has nothing of the deploy's.
    const atRoot = await runKaos(["train", "list", "--json"], { cwd: made.dir });
    expect(atRoot.code, atRoot.stderr).toBe(0);
    expect(JSON.parse(atRoot.stdout)).toEqual([]);
  });
});
