import { describe, it, expect, beforeEach, afterEach } from "vitest";
import { execFile } from "node:child_process";
import { request as httpRequest } from "node:http";
import { createServer as createHttp2Server } from "node:http2";
import type { AddressInfo } from "node:net";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import * as pulumi from "@pulumi/pulumi";
import { KaosError } from "../src/core/errors.js";
import { packBundle } from "../src/backends/kubernetes/pack.js";
import { PachdClient, PachdError, pachdFetch } from "../src/backends/kubernetes/pachd.js";
import { applyPipeline, pushBundle, bundleDescription } from "../src/backends/kubernetes/provider-impl.js";
import { pachydermProviders, type BundleInputs, type PipelineInputs } from "../src/backends/kubernetes/provider.js";
import { clusterJobLogs, listClusterJobs, shortJobId } from "../src/backends/kubernetes/jobs.js";
import { canonicalJson } from "../src/core/hyperparams.js";
import { FakePachd } from "./fixtures/kubernetes/fake-pachd.js";
import { makeClusterProject, type ClusterProject } from "./fixtures/kubernetes/project.js";
import { runKaos } from "./helpers/rig.js";

const run = promisify(execFile);
const TOKEN = "tok-3f9a0c7e5b1d4e2a";
const TOKEN_ENV = "KAOS_TEST_PACHYDERM_TOKEN";
const REPO_ROOT = join(import.meta.dirname, "..");

let pachd: FakePachd;
let project: ClusterProject;
let client: PachdClient;

beforeEach(async () => {
  pachd = new FakePachd({ token: TOKEN });
  await pachd.start();
  client = new PachdClient({ address: pachd.address, token: TOKEN, tokenEnv: TOKEN_ENV });
  project = makeClusterProject([{ name: "svm", grid: { kernel: ["linear", "poly"], C: [1, 10] } }], {
    pachyderm: { address: pachd.address, tokenEnv: TOKEN_ENV, project: "default" },
  });
  process.env[TOKEN_ENV] = TOKEN;
});

afterEach(async () => {
  delete process.env[TOKEN_ENV];
  await pachd.stop();
  project.remove();
});

function bundleInputs(overrides: Partial<BundleInputs> & Pick<BundleInputs, "source">): BundleInputs {
  return { address: pachd.address, project: "default", tokenEnv: TOKEN_ENV, repo: "mnist-svm-source", key: "k1", ...overrides };
}

describe("pachd client (against a local HTTP server following Pachyderm's API shapes)", () => {
  it("sends no hop-by-hop header, which pachd's gateway would forward as illegal gRPC metadata", async () => {
    await client.createRepo("default", "mnist-svm-source", "kaos source bundle");
    const commit = await client.startCommit("default", "mnist-svm-source", "master", "kaos bundle k");
    await client.replaceFiles(commit, [{ path: "/a.txt", data: Buffer.from("streamed body") }]);
    await client.finishCommit(commit);
    expect(await client.listJobs("default")).toEqual([]);
    for (const request of pachd.requests) {
      for (const name of ["connection", "keep-alive", "proxy-connection", "upgrade"])
        expect(request.headers[name], `${request.path} ${name}`).toBeUndefined();
    }
    // Node's own fetch always sends `Connection`, and the gateway refuses it as pachd does.
    const withFetch = new PachdClient({ address: pachd.address, token: TOKEN, tokenEnv: TOKEN_ENV, fetch: globalThis.fetch });
    await expect(withFetch.createRepo("default", "other", "")).rejects.toThrow(/RST_STREAM with error code: PROTOCOL_ERROR/);
  });

  it("creates a repo through POST /api/pfs_v2.API/CreateRepo with the token header, idempotently", async () => {
    await client.createRepo("default", "mnist-svm-source", "kaos source bundle");
    await client.createRepo("default", "mnist-svm-source", "kaos source bundle");
    const calls = pachd.calls("CreateRepo");
    expect(calls).toHaveLength(2);
    expect(calls[0]?.path).toBe("/api/pfs_v2.API/CreateRepo");
    expect(calls[0]?.headers["authn-token"]).toBe(TOKEN);
    expect(calls[0]?.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(calls[0]?.body ?? "")).toEqual({
      repo: { name: "mnist-svm-source", type: "user", project: { name: "default" } },
      description: "kaos source bundle",
      update: true,
    });
    expect(pachd.repo("default", "mnist-svm-source")).toBeDefined();
  });

  it("pushes a packed source bundle as one commit through StartCommit, ModifyFile and FinishCommit", async () => {
    await client.createRepo("default", "mnist-svm-source", "");
    const dir = project.inputs[0]?.pipeline.sourceDir as string;
    const inputs = bundleInputs({ key: "a".repeat(64), source: { kind: "archive", dir, files: null, path: "/bundle.tar.gz" } });
    const commit = await pushBundle(client, inputs);

    const repo = pachd.repo("default", "mnist-svm-source");
    expect(repo?.head?.id).toBe(commit);
    expect(repo?.head?.description).toBe(bundleDescription("a".repeat(64)));
    const expected = join(mkdtempSync(join(tmpdir(), "kaos-expected-")), "bundle.tar.gz");
    const packed = await packBundle(dir, undefined, expected);
    const pushed = repo?.head?.files.get("/bundle.tar.gz") as Buffer;
    expect(createHash("sha256").update(pushed).digest("hex")).toBe(packed.sha256);
    expect([...(repo?.head?.files.keys() ?? [])]).toEqual(["/bundle.tar.gz"]);

    const modify = pachd.calls("ModifyFile")[0];
    const lines = (modify?.body ?? "")
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(lines[0]).toEqual({
      setCommit: {
        repo: { name: "mnist-svm-source", type: "user", project: { name: "default" } },
        id: commit,
        // The commit as StartCommit answered it: pachd v2.11.6 leaves its branch out.
        branch: null,
      },
    });
    expect(lines[1]).toEqual({ deleteFile: { path: "/" } });
    expect(Object.keys(lines[2] ?? {})).toEqual(["addFile"]);
    rmSync(join(expected, ".."), { recursive: true, force: true });
  });

  it("does not push again when the branch head already holds the bundle's key", async () => {
    await client.createRepo("default", "mnist-svm-source", "");
    const dir = project.inputs[0]?.pipeline.sourceDir as string;
    const inputs = bundleInputs({ key: "b".repeat(64), source: { kind: "archive", dir, files: null, path: "/bundle.tar.gz" } });
    const first = await pushBundle(client, inputs);
    const second = await pushBundle(client, inputs);
    expect(second).toBe(first);
    expect(pachd.calls("StartCommit")).toHaveLength(1);
    const third = await pushBundle(client, { ...inputs, key: "c".repeat(64) });
    expect(third).not.toBe(first);
    expect(pachd.calls("StartCommit")).toHaveLength(2);
  });

  it("uploads a data bundle file by file, splitting large files into appended AddFile chunks", async () => {
    await client.createRepo("default", "mnist-svm-data", "");
    const big = Buffer.alloc(2500);
    for (let index = 0; index < big.length; index += 1) big[index] = index % 251;
    const dataDir = (project.inputs[0]!.pipeline.data as { dir: string }).dir;
    writeFileSync(join(dataDir, "training", "big.bin"), big);
    writeFileSync(join(dataDir, "empty.txt"), "");
    const small = new PachdClient({ address: pachd.address, token: TOKEN, chunkBytes: 1000 });
    await pushBundle(small, bundleInputs({ repo: "mnist-svm-data", key: "d".repeat(64), source: { kind: "files", dir: dataDir } }));
    const head = pachd.repo("default", "mnist-svm-data")?.head;
    expect([...(head?.files.keys() ?? [])].sort()).toEqual(["/empty.txt", "/training/a.csv", "/training/big.bin", "/validation/b.csv"]);
    expect(head?.files.get("/training/big.bin")?.equals(big)).toBe(true);
    expect(head?.files.get("/empty.txt")?.length).toBe(0);
    const body = pachd.calls("ModifyFile")[0]?.body ?? "";
    const bigChunks = body.split("\n").filter((line) => line.includes('"/training/big.bin"'));
    expect(bigChunks).toHaveLength(3);
  });

  it("pushes the params files, one per job key", async () => {
    await client.createRepo("default", "mnist-svm-params", "");
    const jobs = project.inputs[0]?.jobs ?? [];
    const files = jobs.map((job) => ({ path: `/${job.key}.json`, content: `${canonicalJson(job.params)}\n` }));
    await pushBundle(client, bundleInputs({ repo: "mnist-svm-params", key: "e".repeat(64), source: { kind: "params", files } }));
    const head = pachd.repo("default", "mnist-svm-params")?.head;
    expect(head?.files.size).toBe(4);
    const first = jobs[0];
    expect(JSON.parse(head?.files.get(`/${first?.key}.json`)?.toString() ?? "")).toEqual(first?.params);
  });

  it("drops the open commit when the upload fails, leaving the branch as it was", async () => {
    await client.createRepo("default", "mnist-svm-source", "");
    const dir = project.inputs[0]?.pipeline.sourceDir as string;
    const inputs = bundleInputs({ key: "f".repeat(64), source: { kind: "archive", dir, files: null, path: "/bundle.tar.gz" } });
    pachd.failNext = { method: "ModifyFile", code: 13, message: "storage layer unavailable" };
    const error = await pushBundle(client, inputs).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PachdError);
    expect((error as PachdError).code).toBe("PACHD_FAILED");
    expect((error as PachdError).message).toContain("pfs_v2.API/ModifyFile");
    expect((error as PachdError).message).toContain("storage layer unavailable");
    expect(pachd.calls("DropCommitSet")).toHaveLength(1);
    expect(pachd.repo("default", "mnist-svm-source")?.head).toBeUndefined();
    expect(pachd.repo("default", "mnist-svm-source")?.commits).toHaveLength(0);
  });

  it("creates a pipeline with CreatePipelineV2, skips an identical spec, and updates a changed one without reprocessing", async () => {
    const spec = { pipeline: { name: "mnist-svm-train", project: { name: "default" } }, transform: { image: "a:1", cmd: ["sh"] } };
    const inputs: PipelineInputs = {
      address: pachd.address,
      project: "default",
      tokenEnv: TOKEN_ENV,
      name: "mnist-svm-train",
      spec: canonicalJson(spec),
    };
    await applyPipeline(client, inputs, "create");
    const created = pachd.calls("CreatePipelineV2");
    expect(created).toHaveLength(1);
    expect(JSON.parse(created[0]?.body ?? "")).toEqual({ createPipelineRequestJson: inputs.spec, update: false, reprocess: false });

    // The state was lost, the pipeline is there with the same spec: nothing to send.
    await applyPipeline(client, inputs, "create");
    expect(pachd.calls("CreatePipelineV2")).toHaveLength(1);
    expect(pachd.calls("InspectPipeline")).toHaveLength(2);

    const changed = { ...inputs, spec: canonicalJson({ ...spec, transform: { image: "a:2", cmd: ["sh"] } }) };
    await applyPipeline(client, changed, "update");
    const updated = pachd.calls("CreatePipelineV2");
    expect(updated).toHaveLength(2);
    expect(JSON.parse(updated[1]?.body ?? "")).toEqual({ createPipelineRequestJson: changed.spec, update: true, reprocess: false });
    expect(pachd.pipelines.get("default/mnist-svm-train")?.version).toBe(2);

    await client.deletePipeline("default", "mnist-svm-train");
    expect(pachd.pipelines.size).toBe(0);
    await client.deletePipeline("default", "mnist-svm-train"); // already gone: fine
  });

  it("names the missing secret and how to make it when pachd refuses a pipeline for it", async () => {
    await client.createRepo("default", "mnist-svm-source", "");
    pachd.secretExists = () => false;
    const spec = {
      pipeline: { name: "mnist-svm-build", project: { name: "default" } },
      input: { pfs: { project: "default", repo: "mnist-svm-source", glob: "/" } },
      transform: { image: "b:1", cmd: ["sh"], secrets: [{ name: "kaos-registry", mountPath: "/kaos/registry" }] },
    };
    const inputs: PipelineInputs = {
      address: pachd.address,
      project: "default",
      tokenEnv: TOKEN_ENV,
      name: "mnist-svm-build",
      spec: canonicalJson(spec),
    };
    const error = await applyPipeline(client, inputs, "create").catch((e: unknown) => e);
    expect((error as KaosError).code).toBe("PACHD_FAILED");
    expect((error as KaosError).message).toBe(
      "pachd refused pipeline mnist-svm-build: there is no Kubernetes secret 'kaos-registry' in the namespace pachd runs in",
    );
    expect((error as KaosError).hint).toContain("create secret docker-registry kaos-registry");
    expect(pachd.pipelines.size).toBe(0);
  });

  it("maps pachd's status to PACHD_FAILED with the method and message, never the token", async () => {
    const wrong = new PachdClient({ address: pachd.address, token: "not-the-token-123", tokenEnv: TOKEN_ENV });
    const error = await wrong.createRepo("default", "x", "").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("PACHD_FAILED");
    expect((error as KaosError).message).toBe(
      "pachd pfs_v2.API/CreateRepo failed: no authentication token (try logging in) (UNAUTHENTICATED)",
    );
    expect((error as KaosError).hint).toContain(TOKEN_ENV);
    expect(pachd.requests.at(-1)?.headers["authn-token"]).toBe("not-the-token-123");

    // A message that echoes the token back is masked.
    pachd.failNext = { method: "InspectPipeline", code: 3, message: `bad request from ${TOKEN}` };
    const echoed = await client.inspectPipeline("default", "x").catch((e: unknown) => e);
    expect((echoed as KaosError).message).toContain("bad request from ***");
    expect(`${(echoed as KaosError).message} ${(echoed as KaosError).hint ?? ""}`).not.toContain(TOKEN);
  });

  it("reports an unreachable pachd with the address and a hint", async () => {
    const address = pachd.address;
    await pachd.stop();
    const error = await client.listJobs("default").catch((e: unknown) => e);
    expect((error as KaosError).code).toBe("PACHD_UNREACHABLE");
    expect((error as KaosError).message).toContain(`cannot reach pachd at ${address}`);
    expect((error as KaosError).hint).toContain("pachyderm.address");
    await pachd.start(); // afterEach stops it again
  });

  it("takes back a push that was cut off with its commit open, which pachd would start no commit on", async () => {
    await client.createRepo("default", "mnist-svm-source", "");
    const dir = project.inputs[0]?.pipeline.sourceDir as string;
    const inputs = bundleInputs({ key: "c".repeat(64), source: { kind: "archive", dir, files: null, path: "/bundle.tar.gz" } });
    // A push of this very bundle killed between StartCommit and FinishCommit: the branch head is its open commit.
    const cut = await client.startCommit("default", "mnist-svm-source", "master", bundleDescription(inputs.key));
    const open = await client.headCommit("default", "mnist-svm-source", "master");
    expect(open?.commit?.id).toBe(cut.id);
    expect(open?.finishing).toBeNull();
    await expect(client.startCommit("default", "mnist-svm-source", "master", "x")).rejects.toThrow(/has not been finished/);

    const pushed = await pushBundle(client, inputs);
    expect(pushed).not.toBe(cut.id);
    expect(pachd.calls("DropCommitSet").map((call) => JSON.parse(call.body))).toEqual([{ commitSet: { id: cut.id } }]);
    const head = await client.headCommit("default", "mnist-svm-source", "master");
    expect(head?.commit?.id).toBe(pushed);
    expect(head?.description).toBe(bundleDescription(inputs.key));
    expect(head?.finishing).toEqual(expect.any(String));
    expect(pachd.repo("default", "mnist-svm-source")?.commits.map((commit) => commit.id)).toEqual([pushed]);
  });

  it("finishes a cut-off commit as failed when pachd refuses to drop it, and pushes on top", async () => {
    for (const repo of ["mnist-svm-data", "mnist-svm-params"]) await client.createRepo("default", repo, "");
    const input = { cross: ["mnist-svm-data", "mnist-svm-params"].map((repo) => ({ pfs: { project: "default", repo, glob: "/" } })) };
    await client.createPipelineV2(
      canonicalJson({
        pipeline: { name: "mnist-svm-train", project: { name: "default" } },
        input,
        transform: { image: "a:1", cmd: ["sh"] },
      }),
      { update: false },
    );
    const cut = await client.startCommit("default", "mnist-svm-data", "master", bundleDescription("d1"));
    // The params bundle pushed meanwhile: its commit set builds on the open data commit.
    await pushBundle(
      client,
      bundleInputs({ repo: "mnist-svm-params", key: "p1", source: { kind: "params", files: [{ path: "/k.json", content: "{}" }] } }),
    );

    const dir = (project.inputs[0]!.pipeline.data as { dir: string }).dir;
    const pushed = await pushBundle(client, bundleInputs({ repo: "mnist-svm-data", key: "d2", source: { kind: "files", dir } }));
    const commits = pachd.repo("default", "mnist-svm-data")?.commits ?? [];
    expect(commits.map((commit) => [commit.id, commit.description, commit.error, commit.finishing !== undefined])).toEqual([
      [cut.id, `${bundleDescription("d1")} (cut off)`, "kaos: the push was cut off", true],
      [pushed, bundleDescription("d2"), "", true],
    ]);
    // Pushed again for that key: the failed commit is not taken for it.
    const again = await pushBundle(client, bundleInputs({ repo: "mnist-svm-data", key: "d1", source: { kind: "files", dir } }));
    expect(again).not.toBe(cut.id);
  });

  it("pushes again over a head that holds the key but was finished as failed", async () => {
    await client.createRepo("default", "mnist-svm-params", "");
    const inputs = bundleInputs({
      repo: "mnist-svm-params",
      key: "e".repeat(64),
      source: { kind: "params", files: [{ path: "/k.json", content: "{}" }] },
    });
    const failed = await client.startCommit("default", "mnist-svm-params", "master", bundleDescription(inputs.key));
    await client.finishCommit(failed, { error: "upload failed" });
    const pushed = await pushBundle(client, inputs);
    expect(pushed).not.toBe(failed.id);
    expect(pachd.calls("StartCommit")).toHaveLength(2);
  });

  it("says an address that answers in HTTP/2 only is likely pachd's gRPC port, not its HTTP one", async () => {
    // pachd's gRPC port is cleartext HTTP/2: it opens with its SETTINGS frame, which no HTTP/1.1 client can read.
    const grpc = createHttp2Server();
    await new Promise<void>((resolve) => grpc.listen(0, "127.0.0.1", resolve));
    const address = `http://127.0.0.1:${(grpc.address() as AddressInfo).port}`;
    try {
      const error = await new PachdClient({ address }).call("versionpb_v2.API", "GetVersion", {}).catch((e: unknown) => e);
      expect((error as KaosError).code).toBe("PACHD_UNREACHABLE");
      expect((error as KaosError).message).toMatch(
        /does not answer in HTTP\/1\.1 \(versionpb_v2\.API\/GetVersion\).*is it pachd's gRPC port\?$/,
      );
      expect((error as KaosError).hint).toContain("not its gRPC port (1650 or 30650)");
    } finally {
      await new Promise<void>((resolve) => grpc.close(() => resolve()));
    }
  });

  it("answers undefined for a pipeline or branch pachd does not have", async () => {
    expect(await client.inspectPipeline("default", "nope")).toBeUndefined();
    await client.createRepo("default", "empty", "");
    expect(await client.headCommit("default", "empty", "master")).toBeUndefined();
  });
});

describe("the local server answers as pachd v2.11.6 did on loopback", () => {
  const repo = (name: string) => ({ name, type: "user", project: { name: "default" } });
  async function post(method: string, body: unknown): Promise<{ status: number; json: unknown }> {
    const response = await pachdFetch(`${pachd.address}/api/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", "authn-token": TOKEN },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, json: text.trim() === "" ? undefined : JSON.parse(text.trim().split("\n")[0] ?? "") };
  }

  it("writes every field, with unset timestamps as null, and leaves StartCommit's branch out", async () => {
    await post("pfs_v2.API/CreateRepo", { repo: repo("r"), update: true });
    const started = await post("pfs_v2.API/StartCommit", { branch: { repo: repo("r"), name: "master" }, description: "d" });
    expect(started.json).toEqual({ repo: repo("r"), id: expect.any(String), branch: null });
    const open = (await post("pfs_v2.API/InspectCommit", { commit: { branch: { repo: repo("r"), name: "master" } } })).json;
    expect(open).toMatchObject({ description: "d", parentCommit: null, finishing: null, finished: null, error: "" });
    await post("pfs_v2.API/FinishCommit", { commit: started.json });
    // pachd sets `finished` only once it has compacted the commit.
    const closed = (await post("pfs_v2.API/InspectCommit", { commit: { branch: { repo: repo("r"), name: "master" } } })).json;
    expect(closed).toMatchObject({ finishing: expect.any(String), finished: null });
    pachd.compact();
    expect((await post("pfs_v2.API/InspectCommit", { commit: { branch: { repo: repo("r"), name: "master" } } })).json).toMatchObject({
      finished: expect.any(String),
    });
    pachd.jobs = [{ pipeline: "p", id: "j", state: "JOB_CREATED" }];
    expect((await post("pps_v2.API/ListJob", { projects: [{ name: "default" }] })).json).toMatchObject({
      result: { state: "JOB_CREATED", started: null, finished: null, dataTotal: "0", reason: "" },
    });
  });

  it("refuses repo and pipeline names pachd refuses, with pachd's messages, and takes the rest", async () => {
    const invalid = (name: string) => `name (${name}) invalid: only alphanumeric characters, underscores, and dashes are allowed`;
    for (const name of ["my.repo", "a b", "Repo@master", ""]) {
      expect(await post("pfs_v2.API/CreateRepo", { repo: repo(name), update: true }), name).toEqual({
        status: 500,
        json: { code: 2, message: invalid(name), details: [] },
      });
    }
    expect(pachd.repos.size).toBe(0);
    expect((await post("pfs_v2.API/CreateRepo", { repo: repo("Image_Classification-My-Model-source"), update: true })).status).toBe(200);
    const create = (name: string, project = "default") =>
      post("pps_v2.API/CreatePipelineV2", {
        createPipelineRequestJson: JSON.stringify({
          pipeline: { name, project: { name: project } },
          transform: { image: "i", cmd: ["sh"] },
        }),
      });
    expect((await create("a.b")).json).toEqual({ code: 2, message: `invalid pipeline name: ${invalid("a.b")}`, details: [] });
    const long = "p".repeat(52);
    expect((await create(long)).json).toEqual({
      code: 2,
      message: `pipeline name "${long}" is 1 characters longer than the 51 max`,
      details: [],
    });
    // Pachyderm's workers are the ReplicationController <project>-<pipeline>-v<N>, lowercase with '-' for '_'.
    const workers = `kaos-models-${"q".repeat(51)}-v99`;
    expect((await create("Q".repeat(51), "kaos_models")).json).toEqual({
      code: 2,
      message: `Kubernetes name "${workers}" is ${workers.length - 63} characters longer than the 63 max`,
      details: [],
    });
    expect(pachd.pipelines.size).toBe(0);
    expect((await create("My_Model-train")).status).toBe(200);
  });

  it("answers a failed streamed call with an error message under its HTTP status", async () => {
    await post("pfs_v2.API/CreateRepo", { repo: repo("r"), update: true });
    const job = { pipeline: { name: "p", project: { name: "default" } }, id: "0123" };
    expect(await post("pps_v2.API/ListDatum", { job })).toEqual({
      status: 404,
      json: { error: { code: 5, message: "jobs default/p@0123 not found", details: [] } },
    });
    expect(await post("pps_v2.API/ListJob", { projects: [{ name: "default" }], pipeline: job.pipeline })).toEqual({
      status: 404,
      json: { error: { code: 5, message: 'pipeline "default/p" not found', details: [] } },
    });
    const file = await post("pfs_v2.API/GetFile", { file: { commit: { repo: repo("r"), id: "c" }, path: "/x" } });
    expect(file.status).toBe(404);
    expect(file.json).toEqual({ error: expect.objectContaining({ code: 5 }) });
    // A job's datums come from its meta commit, which builds on the previous job's.
    pachd.jobs = [
      { pipeline: "p", id: "0123", state: "JOB_CREATED" },
      { pipeline: "p", id: "0042", state: "JOB_RUNNING" },
    ];
    expect(await post("pps_v2.API/ListDatum", { job })).toEqual({
      status: 500,
      json: {
        error: {
          code: 2,
          message: "next: rpc error: code = Unknown desc = base commit default/p.meta@0042 for commit default/p.meta@0123 unfinished",
          details: [],
        },
      },
    });
    // Without Loki, pachd reads logs from the worker pods, and a job whose pipeline has none fails.
    pachd.jobs = [{ pipeline: "p", id: "0123", state: "JOB_CREATED" }];
    expect(await post("pps_v2.API/GetLogs", { job })).toEqual({
      status: 500,
      json: { error: { code: 2, message: 'no pods belonging to the rc "default-p-v1" were found', details: [] } },
    });
  });

  it("refuses to start a commit on an open head, and to drop a commit set another builds on", async () => {
    for (const name of ["a", "b"]) await post("pfs_v2.API/CreateRepo", { repo: repo(name), update: true });
    const input = { cross: [{ pfs: { project: "default", repo: "a", glob: "/" } }, { pfs: { project: "default", repo: "b", glob: "/" } }] };
    const spec = JSON.stringify({ pipeline: { name: "p", project: { name: "default" } }, input, transform: { image: "i", cmd: ["sh"] } });
    expect((await post("pps_v2.API/CreatePipelineV2", { createPipelineRequestJson: spec })).status).toBe(200);
    const open = (await post("pfs_v2.API/StartCommit", { branch: { repo: repo("a"), name: "master" } })).json as { id: string };
    expect(await post("pfs_v2.API/StartCommit", { branch: { repo: repo("a"), name: "master" } })).toEqual({
      status: 500,
      json: { code: 2, message: `start commit in transaction: parent commit default/a@${open.id} has not been finished`, details: [] },
    });
    const other = (await post("pfs_v2.API/StartCommit", { branch: { repo: repo("b"), name: "master" } })).json as { id: string };
    expect(await post("pfs_v2.API/DropCommitSet", { commitSet: { id: open.id } })).toEqual({
      status: 500,
      json: {
        code: 2,
        message: `commit set "id:\\"${open.id}\\"" cannot be dropped because it has subvenant commit sets: [id:"${other.id}"]`,
        details: [],
      },
    });
    await post("pfs_v2.API/FinishCommit", { commit: { repo: repo("a"), id: open.id } });
    expect(await post("pfs_v2.API/ModifyFile", { setCommit: { repo: repo("a"), id: open.id } })).toEqual({
      status: 500,
      json: { code: 2, message: `commit default/a@${open.id} has already finished`, details: [] },
    });
  });

  it("checks a pipeline's input repos and secrets, keeps a repo a pipeline reads, and deletes what is gone as done", async () => {
    await post("pfs_v2.API/CreateRepo", { repo: repo("a"), update: true });
    const spec = (inputRepo: string, secrets: { name: string; mountPath: string }[] = []) =>
      JSON.stringify({
        pipeline: { name: "p", project: { name: "default" } },
        input: { pfs: { project: "default", repo: inputRepo, glob: "/" } },
        transform: { image: "i", cmd: ["sh"], secrets },
      });
    expect(await post("pps_v2.API/CreatePipelineV2", { createPipelineRequestJson: spec("missing") })).toEqual({
      status: 404,
      json: { code: 5, message: "repo default/missing not found", details: [] },
    });
    pachd.secretExists = (name) => name === "kaos-registry";
    expect(
      await post("pps_v2.API/CreatePipelineV2", { createPipelineRequestJson: spec("a", [{ name: "other", mountPath: "/s" }]) }),
    ).toEqual({
      status: 500,
      json: { code: 2, message: "missing Kubernetes secret other", details: [] },
    });
    const created = await post("pps_v2.API/CreatePipelineV2", {
      createPipelineRequestJson: spec("a", [{ name: "kaos-registry", mountPath: "/s" }]),
    });
    expect(created.status).toBe(200);
    const refused = await post("pfs_v2.API/DeleteRepo", { repo: repo("a") });
    expect(refused.status).toBe(500);
    expect(refused.json).toMatchObject({
      code: 2,
      message: expect.stringContaining("cannot be deleted because it's in the direct provenance of"),
    });
    expect(await post("pps_v2.API/DeletePipeline", { pipeline: { name: "p", project: { name: "default" } } })).toEqual({
      status: 200,
      json: {},
    });
    expect(await post("pps_v2.API/DeletePipeline", { pipeline: { name: "p", project: { name: "default" } } })).toEqual({
      status: 200,
      json: {},
    });
    expect(await post("pfs_v2.API/DeleteRepo", { repo: repo("a") })).toEqual({ status: 200, json: { deleted: true } });
    expect(await post("pfs_v2.API/DeleteRepo", { repo: repo("a") })).toEqual({ status: 200, json: { deleted: false } });
  });

  it("breaks a call carrying Connection only, and answers an unknown method NOT_FOUND", async () => {
    const send = (headers: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const request = httpRequest(`${pachd.address}/api/versionpb_v2.API/GetVersion`, { method: "POST", headers }, (response) => {
          response.resume();
          resolve(response.statusCode ?? 0);
        });
        // Node writes `Connection` itself unless the request names one.
        if (headers["connection"] === undefined) request.removeHeader("connection");
        request.on("error", reject);
        request.end("{}");
      });
    expect(
      await send({ "authn-token": TOKEN, "keep-alive": "timeout=5", upgrade: "h2c", te: "gzip", "proxy-connection": "keep-alive" }),
    ).toBe(200);
    expect(await send({ "authn-token": TOKEN, connection: "close" })).toBe(500);
    expect(await post("pfs_v2.API/NoSuchMethod", {})).toEqual({ status: 404, json: { code: 5, message: "Not Found", details: [] } });
  });
});

describe("train list and logs from Pachyderm jobs (against a local HTTP server following Pachyderm's API shapes)", () => {
  function seedJobs(): { keys: string[] } {
    const keys = (project.inputs[0]?.jobs ?? []).map((job) => job.key);
    pachd.seedCommit("default", "mnist-svm-params", {
      id: "c1",
      files: new Map(keys.map((key, index) => [`/${key}.json`, Buffer.from(JSON.stringify({ index }))])),
    });
    pachd.jobs = [
      {
        pipeline: "mnist-svm-train",
        id: "j2",
        state: "JOB_RUNNING",
        started: "2026-01-02T00:00:00Z",
        datums: [
          { id: "d-old", state: "SKIPPED", paramsFile: `/${keys[0]}.json`, paramsRepo: "mnist-svm-params", commit: "c1" },
          { id: "d3", state: "STARTING", paramsFile: `/${keys[2]}.json`, paramsRepo: "mnist-svm-params", commit: "c1" },
          { id: "d4", state: "UNKNOWN", paramsFile: `/${keys[3]}.json`, paramsRepo: "mnist-svm-params", commit: "c1" },
        ],
        logs: [
          { datumId: "d3", ts: "2026-01-02T00:00:01Z", message: "epoch 1" },
          { datumId: "d4", ts: "2026-01-02T00:00:02Z", message: "other datum" },
        ],
      },
      {
        pipeline: "mnist-svm-train",
        id: "j1",
        state: "JOB_FAILURE",
        started: "2026-01-01T00:00:00Z",
        finished: "2026-01-01T01:00:00Z",
        datums: [
          { id: "d1", state: "SUCCESS", paramsFile: `/${keys[0]}.json`, paramsRepo: "mnist-svm-params", commit: "c1" },
          { id: "d2", state: "FAILED", paramsFile: `/${keys[1]}.json`, paramsRepo: "mnist-svm-params", commit: "c1" },
        ],
      },
      {
        pipeline: "mnist-svm-build",
        id: "j1",
        state: "JOB_SUCCESS",
        started: "2026-01-01T00:00:00Z",
        finished: "2026-01-01T00:10:00Z",
        logs: [{ message: "pushed" }],
      },
      { pipeline: "mnist-cnn-ingest", id: "j9", state: "JOB_KILLED", started: "2026-01-01T00:00:00Z" },
      { pipeline: "mnist-cnn-build", id: "j8", state: "JOB_CREATED" },
      { pipeline: "mnist-cnn-train", id: "j7", state: "JOB_UNRUNNABLE" },
      { pipeline: "other-svm-train", id: "j5", state: "JOB_SUCCESS" },
      { pipeline: "edges", id: "j6", state: "JOB_SUCCESS" },
    ];
    return { keys };
  }

  it("lists build, ingest and train jobs in the train list shape, one entry per combination", async () => {
    const { keys } = seedJobs();
    const jobs = await listClusterJobs(project.stack, { workspace: "mnist" });
    const byId = new Map(jobs.map((job) => [job.id, job]));
    expect(jobs.map((job) => job.id)).toEqual([
      keys[2],
      keys[3],
      keys[0],
      keys[1],
      "mnist-svm-build@j1",
      "mnist-cnn-ingest@j9",
      "mnist-cnn-build@j8",
      "mnist-cnn-train@j7",
    ]);
    expect(byId.get(keys[0] as string)).toEqual({
      id: keys[0],
      pipeline: "svm",
      stage: "train",
      state: "succeeded",
      params: { index: 0 },
      startedAt: "2026-01-01T00:00:00Z",
      finishedAt: "2026-01-01T01:00:00Z",
      exitCode: null,
    });
    expect(byId.get(keys[1] as string)?.state).toBe("failed");
    expect(byId.get(keys[2] as string)?.state).toBe("running");
    expect(byId.get(keys[3] as string)?.state).toBe("queued");
    expect(byId.get("mnist-svm-build@j1")).toMatchObject({ pipeline: "svm", stage: "build", state: "succeeded", params: {} });
    expect(byId.get("mnist-cnn-ingest@j9")).toMatchObject({ pipeline: "cnn", stage: "ingest", state: "cancelled" });
    expect(byId.get("mnist-cnn-build@j8")?.state).toBe("queued");
    expect(byId.get("mnist-cnn-train@j7")?.state).toBe("failed");
    const listJob = pachd.calls("ListJob")[0];
    expect(listJob?.path).toBe("/api/pps_v2.API/ListJob");
    expect(JSON.parse(listJob?.body ?? "")).toEqual({ projects: [{ name: "default" }], details: false });
    expect(listJob?.headers["authn-token"]).toBe(TOKEN);
  });

  it("shows a train job whole while pachd cannot list its datums, behind a job still running", async () => {
    seedJobs();
    pachd.jobs.unshift({ pipeline: "mnist-svm-train", id: "j3", state: "JOB_CREATED" });
    const jobs = await listClusterJobs(project.stack, { workspace: "mnist" });
    expect(jobs.find((job) => job.id === "mnist-svm-train@j3")).toMatchObject({ stage: "train", state: "queued" });
    expect(jobs.filter((job) => job.stage === "train" && !job.id.includes("@"))).toHaveLength(4);
  });

  it("takes params from the caller when it knows them, without reading the params repo", async () => {
    const { keys } = seedJobs();
    const params = new Map((project.inputs[0]?.jobs ?? []).map((job) => [job.key, job.params]));
    const jobs = await listClusterJobs(project.stack, { workspace: "mnist", params });
    expect(jobs.find((job) => job.id === keys[1])?.params).toEqual(project.inputs[0]?.jobs[1]?.params);
    expect(pachd.calls("GetFile")).toHaveLength(0);
  });

  it("streams one combination's log lines by job key prefix, asking pachd for that datum", async () => {
    const { keys } = seedJobs();
    const lines = [];
    for await (const line of clusterJobLogs(project.stack, (keys[2] as string).slice(0, 12), { workspace: "mnist" })) lines.push(line);
    expect(lines).toEqual([{ time: "2026-01-02T00:00:01Z", user: true, message: "epoch 1" }]);
    const request = JSON.parse(pachd.calls("GetLogs")[0]?.body ?? "") as Record<string, unknown>;
    expect(request).toEqual({
      job: { pipeline: { name: "mnist-svm-train", project: { name: "default" } }, id: "j2" },
      follow: false,
      datum: { job: { pipeline: { name: "mnist-svm-train", project: { name: "default" } }, id: "j2" }, id: "d3" },
    });
  });

  it("train logs -f through the built CLI on a cluster stack exits as the Pachyderm job or datum ended; train logs alone 0", async () => {
    const { keys } = seedJobs();
    const failedJob = pachd.jobs.find((job) => job.pipeline === "mnist-svm-train" && job.id === "j1");
    failedJob!.logs = [{ datumId: "d2", user: true, ts: "2026-01-01T00:00:01Z", message: "diverged" }];
    writeFileSync(
      join(project.dir, "kaos.config.ts"),
      `export default { workspace: "mnist", pipelines: { svm: { source: "svm/src", data: "svm/data" } } };\n`,
    );
    mkdirSync(join(project.dir, "stacks"));
    writeFileSync(join(project.dir, "stacks", "cluster.ts"), `export default ${JSON.stringify(project.stack.config)};\n`);
    const logs = (job: string, ...flags: string[]) =>
      runKaos(["train", "logs", job, "--stack", "cluster", ...flags], { cwd: project.dir, env: { [TOKEN_ENV]: TOKEN } });

    const failed = shortJobId(keys[1] as string);
    const followed = await logs(failed, "-f");
    expect(followed.code).toBe(1);
    expect(followed.stdout).toBe("2026-01-01T00:00:01Z user   | diverged\n");
    expect(followed.stderr).toBe(`job ${failed} failed; \`kaos train info ${failed} --stack cluster\` says more\n`);
    const plain = await logs(failed);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toBe(followed.stdout);
    expect(plain.stderr).toBe("");

    expect(await logs("mnist-svm-build@j1", "-f")).toMatchObject({ code: 0, stdout: " user   | pushed\n", stderr: "" });
    // The fake ends a followed stream at once: a datum still running then is told as such.
    const running = shortJobId(keys[2] as string);
    expect(await logs(running, "-f")).toMatchObject({
      code: 1,
      stderr: `job ${running} was interrupted while running: pachd ended its log stream before the job ended; \`kaos train info ${running} --stack cluster\` says more\n`,
    });
  });

  it("streams a build job's logs by pipeline@id, and names unknown or ambiguous ids", async () => {
    seedJobs();
    const lines = [];
    for await (const line of clusterJobLogs(project.stack, "mnist-svm-build@j1", { workspace: "mnist" })) lines.push(line.message);
    expect(lines).toEqual(["pushed"]);
    const missing = await clusterJobLogs(project.stack, "ffffffffffff", { workspace: "mnist" })
      .next()
      .catch((e: unknown) => e);
    expect((missing as KaosError).code).toBe("JOB_NOT_FOUND");
    const ambiguous = await clusterJobLogs(project.stack, "mnist-", { workspace: "mnist" })
      .next()
      .catch((e: unknown) => e);
    expect((ambiguous as KaosError).code).toBe("JOB_AMBIGUOUS");
  });

  it("says a job has no logs while Pachyderm has no worker pods to read them from", async () => {
    seedJobs();
    const error = await clusterJobLogs(project.stack, "mnist-cnn-build@j8", { workspace: "mnist" })
      .next()
      .catch((e: unknown) => e);
    expect((error as KaosError).code).toBe("PACHD_FAILED");
    expect((error as KaosError).message).toBe(
      "no logs for job 'mnist-cnn-build@j8': Pachyderm has no worker pods of pipeline mnist-cnn-build to read them from",
    );
    expect((error as KaosError).hint).toContain(`kubectl -n pachyderm get pods -l pipelineName=mnist-cnn-build`);
  });

  it("shows a Pachyderm job id with its whole pipeline name, short enough and still found by `train logs`", async () => {
    const realId = "mnist-svm-train@5c1f0e8d7a6b4c3d2e1f0a9b8c7d6e5f";
    expect(shortJobId(realId)).toBe("mnist-svm-train@5c1f0e8d7a6b");
    expect(shortJobId("a".repeat(64))).toBe("a".repeat(16));
    seedJobs();
    const lines = [];
    for await (const line of clusterJobLogs(project.stack, shortJobId("mnist-svm-build@j1"), { workspace: "mnist" }))
      lines.push(line.message);
    expect(lines).toEqual(["pushed"]);
  });
});

describe("dynamic providers (serialized as Pulumi does, run in a separate Node process against the local HTTP server)", () => {
  const implUrl = pathToFileURL(join(REPO_ROOT, "src/backends/kubernetes/provider-impl.ts")).href;

  async function hostCall(
    serialized: string,
    method: string,
    args: unknown[],
    env: NodeJS.ProcessEnv,
  ): Promise<{ ok: boolean; result?: unknown; error?: string }> {
    const dir = mkdtempSync(join(tmpdir(), "kaos-provider-"));
    try {
      writeFileSync(join(dir, "provider.js"), serialized);
      writeFileSync(join(dir, "args.json"), JSON.stringify(args));
      const { stdout } = await run(
        process.execPath,
        [
          "--import",
          "jiti/register",
          join(REPO_ROOT, "test/fixtures/kubernetes/provider-host.mjs"),
          join(dir, "provider.js"),
          method,
          join(dir, "args.json"),
        ],
        { cwd: REPO_ROOT, env, timeout: 60_000 },
      );
      return JSON.parse(stdout) as { ok: boolean; result?: unknown; error?: string };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it("diffs on the spec alone, and creates and updates the pipeline from the token in its environment", async () => {
    const providers = pachydermProviders(implUrl);
    const serialized = await pulumi.runtime.serializeFunction(() => providers.pipeline, { allowSecrets: true });
    expect(serialized.text).not.toContain(TOKEN);
    expect(serialized.text).not.toContain("PachdClient"); // the work is loaded at run time, not captured
    expect(serialized.text).toContain(implUrl);

    const spec = canonicalJson({
      pipeline: { name: "mnist-svm-build", project: { name: "default" } },
      transform: { image: "b", cmd: ["sh"] },
    });
    const inputs: PipelineInputs = { address: pachd.address, project: "default", tokenEnv: TOKEN_ENV, name: "mnist-svm-build", spec };
    const env = { ...process.env, [TOKEN_ENV]: TOKEN };

    const same = await hostCall(
      serialized.text,
      "diff",
      ["default/mnist-svm-build", inputs, { ...inputs, address: "http://elsewhere:1" }],
      env,
    );
    expect(same).toEqual({ ok: true, result: { changes: false, replaces: [] } });
    const changed = await hostCall(serialized.text, "diff", ["default/mnist-svm-build", inputs, { ...inputs, spec: `${spec} ` }], env);
    expect(changed).toEqual({ ok: true, result: { changes: true, replaces: [] } });
    const renamed = await hostCall(serialized.text, "diff", ["default/mnist-svm-build", inputs, { ...inputs, name: "x" }], env);
    expect(renamed.result).toEqual({ changes: true, replaces: ["name"] });
    expect(pachd.requests).toHaveLength(0);

    const created = await hostCall(serialized.text, "create", [{ ...inputs, __provider: "serialized" }], env);
    expect(created).toEqual({ ok: true, result: { id: "default/mnist-svm-build", outs: inputs } });
    expect(pachd.pipelines.get("default/mnist-svm-build")?.specJson).toBe(spec);
    expect(pachd.calls("CreatePipelineV2")[0]?.headers["authn-token"]).toBe(TOKEN);

    const newSpec = canonicalJson({
      pipeline: { name: "mnist-svm-build", project: { name: "default" } },
      transform: { image: "c", cmd: ["sh"] },
    });
    const updated = await hostCall(serialized.text, "update", ["default/mnist-svm-build", inputs, { ...inputs, spec: newSpec }], env);
    expect(updated.ok).toBe(true);
    expect(pachd.pipelines.get("default/mnist-svm-build")?.version).toBe(2);
  }, 120_000);

  it("refreshes from pachd (what it lost is dropped from the state) and deletes at the current run's address", async () => {
    const providers = pachydermProviders(implUrl);
    const serialized = await pulumi.runtime.serializeFunction(() => providers.repo, { allowSecrets: true });
    // The state names an address where no pachd listens any more.
    const stale = { address: "http://127.0.0.1:9", project: "default", tokenEnv: TOKEN_ENV, name: "mnist-svm-source", description: "" };
    const env = { ...process.env, [TOKEN_ENV]: TOKEN, KAOS_PACHD_ADDRESS: pachd.address };
    await client.createRepo("default", "mnist-svm-source", "");
    const present = await hostCall(serialized.text, "read", ["default/mnist-svm-source", stale], env);
    expect(present).toEqual({ ok: true, result: { id: "default/mnist-svm-source", props: stale } });
    const deleted = await hostCall(serialized.text, "delete", ["default/mnist-svm-source", stale], env);
    expect(deleted.ok).toBe(true);
    expect(pachd.repo("default", "mnist-svm-source")).toBeUndefined();
    const gone = await hostCall(serialized.text, "read", ["default/mnist-svm-source", stale], env);
    expect(gone).toEqual({ ok: true, result: { id: "", props: {} } });
  }, 120_000);

  it("fails with pachd's message (and no token) when the provider process has the wrong token", async () => {
    const providers = pachydermProviders(implUrl);
    const serialized = await pulumi.runtime.serializeFunction(() => providers.repo, { allowSecrets: true });
    const inputs = { address: pachd.address, project: "default", tokenEnv: TOKEN_ENV, name: "mnist-svm-source", description: "" };
    const failed = await hostCall(serialized.text, "create", [inputs], { ...process.env, [TOKEN_ENV]: "wrong-token-value" });
    expect(failed.ok).toBe(false);
    expect(failed.error).toContain("pachd pfs_v2.API/CreateRepo failed: no authentication token");
    expect(failed.error).toContain(`set ${TOKEN_ENV}`);
    expect(failed.error).not.toContain("wrong-token-value");
  }, 120_000);
});
