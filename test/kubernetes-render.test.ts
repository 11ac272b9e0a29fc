import { describe, it, expect, afterEach, beforeAll } from "vitest";
import { execFile, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { ValidateFunction } from "ajv";
import { parse as parseYaml } from "yaml";
import { RENDER_MANIFEST } from "../src/core/destination.js";
import { KaosError } from "../src/core/errors.js";
import { packBundle } from "../src/backends/kubernetes/pack.js";
import { compileSpecSchema, renderCluster, validatePipelineSpec } from "../src/backends/kubernetes/index.js";
import { planCluster } from "../src/backends/kubernetes/cluster-plan.js";
import { INGEST_SCRIPT, trainScript } from "../src/backends/kubernetes/specs.js";
import { makeClusterProject, type ClusterProject } from "./fixtures/kubernetes/project.js";

const run = promisify(execFile);
const REPO_ROOT = join(import.meta.dirname, "..");
/** Pachyderm's own schema, as the package ships it. */
const SCHEMA = join(REPO_ROOT, "src/backends/kubernetes/CreatePipelineRequest.v2.11.6.schema.json");

let schemaValidator: ValidateFunction;
beforeAll(() => {
  schemaValidator = compileSpecSchema(JSON.parse(readFileSync(SCHEMA, "utf8")));
});

const projects: ClusterProject[] = [];
const temps: string[] = [];
afterEach(() => {
  for (const project of projects.splice(0)) project.remove();
  for (const dir of temps.splice(0)) rmSync(dir, { recursive: true, force: true });
  delete process.env["KAOS_TEST_REGISTRY_USER"];
  delete process.env["KAOS_TEST_REGISTRY_PASSWORD"];
  delete process.env["KAOS_TEST_PACHYDERM_TOKEN"];
});

function project(...args: Parameters<typeof makeClusterProject>): ClusterProject {
  const made = makeClusterProject(...args);
  projects.push(made);
  return made;
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
}

type Spec = {
  pipeline: { name: string };
  transform: { image: string; cmd: string[]; env?: Record<string, string>; secrets?: unknown[]; imagePullSecrets?: string[] };
  input: { pfs?: { repo: string; glob: string }; cross?: { pfs: { repo: string; glob: string } }[] };
  parallelismSpec: { constant: number };
  resourceRequests?: { cpu?: number; memory?: string; gpu?: { type: string; number: number } };
  resourceLimits?: { cpu?: number; memory?: string; gpu?: { type: string; number: number } };
  schedulingSpec?: { nodeSelector: Record<string, string> };
  tolerations?: Record<string, unknown>[];
  datumTries: number;
  podPatch?: string;
};

describe("Pachyderm specs (ajv strict against src/backends/kubernetes/CreatePipelineRequest.v2.11.6.schema.json)", () => {
  it("renders every stage of GPU and CPU, data-dir and manifest, grid and no-grid pipelines, all valid", async () => {
    const made = project([
      { name: "svm", grid: { degree: [3, 5], kernel: ["linear", "poly"] } },
      { name: "cnn", gpu: 2, manifest: true, memory: "4Gi", cpu: 3.5, parallelism: 4 },
      { name: "plain" },
      { name: "gan", gpu: 1, grid: { lr: [0.1, 0.01] } },
    ]);
    const out = join(made.dir, "out");
    const files = (await renderCluster(made.config, made.stack, made.inputs, out)).files;
    const specs = files.filter((file) => file.endsWith(".json"));
    expect(specs.map((file) => file.slice(out.length + 1))).toEqual([
      "pachyderm/cnn-build.json",
      "pachyderm/cnn-ingest.json",
      "pachyderm/cnn-train.json",
      "pachyderm/gan-build.json",
      "pachyderm/gan-train.json",
      "pachyderm/plain-build.json",
      "pachyderm/plain-train.json",
      "pachyderm/svm-build.json",
      "pachyderm/svm-train.json",
    ]);
    for (const file of specs) {
      const result = validatePipelineSpec(readJson(file), schemaValidator);
      expect(result.errors, file).toEqual([]);
      expect(result.valid).toBe(true);
    }
    expect(files).toEqual([...files].sort());
  });

  it("asks for GPUs, GPU nodes and their taints only in GPU train specs", async () => {
    const made = project([{ name: "cnn", gpu: 2, memory: "4Gi", cpu: 3.5, parallelism: 4 }, { name: "svm" }]);
    const out = join(made.dir, "out");
    await renderCluster(made.config, made.stack, made.inputs, out);
    const gpu = readJson(join(out, "pachyderm/cnn-train.json")) as unknown as Spec;
    const resources = { cpu: 3.5, memory: "4Gi", gpu: { type: "nvidia.com/gpu", number: 2 } };
    expect(gpu.resourceRequests).toEqual(resources);
    expect(gpu.resourceLimits).toEqual(resources);
    expect(gpu.parallelismSpec).toEqual({ constant: 4 });
    expect(gpu.schedulingSpec).toEqual({ nodeSelector: { "cloud.google.com/gke-accelerator": "nvidia-tesla-t4" } });
    expect(gpu.tolerations).toEqual([
      { key: "nvidia.com/gpu", operator: "EXISTS", effect: "NO_SCHEDULE" },
      { key: "dedicated", operator: "EQUAL", value: "ml", effect: "NO_EXECUTE", tolerationSeconds: 60 },
    ]);
    const cpu = readJson(join(out, "pachyderm/svm-train.json")) as unknown as Spec;
    expect(cpu.resourceRequests).toEqual({ cpu: 1 });
    expect(cpu.resourceLimits).toEqual({ cpu: 1 });
    expect(cpu.schedulingSpec).toBeUndefined();
    expect(cpu.tolerations).toBeUndefined();
    for (const stage of ["build"]) {
      const spec = readJson(join(out, `pachyderm/cnn-${stage}.json`)) as unknown as Spec;
      expect(spec.resourceLimits).toBeUndefined();
      expect(spec.tolerations).toBeUndefined();
    }
  });

  it("uses the stack's GPU resource name", async () => {
    const made = project([{ name: "cnn", gpu: 1 }], { gpu: { resourceName: "amd.com/gpu" } });
    const plan = await planCluster(made.config, made.stack, made.inputs);
    const train = plan.pipelines[0]?.specs.find((spec) => spec.stage === "train")?.spec;
    expect(train?.resourceLimits?.gpu).toEqual({ type: "amd.com/gpu", number: 1 });
    expect(train?.schedulingSpec).toBeUndefined();
    expect(train?.tolerations).toBeUndefined();
  });

  it("crosses data, the build output and one params file per datum in the train stage", async () => {
    const made = project([
      { name: "svm", grid: { C: [1, 2, 3] } },
      { name: "web", manifest: true },
    ]);
    const out = join(made.dir, "out");
    await renderCluster(made.config, made.stack, made.inputs, out);
    const train = readJson(join(out, "pachyderm/svm-train.json")) as unknown as Spec;
    expect(train.input.cross?.map((input) => input.pfs)).toEqual([
      { project: "default", repo: "mnist-svm-data", glob: "/" },
      { project: "default", repo: "mnist-svm-build", glob: "/" },
      { project: "default", repo: "mnist-svm-params", glob: "/*" },
    ]);
    expect(train.transform.env).toEqual({ KAOS_PIPELINE: "svm", KAOS_DATA_DIR: "/pfs/mnist-svm-data" });
    expect(train.transform.cmd.slice(0, 2)).toEqual(["sh", "-c"]);
    expect(train.transform.imagePullSecrets).toEqual(["kaos-registry"]);
    expect(train.datumTries).toBe(1);
    const keys = made.inputs[0]?.keys;
    expect(train.transform.image).toBe(`registry.example.com/ml/mnist-svm:${keys?.env.slice(0, 12)}-${keys?.source.slice(0, 12)}`);

    const webTrain = readJson(join(out, "pachyderm/web-train.json")) as unknown as Spec;
    expect(webTrain.input.cross?.[0]?.pfs.repo).toBe("mnist-web-ingest");
    expect(webTrain.transform.env?.["KAOS_DATA_DIR"]).toBe("/pfs/mnist-web-ingest");
    const ingest = readJson(join(out, "pachyderm/web-ingest.json")) as unknown as Spec;
    expect(ingest.input.pfs).toEqual({ project: "default", repo: "mnist-web-manifest", glob: "/" });
    expect(existsSync(join(out, "pachyderm/svm-ingest.json"))).toBe(false);
  });

  it("builds the source bundle in the cluster with BuildKit, or kaniko when the builder image says so", async () => {
    const made = project([{ name: "svm" }]);
    const out = join(made.dir, "out");
    await renderCluster(made.config, made.stack, made.inputs, out);
    const build = readJson(join(out, "pachyderm/svm-build.json")) as unknown as Spec;
    const image = `registry.example.com/ml/mnist-svm:${made.inputs[0]?.keys.env.slice(0, 12)}-${made.inputs[0]?.keys.source.slice(0, 12)}`;
    expect(build.transform.image).toBe("moby/buildkit:v0.16.0-rootless");
    expect(build.input.pfs).toEqual({ project: "default", repo: "mnist-svm-source", glob: "/" });
    expect(build.transform.cmd[2]).toContain(`buildctl-daemonless.sh build --frontend dockerfile.v0`);
    expect(build.transform.cmd[2]).toContain(`name='${image}',push=true`);
    expect(build.transform.secrets).toEqual([{ name: "kaos-registry", mountPath: "/kaos/registry" }]);
    expect(JSON.parse(build.podPatch ?? "[]")[0].path).toBe("/containers/0/securityContext");

    const kaniko = project([{ name: "svm" }], { builderImage: "gcr.io/kaniko-project/executor:v1.23.2-debug" });
    const kanikoOut = join(kaniko.dir, "out");
    await renderCluster(kaniko.config, kaniko.stack, kaniko.inputs, kanikoOut);
    const kanikoBuild = readJson(join(kanikoOut, "pachyderm/svm-build.json")) as unknown as Spec;
    expect(kanikoBuild.transform.cmd[0]).toBe("/busybox/sh");
    expect(kanikoBuild.transform.cmd[2]).toContain("/kaniko/executor --context tar:///pfs/mnist-svm-source/bundle.tar.gz");
    expect(kanikoBuild.podPatch).toBeUndefined();
    expect(validatePipelineSpec(kanikoBuild, schemaValidator).valid).toBe(true);
  });

  it("rejects a broken spec with errors that name the key and what was wrong", () => {
    const broken = {
      pipeline: { name: "x", project: { name: "default" } },
      transform: { image: "a", cmd: ["sh"], shell: "bash" },
      resourceLimits: { cpu: "2", gpu: { type: "nvidia.com/gpu", number: 1.5 } },
      tolerations: [{ key: "k", operator: "Exists" }],
      parallelismSpec: { constant: 2 },
      datumTimeout: "10 minutes",
    };
    const result = validatePipelineSpec(broken, schemaValidator);
    expect(result.valid).toBe(false);
    expect(result.errors).toEqual(
      expect.arrayContaining([
        "/transform: unknown key 'shell'",
        "/resourceLimits/cpu: must be number",
        "/resourceLimits/gpu/number: must be integer",
        '/tolerations/0/operator: "Exists" is not one of "EMPTY", "EXISTS", "EQUAL"',
        '/datumTimeout: must match pattern "^([0-9]+\\.?[0-9]*|\\.[0-9]+)s$"',
      ]),
    );
    expect(validatePipelineSpec({ pipelinez: {} }, schemaValidator).errors).toEqual(["(top level): unknown key 'pipelinez'"]);
  });

  it("refuses to render when a spec would be invalid, and writes nothing", async () => {
    // A stack file is code: a computed node label can be anything at run time.
    const invalid = project([{ name: "svm" }, { name: "cnn", gpu: 1 }], { gpu: { nodeSelector: { zone: 5 as unknown as string } } });
    const error = await renderCluster(invalid.config, invalid.stack, invalid.inputs, join(invalid.dir, "out")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("STACK_INVALID");
    expect((error as KaosError).message).toContain("pachyderm/cnn-train.json:\n  /schedulingSpec/nodeSelector/zone: must be string");
    expect((error as KaosError).message).not.toContain("svm-train.json");
    expect(existsSync(join(invalid.dir, "out"))).toBe(false);
  });

  it("writes the namespace and a placeholder registry secret, never credentials or tokens", async () => {
    process.env["KAOS_TEST_REGISTRY_USER"] = "robot-user";
    process.env["KAOS_TEST_REGISTRY_PASSWORD"] = "hunter2-registry-password";
    process.env["KAOS_TEST_PACHYDERM_TOKEN"] = "pachyderm-token-value";
    const made = project([{ name: "svm" }]);
    const out = join(made.dir, "out");
    const files = (await renderCluster(made.config, made.stack, made.inputs, out)).files;
    const namespace = parseYaml(readFileSync(join(out, "kubernetes/namespace.yaml"), "utf8")) as Record<string, unknown>;
    expect(namespace).toEqual({
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name: "pachyderm", labels: { "app.kubernetes.io/managed-by": "kaos" } },
    });
    const secret = parseYaml(readFileSync(join(out, "kubernetes/registry-secret.yaml"), "utf8")) as Record<string, unknown>;
    expect(secret).toMatchObject({
      kind: "Secret",
      type: "kubernetes.io/dockerconfigjson",
      metadata: { name: "kaos-registry", namespace: "pachyderm" },
    });
    expect(secret["stringData"]).toEqual({ ".dockerconfigjson": '{"auths":{}}' });
    for (const file of files) {
      const text = readFileSync(file, "utf8");
      expect(text).not.toContain("hunter2-registry-password");
      expect(text).not.toContain("robot-user");
      expect(text).not.toContain("pachyderm-token-value");
    }
  });

  it("renders the same bytes twice", async () => {
    const made = project([
      { name: "svm", grid: { C: [1, 2] } },
      { name: "cnn", gpu: 1, manifest: true },
    ]);
    const first = (await renderCluster(made.config, made.stack, made.inputs, join(made.dir, "a"))).files;
    const second = (await renderCluster(made.config, made.stack, made.inputs, join(made.dir, "b"))).files;
    const digest = (files: string[], root: string) =>
      files.map((file) => [file.slice(root.length), createHash("sha256").update(readFileSync(file)).digest("hex")]);
    expect(digest(second, join(made.dir, "b"))).toEqual(digest(first, join(made.dir, "a")));
    // The list of what it wrote too, and rendering again into the same folder changes nothing.
    expect(readFileSync(join(made.dir, "b", RENDER_MANIFEST))).toEqual(readFileSync(join(made.dir, "a", RENDER_MANIFEST)));
    const again = await renderCluster(made.config, made.stack, made.inputs, join(made.dir, "a"));
    expect({ removed: again.removed, kept: again.kept }).toEqual({ removed: [], kept: [] });
    expect(readFileSync(join(made.dir, "b", RENDER_MANIFEST))).toEqual(readFileSync(join(made.dir, "a", RENDER_MANIFEST)));
  });

  it("removes only files inside its folder that its list names with their content, whatever the list says", async () => {
    const made = project([{ name: "svm" }]);
    const out = join(made.dir, "out");
    const outside = join(made.dir, "outside.txt");
    writeFileSync(outside, "precious\n");
    mkdirSync(join(out, "pachyderm"), { recursive: true });
    writeFileSync(join(out, "pachyderm/old-train.json"), "{}\n");
    const hash = createHash("sha256").update("precious\n").digest("hex");
    const stale = createHash("sha256").update("{}\n").digest("hex");
    writeFileSync(
      join(out, RENDER_MANIFEST),
      `${hash}  ../outside.txt\n${hash}  ${outside}\n${hash}  pachyderm/../../outside.txt\n${stale}  pachyderm/old-train.json\nnot a line\n`,
    );
    const rendered = await renderCluster(made.config, made.stack, made.inputs, out);
    expect(rendered.removed).toEqual(["pachyderm/old-train.json"]);
    expect(readFileSync(outside, "utf8")).toBe("precious\n");
    expect(readFileSync(join(out, RENDER_MANIFEST), "utf8")).not.toContain("outside");
  });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "kaos-stage-"));
  temps.push(dir);
  return dir;
}

const hasPython = spawnSync("python3", ["--version"]).status === 0;

describe("stage scripts (run here with sh, tar and python3, /pfs replaced by a temporary directory)", () => {
  it("train: runs model/train from the built source snapshot with the train contract's arguments and environment", async () => {
    const made = project([{ name: "svm", grid: { C: [1, 2] } }]);
    const plan = await planCluster(made.config, made.stack, made.inputs);
    const pipeline = plan.pipelines[0];
    if (!pipeline) throw new Error("no pipeline");
    const train = pipeline.specs.find((spec) => spec.stage === "train")?.spec;
    const pfs = join(tempDir(), "pfs");
    // The source bundle as the build stage leaves it: the packed archive.
    writeFileSync(
      join(made.config.pipelines[0]?.sourceDir as string, "model", "train"),
      '#!/bin/sh\nprintf \'%s\\n\' "$(pwd)" "$1" "$KAOS_OUTPUT_DIR" "$KAOS_PARAMS_FILE" "$KAOS_JOB_ID" "$KAOS_PIPELINE" "$KAOS_DATA_DIR" "$(cat "$KAOS_PARAMS_FILE")" > "$1/seen.txt"\n',
      { mode: 0o755 },
    );
    mkdirSync(join(pfs, pipeline.names.build), { recursive: true });
    await packBundle(made.config.pipelines[0]?.sourceDir as string, undefined, join(pfs, pipeline.names.build, "source.tar.gz"));
    const job = made.inputs[0]?.jobs[1];
    mkdirSync(join(pfs, pipeline.names.params), { recursive: true });
    writeFileSync(join(pfs, pipeline.names.params, `${job?.key}.json`), JSON.stringify(job?.params));
    mkdirSync(join(pfs, "out"));
    const script = (train?.transform.cmd[2] ?? "").split("/pfs/").join(`${pfs}/`);
    const env = {
      PATH: process.env["PATH"] ?? "",
      ...Object.fromEntries(Object.entries(train?.transform.env ?? {}).map(([k, v]) => [k, v.split("/pfs/").join(`${pfs}/`)])),
    };
    await run("sh", ["-c", script], { env });
    const out = join(pfs, "out", job?.key as string);
    const seen = readFileSync(join(out, "seen.txt"), "utf8").trim().split("\n");
    expect(seen[0]).toMatch(/\/model$/);
    expect(seen.slice(1)).toEqual([
      out,
      out,
      join(pfs, pipeline.names.params, `${job?.key}.json`),
      job?.key,
      "svm",
      join(pfs, "mnist-svm-data"),
      JSON.stringify(job?.params),
    ]);
    expect(trainScript(pipeline.names)).toBe(train?.transform.cmd[2]);
  });

  async function serve(files: Record<string, Buffer>): Promise<{ url: string; server: Server }> {
    const server = createServer((request, response) => {
      const body = files[request.url ?? ""];
      if (!body) {
        response.writeHead(404).end();
        return;
      }
      response.writeHead(200, { "content-length": body.length }).end(body);
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
  }

  async function ingest(manifest: string): Promise<{ code: number; out: string; stderr: string }> {
    const dir = tempDir();
    writeFileSync(join(dir, "manifest.jsonl"), manifest);
    await packBundle(dir, [{ path: "manifest.jsonl", mode: "file" }], join(dir, "bundle.tar.gz"));
    const out = join(dir, "out");
    mkdirSync(out);
    // Asynchronous: the HTTP server answering the downloads lives in this process.
    const child = spawn("python3", ["-c", INGEST_SCRIPT], {
      env: { ...process.env, KAOS_MANIFEST_ARCHIVE: join(dir, "bundle.tar.gz"), KAOS_INGEST_OUT: out, NO_PROXY: "*", no_proxy: "*" },
    });
    let stderr = "";
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number>((resolve) => child.on("close", (status) => resolve(status ?? -1)));
    return { code, out, stderr };
  }

  it.skipIf(!hasPython)("ingest: downloads every manifest entry into place, checking size and sha256", async () => {
    const a = Buffer.from("label,p0\n1,0.5\n");
    const b = Buffer.from("label,p0\n0,0.25\n");
    const { url, server } = await serve({ "/a.csv": a, "/b.csv": b });
    try {
      const sha = (data: Buffer) => createHash("sha256").update(data).digest("hex");
      const manifest = [
        JSON.stringify({ url: `${url}/a.csv`, path: "training/a.csv", sha256: sha(a), size: a.length }),
        JSON.stringify({ url: `${url}/b.csv`, path: "test/b.csv" }),
      ].join("\n");
      const result = await ingest(`${manifest}\n`);
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
      expect(readFileSync(join(result.out, "training/a.csv")).equals(a)).toBe(true);
      expect(readFileSync(join(result.out, "test/b.csv")).equals(b)).toBe(true);
      expect(readdirSync(join(result.out, "training"))).toEqual(["a.csv"]);

      const wrong = await ingest(`${JSON.stringify({ url: `${url}/a.csv`, path: "a.csv", sha256: "0".repeat(64) })}\n`);
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toContain("manifest.jsonl:1:");
      expect(wrong.stderr).toContain("sha256");
      expect(existsSync(join(wrong.out, "a.csv"))).toBe(false);
      expect(readdirSync(wrong.out)).toEqual([]);
    } finally {
      server.close();
    }
  });

  it.skipIf(!hasPython)("ingest: refuses a path that escapes the data directory, naming the line", async () => {
    const result = await ingest(
      `${JSON.stringify({ url: "http://127.0.0.1:9/x", path: "ok.csv" })}\n${JSON.stringify({ url: "http://127.0.0.1:9/x", path: "../etc/passwd" })}\n`,
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('manifest.jsonl:2: path "../etc/passwd" escapes the data directory');
  });
});
