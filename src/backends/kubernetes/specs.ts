/**
 * The Pachyderm pipeline specs (CreatePipelineRequest, protobuf JSON) for the
 * three stages of a kaos pipeline, and the small scripts they run.
 *
 * Layout in PFS, per kaos pipeline P of workspace W:
 *
 *   W-P-source   input repo   /bundle.tar.gz  (the packed source bundle)
 *   W-P-data     input repo   the data bundle's files, as they are
 *   W-P-manifest input repo   /bundle.tar.gz  (the packed manifest file(s))
 *   W-P-params   input repo   /<job key>.json per combination of the grid
 *   W-P-build    pipeline     builds and pushes the image; outputs /image and /source.tar.gz
 *   W-P-ingest   pipeline     downloads the manifest's files, verified, into its output
 *   W-P-train    pipeline     data x build x params, one datum per combination
 *
 * The image is tagged by the env and source keys, so the train spec names it
 * without waiting for the build, and the train job cannot start before the
 * build that pushed it has finished, because it reads the build's output.
 */
import type { Toleration } from "../../core/types.js";
import type { ClusterSettings } from "./settings.js";

export type Stage = "build" | "ingest" | "train";

// The subset of pps_v2.CreatePipelineRequest kaos writes (field names as in the schema).
export interface PfsInputSpec {
  project: string;
  repo: string;
  glob: string;
}
export interface InputSpec {
  pfs?: PfsInputSpec;
  cross?: InputSpec[];
}
export interface ResourceSpecJson {
  cpu?: number;
  memory?: string;
  gpu?: { type: string; number: number };
}
export interface TolerationSpec {
  key?: string;
  operator?: "EXISTS" | "EQUAL";
  value?: string;
  effect?: "NO_SCHEDULE" | "PREFER_NO_SCHEDULE" | "NO_EXECUTE";
  tolerationSeconds?: number;
}
export interface CreatePipelineRequestSpec {
  pipeline: { name: string; project: { name: string } };
  description: string;
  transform: {
    image: string;
    cmd: string[];
    env?: Record<string, string>;
    secrets?: { name: string; mountPath: string }[];
    imagePullSecrets?: string[];
  };
  input: InputSpec;
  parallelismSpec: { constant: number };
  datumTries: number;
  autoscaling: boolean;
  resourceRequests?: ResourceSpecJson;
  resourceLimits?: ResourceSpecJson;
  schedulingSpec?: { nodeSelector: Record<string, string> };
  tolerations?: TolerationSpec[];
  podPatch?: string;
  metadata: { labels: Record<string, string> };
}

/** Names of everything one kaos pipeline owns in Pachyderm. */
export interface PipelineNames {
  source: string;
  data: string | undefined;
  manifest: string | undefined;
  params: string;
  build: string;
  ingest: string | undefined;
  train: string;
  /** Where the train stage reads its data: the data repo or the ingest output. */
  dataInput: string;
}

/** Where registry credentials are mounted in build containers. */
export const REGISTRY_MOUNT = "/kaos/registry";
/** What the build stage writes, read by the train stage. */
export const BUILD_SOURCE_FILE = "source.tar.gz";
export const BUNDLE_FILE = "bundle.tar.gz";
/** The image that runs the ingest script. */
export const INGEST_IMAGE = "python:3.11-slim";

export interface StageInput {
  settings: ClusterSettings;
  workspace: string;
  pipeline: string;
  names: PipelineNames;
}

export function buildSpec(input: StageInput & { image: string }): CreatePipelineRequestSpec {
  const { settings, names } = input;
  const kaniko = /kaniko/i.test(settings.builderImage);
  const registrySecret = settings.registry.secretName;
  const script = kaniko ? kanikoScript(names.source, input.image) : buildkitScript(names.source, input.image);
  const spec: CreatePipelineRequestSpec = {
    pipeline: { name: names.build, project: { name: settings.pachyderm.project } },
    description: `kaos build of ${input.workspace}/${input.pipeline}: the image ${input.image}`,
    transform: {
      image: settings.builderImage,
      cmd: kaniko ? ["/busybox/sh", "-c", script] : ["sh", "-c", script],
      env: kaniko
        ? { DOCKER_CONFIG: "/tmp/kaos-docker" }
        : { DOCKER_CONFIG: "/tmp/kaos-docker", BUILDKITD_FLAGS: "--oci-worker-no-process-sandbox" },
      secrets: [{ name: registrySecret, mountPath: REGISTRY_MOUNT }],
    },
    input: { pfs: { project: settings.pachyderm.project, repo: names.source, glob: "/" } },
    parallelismSpec: { constant: 1 },
    datumTries: 1,
    autoscaling: true,
    metadata: { labels: labels(input.workspace, input.pipeline, "build") },
  };
  if (!kaniko) {
    // Rootless BuildKit needs its own user namespaces: no seccomp or AppArmor
    // filtering of the build container (see BuildKit's rootless notes).
    spec.podPatch = JSON.stringify([
      {
        op: "add",
        path: "/containers/0/securityContext",
        value: {
          runAsUser: 1000,
          runAsGroup: 1000,
          seccompProfile: { type: "Unconfined" },
          appArmorProfile: { type: "Unconfined" },
        },
      },
    ]);
  }
  return spec;
}

export function ingestSpec(input: StageInput): CreatePipelineRequestSpec {
  const { settings, names } = input;
  if (names.manifest === undefined || names.ingest === undefined) throw new Error("ingestSpec needs a manifest pipeline");
  return {
    pipeline: { name: names.ingest, project: { name: settings.pachyderm.project } },
    description: `kaos ingest of ${input.workspace}/${input.pipeline}: the manifest's files, verified`,
    transform: {
      image: INGEST_IMAGE,
      cmd: ["python3", "-c", INGEST_SCRIPT],
      env: { KAOS_MANIFEST_ARCHIVE: `/pfs/${names.manifest}/${BUNDLE_FILE}`, KAOS_INGEST_OUT: "/pfs/out" },
    },
    input: { pfs: { project: settings.pachyderm.project, repo: names.manifest, glob: "/" } },
    parallelismSpec: { constant: 1 },
    datumTries: 1,
    autoscaling: true,
    metadata: { labels: labels(input.workspace, input.pipeline, "ingest") },
  };
}

export interface TrainResources {
  cpu: number;
  memory: string | undefined;
  gpu: number;
}

export function trainSpec(
  input: StageInput & { image: string; resources: TrainResources; parallelism: number },
): CreatePipelineRequestSpec {
  const { settings, names, resources } = input;
  const project = settings.pachyderm.project;
  const request: ResourceSpecJson = { cpu: resources.cpu };
  if (resources.memory !== undefined) request.memory = resources.memory;
  if (resources.gpu > 0) request.gpu = { type: settings.gpu.resourceName, number: resources.gpu };
  const spec: CreatePipelineRequestSpec = {
    pipeline: { name: names.train, project: { name: project } },
    description: `kaos train of ${input.workspace}/${input.pipeline}: one datum per combination of the grid`,
    transform: {
      image: input.image,
      cmd: ["sh", "-c", trainScript(names)],
      env: { KAOS_PIPELINE: input.pipeline, KAOS_DATA_DIR: `/pfs/${names.dataInput}` },
      imagePullSecrets: [settings.registry.secretName],
    },
    input: {
      cross: [
        { pfs: { project, repo: names.dataInput, glob: "/" } },
        { pfs: { project, repo: names.build, glob: "/" } },
        { pfs: { project, repo: names.params, glob: "/*" } },
      ],
    },
    parallelismSpec: { constant: input.parallelism },
    datumTries: 1,
    autoscaling: true,
    resourceRequests: { ...request },
    resourceLimits: { ...request },
    metadata: { labels: labels(input.workspace, input.pipeline, "train") },
  };
  if (resources.gpu > 0) {
    if (Object.keys(settings.gpu.nodeSelector).length > 0) {
      spec.schedulingSpec = { nodeSelector: sortedRecord(settings.gpu.nodeSelector) };
    }
    if (settings.gpu.tolerations.length > 0) spec.tolerations = settings.gpu.tolerations.map(tolerationSpec);
  }
  return spec;
}

/** A Kubernetes toleration in Pachyderm's enum spelling. */
export function tolerationSpec(toleration: Toleration): TolerationSpec {
  const spec: TolerationSpec = {};
  if (toleration.key !== undefined) spec.key = toleration.key;
  if (toleration.operator !== undefined) spec.operator = toleration.operator === "Exists" ? "EXISTS" : "EQUAL";
  if (toleration.value !== undefined) spec.value = toleration.value;
  if (toleration.effect !== undefined) {
    spec.effect =
      toleration.effect === "NoSchedule" ? "NO_SCHEDULE" : toleration.effect === "PreferNoSchedule" ? "PREFER_NO_SCHEDULE" : "NO_EXECUTE";
  }
  if (toleration.tolerationSeconds !== undefined) spec.tolerationSeconds = toleration.tolerationSeconds;
  return spec;
}

function labels(workspace: string, pipeline: string, stage: Stage): Record<string, string> {
  return {
    "app.kubernetes.io/managed-by": "kaos",
    "kaos.dev/pipeline": labelValue(pipeline),
    "kaos.dev/stage": stage,
    "kaos.dev/workspace": labelValue(workspace),
  };
}

/** Kubernetes label values: at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric. */
function labelValue(value: string): string {
  const cleaned = value
    .replace(/[^A-Za-z0-9_.-]+/g, "-")
    .slice(0, 63)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, "");
  return cleaned === "" ? "kaos" : cleaned;
}

function sortedRecord(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Single-quotes a value for sh. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

function buildkitScript(sourceRepo: string, image: string): string {
  return [
    "set -eu",
    'ctx="$(mktemp -d)"',
    `tar -xzf /pfs/${sourceRepo}/${BUNDLE_FILE} -C "$ctx"`,
    'mkdir -p "$DOCKER_CONFIG"',
    `if [ -f ${REGISTRY_MOUNT}/.dockerconfigjson ]; then cp ${REGISTRY_MOUNT}/.dockerconfigjson "$DOCKER_CONFIG/config.json"; fi`,
    `buildctl-daemonless.sh build --frontend dockerfile.v0 --local context="$ctx" --local dockerfile="$ctx" --output type=image,name=${shellQuote(image)},push=true`,
    `cp /pfs/${sourceRepo}/${BUNDLE_FILE} /pfs/out/${BUILD_SOURCE_FILE}`,
    `printf '%s\\n' ${shellQuote(image)} > /pfs/out/image`,
  ].join("\n");
}

function kanikoScript(sourceRepo: string, image: string): string {
  return [
    "set -eu",
    'mkdir -p "$DOCKER_CONFIG"',
    `if [ -f ${REGISTRY_MOUNT}/.dockerconfigjson ]; then cp ${REGISTRY_MOUNT}/.dockerconfigjson "$DOCKER_CONFIG/config.json"; fi`,
    `/kaniko/executor --context tar:///pfs/${sourceRepo}/${BUNDLE_FILE} --dockerfile Dockerfile --destination ${shellQuote(image)}`,
    `cp /pfs/${sourceRepo}/${BUNDLE_FILE} /pfs/out/${BUILD_SOURCE_FILE}`,
    `printf '%s\\n' ${shellQuote(image)} > /pfs/out/image`,
  ].join("\n");
}

/**
 * The train datum: exactly one params file (glob `/*` on the params repo);
 * its name is the job key. The source snapshot comes from the build's copy
 * of the bundle (PFS keeps no file modes, the archive does, so `train` stays
 * executable). Each job writes under /pfs/out/<job key>: all datums of a
 * job share one output commit, and two jobs must not write the same path.
 */
export function trainScript(names: PipelineNames): string {
  return [
    "set -eu",
    `set -- /pfs/${names.params}/*.json`,
    'params="$1"',
    'job="$(basename "$params" .json)"',
    'out="/pfs/out/$job"',
    'work="$(mktemp -d)"',
    `tar -xzf /pfs/${names.build}/${BUILD_SOURCE_FILE} -C "$work" model`,
    'mkdir -p "$out"',
    'cd "$work/model"',
    'export KAOS_PARAMS_FILE="$params" KAOS_JOB_ID="$job" KAOS_OUTPUT_DIR="$out"',
    'exec ./train "$out"',
  ].join("\n");
}

/**
 * The ingest datum (Python 3 standard library only): unpacks the manifest
 * bundle, reads every file in it as JSON lines {url, path[, sha256, size]},
 * refuses paths that escape the output, downloads with eight workers, checks
 * size and SHA-256 when given, and writes each file under a temporary name
 * renamed into place. Errors name the manifest file and line.
 */
export const INGEST_SCRIPT = String.raw`
import concurrent.futures, hashlib, io, json, os, posixpath, sys, tarfile, tempfile, urllib.request

archive = os.environ["KAOS_MANIFEST_ARCHIVE"]
out = os.environ["KAOS_INGEST_OUT"]

def fail(message):
    print("kaos ingest: " + message, file=sys.stderr, flush=True)
    sys.exit(1)

entries = []
with tarfile.open(archive, "r:gz") as bundle:
    members = sorted((m for m in bundle.getmembers() if m.isfile()), key=lambda m: m.name.encode())
    for member in members:
        text = bundle.extractfile(member).read().decode("utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            where = member.name + ":" + str(number)
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as error:
                fail(where + ": not JSON (" + str(error) + ")")
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or not isinstance(entry.get("path"), str):
                fail(where + ": expected an object with string url and path")
            path = entry["path"]
            normal = posixpath.normpath(path)
            if path.startswith("/") or normal == ".." or normal.startswith("../") or normal == "." or "\\" in path:
                fail(where + ": path " + json.dumps(path) + " escapes the data directory")
            entries.append((where, entry["url"], normal, entry.get("sha256"), entry.get("size")))

def fetch(item):
    where, url, path, sha256, size = item
    target = os.path.join(out, path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    digest = hashlib.sha256()
    count = 0
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".kaos-")
    try:
        with os.fdopen(handle, "wb") as sink, urllib.request.urlopen(url, timeout=300) as source:
            while True:
                block = source.read(1 << 20)
                if not block:
                    break
                digest.update(block)
                count += len(block)
                sink.write(block)
        if size is not None and count != size:
            raise ValueError("size " + str(count) + " != " + str(size))
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ValueError("sha256 " + digest.hexdigest() + " != " + sha256)
        os.replace(partial, target)
    except Exception as error:
        if os.path.exists(partial):
            os.unlink(partial)
        raise RuntimeError(where + ": " + url + ": " + str(error))
    return path

with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    futures = [pool.submit(fetch, item) for item in entries]
    for future in futures:
        try:
            print("kaos ingest: " + future.result(), flush=True)
        except RuntimeError as error:
            fail(str(error))
print("kaos ingest: " + str(len(entries)) + " files", flush=True)
`;
