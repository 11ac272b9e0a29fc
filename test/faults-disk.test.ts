/**
 * Disk trouble: `.kaos/` on a disk of a few MiB (a real tmpfs mounted for the
 * test when this process may mount, as root here and in CI; else a simulated
 * ENOSPC in kaos's own writes, see helpers/faults-disk.ts), filled by a
 * download, by a job's outputs, or by its log. Each gives a clear error,
 * leaves state that opens and that nothing trusts wrongly, and the next
 * `kaos up` with room again finishes the work.
 */
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { diskKind, readOnlyMount, smallDisk, type SmallDisk } from "./helpers/faults-disk.js";
import { eventually, jobRows, killTagged, listJobs, processesWithEnv, sha256Of, trustProblems } from "./helpers/faults.js";
import { sha256OfGenerated, startServer } from "./helpers/http-server.js";
import { dataViewsStack, makeProject, type Project, runKaos, trivialSourceBundle, under } from "./helpers/rig.js";
import { openRaw } from "./helpers/sqlite.js";

const kind = diskKind();
const TAG_NAME = "KAOS_FAULTS_TAG";
const tag = randomBytes(6).toString("hex");
const projects: Project[] = [];
const disks: SmallDisk[] = [];
afterEach(() => killTagged(TAG_NAME, tag));
afterAll(() => {
  for (const disk of disks) disk.release();
  projects.forEach((project) => {
    project.remove();
  });
});

const COPY_STACK = dataViewsStack("copy");

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

/** Every object in the project's store. */
function storedObjects(made: Project): string[] {
  const base = made.path(".kaos", "objects", "sha256");
  if (!existsSync(base)) return [];
  return readdirSync(base)
    .flatMap((shard) => readdirSync(join(base, shard)).map((rest) => shard + rest))
    .sort();
}

const LIST_DATA = `#!/bin/sh\nmkdir -p "$1" && ls "$KAOS_DATA_DIR" > "$1/files"\n`;

describe(`disk trouble on a small ${kind === "tmpfs" ? "tmpfs mounted on .kaos/" : "disk simulated by ENOSPC in kaos's own writes (no mount allowed here)"}`, () => {
  it(`a full disk during a download: the entry fails with ENOSPC named, nothing partial is kept or trusted, and the next run with room finishes (${kind})`, async () => {
    const size = 10 << 20;
    const server = await startServer({ "/value.txt": { body: "remote" }, "/big.bin": { generated: { size, seed: 7 } } });
    try {
      const made = project(
        `{ source: "src", manifest: "m.jsonl" }`,
        `#!/bin/sh\nmkdir -p "$1" && cat "$KAOS_DATA_DIR/value.txt" > "$1/value" && sha256sum "$KAOS_DATA_DIR/big.bin" | cut -d' ' -f1 > "$1/big"\n`,
        {
          "m.jsonl": [
            JSON.stringify({ url: `${server.url}/value.txt`, path: "value.txt" }),
            JSON.stringify({ url: `${server.url}/big.bin`, path: "big.bin" }),
          ].join("\n"),
        },
      );
      const small = disk(made, kind === "tmpfs" ? 6 << 20 : 2 << 20, "/objects/tmp/");
      const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
      expect(first.code).toBe(1);
      expect(first.stderr).toContain(
        `1 of 2 manifest entries of ${made.path("m.jsonl")} failed:\n  big.bin (${server.url}/big.bin): cannot write ${made.path(".kaos", "objects", "tmp")}/`,
      );
      expect(first.stderr).toMatch(/ENOSPC: no space left on device/);
      // The full disk is named with what is free, and the fix is said.
      expect(first.stderr).toContain(`: the disk holding ${made.path(".kaos", "objects", "tmp")}/`);
      expect(first.stderr).toMatch(/ is full \([^)]*free, ENOSPC: no space left on device/);
      expect(first.stderr).toContain("; free some space on ");
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

  it(`a snapshot that does not fit: the full disk is named with what the snapshot needs and what is free, the part stored is removed, and the next run with room finishes (${kind})`, async () => {
    // A stack that asks for copies: a mounted or linked view stores none of the data.
    const made = project(`{ source: "src", data: "data" }`, LIST_DATA, { "data/value.txt": "v", ...COPY_STACK });
    const small = disk(made, kind === "tmpfs" ? 4 << 20 : 2 << 20, "/objects/tmp/");
    const first = await runKaos(["up", "--stack", "copy"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
    expect(first.code, first.stderr).toBe(0);
    const before = storedObjects(made);
    // 4.5 MB of new data on a disk with less room: the first files fit, a later one does not.
    for (const name of ["big1.bin", "big2.bin", "big3.bin"]) writeFileSync(made.path("data", name), randomBytes(1_500_000));

    const full = await runKaos(["up", "--stack", "copy"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
    expect(full.code).toBe(1);
    expect(full.stderr).not.toMatch(NO_INTERNAL);
    expect(full.stderr).not.toContain("changed while kaos was taking its snapshot");
    const mounted = kind === "tmpfs" ? `${made.path(".kaos")})` : "";
    expect(full.stderr).toContain(
      `error: pipelines.p.data: cannot store the snapshot of ${made.path("data")}: the disk holding ${made.path(".kaos", "objects")} (mounted at ${mounted}`,
    );
    expect(full.stderr).toMatch(
      /\) is full \(4\.3 MiB needed, [\d.]+ (B|KiB|MiB|GiB|TiB) free\); the part already stored is removed again\nhint: free some space on \S+ \(or put \.kaos\/ on a bigger disk\) and run kaos again/,
    );
    // Half a snapshot holds no space: the store is as it was, scratch space included.
    expect(storedObjects(made)).toEqual(before);
    expect(readdirSync(made.path(".kaos", "objects", "tmp"))).toEqual([]);
    expect(trustProblems(made.dir)).toEqual([]);

    small.grow();
    const second = await runKaos(["up", "--stack", "copy"], { cwd: made.dir, env: { [TAG_NAME]: tag, ...small.env } });
    expect(second.code, second.stderr).toBe(0);
    const seen = jobRows(made.dir)
      .filter((row) => row.stage === "train" && row.state === "succeeded")
      .map((row) => readFileSync(made.path(".kaos", "jobs", row.id, "out", "files"), "utf8"));
    expect(seen).toContain("big1.bin\nbig2.bin\nbig3.bin\nvalue.txt\n");
  }, 120_000);

  it.runIf(kind === "tmpfs")(
    "a disk already full when kaos starts: kaos up names the full disk and its free space, and train list still reads (tmpfs)",
    async () => {
      const made = project(`{ source: "src", data: "data" }`, LIST_DATA, { "data/value.txt": "v" });
      const small = disk(made, 4 << 20);
      const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } });
      expect(first.code, first.stderr).toBe(0);
      try {
        writeFileSync(made.path(".kaos", "filler"), Buffer.alloc(8 << 20));
      } catch {
        // Filled: as much as fitted was written.
      }
      const full = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } });
      expect(full.code).toBe(1);
      expect(full.stderr).toContain(
        `error: cannot open ${made.path(".kaos", "state.db")}: the disk mounted at ${made.path(".kaos")} is full (`,
      );
      expect(full.stderr).toMatch(/is full \([\d.]+ (B|KiB) free, /);
      expect(full.stderr).toContain(`hint: free some space on ${made.path(".kaos")} (or put .kaos/ on a bigger disk) and run kaos again`);
      expect(full.stderr).not.toContain("readable and writable");
      const list = await runKaos(["train", "list"], { cwd: made.dir });
      expect(list.code, list.stderr).toBe(0);
      expect(list.stdout).toMatch(/train\s+succeeded/);

      rmSync(made.path(".kaos", "filler"));
      small.grow();
      const again = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } });
      expect(again.code, again.stderr).toBe(0);
    },
    120_000,
  );

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

describe("a .kaos that cannot be written or is not there", () => {
  it.runIf(kind === "tmpfs")(
    "a read-only .kaos: the commands that only read work, and kaos up names the read-only path (a read-only mount)",
    async () => {
      const made = project(`{ source: "src", data: "data" }`, LIST_DATA, { "data/value.txt": "v" });
      const first = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } });
      expect(first.code, first.stderr).toBe(0);
      const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
      // Closed cleanly, as an archived .kaos is: no -wal or -shm file beside the database, which a
      // reader cannot create on a read-only disk.
      const db = openRaw(made.path(".kaos", "state.db"));
      db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
      db.close();
      expect(readdirSync(made.path(".kaos")).filter((name) => /^state\.db-(wal|shm)$/.test(name))).toEqual([]);
      const readOnly = readOnlyMount(made.path(".kaos"));
      try {
        const list = await runKaos(["train", "list", "--json"], { cwd: made.dir });
        expect(list.code, list.stderr).toBe(0);
        expect((JSON.parse(list.stdout) as { id: string; state: string }[]).find((row) => row.id === job!.id)?.state).toBe("succeeded");
        const info = await runKaos(["train", "info", job!.id], { cwd: made.dir });
        expect(info.code, info.stderr).toBe(0);

        const up = await runKaos(["up"], { cwd: made.dir, env: { [TAG_NAME]: tag } });
        expect(up.code).toBe(1);
        expect(up.stderr).toContain(
          `error: cannot write ${made.path(".kaos", "state.db")}: ${made.path(".kaos")} is on a read-only file system (mounted at ${made.path(".kaos")})\n` +
            "hint: remount it read-write, or link .kaos to a writable directory; kaos train list, train info, train logs and train get only read and work on it as it is",
        );
        expect(up.stderr).not.toMatch(NO_INTERNAL);
      } finally {
        readOnly.release();
      }
    },
    120_000,
  );

  it("a .kaos symlink whose target is gone is named with its target, by readers and writers alike", async () => {
    const made = project(`{ source: "src", data: "data" }`, LIST_DATA, { "data/value.txt": "v" });
    symlinkSync("../unmounted-disk/kaos-state", made.path(".kaos"));
    const message =
      `error: ${made.path(".kaos")} is a symlink to ../unmounted-disk/kaos-state, which does not exist\n` +
      `hint: create ${resolve(made.dir, "../unmounted-disk/kaos-state")} (or mount the disk it is on), or remove the link and kaos makes a fresh .kaos directory`;
    for (const args of [["up"], ["train", "list"], ["plan"]]) {
      const result = await runKaos(args, { cwd: made.dir, env: { [TAG_NAME]: tag } });
      expect(result.code, args.join(" ")).toBe(1);
      expect(result.stderr, args.join(" ")).toContain(message);
    }
    expect(existsSync(resolve(made.dir, "../unmounted-disk"))).toBe(false);
  }, 120_000);
});
