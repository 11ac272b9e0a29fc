import { spawn } from "node:child_process";
import { cpSync, existsSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { failureJson as exitFailureJson } from "../src/cli/exit.js";
import { KaosError } from "../src/core/errors.js";
import { trainingProject } from "./helpers/jobs.js";
import { CLI, makeProject, REPO_ROOT, runKaos, runKaosOk, trivialSourceBundle, under, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

function tempProject(files = {}): Project {
  const project = makeProject(files);
  projects.push(project);
  return project;
}

const COMMANDS = [
  ["up"],
  ["plan"],
  ["watch"],
  ["train", "deploy"],
  ["train", "list"],
  ["train", "logs"],
  ["train", "info"],
  ["train", "get"],
  ["train", "kill"],
  ["template", "list"],
  ["template", "get"],
  ["render"],
  ["unlock"],
  ["ui"],
];

describe("the CLI frame (built CLI)", () => {
  it("keeps working while the package rebuilds: dist/ is never missing", async () => {
    const project = tempProject();
    // A copy of the package rebuilds, not the one the other test files run: a
    // rebuilt dist/ is a new kaos, whose config cache would not hold the last one's values.
    const root = tempProject().dir;
    for (const entry of ["package.json", "tsconfig.json", "scripts", "src", "dist"]) {
      cpSync(join(REPO_ROOT, entry), join(root, entry), { recursive: true, filter: (from) => !from.endsWith(".map") });
    }
    symlinkSync(join(REPO_ROOT, "node_modules"), join(root, "node_modules"));
    const build = spawn(process.execPath, ["scripts/build.mjs"], { cwd: root, stdio: ["ignore", "ignore", "pipe"] });
    let buildErrors = "";
    build.stderr.setEncoding("utf8").on("data", (chunk: string) => (buildErrors += chunk));
    const built = new Promise<number | null>((resolve) => build.on("close", resolve));
    let building = true;
    void built.then(() => (building = false));
    let runs = 0;
    // Run the CLI back to back for as long as the build lasts, and once after it.
    do {
      const result = await runKaos(["--version"], { cwd: project.dir, cli: join(root, "dist", "cli.js") });
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
      runs++;
    } while (building);
    expect(await built, buildErrors).toBe(0);
    expect(runs).toBeGreaterThan(1);
  }, 120_000);

  it("prints help listing every command and exits 0", async () => {
    const project = tempProject();
    const result = await runKaos(["--help"], { cwd: project.dir });
    expect(result.code).toBe(0);
    for (const command of ["up", "plan", "watch", "train", "template", "render"]) expect(result.stdout).toContain(`  ${command}`);
  });

  it("has --help for every command", async () => {
    const project = tempProject();
    for (const command of COMMANDS) {
      const result = await runKaos([...command, "--help"], { cwd: project.dir });
      expect(result.code, command.join(" ")).toBe(0);
      expect(result.stdout, command.join(" ")).toContain(`Usage: kaos ${command.join(" ")}`);
      // Every command takes the program's options after its name too (`kaos up -c other.ts`).
      expect(result.stdout, command.join(" ")).toMatch(/^Global Options:\n(.*\n)* {2}-c, --config <path> /m);
    }
    const deploy = await runKaos(["train", "deploy", "--help"], { cwd: project.dir });
    expect(deploy.stdout).toContain("-h, --hyperparams <file>");
    const plan = await runKaos(["plan", "--help"], { cwd: project.dir });
    expect(plan.stdout).toContain("--detailed-exitcode");
    expect(plan.stdout).toContain("--json");
  });

  it("prints the version", async () => {
    const project = tempProject();
    const result = await runKaos(["--version"], { cwd: project.dir });
    expect(result.code).toBe(0);
    expect(result.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it("exits 1 with a message on unknown commands, unknown flags and bad flag values", async () => {
    const project = tempProject();
    const unknown = await runKaos(["launch"], { cwd: project.dir });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("unknown command 'launch'");
    const flag = await runKaos(["up", "--forse"], { cwd: project.dir });
    expect(flag.code).toBe(1);
    expect(flag.stderr).toContain("unknown option '--forse'");
    const value = await runKaos(["train", "deploy", "-s", "x", "-d", "y", "-p", "0"], { cwd: project.dir });
    expect(value.code).toBe(1);
    expect(value.stderr).toContain('--parallelism: expected a whole number, 1 or more, found "0"');
    const missing = await runKaos(["train", "deploy"], { cwd: project.dir });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("required option '-s, --source <dir>' not specified");
  });

  it("exits 1 when there is no config, saying how to make one", async () => {
    const project = tempProject();
    const result = await runKaos(["plan"], { cwd: project.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `error: no kaos.config.ts (or .mts, .cts, .js, .mjs, .cjs) found in ${project.dir} or any parent directory`,
    );
    expect(result.stderr).toContain("hint: create one");
  });

  it("reports an invalid config with file:line and key path, exit 1, and creates no state", async () => {
    const project = tempProject({
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({\n  pipelines: {\n    svm: { source: "src", data: "data", resources: { memory: "2GB" } },\n  },\n});\n`,
      ...under("src", trivialSourceBundle("#!/bin/sh\n")),
      "data/x": "1",
    });
    const result = await runKaos(["up"], { cwd: project.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `${project.path("kaos.config.ts")}:4: pipelines.svm.resources.memory: expected a positive size with an SI or binary suffix`,
    );
    expect(result.stderr).toContain('found "2GB"');
    expect(existsSync(project.path(".kaos"))).toBe(false);
  });

  it("never colours output when piped or with NO_COLOR, and colours on request", async () => {
    const project = tempProject();
    const plain = await runKaos(["plan"], { cwd: project.dir });
    expect(plain.stderr).not.toMatch(/\u001b\[/);
    const forced = await runKaos(["plan"], { cwd: project.dir, env: { NO_COLOR: undefined, FORCE_COLOR: "1" } });
    expect(forced.stderr).toMatch(/\u001b\[31merror/);
    const both = await runKaos(["plan"], { cwd: project.dir, env: { NO_COLOR: "1", FORCE_COLOR: "1" } });
    expect(both.stderr).not.toMatch(/\u001b\[/);
  });
});

/** A command's stdout under --json when it fails: one JSON object, nothing before or after it. */
function failureJson(stdout: string): { error: { code: string; message: string; hint: string | null; exitCode: number } } {
  const parsed = JSON.parse(stdout) as { error: { code: string; message: string; hint: string | null; exitCode: number } };
  expect(Object.keys(parsed)).toEqual(["error"]);
  expect(Object.keys(parsed.error)).toEqual(["code", "message", "hint", "exitCode"]);
  return parsed;
}

const INVALID_CONFIG = {
  "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({\n  pipelines: {\n    svm: { source: "src", data: "data", resources: { memory: "2GB" } },\n  },\n});\n`,
  ...under("src", trivialSourceBundle("#!/bin/sh\n")),
  "data/x": "1",
};

describe("failures under --json (built CLI)", () => {
  it("prints a bad config under plan --json as one JSON error on stdout, with the same lines on stderr as without --json", async () => {
    const project = tempProject(INVALID_CONFIG);
    const text = await runKaos(["plan"], { cwd: project.dir });
    const json = await runKaos(["plan", "--json"], { cwd: project.dir });
    expect(text.code).toBe(1);
    expect(text.stdout).toBe("");
    expect(json.code).toBe(1);
    expect(json.stderr).toBe(text.stderr);
    expect(json.stderr).toContain(`error: invalid config\n${project.path("kaos.config.ts")}:4: pipelines.svm.resources.memory:`);
    const { error } = failureJson(json.stdout);
    expect(error).toEqual({
      code: "CONFIG_INVALID",
      message: expect.stringContaining(`invalid config\n${project.path("kaos.config.ts")}:4: pipelines.svm.resources.memory: expected`),
      hint: null,
      exitCode: 1,
    });
    expect(error.message).toContain('found "2GB"');
    // The hint comes along when the error has one: no config at all says how to make one.
    const none = await runKaos(["up", "--json"], { cwd: tempProject().dir });
    expect(none.code).toBe(1);
    expect(failureJson(none.stdout).error).toMatchObject({ code: "CONFIG_NOT_FOUND", hint: expect.stringContaining("create one") });
    expect(none.stderr).toContain("hint: create one");
  });

  it("prints commander's refusals (an unknown option, a bad flag value, a missing option) as USAGE, and stderr as without --json", async () => {
    const project = tempProject(trainingProject());
    const refusals = [
      { args: ["plan", "--json", "--frobnicate"], message: "unknown option '--frobnicate'" },
      // --limit is refused before --json is reached.
      { args: ["train", "list", "--limit", "0", "--json"], message: '--limit: expected a whole number, 1 or more, found "0"' },
      { args: ["train", "deploy", "--json"], message: "required option '-s, --source <dir>' not specified" },
    ];
    for (const { args, message } of refusals) {
      const json = await runKaos(args, { cwd: project.dir });
      const text = await runKaos(
        args.filter((arg) => arg !== "--json"),
        { cwd: project.dir },
      );
      expect(json.code, args.join(" ")).toBe(1);
      expect(json.stderr, args.join(" ")).toBe(text.stderr);
      expect(json.stderr, args.join(" ")).toContain("(run with --help for usage)");
      expect(text.stdout, args.join(" ")).toBe("");
      const { error } = failureJson(json.stdout);
      expect(error, args.join(" ")).toEqual({
        code: "USAGE",
        message: expect.stringContaining(message),
        hint: "run with --help for usage",
        exitCode: 1,
      });
      expect(error.message, args.join(" ")).not.toMatch(/^error:/);
    }
    // A command without --json refuses it as any unknown option, and prints no JSON.
    const watch = await runKaos(["watch", "--json"], { cwd: project.dir });
    expect(watch.code).toBe(1);
    expect(watch.stderr).toContain("unknown option '--json'");
    expect(watch.stdout).toBe("");
    // --json given as another option's value asks for no JSON.
    const valued = await runKaos(["train", "info", "--pipeline", "--json", "--asc"], { cwd: project.dir });
    expect(valued.code).toBe(1);
    expect(valued.stderr).toContain("error: --asc goes with -s/--sort METRIC");
    expect(valued.stdout).toBe("");
  });

  it("prints a job that does not exist under train info JOB --json as JOB_NOT_FOUND", async () => {
    const project = tempProject(trainingProject());
    const text = await runKaos(["train", "info", "nosuchjob"], { cwd: project.dir });
    const json = await runKaos(["train", "info", "nosuchjob", "--json"], { cwd: project.dir });
    expect(text.code).toBe(1);
    expect(json.code).toBe(1);
    expect(json.stderr).toBe(text.stderr);
    expect(json.stderr).toContain("error: ");
    expect(text.stdout).toBe("");
    const { error } = failureJson(json.stdout);
    expect(error).toMatchObject({ code: "JOB_NOT_FOUND", message: expect.stringContaining("nosuchjob"), exitCode: 1 });
  });

  it("prints only the result when a command reports through its exit status: plan --detailed-exitcode with changes, up whose job failed", async () => {
    const project = tempProject(trainingProject({ grid: { exit: 3 } }));
    const plan = await runKaos(["plan", "--json", "--detailed-exitcode"], { cwd: project.dir });
    expect(plan.code, plan.stderr).toBe(2);
    expect(plan.stderr).toBe("");
    const planned = JSON.parse(plan.stdout) as Record<string, unknown>;
    expect(planned).toHaveProperty("pipelines");
    expect(planned).not.toHaveProperty("error");
    const up = await runKaos(["up", "--json"], { cwd: project.dir });
    expect(up.code, up.stderr).toBe(1);
    const outcome = JSON.parse(up.stdout) as Record<string, unknown>;
    expect(outcome).toMatchObject({ succeeded: false });
    expect(outcome).not.toHaveProperty("error");
  });

  it("keeps a failure's exit status when the reader of stdout has gone before the JSON error reaches it", async () => {
    const project = tempProject(INVALID_CONFIG);
    const child = spawn(process.execPath, [CLI, "plan", "--json"], {
      cwd: project.dir,
      env: { ...process.env, NO_COLOR: "1", CI: "true" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout.destroy();
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const code = await new Promise<number | null>((done) => child.on("close", done));
    expect({ code, stderr }).toEqual({ code: 1, stderr: expect.stringMatching(/^error: invalid config\n/) });
  });

  it("names an internal error INTERNAL, and takes colour codes out of messages", () => {
    expect(exitFailureJson(new TypeError("x is undefined"), 1)).toEqual({
      error: { code: "INTERNAL", message: "x is undefined", hint: null, exitCode: 1 },
    });
    const coloured = new KaosError("IO", "cannot write \u001b[1mout\u001b[22m", { hint: "\u001b[2mfree some space\u001b[0m" });
    expect(exitFailureJson(coloured, 1)).toEqual({
      error: { code: "IO", message: "cannot write out", hint: "free some space", exitCode: 1 },
    });
  });
});

/**
 * The built-in modules a run of the built CLI loaded, as Node names them
 * (`NativeModule child_process`): a module given to `--import` writes them out
 * as the process exits.
 */
async function builtinsLoaded(project: Project, args: string[]): Promise<string[]> {
  return (await modulesLoaded(project, args)).builtins;
}

/** The built-in modules a run of the built CLI loads, and the files of dist/ it reads code from, by name. */
async function modulesLoaded(project: Project, args: string[]): Promise<{ builtins: string[]; ownFiles: string[] }> {
  const listing = project.path(`modules-${args.join("-")}.json`);
  const probe = project.path("list-modules.mjs");
  const dist = pathToFileURL(`${REPO_ROOT}/dist/`).href;
  writeFileSync(
    probe,
    [
      `import { writeFileSync } from "node:fs";`,
      `import { registerHooks } from "node:module";`,
      "const own = [];",
      `registerHooks({ load(url, context, next) { if (url.startsWith(${JSON.stringify(dist)})) own.push(url.slice(${dist.length})); return next(url, context); } });`,
      `process.on("exit", () => writeFileSync(${JSON.stringify(listing)}, JSON.stringify({ builtins: process.moduleLoadList, ownFiles: own })));`,
      "",
    ].join("\n"),
  );
  await runKaosOk(args, { cwd: project.dir, env: { NODE_OPTIONS: `--import ${pathToFileURL(probe).href}` } });
  return JSON.parse(readFileSync(listing, "utf8")) as { builtins: string[]; ownFiles: string[] };
}

describe("start-up (built CLI)", () => {
  it("loads no built-in module that --help or a no-op up does not use", async () => {
    const project = tempProject(trainingProject());
    await runKaosOk(["up"], { cwd: project.dir });

    const help = await builtinsLoaded(project, ["--help"]);
    // commander imports child_process for subcommands kaos does not have; importing node:fs as an ES module loaded fs/promises.
    expect(help).not.toContain("NativeModule child_process");
    expect(help).not.toContain("NativeModule fs/promises");
    expect(help).not.toContain("NativeModule internal/crypto/webcrypto");
    expect(help).not.toContain("NativeModule v8");

    const noop = await builtinsLoaded(project, ["up"]);
    expect(noop).toContain("NativeModule sqlite");
    // No process is started: the environment is built and the Python probe cached.
    expect(noop).not.toContain("NativeModule child_process");
    expect(noop).not.toContain("NativeModule internal/crypto/webcrypto");
    // A tiny tree is hashed in the calling thread: no thread is started, so none of their machinery loads.
    expect(noop).not.toContain("NativeModule worker_threads");
  });

  it("keeps young generations small for heavy work only: a first up and train list, not a no-op up", async () => {
    const project = tempProject(trainingProject());
    // node:v8 is loaded to set the flag (src/core/heap.ts), and only then.
    const first = await builtinsLoaded(project, ["up"]);
    expect(first).toContain("NativeModule worker_threads");
    expect(first).toContain("NativeModule v8");
    expect(await builtinsLoaded(project, ["up"])).not.toContain("NativeModule v8");
    expect(await builtinsLoaded(project, ["train", "list"])).toContain("NativeModule v8");
  });

  it("reads a no-op up's code from the command line's own files, not the library's entries", async () => {
    const project = tempProject(trainingProject());
    await runKaosOk(["up"], { cwd: project.dir });
    const { ownFiles } = await modulesLoaded(project, ["up"]);
    expect(ownFiles).toContain("cli.js");
    // The library's entries (the package's main, the modules the benchmarks drive) and their chunks are built apart:
    // sharing the command line's chunks, they cut the modules every up loads into more files.
    expect(ownFiles.filter((file) => /^(lib-.*|index|hash|state|manifest|objects)\.js$/.test(file))).toEqual([]);
  });
});

describe("templates (built CLI)", () => {
  it("lists templates, as text and JSON", async () => {
    const project = tempProject();
    const text = await runKaos(["template", "list"], { cwd: project.dir });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^NAME\s+DESCRIPTION\nmnist\s+SVM/);
    const json = await runKaos(["template", "list", "--json"], { cwd: project.dir });
    expect(JSON.parse(json.stdout)).toEqual([{ name: "mnist", description: expect.stringContaining("SVM") }]);
  });

  it("copies the mnist template with its executable train script, ready to plan", async () => {
    const project = tempProject();
    const result = await runKaos(["template", "get", "--name", "mnist"], { cwd: project.dir });
    expect(result.code).toBe(0);
    const train = project.path("mnist/model-train/mnist/model/train");
    expect(statSync(train).mode & 0o111).not.toBe(0);
    for (const file of [
      "kaos.config.ts",
      "hyperopt/params.json",
      "model-train/mnist/Dockerfile",
      "data/features/training/xaaa.csv",
      "data_manifest_micro/manifest.jsonl",
    ]) {
      expect(existsSync(project.path("mnist", file)), file).toBe(true);
    }
    const plan = await runKaos(["plan", "--json"], { cwd: project.path("mnist") });
    expect(plan.code, plan.stderr).toBe(0);
    const parsed = JSON.parse(plan.stdout) as { pipelines: { jobs: unknown[] }[] };
    expect(parsed.pipelines[0]?.jobs).toHaveLength(12);
    const again = await runKaos(["template", "get", "--name", "mnist"], { cwd: project.dir });
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("error: copying template mnist into mnist would overwrite these");
    const unknown = await runKaos(["template", "get", "--name", "cifar"], { cwd: project.dir });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toContain("--name cifar: no such template; expected one of: mnist");
  });
});
