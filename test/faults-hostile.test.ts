/**
 * Hostile bundles, manifests and train scripts: links out of a bundle, a data
 * bundle holding `.kaos/`, awkward file names, very deep trees, files kaos
 * cannot read, scripts that leave daemons behind, write outside their output
 * directory or fill it, and a manifest of thousands of entries of which some
 * fail. Each must end in a clear message or a correct run, never a crash, a
 * hang, or a trusted store that no longer matches its names.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { eventually, jobRows, killTagged, processesWithEnv, sha256Of, trustProblems } from "./helpers/faults.js";
import { startServer } from "./helpers/http-server.js";
import { CLI, makeProject, runKaos, trivialSourceBundle, under, type FileMap, type Project } from "./helpers/rig.js";

const TAG_NAME = "KAOS_FAULTS_TAG";
const tag = randomBytes(6).toString("hex");
const projects: Project[] = [];
afterEach(() => killTagged(TAG_NAME, tag));
afterAll(() => projects.forEach((project) => project.remove()));

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
  const made = makeProject({ "kaos.config.ts": CONFIG(), "grid.json": "{}", ...under("src", trivialSourceBundle(train)), ...files }, "kaos-hostile-");
  projects.push(made);
  return made;
}

const env = { [TAG_NAME]: tag };

async function up(made: Project, extra: Record<string, string> = {}) {
  return runKaos(["up"], { cwd: made.dir, env: { ...env, ...extra }, timeoutMs: 120_000 });
}

function seenBy(made: Project, jobId: string): Record<string, string> {
  return JSON.parse(readFileSync(made.path(".kaos", "jobs", jobId, "out", "files.json"), "utf8")) as Record<string, string>;
}

const trainJobs = (made: Project) => jobRows(made.dir).filter((row) => row.stage === "train");

describe("hostile bundles", () => {
  it("symlinks leading out of a data or source bundle are refused at plan time, before any build or job", async () => {
    const outside = makeProject({ "secret.txt": "secret" }, "kaos-outside-");
    projects.push(outside);
    const cases: { name: string; files: FileMap; message: string }[] = [
      { name: "absolute", files: { "data/secret": { symlink: outside.path("secret.txt") } }, message: `pipelines.p.data: {dir}/data/secret: symlink to ${outside.path("secret.txt")} points outside the bundle` },
      { name: "relative", files: { "data/sub/secret": { symlink: "../../../secret.txt" } }, message: "pipelines.p.data: {dir}/data/sub/secret: symlink to ../../../secret.txt points outside the bundle" },
      { name: "through another link", files: { "data/sub/up": { symlink: ".." }, "data/sub/esc": { symlink: "up/.." } }, message: "pipelines.p.data: {dir}/data/sub/esc: symlink to up/.. points outside the bundle" },
      { name: "in the source bundle", files: { "src/model/helper.py": { symlink: "/etc/hostname" } }, message: "pipelines.p.source: {dir}/src/model/helper.py: symlink to /etc/hostname points outside the bundle; expected a link inside it (or a copy of the file)" },
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
    const names = ["with space.txt", "new\nline.txt", "tab\there.txt", "ünïcødé-😀.txt", "-rf", "--help", "- dash dir/-n", "日本/データ.csv"];
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
    const change = (JSON.parse(plan.stdout) as { pipelines: { changes: { data: { changed: number; examples: string[] } } }[] }).pipelines[0]!.changes.data;
    expect(change).toMatchObject({ changed: 1, examples: ["~new\nline.txt"] });
    const text = await runKaos(["plan"], { cwd: made.dir });
    expect(text.stdout).toContain(`data: 0 added, 1 changed, 0 removed  [~"new\\nline.txt"]`);
  }, 60_000);

  it("bundle files named like kaos's own markers are data like any other", async () => {
    const made = project({ "data/value.txt": "v", "data/.kaos-complete": "mine", "data/sub.complete": "also mine", "data/sub/x": "x" });
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expect(seenBy(made, trainJobs(made)[0]!.id)).toEqual({ ".kaos-complete": "mine", "sub.complete": "also mine", "sub/x": "x", "value.txt": "v" });
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
      expect(result.stderr).toContain(`error: Cannot hash "pipe" in bundle ${made.path("data")}: it is a socket, FIFO or device file, which a bundle cannot hold.\nhint: Remove it from the bundle or exclude it in .kaosignore.`);
    }
    writeFileSync(made.path("data/.kaosignore"), "pipe\n");
    expect((await up(made)).code).toBe(0);
  }, 60_000);

  const nobody = spawnSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, "-e", "process.exit(process.getuid() === 0 ? 1 : 0)"]).status === 0;
  it.skipIf(!nobody)("unreadable files and directories are a clear error (run as user nobody through setpriv, since root reads everything)", async () => {
    const made = project({ "data/value.txt": "v", "data/secret.txt": "secret", "data/closed/inner.txt": "inner" });
    const home = made.path("home");
    mkdirSync(home);
    const own = (path: string) => {
      chownSync(path, 65534, 65534);
      if (statSync(path).isDirectory()) for (const entry of readdirSync(path)) own(join(path, entry));
    };
    own(made.dir);
    chmodSync(made.path("data/secret.txt"), 0o000);
    chownSync(made.path("data/secret.txt"), 0, 0);
    const asNobody = (args: string[]) =>
      spawnSync("setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", process.execPath, CLI, ...args], {
        cwd: made.dir,
        env: { PATH: "/usr/local/bin:/usr/bin:/bin", HOME: home, TMPDIR: home, NO_COLOR: "1", KAOS_PYTHON: "/usr/bin/python3", [TAG_NAME]: tag },
        encoding: "utf8",
        timeout: 60_000,
      });
    let result = asNobody(["plan"]);
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr).toContain(`error: Cannot read "secret.txt" in bundle ${made.path("data")}: permission denied.\nhint: Make it readable (chmod u+r) or exclude it in .kaosignore.`);
    chownSync(made.path("data/secret.txt"), 65534, 65534);
    chmodSync(made.path("data/secret.txt"), 0o644);
    chmodSync(made.path("data/closed"), 0o000);
    chownSync(made.path("data/closed"), 0, 0);
    result = asNobody(["up"]);
    expect(result.status, result.stderr).toBe(1);
    expect(result.stderr).toContain(`error: Cannot list directory "closed" in bundle ${made.path("data")}: permission denied.\nhint: Make it readable (chmod u+rx) or exclude it in .kaosignore.`);
    expect(result.stderr).not.toContain("internal error");
    chownSync(made.path("data/closed"), 65534, 65534);
    chmodSync(made.path("data/closed"), 0o755);
    // As a user the read-only data view holds: the script's write into it is refused by the system.
    writeFileSync(made.path("src/model/train"), `#!/bin/sh\necho x >> "$KAOS_DATA_DIR/value.txt" 2>/dev/null && exit 0\nmkdir -p "$1" && echo refused > "$1/write"\n`);
    result = asNobody(["up"]);
    expect(result.status, result.stderr).toBe(0);
    const [job] = trainJobs(made);
    expect(readFileSync(made.path(".kaos", "jobs", job!.id, "out", "write"), "utf8")).toBe("refused\n");
    expect(trustProblems(made.dir)).toEqual([]);
  }, 120_000);
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
    const started = Date.now();
    const result = await up(made);
    expect(result.code, result.stderr).toBe(0);
    expect(Date.now() - started).toBeLessThan(30_000);
    const [job] = trainJobs(made);
    expect(job!.state).toBe("succeeded");
    expect(Date.parse(job!.finished_at!) - Date.parse(job!.started_at!)).toBeLessThan(5_000);
    expect(await eventually(() => processesWithEnv("KAOS_JOB_ID", job!.id).length === 0, 5_000)).toBe(true);
    expect(processesWithEnv(TAG_NAME, tag)).toEqual([]);
  }, 60_000);

  it("a script writing into KAOS_DATA_DIR (as root, which mode bits do not stop) fails, and nothing it changed is trusted again", async () => {
    const train = `#!/bin/sh
cat "$KAOS_DATA_DIR/value.txt" > /dev/null
if [ -f "$KAOS_EVIL" ] && grep -q '"a":2' "$KAOS_PARAMS_FILE"; then
  echo tampered >> "$KAOS_DATA_DIR/value.txt"
  echo new > "$KAOS_DATA_DIR/added.txt"
fi
mkdir -p "$1" && cp "$KAOS_DATA_DIR/value.txt" "$1/data.txt"
`;
    const made = project({ "data/value.txt": "v1", "data/other.txt": "o", "grid.json": JSON.stringify({ a: [1, 2, 3] }), evil: "" }, train);
    const first = await up(made, { KAOS_EVIL: made.path("evil") });
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    const byParam = (a: number) => rows.find((row) => JSON.parse(row.params).a === a)!;
    expect(byParam(1).state).toBe("succeeded");
    expect(byParam(2)).toMatchObject({ state: "failed" });
    expect(byParam(2).reason).toMatch(/^KAOS_DATA_DIR was written to while this job ran \((\.|value\.txt)(, [^)]+)*\); it is read-only: the data is laid out again on the next kaos up$/);
    expect(byParam(3).reason).toMatch(/^not started: KAOS_DATA_DIR was written to by a job of this sweep/);
    expect(trustProblems(made.dir)).toEqual([]);
    // The user's bundle was never touched; the next run lays the data out again and every job sees it whole.
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
    const second = await up(made, { KAOS_EVIL: made.path("no-such-file") });
    expect(second.code, second.stderr).toBe(0);
    for (const row of trainJobs(made).filter((r) => r.state === "succeeded")) {
      expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "data.txt"), "utf8")).toBe("v1");
    }
    expect(trustProblems(made.dir)).toEqual([]);
  }, 60_000);

  it("a write through a shared memory mapping, which no directory watch reports, fails the whole sweep at its end", async () => {
    // mmap writes reach the file without a write(2), so inotify never hears of them; the sweep's last check of every stat does.
    const train = `#!/usr/bin/env python3
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
    const made = project({ "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }) }, train);
    const first = await up(made);
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    expect(rows.map((row) => row.state)).toEqual(["failed", "failed"]);
    for (const row of rows) {
      expect(row.reason).toMatch(/^KAOS_DATA_DIR was written to during this sweep \(value\.txt\); it is read-only: the data is laid out again on the next kaos up; no job of the sweep is trusted$/);
    }
    expect(trustProblems(made.dir)).toEqual([]);
    expect(readFileSync(made.path("data/value.txt"), "utf8")).toBe("v1");
  }, 60_000);

  it("a script writing into its working directory or the project's bundle: its own copy, or a change the next plan sees", async () => {
    const train = `#!/bin/sh
echo "scribbled" >> params.txt
mkdir -p "$1" && wc -l < params.txt > "$1/lines"
if grep -q '"a":2' "$KAOS_PARAMS_FILE"; then echo changed > "$KAOS_PROJECT/data/value.txt"; fi
`;
    const made = project({ "data/value.txt": "v1", "grid.json": JSON.stringify({ a: [1, 2] }), "src/model/params.txt": "original\n" }, train);
    const result = await up(made, { KAOS_PROJECT: made.dir });
    expect(result.code, result.stderr).toBe(0);
    for (const row of trainJobs(made)) expect(readFileSync(made.path(".kaos", "jobs", row.id, "out", "lines"), "utf8").trim()).toBe("2");
    expect(readFileSync(made.path("src/model/params.txt"), "utf8")).toBe("original\n");
    const plan = JSON.parse((await runKaos(["plan", "--json"], { cwd: made.dir })).stdout) as { pipelines: { changes: { source: unknown; data: { changed: number } } }[] };
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
    expect((JSON.parse(info.stdout) as { metrics: Record<string, unknown> }).metrics).toEqual({
      accuracy: 0.5,
      "big.json": `unreadable (${64 << 20} bytes, more than ${16 << 20})`,
      "fifo.json": "unreadable (not a regular file)",
      "zero.json": "unreadable (not a regular file)",
    });
    const get = await runKaos(["train", "get", job!.id, "-o", "got"], { cwd: made.dir, timeoutMs: 60_000 });
    expect(get.code, get.stderr).toBe(0);
    expect(get.stderr).toContain(`skipped ${made.path(".kaos", "jobs", job!.id, "out", "metrics", "fifo.json")}: not a regular file, directory or symlink`);
    expect(statSync(made.path("got/out/huge.bin")).size).toBe(256 << 20);
    expect(sha256Of(made.path("got/out/real.bin"))).toBe(sha256Of(made.path(".kaos", "jobs", job!.id, "out", "real.bin")));
    expect(readdirSync(made.path("got/out/many"))).toHaveLength(500);
    expect(existsSync(made.path("got/out/pipe"))).toBe(false);
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
    expect(log).toMatch(/^\S+ kaos \| the log reached its cap of 64.0 KiB \(KAOS_LOG_MAX_BYTES\): the output from here on is dropped but for its last part, which follows when the job ends$/m);
    const dropped = /^\S+ kaos \| (\d+) bytes of output dropped here \(the log keeps the first 16.0 KiB and the last [^;]+; cap 64.0 KiB per job, KAOS_LOG_MAX_BYTES\)$/m.exec(log);
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
    expect(logs.stderr).toBe(`note: ${dropped![1]} bytes of job ${job!.id}'s output were dropped from the middle of its log (cap ${cap} bytes; KAOS_LOG_MAX_BYTES sets it)\n`);

    const invalid = await up(made, { KAOS_LOG_MAX_BYTES: "lots" });
    expect(invalid.code).toBe(1);
    expect(trainJobs(made).at(-1)!.reason).toBe('KAOS_LOG_MAX_BYTES=lots: expected a number of bytes or a size such as "20M" or "1Gi" (0 for no cap)');
  }, 60_000);
});

describe("hostile manifests", () => {
  it("2000 entries of which 7 fail: every failure named, the rest stored and pinned, and only the failures fetched again", async () => {
    const count = 2000;
    const paths = Array.from({ length: count }, (_, i) => (i === 7 ? "ü dir/a b.csv" : i === 8 ? "-dash/x.csv" : `part-${i % 10}/row-${i}.csv`));
    const missing = new Set([11, 222, 999, 1500, 1999]);
    const routes = Object.fromEntries(paths.map((path, i) => [`/f/${encodeURI(path)}`, { body: `row ${i}\n` }]).filter((_, i) => !missing.has(i)));
    routes["/f/value.txt"] = { body: "remote" };
    const server = await startServer(routes);
    try {
      const wrongHash = "0".repeat(64);
      const line = (path: string, i: number) =>
        JSON.stringify({ url: `${server.url}/f/${encodeURI(path)}`, path, ...(i === 300 ? { sha256: wrongHash } : {}), ...(i === 301 ? { size: 1 } : {}) });
      const manifest = [JSON.stringify({ url: `${server.url}/f/value.txt`, path: "value.txt" }), ...paths.map(line)].join("\n");
      const made = project({ "kaos.config.ts": CONFIG(`{ source: "src", manifest: "m.jsonl", hyperparams: "grid.json" }`), "m.jsonl": manifest });
      const first = await up(made);
      expect(first.code).toBe(1);
      expect(first.stderr).toContain(`7 of ${count + 1} manifest entries of ${made.path("m.jsonl")} failed:`);
      for (const i of missing) expect(first.stderr).toContain(`  ${paths[i]} (${server.url}/f/${encodeURI(paths[i]!)}): HTTP 404 Not Found`);
      expect(first.stderr).toContain(`  ${paths[300]} (${server.url}/f/${paths[300]}): sha256 mismatch: the content hashes to`);
      expect(first.stderr).toContain(`  ${paths[301]} (${server.url}/f/${paths[301]}): size mismatch`);
      expect(jobRows(made.dir).filter((row) => row.stage === "train")).toEqual([]);
      const lock = JSON.parse(readFileSync(made.path("m.jsonl.lock"), "utf8")) as { entries: Record<string, { sha256: string }> };
      expect(Object.keys(lock.entries)).toHaveLength(count + 1 - 7);
      expect(lock.entries["ü dir/a b.csv"]).toBeDefined();
      expect(trustProblems(made.dir)).toEqual([]);

      // Fix the server and the two manifest lines: only the seven are fetched.
      for (const i of missing) server.route(`/f/${encodeURI(paths[i]!)}`, { body: `row ${i}\n` });
      writeFileSync(made.path("m.jsonl"), [JSON.stringify({ url: `${server.url}/f/value.txt`, path: "value.txt" }), ...paths.map((path) => JSON.stringify({ url: `${server.url}/f/${encodeURI(path)}`, path }))].join("\n"));
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
