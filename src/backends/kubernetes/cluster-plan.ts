/**
 * Everything the cluster stack declares, computed once from the resolved
 * config and the engine's keys: names, bundles to push, pipeline specs. Both
 * `kaos render` and the Pulumi program read this, so what render writes is
 * exactly what `up` applies.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { formatPath, position } from "../../core/config-text.js";
import { KaosError, describeError } from "../../core/errors.js";
import type { HyperparamSet, ResolvedConfig, ResolvedPipeline, ResolvedStack } from "../../core/types.js";
import { walkBundle, type BundleFile } from "./pack.js";
import { canonicalJson } from "../../core/hyperparams.js";
import { imageNameProblem, imageRepository, pipelineNameProblem, repoNameProblem, workersName } from "./names.js";
import { clusterSettings, pachydermName, type ClusterSettings } from "./settings.js";
import { buildSpec, BUNDLE_FILE, ingestSpec, trainSpec, type CreatePipelineRequestSpec, type PipelineNames, type Stage } from "./specs.js";

/** What the engine hands the backend for one pipeline. */
export interface ClusterPipelineInput {
  /** Absolute sourceDir, data {kind:"dir",dir}|{kind:"manifest",path}, grid, resources, parallelism. */
  pipeline: ResolvedPipeline;
  /** Hex SHA-256 keys; `data` is undefined for a manifest not yet pinned. */
  keys: { env: string; source: string; data: string | undefined; hyperparams: string };
  /** The expanded grid, in canonical order. */
  jobs: { key: string; params: HyperparamSet }[];
}

export { canonicalJson };

/** A bundle kaos pushes into an input repo as one commit, only when `key` changed. */
export type BundlePlan =
  | {
      kind: "archive";
      /** Pulumi resource name. */
      id: string;
      repo: string;
      key: string;
      dir: string;
      /** Files to pack; undefined packs the whole directory. */
      files: BundleFile[] | undefined;
      /** Path of the archive in the repo. */
      path: string;
    }
  | { kind: "files"; id: string; repo: string; key: string; dir: string }
  | { kind: "params"; id: string; repo: string; key: string; files: { path: string; content: string }[] };

export interface RepoPlan {
  /** Pulumi resource name. */
  id: string;
  name: string;
  description: string;
}

export interface SpecPlan {
  stage: Stage;
  /** Pachyderm pipeline name. */
  name: string;
  spec: CreatePipelineRequestSpec;
  /** The spec as canonical JSON (sorted keys): what the provider compares. */
  json: string;
}

export interface ClusterPipelinePlan {
  /** The kaos pipeline name. */
  name: string;
  names: PipelineNames;
  image: string;
  gpu: number;
  repos: RepoPlan[];
  bundles: BundlePlan[];
  specs: SpecPlan[];
}

export interface ClusterPlan {
  settings: ClusterSettings;
  workspace: string;
  pipelines: ClusterPipelinePlan[];
}

export async function planCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
): Promise<ClusterPlan> {
  const settings = clusterSettings(config, stack);
  const pipelines: ClusterPipelinePlan[] = [];
  for (const input of inputs) pipelines.push(await planPipeline(settings, config.workspace, input));
  assertClusterNames(config, settings, pipelines);
  return { settings, workspace: config.workspace, pipelines };
}

/**
 * Refuses names that pachd, Kubernetes or a registry would refuse once the
 * repos and bundles before them were applied: repo and pipeline names pachd
 * refuses, a pipeline name over 51 characters, a workers' Kubernetes name
 * over 63, two pipelines with one Kubernetes name or one image repository,
 * or an image name over 255.
 */
function assertClusterNames(config: ResolvedConfig, settings: ClusterSettings, pipelines: readonly ClusterPipelinePlan[]): void {
  let source: string | undefined;
  try {
    source = readFileSync(config.file, "utf8");
  } catch {
    source = undefined;
  }
  const project = settings.pachyderm.project;
  const problems: string[] = [];
  const owners = new Map<string, { pipeline: string; name: string }>();
  const images = new Map<string, string>();
  for (const pipeline of pipelines) {
    const path = ["pipelines", pipeline.name];
    const where = `${position(config.file, source, path)}: ${formatPath(path)}`;
    const found = problems.length;
    for (const repo of pipeline.repos) {
      const problem = repoNameProblem(repo.name);
      if (problem !== undefined) {
        problems.push(`${where}: ${problem}`);
        break;
      }
    }
    for (const { name } of pipeline.specs) {
      const problem = pipelineNameProblem(project, name);
      if (problem !== undefined) {
        problems.push(`${where}: ${problem}`);
        break;
      }
      const kubernetes = workersName(project, name);
      const owner = owners.get(kubernetes);
      if (owner !== undefined) {
        problems.push(
          `${where}: the Pachyderm pipeline ${name} has the Kubernetes name of ${owner.name} (${formatPath(["pipelines", owner.pipeline])}): Kubernetes names are lowercase, with '-' for '_'`,
        );
        break;
      }
      owners.set(kubernetes, { pipeline: pipeline.name, name });
    }
    if (problems.length > found) continue;
    const repository = imageRepository(settings.prefix, pachydermName(pipeline.name));
    const tooLong = imageNameProblem(settings.registry.url, repository);
    const other = images.get(repository);
    if (tooLong !== undefined) problems.push(`${where}: ${tooLong}`);
    else if (other !== undefined) {
      problems.push(
        `${where}: the image repository ${settings.registry.url}/${repository} is also that of ${formatPath(["pipelines", other])}: image repositories are lowercase, of letters, digits and single separators ('.', '_', '__' or dashes) between them`,
      );
    } else images.set(repository, pipeline.name);
  }
  if (problems.length > 0) {
    throw new KaosError(
      "CONFIG_INVALID",
      `pipeline names that Pachyderm or the registry would refuse on stack '${settings.stack}':\n${problems.join("\n")}`,
      {
        hint: "rename the pipelines named above (or shorten the workspace): each Pachyderm pipeline is named <workspace>-<pipeline>-<stage> (build, ingest, train), each repo <workspace>-<pipeline>-<role> (source, data, manifest, params), each image <registry>/<workspace>-<pipeline>, lowercase",
      },
    );
  }
}

async function planPipeline(settings: ClusterSettings, workspace: string, input: ClusterPipelineInput): Promise<ClusterPipelinePlan> {
  const { pipeline, keys } = input;
  const base = `${settings.prefix}-${pachydermName(pipeline.name)}`;
  const manifest = pipeline.data.kind === "manifest";
  const names: PipelineNames = {
    source: `${base}-source`,
    data: manifest ? undefined : `${base}-data`,
    manifest: manifest ? `${base}-manifest` : undefined,
    params: `${base}-params`,
    build: `${base}-build`,
    ingest: manifest ? `${base}-ingest` : undefined,
    train: `${base}-train`,
    dataInput: manifest ? `${base}-ingest` : `${base}-data`,
  };
  const image = imageTag(settings, pipeline.name, keys.env, keys.source);
  const where = `${workspace}/${pipeline.name}`;

  const repos: RepoPlan[] = [{ id: names.source, name: names.source, description: `kaos source bundle of ${where}` }];
  const bundles: BundlePlan[] = [
    {
      kind: "archive",
      id: `${names.source}-bundle`,
      repo: names.source,
      key: keys.source,
      dir: pipeline.sourceDir,
      files: undefined,
      path: `/${BUNDLE_FILE}`,
    },
  ];

  if (pipeline.data.kind === "dir") {
    const repo = names.data as string;
    if (keys.data === undefined) {
      throw new KaosError("CONFIG_INVALID", `pipeline '${pipeline.name}' has a data directory but no data key`, {
        hint: "the data bundle must be hashed before the cluster plan is made",
      });
    }
    repos.push({ id: repo, name: repo, description: `kaos data bundle of ${where}` });
    bundles.push({ kind: "files", id: `${repo}-bundle`, repo, key: keys.data, dir: pipeline.data.dir });
  } else {
    const repo = names.manifest as string;
    const { dir, files, key } = await manifestBundle(pipeline.data.path);
    repos.push({ id: repo, name: repo, description: `kaos data manifest of ${where}` });
    bundles.push({ kind: "archive", id: `${repo}-bundle`, repo, key, dir, files, path: `/${BUNDLE_FILE}` });
  }

  repos.push({ id: names.params, name: names.params, description: `kaos hyperparameter combinations of ${where}, one file per job` });
  bundles.push(paramsBundle(names.params, input.jobs));

  const stageInput = { settings, workspace, pipeline: pipeline.name, names };
  const specs: SpecPlan[] = [];
  const add = (stage: Stage, spec: CreatePipelineRequestSpec): void => {
    specs.push({ stage, name: spec.pipeline.name, spec, json: canonicalJson(spec) });
  };
  add("build", buildSpec({ ...stageInput, image }));
  if (manifest) add("ingest", ingestSpec(stageInput));
  add(
    "train",
    trainSpec({
      ...stageInput,
      image,
      resources: { cpu: pipeline.resources.cpu, memory: pipeline.resources.memory, gpu: pipeline.resources.gpu },
      parallelism: pipeline.parallelism,
    }),
  );
  return { name: pipeline.name, names, image, gpu: pipeline.resources.gpu, repos, bundles, specs };
}

/** `<registry>/<workspace>-<pipeline>:<env key[0:12]>-<source key[0:12]>`, its repository as registries take it. */
export function imageTag(settings: ClusterSettings, pipeline: string, envKey: string, sourceKey: string): string {
  const repository = imageRepository(settings.prefix, pachydermName(pipeline));
  return `${settings.registry.url}/${repository}:${envKey.slice(0, 12)}-${sourceKey.slice(0, 12)}`;
}

/** One file per job, named by its job key, holding exactly that job's combination. */
function paramsBundle(repo: string, jobs: readonly { key: string; params: HyperparamSet }[]): BundlePlan {
  const files = jobs.map((job) => ({ path: `/${job.key}.json`, content: `${canonicalJson(job.params)}\n` }));
  const hash = createHash("sha256");
  for (const file of files) hash.update(`${file.path}\0${file.content}\0`);
  return { kind: "params", id: `${repo}-bundle`, repo, key: hash.digest("hex"), files };
}

/** The manifest file (or every file of a manifest directory), keyed by its exact bytes. */
async function manifestBundle(path: string): Promise<{ dir: string; files: BundleFile[] | undefined; key: string }> {
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(path)).isDirectory();
  } catch (error) {
    throw new KaosError("MANIFEST_INVALID", `cannot read manifest ${path}: ${describeError(error)}`, { cause: error });
  }
  const dir = isDirectory ? path : dirname(path);
  const files: BundleFile[] = isDirectory ? await walkBundle(path) : [{ path: basename(path), mode: "file" }];
  const sorted = [...files].sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
  const hash = createHash("sha256");
  for (const file of sorted) {
    hash.update(`${file.path}\0`);
    hash.update(await readFile(join(dir, file.path)));
    hash.update("\0");
  }
  return { dir, files: isDirectory ? undefined : files, key: hash.digest("hex") };
}
