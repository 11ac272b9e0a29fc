/**
 * kaos's cluster path through the real engines: the built CLI drives the
 * Pulumi CLI, which applies the Namespace and registry Secret to a real
 * kube-apiserver (checked through its API) and the Pachyderm resources to the
 * fake pachd. One project goes through a sequence of edits; each step checks
 * what changed where.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { delimiter, join } from "node:path";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { canonicalJson } from "../../src/core/hyperparams.js";
import { FakePachd } from "../fixtures/kubernetes/fake-pachd.js";
import { makeProject, runKaos, startKaos, type Project, type RunResult } from "../helpers/rig.js";
// @ts-expect-error plain JavaScript module of the engine scripts
import { apiGet, startCluster } from "../../scripts/engines/cluster.mjs";

interface Cluster {
  server: string;
  token: string;
  kubeconfig: string;
  context: string;
  version: string;
  stop(): Promise<void>;
}

const engines = inject("engines");
const NAMESPACE = "kaos-engines";
const PASSPHRASE = "engines passphrase 7f3c";

let cluster: Cluster;
let pachd: FakePachd;
let project: Project;

function stackFile(address: string): string {
  return `import { defineStack } from "kaos-ml";

export default defineStack({
  backend: "kubernetes",
  namespace: "${NAMESPACE}",
  pachyderm: { address: "${address}", tokenEnv: "KAOS_ENGINES_PACHYDERM_TOKEN" },
  registry: { url: "registry.example.com/ml", usernameEnv: "KAOS_ENGINES_REGISTRY_USER", passwordEnv: "KAOS_ENGINES_REGISTRY_PASSWORD" },
  gpu: {
    nodeSelector: { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" },
    tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
  },
});
`;
}

function configFile(pipelines: string[]): string {
  const body = pipelines
    .map(
      (name) =>
        `    "${name}": { source: "${name}/src", data: "${name}/data", hyperparams: "${name}/grid.json", resources: { cpu: 1, memory: "1Gi", gpu: ${name === "cnn" ? 1 : 0} } },`,
    )
    .join("\n");
  return `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  workspace: "mnist",\n  pipelines: {\n${body}\n  },\n});\n`;
}

function pipelineFiles(name: string, grid: Record<string, unknown>): Record<string, string | { content: string; mode: number }> {
  return {
    [`${name}/src/Dockerfile`]: "FROM python:3.11-slim\nCOPY model/ model/\n",
    [`${name}/src/model/requirements.txt`]: "scikit-learn\n",
    [`${name}/src/model/train`]: { content: "#!/bin/sh\necho training\n", mode: 0o755 },
    [`${name}/data/training/a.csv`]: "label,p0\n1,0.5\n",
    [`${name}/grid.json`]: JSON.stringify(grid),
  };
}

function kaosEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    PATH: `${engines.pulumiBin}${delimiter}${process.env["PATH"] ?? ""}`,
    PULUMI_HOME: engines.pulumiHome,
    KUBECONFIG: cluster.kubeconfig,
    PULUMI_CONFIG_PASSPHRASE: PASSPHRASE,
    KAOS_ENGINES_REGISTRY_USER: "robot",
    KAOS_ENGINES_REGISTRY_PASSWORD: "registry-password-9d1",
    ...extra,
  };
}

async function kaos(args: string[], extra: Record<string, string | undefined> = {}): Promise<RunResult> {
  return runKaos([...args, "--stack", "cluster"], { cwd: project.dir, env: kaosEnv(extra), timeoutMs: 280_000 });
}

/** The `Pulumi (stack cluster): ...` head line and the step lines below it. */
function pulumiSummary(stdout: string): { create: number; update: number; replace: number; delete: number; same: number; steps: string[] } {
  const lines = stdout.split("\n");
  const head = lines.findIndex((line) => line.includes("Pulumi (stack cluster):"));
  expect(head, stdout).toBeGreaterThanOrEqual(0);
  const match = /(\d+) to create, (\d+) to update, (\d+) to replace, (\d+) to delete, (\d+) unchanged/.exec(lines[head] ?? "");
  const steps: string[] = [];
  for (const line of lines.slice(head + 1)) {
    if (!line.startsWith("  ")) break;
    steps.push(line.trim());
  }
  const [, create, update, replace, remove, same] = (match ?? []).map(Number);
  return { create: create ?? -1, update: update ?? -1, replace: replace ?? -1, delete: remove ?? -1, same: same ?? -1, steps };
}

/** Every process below `pid`. */
function descendants(pid: number): number[] {
  let children: number[] = [];
  try {
    children = execFileSync("pgrep", ["-P", String(pid)], { encoding: "utf8" })
      .trim()
      .split("\n")
      .filter(Boolean)
      .map(Number);
  } catch {
    // pgrep exits 1 when there are none
  }
  return children.flatMap((child) => [child, ...descendants(child)]);
}

/**
 * Kills with SIGKILL the Pulumi CLI that the kaos process `kaosPid` started, as
 * a crash would. Returns its plugin processes, which outlive it: the test ends
 * them with `killAll` once it is done.
 */
function killPulumiOf(kaosPid: number): number[] {
  const pulumiPid = Number(
    execFileSync("pgrep", ["-P", String(kaosPid), "-x", "pulumi"], { encoding: "utf8" })
      .trim()
      .split("\n")[0],
  );
  const plugins = descendants(pulumiPid);
  process.kill(pulumiPid, "SIGKILL");
  return plugins;
}

/** Sends `signal` to each of `pids` that is still there. */
function killAll(pids: readonly number[], signal: NodeJS.Signals = "SIGKILL"): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/** Each resource's dependencies (by name) in Pulumi's state file. */
function stateDependencies(): Map<string, string[]> {
  const stacks = join(project.dir, ".kaos/pulumi/.pulumi/stacks");
  const file = readdirSync(stacks, { recursive: true })
    .map(String)
    .find((name) => name.endsWith("cluster.json"));
  const state = JSON.parse(readFileSync(join(stacks, file ?? "cluster.json"), "utf8")) as {
    checkpoint: { latest: { resources: { urn: string; dependencies?: string[] }[] } };
  };
  const name = (urn: string) => urn.split("::").pop() ?? urn;
  return new Map(state.checkpoint.latest.resources.map((resource) => [name(resource.urn), (resource.dependencies ?? []).map(name)]));
}

/** The operations Pulumi's state says were under way when an update stopped. */
function pendingOperations(): unknown[] {
  const stacks = join(project.dir, ".kaos/pulumi/.pulumi/stacks");
  const file = readdirSync(stacks, { recursive: true })
    .map(String)
    .find((name) => name.endsWith("cluster.json"));
  const state = JSON.parse(readFileSync(join(stacks, file ?? "cluster.json"), "utf8")) as {
    checkpoint: { latest: { pending_operations?: unknown[] } };
  };
  return state.checkpoint.latest.pending_operations ?? [];
}

/**
 * The up after one cut short while creating the cnn pipeline: it finishes
 * (the pipeline made, nothing left pending), and cnn is taken out again so
 * that the tests after start from svm alone.
 */
async function rerunFinishesCnn(): Promise<RunResult> {
  const up = await kaos(["up"]);
  expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
  expect(pachd.pipelines.has("default/mnist-cnn-train")).toBe(true);
  expect(pendingOperations()).toEqual([]);
  project.write({ "kaos.config.ts": configFile(["svm"]) });
  const removed = await kaos(["up"]);
  expect(removed.code, `${removed.stdout}\n${removed.stderr}`).toBe(0);
  return up;
}

beforeAll(async () => {
  cluster = (await startCluster({ scheduler: false })) as Cluster;
  pachd = new FakePachd();
  // As pachd does, a pipeline that mounts a secret is refused until the secret is in the namespace.
  pachd.secretExists = async (name) => (await apiGet(cluster, `/api/v1/namespaces/${NAMESPACE}/secrets/${name}`)).status === 200;
  await pachd.start();
  project = makeProject(
    {
      "kaos.config.ts": configFile(["svm"]),
      "stacks/cluster.ts": stackFile(pachd.address),
      ...pipelineFiles("svm", { C: [1, 10], kernel: ["linear", "poly"] }),
    },
    "kaos-engines-",
  );
  process.stdout.write(`engines: ${engines.pulumiVersion} against Kubernetes ${cluster.version}\n`);
});

afterAll(async () => {
  await pachd?.stop();
  await cluster?.stop();
  project?.remove();
});

describe.runIf(engines.providerMissing === undefined)("the cluster path through the real Pulumi CLI and kube-apiserver", () => {
  it("first up: applies the Namespace and the registry Secret to the API server, and the repos, bundles and pipelines to pachd", async () => {
    const up = await kaos(["up"]);
    expect(up.code, up.stderr).toBe(0);
    const summary = pulumiSummary(up.stdout);
    expect(summary.create).toBe(summary.steps.length);
    expect(summary.steps.every((step) => step.startsWith("create"))).toBe(true);
    expect(summary.steps.join("\n")).not.toMatch(/pulumi:pulumi:Stack|providers:.*default/);
    const namespace = await apiGet(cluster, `/api/v1/namespaces/${NAMESPACE}`);
    expect(namespace.status, namespace.body).toBe(200);
    const secret = await apiGet(cluster, `/api/v1/namespaces/${NAMESPACE}/secrets/kaos-registry`);
    expect(secret.status, secret.body).toBe(200);
    const dockerConfig = JSON.parse(Buffer.from(JSON.parse(secret.body).data[".dockerconfigjson"], "base64").toString("utf8"));
    expect(Object.keys(dockerConfig.auths)).toEqual(["registry.example.com"]);
    expect([...pachd.repos.keys()].sort()).toEqual(["default/mnist-svm-data", "default/mnist-svm-params", "default/mnist-svm-source"]);
    expect([...pachd.pipelines.keys()].sort()).toEqual(["default/mnist-svm-build", "default/mnist-svm-train"]);
    // Nothing of the credentials in Pulumi's state.
    const state = readdirSync(join(project.dir, ".kaos/pulumi/.pulumi/stacks"), { recursive: true })
      .filter((file) => String(file).endsWith(".json"))
      .map((file) => readFileSync(join(project.dir, ".kaos/pulumi/.pulumi/stacks", String(file)), "utf8"))
      .join("\n");
    expect(state).not.toContain("registry-password-9d1");
  });

  it("no-op up: zero changes, and not one mutating pachd call", async () => {
    const before = pachd.mutatingCalls().length;
    const up = await kaos(["up"]);
    expect(up.code, up.stderr).toBe(0);
    const summary = pulumiSummary(up.stdout);
    expect(summary).toMatchObject({ create: 0, update: 0, replace: 0, delete: 0, steps: [] });
    expect(summary.same).toBeGreaterThan(0);
    expect(pachd.mutatingCalls().length).toBe(before);
    expect(up.stdout).toContain("No changes: 4 jobs already applied to the cluster.");
    const plan = await kaos(["plan", "--detailed-exitcode"]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stderr).toContain("Previewing update (cluster)");
    expect(plan.stdout).toContain(`kube context kaos-engines (${cluster.server}) answers; pachd 2.11.6`);
    // The same kubeconfig under another path is no change to the Kubernetes provider.
    project.write({ "kubeconfig-copy": readFileSync(cluster.kubeconfig, "utf8") });
    const moved = await kaos(["plan", "--detailed-exitcode"], { KUBECONFIG: project.path("kubeconfig-copy") });
    expect(moved.code, `${moved.stdout}\n${moved.stderr}`).toBe(0);
    expect(pulumiSummary(moved.stdout).steps).toEqual([]);
    expect(pachd.mutatingCalls().length).toBe(before);
  });

  it("hyperparams edit: only the params commit is pushed", async () => {
    project.write({ "svm/grid.json": JSON.stringify({ C: [1, 10, 100], kernel: ["linear", "poly"] }) });
    const before = pachd.requests.length;
    const up = await kaos(["up"]);
    expect(up.code, up.stderr).toBe(0);
    expect(pulumiSummary(up.stdout).steps).toEqual(["update   pulumi-nodejs:dynamic/pachyderm:Bundle  mnist-svm-params-bundle"]);
    const started = pachd.requests.slice(before).filter((request) => request.path.endsWith("/StartCommit"));
    expect(started.map((request) => JSON.parse(request.body).branch.repo.name)).toEqual(["mnist-svm-params"]);
    expect(pachd.repo("default", "mnist-svm-params")?.head?.files.size).toBe(6);
  });

  it("source edit: the source commit is pushed before the pipelines that build from it are updated", async () => {
    project.write({ "svm/src/model/train": { content: "#!/bin/sh\necho training v2\n", mode: 0o755 } });
    const plan = await kaos(["plan"]);
    expect(plan.code, plan.stderr).toBe(0);
    expect(plan.stdout).toContain("source: 0 added, 1 changed, 0 removed");
    expect(plan.stdout).not.toContain("source: first run");
    // The image is tagged by the env and source keys: Pachyderm builds it again.
    expect(plan.stdout).toMatch(/build +run +source changed/);
    const before = pachd.requests.length;
    const up = await kaos(["up"]);
    expect(up.code, up.stderr).toBe(0);
    const calls = pachd.requests
      .slice(before)
      .map(
        (request) =>
          `${request.path.split("/").pop()} ${JSON.parse(request.body.split("\n")[0] || "{}")?.branch?.repo?.name ?? JSON.parse(JSON.parse(request.body.split("\n")[0] || "{}")?.createPipelineRequestJson ?? "{}")?.pipeline?.name ?? ""}`,
      );
    const sourceFinished = calls.findIndex(
      (call, index) => call.startsWith("FinishCommit") && calls.slice(0, index).some((c) => c === "StartCommit mnist-svm-source"),
    );
    const buildUpdated = calls.indexOf("CreatePipelineV2 mnist-svm-build");
    expect(buildUpdated, calls.join("\n")).toBeGreaterThan(sourceFinished);
    expect(sourceFinished, calls.join("\n")).toBeGreaterThanOrEqual(0);
    // The order is the engine's, not luck: each pipeline depends on the bundle commits it reads.
    const dependencies = stateDependencies();
    expect(dependencies.get("mnist-svm-build")).toContain("mnist-svm-source-bundle");
    expect(dependencies.get("mnist-svm-train")).toEqual(
      expect.arrayContaining(["mnist-svm-data-bundle", "mnist-svm-params-bundle", "mnist-svm-build"]),
    );
  });

  it("render writes exactly the specs that were applied", async () => {
    const render = await kaos(["render", "-o", "rendered"]);
    expect(render.code, render.stderr).toBe(0);
    for (const file of readdirSync(project.path("rendered/pachyderm"))) {
      const rendered = JSON.parse(readFileSync(project.path("rendered/pachyderm", file), "utf8")) as { pipeline: { name: string } };
      const applied = pachd.pipelines.get(`default/${rendered.pipeline.name}`);
      expect(applied, file).toBeDefined();
      expect(canonicalJson(JSON.parse(applied!.specJson))).toBe(canonicalJson(rendered));
    }
  });

  it("adding and removing a pipeline creates and then deletes its repos and pipelines in pachd", async () => {
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]), ...pipelineFiles("cnn", { lr: [0.1] }) });
    const added = await kaos(["up"]);
    expect(added.code, added.stderr).toBe(0);
    // svm's environment is cnn's too, but not its image.
    expect(added.stdout).toMatch(/cnn\n +build +run +image not built yet/);
    expect(pachd.pipelines.has("default/mnist-cnn-train")).toBe(true);
    const train = JSON.parse(pachd.pipelines.get("default/mnist-cnn-train")!.specJson);
    expect(train.resourceLimits.gpu).toEqual({ type: "nvidia.com/gpu", number: 1 });
    project.write({ "kaos.config.ts": configFile(["svm"]) });
    const removed = await kaos(["up"]);
    expect(removed.code, removed.stderr).toBe(0);
    expect(pulumiSummary(removed.stdout).delete).toBeGreaterThan(0);
    expect([...pachd.pipelines.keys()].filter((key) => key.includes("cnn"))).toEqual([]);
    expect([...pachd.repos.keys()].filter((key) => key.includes("cnn"))).toEqual([]);
    // Added back, its jobs are to run again: what was deleted is no longer applied.
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]) });
    const again = await kaos(["plan"]);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/run +1\/1 +lr=0\.1/);
    expect(again.stdout).not.toContain("No changes");
    project.write({ "kaos.config.ts": configFile(["svm"]) });
  });

  it("a pipeline with an odd name is applied with an image reference registries take", async () => {
    const odd = "My_-Model_";
    project.write({ "kaos.config.ts": configFile(["svm", odd]), ...pipelineFiles(odd, { lr: [0.1] }) });
    const up = await kaos(["up"]);
    expect(up.code, up.stderr).toBe(0);
    expect(pachd.repos.has(`default/mnist-${odd}-source`)).toBe(true);
    const train = JSON.parse(pachd.pipelines.get(`default/mnist-${odd}-train`)?.specJson ?? "{}") as { transform?: { image?: string } };
    // Lowercase, `_-` as dashes, the trailing `_` dropped: the OCI grammar's path component.
    expect(train.transform?.image).toMatch(/^registry\.example\.com\/ml\/mnist-my--model:[0-9a-f]{12}-[0-9a-f]{12}$/);
    project.write({ "kaos.config.ts": configFile(["svm"]) });
    const removed = await kaos(["up"]);
    expect(removed.code, removed.stderr).toBe(0);
    expect([...pachd.pipelines.keys()].filter((key) => key.includes(odd))).toEqual([]);
  });

  it("a Pulumi CLI killed mid-update leaves a lock that the next up recovers from by itself", async () => {
    project.write({ "svm/grid.json": JSON.stringify({ C: [1, 10, 100, 1000], kernel: ["linear", "poly"] }) });
    const gate = pachd.hold("ModifyFile");
    const live = startKaos(["up", "--stack", "cluster"], { cwd: project.dir, env: kaosEnv() });
    await gate.arrived;
    const plugins = killPulumiOf(live.child.pid as number);
    const killed = await live.exited;
    gate.release();
    try {
      expect(killed.code).not.toBe(0);
      const up = await kaos(["up"]);
      expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
      expect(up.stderr).toContain("was left locked by a Pulumi update that was killed");
      expect(pachd.repo("default", "mnist-svm-params")?.head?.files.size).toBe(8);
    } finally {
      killAll(plugins);
    }
  });

  it("a Pulumi CLI killed while creating leaves pending creates, which the next up takes back and creates again", async () => {
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]), ...pipelineFiles("cnn", { lr: [0.1] }) });
    const gate = pachd.hold("CreateRepo");
    const live = startKaos(["up", "--stack", "cluster"], { cwd: project.dir, env: kaosEnv() });
    await gate.arrived;
    const plugins = killPulumiOf(live.child.pid as number);
    const killed = await live.exited;
    gate.release();
    try {
      expect(killed.code).not.toBe(0);
      expect(pendingOperations().length).toBeGreaterThan(0);
      const up = await rerunFinishesCnn();
      expect(up.stderr).toMatch(/holds \d create\(s\) an interrupted update left pending \(mnist-cnn-/);
    } finally {
      killAll(plugins);
    }
  });

  it("SIGINT to kaos alone (kill -INT, a CI runner's cancel) mid-create: Pulumi stops at once, kaos says so and what to run, and that rerun finishes", async () => {
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]), ...pipelineFiles("cnn", { lr: [0.1] }) });
    const gate = pachd.hold("CreateRepo");
    const live = startKaos(["up", "--stack", "cluster"], { cwd: project.dir, env: kaosEnv() });
    await gate.arrived;
    process.kill(live.child.pid as number, "SIGINT");
    await live.waitFor("^C received; cancelling");
    gate.release();
    const interrupted = await live.exited;
    expect(interrupted.code, interrupted.stderr).toBe(1);
    expect(interrupted.stderr).toContain("error: pulumi up of stack 'cluster' was interrupted: Pulumi stopped it part way");
    expect(interrupted.stderr).toContain("hint: run `kaos up --stack cluster` again to finish");
    expect(pendingOperations()).toEqual([]);
    await rerunFinishesCnn();
  });

  it("Ctrl-C in a terminal (every process of the group) mid-create: kaos says it was interrupted and what to run, and that rerun finishes", async () => {
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]) });
    const gate = pachd.hold("CreateRepo");
    const live = startKaos(["up", "--stack", "cluster"], { cwd: project.dir, env: kaosEnv() });
    await gate.arrived;
    killAll([live.child.pid as number, ...descendants(live.child.pid as number)], "SIGINT");
    const interrupted = await live.exited;
    // pachd finishes the call its client gave up on.
    gate.release();
    expect(interrupted.code, interrupted.stderr).toBe(1);
    expect(interrupted.stderr).toContain("error: pulumi up of stack 'cluster' was interrupted");
    expect(interrupted.stderr).toContain("hint: run `kaos up --stack cluster` again to finish");
    await rerunFinishesCnn();
  });

  it("drift: after pachd lost its repos and pipelines, up names what is missing, and up --refresh creates them again", async () => {
    pachd.repos.clear();
    pachd.pipelines.clear();
    project.write({ "svm/grid.json": JSON.stringify({ C: [1, 10, 100, 1000, 5], kernel: ["linear", "poly"] }) });
    const failed = await kaos(["up"]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain("repo default/mnist-svm-params not found");
    const json = await kaos(["plan", "--json"]);
    expect(json.code).toBe(0);
    const up = await kaos(["up", "--refresh"]);
    expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
    expect([...pachd.repos.keys()].sort()).toEqual(["default/mnist-svm-data", "default/mnist-svm-params", "default/mnist-svm-source"]);
    expect([...pachd.pipelines.keys()].sort()).toEqual(["default/mnist-svm-build", "default/mnist-svm-train"]);
    expect(pachd.repo("default", "mnist-svm-source")?.head?.files.has("/bundle.tar.gz")).toBe(true);
  });

  it("a switched pachd address: deletes go to the address the stack names now", async () => {
    project.write({ "kaos.config.ts": configFile(["svm", "cnn"]) });
    const added = await kaos(["up"]);
    expect(added.code, added.stderr).toBe(0);
    // The same pachd, reached at another address (another port-forward).
    const moved = new FakePachd();
    await moved.start();
    try {
      for (const [key, repo] of pachd.repos) moved.repos.set(key, repo);
      for (const [key, pipeline] of pachd.pipelines) moved.pipelines.set(key, pipeline);
      project.write({ "stacks/cluster.ts": stackFile(moved.address), "kaos.config.ts": configFile(["svm"]) });
      const before = pachd.requests.length;
      const up = await kaos(["up"]);
      expect(up.code, `${up.stdout}\n${up.stderr}`).toBe(0);
      expect(
        moved
          .calls("DeletePipeline")
          .map((call) => JSON.parse(call.body).pipeline.name)
          .sort(),
      ).toEqual(["mnist-cnn-build", "mnist-cnn-train"]);
      expect(moved.calls("DeleteRepo")).toHaveLength(3);
      expect(pachd.requests.length).toBe(before);
    } finally {
      project.write({ "stacks/cluster.ts": stackFile(pachd.address), "kaos.config.ts": configFile(["svm"]) });
      await moved.stop();
    }
  });

  it("a missing kube context stops before anything is created, and says so", async () => {
    const before = pachd.mutatingCalls().length;
    const plan = await kaos(["plan"], { KUBECONFIG: join(project.dir, "no-such-kubeconfig") });
    expect(plan.code).toBe(1);
    expect(plan.stderr).toMatch(/kube/i);
    expect(plan.stderr).toContain("no-such-kubeconfig");
    expect(pachd.mutatingCalls().length).toBe(before);
  });

  it("a wrong passphrase names the variable that holds it", async () => {
    const plan = await kaos(["plan"], { PULUMI_CONFIG_PASSPHRASE: "not the passphrase" });
    expect(plan.code).toBe(1);
    expect(plan.stderr).toContain("PULUMI_CONFIG_PASSPHRASE");
  });
});
