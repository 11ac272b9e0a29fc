import { describe, it, expect, afterEach } from "vitest";
import {
  appendFileSync,
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parse as parseYaml } from "yaml";
import { KaosError } from "../src/core/errors.js";
import { applyCluster, previewCluster, renderCluster, type PulumiCli, type PulumiExec } from "../src/backends/kubernetes/index.js";
import { findPulumi, packageRoot, PULUMI_INSTALL_HINT } from "../src/backends/kubernetes/automation.js";
import { PulumiCommand } from "@pulumi/pulumi/automation/index.js";
import { makeClusterProject, type ClusterProject } from "./fixtures/kubernetes/project.js";
import { FakePachd } from "./fixtures/kubernetes/fake-pachd.js";

const TOKEN = "pachyderm-token-0e5d93";
const PASSPHRASE = "correct horse battery staple";
const REPO_ROOT = join(import.meta.dirname, "..");

interface ExecCall {
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
}

const URN_PREFIX = "urn:pulumi:cluster::kaos-mnist::";

/** Engine events as the Pulumi CLI writes them to --event-log (one JSON object per line). */
function engineEvents(steps: { op: string; type: string; name: string }[], summary: Record<string, number>): string {
  const lines: unknown[] = [{ sequence: 0, timestamp: 1, preludeEvent: { config: {} } }];
  steps.forEach((step, index) => {
    lines.push({
      sequence: index + 1,
      timestamp: 1,
      resourcePreEvent: { metadata: { op: step.op, urn: `${URN_PREFIX}${step.type}::${step.name}`, type: step.type, provider: "" } },
    });
  });
  lines.push({
    sequence: steps.length + 1,
    timestamp: 2,
    summaryEvent: { maybeCorrupt: false, durationSeconds: 1, resourceChanges: summary, PolicyPacks: {} },
  });
  return `${lines.map((line) => JSON.stringify(line)).join("\n")}\n`;
}

const STEPS = [
  { op: "same", type: "kubernetes:core/v1:Namespace", name: "namespace" },
  { op: "update", type: "pulumi-nodejs:dynamic/pachyderm:Pipeline", name: "mnist-svm-train" },
  { op: "create", type: "pulumi-nodejs:dynamic/pachyderm:Bundle", name: "mnist-svm-data-bundle" },
  { op: "same", type: "pulumi-nodejs:dynamic/pachyderm:Pipeline", name: "mnist-svm-build" },
];

/** A stand-in for the Pulumi CLI: records every start, knows which stacks exist, writes engine events. */
interface FakeRun {
  code: number;
  stderr: string;
  stdout?: string;
  /** Engine events written to the event log before the run ends. */
  events?: string;
}

function fakeCli(options: { failWith?: FakeRun; failFirst?: FakeRun[]; version?: string } = {}): { cli: PulumiCli; calls: ExecCall[] } {
  const failFirst = [...(options.failFirst ?? [])];
  const calls: ExecCall[] = [];
  const stacks = new Set<string>();
  const exec: PulumiExec = async (command, args, run) => {
    calls.push({ command, args: [...args], cwd: run.cwd, env: { ...run.env } });
    const stackName = args[args.indexOf("--stack") + 1] ?? "";
    if (args[0] === "stack" && args[1] === "select") {
      return stacks.has(stackName)
        ? { stdout: "", stderr: "", code: 0 }
        : { stdout: "", stderr: `error: no stack named '${stackName}' found`, code: 255 };
    }
    if (args[0] === "stack" && args[1] === "init") {
      stacks.add(args[2] ?? "");
      return { stdout: `Created stack '${args[2]}'`, stderr: "", code: 0 };
    }
    if (args[0] === "stack" && args[1] === "output") return { stdout: "{}", stderr: "", code: 0 };
    if (args[0] === "stack" && args[1] === "history") return { stdout: "[]", stderr: "", code: 0 };
    if (args[0] === "stack" && args[1] === "export") return { stdout: '{"version":3,"deployment":{}}', stderr: "", code: 0 };
    if (args[0] === "cancel") return { stdout: "The currently running update for 'cluster' has been canceled!", stderr: "", code: 0 };
    if (args[0] === "preview" || args[0] === "up") {
      const log = args[args.indexOf("--event-log") + 1] ?? "";
      const failure = failFirst.shift() ?? options.failWith;
      if (failure) {
        if (failure.events) appendFileSync(log, failure.events);
        return { stdout: failure.stdout ?? "", stderr: failure.stderr, code: failure.code };
      }
      appendFileSync(log, engineEvents(STEPS, { same: 2, update: 1, create: 1 }));
      run.onOutput?.(`${args[0] === "up" ? "Updating" : "Previewing update"} (cluster)\n`);
      return { stdout: "Resources: 1 to create, 1 to update, 2 unchanged", stderr: "", code: 0 };
    }
    return { stdout: "", stderr: `unexpected command ${args.join(" ")}`, code: 1 };
  };
  return { cli: { command: "/opt/pulumi/bin/pulumi", version: options.version ?? "v3.205.0", exec }, calls };
}

const projects: ClusterProject[] = [];
const temps: string[] = [];
afterEach(() => {
  for (const project of projects.splice(0)) project.remove();
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function project(overrides: Parameters<typeof makeClusterProject>[1] = {}): ClusterProject {
  const made = makeClusterProject([{ name: "svm", grid: { C: [1, 2] } }], overrides);
  projects.push(made);
  return made;
}

function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: "/usr/bin:/bin", HOME: "/nonexistent", KAOS_TEST_PACHYDERM_TOKEN: TOKEN, PULUMI_CONFIG_PASSPHRASE: PASSPHRASE, ...extra };
}

describe("Automation API seam (injected command runner)", () => {
  it("previews: selects the stack, creates it with passphrase secrets when missing, runs an inline preview", async () => {
    const made = project();
    const { cli, calls } = fakeCli();
    const output: string[] = [];
    const summary = await previewCluster(made.config, made.stack, made.inputs, {
      pulumi: cli,
      preflight: false,
      env: env(),
      onOutput: (text) => output.push(text),
    });

    const workDir = join(made.dir, ".kaos", "pulumi", "workspaces", "cluster");
    expect(calls.map((call) => call.args.slice(0, 2).join(" "))).toEqual([
      "stack select",
      "stack init",
      "preview --client=" + calls[2]?.args[1]?.slice("--client=".length),
    ]);
    expect(calls[0]?.args).toEqual(["stack", "select", "--stack", "cluster", "--non-interactive"]);
    expect(calls[1]?.args).toEqual(["stack", "init", "cluster", "--secrets-provider", "passphrase", "--non-interactive"]);
    const preview = calls[2]?.args ?? [];
    expect(preview[0]).toBe("preview");
    expect(preview[1]).toMatch(/^--client=127\.0\.0\.1:\d+$/);
    expect(preview.slice(2, 5)).toEqual(["--exec-kind", "auto.inline", "--event-log"]);
    expect(preview.slice(6)).toEqual(["--stack", "cluster", "--non-interactive"]);
    for (const call of calls) {
      expect(call.command).toBe("/opt/pulumi/bin/pulumi");
      expect(call.cwd).toBe(workDir);
      expect(call.env).toMatchObject({
        PULUMI_BACKEND_URL: pathToFileURL(join(made.dir, ".kaos", "pulumi")).href,
        PULUMI_CONFIG_PASSPHRASE: PASSPHRASE,
        PULUMI_SKIP_UPDATE_CHECK: "true",
        PULUMI_AUTOMATION_API: "true",
        KAOS_TEST_PACHYDERM_TOKEN: TOKEN,
      });
      expect(call.env["PATH"]?.startsWith("/opt/pulumi/bin:")).toBe(true);
      expect(call.args.join(" ")).not.toContain(TOKEN);
      expect(call.args.join(" ")).not.toContain(PASSPHRASE);
    }
    expect(existsSync(join(made.dir, ".kaos", "pulumi"))).toBe(true);
    const projectFile = parseYaml(readFileSync(join(workDir, "Pulumi.yaml"), "utf8")) as Record<string, unknown>;
    expect(projectFile).toEqual({
      name: "kaos-mnist",
      runtime: "nodejs",
      main: packageRoot(),
      backend: { url: pathToFileURL(join(made.dir, ".kaos", "pulumi")).href },
    });
    expect(packageRoot()).toBe(REPO_ROOT);
    expect(readFileSync(join(workDir, "Pulumi.yaml"), "utf8")).not.toContain(TOKEN);

    expect(summary).toEqual({
      stack: "cluster",
      create: 1,
      update: 1,
      delete: 0,
      replace: 0,
      same: 2,
      resources: [
        {
          op: "update",
          type: "pulumi-nodejs:dynamic/pachyderm:Pipeline",
          name: "mnist-svm-train",
          urn: `${URN_PREFIX}pulumi-nodejs:dynamic/pachyderm:Pipeline::mnist-svm-train`,
        },
        {
          op: "create",
          type: "pulumi-nodejs:dynamic/pachyderm:Bundle",
          name: "mnist-svm-data-bundle",
          urn: `${URN_PREFIX}pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-data-bundle`,
        },
      ],
    });
    expect(output.join("")).toContain("Previewing update (cluster)");
  });

  it("applies with `up --yes --skip-preview` and reads the outputs afterwards", async () => {
    const made = project();
    const { cli, calls } = fakeCli();
    await previewCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: env() });
    calls.splice(0);
    const summary = await applyCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: env() });
    expect(calls[0]?.args).toEqual(["stack", "select", "--stack", "cluster", "--non-interactive"]);
    // Pending creates left by a CLI stopped at once are looked for first, in the state as stored.
    expect(calls[1]?.args).toEqual(["stack", "export", "--stack", "cluster", "--non-interactive"]);
    const up = calls[2]?.args ?? [];
    expect(up.slice(0, 3)).toEqual(["up", "--yes", "--skip-preview"]);
    expect(up[3]).toMatch(/^--client=127\.0\.0\.1:\d+$/);
    expect(up.slice(4, 7)).toEqual(["--exec-kind", "auto.inline", "--event-log"]);
    expect(up.slice(-3)).toEqual(["--stack", "cluster", "--non-interactive"]);
    expect(calls.slice(3).map((call) => call.args.slice(0, 2).join(" "))).toEqual(["stack output", "stack output", "stack history"]);
    expect(summary).toMatchObject({ create: 1, update: 1, same: 2 });
  });

  it("passes the stack's own backend URL, stack name and passphrase variable", async () => {
    const made = project({ pulumi: { backendUrl: "s3://ml-state/kaos", stackName: "gpu-prod", passphraseEnv: "TEAM_PASSPHRASE" } });
    const { cli, calls } = fakeCli();
    await previewCluster(made.config, made.stack, made.inputs, {
      pulumi: cli,
      preflight: false,
      env: env({ TEAM_PASSPHRASE: "team secret", PULUMI_CONFIG_PASSPHRASE: "other" }),
    });
    expect(calls[0]?.args).toEqual(["stack", "select", "--stack", "gpu-prod", "--non-interactive"]);
    expect(calls[0]?.env).toMatchObject({ PULUMI_BACKEND_URL: "s3://ml-state/kaos", PULUMI_CONFIG_PASSPHRASE: "team secret" });
    expect(calls[0]?.cwd).toBe(join(made.dir, ".kaos", "pulumi", "workspaces", "gpu-prod"));
  });

  it("maps a failed command to PULUMI_FAILED with the end of its stderr, secrets masked", async () => {
    const made = project();
    const stderr = [
      ...Array.from({ length: 30 }, (_, index) => `noise line ${index}`),
      `error: pachd refused token ${TOKEN}`,
      "error: update failed",
    ].join("\n");
    const { cli } = fakeCli({ failWith: { code: 255, stderr } });
    const error = await previewCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: env() }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("PULUMI_FAILED");
    expect((error as KaosError).message).toBe("pulumi preview failed for stack 'cluster' (exit 255)");
    const hint = (error as KaosError).hint ?? "";
    expect(hint.split("\n")).toHaveLength(15);
    expect(hint).toContain("error: pachd refused token ***");
    expect(hint).toContain("error: update failed");
    expect(hint).not.toContain("noise line 0");
    expect(hint).not.toContain(TOKEN);
  });

  it("shows the engine's error diagnostics, not the outputs block that ends Pulumi's output", async () => {
    const made = project();
    const failed = "urn:pulumi:cluster::kaos-mnist::pulumi-nodejs:dynamic/pachyderm:Bundle::mnist-svm-params-bundle";
    const events =
      [
        {
          sequence: 1,
          timestamp: 1,
          diagnosticEvent: {
            urn: failed,
            message: "<{%reset%}>pachd pfs_v2.API/StartCommit failed: repo mnist-svm-params not found (NOT_FOUND)<{%reset%}>\n",
            color: "raw",
            severity: "error",
          },
        },
        {
          sequence: 2,
          timestamp: 1,
          diagnosticEvent: {
            urn: `${URN_PREFIX}pulumi:pulumi:Stack::kaos-mnist-cluster`,
            message: "update failed",
            color: "raw",
            severity: "error",
          },
        },
        { sequence: 3, timestamp: 1, diagnosticEvent: { message: "a warning", color: "raw", severity: "warning" } },
      ]
        .map((event) => JSON.stringify(event))
        .join("\n") + "\n";
    const stdout = [
      "Updating (cluster):",
      "Diagnostics:",
      "  pulumi-nodejs:dynamic/pachyderm:Bundle (mnist-svm-params-bundle):",
      "    error: pachd pfs_v2.API/StartCommit failed: repo mnist-svm-params not found (NOT_FOUND)",
      "Outputs:",
      ...Array.from({ length: 20 }, (_, index) => `    images: mnist-${index}`),
      "Resources:",
      "    12 unchanged",
      "Duration: 3s",
    ].join("\n");
    const { cli } = fakeCli({ failWith: { code: 255, stderr: "", stdout, events } });
    const error = await applyCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: env() }).catch(
      (e: unknown) => e,
    );
    expect((error as KaosError).code).toBe("PULUMI_FAILED");
    expect((error as KaosError).hint).toBe(
      "mnist-svm-params-bundle: pachd pfs_v2.API/StartCommit failed: repo mnist-svm-params not found (NOT_FOUND)\nupdate failed",
    );
    // Without engine events, the Diagnostics block of the text output.
    const { cli: textOnly } = fakeCli({ failWith: { code: 255, stderr: "", stdout } });
    const fromText = await applyCluster(made.config, made.stack, made.inputs, { pulumi: textOnly, preflight: false, env: env() }).catch(
      (e: unknown) => e,
    );
    expect((fromText as KaosError).hint).toContain("repo mnist-svm-params not found");
    expect((fromText as KaosError).hint).not.toContain("images:");
  });

  it("counts exactly the steps it lists, leaving out the stack and its default providers", async () => {
    const made = project();
    const steps = [
      { op: "create", type: "pulumi:pulumi:Stack", name: "kaos-mnist-cluster" },
      { op: "create", type: "pulumi:providers:pulumi-nodejs", name: "default" },
      { op: "create", type: "pulumi:providers:kubernetes", name: "kubernetes" },
      { op: "create", type: "kubernetes:core/v1:Namespace", name: "namespace" },
      { op: "same", type: "pulumi-nodejs:dynamic/pachyderm:Repo", name: "mnist-svm-source" },
    ];
    const { cli } = fakeCli({ failFirst: [] });
    const exec = cli.exec;
    const withBookkeeping: PulumiCli = {
      ...cli,
      exec: async (command, args, run) => {
        if (args[0] !== "preview") return exec(command, args, run);
        appendFileSync(args[args.indexOf("--event-log") + 1] ?? "", engineEvents(steps, { create: 4, same: 1 }));
        return { stdout: "", stderr: "", code: 0 };
      },
    };
    const summary = await previewCluster(made.config, made.stack, made.inputs, { pulumi: withBookkeeping, preflight: false, env: env() });
    expect(summary.resources.map((change) => change.name)).toEqual(["kubernetes", "namespace"]);
    expect(summary).toMatchObject({ create: 2, update: 0, same: 1 });
  });

  it("cancels a lock left by a killed update of kaos's own state and applies again", async () => {
    const made = project();
    const locked = {
      code: 255,
      stderr:
        "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file with `pulumi cancel`.",
    };
    const { cli, calls } = fakeCli({ failFirst: [locked] });
    const output: string[] = [];
    const summary = await applyCluster(made.config, made.stack, made.inputs, {
      pulumi: cli,
      preflight: false,
      env: env(),
      onOutput: (text) => output.push(text),
    });
    expect(calls.map((call) => call.args[0]).filter((command) => command !== "stack")).toEqual(["up", "cancel", "up"]);
    expect(calls.find((call) => call.args[0] === "cancel")?.args).toEqual(["cancel", "--yes", "--stack", "cluster", "--non-interactive"]);
    expect(output.join("")).toContain("was left locked by a Pulumi update that was killed");
    expect(summary).toMatchObject({ create: 1, update: 1 });
  });

  it("says the passphrase variable's name when the passphrase does not unlock the stack", async () => {
    const made = project({ pulumi: { passphraseEnv: "TEAM_PASSPHRASE" } });
    const { cli } = fakeCli({ failWith: { code: 255, stderr: "error: getting stack configuration: incorrect passphrase" } });
    const error = await previewCluster(made.config, made.stack, made.inputs, {
      pulumi: cli,
      preflight: false,
      env: env({ TEAM_PASSPHRASE: "wrong one" }),
    }).catch((e: unknown) => e);
    expect((error as KaosError).code).toBe("PASSPHRASE_INVALID");
    expect((error as KaosError).message).toBe(
      "the passphrase in TEAM_PASSPHRASE does not unlock stack 'cluster' (getting stack configuration: incorrect passphrase)",
    );
    expect((error as KaosError).hint).toContain("export TEAM_PASSPHRASE with the passphrase the stack was created with");
  });

  it("checks the kube context and pachd before Pulumi starts, and says which one failed", async () => {
    const pachd = new FakePachd();
    await pachd.start();
    const dir = mkdtempSync(join(tmpdir(), "kaos-preflight-"));
    temps.push(dir);
    try {
      const made = project({ pachyderm: { address: pachd.address, tokenEnv: "KAOS_TEST_PACHYDERM_TOKEN", project: "default" } });
      const { cli, calls } = fakeCli();
      const noKubeconfig = await applyCluster(made.config, made.stack, made.inputs, {
        pulumi: cli,
        env: env({ KUBECONFIG: join(dir, "absent") }),
      }).catch((e: unknown) => e);
      expect((noKubeconfig as KaosError).code).toBe("STACK_INVALID");
      expect((noKubeconfig as KaosError).message).toBe(
        `stack 'cluster' needs a kube context, and there is no kubeconfig at ${join(dir, "absent")}`,
      );

      // A kube context whose API server is this test's HTTP server, and one that nothing answers.
      const api = createServer((_request, response) => response.end('{"gitVersion":"v1.36.2"}'));
      await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
      const port = (api.address() as AddressInfo).port;
      const kubeconfig = (server: string, context = "test") =>
        `apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: ${server}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: ${context}\n  context:\n    cluster: c\n    user: u\ncurrent-context: ${context}\n`;
      writeFileSync(join(dir, "good"), kubeconfig(`http://127.0.0.1:${port}`));
      writeFileSync(join(dir, "copy"), kubeconfig(`http://127.0.0.1:${port}`));
      writeFileSync(join(dir, "down"), kubeconfig("http://127.0.0.1:9"));
      try {
        const down = await applyCluster(made.config, made.stack, made.inputs, {
          pulumi: cli,
          env: env({ KUBECONFIG: join(dir, "down") }),
        }).catch((e: unknown) => e);
        expect((down as KaosError).code).toBe("CLUSTER_UNREACHABLE");
        expect((down as KaosError).message).toContain("the API server of kube context 'test' (http://127.0.0.1:9, from");

        const noPachd = project({
          pachyderm: { address: "http://127.0.0.1:9", tokenEnv: "KAOS_TEST_PACHYDERM_TOKEN", project: "default" },
        });
        const pachdDown = await applyCluster(noPachd.config, noPachd.stack, noPachd.inputs, {
          pulumi: cli,
          env: env({ KUBECONFIG: join(dir, "good") }),
        }).catch((e: unknown) => e);
        expect((pachdDown as KaosError).code).toBe("PACHD_UNREACHABLE");
        expect((pachdDown as KaosError).message).toContain("cannot reach pachd at http://127.0.0.1:9");
        expect(calls.some((call) => call.args[0] === "up" || call.args[0] === "preview")).toBe(false);
        expect(pachd.mutatingCalls()).toEqual([]);

        // Reachable: Pulumi runs, with the kubeconfig named by its content whichever path held it.
        const first = await previewCluster(made.config, made.stack, made.inputs, {
          pulumi: cli,
          env: env({ KUBECONFIG: join(dir, "good") }),
        });
        expect(first.checked).toEqual({ kubeContext: "test", kubeServer: `http://127.0.0.1:${port}`, pachdVersion: "2.11.6" });
        const workDir = join(made.dir, ".kaos", "pulumi", "workspaces", "cluster");
        const copies = () => readdirSync(workDir).filter((file) => file.startsWith("kubeconfig-"));
        expect(copies()).toHaveLength(1);
        await previewCluster(made.config, made.stack, made.inputs, { pulumi: cli, env: env({ KUBECONFIG: join(dir, "copy") }) });
        expect(copies()).toHaveLength(1);
        expect(statSync(join(workDir, copies()[0]!)).mode & 0o777).toBe(0o600);
      } finally {
        await new Promise<void>((resolve) => api.close(() => resolve()));
      }
    } finally {
      await pachd.stop();
    }
  });

  it("maps a locked stack to STATE_LOCKED", async () => {
    const made = project();
    const { cli } = fakeCli({
      failWith: {
        code: 255,
        stderr: "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete the lock file",
      },
    });
    const error = await applyCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: env() }).catch(
      (e: unknown) => e,
    );
    expect((error as KaosError).code).toBe("STATE_LOCKED");
    // State kaos does not own alone: nothing is cancelled, and the hint says exactly what to run.
    const shared = project({ pulumi: { backendUrl: "s3://ml-state/kaos" } });
    const { cli: sharedCli, calls } = fakeCli({ failWith: { code: 255, stderr: "error: the stack is currently locked by 1 lock(s)." } });
    const sharedError = await applyCluster(shared.config, shared.stack, shared.inputs, {
      pulumi: sharedCli,
      preflight: false,
      env: env(),
    }).catch((e: unknown) => e);
    expect((sharedError as KaosError).code).toBe("STATE_LOCKED");
    expect(calls.map((call) => call.args[0])).not.toContain("cancel");
    expect((sharedError as KaosError).hint).toBe(
      `wait for it to finish; if it was killed, cancel it: cd ${join(shared.dir, ".kaos", "pulumi", "workspaces", "cluster")} && PULUMI_BACKEND_URL=s3://ml-state/kaos pulumi cancel --stack cluster --yes, then rerun`,
    );
  });

  it("refuses to put registry credentials into the state without a passphrase, before starting Pulumi", async () => {
    const made = project();
    const { cli, calls } = fakeCli();
    const error = await previewCluster(made.config, made.stack, made.inputs, {
      pulumi: cli,
      env: env({ PULUMI_CONFIG_PASSPHRASE: "", KAOS_TEST_REGISTRY_USER: "robot", KAOS_TEST_REGISTRY_PASSWORD: "pw-123456" }),
    }).catch((e: unknown) => e);
    expect((error as KaosError).code).toBe("STACK_INVALID");
    expect((error as KaosError).message).toContain("PULUMI_CONFIG_PASSPHRASE is not set");
    expect(calls).toHaveLength(0);
  });

  it("says the Pulumi CLI is missing and how to install it; render still works", async () => {
    const made = project();
    const empty = mkdtempSync(join(tmpdir(), "kaos-nopulumi-"));
    temps.push(empty);
    const noPulumi = env({ PATH: empty, HOME: empty });
    const error = await previewCluster(made.config, made.stack, made.inputs, { env: noPulumi }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("PULUMI_MISSING");
    expect((error as KaosError).message).toContain("the Pulumi CLI is required for stack 'cluster'");
    expect((error as KaosError).hint).toBe(PULUMI_INSTALL_HINT);
    expect(PULUMI_INSTALL_HINT).toContain("curl -fsSL https://get.pulumi.com | sh");
    expect(PULUMI_INSTALL_HINT).toContain("kaos render --stack cluster -o DIR");
    const applyError = await applyCluster(made.config, made.stack, made.inputs, { env: noPulumi }).catch((e: unknown) => e);
    expect((applyError as KaosError).code).toBe("PULUMI_MISSING");
    expect((await renderCluster(made.config, made.stack, made.inputs, join(made.dir, "out"))).files.length).toBe(4);
  });
});

describe("Automation API with a stand-in `pulumi` executable (real processes)", () => {
  /** A shell script in <dir>/bin/pulumi that logs its arguments and environment and answers like the CLI. */
  function fakePulumiInstall(): { root: string; log: string; envLog: string } {
    const root = mkdtempSync(join(tmpdir(), "kaos-pulumi-"));
    temps.push(root);
    mkdirSync(join(root, "bin"));
    const log = join(root, "calls.log");
    const envLog = join(root, "env.log");
    const events = engineEvents(STEPS, { same: 2, update: 1, create: 1 }).replace(/'/g, "'\\''");
    writeFileSync(
      join(root, "bin", "pulumi"),
      [
        "#!/bin/sh",
        `echo "$*" >> '${log}'`,
        'case "$1" in',
        '  version) echo "v3.205.0" ;;',
        `  stack) if [ "$2" = select ] && [ ! -f '${root}/stack-created' ]; then echo "error: no stack named 'cluster' found" >&2; exit 255; fi`,
        `         if [ "$2" = init ]; then touch '${root}/stack-created'; fi ;;`,
        `  preview) env > '${envLog}'`,
        '    while [ $# -gt 0 ]; do if [ "$1" = --event-log ]; then shift; log_file="$1"; fi; shift; done',
        `    printf '%s' '${events}' >> "$log_file" ;;`,
        '  *) echo "unexpected: $*" >&2; exit 1 ;;',
        "esac",
      ].join("\n"),
    );
    chmodSync(join(root, "bin", "pulumi"), 0o755);
    return { root, log, envLog };
  }

  it("finds `pulumi` on PATH, checks its version and drives it as a child process", async () => {
    const made = project();
    const install = fakePulumiInstall();
    const processEnv = env({ PATH: `${join(install.root, "bin")}:/usr/bin:/bin` });
    const cli = await findPulumi(processEnv);
    expect(cli.command).toBe(join(install.root, "bin", "pulumi"));
    expect(String(cli.version)).toBe("3.205.0");
    // The SDK's own command, from its public PulumiCommand.get: the SDK starts the CLI itself.
    expect(cli).toBeInstanceOf(PulumiCommand);
    const summary = await previewCluster(made.config, made.stack, made.inputs, { pulumi: cli, preflight: false, env: processEnv });
    expect(summary).toMatchObject({ create: 1, update: 1, same: 2 });
    const calls = readFileSync(install.log, "utf8").trim().split("\n");
    expect(calls[0]).toBe("version");
    expect(calls[1]).toBe("stack select --stack cluster --non-interactive");
    expect(calls[2]).toBe("stack init cluster --secrets-provider passphrase --non-interactive");
    expect(calls[3]).toMatch(
      /^preview --client=127\.0\.0\.1:\d+ --exec-kind auto\.inline --event-log \S+ --stack cluster --non-interactive$/,
    );
    expect(calls.join("\n")).not.toContain(TOKEN);
    const childEnv = readFileSync(install.envLog, "utf8");
    expect(childEnv).toContain(`KAOS_TEST_PACHYDERM_TOKEN=${TOKEN}`);
    expect(childEnv).toContain(`PULUMI_CONFIG_PASSPHRASE=${PASSPHRASE}`);
    expect(childEnv).toContain("PULUMI_AUTOMATION_API=true");
    expect(childEnv).toContain(`PATH=${join(install.root, "bin")}:`);
  });

  it("finds a CLI installed in ~/.pulumi/bin when PATH has none", async () => {
    const home = mkdtempSync(join(tmpdir(), "kaos-home-"));
    temps.push(home);
    const install = fakePulumiInstall();
    mkdirSync(join(home, ".pulumi", "bin"), { recursive: true });
    writeFileSync(join(home, ".pulumi", "bin", "pulumi"), readFileSync(join(install.root, "bin", "pulumi")));
    chmodSync(join(home, ".pulumi", "bin", "pulumi"), 0o755);
    const cli = await findPulumi(env({ PATH: "/nonexistent", HOME: home }));
    expect(cli.command).toBe(join(home, ".pulumi", "bin", "pulumi"));
  });
});
