/**
 * The rules every name kaos derives for a cluster from a workspace and its
 * pipeline names must follow, as pachd, Kubernetes and image registries check
 * them: Pachyderm repos and pipelines, the Kubernetes names of a pipeline's
 * workers, and image repositories.
 */
import { IMAGE_SEPARATOR } from "../../core/config-text.js";

/** pachd's rule for repo and pipeline names (ancestry.ValidateName, at CreateRepo and CreatePipelineV2). */
export const PACHYDERM_NAME = /^[A-Za-z0-9_-]+$/;
/** Pachyderm's longest pipeline name (pps `maxPipelineNameLength`). */
export const MAX_PIPELINE_NAME = 51;
/** Kubernetes names, such as the ReplicationController of a pipeline's workers, are DNS labels. */
export const MAX_KUBERNETES_NAME = 63;
/** The longest image name, registry and repository without the tag (distribution/reference `NameTotalLengthMax`). */
export const MAX_IMAGE_NAME = 255;

const PACHYDERM_NAME_RULE = "Pachyderm names are letters, digits, '_' and '-'";
const WHOLE_IMAGE_SEPARATOR = new RegExp(`^${IMAGE_SEPARATOR}$`);

/**
 * The name Pachyderm gives the ReplicationController of a pipeline's workers
 * (ppsutil.PipelineRcName): lowercase, `_` as `-`, version 99 being the
 * longest Pachyderm checks against the limit.
 */
export function workersName(project: string, pipeline: string): string {
  return `${project}-${pipeline}-v99`.toLowerCase().replaceAll("_", "-");
}

/** Why pachd's CreateRepo would refuse `name`, or undefined when it takes it. */
export function repoNameProblem(name: string): string | undefined {
  if (PACHYDERM_NAME.test(name)) return undefined;
  return `the Pachyderm repo ${JSON.stringify(name)} has characters Pachyderm refuses; ${PACHYDERM_NAME_RULE}`;
}

/** Why pachd's CreatePipelineV2 would refuse the pipeline `name` in `project`, or undefined when it takes it. */
export function pipelineNameProblem(project: string, name: string): string | undefined {
  if (!PACHYDERM_NAME.test(name) || !/^[A-Za-z0-9]/.test(name)) {
    return `the Pachyderm pipeline ${JSON.stringify(name)} has characters Pachyderm refuses; ${PACHYDERM_NAME_RULE}, starting with a letter or digit`;
  }
  if (name.length > MAX_PIPELINE_NAME) {
    return `the Pachyderm pipeline ${name} is ${name.length} characters long; Pachyderm takes at most ${MAX_PIPELINE_NAME}`;
  }
  const kubernetes = workersName(project, name);
  if (kubernetes.length > MAX_KUBERNETES_NAME) {
    return `the Kubernetes name of the Pachyderm pipeline ${name} in project ${project} (${kubernetes}) is ${kubernetes.length} characters long; Kubernetes takes at most ${MAX_KUBERNETES_NAME}`;
  }
  return undefined;
}

/**
 * The image repository of a pipeline, `<prefix>-<pipeline>` as registries
 * take it: lowercase, with every run of separators the grammar refuses
 * (`_-`, `___`) made as many dashes, and those at either end dropped. A name the
 * grammar takes as it is stays unchanged, so images built before keep
 * their names; two pipelines may still get one repository (`Model` and
 * `model`, `model_` and `model`), which the cluster plan refuses.
 */
export function imageRepository(prefix: string, pipeline: string): string {
  const escaped = `${prefix}-${pipeline}`
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-")
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, "")
    .replace(/[._-]+/g, (run) => (WHOLE_IMAGE_SEPARATOR.test(run) ? run : "-".repeat(run.length)));
  return escaped === "" ? "kaos" : escaped;
}

/** Why a registry would refuse the image name `<registry>/<repository>`, or undefined when it takes it. */
export function imageNameProblem(registry: string, repository: string): string | undefined {
  const name = `${registry}/${repository}`;
  if (name.length <= MAX_IMAGE_NAME) return undefined;
  return `the image name ${name} is ${name.length} characters long; image names (registry and repository, without the tag) take at most ${MAX_IMAGE_NAME}`;
}
