import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { originTag } from "../src/core/process-identity.js";
import { openRaw, pragmaValue } from "./helpers/sqlite.js";
import { describe, expect, it } from "vitest";
import { eventually, jobRows, listJobs, runRows, trustProblems } from "./helpers/faults.js";
import { readMarks, trainingProject, type ListedJob } from "./helpers/jobs.js";
import { runKaos, startKaos, type Project } from "./helpers/rig.js";
import { taggedProjects } from "./helpers/tagged-projects.js";

const tagged = taggedProjects("kaos-conc-");

function project(options: Parameters<typeof trainingProject>[0]): Project {
  return tagged.make(trainingProject(options));
}

const env = (made: Project) => ({ ...tagged.env, KAOS_TEST_LOG: made.path("marks.log") });

function integrity(made: Project): string {
  const db = openRaw(made.path(".kaos", "state.db"), { readOnly: true });
  try {
    return pragmaValue(db, "integrity_check") as string;
  } finally {
    db.close();
  }
}

/** Every job key succeeded at most once, and nothing was left queued or running. */
function expectConsistent(made: Project): void {
  const rows = jobRows(made.dir);
  expect(rows.filter((row) => row.state === "queued" || row.state === "running")).toEqual([]);
  const keys = rows.filter((row) => row.state === "succeeded").map((row) => `${row.stage} ${row.key}`);
  expect(new Set(keys).size).toBe(keys.length);
  expect(integrity(made)).toBe("ok");
  expect(trustProblems(made.dir)).toEqual([]);
}

const LOCKED =
  /error: another kaos \(pid (\d+), `up`, started at \S+\) is applying stack 'local' in (\S+); wait for it to finish or stop it \(kill \d+\)\n/;

describe("concurrency", () => {
  it("a second kaos up on the same stack refuses with a clear message while the first runs on", async () => {
    // The jobs wait for a file the test writes, so the first run lasts as long as the test needs.
    const made = project({
      grid: { score: [1, 2, 3, 4] },
      parallelism: 2,
      extra: {
        "src/model/train": {
          content: `#!/bin/sh\necho "start $KAOS_JOB_ID x 0" >> "$KAOS_TEST_LOG"\nwhile [ ! -f "$KAOS_RELEASE" ]; do sleep 0.05; done\nmkdir -p "$1"\n`,
          mode: 0o755,
        },
      },
    });
    const release = made.path("release");
    const first = startKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: release } });
    await first.waitFor(/p train 1\/4 \w+ .*running/);
    const second = await runKaos(["up"], { cwd: made.dir, env: env(made) });
    expect(second.code).toBe(1);
    const match = LOCKED.exec(second.stderr);
    expect(match, second.stderr).not.toBeNull();
    expect(Number(match![1])).toBe(first.child.pid);
    expect(match![2]).toBe(made.dir);
    // watch and train deploy go through the same lock; --force does not get around it.
    const forced = await runKaos(["up", "--force"], { cwd: made.dir, env: env(made) });
    expect(forced.stderr).toMatch(LOCKED);
    writeFileSync(release, "");
    const result = await first.exited;
    expect(result.code, result.stderr).toBe(0);
    expect(readMarks(made.path("marks.log")).filter((mark) => mark.what === "start")).toHaveLength(4);
    expectConsistent(made);
    // Once it is done, the lock is free again.
    const third = await runKaos(["up"], { cwd: made.dir, env: env(made) });
    expect(third.code, third.stderr).toBe(0);
    expect(third.stderr).toContain("0 succeeded, 0 failed, 0 cancelled, 4 reused");
  }, 120_000);

  it("two kaos up started at the same instant: exactly one runs, the other refuses, nothing runs twice", async () => {
    for (let round = 0; round < 3; round++) {
      const made = project({ grid: { score: [1, 2, 3], sleep: 0.2 }, parallelism: 3 });
      const [a, b] = await Promise.all([
        runKaos(["up"], { cwd: made.dir, env: env(made) }),
        runKaos(["up"], { cwd: made.dir, env: env(made) }),
      ]);
      const outcomes = [a, b]
        .map((r) => (r.code === 0 ? "ran" : LOCKED.test(r.stderr) ? "refused" : `other (${r.code}): ${r.stderr}`))
        .sort();
      expect(outcomes).toEqual(["ran", "refused"]);
      expect(readMarks(made.path("marks.log")).filter((mark) => mark.what === "start")).toHaveLength(3);
      expect(jobRows(made.dir).filter((row) => row.stage === "build")).toHaveLength(1);
      expectConsistent(made);
    }
  }, 120_000);

  it("train list, plan and logs -f work while a sweep writes", async () => {
    const made = project({ grid: { score: [1, 2, 3, 4, 5, 6], lines: 6, line_delay: 0.1 }, parallelism: 2 });
    const up = startKaos(["up"], { cwd: made.dir, env: env(made) });
    await up.waitFor(/p train 1\/6 \w+ .*running/);
    const running = (await listJobs(made.dir)).find((job) => job.stage === "train" && job.state === "running")!;
    expect(running).toBeDefined();
    const follow = runKaos(["train", "logs", running.id, "-f"], { cwd: made.dir });
    const seen = new Set<string>();
    let lists = 0;
    let done = false;
    void up.exited.then(() => (done = true));
    while (!done) {
      // Several readers at once, each a whole process, while the writer records jobs.
      const batch = await Promise.all([listJobs(made.dir), listJobs(made.dir), runKaos(["train", "list"], { cwd: made.dir })]);
      for (const jobs of batch.slice(0, 2) as ListedJob[][]) {
        lists += 1;
        for (const job of jobs) {
          expect(["queued", "running", "succeeded", "failed", "cancelled"]).toContain(job.state);
          seen.add(job.state);
        }
      }
      expect((batch[2] as { code: number }).code).toBe(0);
    }
    const plan = await runKaos(["plan", "--json"], { cwd: made.dir });
    expect(plan.code, plan.stderr).toBe(0);
    expect((await up.exited).code).toBe(0);
    expect(lists).toBeGreaterThanOrEqual(2);
    expect(seen.has("succeeded")).toBe(true);
    const followed = await follow;
    expect(followed.code, followed.stderr).toBe(0);
    const lines = followed.stdout.trim().split("\n");
    expect(lines.filter((line) => / stdout \| line \d$/.test(line))).toHaveLength(6);
    expect(lines.at(-1)).toMatch(/stderr \| environment p /);
    // What logs -f printed is the job's whole log.
    expect(followed.stdout).toBe(readFileSync(made.path(".kaos", "jobs", running.id, "log"), "utf8"));
    expectConsistent(made);
  }, 120_000);

  it("plan while an up runs does not wait, and says which of the jobs it would run are running or queued now, and in which run", async () => {
    const waiting = { content: `#!/bin/sh\nwhile [ ! -f "$KAOS_RELEASE" ]; do sleep 0.05; done\nmkdir -p "$1"\n`, mode: 0o755 };
    const made = project({ grid: { score: [1, 2, 3] }, parallelism: 2, extra: { "src/model/train": waiting } });
    const upEnv = { ...env(made), KAOS_RELEASE: made.path("release") };
    const up = startKaos(["up"], { cwd: made.dir, env: upEnv });
    await up.waitFor(/p train 2\/3 \w+ .*running/);
    const runId = runRows(made.dir)[0]!.id;

    const plan = await runKaos(["plan", "--json"], { cwd: made.dir, env: env(made) });
    expect(plan.code, plan.stderr).toBe(0);
    const jobs = (JSON.parse(plan.stdout) as { pipelines: { jobs: { action: string; reason: string }[] }[] }).pipelines[0]!.jobs;
    expect(jobs.map((job) => [job.action, job.reason])).toEqual([
      ["run", `running now in run ${runId}`],
      ["run", `running now in run ${runId}`],
      ["run", `queued in run ${runId}`],
    ]);
    const human = await runKaos(["plan"], { cwd: made.dir, env: env(made) });
    expect(human.stdout).toContain(`score=3  queued in run ${runId}`);

    writeFileSync(made.path("release"), "");
    expect((await up.exited).code).toBe(0);
    const after = await runKaos(["plan", "--json"], { cwd: made.dir, env: env(made) });
    expect((JSON.parse(after.stdout) as { changes: boolean }).changes).toBe(false);
    expectConsistent(made);
  }, 120_000);

  it("two stacks of one project apply at once, sharing one environment and one object store", async () => {
    const stack = `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", maxCpu: 2 });\n`;
    const made = project({ grid: { score: [1, 2, 3], sleep: 0.2 }, parallelism: 2, extra: { "stacks/a.ts": stack, "stacks/b.ts": stack } });
    const [a, b] = await Promise.all([
      runKaos(["up", "--stack", "a"], { cwd: made.dir, env: env(made) }),
      runKaos(["up", "--stack", "b"], { cwd: made.dir, env: env(made) }),
    ]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    // A stack reuses what the other one finished, or runs it itself; never both for one key within one stack.
    const rows = jobRows(made.dir);
    expect(rows.filter((row) => row.state !== "succeeded")).toEqual([]);
    expect(rows.filter((row) => row.stage === "build").length).toBeGreaterThanOrEqual(1);
    expect(integrity(made)).toBe("ok");
    expect(trustProblems(made.dir)).toEqual([]);
    for (const name of ["a", "b"]) {
      const plan = await runKaos(["plan", "--stack", name, "--json"], { cwd: made.dir });
      expect((JSON.parse(plan.stdout) as { changes: boolean }).changes).toBe(false);
    }
  }, 120_000);

  it("pipelines sharing a source bundle build its environment once, and no build replaces a finished one", async () => {
    const made = project({
      grid: { score: [1, 2] },
      parallelism: 2,
      extra: {
        "data2/value.txt": "v2",
        "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: {\n${["a", "b", "c"].map((name, i) => `  ${name}: { source: "src", data: "${i === 1 ? "data2" : "data"}", hyperparams: ${i === 2 ? `{ score: [3] }` : `"grid.json"`}, parallelism: 2 },`).join("\n")}\n} });\n`,
      },
    });
    const result = await runKaos(["up"], { cwd: made.dir, env: env(made) });
    expect(result.code, result.stderr).toBe(0);
    const rows = jobRows(made.dir);
    expect(rows.filter((row) => row.stage === "build")).toHaveLength(1);
    expect(rows.filter((row) => row.stage === "train" && row.state === "succeeded")).toHaveLength(5);
    expectConsistent(made);
  }, 120_000);

  it("two projects side by side run at once without touching each other", async () => {
    const one = project({ grid: { score: [1, 2], sleep: 0.3 }, parallelism: 2, value: "one" });
    const two = project({ grid: { score: [1, 2], sleep: 0.3 }, parallelism: 2, value: "two" });
    const [a, b] = await Promise.all([runKaos(["up"], { cwd: one.dir, env: env(one) }), runKaos(["up"], { cwd: two.dir, env: env(two) })]);
    expect(a.code, a.stderr).toBe(0);
    expect(b.code, b.stderr).toBe(0);
    for (const [made, value] of [
      [one, "one"],
      [two, "two"],
    ] as const) {
      const train = jobRows(made.dir).filter((row) => row.stage === "train");
      expect(train).toHaveLength(2);
      for (const row of train) expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "data.txt"), "utf8")).toBe(value);
      expectConsistent(made);
    }
    expect(await eventually(() => tagged.running().length === 0, 5_000)).toBe(true);
  }, 120_000);

  it("a reader never blocks the writer: a slow logs -f on one job while the sweep finishes", async () => {
    const made = project({ grid: { score: [1, 2, 3], sleep: 0.3 }, parallelism: 1 });
    const up = startKaos(["up"], { cwd: made.dir, env: env(made) });
    await up.waitFor(/p train 1\/3 \w+ .*running/);
    const [job] = (await listJobs(made.dir)).filter((j) => j.stage === "train");
    const follow = startKaos(["train", "logs", job!.id, "-f"], { cwd: made.dir });
    const result = await up.exited;
    expect(result.code, result.stderr).toBe(0);
    expect((await follow.exited).code).toBe(0);
    expectConsistent(made);
  }, 120_000);

  describe("a lock left by a kaos that ran elsewhere", () => {
    const waitingTrain = {
      content: `#!/bin/sh\necho "start $KAOS_JOB_ID x 0" >> "$KAOS_TEST_LOG"\nwhile [ ! -f "$KAOS_RELEASE" ]; do sleep 0.05; done\nmkdir -p "$1"\n`,
      mode: 0o755,
    };

    function unfinished(made: Project): string[] {
      return jobRows(made.dir)
        .filter((row) => row.state === "queued" || row.state === "running")
        .map((row) => row.state);
    }

    it("a kaos SIGKILLed under another host name does not lock the stack for ever: the next up takes over and reruns its jobs", async () => {
      const made = project({ grid: { score: [1, 2, 3, 4] }, parallelism: 2, extra: { "src/model/train": waitingTrain } });
      const release = made.path("release");
      // Containers and `unshare --uts` give a kaos another host name on the same machine and boot.
      const first = startKaos(["up"], {
        cwd: made.dir,
        env: { ...env(made), KAOS_RELEASE: release },
        launcher: ["unshare", "--uts", "sh", "-c", 'hostname kaos-elsewhere && exec "$0" "$@"'],
      });
      await first.waitFor(/p train 2\/4 \w+ .*running/);
      first.child.kill("SIGKILL");
      await first.exited;
      expect(unfinished(made)).toContain("running");
      writeFileSync(release, "");
      const second = await runKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: release } });
      expect(second.code, second.stderr).toBe(0);
      expect(second.stderr).toContain("4 succeeded");
      expectConsistent(made);
    }, 120_000);

    it("a lock held from another pid namespace cannot be judged: up names `kaos unlock`, which breaks it and settles that run's jobs", async () => {
      const made = project({ grid: { score: [1, 2, 3, 4, 5, 6] }, parallelism: 2, extra: { "src/model/train": waitingTrain } });
      const release = made.path("release");
      const first = startKaos(["up"], {
        cwd: made.dir,
        env: { ...env(made), KAOS_RELEASE: release },
        launcher: ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
      });
      await first.waitFor(/p train 2\/6 \w+ .*running/);
      // Killing unshare kills the kaos it forked, pid 1 of its namespace, and with it every process there.
      first.child.kill("SIGKILL");
      await first.exited;
      const left = unfinished(made);
      expect(left.filter((state) => state === "running")).toHaveLength(2);
      expect(left.filter((state) => state === "queued")).toHaveLength(4);

      const refused = await runKaos(["up"], { cwd: made.dir, env: env(made) });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(
        /error: another kaos \(pid \d+, `up`, started at \S+\) holds the lock of stack 'local' in \S+, and it ran on another machine or in another container, so this kaos cannot tell whether it still runs\n/,
      );
      expect(refused.stderr).toContain(
        "hint: if it has stopped, break its lock with `kaos unlock`: its unfinished jobs are marked interrupted and run again on the next up",
      );
      expect(unfinished(made)).toHaveLength(6);

      const unlocked = await runKaos(["unlock"], { cwd: made.dir, env: env(made) });
      expect(unlocked.code, unlocked.stderr).toBe(0);
      expect(unlocked.stdout).toMatch(
        /^unlocked stack local: it was held by pid \d+ on host \S+ \(`up`, since \S+\)\n6 unfinished jobs of that run marked interrupted; the next `kaos up` runs them again\n$/,
      );
      expect(unfinished(made)).toEqual([]);
      expect(runRows(made.dir).map((run) => run.state)).toEqual(["failed"]);

      writeFileSync(release, "");
      const second = await runKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: release } });
      expect(second.code, second.stderr).toBe(0);
      expect(second.stderr).toContain("6 succeeded");
      expectConsistent(made);
      // Nothing is left to break.
      const again = await runKaos(["unlock"], { cwd: made.dir, env: env(made) });
      expect(again.stdout).toBe("unlocked stack local: no kaos held it\n");
    }, 120_000);

    describe("work in progress of a kaos on another machine sharing the project", () => {
      // As that machine's kaos names them: its pid (dead here, so a pid alone would say it is gone) and its origin.
      const elsewhere = `${"ab".repeat(16)} 01234567-89ab-cdef-0123-456789abcdef pid:[4026531836]`;

      async function deadPid(): Promise<number> {
        const exited = spawn("true");
        await new Promise((done) => exited.on("exit", done));
        return exited.pid!;
      }

      /** Writes what a kaos stopped mid-write leaves under `.kaos/`: the paths made on the other machine, and one made here. */
      async function seed(made: Project): Promise<{ foreign: string[]; local: string[] }> {
        const stamp = `${await deadPid()}@${originTag(elsewhere)}`;
        const key = "c".repeat(64);
        const foreign = [
          `snapshots/${key}.building-${stamp}-0123abcd`,
          `trees/${key}.jsonl.${stamp}.89abcdef.tmp`,
          `envs/.building-${stamp}-0123456789ab-1700000000000-0123abcd`,
          `objects/tmp/put-${stamp}-${randomUUID()}`,
          `objects/tmp/dl-${"d".repeat(40)}.owner`,
        ];
        mkdirSync(made.path(".kaos", foreign[0]!, "inner"), { recursive: true });
        writeFileSync(made.path(".kaos", foreign[0]!, "inner", "f"), "half");
        writeFileSync(made.path(".kaos", foreign[1]!), "half");
        mkdirSync(made.path(".kaos", foreign[2]!), { recursive: true });
        mkdirSync(made.path(".kaos", "objects", "tmp"), { recursive: true });
        writeFileSync(made.path(".kaos", foreign[3]!), "half");
        writeFileSync(made.path(".kaos", foreign[4]!), JSON.stringify({ pid: 4242, startToken: null, origin: elsewhere }));
        const here = await deadPid();
        const local = [`trees/${key}.jsonl.${here}@${originTag()}.89abcdef.tmp`, `trees/${"e".repeat(64)}.jsonl.${here}.89abcdef.tmp`];
        for (const path of local) writeFileSync(made.path(".kaos", path), "half");
        return { foreign, local };
      }

      const present = (made: Project, paths: string[]): string[] => paths.filter((path) => existsSync(made.path(".kaos", path)));

      it("crash recovery leaves it, whatever its pid is here, and removes what a kaos on this machine left", async () => {
        const made = project({ grid: { score: [1] } });
        expect((await runKaos(["up"], { cwd: made.dir, env: env(made) })).code).toBe(0);
        const { foreign, local } = await seed(made);
        const again = await runKaos(["up"], { cwd: made.dir, env: env(made) });
        expect(again.code, again.stderr).toBe(0);
        expect(present(made, foreign)).toEqual(foreign);
        expect(present(made, local)).toEqual([]);
      }, 120_000);

      it("kaos unlock of that machine's lock removes it and names what it removed", async () => {
        const made = project({ grid: { score: [1] } });
        expect((await runKaos(["up"], { cwd: made.dir, env: env(made) })).code).toBe(0);
        const { foreign } = await seed(made);
        const db = openRaw(made.path(".kaos", "state.db"));
        try {
          db.prepare(
            "INSERT INTO writer_locks (stack, owner, pid, pid_start, host, origin, command, acquired_at) VALUES ('local', 'elsewhere', 4242, NULL, 'other-machine', ?, 'up', '2026-01-01T00:00:00.000Z')",
          ).run(elsewhere);
        } finally {
          db.close();
        }
        const refused = await runKaos(["up"], { cwd: made.dir, env: env(made) });
        expect(refused.stderr).toContain("it ran on another machine or in another container");
        expect(present(made, foreign)).toEqual(foreign);

        const unlocked = await runKaos(["unlock"], { cwd: made.dir, env: env(made) });
        expect(unlocked.code, unlocked.stderr).toBe(0);
        const [head, removed, ...rest] = unlocked.stdout.split("\n");
        expect(head).toBe("unlocked stack local: it was held by pid 4242 on host other-machine (`up`, since 2026-01-01T00:00:00.000Z)");
        expect(removed).toMatch(new RegExp(`^removed 5 unfinished temporaries it left in ${made.path(".kaos")}: `));
        expect(
          removed!
            .slice(removed!.indexOf(": ") + 2)
            .split(" ")
            .sort(),
        ).toEqual([...foreign].sort());
        expect(rest).toEqual([""]);
        expect(present(made, foreign)).toEqual([]);
        const after = await runKaos(["up"], { cwd: made.dir, env: env(made) });
        expect(after.code, after.stderr).toBe(0);
      }, 120_000);

      it("kaos gc, holding every stack's lock, removes it and says where it came from", async () => {
        const made = project({ grid: { score: [1] } });
        expect((await runKaos(["up"], { cwd: made.dir, env: env(made) })).code).toBe(0);
        const { foreign, local } = await seed(made);
        const dry = await runKaos(["gc"], { cwd: made.dir, env: env(made) });
        expect(dry.code, dry.stderr).toBe(0);
        expect(dry.stdout).toContain(
          "  would remove 7 unfinished temporaries of kaos processes that stopped mid-write (5 made on another machine or in another container sharing this project): ",
        );
        expect(present(made, foreign)).toEqual(foreign);
        const collected = await runKaos(["gc", "--yes", "--json"], { cwd: made.dir, env: env(made) });
        expect(collected.code, collected.stderr).toBe(0);
        const { temporaries } = JSON.parse(collected.stdout) as { temporaries: { path: string; elsewhere: boolean }[] };
        expect(
          temporaries
            .filter((temporary) => temporary.elsewhere)
            .map((temporary) => temporary.path)
            .sort(),
        ).toEqual([...foreign].sort());
        expect(
          temporaries
            .filter((temporary) => !temporary.elsewhere)
            .map((temporary) => temporary.path)
            .sort(),
        ).toEqual([...local].sort());
        expect(present(made, [...foreign, ...local])).toEqual([]);
      }, 120_000);
    });

    it("kaos unlock --json: refused as a JSON error while the holder runs, then the holder and the jobs it settled, then no holder", async () => {
      const made = project({ grid: { score: [1, 2, 3] }, parallelism: 2, extra: { "src/model/train": waitingTrain } });
      const first = startKaos(["up"], { cwd: made.dir, env: { ...env(made), KAOS_RELEASE: made.path("release") } });
      await first.waitFor(/p train 2\/3 \w+ .*running/);

      const refused = await runKaos(["unlock", "--json"], { cwd: made.dir, env: env(made) });
      expect(refused.code).toBe(1);
      expect((JSON.parse(refused.stdout) as { error: { code: string } }).error.code).toBe("STATE_LOCKED");

      first.child.kill("SIGKILL");
      await first.exited;
      const unfinished = jobRows(made.dir)
        .filter((row) => row.state === "queued" || row.state === "running")
        .map((row) => row.id);
      expect(unfinished).toHaveLength(3);
      const unlocked = await runKaos(["unlock", "--json"], { cwd: made.dir, env: env(made) });
      expect(unlocked.code, unlocked.stderr).toBe(0);
      expect(JSON.parse(unlocked.stdout)).toEqual({
        stack: "local",
        holder: { pid: first.child.pid, host: expect.any(String), command: "up", acquiredAt: expect.any(String) },
        interrupted: unfinished,
        removedTemporaries: [],
      });

      const again = await runKaos(["unlock", "--json"], { cwd: made.dir, env: env(made) });
      expect(again.code, again.stderr).toBe(0);
      expect(JSON.parse(again.stdout)).toEqual({ stack: "local", holder: null, interrupted: [], removedTemporaries: [] });
    }, 120_000);
  });
});
