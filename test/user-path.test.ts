import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { afterAll, describe, expect, it } from "vitest";
import type { ListedJob } from "./helpers/jobs.js";
import { REPO_ROOT } from "./helpers/rig.js";

/**
 * The Node that runs npm, npx and the installed CLI: the one running the tests
 * (the repository's pinned Node under `npm test`), or KAOS_TEST_NODE.
 */
const NODE = process.env["KAOS_TEST_NODE"] ?? process.execPath;

const temps: string[] = [];
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a user's shell: NODE first on PATH (npm and npx start
 * with `#!/usr/bin/env node`), and none of the npm_* variables or the
 * repository's node_modules/.bin that `npm test` puts in the tests' own.
 */
function userEnv(): NodeJS.ProcessEnv {
  const bin = tempDir("kaos-user-node-");
  symlinkSync(NODE, join(bin, "node"));
  const repoBin = resolve(REPO_ROOT, "node_modules/.bin");
  const path = (process.env["PATH"] ?? "")
    .split(delimiter)
    .filter((entry) => entry !== "" && !resolve(entry).startsWith(resolve(REPO_ROOT)));
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key) && key !== "INIT_CWD" && key !== "NODE_OPTIONS" && key !== "NODE" && !key.startsWith("VITEST"))
      env[key] = value;
  }
  expect(path).not.toContain(repoBin);
  return {
    ...env,
    PATH: [bin, ...path].join(delimiter),
    NO_COLOR: "1",
    CI: "true",
    npm_config_fund: "false",
    npm_config_audit: "false",
    npm_config_update_notifier: "false",
  };
}

function run(command: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.on("error", reject);
    child.on("close", (code) => resolvePromise({ code, stdout, stderr }));
  });
}

function describeRun(what: string, ran: Ran): string {
  return `${what} exited ${ran.code}\nstdout:\n${ran.stdout}\nstderr:\n${ran.stderr}`;
}

/**
 * What a new user does, outside this repository: pack the package, install the
 * tarball from a fresh npm project (its dependencies come from the registry),
 * copy the mnist template into that project, plan and train it.
 */
describe("the user's path: npm pack, npm install -D, template get, plan, up", () => {
  it("trains the mnist template from an installed tarball", { timeout: 1_800_000 }, async () => {
    const env = userEnv();
    const nodeVersion = await run("node", ["--version"], tmpdir(), env);
    expect(nodeVersion.code).toBe(0);

    const packed = tempDir("kaos-user-pack-");
    // The suite builds dist/ before it runs; --ignore-scripts packs that build as it is.
    const pack = await run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", packed], REPO_ROOT, env);
    expect(pack.code, describeRun("npm pack", pack)).toBe(0);
    const [{ filename, files }] = JSON.parse(pack.stdout) as [{ filename: string; files: { path: string }[] }];
    const tarball = join(packed, filename);
    expect(files.map((file) => file.path).filter((path) => /^(test|bench|src|node_modules)\/|\/\.kaos\/|\.map$/.test(path))).toEqual([]);

    const project = join(tempDir("kaos-user-"), "my-project");
    mkdirSync(project);
    const init = await run("npm", ["init", "-y"], project, env);
    expect(init.code, describeRun("npm init -y", init)).toBe(0);

    const started = performance.now();
    const install = await run("npm", ["install", "-D", tarball], project, env);
    const seconds = (performance.now() - started) / 1000;
    console.log(`npm install -D ${filename} under Node ${nodeVersion.stdout.trim()}: ${seconds.toFixed(1)} s`);
    expect(install.code, describeRun("npm install", install)).toBe(0);

    // `--no`: never fetch the registry's unrelated package named kaos.
    const kaos = (...args: string[]) => run("npx", ["--no", "kaos", ...args], project, env);
    const before = readdirSync(project).sort();
    const copy = await kaos("template", "get", "--name", "mnist", "-o", ".");
    expect(copy.code, describeRun("template get", copy)).toBe(0);
    const count = Number(/^copied template mnist \((\d+) files\) into \.\n/.exec(copy.stdout)?.[1]);
    expect(count, copy.stdout).toBeGreaterThan(20);
    expect(copy.stdout).toContain("next: npx kaos up\n");
    for (const file of before) expect(existsSync(join(project, file))).toBe(true);
    expect(readFileSync(join(project, ".gitignore"), "utf8")).toMatch(/^\.kaos\/$/m);

    // Two combinations instead of twelve: the path is what is tested, not the sweep.
    writeFileSync(join(project, "hyperopt/params.json"), `${JSON.stringify({ degree: 3, kernel: ["linear", "poly"], gamma: 0.1 })}\n`);
    const plan = await kaos("plan");
    expect(plan.code, describeRun("kaos plan", plan)).toBe(0);
    const up = await kaos("up");
    expect(up.code, describeRun("kaos up", up)).toBe(0);
    expect(up.stderr).toContain("2 succeeded, 0 failed, 0 cancelled, 0 reused");
    const list = await kaos("train", "list", "--json");
    expect(list.code, describeRun("kaos train list", list)).toBe(0);
    const trained = (JSON.parse(list.stdout) as ListedJob[]).filter((job) => job.stage === "train");
    expect(trained.map((job) => job.state)).toEqual(["succeeded", "succeeded"]);
    const render = await kaos("render", "--stack", "cluster", "-o", "out");
    expect(render.code, describeRun("kaos render", render)).toBe(0);
    expect(readdirSync(join(project, "out/pachyderm")).sort()).toEqual(["svm-build.json", "svm-train.json"]);

    // The Pulumi SDK is an optional peer: a local-only install has none of it,
    // and a kubernetes stack says exactly what to install.
    expect(existsSync(join(project, "node_modules", "@pulumi"))).toBe(false);
    const cluster = await kaos("plan", "--stack", "cluster");
    expect(cluster.code, describeRun("kaos plan --stack cluster", cluster)).toBe(1);
    expect(cluster.stderr).toContain(
      "error: a kubernetes stack needs the Pulumi SDK, and @pulumi/pulumi is not installed in this project\n",
    );
    expect(cluster.stderr).toMatch(
      /hint: install it beside kaos-ml: npm install -D @pulumi\/kubernetes@\^\d+\.\d+\.\d+ @pulumi\/pulumi@\^\d+\.\d+\.\d+\n/,
    );
  });
});
