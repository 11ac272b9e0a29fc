/** What `kaos watch` watches, and what is never a reason to rerun. */
import { readFileSync, statSync, type Stats } from "node:fs";
import { basename, dirname, join, resolve, sep } from "node:path";
import ignore, { type Ignore } from "ignore";
import { DIRECTORY_LOCK_NAME } from "../../core/manifest.js";
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";
import { ALWAYS_IGNORED, isEditorFile } from "../../core/tree-walk.js";
import { stackFilesOf, stateDirOf } from "../../core/layout.js";
import { importedModules } from "../../core/config-cache.js";

/**
 * Besides the editor files no tree holds: backups and atomic-save
 * temporaries. Bundles keep these (a dataset may have them), but an editor
 * touching one is not an edit: the save it belongs to shows on the real file.
 */
const EDITOR_TEMP = [
  /^4913$/, // vim's write test
  /~$/, // emacs, gedit, kate backups
  /\.tmp$/,
  /\.tmp-\d+$/,
];

export function isEditorTemp(name: string): boolean {
  return isEditorFile(name) || EDITOR_TEMP.some((pattern) => pattern.test(name));
}

interface Bundle {
  root: string;
  rules: Ignore | undefined;
}

/** The paths of one config: what chokidar watches and how events are filtered. */
export interface WatchTargets {
  root: string;
  /** Absolute paths handed to the watcher. */
  paths: string[];
  /** Files whose edit needs the config reloaded: the config, the stack file, the modules they import, hyperparams files. */
  configFiles: Set<string>;
  bundles: Bundle[];
  /** Locks kaos writes beside manifests: ours, never a reason to rerun. */
  manifestLocks: string[];
}

export function loadRules(root: string): Ignore | undefined {
  try {
    return ignore().add(readFileSync(join(root, ".kaosignore"), "utf8"));
  } catch {
    return undefined;
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The file of stack `name`, when there is one. */
function stackFileOf(root: string, name: string | undefined): string | undefined {
  return name === undefined ? undefined : stackFilesOf(root, name)[0];
}

export function watchTargets(
  config: ResolvedConfig | undefined,
  stack: ResolvedStack | undefined,
  configFile: string,
  stackName: string | undefined,
): WatchTargets {
  const root = dirname(configFile);
  const configFiles = new Set<string>([configFile]);
  // A stack that did not load is still watched, so that fixing it resumes.
  const stackFile = stack?.file ?? stackFileOf(root, stackName);
  if (stackFile !== undefined) configFiles.add(stackFile);
  // Read again on every reload: an edit of one is an edit of the config.
  for (const file of [...configFiles]) for (const module of importedModules(file)) configFiles.add(module);
  const bundles: Bundle[] = [];
  const manifestLocks: string[] = [];
  const paths = new Set<string>(configFiles);
  for (const pipeline of config?.pipelines ?? []) {
    bundles.push({ root: pipeline.sourceDir, rules: loadRules(pipeline.sourceDir) });
    paths.add(pipeline.sourceDir);
    if (pipeline.data.kind === "dir") {
      bundles.push({ root: pipeline.data.dir, rules: loadRules(pipeline.data.dir) });
      paths.add(pipeline.data.dir);
    } else {
      paths.add(pipeline.data.path);
      const directory = isDirectory(pipeline.data.path);
      manifestLocks.push(directory ? join(pipeline.data.path, DIRECTORY_LOCK_NAME) : `${pipeline.data.path}.lock`);
      if (directory) bundles.push({ root: pipeline.data.path, rules: undefined });
    }
    if (pipeline.hyperparamsFile !== undefined) {
      configFiles.add(pipeline.hyperparamsFile);
      paths.add(pipeline.hyperparamsFile);
    }
  }
  return { root, paths: [...paths].sort(), configFiles, bundles, manifestLocks };
}

function inside(parent: string, path: string): string | undefined {
  if (path === parent) return "";
  return path.startsWith(parent + sep) ? path.slice(parent.length + 1) : undefined;
}

/** True for a path whose change is never a reason to rerun. */
export function isIgnoredPath(targets: WatchTargets, path: string, stats?: Stats): boolean {
  const absolute = resolve(path);
  if (targets.configFiles.has(absolute)) return false;
  if (inside(stateDirOf(targets.root), absolute) !== undefined) return true;
  const name = basename(absolute);
  if (isEditorTemp(name)) return true;
  for (const lock of targets.manifestLocks) if (absolute === lock || absolute.startsWith(`${lock}.tmp`)) return true;
  // Bundles may nest (data "." holds the source): a path counts when any bundle holding it takes it in.
  let held = false;
  for (const bundle of targets.bundles) {
    const rel = inside(bundle.root, absolute);
    if (rel === undefined || rel === "") continue;
    held = true;
    const parts = rel.split(sep);
    if (parts.some((part) => ALWAYS_IGNORED.has(part))) continue;
    if (bundle.rules !== undefined) {
      const posix = parts.join("/");
      if (bundle.rules.ignores(posix) || (stats?.isDirectory() === true && bundle.rules.ignores(`${posix}/`))) continue;
    }
    return false;
  }
  return held;
}
