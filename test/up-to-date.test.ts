/**
 * The up-to-date record (core/up-to-date.ts): a `kaos up` that had nothing to
 * do vouches for the next one, which then records its run and prints the same
 * lines without planning; and every kind of change it vouches for sends the
 * next `kaos up` through the full plan, which then does what the change asks.
 */
import { execFileSync, spawnSync } from "node:child_process";
import {
  appendFileSync,
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  mkdirSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { delimiter, dirname, join, sep } from "node:path";
import { pathToFileURL } from "node:url";
import { homedir, tmpdir } from "node:os";
import { DatabaseSync } from "node:sqlite";
import { describe, expect, it, onTestFinished } from "vitest";
import { REPO_ROOT, runKaos, startKaos, type Project, type RunResult } from "./helpers/rig.js";
import { TRAIN_SCRIPT, readMarks, trainingProjects } from "./helpers/jobs.js";

const project = trainingProjects();

const TRACE = { KAOS_TRACE_UP_TO_DATE: "1" };

async function up(made: Project, args: string[] = [], env: Record<string, string> = {}): Promise<RunResult> {
  return runKaos(["up", ...args], { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log"), ...TRACE, ...env } });
}

/** What became of the record in a traced run: "used", "recorded", "not used: ...", "not recorded: ...". */
function fate(result: RunResult): string[] {
  return [...result.stderr.matchAll(/^kaos up-to-date record: (.*)$/gm)].map((match) => match[1] ?? "");
}

/**
 * Runs `kaos up` until one writes the record (or one finds it written), and returns that run. Files
 * written just before a run are within the racy window (their stat could
 * hide a second write in the same tick) and are not vouched for until they
 * have aged: each run is the event waited for.
 */
async function upUntilRecorded(made: Project, env: Record<string, string> = {}): Promise<RunResult> {
  let last: RunResult | undefined;
  for (let attempt = 0; attempt < 20; attempt++) {
    last = await up(made, [], env);
    expect(last.code, last.stderr).toBe(0);
    if (fate(last).includes("recorded") || fate(last).includes("used")) return last;
    expect(fate(last).join("\n")).toMatch(/not recorded: .*changed too recently/);
  }
  throw new Error(`kaos up never wrote its up-to-date record:\n${last?.stderr ?? ""}`);
}

function starts(made: Project): number {
  return readMarks(made.path("marks.log")).filter((mark) => mark.what === "start").length;
}

function runsRecorded(made: Project): { state: string; command: string }[] {
  const db = new DatabaseSync(made.path(".kaos", "state.db"), { readOnly: true });
  try {
    return db.prepare("SELECT state, command FROM runs ORDER BY started_at").all() as { state: string; command: string }[];
  } finally {
    db.close();
  }
}

/** The lines a run printed, without the trace and with the run's id masked. */
function printed(result: RunResult): string {
  return result.stderr
    .split("\n")
    .filter((line) => !line.startsWith("kaos up-to-date record:"))
    .join("\n")
    .replace(/^run [0-9a-z]+:/m, "run ID:");
}

/**
 * A module kaos is started with (NODE_OPTIONS=--import) that runs the shell
 * command in KAOS_TEST_AFTER_SUMMARY once a run's summary is printed, before
 * the record is written: what another process does meanwhile, at the moment
 * the record cannot see. Part of the project from the start, so that its
 * arrival changes nothing a record vouches for.
 */
const AFTER_SUMMARY = {
  "after-summary.mjs": [
    'import { execFileSync } from "node:child_process";',
    "const command = process.env.KAOS_TEST_AFTER_SUMMARY;",
    "const write = process.stderr.write.bind(process.stderr);",
    "process.stderr.write = (chunk, ...rest) => {",
    "  const written = write(chunk, ...rest);",
    '  if (command && /^run [0-9a-z]+: /m.test(String(chunk))) execFileSync("sh", ["-c", command]);',
    "  return written;",
    "};",
  ].join("\n"),
};

function afterSummary(made: Project, command: string): Record<string, string> {
  return { NODE_OPTIONS: `--import=${pathToFileURL(made.path("after-summary.mjs")).href}`, KAOS_TEST_AFTER_SUMMARY: command };
}

/**
 * A module kaos is started with (NODE_OPTIONS=--import) that makes renaming a
 * file into place as the up-to-date record fail while the project holds a
 * file `refuse-record`: a record that cannot be written. Part of the project
 * from the start, and started with every run, so that the record vouches for
 * the runs that load it.
 */
const REFUSE_RECORD = {
  "refuse-record.mjs": [
    'import fs from "node:fs";',
    "const rename = fs.renameSync;",
    "fs.renameSync = (from, to) => {",
    '  if (String(to).endsWith("up-to-date.json") && fs.existsSync("refuse-record")) {',
    '    throw Object.assign(new Error("EROFS: read-only file system, rename"), { code: "EROFS" });',
    "  }",
    "  return rename(from, to);",
    "};",
  ].join("\n"),
};

/** Interpreters for Python 3.11 on this machine, one per version (their executables), found as kaos finds them on PATH. */
function pythons311(): string[] {
  const found = new Map<string, string>();
  const paths = spawnSync("sh", ["-c", "which -a python3.11"], { encoding: "utf8" }).stdout.split("\n").filter(Boolean);
  for (const path of paths) {
    const asked = spawnSync(path, ["-c", "import sys; print(sys.version.split()[0]); print(sys.executable)"], { encoding: "utf8" });
    const [version, executable] = asked.stdout.trim().split("\n");
    if (asked.status === 0 && version && executable && !found.has(version)) found.set(version, executable);
  }
  return [...found.values()];
}

describe("kaos up and its up-to-date record", () => {
  it("answers a no-op kaos up from the record: the same lines, a run recorded, nothing planned", async () => {
    const made = project({ grid: { score: [1, 2] } });
    const first = await up(made);
    expect(first.code, first.stderr).toBe(0);
    expect(fate(first)).toEqual(["none to use", "not recorded: the plan had something to do"]);
    const full = await upUntilRecorded(made);
    expect(fate(full)).toContain("recorded");
    const runsBefore = runsRecorded(made).length;

    const answered = await up(made);
    expect(answered.code, answered.stderr).toBe(0);
    expect(fate(answered)).toEqual(["used"]);
    expect(printed(answered)).toBe(printed(full));
    expect(printed(answered)).toMatch(/nothing to do: every stage and job is up to date/);
    expect(printed(answered)).toMatch(/^run ID: 0 succeeded, 0 failed, 0 cancelled, 2 reused$/m);
    const runs = runsRecorded(made);
    expect(runs).toHaveLength(runsBefore + 1);
    expect(runs.at(-1)).toEqual({ state: "succeeded", command: "up" });
    // The record still vouches after its own run: the next one is answered too.
    expect(fate(await up(made))).toEqual(["used"]);
    expect(starts(made)).toBe(2);
  });

  it("sends every kind of change through the full plan, which does what the change asks", async () => {
    const made = project({ grid: { score: [1] } });
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);
    let trained = starts(made);

    const expectFull = async (why: RegExp, check: (result: RunResult) => void) => {
      const result = await up(made);
      expect(fate(result)[0]).toMatch(why);
      check(result);
      await upUntilRecorded(made);
      expect(fate(await up(made))).toEqual(["used"]);
    };

    // A data file's bytes, its size unchanged.
    writeFileSync(made.path("data", "value.txt"), "v2");
    await expectFull(/^not used: .*data\/value\.txt changed$/, (result) => {
      expect(result.stderr).toMatch(/1 succeeded/);
      expect(starts(made)).toBe(++trained);
    });
    // A file added to the data bundle.
    writeFileSync(made.path("data", "more.txt"), "more");
    await expectFull(/^not used: .*\/data changed$/, () => expect(starts(made)).toBe(++trained));
    // The hyperparams file.
    writeFileSync(made.path("grid.json"), JSON.stringify({ score: [1, 2] }));
    await expectFull(/^not used: .*grid\.json changed$/, (result) => {
      expect(result.stderr).toMatch(/1 succeeded, 0 failed, 0 cancelled, 1 reused/);
      expect(starts(made)).toBe(++trained);
    });
    // The config: a setting that changes no key.
    appendFileSync(made.path("kaos.config.ts"), "// a comment\n");
    await expectFull(/^not used: .*kaos\.config\.ts changed$/, (result) => {
      expect(result.stderr).toMatch(/nothing to do/);
      expect(starts(made)).toBe(trained);
    });
    // A source file: the environment is kept, every job trains again.
    appendFileSync(made.path("src", "model", "train"), "\n# edited\n");
    await expectFull(/^not used: .*src\/model\/train changed$/, (result) => {
      expect(result.stderr).toMatch(/2 succeeded, 0 failed/);
      trained += 2;
      expect(starts(made)).toBe(trained);
    });
    // What a reused job left: its outputs, which the full plan checks against their seal.
    const jobsDir = made.path(".kaos", "jobs");
    const withOutputs = readdirSync(jobsDir).filter(
      (id) => existsSync(join(jobsDir, id, "out")) && readdirSync(join(jobsDir, id, "out")).length > 0,
    );
    expect(withOutputs.length).toBeGreaterThan(0);
    for (const id of withOutputs) {
      const out = join(jobsDir, id, "out");
      chmodSync(out, 0o755);
      for (const name of readdirSync(out)) rmSync(join(out, name), { recursive: true, force: true });
    }
    await expectFull(/^not used: .*\.kaos\/jobs\/[^/]+\/out(\/.*)? changed$/, (result) => {
      expect(result.stderr).toMatch(/2 succeeded, 0 failed/);
      trained += 2;
      expect(starts(made)).toBe(trained);
    });
    // The environment, gone: it is built again.
    const envs = made.path(".kaos", "envs");
    for (const key of readdirSync(envs)) rmSync(join(envs, key, ".kaos-complete"), { force: true });
    await expectFull(/^not used: .*\.kaos-complete changed$/, (result) => {
      expect(result.stderr).not.toMatch(/build {2}skipped/);
    });
    // A forced run: every job again, and the data laid out again (linking moves the data files' change time).
    const forced = await up(made, ["--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(fate(forced)).toEqual(["not used: kaos was started differently (build, Node, arguments, directory, environment or terminal)"]);
    trained += 2;
    expect(starts(made)).toBe(trained);
    await expectFull(/^not used: /, (result) => expect(result.stderr).toMatch(/nothing to do/));
    // The state store, written by another kaos and nothing else: a run of another stack.
    const db = new DatabaseSync(made.path(".kaos", "state.db"));
    try {
      db.prepare(
        "INSERT INTO runs (id, stack, command, started_at, finished_at, state, pid, host) VALUES ('other', 'ci', 'up', ?, ?, 'succeeded', 1, 'elsewhere')",
      ).run(new Date().toISOString(), new Date().toISOString());
    } finally {
      db.close();
    }
    await expectFull(/^not used: the state store changed since$/, (result) => expect(result.stderr).toMatch(/nothing to do/));
    expect(starts(made)).toBe(trained);
  });

  it("still vouches after a file is made beside the config, but not after a second config file is", async () => {
    const made = project();
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);
    writeFileSync(made.path("notes.txt"), "a file of the project in no bundle");
    expect(fate(await up(made))).toEqual(["used"]);

    writeFileSync(made.path("kaos.config.mts"), "export default {};\n");
    const ambiguous = await up(made);
    expect(fate(ambiguous)).toEqual(["not used: more than one config file"]);
    expect(ambiguous.code).not.toBe(0);
    expect(ambiguous.stderr).toMatch(/kaos\.config\.ts and .*kaos\.config\.mts: 2 files where kaos reads one/);
  });

  it("is not used by a kaos started another way, nor while another kaos holds the stack", async () => {
    const made = project();
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);

    const otherEnvironment = await up(made, [], { SOME_SETTING: "1" });
    expect(fate(otherEnvironment)[0]).toMatch(/^not used: kaos was started differently/);
    expect(otherEnvironment.stderr).toMatch(/nothing to do/);
    expect(fate(await up(made, ["--json"]))[0]).toMatch(/^not used: kaos was started differently/);
    await upUntilRecorded(made);

    // kaos watch holds the stack's writer lock for its whole session.
    const watch = startKaos(["watch"], { cwd: made.dir, env: { KAOS_TEST_LOG: made.path("marks.log") } });
    try {
      await watch.waitFor(/watching \d+ paths? in/);
      const locked = await up(made);
      expect(fate(locked)[0]).toBe("not used: the state store changed since");
      expect(locked.code).not.toBe(0);
      expect(locked.stderr).toMatch(/another kaos .* is applying stack 'local'/);
    } finally {
      await watch.stop();
    }
  });

  it("says why the record could not be written again after a run it answered", async () => {
    const made = project({ extra: REFUSE_RECORD });
    const env = { NODE_OPTIONS: `--import=${pathToFileURL(made.path("refuse-record.mjs")).href}` };
    expect((await up(made, [], env)).code).toBe(0);
    await upUntilRecorded(made, env);

    writeFileSync(made.path("refuse-record"), "");
    const answered = await up(made, [], env);
    expect(answered.code, answered.stderr).toBe(0);
    expect(fate(answered)).toEqual(["used", "not rewritten: EROFS: read-only file system, rename"]);
    // The record left in place names the revision before that run: the next kaos up plans in full.
    rmSync(made.path("refuse-record"));
    expect(fate(await up(made, [], env))[0]).toBe("not used: the state store changed since");
  });

  it("checks every file a reused job left, in folders a bundle's walk skips too", async () => {
    // A job's results are checked file by file, whatever their names: a folder named like the ones bundles never
    // hold (__pycache__, .git, node_modules) is part of them.
    const cached = 'os.makedirs(os.path.join(out, "__pycache__"))\nopen(os.path.join(out, "__pycache__", "model.pyc"), "w").write("a")\n';
    const made = project({
      extra: { "src/model/train": { content: TRAIN_SCRIPT.replace('mark("end")', `${cached}mark("end")`), mode: 0o755 } },
    });
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);
    expect(fate(await up(made))).toEqual(["used"]);
    const trained = starts(made);

    const jobsDir = made.path(".kaos", "jobs");
    const [id] = readdirSync(jobsDir).filter((job) => existsSync(join(jobsDir, job, "out", "__pycache__")));
    expect(id).toBeDefined();
    const folder = join(jobsDir, id!, "out", "__pycache__");
    chmodSync(folder, 0o755);
    chmodSync(join(folder, "model.pyc"), 0o644);
    writeFileSync(join(folder, "model.pyc"), "b");
    const result = await up(made);
    expect(fate(result)[0]).toMatch(/^not used: .*\/out\/__pycache__(?:\/model\.pyc)? changed$/);
    expect(result.stderr).toMatch(/1 succeeded, 0 failed/);
    expect(starts(made)).toBe(trained + 1);
  });

  it("vouches for nothing a full kaos up found there and that went while it ran", async () => {
    const made = project({ extra: AFTER_SUMMARY });
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);
    const envs = made.path(".kaos", "envs");
    const [key] = readdirSync(envs).filter((name) => existsSync(join(envs, name, ".kaos-complete")));
    expect(key).toBeDefined();
    // Anything that removes the environment while a kaos up that found it ready still runs.
    const env = afterSummary(made, `rm -rf '${join(envs, key!)}'`);

    rmSync(made.path(".kaos", "up-to-date.json"));
    const removedMeanwhile = await up(made, [], env);
    expect(removedMeanwhile.code, removedMeanwhile.stderr).toBe(0);
    expect(removedMeanwhile.stderr).toMatch(/nothing to do/);
    expect(existsSync(join(envs, key!))).toBe(false);
    expect(fate(removedMeanwhile)[1]).toMatch(/^not recorded: .*\/\.kaos\/envs changed too recently/);
    const next = await up(made, [], env);
    expect(fate(next)[0]).not.toBe("used");
    expect(next.stderr).toMatch(/^p build \S+ +succeeded/m);
  });

  it("checks the interpreter environments are built with, as the version cache knows it", async () => {
    const python = execFileSync("sh", ["-c", "command -v python3.11 || command -v python3"], { encoding: "utf8" }).trim();
    const made = project();
    const bin = made.path("bin");
    mkdirSync(bin);
    symlinkSync(python, join(bin, "python3.11"));
    const env = { PATH: `${bin}:${process.env.PATH ?? ""}` };
    expect((await up(made, [], env)).code).toBe(0);
    await upUntilRecorded(made, env);
    expect(fate(await up(made, [], env))).toEqual(["used"]);

    // Another interpreter under the same name: a script, which the version cache never vouches for.
    rmSync(join(bin, "python3.11"));
    writeFileSync(join(bin, "python3.11"), `#!/bin/sh\nexec ${python} "$@"\n`, { mode: 0o755 });
    const changed = await up(made, [], env);
    expect(fate(changed)[0]).toBe("not used: the Python interpreter for 3.11 is not the one recorded");
    expect(changed.code, changed.stderr).toBe(0);
  });
});

describe.skipIf(pythons311().length < 2)("the up-to-date record and the interpreter", () => {
  it("is not written when the interpreter changed after the plan asked it", async () => {
    const [planned, other] = pythons311() as [string, string];
    const made = project({ extra: AFTER_SUMMARY });
    const bin = made.path("bin");
    mkdirSync(bin);
    const link = join(bin, "python3.11");
    const env = { PATH: `${bin}:${process.env.PATH ?? ""}` };
    // The version cache knows both: a plan asked the other one once.
    symlinkSync(other, link);
    expect((await runKaos(["plan"], { cwd: made.dir, env })).code).toBe(0);
    rmSync(link);
    symlinkSync(planned, link);
    expect((await up(made, [], env)).code).toBe(0);
    await upUntilRecorded(made, env);

    // The other interpreter takes the name while a kaos up that planned with the first one still runs.
    const switching = { ...env, ...afterSummary(made, `ln -sfn '${other}' '${link}'`) };
    rmSync(made.path(".kaos", "up-to-date.json"));
    const switched = await up(made, [], switching);
    expect(switched.code, switched.stderr).toBe(0);
    expect(switched.stderr).toMatch(/nothing to do/);
    expect(fate(switched)[1]).toBe("not recorded: the Python interpreter for 3.11 changed since the plan asked it");
    const next = await up(made, [], switching);
    expect(fate(next)[0]).not.toBe("used");
    expect(next.stderr).not.toMatch(/build {2}skipped/);
  });
});

const hasStrace = spawnSync("sh", ["-c", "command -v strace"]).status === 0;

/** Each absolute path a traced process named in a file system call, and whether some call found it missing. */
function tracedPaths(trace: string): Map<string, { missing: boolean }> {
  const paths = new Map<string, { missing: boolean }>();
  for (const line of trace.split("\n")) {
    const call = /^\d+\s+\w+\((?:AT_FDCWD, |\d+, )?"([^"]+)"/.exec(line);
    let path = call?.[1];
    if (path === undefined || !path.startsWith("/")) continue;
    // A folder opened to be listed is named with a trailing slash.
    if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
    const known = paths.get(path) ?? { missing: false };
    if (/= -1 ENOENT/.test(line)) known.missing = true;
    paths.set(path, known);
  }
  return paths;
}

describe.skipIf(!hasStrace)("what the up-to-date record vouches for (strace)", () => {
  it("covers every path a full no-op kaos up reads, but for kaos's own code, caches and the interpreter's lookup", async () => {
    const made = project({ grid: { score: [1, 2] } });
    expect((await up(made)).code).toBe(0);
    await upUntilRecorded(made);
    rmSync(made.path(".kaos", "up-to-date.json"));
    // Outside the project: a file appearing in it would be a change to the project.
    const traceDir = mkdtempSync(join(tmpdir(), "kaos-strace-"));
    onTestFinished(() => rmSync(traceDir, { recursive: true, force: true }));
    const traceFile = join(traceDir, "strace.txt");
    const traced = await runKaos(["up"], {
      cwd: made.dir,
      env: { KAOS_TEST_LOG: made.path("marks.log"), ...TRACE },
      launcher: ["strace", "-f", "-e", "trace=%file,readlink", "-o", traceFile],
    });
    expect(traced.code, traced.stderr).toBe(0);
    expect(fate(traced)).toEqual(["none to use", "recorded"]);
    const record = JSON.parse(readFileSync(made.path(".kaos", "up-to-date.json"), "utf8")) as { witnesses: [string, string][] };
    const witnessed = new Set(record.witnesses.map(([path]) => path));
    const stateDir = made.path(".kaos");
    const pathDirs = (process.env.PATH ?? "").split(delimiter).filter(Boolean);
    const own = [
      REPO_ROOT,
      dirname(dirname(process.execPath)),
      join(homedir(), ".cache"),
      process.env.PYENV_ROOT ?? join(homedir(), ".pyenv"),
    ];
    // What decides nothing a record must vouch for, each for its reason.
    const decidesNothing = (path: string): boolean =>
      // Node, kaos's code and its compile cache, the system's files.
      own.some((dir) => path === dir || path.startsWith(dir + sep)) ||
      /^\/(?:usr|lib|lib64|etc|proc|sys|dev|run)(?:\/|$)/.test(path) ||
      // The project folder and the ancestors of it and of those folders, looked at one component at a time to
      // resolve a path below them (SQLite opening the store does): what is below is witnessed.
      path === made.dir ||
      [made.dir, ...own].some((dir) => dir.startsWith(path === "/" ? "/" : path + sep)) ||
      // The store (its revision is in the record) and caches whose answers the record checks otherwise.
      /^state\.db|^config-cache\.json|^python-probe$|^python-versions\.json|^up-to-date\.json|^monitor\.sock$/.test(
        path.slice(stateDir.length + 1),
      ) ||
      path === stateDir ||
      // Clean-up listings at the start of every up, and tree listings written when missing.
      /^(?:objects|objects\/tmp|snapshots|data|envs|trees|jobs)$/.test(path.slice(stateDir.length + 1)) ||
      /^trees\//.test(path.slice(stateDir.length + 1)) ||
      // The interpreter's lookup along PATH and pyenv's files, which the record checks by asking the version cache again.
      pathDirs.includes(dirname(path)) ||
      path.endsWith("/.python-version") ||
      // The trace itself and the jobs' marks.
      path === traceFile ||
      path === made.path("marks.log") ||
      path.startsWith(tmpdir() + sep + "node-compile-cache");
    const uncovered = [...tracedPaths(readFileSync(traceFile, "utf8"))]
      .filter(([path, { missing }]) => !witnessed.has(path) && !(missing && witnessed.has(dirname(path))) && !decidesNothing(path))
      .map(([path]) => path);
    expect(uncovered).toEqual([]);
  });
});
