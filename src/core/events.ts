/**
 * What a run reports while it goes: the events a backend emits and the
 * reporter the CLI renders them with (cli/progress.ts).
 */
import type { Plan } from "./plan.js";
import type { JobRecord, Stage } from "./state.js";

/** An ingest's progress: files and bytes so far, rate and time left. */
export interface IngestProgress {
  filesDone: number;
  filesTotal: number;
  /** Bytes of content settled so far (a restarted transfer counts once). */
  bytesDone: number;
  /** Undefined while some transfer's length is still unknown. */
  bytesTotal: number | undefined;
  rateBytesPerSec: number;
  etaSec: number | undefined;
}

export type RunEvent =
  | { kind: "stage"; pipeline: string; stage: Stage; status: "skipped"; reason: string }
  | { kind: "job"; job: JobRecord; message?: string }
  | ({ kind: "ingest"; pipeline: string } & IngestProgress)
  | { kind: "note"; message: string }
  /** The plan a backend whose jobs run elsewhere is about to apply. */
  | { kind: "plan"; plan: Plan }
  /** What a tool the backend drives (Pulumi) printed, as it printed it. */
  | { kind: "output"; text: string };

export interface Reporter {
  event(event: RunEvent): void;
  close(): void;
}
