/**
 * Disk trouble: `.kaos/` on a disk of a few MiB (a real tmpfs mounted for the
 * test when this process may mount, as root here and in CI; else a simulated
 * ENOSPC in kaos's own writes, see helpers/faults-disk.ts), filled by a
 * download, by a job's outputs, or by its log. Each gives a clear error,
 * leaves state that opens and that nothing trusts wrongly, and the next
 * `kaos up` with room again finishes the work.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { diskKind, smallDisk, type SmallDisk } from "./helpers/faults-disk.js";
import { eventually, jobRows, killTagged, listJobs, processesWithEnv, sha256Of, trustProblems } from "./helpers/faults.js";
import { sha256OfGenerated, startServer } from "./helpers/http-server.js";
import { makeProject, runKaos, trivialSourceBundle, under, type Project } from "./helpers/rig.js";

const kind = diskKind();
const TAG_NAME = "KAOS_FAULTS_TAG";
const tag = randomBytes(6).toString("hex");
const projects: Project[] = [];
const disks: SmallDisk[] = [];
afterEach(() => killTagged(TAG_NAME, tag));
afterAll(() => {
  for (const disk of disks) disk.release();
  projects.forEach((project) => project.remove());
});

function project(pipeline: string, train: string, files: Record<string, string> = {}): Project {
  const made = makeProject(
    {
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: ${pipeline} } });\n`,
      ...under("src", trivialSourceBundle(train)),
      ...files,
    },
    "kaos-disk-",
  );
  projects.push(made);
  return made;
}

function disk(made: Project, bytes: number, match?: string): SmallDisk {
  const small = smallDisk(kind, made.path(".kaos"), bytes, match);
  disks.push(small);
  return small;
}

const NO_INTERNAL = /internal error/;

describe(`disk trouble on a small ${kind === "tmpfs" ? "tmpfs mounted on .kaos/" : "disk simulated by ENOSPC in kaos's own writes (no mount allowed here)"}`, () => {
  it(`a full disk during a download: the entry fails with ENOSPC named, nothing partial is kept or trusted, and the next run with room finishes (${kind})`, async () => {
    const size = 10 << 20;
    const server = await startServer({ "/value.txt": { body: "remote" }, "/big.bin": { generated: { size, seed: 7 } } });
    try {
      const made = project(
        `{ source: "src", manifest: "m.jsonl" }`,
        `#!/bin/sh\nmkdir -p "$1" && cat "$KAOS_DATA_DIR/value.txt" > "$1/value" && sha256sum "$KAOS_DATA_DIR/big.bin" | cut -d' ' -f1 > "$1/big"\n`,
        { "m.jsonl": [JSON.stringify({ url: `${server.url}/value.txt`, path: "value.txt" }), JSON.stringify({ url: `${server.url}/big.bin`, path: "big.bin" })].join("\n") },
      );
      const small = disk(made, kind === "tmpfs" ? 6 << 20 : 2 << 20, "/objects/tmp/");
      const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
      expect(first.code).toBe(1);
      expect(first.stderr).toContain(`1 of 2 manifest entries of ${made.path("m.jsonl")} failed:\n  big.bin (${server.url}/big.bin): cannot write ${made.path(".kaos", "objects", "tmp")}/`);
      expect(first.stderr).toMatch(/ENOSPC: no space left on device/);
      expect(first.stderr).not.toMatch(NO_INTERNAL);
      // The state opens and holds the failed ingest; no train job ran; nothing partial remains.
      const listed = await listJobs(made.dir);
      expect(listed.map((job) => [job.stage, job.state])).toEqual([["ingest", "failed"]]);
      expect(readdirSync(made.path(".kaos", "objects", "tmp"))).toEqual([]);
      expect(trustProblems(made.dir)).toEqual([]);
      const lock = JSON.parse(readFileSync(made.path("m.jsonl.lock"), "utf8")) as { entries: Record<string, unknown> };
      expect(Object.keys(lock.entries)).toEqual(["value.txt"]);

      small.grow();
      const second = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
      expect(second.code, second.stderr).toBe(0);
      const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
      expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "big"), "utf8").trim()).toBe(sha256OfGenerated(size, 7));
      expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "value"), "utf8")).toBe("remote");
      expect(trustProblems(made.dir)).toEqual([]);
    } finally {
      await server.close();
    }
  }, 120_000);

  it(`a job filling the disk with its outputs: a clear error, its jobs stopped, and the next run with room reruns only what did not finish (${kind})`, async () => {
    const fill = kind === "tmpfs" ? `"$1/big.bin"` : "/dev/full";
    const made = project(
      `{ source: "src", data: "data", hyperparams: { a: [1, 2, 3] }, parallelism: 2 }`,
      `#!/bin/sh
mkdir -p "$1"
if grep -q '"a":1' "$KAOS_PARAMS_FILE"; then echo small > "$1/result"; exit 0; fi
sleep 0.5
if [ -n "$KAOS_FILL" ]; then head -c 16000000 /dev/zero > ${fill}; status=$?; else status=0; fi
i=0; while [ $i -lt 300 ]; do echo "line $i after filling the disk"; i=$((i+1)); done
echo done > "$1/result"
exit $status
`,
      { "data/value.txt": "v" },
    );
    const small = disk(made, kind === "tmpfs" ? 4 << 20 : 4 << 10, "/log$");
    const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, KAOS_FILL: "1", ...small.env } });
    expect(first.code).toBe(1);
    expect(first.stderr).not.toMatch(NO_INTERNAL);
    // Either kaos could still record the failures (each naming the full disk in its log note or exit), or it
    // could not write at all and says which disk is full.
    const recorded = /failed in [\d.]+m?s\s+\(exited with code 1/.test(first.stderr);
    if (!recorded) {
      expect(first.stderr).toContain(`error: the disk holding ${made.path(".kaos")} is full (`);
      expect(first.stderr).toContain("hint: free some space and run kaos up again: jobs that finished are kept, the others run again");
    }
    // No job process outlived the run.
    expect(await eventually(() => processesWithEnv(TAG_NAME, tag).length === 0, 5_000)).toBe(true);
    await listJobs(made.dir);
    expect(trustProblems(made.dir)).toEqual([]);
    const done = jobRows(made.dir).filter((row) => row.stage === "train" && row.state === "succeeded");

    small.grow();
    const second = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
    expect(second.code, second.stderr).toBe(0);
    const rows = jobRows(made.dir);
    expect(rows.filter((row) => row.state === "queued" || row.state === "running")).toEqual([]);
    // What had succeeded was kept, not run again.
    expect(second.stderr).toContain(`${3 - done.length} succeeded, 0 failed, 0 cancelled, ${done.length} reused`);
    for (const row of rows.filter((r) => r.stage === "train" && r.state === "succeeded")) {
      expect(existsSync(made.path(".kaos", "jobs", row.id, "out", "result"))).toBe(true);
    }
    expect(trustProblems(made.dir)).toEqual([]);
  }, 120_000);

  it(`a log that cannot be written: the job's result is recorded with the reason, and kaos carries on (${kind})`, async () => {
    const fill = kind === "tmpfs" ? `"$1/filler"` : "/dev/null";
    const made = project(
      `{ source: "src", data: "data" }`,
      // The disk fills once kaos has recorded the job as running (a disk full before that is the test above).
      `#!/bin/sh
mkdir -p "$1"
sleep 0.5
head -c 16000000 /dev/zero > ${fill} 2>/dev/null
i=0; while [ $i -lt 300 ]; do echo "line $i while the disk is full"; i=$((i+1)); done
sleep 0.5
rm -f "$1/filler"
echo done > "$1/result"
`,
      { "data/value.txt": "v" },
    );
    const small = disk(made, kind === "tmpfs" ? 4 << 20 : 2 << 10, "/log$");
    const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
    expect(first.stderr).not.toMatch(NO_INTERNAL);
    expect(first.code, first.stderr).toBe(0);
    const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
    expect(job!.state).toBe("succeeded");
    expect(job!.reason).toMatch(/^succeeded; its log could not be written \(ENOSPC: no space left on device, write\)$/);
    expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "result"), "utf8")).toBe("done\n");
    const logs = await runKaos(["train", "logs", job!.id], { cwd: made.dir });
    expect(logs.code).toBe(0);
    expect(sha256Of(made.path(".kaos", "jobs", job!.id, "log")).length).toBe(64);
  }, 120_000);
});
