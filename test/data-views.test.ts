/**
 * How a local data bundle reaches its jobs without a second copy: the
 * bundle's own folder mounted read-only in each job's mount namespace (the
 * default where the machine allows one), hardlinks to the bundle's own files
 * where the file system has no clones (ext4 here, `dataViews: "link"`, or a
 * folder a mount would show more of), a copy into the object store where
 * links cannot be made (another device), and a job whose data changed under
 * it failed with the file named.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { jobRows, trustProblems } from "./helpers/faults.js";
import { dataViewsStack, fileContent, makeProject, type Project, REPO_ROOT, runKaos, trivialSourceBundle, under } from "./helpers/rig.js";

const projects: Project[] = [];
const elsewhere: string[] = [];
afterAll(() => {
  for (const made of projects) made.remove();
  for (const dir of elsewhere) rmSync(dir, { recursive: true, force: true });
});

const hasStrace = spawnSync("sh", ["-c", "command -v strace"]).status === 0;

/** `--stack link`: the stack that asks for hardlinked data views. */
const LINK = ["--stack", "link"];

function project(train: string, data: Record<string, string>, dataPath = "data", grid: Record<string, unknown> = {}): Project {
  const pipeline = { source: "src", data: dataPath, hyperparams: "grid.json" };
  const made = makeProject(
    {
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n    p: ${JSON.stringify(pipeline)},\n  },\n});\n`,
      ...dataViewsStack("link"),
      "grid.json": JSON.stringify(grid),
      ...under("data", data),
      ...under("src", trivialSourceBundle(train)),
    },
    "kaos-views-",
  );
  projects.push(made);
  return made;
}

/** A project whose data bundle is a fresh folder on /dev/shm, another device than /tmp, holding value.txt ("v1"). */
function projectWithDataOnTmpfs(train: string): { made: Project; shm: string } {
  const shm = mkdtempSync("/dev/shm/kaos-views-");
  elsewhere.push(shm);
  expect(statSync(shm).dev).not.toBe(statSync("/tmp").dev);
  writeFileSync(join(shm, "value.txt"), "v1");
  return { made: project(train, {}, shm), shm };
}

const COPY_DATA = `#!/bin/sh\nmkdir -p "$1" && cat "$KAOS_DATA_DIR/value.txt" > "$1/data.txt"\n`;

function onlyView(made: Project): string {
  const names = execFileSync("ls", [made.path(".kaos", "snapshots")], { encoding: "utf8" })
    .split("\n")
    .filter((name) => /^[0-9a-f]{64}$/.test(name));
  expect(names).toHaveLength(1);
  return made.path(".kaos", "snapshots", names[0]!);
}

function objectOf(made: Project, file: string): string {
  const hash = execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0]!;
  return made.path(".kaos", "objects", "sha256", hash.slice(0, 2), hash.slice(2));
}

function trainReasons(made: Project): (string | null)[] {
  return jobRows(made.dir)
    .filter((row) => row.stage === "train")
    .map((row) => row.reason);
}

/**
 * Runs `kaos <args>` on a project whose job waits until told, edits the
 * bundle's value.txt meanwhile (same size, its modification time set back),
 * then lets the job read it and finish.
 */
async function editWhileTheJobRuns(
  args: string[],
  options: { through?: (made: Project) => string } = {},
): Promise<{ made: Project; value: string; code: number | null }> {
  const train = `#!/bin/sh\necho started > "$KAOS_TEST_STARTED"\nread go < "$KAOS_TEST_FIFO"\nmkdir -p "$1" && cat "$KAOS_DATA_DIR/value.txt" > "$1/data.txt"\n`;
  const made = project(train, { "value.txt": "v1" });
  const fifo = made.path("go.fifo");
  execFileSync("mkfifo", [fifo]);
  const value = made.path("data", "value.txt");
  // The path the edit is written through: the file's own unless told.
  const through = options.through?.(made) ?? value;
  const running = runKaos(args, { cwd: made.dir, env: { KAOS_TEST_FIFO: fifo, KAOS_TEST_STARTED: made.path("started") } });
  await fileContent(made.path("started"));
  const before = statSync(value);
  writeFileSync(through, "V2");
  utimesSync(through, before.atime, before.mtime);
  writeFileSync(fifo, "go\n");
  return { made, value, code: (await running).code };
}

/** A job that reports what its data view shows and who it runs as. */
const READS_ITS_VIEW = [
  "#!/bin/sh",
  'mkdir -p "$1"',
  'cat "$KAOS_DATA_DIR/value.txt" > "$1/data.txt"',
  '(cd "$KAOS_DATA_DIR" && find . | sort) > "$1/listing"',
  'id -u > "$1/uid"',
  "",
].join("\n");

/** The same, and whether a write into the view, or a new file in it, went through. */
const REPORTS_ITS_VIEW = [
  READS_ITS_VIEW,
  'if sh -c \'echo x >> "$KAOS_DATA_DIR/value.txt"\' 2>"$1/write-error"; then echo written > "$1/write"; else echo refused > "$1/write"; fi',
  'if touch "$KAOS_DATA_DIR/new.txt" 2>/dev/null; then echo made > "$1/create"; else echo refused > "$1/create"; fi',
  "",
].join("\n");

function jobOutput(made: Project, file: string): string {
  const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
  return readFileSync(made.path(".kaos", "jobs", job!.id, "out", file), "utf8");
}

/** A file of the outputs of the train job recorded last. */
function jobOutputOfLast(made: Project, file: string): string {
  const job = jobRows(made.dir)
    .filter((row) => row.stage === "train")
    .at(-1);
  return readFileSync(made.path(".kaos", "jobs", job!.id, "out", file), "utf8");
}

function changeTimes(dir: string, files: string[]): bigint[] {
  return files.map((file) => statSync(join(dir, file), { bigint: true }).ctimeNs);
}

describe("data views mounted read-only for each job (the default where a mount namespace can be had)", () => {
  it("the job sees the bundle's own folder, read-only: nothing stored or linked, its files untouched, a write refused", async () => {
    const made = project(REPORTS_ITS_VIEW, { "value.txt": "v1", "sub/more.bin": "x".repeat(100_000) });
    const files = ["value.txt", "sub/more.bin"];
    const before = changeTimes(made.path("data"), files);
    const result = await runKaos(["up"], { cwd: made.dir });
    expect(result.code, result.stderr).toBe(0);
    const view = onlyView(made);
    // Outside the job's namespace the view is an empty folder.
    expect(execFileSync("ls", ["-A", view], { encoding: "utf8" })).toBe("");
    for (const file of files) {
      expect(statSync(made.path("data", file)).nlink).toBe(1);
      expect(existsSync(objectOf(made, made.path("data", file)))).toBe(false);
    }
    expect(changeTimes(made.path("data"), files)).toEqual(before);
    expect(jobOutput(made, "data.txt")).toBe("v1");
    expect(jobOutput(made, "listing")).toBe(".\n./sub\n./sub/more.bin\n./value.txt\n");
    expect(jobOutput(made, "uid").trim()).toBe(String(process.getuid!()));
    expect(jobOutput(made, "write")).toBe("refused\n");
    expect(jobOutput(made, "write-error")).toContain("Read-only file system");
    expect(jobOutput(made, "create")).toBe("refused\n");
    expect(readFileSync(made.path("data", "value.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
    // The job is reused by the next up, which lays out nothing.
    const again = await runKaos(["up"], { cwd: made.dir });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toMatch(/nothing to do/);
  }, 60_000);

  it("an edit of the bundle while a job runs, same size and its modification time set back, fails the job naming the file", async () => {
    const { made, value, code } = await editWhileTheJobRuns(["up"]);
    expect(code).toBe(1);
    const [reason] = trainReasons(made);
    expect(reason).toBe(
      `the data changed while this job ran (${value}): KAOS_DATA_DIR is the data bundle's own folder, mounted read-only for the job, so an edit of the bundle shows in it; the job did not train on the data its key names: check those files, the next kaos up hashes them again`,
    );
    const plan = await runKaos(["plan", "--detailed-exitcode"], { cwd: made.dir });
    expect(plan.code, plan.stdout).toBe(2);
  }, 60_000);

  it("an edit through a hardlink outside the bundle while the only job runs, which no watch of the bundle's folders reports, fails the job naming the file", async () => {
    const { made, value, code } = await editWhileTheJobRuns(["up"], {
      through: (made) => {
        const elsewhere = made.path("elsewhere", "value.txt");
        mkdirSync(dirname(elsewhere));
        linkSync(made.path("data", "value.txt"), elsewhere);
        return elsewhere;
      },
    });
    expect(code).toBe(1);
    expect(readFileSync(value, "utf8")).toBe("V2");
    const reasons = trainReasons(made);
    expect(reasons).toHaveLength(1);
    expect(reasons[0]).toMatch(/^the data changed after kaos hashed it, by the end of this job \(/);
    expect(reasons[0]).toContain(`(${value})`);
  }, 60_000);

  it("an edit through a hardlink outside the bundle while the second of two jobs runs, after the first job's comparison with the plan, fails the whole sweep at its end", async () => {
    // With one job at a time, the second waits on the pipe once the first has ended.
    const train = `#!/bin/sh\nmkdir -p "$1"\nif [ -e "$KAOS_TEST_STARTED" ]; then echo second > "$KAOS_TEST_STARTED.second"; read go < "$KAOS_TEST_FIFO"; else echo first > "$KAOS_TEST_STARTED"; fi\ncat "$KAOS_DATA_DIR/value.txt" > "$1/data.txt"\n`;
    const made = project(train, { "value.txt": "v1" }, "data", { a: [1, 2] });
    const elsewhere = made.path("elsewhere", "value.txt");
    mkdirSync(dirname(elsewhere));
    linkSync(made.path("data", "value.txt"), elsewhere);
    const fifo = made.path("go.fifo");
    execFileSync("mkfifo", [fifo]);
    const started = made.path("started");
    const running = runKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_FIFO: fifo, KAOS_TEST_STARTED: started } });
    await fileContent(`${started}.second`);
    const before = statSync(elsewhere);
    writeFileSync(elsewhere, "V2");
    utimesSync(elsewhere, before.atime, before.mtime);
    writeFileSync(fifo, "go\n");
    const { code } = await running;
    expect(code).toBe(1);
    const reasons = trainReasons(made);
    expect(reasons).toHaveLength(2);
    for (const reason of reasons) expect(reason).toMatch(/during this sweep.*; no job of the sweep is trusted$/);
    expect(reasons[0]).toContain(made.path("data", "value.txt"));
  }, 60_000);

  it.skipIf(!hasStrace)(
    "a bundle whose folders have not changed for seconds is sealed from the plan's walk: each folder is listed once in the whole up (strace)",
    async () => {
      // In the repository: its folders were made at checkout, seconds before any test runs, and nothing writes there.
      const bundle = join(REPO_ROOT, "test", "fixtures", "data-bundle");
      const folders = ["", "sub", "sub/deeper"].map((folder) => (folder === "" ? bundle : join(bundle, folder)));
      const settledFor = (Date.now() - Math.max(...folders.map((folder) => statSync(folder).ctimeMs))) / 1000;
      expect(settledFor, "the fixture's folders changed within the last 3 s: run the test again").toBeGreaterThan(3);
      const made = project(READS_ITS_VIEW, {}, bundle);
      const traceDir = mkdtempSync(join(tmpdir(), "kaos-strace-"));
      elsewhere.push(traceDir);
      const traceFile = join(traceDir, "strace.txt");
      const result = await runKaos(["up"], { cwd: made.dir, launcher: ["strace", "-f", "-e", "trace=openat", "-o", traceFile] });
      expect(result.code, result.stderr).toBe(0);
      expect(jobOutput(made, "data.txt")).toBe("v1\n");
      expect(jobOutput(made, "listing")).toBe(".\n./sub\n./sub/deeper\n./sub/deeper/deep.txt\n./sub/more.txt\n./value.txt\n");
      // The plan's walk lists each folder; the seal lists none of them again.
      const listings = readFileSync(traceFile, "utf8")
        .split("\n")
        .filter((line) => line.includes("O_DIRECTORY"))
        .map((line) => /openat\([^,]+, "([^"]+)"/.exec(line)?.[1])
        .filter((path): path is string => path !== undefined && folders.includes(path.replace(/\/$/, "")));
      expect(listings.map((path) => path.replace(/\/$/, "")).sort()).toEqual([...folders].sort());
    },
    60_000,
  );

  it("a mount point removed while its job runs, as another kaos laying the same data out as links would, fails the job; the next up mounts it again", async () => {
    const train = `#!/bin/sh\nif [ -n "$KAOS_TEST_FIFO" ]; then echo started > "$KAOS_TEST_STARTED"; read go < "$KAOS_TEST_FIFO"; fi\nmkdir -p "$1"\nls "$KAOS_DATA_DIR" > "$1/listing" 2>&1 || true\n`;
    const made = project(train, { "value.txt": "v1" });
    const fifo = made.path("go.fifo");
    execFileSync("mkfifo", [fifo]);
    const running = runKaos(["up"], { cwd: made.dir, env: { KAOS_TEST_FIFO: fifo, KAOS_TEST_STARTED: made.path("started") } });
    await fileContent(made.path("started"));
    const view = onlyView(made);
    rmSync(view, { recursive: true });
    writeFileSync(fifo, "go\n");
    const result = await running;
    expect(result.code).toBe(1);
    expect(trainReasons(made)).toEqual([
      `KAOS_DATA_DIR's mount point ${view} was removed or replaced (by another kaos laying out the same data another way, or by hand), which takes the data away from a running job; the next kaos up mounts it again`,
    ]);
    const again = await runKaos(["up"], { cwd: made.dir });
    expect(again.code, again.stderr).toBe(0);
    expect(jobOutputOfLast(made, "listing")).toBe("value.txt\n");
  }, 60_000);

  it("a folder holding what its bundle skips (an ignored file, an empty folder) is linked instead: the job sees the bundle's files only", async () => {
    const made = project(READS_ITS_VIEW, { "value.txt": "v1", "notes.txt": "not data", ".kaosignore": "notes.txt\n" });
    const result = await runKaos(["up"], { cwd: made.dir });
    expect(result.code, result.stderr).toBe(0);
    const view = onlyView(made);
    expect(statSync(join(view, "value.txt")).ino).toBe(statSync(made.path("data", "value.txt")).ino);
    expect(jobOutput(made, "listing")).not.toContain("notes.txt");
    expect(jobOutput(made, "data.txt")).toBe("v1");

    const empty = project(READS_ITS_VIEW, { "value.txt": "v1" });
    execFileSync("mkdir", [empty.path("data", "nothing-here")]);
    const second = await runKaos(["up"], { cwd: empty.dir });
    expect(second.code, second.stderr).toBe(0);
    expect(statSync(join(onlyView(empty), "value.txt")).ino).toBe(statSync(empty.path("data", "value.txt")).ino);
    expect(jobOutput(empty, "listing")).toBe(".\n./value.txt\n");
  }, 60_000);

  it("a bundle on another device (tmpfs) is mounted too: nothing is copied", async () => {
    const { made, shm } = projectWithDataOnTmpfs(REPORTS_ITS_VIEW);
    const result = await runKaos(["up"], { cwd: made.dir });
    expect(result.code, result.stderr).toBe(0);
    expect(existsSync(objectOf(made, join(shm, "value.txt")))).toBe(false);
    expect(jobOutput(made, "data.txt")).toBe("v1");
    expect(jobOutput(made, "write")).toBe("refused\n");
    expect(readFileSync(join(shm, "value.txt"), "utf8")).toBe("v1");
  }, 60_000);

  it("where the machine refuses a mount namespace, the view is linked", async () => {
    const made = project(READS_ITS_VIEW, { "value.txt": "v1" });
    // What a kernel without unprivileged user namespaces, or a container without the capability, answers.
    const refusing = made.path("refusing-bin");
    execFileSync("mkdir", [refusing]);
    writeFileSync(join(refusing, "unshare"), '#!/bin/sh\necho "unshare: unshare failed: Operation not permitted" >&2\nexit 1\n', {
      mode: 0o755,
    });
    const result = await runKaos(["up"], { cwd: made.dir, env: { PATH: `${refusing}:${process.env.PATH ?? ""}` } });
    expect(result.code, result.stderr).toBe(0);
    expect(statSync(join(onlyView(made), "value.txt")).ino).toBe(statSync(made.path("data", "value.txt")).ino);
    expect(jobOutput(made, "data.txt")).toBe("v1");
  }, 60_000);
});

describe('data views on a file system with hardlinks and no clones (dataViews: "link")', () => {
  it("the view's files are the bundle's own inodes: nothing is copied into the object store", async () => {
    expect(execFileSync("stat", ["-f", "-c", "%T", "/tmp"], { encoding: "utf8" }).trim()).toMatch(/ext2\/ext3|ext4/);
    const made = project(COPY_DATA, { "value.txt": "v1", "sub/more.bin": "x".repeat(100_000) });
    const result = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(result.code, result.stderr).toBe(0);
    const view = onlyView(made);
    for (const file of ["value.txt", "sub/more.bin"]) {
      const [bundle, linked] = [statSync(made.path("data", file)), statSync(join(view, file))];
      expect(linked.ino).toBe(bundle.ino);
      expect(bundle.nlink).toBe(2);
      expect(existsSync(objectOf(made, made.path("data", file)))).toBe(false);
    }
    const [job] = jobRows(made.dir).filter((row) => row.stage === "train");
    expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "data.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);

  it("a job that writes into its input file is failed, the bundle file named, and the next plan sees the bundle changed", async () => {
    const train = `#!/bin/sh\necho tampered >> "$KAOS_DATA_DIR/value.txt"\nmkdir -p "$1" && cat "$KAOS_DATA_DIR/value.txt" > "$1/data.txt"\n`;
    const made = project(train, { "value.txt": "v1\n" });
    const first = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(first.code).toBe(1);
    const [reason] = trainReasons(made);
    expect(reason).toBe(
      `the data changed while this job ran (${made.path("data", "value.txt")}): KAOS_DATA_DIR holds links to the data bundle's own files, so a write into it changes the bundle and an edit of the bundle shows in it; the job did not train on the data its key names: check those files, the next kaos up hashes them again`,
    );
    // The view is not kept: nothing is reused from it.
    expect(execFileSync("ls", [made.path(".kaos", "snapshots")], { encoding: "utf8" }).trim()).toBe("");
    // The bundle now holds what the job wrote: the next plan gives the job a new key.
    expect(readFileSync(made.path("data", "value.txt"), "utf8")).toBe("v1\ntampered\n");
    const [failed] = jobRows(made.dir).filter((row) => row.stage === "train");
    const plan = JSON.parse((await runKaos(["plan", "--json", ...LINK], { cwd: made.dir })).stdout) as {
      pipelines: { jobs: { key: string; action: string }[] }[];
    };
    expect(plan.pipelines[0]!.jobs).toEqual([expect.objectContaining({ action: "run" })]);
    expect(plan.pipelines[0]!.jobs[0]!.key).not.toBe(failed!.key);
  }, 60_000);

  it("an edit of the bundle while a job runs, same size and its modification time set back, fails the job", async () => {
    const { made, value, code } = await editWhileTheJobRuns(["up", ...LINK]);
    expect(code).toBe(1);
    const [reason] = trainReasons(made);
    expect(reason).toMatch(
      new RegExp(`^the data changed (while this job ran|during this sweep) \\(${value.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\)`),
    );
  }, 60_000);
});

describe('the stat cache after a linked view (dataViews: "link")', () => {
  it("linking moves the files' inode change times, and the plan after kaos up still reads none of them", async () => {
    // The job waits past the racy window (1 s) after the files were linked, so that their new stamps are settled when the sweep ends.
    const train = `#!/bin/sh\necho started > "$KAOS_TEST_STARTED"\nread go < "$KAOS_TEST_FIFO"\nmkdir -p "$1"\n`;
    const made = project(train, { "value.txt": "v1", "sub/a.txt": "a", "sub/b.txt": "b" });
    const fifo = made.path("go.fifo");
    execFileSync("mkfifo", [fifo]);
    // Every file of the project past the racy window first, so that the plan of kaos up vouches for all of them.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const settled = statSync(made.path("data", "value.txt")).ctimeMs;
    const running = runKaos(["up", ...LINK], { cwd: made.dir, env: { KAOS_TEST_FIFO: fifo, KAOS_TEST_STARTED: made.path("started") } });
    await fileContent(made.path("started"));
    expect(statSync(made.path("data", "value.txt")).ctimeMs).not.toBe(settled);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    writeFileSync(fifo, "go\n");
    const result = await running;
    expect(result.code, result.stderr).toBe(0);
    const plan = await runKaos(["plan", ...LINK], { cwd: made.dir });
    expect(plan.stdout.split("\n")[0]).toMatch(/^stack link: 1 pipeline, (\d+) files checked \(\1 unchanged, 0 hashed, 0 B\)/);
  }, 60_000);

  it("a plan right after the first kaos up of new data reads none of the data's files", async () => {
    const data = Object.fromEntries(Array.from({ length: 20 }, (_, index) => [`part-${index % 4}/${index}.csv`, `${index}\n`.repeat(100)]));
    const made = project('#!/bin/sh\nmkdir -p "$1"\n', data);
    const up = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(up.code, up.stderr).toBe(0);
    const plan = await runKaos(["plan", "--detailed-exitcode", ...LINK], { cwd: made.dir });
    expect(plan.code, plan.stdout).toBe(0);
    const [, files, unchanged, hashed] = /(\d+) files checked \((\d+) unchanged, (\d+) hashed/.exec(plan.stdout) ?? [];
    expect(Number(files)).toBe(20 + Object.keys(trivialSourceBundle("")).length);
    // The source bundle, written as the data was, may be read again; none of the data's files is.
    expect(Number(hashed)).toBeLessThanOrEqual(Object.keys(trivialSourceBundle("")).length);
    expect(Number(unchanged)).toBeGreaterThanOrEqual(20);
  }, 60_000);

  it("an edit right after the first kaos up, same size and its modification time set back, is seen by the next plan", async () => {
    const made = project('#!/bin/sh\nmkdir -p "$1"\n', { "value.txt": "v1", "other.txt": "o" });
    const up = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(up.code, up.stderr).toBe(0);
    const value = made.path("data", "value.txt");
    const before = statSync(value);
    writeFileSync(value, "V2");
    utimesSync(value, before.atime, before.mtime);
    const plan = await runKaos(["plan", "--detailed-exitcode", ...LINK], { cwd: made.dir });
    expect(plan.code, plan.stdout).toBe(2);
    expect(plan.stdout).toMatch(/Plan: 0 stages and 1 job to run/);
  }, 60_000);
});

describe('data views where links cannot be made (dataViews: "link")', () => {
  it("a bundle on another device (tmpfs) is copied into the object store once, and a write into the view leaves the bundle whole", async () => {
    const { made, shm } = projectWithDataOnTmpfs(COPY_DATA);
    const first = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(first.code, first.stderr).toBe(0);
    const view = onlyView(made);
    expect(statSync(join(view, "value.txt")).ino).toBe(statSync(objectOf(made, join(shm, "value.txt"))).ino);
    expect(statSync(join(shm, "value.txt")).nlink).toBe(1);
    // As root no permission bit stops the write: it lands in kaos's copy, is found, and the object is dropped.
    writeFileSync(made.path("src/model/train"), `#!/bin/sh\necho tampered >> "$KAOS_DATA_DIR/value.txt"\n${COPY_DATA.split("\n")[1]}\n`);
    const second = await runKaos(["up", ...LINK], { cwd: made.dir });
    expect(second.code).toBe(1);
    expect(trainReasons(made)).toContainEqual(expect.stringMatching(/^KAOS_DATA_DIR was written to while this job ran \(value\.txt\)/));
    expect(readFileSync(join(shm, "value.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);
});
