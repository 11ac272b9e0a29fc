/**
 * Hostile bundles, manifests and train scripts: links out of a bundle, a data
 * bundle holding `.kaos/`, awkward file names, very deep trees, files kaos
 * cannot read, scripts that leave daemons behind, write outside their output
 * directory or fill it, and a manifest of thousands of entries of which some
 * fail. Each must end in a clear message or a correct run, never a crash, a
 * hang, or a trusted store that no longer matches its names.
 */
import { createHash } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { type SpawnSyncReturns, execFileSync, spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";
import { eventually, jobRows, processesWithEnv, sha256Of, trustProblems } from "./helpers/faults.js";
import { startServer } from "./helpers/http-server.js";
import { CLI, dataViewsStack, type FileMap, type Project, runKaos, startKaos, trivialSourceBundle, under } from "./helpers/rig.js";
import { taggedProjects } from "./helpers/tagged-projects.js";

const tagged = taggedProjects("kaos-hostile-");

/** Writes what the job sees in KAOS_DATA_DIR (files with their content, links with their target) to OUT/files.json. */
const INSPECT = `#!/usr/bin/env python3
import json, os, sys
sys.setrecursionlimit(20000)  # os.walk recurses once per level of the very deep tree
out, data = sys.argv[1], os.environ["KAOS_DATA_DIR"]
seen = {}
for root, dirs, names in os.walk(data):
    for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
        path = os.path.join(root, name)
        rel = os.path.relpath(path, data)
        seen[rel] = "-> " + os.readlink(path) if os.path.islink(path) else open(path, encoding="utf-8").read()
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "files.json"), "w", encoding="utf-8") as f:
    json.dump(seen, f, ensure_ascii=False, sort_keys=True)
`;

const CONFIG = (pipeline = `{ source: "src", data: "data", hyperparams: "grid.json" }`) =>
  `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: ${pipeline} } });\n`;

function project(files: FileMap, train = INSPECT): Project {
  return tagged.make({ "kaos.config.ts": CONFIG(), "grid.json": "{}", ...under("src", trivialSourceBundle(train)), ...files });
}

const env = tagged.env;

/**
 * A stack whose data views are copies kaos owns (`dataViews: "copy"`): on a
 * file system without clones (ext4 here) the default mounts the bundle's own
 * folder read-only for each job, and `dataViews: "link"` links the view's
 * files to the bundle's own, so a job's write reaches the user's files and is
 * found after the fact; with copies it reaches only kaos's copy.
 */
const COPY_STACK = dataViewsStack("copy");

/** A stack whose data views are hardlinks to the bundle's own files (`dataViews: "link"`). */
const LINK_STACK = dataViewsStack("link");

async function up(made: Project, extra: Record<string, string> = {}, stack?: string) {
  const args = stack === undefined ? ["up"] : ["up", "--stack", stack];
  return runKaos(args, { cwd: made.dir, env: { ...env, ...extra }, timeoutMs: 120_000 });
}

/** The start of the reason a job on a linked data view fails with when the bundle file `file` changed. */
function linkedDataChanged(when: string, file: string): RegExp {
  const quoted = file.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  return new RegExp(
    `^(not started: )?the data changed ${when} \\(([^)]*, )?${quoted}(, [^)]*)?\\): KAOS_DATA_DIR holds links to the data bundle's own files`,
  );
}

/** The jobs the next plan of the default stack would run, by key: none of them one the bundle's old content gave. */
async function nextPlanJobs(made: Project): Promise<{ key: string; action: string }[]> {
  const plan = JSON.parse((await runKaos(["plan", "--json"], { cwd: made.dir })).stdout) as {
    pipelines: { jobs: { key: string; action: string }[] }[];
  };
  return plan.pipelines[0]!.jobs;
}

function seenBy(made: Project, jobId: string): Record<string, string> {
  return JSON.parse(readFileSync(made.path(".kaos", "jobs", jobId, "out", "files.json"), "utf8")) as Record<string, string>;
}

const trainJobs = (made: Project) => jobRows(made.dir).filter((row) => row.stage === "train");

describe("hostile bundles", () => {
  it("symlinks leading out of a data or source bundle are refused at plan time, before any build or job", async () => {
    const outside = tagged.make({ "secret.txt": "secret" }, "kaos-outside-");
    const cases: { name: string; files: FileMap; message: string }[] = [
      {
        name: "absolute",
        files: { "data/secret": { symlink: outside.path("secret.txt") } },
        message: `pipelines.p.data: {dir}/data/secret: symlink to ${outside.path("secret.txt")} points outside the bundle`,
      },
      {
        name: "relative",
        files: { "data/sub/secret": { symlink: "../../../secret.txt" } },
        message: "pipelines.p.data: {dir}/data/sub/secret: symlink to ../../../secret.txt points outside the bundle",
      },
      {
        name: "through another link",
        files: { "data/sub/up": { symlink: ".." }, "data/sub/esc": { symlink: "up/.." } },
        message: "pipelines.p.data: {dir}/data/sub/esc: symlink to up/.. points outside the bundle",
      },
      {
        name: "in the source bundle",
        files: { "src/model/helper.py": { symlink: "/etc/hostname" } },
        message:
          "pipelines.p.source: {dir}/src/model/helper.py: symlink to /etc/hostname points outside the bundle; expected a link inside it (or a copy of the file)",
      },
    ];
    for (const entry of cases) {
      const made = project({ "data/value.txt": "v", ...entry.files });
      const message = entry.message.replaceAll("{dir}", made.dir);
      const plan = await runKaos(["plan"], { cwd: made.dir });
      expect(plan.code, entry.name).toBe(1);
      expect(plan.stderr, entry.name).toContain(`error: ${message}`);
      const result = await up(made);
      expect(result.code, entry.name).toBe(1);
      expect(result.stderr, entry.name).toContain(`error: ${message}`);
      expect(result.stderr).not.toContain("internal error");
      expect(jobRows(made.dir), entry.name).toEqual([]);
    }
  }, 120_000);

  it("links that stay inside work, and the job sees them as links (loops and dangling ones included)", async () => {
    const made = project({
      "data/value.txt": "v",
      "data/alias": { symlink: "value.txt" },
      "data/sub/file.txt": "in sub",
      "data/dirlink": { symlink: "sub" },
      "data/sub/back": { symlink: "../value.txt" },
      "data/loop1": { symlink: "loop2" },
      "data/loop2": { symlink: "loop1" },
      "data/dangling": { symlink: "not-there" },
    });
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expect(seenBy(made, trainJobs(made)[0]!.id)).toEqual({
      alias: "-> value.txt",
      dangling: "-> not-there",
      dirlink: "-> sub",
      loop1: "-> loop2",
      loop2: "-> loop1",
      "sub/back": "-> ../value.txt",
      "sub/file.txt": "in sub",
      "value.txt": "v",
    });
  }, 60_000);

  it("a data bundle holding .kaos/ (the project itself as data) never takes kaos's own state in", async () => {
    const made = project({
      "kaos.config.ts": CONFIG(`{ source: "src", data: ".", hyperparams: "grid.json" }`),
      "value.txt": "root",
      "nested/.kaos/state.db": "not a database",
      "nested/.git/HEAD": "ref",
      "nested/node_modules/x.js": "x",
      "nested/kept.txt": "kept",
    });
    const first = await up(made);
    expect(first.code, first.stderr).toBe(0);
    const seen = Object.keys(seenBy(made, trainJobs(made)[0]!.id));
    expect(seen.filter((path) => /(^|\/)(\.kaos|\.git|node_modules)(\/|$)/.test(path))).toEqual([]);
    expect(seen).toContain("nested/kept.txt");
    expect(seen).toContain("value.txt");
    // Running changed .kaos/ a lot; the bundle did not change.
    const second = await up(made);
    expect(second.code).toBe(0);
    expect(second.stderr).toContain("nothing to do");
  }, 60_000);

  it("file names with spaces, newlines, tabs, unicode and leading dashes, in data and source", async () => {
    const names = [
      "with space.txt",
      "new\nline.txt",
      "tab\there.txt",
      "ünïcødé-😀.txt",
      "-rf",
      "--help",
      "- dash dir/-n",
      "日本/データ.csv",
    ];
    const data = Object.fromEntries(names.map((name) => [`data/${name}`, `content of ${name}`]));
    const made = project({ ...data, "src/model/-n weird name.py": "x = 1\n" });
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    const [job] = trainJobs(made);
    expect(seenBy(made, job!.id)).toEqual(Object.fromEntries(names.map((name) => [name, `content of ${name}`])));
    const get = await runKaos(["train", "get", job!.id, "-o", "got", "--code"], { cwd: made.dir });
    expect(get.code, get.stderr).toBe(0);
    expect(readFileSync(made.path("got/source/model/-n weird name.py"), "utf8")).toBe("x = 1\n");
    // An edit to one of them is seen as exactly that change, and shown on one line.
    writeFileSync(made.path("data/new\nline.txt"), "edited");
    const plan = await runKaos(["plan", "--json"], { cwd: made.dir });
    const change = (JSON.parse(plan.stdout) as { pipelines: { changes: { data: { changed: number; examples: string[] } } }[] })
      .pipelines[0]!.changes.data;
    expect(change).toMatchObject({ changed: 1, examples: ["~new\nline.txt"] });
    const text = await runKaos(["plan"], { cwd: made.dir });
    expect(text.stdout).toContain(`data: 0 added, 1 changed, 0 removed  [~"new\\nline.txt"]`);
  }, 60_000);

  it("bundle files named like kaos's own markers are data like any other", async () => {
    const made = project({ "data/value.txt": "v", "data/.kaos-complete": "mine", "data/sub.complete": "also mine", "data/sub/x": "x" });
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expect(seenBy(made, trainJobs(made)[0]!.id)).toEqual({
      ".kaos-complete": "mine",
      "sub.complete": "also mine",
      "sub/x": "x",
      "value.txt": "v",
    });
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);

  it("a very deep tree (1000 nested directories) hashes, snapshots and trains", async () => {
    const deep = Array.from({ length: 1000 }, () => "d").join("/");
    const made = project({ "data/value.txt": "v", [`data/${deep}/bottom.txt`]: "deep" });
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expect(seenBy(made, trainJobs(made)[0]!.id)).toEqual({ "value.txt": "v", [`${deep}/bottom.txt`]: "deep" });
    const plan = await runKaos(["plan", "--detailed-exitcode"], { cwd: made.dir });
    expect(plan.code).toBe(0);
  }, 60_000);

  it("a FIFO in a bundle is a clear error, not a hang or a crash (root: no permission bits apply)", async () => {
    const made = project({ "data/value.txt": "v" });
    execFileSync("mkfifo", [made.path("data/pipe")]);
    for (const command of ["plan", "up"]) {
      const result = await runKaos([command], { cwd: made.dir, timeoutMs: 30_000 });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(
        `error: Cannot hash "pipe" in bundle ${made.path("data")}: it is a socket, FIFO or device file, which a bundle cannot hold.\nhint: Remove it from the bundle or exclude it in .kaosignore.`,
      );
    }
    writeFileSync(made.path("data/.kaosignore"), "pipe\n");
    expect((await up(made)).code).toBe(0);
  }, 60_000);

  const nobody =
    spawnSync("setpriv", [
      "--reuid=nobody",
      "--regid=nogroup",
      "--clear-groups",
      process.execPath,
      "-e",
      "process.exit(process.getuid() === 0 ? 1 : 0)",
    ]).status === 0;
  /** The project, owned by nobody, and a way to run the CLI in it as nobody. */
  function nobodysProject(files: FileMap): { made: Project; asNobody: (args: string[]) => SpawnSyncReturns<string> } {
    const made = project(files);
    const home = made.path("home");
    mkdirSync(home);
    const own = (path: string) => {
      chownSync(path, 65534, 65534);
      if (statSync(path).isDirectory()) for (const entry of readdirSync(path)) own(join(path, entry));
    };
    own(made.dir);
    const asNobody = (args: string[]) =>
      spawnSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, CLI, ...args], {
        cwd: made.dir,
        env: {
          PATH: "/usr/local/bin:/usr/bin:/bin",
          HOME: home,
          TMPDIR: home,
          NO_COLOR: "1",
          KAOS_PYTHON: "/usr/bin/python3",
          ...tagged.env,
        },
        encoding: "utf8",
        timeout: 60_000,
      });
    return { made, asNobody };
  }
  /** Writes into its data view and says whether the system refused the write. */
  const TRIES_TO_WRITE_ITS_DATA = `#!/bin/sh\nmkdir -p "$1"\nif echo x >> "$KAOS_DATA_DIR/value.txt" 2>/dev/null; then echo written > "$1/write"; else echo refused > "$1/write"; fi\n`;
  it.skipIf(!nobody)(
    'unreadable files and directories are a clear error (run as user nobody through setpriv, since root reads everything; dataViews: "copy")',
    async () => {
      const { made, asNobody } = nobodysProject({
        "data/value.txt": "v",
        "data/secret.txt": "secret",
        "data/closed/inner.txt": "inner",
        ...COPY_STACK,
      });
      chmodSync(made.path("data/secret.txt"), 0o000);
      chownSync(made.path("data/secret.txt"), 0, 0);
      let result = asNobody(["plan"]);
      expect(result.status, result.stderr).toBe(1);
      expect(result.stderr).toContain(
        `error: Cannot read "secret.txt" in bundle ${made.path("data")}: permission denied.\nhint: Make it readable (chmod u+r) or exclude it in .kaosignore.`,
      );
      chownSync(made.path("data/secret.txt"), 65534, 65534);
      chmodSync(made.path("data/secret.txt"), 0o644);
      chmodSync(made.path("data/closed"), 0o000);
      chownSync(made.path("data/closed"), 0, 0);
      result = asNobody(["up"]);
      expect(result.status, result.stderr).toBe(1);
      expect(result.stderr).toContain(
        `error: Cannot list directory "closed" in bundle ${made.path("data")}: permission denied.\nhint: Make it readable (chmod u+rx) or exclude it in .kaosignore.`,
      );
      expect(result.stderr).not.toContain("internal error");
      chownSync(made.path("data/closed"), 65534, 65534);
      chmodSync(made.path("data/closed"), 0o755);
      // As a user a copied data view holds: the script's write into it is refused by the system.
      writeFileSync(made.path("src/model/train"), TRIES_TO_WRITE_ITS_DATA);
      result = asNobody(["up", "--stack", "copy"]);
      expect(result.status, result.stderr).toBe(0);
      const [job] = trainJobs(made);
      expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "write"), "utf8")).toBe("refused\n");
      expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v");
      expect(trustProblems(made.dir)).toEqual([]);
    },
    120_000,
  );

  it.skipIf(!nobody)(
    "as a user, a mounted data view is the bundle's own folder, read-only: the job runs as the user and its write is refused",
    async () => {
      const { made, asNobody } = nobodysProject({ "data/value.txt": "v" });
      writeFileSync(made.path("src/model/train"), `${TRIES_TO_WRITE_ITS_DATA}id -u > "$1/uid"\n`);
      const result = asNobody(["up"]);
      expect(result.status, result.stderr).toBe(0);
      const [job] = trainJobs(made);
      expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "write"), "utf8")).toBe("refused\n");
      expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "uid"), "utf8")).toBe("65534\n");
      expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v");
      expect(statSync(made.path("data/value.txt")).nlink).toBe(1);
      expect(trustProblems(made.dir)).toEqual([]);
    },
    120_000,
  );

  it.skipIf(!nobody || process.getuid?.() !== 0)(
    "as a user, a bundle on a file system mounted nosuid and nodev, which a user namespace cannot mount again, is not mounted: the job runs on a copy (root mounts the tmpfs)",
    async () => {
      const { made, asNobody } = nobodysProject({});
      const data = made.path("data");
      rmSync(data, { recursive: true, force: true });
      mkdirSync(data);
      execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m,nosuid,nodev,mode=0755,uid=65534,gid=65534", "tmpfs", data]);
      try {
        writeFileSync(join(data, "value.txt"), "v");
        chownSync(join(data, "value.txt"), 65534, 65534);
        writeFileSync(made.path("src/model/train"), TRIES_TO_WRITE_ITS_DATA);
        const result = asNobody(["up"]);
        expect(result.status, result.stderr).toBe(0);
        const [job] = trainJobs(made);
        expect(job!.state).toBe("succeeded");
        expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "write"), "utf8")).toBe("refused\n");
        expect(readFileSync(join(data, "value.txt"), "utf8")).toBe("v");
        expect(trustProblems(made.dir)).toEqual([]);
      } finally {
        execFileSync("umount", [data]);
      }
    },
    120_000,
  );

  it.skipIf(!nobody)(
    "as a user, a linked data view's files are the user's own and writable: the write goes through, is found, and the job fails naming the file (dataViews: \"link\")",
    async () => {
      const { made, asNobody } = nobodysProject({ "data/value.txt": "v", ...LINK_STACK });
      writeFileSync(made.path("src/model/train"), TRIES_TO_WRITE_ITS_DATA);
      const result = asNobody(["up", "--stack", "link"]);
      expect(result.status, result.stderr).toBe(1);
      const [job] = trainJobs(made);
      expect(job!.state).toBe("failed");
      expect(job!.reason).toMatch(linkedDataChanged("while this job ran", made.path("data/value.txt")));
      expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("vx\n");
      expect(trustProblems(made.dir)).toEqual([]);
      const [next] = await nextPlanJobs(made);
      expect(next!.key).not.toBe(job!.key);
    },
    120_000,
  );
});

describe("hostile train scripts", () => {
  it("a script that forks background children: its job ends when it does, and the children go with it", async () => {
    const train = `#!/bin/sh
sleep 300 &
setsid sleep 301 > /dev/null 2>&1 < /dev/null &
nohup sleep 302 > /dev/null 2>&1 &
( trap '' TERM HUP; exec sleep 303 ) &
mkdir -p "$1" && echo done > "$1/done"
`;
    const made = project({ "data/value.txt": "v" }, train);
    // Had kaos waited for the children (sleeping for minutes), the test would time out.
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    const [job] = trainJobs(made);
    expect(job!.state).toBe("succeeded");
    expect(await eventually(() => processesWithEnv("KAOS_JOB_ID", job!.id).length === 0, 5_000)).toBe(true);
    expect(tagged.running()).toEqual([]);
  }, 60_000);

  const WRITES_ITS_DATA = `#!/bin/sh
cat "$KAOS_DATA_DIR/value.txt" > /dev/null
if [ -f "$KAOS_EVIL" ] && grep -q '"a":2' "$KAOS_PARAMS_FILE"; then
  echo tampered >> "$KAOS_DATA_DIR/value.txt"
  echo new > "$KAOS_DATA_DIR/added.txt"
fi
mkdir -p "$1" && cp "$KAOS_DATA_DIR/value.txt" "$1/data.txt"
`;
  it('a script writing into KAOS_DATA_DIR (as root, which mode bits do not stop) fails, and nothing it changed is trusted again (dataViews: "copy")', async () => {
    const made = project(
      { "data/value.txt": "v1", "data/other.txt": "o", "grid.json": JSON.stringify({ a: [1, 2, 3] }), evil: "", ...COPY_STACK },
      WRITES_ITS_DATA,
    );
    const first = await up(made, { KAOS_EVIL: made.path("evil") }, "copy");
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    const byParam = (a: number) => rows.find((row) => JSON.parse(row.params).a === a)!;
    expect(byParam(1).state).toBe("succeeded");
    expect(byParam(2)).toMatchObject({ state: "failed" });
    expect(byParam(2).reason).toMatch(
      /^KAOS_DATA_DIR was written to while this job ran \((\.|value\.txt)(, [^)]+)*\); it is read-only: the data is laid out again on the next kaos up$/,
    );
    expect(byParam(3).reason).toMatch(/^not started: KAOS_DATA_DIR was written to by a job of this sweep/);
    expect(trustProblems(made.dir)).toEqual([]);
    // The user's bundle was never touched; the next run lays the data out again and every job sees it whole.
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
    const second = await up(made, { KAOS_EVIL: made.path("no-such-file") }, "copy");
    expect(second.code, second.stderr).toBe(0);
    for (const row of trainJobs(made).filter((r) => r.state === "succeeded")) {
      expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "data.txt"), "utf8")).toBe("v1");
    }
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);

  it("a script writing into a mounted KAOS_DATA_DIR (as root) is refused by the system: the user's files stay whole and every job trains on them", async () => {
    const made = project(
      { "data/value.txt": "v1", "data/other.txt": "o", "grid.json": JSON.stringify({ a: [1, 2, 3] }), evil: "" },
      WRITES_ITS_DATA,
    );
    const first = await up(made, { KAOS_EVIL: made.path("evil") });
    expect(first.code, first.stderr).toBe(0);
    const rows = trainJobs(made);
    expect(rows.map((row) => row.state)).toEqual(["succeeded", "succeeded", "succeeded"]);
    for (const row of rows) expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "data.txt"), "utf8")).toBe("v1");
    const tried = rows.find((row) => JSON.parse(row.params).a === 2)!;
    expect((await runKaos(["train", "logs", tried.id], { cwd: made.dir })).stdout).toContain("Read-only file system");
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
    expect(existsSync(made.path("data/added.txt"))).toBe(false);
    expect(trustProblems(made.dir)).toEqual([]);
    expect((await nextPlanJobs(made)).map((job) => job.action)).toEqual(["skip", "skip", "skip"]);
  }, 60_000);

  it('a script writing into a linked KAOS_DATA_DIR changes the user\'s file: the job fails naming it, no later job starts, and the next plan sees the change (dataViews: "link")', async () => {
    const made = project(
      { "data/value.txt": "v1", "data/other.txt": "o", "grid.json": JSON.stringify({ a: [1, 2, 3] }), evil: "", ...LINK_STACK },
      WRITES_ITS_DATA,
    );
    const first = await up(made, { KAOS_EVIL: made.path("evil") }, "link");
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    const byParam = (a: number) => rows.find((row) => JSON.parse(row.params).a === a)!;
    expect(byParam(1).state).toBe("succeeded");
    expect(byParam(2).state).toBe("failed");
    expect(byParam(2).reason).toMatch(linkedDataChanged("while this job ran", made.path("data/value.txt")));
    expect(byParam(3).state).toBe("failed");
    expect(byParam(3).reason).toMatch(linkedDataChanged("before this job started", made.path("data/value.txt")));
    // The view's files are the user's: the write went through to them.
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1tampered\n");
    // Directories are kaos's own: a new file lands in the view only, and goes with it.
    expect(existsSync(made.path("data/added.txt"))).toBe(false);
    // Only the job that ran before the write succeeded, on the data its key names.
    expect(rows.filter((row) => row.state === "succeeded").map((row) => row.id)).toEqual([byParam(1).id]);
    expect(readFileSync(made.path(".kaos", "jobs", byParam(1).id, "out", "data.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
    const keys = new Set(rows.map((row) => row.key));
    const next = await nextPlanJobs(made);
    expect(next).toHaveLength(3);
    for (const job of next) {
      expect(job.action).toBe("run");
      expect(keys.has(job.key)).toBe(false);
    }
  }, 60_000);

  // mmap writes reach the file without a write(2), so inotify never hears of them; the sweep's last check of every stat does.
  const WRITES_THROUGH_MMAP = `#!/usr/bin/env python3
import json, mmap, os, sys
params = json.load(open(os.environ["KAOS_PARAMS_FILE"]))
if params["a"] == 2:
    with open(os.path.join(os.environ["KAOS_DATA_DIR"], "value.txt"), "r+b") as f:
        view = mmap.mmap(f.fileno(), 0)
        view[0:1] = b"X"
        view.flush()
        view.close()
os.makedirs(sys.argv[1], exist_ok=True)
open(os.path.join(sys.argv[1], "done"), "w").write("done")
`;
  it('a write through a shared memory mapping, which no directory watch reports, fails the whole sweep at its end (dataViews: "copy")', async () => {
    const made = project({ "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }), ...COPY_STACK }, WRITES_THROUGH_MMAP);
    const first = await up(made, {}, "copy");
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    expect(rows.map((row) => row.state)).toEqual(["failed", "failed"]);
    for (const row of rows) {
      expect(row.reason).toMatch(
        /^KAOS_DATA_DIR was written to during this sweep \(value\.txt\); it is read-only: the data is laid out again on the next kaos up; no job of the sweep is trusted$/,
      );
    }
    expect(trustProblems(made.dir)).toEqual([]);
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
  }, 60_000);

  it("a shared memory mapping of a mounted view cannot be opened for writing: that job fails on its own error, the others and the user's file are untouched", async () => {
    const made = project({ "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }) }, WRITES_THROUGH_MMAP);
    const first = await up(made);
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    const byParam = (a: number) => rows.find((row) => JSON.parse(row.params).a === a)!;
    expect(byParam(1).state).toBe("succeeded");
    expect(byParam(2).state).toBe("failed");
    expect(byParam(2).reason).toBe("exited with code 1");
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);

  it('a write through a shared memory mapping of a linked view changes the user\'s file: the whole sweep fails naming it, and the next plan sees the change (dataViews: "link")', async () => {
    const made = project({ "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }), ...LINK_STACK }, WRITES_THROUGH_MMAP);
    const first = await up(made, {}, "link");
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    expect(rows.map((row) => row.state)).toEqual(["failed", "failed"]);
    for (const row of rows) {
      expect(row.reason).toMatch(linkedDataChanged("during this sweep", made.path("data/value.txt")));
      expect(row.reason).toMatch(/; no job of the sweep is trusted$/);
    }
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("X1");
    expect(trustProblems(made.dir)).toEqual([]);
    const keys = new Set(rows.map((row) => row.key));
    for (const job of await nextPlanJobs(made)) expect(keys.has(job.key)).toBe(false);
  }, 60_000);

  it("a script writing into its working directory or the project's bundle: its own copy, or a change the next plan sees", async () => {
    const train = `#!/bin/sh
echo "scribbled" >> params.txt
mkdir -p "$1" && wc -l < params.txt > "$1/lines"
if grep -q '"a":2' "$KAOS_PARAMS_FILE"; then echo changed > "$KAOS_PROJECT/data/value.txt"; fi
`;
    // With a linked view the edit of the bundle would also reach the running job, and fail it (test/data-views.test.ts).
    const made = project(
      { "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }), "src/model/params.txt": "original\n", ...COPY_STACK },
      train,
    );
    const result = await up(made, { KAOS_PROJECT: made.dir }, "copy");
    expect(result.code, result.stderr).toBe(0);
    for (const row of trainJobs(made)) expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "lines"), "utf8").trim()).toBe("2");
    expect(readFileSync(made.path("src/model/params.txt"), "utf8")).toBe("original\n");
    const plan = JSON.parse((await runKaos(["plan", "--json", "--stack", "copy"], { cwd: made.dir })).stdout) as {
      pipelines: { changes: { source: unknown; data: { changed: number } } }[];
    };
    expect(plan.pipelines[0]!.changes.source).toBeNull();
    expect(plan.pipelines[0]!.changes.data.changed).toBe(1);
  }, 60_000);

  it("a script that fills its output: a huge sparse file, FIFOs and a link to /dev/zero where metrics go", async () => {
    const train = `#!/bin/sh
mkdir -p "$1/metrics" "$1/many"
truncate -s 256M "$1/huge.bin"
head -c 16777216 /dev/urandom > "$1/real.bin"
i=0; while [ $i -lt 500 ]; do echo $i > "$1/many/$i"; i=$((i+1)); done
echo '{"accuracy": 0.5}' > "$1/metrics/good.json"
mkfifo "$1/metrics/fifo.json" "$1/pipe"
ln -s /dev/zero "$1/metrics/zero.json"
truncate -s 64M "$1/metrics/big.json"
`;
    const made = project({ "data/value.txt": "v" }, train);
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    const [job] = trainJobs(made);
    const info = await runKaos(["train", "info", job!.id, "--json"], { cwd: made.dir, timeoutMs: 20_000 });
    expect(info.code, info.stderr).toBe(0);
    const read = JSON.parse(info.stdout) as { metrics: Record<string, unknown>; metricsSkipped: unknown[] };
    expect(read.metrics).toEqual({ accuracy: 0.5 });
    expect(read.metricsSkipped).toEqual([
      { file: "metrics/big.json", reason: `${64 << 20} bytes, more than ${16 << 20}` },
      { file: "metrics/fifo.json", reason: "not a regular file" },
      { file: "metrics/zero.json", reason: "not a regular file" },
    ]);
    const get = await runKaos(["train", "get", job!.id, "-o", "got"], { cwd: made.dir, timeoutMs: 60_000 });
    expect(get.code, get.stderr).toBe(0);
    expect(get.stderr).toContain(
      `skipped ${made.path(".kaos", "jobs", job!.id, "out", "metrics", "fifo.json")}: not a regular file, directory or symlink`,
    );
    expect(statSync(made.path("got/out/huge.bin")).size).toBe(256 << 20);
    expect(sha256Of(made.path("got/out/real.bin"))).toBe(sha256Of(made.path(".kaos", "jobs", job!.id, "out", "real.bin")));
    expect(readdirSync(made.path("got/out/many"))).toHaveLength(500);
    expect(existsSync(made.path("got/out/pipe"))).toBe(false);
  }, 60_000);

  it("metrics: nested objects become dotted names, lists and nulls are skipped with the reason, a file that is not JSON is named with its parse error, and -s offers only metric names", async () => {
    const train = `#!/bin/sh
mkdir -p "$1/metrics"
echo '{"val": {"loss": 0.25, "top": {"k5": 0.9}}, "acc": 0.5, "model": "svm", "curve": [0.1, 0.2], "best": null}' > "$1/metrics/eval.json"
echo '{"acc": 0.5,' > "$1/metrics/broken.json"
echo '[0.1, 0.2]' > "$1/metrics/list.json"
`;
    const made = project({ "data/value.txt": "v", "grid.json": JSON.stringify({ a: [1, 2] }) }, train);
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    const [job] = trainJobs(made);
    const json = await runKaos(["train", "info", job!.id, "--json"], { cwd: made.dir });
    expect(json.code, json.stderr).toBe(0);
    const read = JSON.parse(json.stdout) as {
      metrics: Record<string, unknown>;
      metricsSkipped: { file: string; key?: string; reason: string }[];
    };
    expect(read.metrics).toEqual({ "val.loss": 0.25, "val.top.k5": 0.9, acc: 0.5, model: "svm" });
    expect(read.metricsSkipped.map((skip) => [skip.file, skip.key ?? null])).toEqual([
      ["metrics/broken.json", null],
      ["metrics/eval.json", "curve"],
      ["metrics/eval.json", "best"],
      ["metrics/list.json", null],
    ]);
    expect(read.metricsSkipped[0]!.reason).toMatch(/^not valid JSON \(.+\)$/);

    const text = await runKaos(["train", "info", job!.id, "-s", "val.loss"], { cwd: made.dir });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain("\n  val.loss  0.25\n");
    expect(text.stdout).toMatch(/\n {2}skipped metrics\/broken\.json: not valid JSON \(.+\)\n/);
    expect(text.stdout).toContain("\n  skipped metrics/eval.json: curve: a list; expected a number");
    expect(text.stdout).toContain("\n  skipped metrics/eval.json: best: null; expected a number");
    expect(text.stdout).toContain("\n  skipped metrics/list.json: a list; expected an object of metrics");
    expect(text.stdout).toMatch(/sweep \(2 combinations, by val\.loss\)\n {2}ID +STATE +val\.loss +acc +val\.top\.k5 +PARAMS\n/);

    const unknown = await runKaos(["train", "info", job!.id, "-s", "broken.json"], { cwd: made.dir });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe(
      `error: -s broken.json: no job of this sweep has a numeric metric "broken.json"; expected one of: acc, val.loss, val.top.k5\n`,
    );
    const words = await runKaos(["train", "info", job!.id, "-s", "model"], { cwd: made.dir });
    expect(words.code).toBe(1);
    expect(words.stderr).toBe(
      `error: -s model: "model" is a string, not a number, in every job of this sweep that has it; expected one of: acc, val.loss, val.top.k5\n`,
    );
  }, 60_000);
});

/** What must never reach a terminal raw: a title-setting OSC, clear-screen, BEL, the one-byte CSI, a bidi override, a forged line. */
const RAW = ["\u001b]0;", "\u001b[2J", "\u0007", "\u009b", "\u202e", "\nforged"];

function expectNoRaw(text: string, what: string): void {
  for (const raw of RAW) expect(text.includes(raw), `${what} holds ${JSON.stringify(raw)} raw:\n${text}`).toBe(false);
}

describe("hostile strings in human output", () => {
  const grid = {
    "t\u001b[2J": ["\u001b]0;owned\u0007", "x\nforged row"],
    "\u202eevil": "\u009b31m",
    "a=b": "c",
    a: "b=c",
  };
  const metrics = {
    "acc\u001b]0;owned\u0007": 0.5,
    note: "\u001b[2Jgone\nforged row",
    "bidi\u202e": 1,
    "csi\u009b": 2,
    val: { loss: 0.25 },
  };
  const COPY_METRICS = `#!/bin/sh\nmkdir -p "$1/metrics" && cp metrics.json "$1/metrics/m.json"\n`;
  // As `plan --json` writes them, plus what JSON leaves raw (C1, bidi) as \\u escapes.
  const shown = {
    first: `a="b=c" "a=b"=c "t\\u001b[2J"="\\u001b]0;owned\\u0007" "\\u202eevil"="\\u009b31m"`,
    second: `a="b=c" "a=b"=c "t\\u001b[2J"="x\\nforged row" "\\u202eevil"="\\u009b31m"`,
  };

  it("params and metrics with escape sequences, C1 and bidi controls and newlines are shown escaped by up (plain and live), plan, train list and train info; JSON stays exact", async () => {
    const made = project(
      { "data/value.txt": "v", "grid.json": JSON.stringify(grid), "src/model/metrics.json": JSON.stringify(metrics) },
      COPY_METRICS,
    );
    const plan = await runKaos(["plan"], { cwd: made.dir });
    expect(plan.code, plan.stderr).toBe(0);
    expectNoRaw(plan.stdout + plan.stderr, "plan");
    expect(plan.stdout).toContain(`    run   1/2     ${shown.first}  never ran\n`);
    expect(plan.stdout).toContain(`    run   2/2     ${shown.second}  never ran\n`);

    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expectNoRaw(result.stdout + result.stderr, "up");
    expect(
      result.stderr.split("\n").filter((line) => line.startsWith("p train 1/2 ") && line.includes(`  ${shown.first}  succeeded`)),
    ).toHaveLength(1);

    const list = await runKaos(["train", "list"], { cwd: made.dir });
    expectNoRaw(list.stdout, "train list");
    expect(list.stdout.trimEnd().split("\n")).toHaveLength(4);
    expect(list.stdout).toContain(shown.first);
    const listed = JSON.parse((await runKaos(["train", "list", "--json"], { cwd: made.dir })).stdout) as {
      stage: string;
      params: unknown;
    }[];
    expect(listed.filter((job) => job.stage === "train").map((job) => job.params)).toEqual([
      { a: "b=c", "a=b": "c", "t\u001b[2J": "x\nforged row", "\u202eevil": "\u009b31m" },
      { a: "b=c", "a=b": "c", "t\u001b[2J": "\u001b]0;owned\u0007", "\u202eevil": "\u009b31m" },
    ]);

    const [job] = trainJobs(made);
    const info = await runKaos(["train", "info", job!.id], { cwd: made.dir });
    expect(info.code, info.stderr).toBe(0);
    expectNoRaw(info.stdout, "train info");
    expect(info.stdout).toContain(
      `\n  "acc\\u001b]0;owned\\u0007"  0.5\n  note  "\\u001b[2Jgone\\nforged row"\n  "bidi\\u202e"  1\n  "csi\\u009b"  2\n  val.loss  0.25\n`,
    );
    expect(info.stdout).toMatch(/\n {2}ID +STATE +"acc\\u001b\]0;owned\\u0007" +"bidi\\u202e" +"csi\\u009b" +val\.loss +PARAMS\n/);
    const unknown = await runKaos(["train", "info", job!.id, "-s", "nope"], { cwd: made.dir });
    expectNoRaw(unknown.stderr, "train info -s nope");
    expect(unknown.stderr).toContain(`expected one of: "acc\\u001b]0;owned\\u0007", "bidi\\u202e", "csi\\u009b", val.loss\n`);
    const infoJson = JSON.parse((await runKaos(["train", "info", job!.id, "--json"], { cwd: made.dir })).stdout) as { metrics: unknown };
    expect(infoJson.metrics).toEqual({
      "acc\u001b]0;owned\u0007": 0.5,
      note: "\u001b[2Jgone\nforged row",
      "bidi\u202e": 1,
      "csi\u009b": 2,
      "val.loss": 0.25,
    });

    // The live view, on a real terminal (a pseudo-terminal through script(1)).
    const terminalEnv: NodeJS.ProcessEnv = { ...process.env, TERM: "xterm", NO_COLOR: "1", ...env };
    delete terminalEnv.CI;
    const live = execFileSync("script", ["-qec", `${process.execPath} ${CLI} up --force`, "/dev/null"], {
      cwd: made.dir,
      env: terminalEnv,
      encoding: "utf8",
      input: "",
    });
    expectNoRaw(live, "up on a terminal");
    expect(live).toContain(shown.second);
  }, 120_000);

  it("a file name with escape sequences and a newline that triggers kaos watch is shown escaped", async () => {
    const made = project({ "data/value.txt": "v" }, `#!/bin/sh\nmkdir -p "$1"\n`);
    const watch = startKaos(["watch"], { cwd: made.dir, env });
    try {
      await watch.waitFor("waiting for changes");
      writeFileSync(made.path("data", "\u001b]0;owned\u0007\u202e\nforged.txt"), "x");
      await watch.waitFor(/run \w+ succeeded: 1 ran, 0 reused\n[\s\S]*run \w+ succeeded: 1 ran, 0 reused\n/);
    } finally {
      await watch.stop();
    }
    expectNoRaw(watch.stdout() + watch.stderr(), "watch");
    expect(watch.stderr()).toContain(
      `change detected: 0 stages and 1 job to run, 0 skipped ("data/\\u001b]0;owned\\u0007\\u202e\\nforged.txt")\n`,
    );
  }, 60_000);
});

describe("closed pipes", () => {
  /** Runs kaos with stdout (and stderr too when asked) a pipe whose reader has already gone, as after `| head -1`. */
  function withClosedOutput(
    args: string[],
    cwd: string,
    closeStderr = false,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: { ...process.env, NO_COLOR: "1", CI: "true", ...tagged.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.destroy();
    let stderr = "";
    if (closeStderr) child.stderr.destroy();
    else child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    return new Promise((done) => child.on("close", (code, signal) => done({ code, signal, stderr })));
  }

  it("every command whose reader closes early ends silently with status 141, as git does", async () => {
    const made = project(
      { "data/value.txt": "v", "grid.json": JSON.stringify({ a: [1, 2, 3] }) },
      `#!/bin/sh\necho "a line for the log"\nmkdir -p "$1"\n`,
    );
    expect((await up(made)).code).toBe(0);
    const [job] = trainJobs(made);
    for (const args of [
      ["train", "list"],
      ["train", "list", "--json"],
      ["plan"],
      ["plan", "--json"],
      ["train", "info", job!.id],
      ["train", "logs", job!.id],
      ["template", "list"],
      ["--help"],
    ]) {
      const result = await withClosedOutput(args, made.dir);
      expect({ args, code: result.code, stderr: result.stderr }).toEqual({ args, code: 141, stderr: "" });
    }
    // A real `| head -1` on more than a pipe holds: kaos is mid-write when head exits.
    made.write({ "grid.json": JSON.stringify({ a: Array.from({ length: 3000 }, (_, i) => i) }) });
    const piped = spawnSync(
      "bash",
      ["-c", `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} plan --json | head -1; echo "status \${PIPESTATUS[0]}"`],
      { cwd: made.dir, encoding: "utf8", env: { ...process.env, CI: "true" } },
    );
    expect(piped.stdout).toBe("{\nstatus 141\n");
    expect(piped.stderr).toBe("");
  }, 120_000);

  it("kaos up whose progress reader goes away cancels its run like Ctrl-C, records it, and exits 141", async () => {
    const made = project({ "data/value.txt": "v" }, `#!/bin/sh\nexec sleep 600\n`);
    const result = await withClosedOutput(["up"], made.dir, true);
    expect(result.code).toBe(141);
    const rows = jobRows(made.dir);
    expect(rows.length).toBeGreaterThan(0);
    expect(rows.filter((row) => row.state === "running" || row.state === "queued")).toEqual([]);
    expect(rows.map((row) => row.state)).toContain("cancelled");
    expect(tagged.running()).toEqual([]);
  }, 60_000);
});

describe("hostile output volume", () => {
  it("a script printing far more than the log cap: the log keeps its head and its tail and says how much was dropped", async () => {
    // About 1.2 MB on stdout in 8 KiB writes, then the reason it fails on stderr: the part that matters most.
    const train = `#!/usr/bin/env python3
import sys
for i in range(40000):
    sys.stdout.write("line %06d %s\\n" % (i, "x" * 20))
sys.stdout.flush()
print("failing: the last words", file=sys.stderr)
sys.exit(3)
`;
    const made = project({ "data/value.txt": "v" }, train);
    const cap = 65_536;
    const result = await up(made, { KAOS_LOG_MAX_BYTES: String(cap) });
    expect(result.code).toBe(1);
    const [job] = trainJobs(made);
    expect(job!.reason).toBe("exited with code 3");
    const dir = made.path(".kaos", "jobs", job!.id);
    const log = readFileSync(join(dir, "log"), "utf8");
    expect(log.length).toBeLessThan(cap + 16_384);
    expect(log).toMatch(/^\S+ stdout \| line 000000 x+$/m);
    expect(log).toMatch(/^\S+ stdout \| line 039999 x+$/m);
    expect(log).toMatch(/^\S+ stderr \| failing: the last words$/m);
    expect(log).toMatch(
      /^\S+ kaos \| the log reached its cap of 64.0 KiB \(KAOS_LOG_MAX_BYTES\): the output from here on is dropped but for its last part, which follows when the job ends$/m,
    );
    const dropped =
      /^\S+ kaos \| (\d+) bytes of output dropped here \(the log keeps the first 16.0 KiB and the last [^;]+; cap 64.0 KiB per job, KAOS_LOG_MAX_BYTES\)$/m.exec(
        log,
      );
    expect(dropped, log.slice(0, 2000)).not.toBeNull();
    expect(Number(dropped![1])).toBeGreaterThan(1_000_000);
    // Head, then the note, then the tail, each in order and without a line cut in two.
    const numbers = [...log.matchAll(/stdout \| line (\d{6}) x{20}$/gm)].map((match) => Number(match[1]));
    expect(numbers).toEqual([...numbers].sort((a, b) => a - b));
    expect(log.split("\n").filter((line) => line !== "" && !/^\S+ (stdout|stderr|kaos) \| /.test(line))).toEqual([]);
    expect(readdirSync(dir).filter((name) => name.includes("tail"))).toEqual([]);
    const logs = await runKaos(["train", "logs", job!.id], { cwd: made.dir });
    expect(logs.code).toBe(0);
    expect(logs.stdout).toBe(log);
    expect(logs.stderr).toBe(
      `note: ${dropped![1]} bytes of job ${job!.id}'s output were dropped from the middle of its log (cap ${cap} bytes; KAOS_LOG_MAX_BYTES sets it)\n`,
    );

    const invalid = await up(made, { KAOS_LOG_MAX_BYTES: "lots" });
    expect(invalid.code).toBe(1);
    expect(trainJobs(made).at(-1)!.reason).toBe(
      'KAOS_LOG_MAX_BYTES=lots: expected a number of bytes or a size such as "20M" or "1Gi" (0 for no cap)',
    );
  }, 60_000);
  it("long lines keep the log within its cap: a line longer than the tail's share keeps its end", async () => {
    const train = `#!/usr/bin/env python3
import sys
for i in range(60):
    sys.stdout.write("long %02d %s\\n" % (i, "y" * 20000))
sys.stdout.write("huge %s end-of-huge\\n" % ("z" * 200000))
sys.stdout.flush()
print("failing: the last words", file=sys.stderr)
sys.exit(3)
`;
    const made = project({ "data/value.txt": "v" }, train);
    const cap = 65_536;
    expect((await up(made, { KAOS_LOG_MAX_BYTES: String(cap) })).code).toBe(1);
    const [job] = trainJobs(made);
    const log = readFileSync(made.path(".kaos", "jobs", job!.id, "log"));
    // The cap, and the two lines kaos adds to say what it dropped.
    expect(log.length).toBeLessThanOrEqual(cap + 1024);
    const text = log.toString("utf8");
    expect(text).toMatch(/z+ end-of-huge\n\S+ stderr \| failing: the last words\n$/);
    const dropped = /^\S+ kaos \| (\d+) bytes of output dropped here /m.exec(text);
    expect(Number(dropped?.[1])).toBeGreaterThan(60 * 20000 + 200000 - cap);
  }, 60_000);
});

describe("hostile manifests", () => {
  it("progress without a terminal shows sizes and rates to a few significant digits, never a raw float", async () => {
    // Two bytes in all: the rate is a few bytes a second, a fraction of a byte that must not show in full.
    const server = await startServer({ "/a.csv": { body: "a" }, "/b.csv": { body: "b" } });
    try {
      const manifest = ["a.csv", "b.csv"].map((name) => JSON.stringify({ url: `${server.url}/${name}`, path: `train/${name}` })).join("\n");
      const made = project(
        { "kaos.config.ts": CONFIG(`{ source: "src", manifest: "m.jsonl", hyperparams: "grid.json" }`), "m.jsonl": manifest },
        `#!/bin/sh\nmkdir -p "$1"\n`,
      );
      const result = await up(made);
      expect(result.code, result.stderr).toBe(0);
      const lines = result.stderr.split("\n").filter((line) => line.startsWith("p ingest  "));
      expect(lines.length, result.stderr).toBeGreaterThan(0);
      expect(lines.at(-1)).toMatch(/^p ingest {2}2\/2 files {2}2 B( \/ 2 B)? {2}\S+ (B|KiB|MiB|GiB)\/s/);
      const amounts = lines.flatMap((line) => [...line.matchAll(/([\d.]+) (?:B|KiB|MiB|GiB|TiB)\b/g)].map((match) => match[1]!));
      for (const amount of amounts) expect(amount.replace(".", "").replace(/^0+/, "").length, lines.join("\n")).toBeLessThanOrEqual(4);
    } finally {
      await server.close();
    }
  }, 60_000);

  it("file: URLs that read host files are refused with their manifest line, a symlink leading out too; allowFileUrls lets a directory in, keeping the file's privacy", async () => {
    const outside = tagged.make({ "keys/id_ed25519": { content: "-----BEGIN OPENSSH PRIVATE KEY-----\n", mode: 0o600 } }, "kaos-outside-");
    const secret = outside.path("keys", "id_ed25519");
    const secretHash = createHash("sha256").update("-----BEGIN OPENSSH PRIVATE KEY-----\n").digest("hex");
    const line = (url: string, path: string) => JSON.stringify({ url, path });
    const made = project({
      "kaos.config.ts": CONFIG(`{ source: "src", manifest: "m.jsonl" }`),
      "mine.csv": "a,b\n",
      "notes/key": { symlink: secret },
    });
    // The manifest names files by absolute URL: written once the project's directory is known.
    const manifest = (second: string) =>
      made.write({ "m.jsonl": [line(pathToFileURL(made.path("mine.csv")).href, "mine.csv"), line(second, "key")].join("\n") });
    const hint = `hint: expected a file inside the project ${made.dir}; to read from another directory, list it in allowFileUrls in ${made.path("kaos.config.ts")}`;
    const cases = [
      { url: pathToFileURL(secret).href, why: `${secret} is outside the project ${made.dir}` },
      {
        url: `file://${made.dir}/../${outside.dir.split("/").at(-1)}/keys/id_ed25519`,
        why: `${secret} is outside the project ${made.dir}`,
      },
      {
        url: pathToFileURL(made.path("notes", "key")).href,
        why: `${made.path("notes", "key")} leads through a symlink to ${secret}, outside the project ${made.dir}`,
      },
    ];
    for (const { url, why } of cases) {
      manifest(url);
      for (const command of ["plan", "up"]) {
        const result = await runKaos([command], { cwd: made.dir, env });
        expect(result.code, `${command} ${url}`).toBe(1);
        expect(result.stderr, `${command} ${url}`).toContain(
          `error: ${made.path("m.jsonl")}:2: "url" ${url} may not be read: ${why}\n${hint}`,
        );
      }
      expect(existsSync(made.path(".kaos", "objects", "sha256", secretHash.slice(0, 2), secretHash.slice(2))), url).toBe(false);
    }

    // The explicit opt-in: the job reads the file, and neither the object nor the data view is more readable than it.
    manifest(pathToFileURL(secret).href);
    made.write({
      "kaos.config.ts": CONFIG(`{ source: "src", manifest: "m.jsonl" }`).replace(
        "pipelines:",
        `allowFileUrls: [${JSON.stringify(outside.path("keys"))}], pipelines:`,
      ),
    });
    const allowed = await up(made);
    expect(allowed.code, allowed.stderr).toBe(0);
    const [job] = trainJobs(made);
    expect(seenBy(made, job!.id)).toEqual({ "mine.csv": "a,b\n", key: "-----BEGIN OPENSSH PRIVATE KEY-----\n" });
    expect(statSync(made.path(".kaos", "objects", "sha256", secretHash.slice(0, 2), secretHash.slice(2))).mode & 0o777).toBe(0o400);
    const [view] = readdirSync(made.path(".kaos", "data")).filter((name) => /^[0-9a-f]{64}$/.test(name));
    expect(statSync(made.path(".kaos", "data", view!, "key")).mode & 0o777).toBe(0o400);
    expect(statSync(made.path(".kaos", "data", view!, "mine.csv")).mode & 0o777).toBe(0o444);
  }, 120_000);

  it("2000 entries of which 7 fail: every failure named, the rest stored and pinned, and only the failures fetched again", async () => {
    const count = 2000;
    const paths = Array.from({ length: count }, (_, i) =>
      i === 7 ? "ü dir/a b.csv" : i === 8 ? "-dash/x.csv" : `part-${i % 10}/row-${i}.csv`,
    );
    const missing = new Set([11, 222, 999, 1500, 1999]);
    const routes = Object.fromEntries(
      paths.map((path, i) => [`/f/${encodeURI(path)}`, { body: `row ${i}\n` }]).filter((_, i) => !missing.has(i)),
    );
    routes["/f/value.txt"] = { body: "remote" };
    const server = await startServer(routes);
    try {
      const wrongHash = "0".repeat(64);
      const line = (path: string, i: number) =>
        JSON.stringify({
          url: `${server.url}/f/${encodeURI(path)}`,
          path,
          ...(i === 300 ? { sha256: wrongHash } : {}),
          ...(i === 301 ? { size: 1 } : {}),
        });
      const manifest = [JSON.stringify({ url: `${server.url}/f/value.txt`, path: "value.txt" }), ...paths.map(line)].join("\n");
      const made = project({
        "kaos.config.ts": CONFIG(`{ source: "src", manifest: "m.jsonl", hyperparams: "grid.json" }`),
        "m.jsonl": manifest,
      });
      const first = await up(made);
      expect(first.code).toBe(1);
      expect(first.stderr).toContain(`7 of ${count + 1} manifest entries of ${made.path("m.jsonl")} failed:`);
      for (const i of missing)
        expect(first.stderr).toContain(`  ${paths[i]} (${server.url}/f/${encodeURI(paths[i]!)}): HTTP 404 Not Found`);
      expect(first.stderr).toContain(`  ${paths[300]} (${server.url}/f/${paths[300]}): sha256 mismatch: the content hashes to`);
      expect(first.stderr).toContain(`  ${paths[301]} (${server.url}/f/${paths[301]}): size mismatch`);
      expect(jobRows(made.dir).filter((row) => row.stage === "train")).toEqual([]);
      const lock = JSON.parse(readFileSync(made.path("m.jsonl.lock"), "utf8")) as { entries: Record<string, { sha256: string }> };
      expect(Object.keys(lock.entries)).toHaveLength(count + 1 - 7);
      expect(lock.entries["ü dir/a b.csv"]).toBeDefined();
      expect(trustProblems(made.dir)).toEqual([]);

      // Fix the server and the two manifest lines: only the seven are fetched.
      for (const i of missing) server.route(`/f/${encodeURI(paths[i]!)}`, { body: `row ${i}\n` });
      writeFileSync(
        made.path("m.jsonl"),
        [
          JSON.stringify({ url: `${server.url}/f/value.txt`, path: "value.txt" }),
          ...paths.map((path) => JSON.stringify({ url: `${server.url}/f/${encodeURI(path)}`, path })),
        ].join("\n"),
      );
      const before = server.requests.length;
      const second = await up(made);
      expect(second.code, second.stderr).toBe(0);
      expect(server.requests.slice(before).filter((request) => request.method === "GET")).toHaveLength(7);
      const [job] = trainJobs(made);
      expect(seenBy(made, job!.id)["ü dir/a b.csv"]).toBe("row 7\n");
      expect(Object.keys(seenBy(made, job!.id))).toHaveLength(count + 1);
      expect(trustProblems(made.dir)).toEqual([]);
    } finally {
      await server.close();
    }
  }, 120_000);
});
