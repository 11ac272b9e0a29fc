/**
 * The shapes a `kaos.config.ts` and a stack file are written in. These are what
 * an editor completes and checks; `config.ts` validates the same shapes at run
 * time, since a config is code and may compute anything.
 */

/** A scalar hyperparameter value. */
export type HyperparamScalar = string | number | boolean | null;

/**
 * A grid: a list value is a set of candidates, a scalar is fixed. The jobs are
 * the Cartesian product of all lists.
 */
export type HyperparamGrid = Record<string, HyperparamScalar | HyperparamScalar[]>;

/** One combination of a grid: what one job sees in `KAOS_PARAMS_FILE`. */
export type HyperparamSet = Record<string, HyperparamScalar>;

/**
 * How a random search draws one parameter. Bounds are inclusive; drawn floats
 * are rounded to 6 significant digits so that params JSON is the same on every
 * machine.
 */
export type SearchDistribution =
  /** A float drawn evenly between the bounds. */
  | { uniform: [low: number, high: number] }
  /** A float whose logarithm is drawn evenly between the bounds' logarithms; both bounds above 0. */
  | { logUniform: [low: number, high: number] }
  /** A whole number between the bounds, both included. */
  | { intRange: [low: number, high: number] }
  /** One of the values, each as likely. */
  | { choice: HyperparamScalar[] };

/**
 * A seeded random search: `samples` distinct combinations drawn from `space`.
 * The same seed gives the same jobs on any machine, and raising `samples`
 * keeps the jobs drawn before and adds new ones.
 */
export interface RandomSearch {
  search: "random";
  /** Any whole number. */
  seed: number;
  /** How many distinct combinations to draw, 1 or more. */
  samples: number;
  /** Per parameter: a distribution, a list (a choice among its values) or a scalar (fixed). */
  space: Record<string, SearchDistribution | HyperparamScalar | HyperparamScalar[]>;
}

/**
 * What `hyperparams` describes: one grid, a list of grids (the union of their
 * combinations, each combination once), or a random search.
 */
export type HyperparamSpace = HyperparamGrid | HyperparamGrid[] | RandomSearch;

/** Same meaning as Kubernetes requests/limits. */
export interface Resources {
  /** Cores; fractions allowed (0.5). Default 1. */
  cpu?: number;
  /** Bytes with an SI or binary suffix: `512M`, `2Gi`. No limit when unset. */
  memory?: string;
  /** Whole GPUs. Default 0. */
  gpu?: number;
}

export interface PipelineConfig {
  /** Source bundle: a directory with `Dockerfile` and `model/{requirements.txt,train}`. */
  source: string;
  /** Local data bundle directory. Exclusive with `manifest`. */
  data?: string;
  /** A manifest file or directory of JSON lines `{url, path[, sha256, size]}`. Exclusive with `data`. */
  manifest?: string;
  /** A JSON file holding the search space, or the space itself: a grid, a list of grids or a random search. Without it, one job with `{}`. */
  hyperparams?: string | HyperparamSpace;
  resources?: Resources;
  /** Most jobs of this pipeline running at once. Default 1. */
  parallelism?: number;
}

export interface WatchOptions {
  /** Quiet time after the last edit before a rerun, in milliseconds. Default 200. */
  debounceMs?: number;
  /** An edit during a run: `restart` cancels the affected jobs, `queue` lets them finish and reruns once. */
  onChange?: "restart" | "queue";
}

export interface KaosConfig {
  /** Names this project's runs; defaults to the config directory's name. */
  workspace?: string;
  pipelines: Record<string, PipelineConfig>;
  watch?: WatchOptions;
  /**
   * Directories (relative to the config file, or absolute) whose files a
   * manifest's `file:` URLs may read, besides the project itself. Default none.
   */
  allowFileUrls?: string[];
}

export interface LocalStack {
  backend: "local";
  /** Cores kaos may hand to jobs at once. Default: every core of the machine. */
  maxCpu?: number;
  /** Memory kaos may hand to jobs at once (`16Gi`). Default: the machine's total memory. */
  maxMemory?: string;
  /**
   * How a local data bundle reaches its jobs where the file system has no
   * clones (ext4): `mount` (default) mounts the bundle's own folder read-only
   * for each job in a mount namespace of its own, so nothing is copied or
   * linked and a write into it is refused (where the machine allows no such
   * namespace, or the folder holds files the bundle skips, it links);
   * `link` makes the view's files hardlinks to the bundle's own, so nothing
   * is copied, and a job that writes them changes your files (it is found
   * and failed); `copy` stores a copy in `.kaos/` first, so a job can only
   * change kaos's copy. With clones (btrfs, XFS, APFS) all clone, isolated
   * and without a copy.
   */
  dataViews?: "mount" | "link" | "copy";
}

export interface Toleration {
  key?: string;
  operator?: "Exists" | "Equal";
  value?: string;
  effect?: "NoSchedule" | "PreferNoSchedule" | "NoExecute";
  tolerationSeconds?: number;
}

export interface KubernetesStack {
  backend: "kubernetes";
  /** Namespace that holds the build jobs and secrets. Created when missing. */
  namespace: string;
  /** Kubeconfig context; the current context when unset. */
  kubeContext?: string;
  pachyderm: {
    /** pachd's HTTP API address (its port 1659), such as `http://localhost:1659`. */
    address: string;
    /** Name of the environment variable holding the auth token. Never stored. Default `PACHYDERM_TOKEN`. */
    tokenEnv?: string;
    /** Pachyderm project that holds the repos and pipelines. Default `default`. */
    project?: string;
  };
  registry: {
    /** Image repository prefix, such as `registry.example.com/ml`. */
    url: string;
    /** Name of the Kubernetes docker-registry secret used to push and pull. Default `kaos-registry`. */
    secretName?: string;
    /** Environment variables holding the registry credentials. Never stored. */
    usernameEnv?: string;
    passwordEnv?: string;
  };
  gpu?: {
    /** Extended resource name. Default `nvidia.com/gpu`. */
    resourceName?: string;
    nodeSelector?: Record<string, string>;
    tolerations?: Toleration[];
  };
  pulumi?: {
    /** Pulumi state backend URL. Default a file backend under `.kaos/pulumi`. */
    backendUrl?: string;
    /** Pulumi stack name. Default the stack file's name. */
    stackName?: string;
    /** Environment variable holding the secrets passphrase. Default `PULUMI_CONFIG_PASSPHRASE`. */
    passphraseEnv?: string;
  };
  /** Image that builds containers in the cluster. Default `moby/buildkit:v0.16.0-rootless`. */
  builderImage?: string;
}

export type StackConfig = LocalStack | KubernetesStack;

/** What a pipeline's data comes from, with absolute paths. */
export type DataSource = { kind: "dir"; dir: string } | { kind: "manifest"; path: string };

/** A pipeline after validation: absolute paths, defaults applied, the search space loaded. */
export interface ResolvedPipeline {
  name: string;
  /** Absolute path of the source bundle. */
  sourceDir: string;
  data: DataSource;
  hyperparams: HyperparamSpace;
  /** Absolute path of the hyperparams file, when the space came from one. */
  hyperparamsFile: string | undefined;
  resources: { cpu: number; memory: string | undefined; memoryBytes: number | undefined; gpu: number };
  parallelism: number;
}

export interface ResolvedConfig {
  /** Absolute path of the config file. */
  file: string;
  /** Directory of the config file: the project root, where `.kaos/` lives. */
  root: string;
  workspace: string;
  pipelines: ResolvedPipeline[];
  watch: { debounceMs: number; onChange: "restart" | "queue" };
  /** Absolute directories, besides `root`, whose files `file:` URLs may read. None when unset. */
  allowFileUrls?: string[];
}

export interface ResolvedStack {
  /** Name given to `--stack`, or `local` for the built-in default. */
  name: string;
  /** Absolute path of the stack file; undefined for the built-in local stack. */
  file: string | undefined;
  config: StackConfig;
}
