/**
 * `kaos du` and `kaos gc`: what `.kaos/` holds, and taking back what nothing
 * needs. The counting and the removing are in backends/local/reclaim.ts.
 */
import { existsSync, lstatSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { KaosError } from "../core/errors.js";
import { displayText, formatBytes, plural } from "../core/format.js";
import { CONFIG_NAMES_TEXT, findConfigOfState, stateDirOf } from "../core/layout.js";
import { StateStore } from "../core/state.js";
import {
  collectGarbage,
  measureStorage,
  nothingCollected,
  type GcResult,
  type KindUsage,
  type StorageKind,
} from "../backends/local/reclaim.js";
import { EXIT } from "./exit.js";
import { printJson, table } from "./output.js";

interface Common {
  config?: string;
}

const KIND_LABELS: Record<StorageKind, string> = {
  objects: "objects",
  environments: "environments",
  jobs: "job folders",
  dataViews: "data views",
  treeListings: "tree listings",
  other: "other",
};

/** The project: the directory of its config, or of a `train deploy` project's `.kaos/`. */
function projectRoot(options: Common): string {
  if (options.config !== undefined) return dirname(resolve(options.config));
  const config = findConfigOfState(process.cwd());
  if (config !== undefined) return dirname(config);
  if (existsSync(stateDirOf(process.cwd()))) return process.cwd();
  throw new KaosError("CONFIG_NOT_FOUND", `no ${CONFIG_NAMES_TEXT} in ${process.cwd()} or a parent, and no .kaos/ here`, {
    hint: "run kaos in a project directory, or pass -c PATH",
  });
}

function kindRow(kind: StorageKind, usage: KindUsage): string[] {
  return [KIND_LABELS[kind], kind === "other" ? "" : String(usage.entries), formatBytes(usage.bytes)];
}

export async function duCommand(options: Common & { json?: boolean }): Promise<number> {
  const root = projectRoot(options);
  const state = StateStore.open(root, { readonly: true });
  try {
    const usage = measureStorage(root, state);
    if (options.json) {
      printJson({ ...usage, countedOncePerInode: true });
      return EXIT.ok;
    }
    const kinds = (Object.keys(usage.kinds) as StorageKind[]).map((kind) => kindRow(kind, usage.kinds[kind]));
    const lines = [
      `${displayText(usage.stateDir)}: ${formatBytes(usage.totalBytes)} on disk`,
      table([["KIND", "COUNT", "SIZE"], ...kinds]).replace(/^/gm, "  "),
      "  (each file counted once: the files of data views are links to objects, and count under objects)",
    ];
    if (usage.linkedBytes > 0) {
      lines.push(`  data views also link to ${formatBytes(usage.linkedBytes)} of the data bundles' own files: theirs, not counted here`);
    }
    if (usage.jobsByPipeline.length > 0) {
      lines.push(
        "",
        "job folders by pipeline",
        table([
          ["PIPELINE", "JOBS", "SIZE"],
          ...usage.jobsByPipeline.map((entry) => [displayText(entry.pipeline), String(entry.jobs), formatBytes(entry.bytes)]),
        ]).replace(/^/gm, "  "),
      );
    }
    const free = usage.disk.freeBytes === null ? "free space unknown" : `${formatBytes(usage.disk.freeBytes)} free`;
    lines.push("", `disk: ${free} on ${displayText(usage.disk.mount)}`, "`kaos gc` shows what can be removed");
    process.stdout.write(`${lines.join("\n")}\n`);
    return EXIT.ok;
  } finally {
    state.close();
  }
}

function gcText(result: GcResult): string {
  const kinds = Object.keys(result.freed) as (keyof GcResult["freed"])[];
  const head = result.applied
    ? `freed ${formatBytes(result.freedBytes)}`
    : `would free ${formatBytes(result.freedBytes)} (a dry run: nothing was removed; \`kaos gc --yes\` removes it)`;
  const lines = [
    head,
    table([["KIND", "REMOVED", "SIZE"], ...kinds.map((kind) => kindRow(kind, result.freed[kind]))]).replace(/^/gm, "  "),
  ];
  const byPipeline = new Map<string, string[]>();
  for (const job of result.jobs) byPipeline.set(job.pipeline, [...(byPipeline.get(job.pipeline) ?? []), job.id]);
  for (const [pipeline, ids] of byPipeline) lines.push(`  jobs of ${displayText(pipeline)}: ${ids.join(" ")}`);
  if (result.environments.length > 0) lines.push(`  environments: ${result.environments.map((key) => key.slice(0, 12)).join(" ")}`);
  if (result.temporaries.length > 0) {
    const elsewhere = result.temporaries.filter((temporary) => temporary.elsewhere).length;
    const count = result.temporaries.length;
    lines.push(
      `  ${result.applied ? "removed" : "would remove"} ${count} unfinished temporar${count === 1 ? "y" : "ies"} of kaos processes that stopped mid-write` +
        (elsewhere === 0 ? "" : ` (${elsewhere} made on another machine or in another container sharing this project)`) +
        `: ${result.temporaries.map((temporary) => displayText(temporary.path)).join(" ")}`,
    );
  }
  const { kept } = result;
  lines.push(
    `kept: ${plural(kept.jobs, "job folder")}, ${plural(kept.environments, "environment")}, ${plural(kept.dataViews, "data view")}, ${plural(kept.treeListings, "tree listing")}, ${plural(kept.objects, "object")}`,
  );
  return lines.join("\n");
}

export async function gcCommand(
  options: Common & {
    dryRun?: boolean;
    yes?: boolean;
    keepRuns: number;
    keepBest?: number;
    metric?: string;
    asc?: boolean;
    json?: boolean;
  },
): Promise<number> {
  if (options.yes && options.dryRun) throw new KaosError("USAGE", "--yes and --dry-run contradict each other: give one of them");
  if ((options.keepBest === undefined) !== (options.metric === undefined)) {
    throw new KaosError("USAGE", "--keep-best K and --metric NAME go together: the best K jobs of each sweep by NAME are kept");
  }
  if (options.asc && options.metric === undefined)
    throw new KaosError("USAGE", "--asc orders by --metric: give --keep-best K --metric NAME");
  const root = projectRoot(options);
  const print = (result: GcResult): number => {
    if (options.json) printJson(result);
    else process.stdout.write(`${gcText(result)}\n`);
    return EXIT.ok;
  };
  // Nothing was ever recorded here, so nothing is kaos's to take; opening the store to say so would make `.kaos/`.
  // (A `.kaos` link whose target is gone is there: the store names its target.)
  if (lstatSync(stateDirOf(root), { throwIfNoEntry: false }) === undefined) return print(nothingCollected(options.yes === true));
  const state = StateStore.open(root);
  try {
    const result = collectGarbage(root, state, {
      apply: options.yes === true,
      keepRuns: options.keepRuns,
      ...(options.keepBest !== undefined && options.metric !== undefined
        ? { keepBest: { count: options.keepBest, metric: options.metric, ascending: options.asc === true } }
        : {}),
      onMarked: (jobs) => {
        if (!options.json) process.stderr.write(`marked ${jobs} job${jobs === 1 ? "" : "s"} collected; removing files\n`);
      },
    });
    return print(result);
  } finally {
    state.close();
  }
}
