import { execFileSync, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { beforeAll, afterAll, describe, expect, it } from "vitest";
import { trainingProject, type ListedJob } from "./helpers/jobs.js";
import { CLI, makeProject, runKaos, type Project } from "./helpers/rig.js";

function installed(shell: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${shell}`]).status === 0;
}

const STACK = 'import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local" });\n';

let project: Project;
let env: NodeJS.ProcessEnv;
let jobIds: string[];

/** A project with two stacks and a finished sweep, and `kaos` on PATH as the built CLI. */
beforeAll(async () => {
  project = makeProject(
    trainingProject({ grid: { score: [1, 2] }, extra: { "stacks/local.ts": STACK, "stacks/gpu-cluster.ts": STACK } }),
    "kaos-completion-",
  );
  project.write({ "bin/kaos": { content: `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`, mode: 0o755 } });
  env = { ...process.env, PATH: `${project.path("bin")}:${process.env["PATH"] ?? ""}`, NO_COLOR: "1" };
  const up = await runKaos(["up"], { cwd: project.dir });
  expect(up.code, up.stderr).toBe(0);
  const list = await runKaos(["train", "list", "--json"], { cwd: project.dir });
  jobIds = (JSON.parse(list.stdout) as ListedJob[]).map((job) => job.id);
  expect(jobIds.length).toBeGreaterThan(0);
}, 120_000);
afterAll(() => project.remove());

async function script(shell: string): Promise<string> {
  const result = await runKaos(["completion", shell], { cwd: project.dir });
  expect(result.code, result.stderr).toBe(0);
  const file = project.path(`kaos.${shell}`);
  writeFileSync(file, result.stdout);
  return file;
}

/** Runs the bash completion function in a real bash, as if Tab were pressed after `words`, and returns COMPREPLY. */
function bashComplete(file: string, words: string[]): string[] {
  const array = words.map((word) => `'${word}'`).join(" ");
  const output = execFileSync(
    "bash",
    [
      "--norc",
      "--noprofile",
      "-c",
      `source "$1"; COMP_WORDS=(${array}); COMP_CWORD=${words.length - 1}; _kaos; printf '%s\\n' "\${COMPREPLY[@]}"`,
      "bash",
      file,
    ],
    { cwd: project.dir, env, encoding: "utf8" },
  );
  return output.split("\n").filter((line) => line !== "");
}

describe("kaos completion", () => {
  it("bash: completes commands, subcommands, options, option values, stack names, job ids and template names", async () => {
    const file = await script("bash");
    expect(bashComplete(file, ["kaos", "pl"])).toEqual(["plan"]);
    expect(bashComplete(file, ["kaos", "t"])).toEqual(["train", "template"]);
    expect(bashComplete(file, ["kaos", "train", "l"])).toEqual(["list", "logs"]);
    expect(bashComplete(file, ["kaos", "plan", "--d"])).toEqual(["--detailed-exitcode"]);
    expect(bashComplete(file, ["kaos", "up", "--st"])).toEqual(["--stack"]);
    // Program options work after a subcommand too.
    expect(bashComplete(file, ["kaos", "up", "--con"])).toEqual(["--config"]);
    expect(bashComplete(file, ["kaos", "up", "--stack", ""])).toEqual(["gpu-cluster", "local"]);
    expect(bashComplete(file, ["kaos", "plan", "--json", "--stack", "g"])).toEqual(["gpu-cluster"]);
    expect(bashComplete(file, ["kaos", "up", "--stack", "=", ""])).toEqual(["gpu-cluster", "local"]);
    expect(bashComplete(file, ["kaos", "train", "kill", "--st"])).toEqual(["--stack"]);
    expect(bashComplete(file, ["kaos", "train", "info", "--stack", "g"])).toEqual(["gpu-cluster"]);
    expect(bashComplete(file, ["kaos", "watch", "--on-change", ""])).toEqual(["restart", "queue"]);
    expect(bashComplete(file, ["kaos", "template", "get", "--name", ""])).toEqual(["mnist"]);
    expect(bashComplete(file, ["kaos", "completion", ""])).toEqual(["bash", "zsh", "fish"]);
    expect(bashComplete(file, ["kaos", "train", "logs", ""]).sort()).toEqual([...jobIds].sort());
    expect(bashComplete(file, ["kaos", "train", "info", "-s", "x", jobIds[0]!.slice(0, 6)])).toEqual(
      jobIds.filter((id) => id.startsWith(jobIds[0]!.slice(0, 6))),
    );
  });

  it("bash: the options are the commander program's own: every flag `train deploy --help` lists", async () => {
    const file = await script("bash");
    const help = await runKaos(["train", "deploy", "--help"], { cwd: project.dir });
    // The command's own options; of the global ones, completion offers --config after a subcommand, not --version.
    const ownOptions = help.stdout.split("\nGlobal Options:")[0] ?? "";
    const fromHelp = [...ownOptions.matchAll(/^ {2}(-\w, )?(--[\w-]+)/gm)]
      .flatMap((match) => [match[1]?.slice(0, 2), match[2]!])
      .filter((flag) => flag !== undefined);
    expect(fromHelp).toContain("-h");
    expect(bashComplete(file, ["kaos", "train", "deploy", "-"]).sort()).toEqual([...fromHelp, "-c", "--config"].sort());
    expect(bashComplete(file, ["kaos", "train", "deploy", "-p", ""])).toEqual([]);
  });

  it("hides the helper it calls for dynamic values, which prints one value a line", async () => {
    const help = await runKaos(["--help"], { cwd: project.dir });
    expect(help.stdout).toContain("  completion");
    expect(help.stdout).not.toContain("__complete");
    const stacks = await runKaos(["__complete", "stacks"], { cwd: project.path("stacks") });
    expect(stacks.stdout).toBe("gpu-cluster\nlocal\n");
    const nowhere = makeProject({}, "kaos-completion-empty-");
    try {
      const none = await runKaos(["__complete", "jobs"], { cwd: nowhere.dir });
      expect(none).toMatchObject({ code: 0, stdout: "" });
    } finally {
      nowhere.remove();
    }
  });

  it.skipIf(!installed("zsh"))("zsh: the script parses", async () => {
    const file = await script("zsh");
    const result = spawnSync("zsh", ["-n", file], { encoding: "utf8" });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  it.skipIf(!installed("fish"))("fish: the script parses and completes subcommands and stack names", async () => {
    const file = await script("fish");
    const parsed = spawnSync("fish", ["--no-execute", file], { encoding: "utf8" });
    expect(parsed.stderr).toBe("");
    expect(parsed.status).toBe(0);
    const complete = (line: string) =>
      execFileSync("fish", ["--no-config", "-c", `source $argv[1]; complete -C '${line}'`, file], {
        cwd: project.dir,
        env,
        encoding: "utf8",
      })
        .split("\n")
        .filter((entry) => entry !== "")
        .map((entry) => entry.split("\t")[0]);
    expect(complete("kaos template ")).toEqual(["get", "help", "list"]);
    expect(complete("kaos up --stack ")).toEqual(["gpu-cluster", "local"]);
  });
});
