/**
 * The work in progress kaos leaves under `.kaos/` when it stops mid-write:
 * trees being laid out, files being written, environments being built, objects
 * being stored, and claims on shared partial downloads. Each name carries its
 * writer's owner stamp (`ownerStamp`): what a kaos on this machine left is
 * removed once its pid is gone; what a kaos on another machine sharing the
 * volume left, only once that kaos is known to have stopped (`isStale`).
 */
import { join } from "node:path";
import { OWNER_STAMP } from "../../core/process-identity.js";
import { type AbandonedTemporaries, namesIn, removeAbandonedTemporaries } from "../../core/snapshot.js";
import { removeAbandonedBuilds } from "./build.js";
import { removeStaleClaims } from "./fetch.js";

/** What the object store's temporary folder holds while an object is being stored (`ObjectStore.tmpPath`, a private partial download). */
const OBJECT_TEMPORARY_NAMES = [
  new RegExp(`^[a-z]+-(${OWNER_STAMP})-[0-9a-f-]{36}(?:\\.clone)?$`),
  new RegExp(`^dl-[0-9a-f]{40}-(${OWNER_STAMP})-[0-9a-f-]{36}\\.part$`),
];

/**
 * Removes the work in progress of stopped writers from every folder of
 * `stateDir` that holds some, and from `jobDirs`. `isStale` says which origin
 * tags (of kaos processes elsewhere) have stopped; without it, only what a
 * kaos on this machine left is removed. `dryRun` only tells what would be.
 */
export function removeTemporaries(
  stateDir: string,
  jobDirs: readonly string[],
  options: { isStale?: (tag: string) => boolean; dryRun?: boolean } = {},
): AbandonedTemporaries {
  const objectsTmp = join(stateDir, "objects", "tmp");
  // Listed once for the two kinds of leftover it holds, whose names never overlap.
  const objectsTmpEntries = namesIn(objectsTmp);
  const parts = [
    // `.kaos/` itself holds the small files written whole by a rename: caches, the up-to-date record.
    removeAbandonedTemporaries(
      [stateDir, join(stateDir, "snapshots"), join(stateDir, "data"), join(stateDir, "trees"), ...jobDirs],
      options,
    ),
    removeAbandonedBuilds(join(stateDir, "envs"), options),
    removeAbandonedTemporaries([{ dir: objectsTmp, entries: objectsTmpEntries }], { ...options, names: OBJECT_TEMPORARY_NAMES }),
    removeStaleClaims(objectsTmp, objectsTmpEntries, options.isStale, options.dryRun),
  ];
  return {
    removed: parts.flatMap((part) => part.removed),
    removedElsewhere: parts.flatMap((part) => part.removedElsewhere),
    keptElsewhere: parts.flatMap((part) => part.keptElsewhere),
  };
}
