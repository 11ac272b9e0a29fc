/**
 * What the Pachyderm dynamic providers do, loaded by them at run time in
 * Pulumi's provider process (see provider.ts for why it lives apart).
 *
 * - repo: CreateRepo (idempotent), DeleteRepo.
 * - bundle: one commit on `master` replacing the repo's content with the
 *   bundle (a deterministic archive, the data files, or the params files),
 *   described `kaos bundle <key>`. If the branch head already carries that
 *   description (state lost, or a rerun after a failure) nothing is pushed.
 *   A failed push drops the open commit, leaving the branch as it was.
 * - pipeline: CreatePipelineV2; `update` (no reprocessing, so datums already
 *   done are not run again) when the spec changed; DeletePipeline.
 */
import { createReadStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as pulumi from "@pulumi/pulumi";
import { KaosError, describeError } from "../../core/errors.js";
import { packBundle, walkBundle, type BundleFile } from "./pack.js";
import { canonicalJson } from "../../core/hyperparams.js";
import { commitClosed, PachdClient, PachdError, repoRef, type CommitInfo, type CommitRef, type UploadFile } from "./pachd.js";
import { PACHD_ADDRESS_ENV } from "./settings.js";
import type { BundleInputs, PachdConnection, PipelineInputs, RepoInputs } from "./provider.js";

type Props = Record<string, unknown>;

/** The properties kaos declared, without Pulumi's own (`__provider`). */
function own<T>(props: Props): T {
  const { __provider: _provider, ...rest } = props;
  return rest as T;
}

export function pachdFor(connection: PachdConnection, env: NodeJS.ProcessEnv = process.env, fetchImpl?: typeof fetch): PachdClient {
  // Inputs of a delete or a refresh come from the state, written when the
  // stack may have named another address for the same pachd.
  const current = env[PACHD_ADDRESS_ENV];
  return new PachdClient({
    address: current !== undefined && current !== "" ? current : connection.address,
    token: env[connection.tokenEnv],
    tokenEnv: connection.tokenEnv,
    ...(fetchImpl ? { fetch: fetchImpl } : {}),
  });
}

/** Pulumi shows only an error's message: fold the hint into it. */
async function reported<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof KaosError) throw new Error(error.hint ? `${error.message} (${error.hint})` : error.message);
    throw error;
  }
}

export const BUNDLE_BRANCH = "master";

export function bundleDescription(key: string): string {
  return `kaos bundle ${key}`;
}

/** Pushes a bundle as one commit unless the branch head already holds it; answers the commit id. */
export async function pushBundle(client: PachdClient, inputs: BundleInputs): Promise<string> {
  const description = bundleDescription(inputs.key);
  const head = await client.headCommit(inputs.project, inputs.repo, BUNDLE_BRANCH);
  if (head && !commitClosed(head)) await closeCutOffPush(client, inputs, head);
  else if (head?.description === description && !head.error && head.commit?.id) return head.commit.id;

  const scratch = await mkdtemp(join(tmpdir(), "kaos-bundle-"));
  let commit: CommitRef | undefined;
  try {
    const files = await bundleFiles(inputs, scratch);
    commit = await client.startCommit(inputs.project, inputs.repo, BUNDLE_BRANCH, description);
    await client.replaceFiles(commit, files);
    await client.finishCommit(commit);
    return commit.id ?? inputs.key;
  } catch (error) {
    if (commit?.id) await abandonCommit(client, commit, inputs.key).catch(() => undefined);
    throw error;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * Takes back a commit kaos started and could not fill. Dropping its commit set
 * leaves the branch as it was; pachd refuses that once another commit builds
 * on it (a sibling bundle of the same pipeline pushed meanwhile), and then it
 * is finished as failed: the branch takes commits again, and pipelines do not
 * run on what it holds. Its description no longer names the key, so the next
 * push does not take it for the bundle.
 */
async function abandonCommit(client: PachdClient, commit: CommitRef, key: string): Promise<void> {
  if (!commit.id) return;
  try {
    await client.dropCommitSet(commit.id);
  } catch {
    await client.finishCommit(commit, { error: "kaos: the push was cut off", description: `${bundleDescription(key)} (cut off)` });
  }
}

/**
 * An open head commit is a push that was cut off before it could finish or
 * drop its commit (the process was killed), and pachd starts no commit on an
 * open parent: kaos takes its own back; anyone else's is left to them.
 */
async function closeCutOffPush(client: PachdClient, inputs: BundleInputs, head: CommitInfo): Promise<void> {
  const id = head.commit?.id;
  const prefix = bundleDescription("");
  if (id && head.description?.startsWith(prefix)) {
    const commit: CommitRef = { repo: repoRef(inputs.project, inputs.repo), id };
    await abandonCommit(client, commit, head.description.slice(prefix.length));
    return;
  }
  throw new KaosError(
    "PACHD_FAILED",
    `branch ${BUNDLE_BRANCH} of repo ${inputs.project}/${inputs.repo} has an open commit ${id ?? ""} that kaos did not start, and pachd starts no commit on an open one`,
    {
      hint: `finish it (\`pachctl finish commit ${inputs.repo}@${id ?? BUNDLE_BRANCH} --project ${inputs.project}\`) or drop it, then rerun`,
    },
  );
}

async function bundleFiles(inputs: BundleInputs, scratch: string): Promise<UploadFile[] | AsyncIterable<UploadFile>> {
  const source = inputs.source;
  switch (source.kind) {
    case "archive": {
      const archive = join(scratch, "bundle.tar.gz");
      await packBundle(source.dir, (source.files ?? undefined) as BundleFile[] | undefined, archive);
      return [{ path: source.path, data: createReadStream(archive) }];
    }
    case "params":
      return source.files.map((file) => ({ path: file.path, data: Buffer.from(file.content) }));
    case "files": {
      const listed = await walkBundle(source.dir);
      listed.sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
      return (async function* () {
        // PFS keeps content only; a symlink is pushed as what it points to.
        for (const file of listed) yield { path: `/${file.path}`, data: createReadStream(join(source.dir, file.path)) };
      })();
    }
  }
}

/** Creates the pipeline, or updates it when pachd has another spec under that name. */
export async function applyPipeline(client: PachdClient, inputs: PipelineInputs, mode: "create" | "update"): Promise<void> {
  try {
    await sendPipeline(client, inputs, mode);
  } catch (error) {
    // pachd checks that every secret the spec mounts exists in its own namespace.
    const missing = error instanceof PachdError ? /missing Kubernetes secret (\S+)/.exec(error.message)?.[1] : undefined;
    if (missing === undefined) throw error;
    throw new KaosError(
      "PACHD_FAILED",
      `pachd refused pipeline ${inputs.name}: there is no Kubernetes secret '${missing}' in the namespace pachd runs in`,
      {
        hint: `set the stack's registry.usernameEnv and passwordEnv (kaos then creates it), or create it there yourself: \`kubectl -n <pachd's namespace> create secret docker-registry ${missing} --docker-server=... --docker-username=... --docker-password=...\`; the stack's namespace must be pachd's`,
        cause: error,
      },
    );
  }
}

async function sendPipeline(client: PachdClient, inputs: PipelineInputs, mode: "create" | "update"): Promise<void> {
  if (mode === "create") {
    const existing = await client.inspectPipeline(inputs.project, inputs.name);
    if (existing) {
      if (existing.userSpecJson !== undefined && sameJson(existing.userSpecJson, inputs.spec)) return;
      await client.createPipelineV2(inputs.spec, { update: true, reprocess: false });
      return;
    }
    await client.createPipelineV2(inputs.spec, { update: false });
    return;
  }
  await client.createPipelineV2(inputs.spec, { update: true, reprocess: false });
}

function sameJson(a: string, b: string): boolean {
  try {
    return canonicalJson(JSON.parse(a)) === canonicalJson(JSON.parse(b));
  } catch (error) {
    throw new KaosError("PACHD_FAILED", `pachd answered a pipeline spec that is not JSON: ${describeError(error)}`);
  }
}

/** What a refresh answers for a resource pachd no longer has: Pulumi drops it from the state, and the next up creates it. */
const GONE: pulumi.dynamic.ReadResult = { id: "", props: {} };

export const providerImpl: Record<"repo" | "bundle" | "pipeline", pulumi.dynamic.ResourceProvider> = {
  repo: {
    async create(props: Props) {
      const inputs = own<RepoInputs>(props);
      await reported(() => pachdFor(inputs).createRepo(inputs.project, inputs.name, inputs.description));
      return { id: `${inputs.project}/${inputs.name}`, outs: inputs };
    },
    async update(_id: string, _olds: Props, news: Props) {
      const inputs = own<RepoInputs>(news);
      await reported(() => pachdFor(inputs).createRepo(inputs.project, inputs.name, inputs.description));
      return { outs: inputs };
    },
    async delete(_id: string, props: Props) {
      const inputs = own<RepoInputs>(props);
      await reported(() => pachdFor(inputs).deleteRepo(inputs.project, inputs.name));
    },
    async read(id: string, props: Props) {
      const inputs = own<RepoInputs>(props);
      const exists = await reported(() => pachdFor(inputs).repoExists(inputs.project, inputs.name));
      return exists ? { id, props } : GONE;
    },
  },
  bundle: {
    async create(props: Props) {
      const inputs = own<BundleInputs>(props);
      const commit = await reported(() => pushBundle(pachdFor(inputs), inputs));
      return { id: `${inputs.project}/${inputs.repo}@${commit}`, outs: { ...inputs, commit } };
    },
    async update(_id: string, _olds: Props, news: Props) {
      const inputs = own<BundleInputs>(news);
      const commit = await reported(() => pushBundle(pachdFor(inputs), inputs));
      return { outs: { ...inputs, commit } };
    },
    // The commits stay in the repo's history; deleting the repo removes them.
    async delete() {},
    async read(id: string, props: Props) {
      const inputs = own<BundleInputs>(props);
      const head = await reported(() => pachdFor(inputs).headCommit(inputs.project, inputs.repo, BUNDLE_BRANCH));
      return head?.description === bundleDescription(inputs.key) && commitClosed(head) && !head.error ? { id, props } : GONE;
    },
  },
  pipeline: {
    async create(props: Props) {
      const inputs = own<PipelineInputs>(props);
      await reported(() => applyPipeline(pachdFor(inputs), inputs, "create"));
      return { id: `${inputs.project}/${inputs.name}`, outs: inputs };
    },
    async update(_id: string, _olds: Props, news: Props) {
      const inputs = own<PipelineInputs>(news);
      await reported(() => applyPipeline(pachdFor(inputs), inputs, "update"));
      return { outs: inputs };
    },
    async delete(_id: string, props: Props) {
      const inputs = own<PipelineInputs>(props);
      await reported(() => pachdFor(inputs).deletePipeline(inputs.project, inputs.name));
    },
    async read(id: string, props: Props) {
      const inputs = own<PipelineInputs>(props);
      const live = await reported(() => pachdFor(inputs).inspectPipeline(inputs.project, inputs.name));
      if (!live) return GONE;
      // Another spec under that name: the state forgets it, and the next up sends kaos's spec again.
      return live.userSpecJson === undefined || sameJson(live.userSpecJson, inputs.spec) ? { id, props } : GONE;
    },
  },
};
