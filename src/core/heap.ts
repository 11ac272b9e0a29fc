/**
 * How this process's heap is sized for the work ahead.
 */
import { setFlagsFromString } from "node:v8";

let youngGenerationsKeptSmall = false;

/**
 * V8 doubles the young generation each time a scavenge finds it full. Walking a
 * million files makes garbage at that pace the whole time, and the young
 * generations of this thread and the hashing threads grew to over 200 MB of
 * memory that only held dead objects; kept at its starting size, scavenges
 * are more frequent but cheaper, and the CPU time is no higher. It is set only
 * once such work is ahead (a command that may run long, a walk that needs
 * threads, a manifest): a no-op `kaos up` of a small project would pay for
 * loading node:v8 and for two more scavenges, a tenth of its time, for nothing.
 * Threads started afterwards inherit it.
 */
export function keepYoungGenerationsSmall(): void {
  if (youngGenerationsKeptSmall) return;
  youngGenerationsKeptSmall = true;
  setFlagsFromString("--semi-space-growth-factor=1");
}
